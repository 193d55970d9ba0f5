//! Fault injection for the fake maps (`lb::maps::FakeLbMaps`,
//! `policy::maps::FakePolicyMaps`): one way for both to say which writes
//! fail, so the error paths of both programmers are tested alike.
use crate::datapath::MapError;

/// Which writes (inserts, updates, deletes; reads never fail) fail. Writes
/// are counted from 0, from when the plan was set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailPlan {
    #[default]
    Never,
    /// Only the Nth write.
    Nth(usize),
    /// The Nth write and every one after it.
    FromNth(usize),
    /// Every write to the map of this pin name (`weir_common::pin::MAP_*`).
    Map(&'static str),
}

/// The gate every write of a fake goes through before it touches the fake's
/// maps; a failed write changes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    plan: FailPlan,
    /// Writes attempted since the plan was set, failed ones included.
    writes: usize,
}

impl Faults {
    /// Fails writes by `plan` from now on, counting writes from 0 again.
    pub fn set(&mut self, plan: FailPlan) {
        self.plan = plan;
        self.writes = 0;
    }

    /// Counts one write of `op` to `map`; `Err` when the plan fails it.
    pub fn write(&mut self, op: &'static str, map: &'static str) -> Result<(), MapError> {
        let n = self.writes;
        self.writes += 1;
        let fail = match self.plan {
            FailPlan::Never => false,
            FailPlan::Nth(k) => n == k,
            FailPlan::FromNth(k) => n >= k,
            FailPlan::Map(name) => name == map,
        };
        if fail { Err(MapError { op, map, reason: "injected fault".into() }) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcomes(plan: FailPlan, maps: &[&'static str]) -> Vec<bool> {
        let mut faults = Faults::default();
        faults.set(plan);
        maps.iter().map(|m| faults.write("insert", m).is_err()).collect()
    }

    #[test]
    fn each_plan_fails_the_writes_it_names() {
        let maps = ["A", "B", "A", "B"];
        assert_eq!(outcomes(FailPlan::Never, &maps), [false; 4]);
        assert_eq!(outcomes(FailPlan::Nth(1), &maps), [false, true, false, false]);
        assert_eq!(outcomes(FailPlan::FromNth(1), &maps), [false, true, true, true]);
        assert_eq!(outcomes(FailPlan::Map("A"), &maps), [true, false, true, false]);
        let mut faults = Faults::default();
        faults.set(FailPlan::Nth(0));
        let e = faults.write("delete", "B").unwrap_err();
        assert_eq!(e.to_string(), "delete on map B: injected fault");
    }
}
