//! Connect-time load balancing for sockets in the node's cgroup: the
//! destination is translated once per connect (or per UDP sendmsg) instead
//! of per packet, and without conntrack: the fast path for pod and host
//! clients, and the only one for processes on the node itself (there is no
//! route to a ClusterIP for the packet path to catch).
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use weir_common::lb::{Ip6, PROTO_TCP, PROTO_UDP, RevNat, RevNat6};

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
        Outcome::NoBackend => refuse(),
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

/// connect() and sendmsg() fail at once with ECONNREFUSED, as under
/// kube-proxy. A rejecting verdict alone would be EPERM: the kernel returns
/// the retval the programs set (5.18+, for these hooks), -EPERM if none did.
#[inline(always)]
fn refuse() -> i32 {
    // Safety: helper on the current program run, no pointers.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
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

/// `user_ip6`, read a word at a time: the verifier accepts 4-byte loads at
/// every word of it (a copy of the whole array may be compiled to loads it
/// refuses).
#[inline(always)]
fn user_ip6(ctx: &SockAddrContext) -> Ip6 {
    // Safety: plain field reads of the kernel's bpf_sock_addr.
    unsafe {
        let p = addr_of!((*ctx.sock_addr).user_ip6) as *const u32;
        [read_volatile(p), read_volatile(p.add(1)), read_volatile(p.add(2)), read_volatile(p.add(3))]
    }
}

/// Points the socket address at `addr:port`, a word at a time as above.
#[inline(always)]
fn set_user_addr6(ctx: &SockAddrContext, addr: &Ip6, port: u16) {
    // Safety: user_ip6 and user_port are writable in these hooks.
    unsafe {
        let p = addr_of_mut!((*ctx.sock_addr).user_ip6) as *mut u32;
        write_volatile(p, addr[0]);
        write_volatile(p.add(1), addr[1]);
        write_volatile(p.add(2), addr[2]);
        write_volatile(p.add(3), addr[3]);
        (*ctx.sock_addr).user_port = port as u32;
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`): a dual-stack socket
/// reaching an IPv4 destination. The kernel runs only the IPv6 hooks for
/// it, so an IPv4 Service reached this way is balanced here, through the
/// IPv4 maps, and stays IPv4-mapped.
#[inline(always)]
fn v4_mapped(addr: &Ip6) -> Option<u32> {
    (addr[0] == 0 && addr[1] == 0 && addr[2] == 0xffffu32.to_be()).then_some(addr[3])
}

/// connect6 and unconnected sendmsg6: `translate` for IPv6 sockets.
#[inline(always)]
pub fn translate6(ctx: &SockAddrContext) -> i32 {
    let Some(proto) = proto(ctx) else { return ALLOW };
    let addr = user_ip6(ctx);
    // Safety: plain field read.
    let port = unsafe { (*ctx.sock_addr).user_port } as u16;
    if let Some(v4) = v4_mapped(&addr) {
        return match socket::translate(v4, port, proto) {
            Outcome::NotService => ALLOW,
            Outcome::NoBackend => refuse(),
            Outcome::Backend { addr: baddr, port: bport } => {
                // Safety: the socket cookie helper takes the program's context.
                let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
                socket::remember(cookie, baddr, bport, &RevNat { addr: v4, port, _pad: 0 });
                set_user_addr6(ctx, &[addr[0], addr[1], addr[2], baddr], bport);
                ALLOW
            }
        };
    }
    match socket::translate6(&addr, port, proto) {
        Outcome::NotService => ALLOW,
        Outcome::NoBackend => refuse(),
        Outcome::Backend { addr: baddr, port: bport } => {
            // Safety: the socket cookie helper takes the program's context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
            socket::remember6(cookie, &baddr, bport, &RevNat6 { addr, port, _pad: 0 });
            set_user_addr6(ctx, &baddr, bport);
            ALLOW
        }
    }
}

/// recvmsg6 and getpeername6: `reverse` for IPv6 sockets.
#[inline(always)]
pub fn reverse6(ctx: &SockAddrContext) -> i32 {
    if proto(ctx).is_none() {
        return ALLOW;
    }
    let addr = user_ip6(ctx);
    // Safety: plain field read and the cookie helper on our context.
    let (port, cookie) = unsafe { ((*ctx.sock_addr).user_port as u16, bpf_get_socket_cookie(ctx.sock_addr as *mut _)) };
    if let Some(v4) = v4_mapped(&addr) {
        if let Some(rn) = socket::recall(cookie, v4, port) {
            set_user_addr6(ctx, &[addr[0], addr[1], addr[2], rn.addr], rn.port);
        }
    } else if let Some(rn) = socket::recall6(cookie, &addr, port) {
        set_user_addr6(ctx, &rn.addr, rn.port);
    }
    ALLOW
}
