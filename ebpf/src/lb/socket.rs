//! Connect-time balancing: a socket's destination is chosen once per
//! connect (or unconnected UDP sendmsg), without conntrack; what the socket
//! was pointed at is remembered so it can be shown the Service address.
use aya_ebpf::{macros::map, maps::LruHashMap};
use weir_common::lb::{Ip6, MAX_SOCK_REV_ENTRIES, RevNat, RevNat6, SockRevKey, SockRevKey6};

use super::{choose, internal_frontend, v6};
use crate::{conntrack, node, packet::Flow};

#[map]
static WEIR_SOCK_REV: LruHashMap<SockRevKey, RevNat> = LruHashMap::pinned(MAX_SOCK_REV_ENTRIES, 0);

/// `A`: the address type of the family (`u32`, or `Ip6`).
pub enum Outcome<A> {
    NotService,
    NoBackend,
    Backend { addr: A, port: u16 },
}

/// The backend for a socket connecting to `daddr:dport`: sockets are
/// clients inside the cluster (internal scope), and affinity uses the node
/// address as the client (the source address is not chosen yet at connect
/// time).
#[inline(always)]
pub fn translate(daddr: u32, dport: u16, proto: u8) -> Outcome<u32> {
    let flow = Flow { saddr: node::addr(), daddr, sport: 0, dport, proto, ..Flow::NONE };
    let Some((key, svc)) = internal_frontend(&flow) else {
        return Outcome::NotService;
    };
    if svc.count == 0 {
        return Outcome::NoBackend;
    }
    match choose(&key, &svc, &flow, conntrack::now_secs()) {
        Some((_, b)) => Outcome::Backend { addr: b.addr, port: b.port },
        None => Outcome::NoBackend,
    }
}

/// Remembers that the socket `cookie`, pointed at backend `addr:port`,
/// asked for `frontend`.
#[inline(always)]
pub fn remember(cookie: u64, addr: u32, port: u16, frontend: &RevNat) {
    let key = SockRevKey { cookie, addr, port, _pad: 0 };
    let _ = WEIR_SOCK_REV.insert(&key, frontend, 0);
}

/// The frontend the socket `cookie` asked for when it was pointed at
/// backend `addr:port`, if it was.
#[inline(always)]
pub fn recall(cookie: u64, addr: u32, port: u16) -> Option<RevNat> {
    let key = SockRevKey { cookie, addr, port, _pad: 0 };
    // Safety: copied out at once.
    unsafe { WEIR_SOCK_REV.get(&key) }.copied()
}

/// The client sockets are for IPv6 affinity: all of this node's sockets are
/// one client, as IPv4 counts them all as the node's address (the source is
/// not chosen yet at connect time). `::` stands for the node: no packet
/// carries it as a source.
const NODE_CLIENT6: Ip6 = [0; 4];

/// `translate` for an IPv6 destination, through the IPv6 maps.
#[inline(always)]
pub fn translate6(daddr: &Ip6, dport: u16, proto: u8) -> Outcome<Ip6> {
    let Some((key, svc)) = v6::internal_frontend(daddr, dport, proto) else {
        return Outcome::NotService;
    };
    if svc.count == 0 {
        return Outcome::NoBackend;
    }
    match v6::choose(&key, &svc, &NODE_CLIENT6, conntrack::now_secs()) {
        Some((_, b)) => Outcome::Backend { addr: b.addr, port: b.port },
        None => Outcome::NoBackend,
    }
}

/// `remember` for an IPv6 socket.
#[inline(always)]
pub fn remember6(cookie: u64, addr: &Ip6, port: u16, frontend: &RevNat6) {
    let key = SockRevKey6 { cookie, addr: *addr, port, _pad: [0; 6] };
    let _ = v6::WEIR_SOCK_REV6.insert(&key, frontend, 0);
}

/// `recall` for an IPv6 socket.
#[inline(always)]
pub fn recall6(cookie: u64, addr: &Ip6, port: u16) -> Option<RevNat6> {
    let key = SockRevKey6 { cookie, addr: *addr, port, _pad: [0; 6] };
    // Safety: copied out at once.
    unsafe { v6::WEIR_SOCK_REV6.get(&key) }.copied()
}
