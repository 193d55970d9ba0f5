//! weir's kernel-side programs. Each attach point has one entry function, a
//! thin wrapper; shared logic lives in modules (packet parsing, conntrack,
//! NAT, load balancing).
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod endpoint;
mod flow;
mod from_netdev;
mod from_pod;
mod ipv6;
mod lb;
mod local;
mod local6;
mod nat;
mod netdev6;
mod node;
mod packet;
mod pod6;
mod policy;
mod reject;
mod sctp;
mod sock_lb;
mod to_netdev;
mod to_pod;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};

/// tc ingress of a pod's host-side veth: every packet the pod sends.
#[classifier]
pub fn weir_from_pod(ctx: TcContext) -> i32 {
    from_pod::handle(&ctx)
}

/// tc ingress of the node's uplink.
#[classifier]
pub fn weir_from_netdev(ctx: TcContext) -> i32 {
    from_netdev::handle(&ctx)
}

/// tc egress of the node's uplink: replies of host-network backends.
#[classifier]
pub fn weir_to_netdev(ctx: TcContext) -> i32 {
    to_netdev::handle(&ctx)
}

/// IPv6 through the uplink's tc ingress, tail-called by `weir_from_netdev`
/// (see `netdev6`).
#[classifier]
pub fn weir_from_netdev6(ctx: TcContext) -> i32 {
    netdev6::from_netdev(&ctx)
}

/// IPv6 through the uplink's tc egress, tail-called by `weir_to_netdev`.
#[classifier]
pub fn weir_to_netdev6(ctx: TcContext) -> i32 {
    netdev6::to_netdev(&ctx)
}

/// tc egress of a pod's host-side veth: every packet the pod receives.
#[classifier]
pub fn weir_to_pod(ctx: TcContext) -> i32 {
    to_pod::handle(&ctx)
}

/// IPv6 Services and egress policy for a pod's packet, tail-called by
/// `weir_from_pod` (see `pod6`).
#[classifier]
pub fn weir_from_pod6(ctx: TcContext) -> i32 {
    pod6::from_pod6(&ctx)
}

/// A pod's IPv6 packet `weir_from_pod6` let go, straight into its
/// destination pod if it may (`local6`), tail-called by it.
#[classifier]
pub fn weir_deliver6(ctx: TcContext) -> i32 {
    pod6::deliver6(&ctx)
}

/// The egress policy of a pod's IPv6 packet, tail-called by
/// `weir_from_pod6` once the Service translation is done (see `pod6`).
#[classifier]
pub fn weir_egress6(ctx: TcContext) -> i32 {
    pod6::egress6(&ctx)
}

/// Replies of IPv6 Service flows to a pod, and its ingress policy,
/// tail-called by `weir_to_pod`.
#[classifier]
pub fn weir_to_pod6(ctx: TcContext) -> i32 {
    pod6::to_pod6(&ctx)
}

/// connect() from a socket in the node's cgroup.
#[cgroup_sock_addr(connect4)]
pub fn weir_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock_lb::translate(&ctx)
}

/// sendmsg() on an unconnected UDP socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn weir_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_lb::translate(&ctx)
}

/// recvmsg() on a UDP socket: the reply's source becomes the Service.
#[cgroup_sock_addr(recvmsg4)]
pub fn weir_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock_lb::reverse(&ctx)
}

/// getpeername(): the peer is the Service.
#[cgroup_sock_addr(getpeername4)]
pub fn weir_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock_lb::reverse(&ctx)
}

/// connect() from an IPv6 socket in the node's cgroup (IPv4-mapped
/// destinations included).
#[cgroup_sock_addr(connect6)]
pub fn weir_sock_connect6(ctx: SockAddrContext) -> i32 {
    sock_lb::translate6(&ctx)
}

/// sendmsg() on an unconnected IPv6 UDP socket.
#[cgroup_sock_addr(sendmsg6)]
pub fn weir_sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_lb::translate6(&ctx)
}

/// recvmsg() on an IPv6 UDP socket: the reply's source becomes the Service.
#[cgroup_sock_addr(recvmsg6)]
pub fn weir_sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock_lb::reverse6(&ctx)
}

/// getpeername() on an IPv6 socket: the peer is the Service.
#[cgroup_sock_addr(getpeername6)]
pub fn weir_sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock_lb::reverse6(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
