//! The maps pinned under the pin directory, opened the one way every reader
//! of the pins uses (`inspect`, the verdict and policy counters, the fill
//! levels), with one error message.
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData};
use weir_common::pin;

use crate::datapath::loader::DatapathError;

/// Where the map `name` is pinned.
pub fn path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(pin::MAPS_DIR).join(name)
}

/// The pinned map `name`, untyped.
pub fn open_data(pin_dir: &Path, name: &str) -> Result<MapData, DatapathError> {
    let path = path(pin_dir, name);
    MapData::from_pin(&path).map_err(|source| DatapathError::Pinned { path, source })
}

/// The pinned map `name` as the aya type `M` (for example
/// `HashMap<MapData, K, V>`).
pub fn open<M>(pin_dir: &Path, name: &str) -> Result<M, DatapathError>
where
    M: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = open_data(pin_dir, name)?;
    Map::from_map_data(data)
        .and_then(M::try_from)
        .map_err(|source| DatapathError::Pinned { path: path(pin_dir, name), source })
}
