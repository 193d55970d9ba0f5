//! GC: remove whatever weir-cni holds for attachments the runtime no longer
//! knows (`cni.dev/valid-attachments`): reservations, host veths, endpoint
//! entries and tcx link pins left by older versions. Everything is attempted; all failures are
//! reported together.

use std::collections::HashSet;
use std::fs;

use crate::{
    attachment::Attachment,
    config::NetConf,
    datapath::{self, EndpointMap, Pins},
    error::CniError,
    log,
    netlink::NetlinkSocket,
    veth,
};

pub fn gc(conf: &NetConf, keep: &HashSet<Attachment>) -> Result<(), CniError> {
    let mut problems = Vec::new();
    let keep_names: HashSet<String> = keep.iter().map(|a| veth::host_veth_name(&conf.veth_prefix, a)).collect();
    let pins = conf.bpf_pin_dir.as_deref().map(Pins::new);

    // Reservations.
    let released = match super::ipam_all(conf).and_then(|a| Ok(a.release_all_except(keep)?)) {
        Ok(released) => released,
        Err(e) => {
            problems.push(e.to_string());
            Vec::new()
        }
    };
    for r in &released {
        let owner = r.owner.as_ref().map(ToString::to_string).unwrap_or_else(|| "unknown".into());
        log::info(format_args!("released {} of {owner}", r.ip));
    }

    // Host veths.
    match NetlinkSocket::open() {
        Err(e) => problems.push(e.to_string()),
        Ok(mut host) => {
            match host.links() {
                Err(e) => problems.push(e.to_string()),
                Ok(links) => {
                    let stale = links.iter().filter(|link| {
                        link.is_veth()
                            && veth::is_host_veth_name(&conf.veth_prefix, &link.name)
                            && !keep_names.contains(&link.name)
                    });
                    for link in stale {
                        match host.delete_link(link) {
                            Ok(()) => log::info(format_args!("deleted stale host veth {}", link.name)),
                            Err(e) if e.is_not_found() => {}
                            Err(e) => problems.push(e.to_string()),
                        }
                    }
                }
            }
            if let Some(pins) = pins.as_ref().filter(|p| p.endpoints_map_exists())
                && let Err(e) = gc_endpoints(pins, &mut host)
            {
                problems.push(e);
            }
        }
    }

    if let Some(pins) = &pins {
        gc_link_pins(pins, conf, &keep_names, &mut problems);
    }

    if problems.is_empty() { Ok(()) } else { Err(CniError::Cleanup { command: "GC", problems }) }
}

/// Removes link pins named like a host veth that is not kept.
fn gc_link_pins(pins: &Pins, conf: &NetConf, keep_names: &HashSet<String>, problems: &mut Vec<String>) {
    let dir = pins.links_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            problems.push(format!("list {}: {e}", dir.display()));
            return;
        }
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Some(veth_name) = Pins::host_veth_of_pin(&name) else {
            continue;
        };
        if veth::is_host_veth_name(&conf.veth_prefix, veth_name)
            && !keep_names.contains(veth_name)
            && let Err(e) = datapath::remove_pin(&entry.path())
        {
            problems.push(e.to_string());
        }
    }
}

/// Removes endpoint entries whose host veth no longer exists. The entries
/// are read before the links are listed: an ADD running concurrently inserts
/// its entry only after creating its veth, so it can never look stale here.
fn gc_endpoints(pins: &Pins, host: &mut NetlinkSocket) -> Result<(), String> {
    let mut map = EndpointMap::open(pins).map_err(|e| e.to_string())?;
    let entries = map.entries().map_err(|e| e.to_string())?;
    let live: HashSet<u32> = host.links().map_err(|e| e.to_string())?.into_iter().map(|l| l.index).collect();
    for (ifindex, ip) in entries {
        if !live.contains(&ifindex) {
            map.remove(ifindex).map_err(|e| e.to_string())?;
            log::info(format_args!("removed endpoint entry of {ip} (ifindex {ifindex} is gone)"));
        }
    }
    Ok(())
}
