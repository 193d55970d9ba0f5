//! The error of one operation on one map, the same for the Service maps
//! (`lb/`) and the policy maps (`policy/`).

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op} on map {map}: {reason}")]
pub struct MapError {
    pub op: &'static str,
    pub map: &'static str,
    pub reason: String,
}
