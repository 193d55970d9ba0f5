//! How full the pinned maps are, for `/metrics`: entries counted with the
//! kernel's own key walk (BPF_MAP_GET_NEXT_KEY on a key-sized buffer, so one
//! function serves every map whatever its key type) next to each map's
//! capacity. Per-CPU counter arrays are left out (always "full").
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::maps::MapData;
use weir_common::pin;

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// The maps whose fill level matters (hash and LPM maps an operator may
/// outgrow).
pub const MAPS: [&str; 12] = [
    pin::MAP_ENDPOINTS,
    pin::MAP_SVC,
    pin::MAP_BACKENDS,
    pin::MAP_REVNAT,
    pin::MAP_CT,
    pin::MAP_AFFINITY,
    pin::MAP_SRC_RANGES,
    pin::MAP_SOCK_REVNAT,
    pin::MAP_IPCACHE,
    pin::MAP_POLICY,
    pin::MAP_POLICY_CT,
    pin::MAP_EP_POLICY_STATS,
];

#[repr(C)]
struct NextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
}

/// (map, entries, capacity) for every map in `MAPS` that is pinned.
pub fn fill_levels(pin_dir: &Path) -> Vec<(&'static str, u64, u32)> {
    MAPS.iter()
        .filter_map(|name| {
            let data = MapData::from_pin(pin_dir.join(pin::MAPS_DIR).join(name)).ok()?;
            let info = data.info().ok()?;
            Some((*name, count(&data, info.key_size() as usize), info.max_entries()))
        })
        .collect()
}

fn count(data: &MapData, key_size: usize) -> u64 {
    let fd = data.fd().as_fd().as_raw_fd();
    let mut key = vec![0u8; key_size.max(1)];
    let mut next = vec![0u8; key_size.max(1)];
    let mut n = 0u64;
    let mut first = true;
    loop {
        let attr = NextKeyAttr {
            map_fd: fd as u32,
            _pad: 0,
            // A null key asks for the first one.
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
        };
        // Safety: the attr points at two live buffers of the map's key size.
        let ret = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_GET_NEXT_KEY, &attr as *const NextKeyAttr, std::mem::size_of::<NextKeyAttr>())
        };
        if ret != 0 {
            return n;
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}
