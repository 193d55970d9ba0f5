//! Connect-time load balancing for sockets in the node's cgroup: the
//! destination is translated once per connect (or per UDP sendmsg) instead
//! of per packet, and without conntrack: the fast path for pod and host
//! clients, and the only one for processes on the node itself (there is no
//! route to a ClusterIP for the packet path to catch).
use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use weir_common::lb::{PROTO_TCP, PROTO_UDP, RevNat};

use crate::lb::socket::{self, Outcome};

/// Verdicts of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
/// What a refused connect()/sendmsg() returns: what kube-proxy's REJECT
/// rule (and our per-packet ICMP port unreachable) make the client see.
const ECONNREFUSED: i32 = 111;

#[inline(always)]
fn proto(ctx: &SockAddrContext) -> Option<u8> {
    // Safety: reading plain fields of the kernel's bpf_sock_addr.
    let p = unsafe { (*ctx.sock_addr).protocol } as u8;
    matches!(p, PROTO_TCP | PROTO_UDP).then_some(p)
}

/// connect() and unconnected sendmsg(): point the socket at a backend.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext) -> i32 {
    let Some(proto) = proto(ctx) else { return ALLOW };
    // Safety: plain field reads.
    let (addr, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port as u16) };
    match socket::translate(addr, port, proto) {
        Outcome::NotService => ALLOW,
        Outcome::NoBackend => {
            // connect() and sendmsg() fail at once with ECONNREFUSED, as
            // under kube-proxy. A rejecting verdict alone would be EPERM:
            // the kernel returns the retval the programs set (5.18+, for
            // these hooks), -EPERM if none did.
            // Safety: helper on the current program run, no pointers.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            REJECT
        }
        Outcome::Backend { addr: baddr, port: bport } => {
            // Safety: the socket cookie helper takes the program's context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
            socket::remember(cookie, baddr, bport, &RevNat { addr, port, _pad: 0 });
            // Safety: user_ip4 and user_port are writable in these hooks.
            unsafe {
                (*ctx.sock_addr).user_ip4 = baddr;
                (*ctx.sock_addr).user_port = bport as u32;
            }
            ALLOW
        }
    }
}

/// recvmsg() and getpeername(): show the Service address, not the backend.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    if proto(ctx).is_none() {
        return ALLOW;
    }
    // Safety: plain field reads and the cookie helper on our context.
    let (addr, port, cookie) = unsafe {
        ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port as u16, bpf_get_socket_cookie(ctx.sock_addr as *mut _))
    };
    if let Some(rn) = socket::recall(cookie, addr, port) {
        // Safety: writable in these hooks.
        unsafe {
            (*ctx.sock_addr).user_ip4 = rn.addr;
            (*ctx.sock_addr).user_port = rn.port as u32;
        }
    }
    ALLOW
}
