//! DEL: remove what ADD created. Idempotent: whatever is already gone (the
//! namespace, the interfaces, the reservation) is simply skipped, and every
//! step is attempted even when an earlier one failed.
//!
//! Where the time goes: unpinning a tcx link detaches its program (in a
//! kernel worker), and deleting a veth that still has programs attached
//! detaches them; either way the kernel waits for one RCU grace period per
//! program while holding RTNL. Then it waits again (`rcu_barrier`) before
//! freeing the device. DEL unpins early, so the detaching overlaps with the
//! rest of its work. (Returning before the freeing would need a helper
//! process outliving the plugin; not worth ~20 ms.)

use crate::{
    attachment::Attachment,
    config::NetConf,
    datapath::{self, EndpointMap, Pins},
    error::CniError,
    log,
    netlink::NetlinkSocket,
    veth,
};

pub fn del(conf: &NetConf, attachment: &Attachment) -> Result<(), CniError> {
    let host_name = veth::host_veth_name(&conf.veth_prefix, attachment);
    let mut problems = Vec::new();
    let pins = conf.bpf_pin_dir.as_deref().map(Pins::new);

    // Whether the host veth is known to be gone (or never existed) by the
    // end: only then may its address go back to the pool.
    let mut veth_gone = true;
    let mut host = NetlinkSocket::open().map_err(|e| problems.push(e.to_string())).ok();
    if host.is_none() {
        veth_gone = false;
    }
    let host_link = host.as_mut().and_then(|sock| match sock.link_by_name(&host_name) {
        Ok(link) => link,
        Err(e) => {
            veth_gone = false;
            problems.push(e.to_string());
            None
        }
    });
    log::step("host veth lookup");

    if let Some(pins) = &pins {
        for pin in pins.link_pins(&host_name) {
            if let Err(e) = datapath::remove_pin(&pin) {
                problems.push(e.to_string());
            }
        }
    }
    log::step("unpin links");

    let allocator = super::allocator(conf);
    let ip = match &allocator {
        Ok(a) => a.lookup(attachment).unwrap_or_else(|e| {
            problems.push(e.to_string());
            None
        }),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    log::step("ipam lookup");

    // No map means the agent has not (re)created the datapath: there is no
    // entry to remove.
    if let Some(pins) = pins.as_ref().filter(|p| p.endpoints_map_exists()) {
        let removed = EndpointMap::open(pins).and_then(|mut map| {
            if let Some(link) = &host_link {
                map.remove(link.index)?;
            }
            if let Some(ip) = ip {
                map.remove_ip(ip)?;
            }
            Ok(())
        });
        if let Err(e) = removed {
            problems.push(e.to_string());
        }
    }
    log::step("endpoint entry");

    if let (Some(sock), Some(link)) = (host.as_mut(), &host_link) {
        if !link.is_veth() {
            // Not ours: failing DEL for it would block the pod's removal forever.
            log::warn(format_args!(
                "{host_name} is not a veth ({:?}); weir-cni did not create it and leaves it alone",
                link.kind
            ));
        } else {
            match sock.delete_link(link) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    veth_gone = false;
                    problems.push(e.to_string());
                }
            }
        }
    }
    log::step("delete veth");

    // While the old veth still routes the address, handing it to another pod
    // would break both: keep the reservation until a DEL removes the veth.
    if let Ok(allocator) = &allocator {
        if veth_gone {
            match allocator.release(attachment) {
                Ok(released) if !released.is_empty() => {
                    log::info(format_args!("released {released:?}"));
                }
                Ok(_) => {}
                Err(e) => problems.push(e.to_string()),
            }
        } else if let Some(ip) = ip {
            problems.push(format!("{ip} stays reserved until {host_name} can be deleted"));
        }
    }
    log::step("ipam release");

    if problems.is_empty() { Ok(()) } else { Err(CniError::Cleanup { command: "DEL", problems }) }
}
