//! How full the pinned maps are, for `/metrics`: entries counted by the
//! kernel's own walk next to each map's capacity. Per-CPU counter arrays are
//! left out (always "full").
//!
//! Counting asks for a thousand entries per syscall (BPF_MAP_LOOKUP_BATCH,
//! buffers sized from the map's info, so one function serves every map
//! whatever its key and value types) and falls back to one key per syscall
//! (BPF_MAP_GET_NEXT_KEY) where the kernel has no batch lookup for the map.
//! A full 262,144-entry conntrack map is 256 syscalls instead of 262,145,
//! and 50 ms instead of 120 ms here (the kernel's per-entry work remains).
//! Either way it is blocking work: `/metrics` reads it off the async
//! runtime (see `status::map_samples`).
use std::{
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    path::Path,
};

use aya::maps::MapType;
use weir_common::pin;

use crate::datapath::pinned;

const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per batch call; doubled when one hash bucket holds
/// more (the kernel answers ENOSPC rather than split a bucket).
const BATCH: usize = 1024;
const MAX_BATCH: usize = 1 << 16;

/// The maps whose fill level matters (hash and LPM maps an operator may
/// outgrow).
pub const MAPS: [&str; 24] = [
    pin::MAP_ENDPOINTS,
    pin::MAP_SVC,
    pin::MAP_BACKENDS,
    pin::MAP_REVNAT,
    pin::MAP_CT,
    pin::MAP_LOCAL_FLOWS,
    pin::MAP_LOCAL_FLOWS6,
    pin::MAP_AFFINITY,
    pin::MAP_SRC_RANGES,
    pin::MAP_SOCK_REVNAT,
    pin::MAP_SVC6,
    pin::MAP_BACKENDS6,
    pin::MAP_REVNAT6,
    pin::MAP_AFFINITY6,
    pin::MAP_SRC_RANGES6,
    pin::MAP_SOCK_REVNAT6,
    pin::MAP_CT6,
    pin::MAP_SNAT6,
    pin::MAP_IPCACHE,
    pin::MAP_POLICY,
    pin::MAP_POLICY_CT,
    pin::MAP_EP_POLICY_STATS,
    pin::MAP_IPCACHE6,
    pin::MAP_POLICY_CT6,
];

/// How entries are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// Batches, one key at a time where the map has no batch lookup.
    Batched,
    /// One key per syscall everywhere: how the agent counted before batches
    /// (the baseline of `cargo xtask bench services`' /metrics part).
    KeyByKey,
}

#[repr(C)]
struct NextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
}

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// (map, entries, capacity) for every map in `MAPS` that is pinned.
pub fn fill_levels(pin_dir: &Path) -> Vec<(&'static str, u64, u32)> {
    fill_levels_with(pin_dir, Walk::Batched)
}

pub fn fill_levels_with(pin_dir: &Path, walk: Walk) -> Vec<(&'static str, u64, u32)> {
    MAPS.iter()
        .filter_map(|name| {
            let data = pinned::open_data(pin_dir, name).ok()?;
            let info = data.info().ok()?;
            let fd = data.fd().as_fd().as_raw_fd();
            let key_size = info.key_size() as usize;
            let batched = match walk {
                // Only map types whose value layout is known here: a
                // buffer too small for what the kernel copies out would be
                // overrun.
                Walk::Batched => match info.map_type() {
                    Ok(MapType::Hash | MapType::LruHash | MapType::LpmTrie) => Some(false),
                    Ok(MapType::PerCpuHash | MapType::LruPerCpuHash) => Some(true),
                    _ => None,
                }
                .and_then(|per_cpu| value_bytes(info.value_size() as usize, per_cpu))
                .and_then(|v| count_batched(fd, key_size, v)),
                Walk::KeyByKey => None,
            };
            Some((*name, batched.unwrap_or_else(|| count(fd, key_size)), info.max_entries()))
        })
        .collect()
}

/// Bytes the kernel copies out per entry: per-CPU maps give one value,
/// padded to 8 bytes, per possible CPU.
fn value_bytes(value_size: usize, per_cpu: bool) -> Option<usize> {
    if !per_cpu {
        return Some(value_size.max(1));
    }
    let cpus = aya::util::nr_cpus().ok()?;
    Some(value_size.next_multiple_of(8) * cpus)
}

/// Entries counted with BPF_MAP_LOOKUP_BATCH; None when the kernel has no
/// batch lookup for this map (or it failed midway: the caller walks again).
fn count_batched(fd: RawFd, key_size: usize, value_size: usize) -> Option<u64> {
    // The position between calls: a bucket index for hash maps, a key for
    // the generic implementation (array, LPM).
    let token = key_size.max(8);
    let (mut pos, mut next) = (vec![0u8; token], vec![0u8; token]);
    let mut per_call = BATCH;
    let mut keys = vec![0u8; key_size.max(1) * per_call];
    let mut values = vec![0u8; value_size * per_call];
    let mut n = 0u64;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            // A null position asks for the start.
            in_batch: if first { 0 } else { pos.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: per_call as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // Safety: the attr points at live buffers of `per_call` keys and
        // values of the sizes the map reported, and two position buffers at
        // least as large as a key; the kernel writes back `count`.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        if ret == 0 {
            n += u64::from(attr.count);
            first = false;
            std::mem::swap(&mut pos, &mut next);
            continue;
        }
        match std::io::Error::last_os_error().raw_os_error() {
            // The end: `count` holds the last batch.
            Some(libc::ENOENT) => return Some(n + u64::from(attr.count)),
            // One bucket holds more than a batch: ask again for more.
            Some(libc::ENOSPC) if per_call < MAX_BATCH => {
                per_call *= 2;
                keys.resize(key_size.max(1) * per_call, 0);
                values.resize(value_size * per_call, 0);
            }
            _ => return None,
        }
    }
}

/// Entries counted one BPF_MAP_GET_NEXT_KEY at a time (a key-sized buffer,
/// so any key type).
fn count(fd: RawFd, key_size: usize) -> u64 {
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
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                &attr as *const NextKeyAttr,
                std::mem::size_of::<NextKeyAttr>(),
            )
        };
        if ret != 0 {
            return n;
        }
        n += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd as _, OwnedFd};

    use super::*;

    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const HASH: u32 = 1;
    const PERCPU_HASH: u32 = 5;
    const LRU_HASH: u32 = 9;
    const LPM_TRIE: u32 = 11;
    const NO_PREALLOC: u32 = 1;

    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }

    #[repr(C)]
    struct UpdateAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    fn create(map_type: u32, key_size: u32, value_size: u32, max_entries: u32, map_flags: u32) -> OwnedFd {
        let attr = CreateAttr { map_type, key_size, value_size, max_entries, map_flags };
        // Safety: a map-create attr; the kernel zero-extends the rest.
        let fd = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &attr as *const CreateAttr, std::mem::size_of::<CreateAttr>())
        };
        assert!(fd >= 0, "BPF_MAP_CREATE type {map_type}: {}", std::io::Error::last_os_error());
        // Safety: a fresh fd we own.
        unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
    }

    fn put(fd: &OwnedFd, key: &[u8], value: &[u8]) {
        let attr = UpdateAttr {
            map_fd: fd.as_raw_fd() as u32,
            _pad: 0,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags: 0,
        };
        // Safety: key and value buffers of the map's sizes (per-CPU maps
        // take one value per possible CPU, which `value` holds).
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_ELEM,
                &attr as *const UpdateAttr,
                std::mem::size_of::<UpdateAttr>(),
            )
        };
        assert_eq!(ret, 0, "BPF_MAP_UPDATE_ELEM: {}", std::io::Error::last_os_error());
    }

    /// Both walks count the same for each kind of map in `MAPS` (hash, LRU
    /// hash, per-CPU hash, LPM trie), across several batches, and for an
    /// empty map; the batch path works for the hash kinds.
    #[test]
    #[ignore = "privileged: needs root (BPF_MAP_CREATE); `cargo xtask test` runs it as root"]
    fn batched_and_key_by_key_counts_agree() {
        let cpus = aya::util::nr_cpus().unwrap();
        for (map_type, flags, value_size, entries) in [
            (HASH, 0, 12, 5000),
            (LRU_HASH, 0, 24, 3000),
            (PERCPU_HASH, 0, 16, 1500),
            (LPM_TRIE, NO_PREALLOC, 1, 2500),
            (HASH, 0, 4, 0),
        ] {
            let per_cpu = map_type == PERCPU_HASH;
            let fd = create(map_type, 8, value_size, 8192, flags);
            let value =
                vec![7u8; if per_cpu { (value_size as usize).next_multiple_of(8) * cpus } else { value_size as usize }];
            for i in 0..entries as u32 {
                // LPM keys: a /32 prefix length, then the address.
                let key = if map_type == LPM_TRIE {
                    [32u32.to_ne_bytes(), (0x0a00_0000 + i).to_be_bytes()].concat()
                } else {
                    u64::from(i).to_ne_bytes().to_vec()
                };
                put(&fd, &key, &value);
            }
            let raw = fd.as_raw_fd();
            assert_eq!(count(raw, 8), entries, "key by key, type {map_type}");
            let batched = count_batched(raw, 8, value_bytes(value_size as usize, per_cpu).unwrap());
            if map_type != LPM_TRIE {
                assert_eq!(batched, Some(entries), "batched, type {map_type}");
            } else {
                // Kernels without batch ops for LPM tries say so; none may
                // count wrong.
                eprintln!("LPM trie: batched count {batched:?} (None: no batch lookup on this kernel)");
                assert!(batched.is_none_or(|n| n == entries), "batched LPM: {batched:?}");
            }
        }
    }
}
