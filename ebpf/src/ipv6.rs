//! IPv6 at a pod's host veth. Pods get IPv6 addresses (dual-stack and
//! IPv6-only nodes), but Service translation and NetworkPolicy are IPv4-only
//! so far: IPv6 of a pod no policy selects goes on untouched, while a pod
//! under policy (or whose policy is not in place yet) gets no IPv6 at all,
//! so a policy is never bypassed over the other family. Neighbour discovery
//! always passes: without it the pod cannot even reach its gateway. So does
//! whatever is addressed within the link (link-local unicast, link- and
//! interface-local multicast): the host never forwards it, so it cannot
//! carry traffic between pods, and every pod's kernel sends some (MLD
//! reports, router solicitations) on an IPv4-only node too; dropped, it
//! was a stream of drops that filled the flow log's rate limit.
use aya_ebpf::programs::TcContext;
use network_types::eth::EthHdr;
use weir_common::{DropReason, EndpointInfo};

use crate::{endpoint, packet::Flow, policy};

const ETH_P_IPV6: u16 = 0x86DD_u16.to_be();
/// Offset of the IPv6 next-header field, and of what follows the fixed
/// 40-byte header.
const NEXT_HEADER_OFF: usize = EthHdr::LEN + 6;
/// Offset of the destination address's first two bytes.
const DST_OFF: usize = EthHdr::LEN + 24;
const SRC_OFF: usize = EthHdr::LEN + 8;
const L4_OFF: usize = EthHdr::LEN + 40;
const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 router solicitation ..= redirect (RFC 4861).
const NDP_TYPES: core::ops::RangeInclusive<u8> = 133..=137;

/// Judges a packet `packet::parse` found not to be IPv4 (`Ok`: it passes),
/// for the endpoint `ep` behind the veth (`None`: no entry). `missing` is the drop for an
/// IPv6 packet of a veth with no entry (`None`: pass it, as the ingress
/// side does for IPv4). `sent_by`: the veth's ifindex when the packet
/// leaves the pod, whose source must then be the pod's own IPv6 address
/// (as its IPv4 source is checked). `seen` gets the transport protocol of
/// a dropped packet, for the flow log.
#[inline(always)]
pub fn judge(
    ctx: &TcContext,
    ep: impl FnOnce() -> Option<EndpointInfo>,
    missing: Option<DropReason>,
    sent_by: Option<u32>,
    seen: &mut Flow,
) -> Result<(), DropReason> {
    let ether_type = ctx.load::<EthHdr>(0).map_err(|_| DropReason::Malformed)?.ether_type;
    if ether_type != ETH_P_IPV6 {
        return Ok(());
    }
    let next_header = ctx.load::<u8>(NEXT_HEADER_OFF).map_err(|_| DropReason::Malformed)?;
    let dst = ctx.load::<[u8; 2]>(DST_OFF).map_err(|_| DropReason::Malformed)?;
    if within_link(dst) {
        return Ok(());
    }
    if next_header == IPPROTO_ICMPV6 && ctx.load::<u8>(L4_OFF).is_ok_and(|icmp_type| NDP_TYPES.contains(&icmp_type)) {
        return Ok(());
    }
    seen.proto = next_header;
    let Some(ep) = ep() else {
        return match missing {
            Some(reason) => Err(reason),
            None => Ok(()),
        };
    };
    if ep.flags & EndpointInfo::FLAG_POLICY_PENDING != 0 {
        return Err(DropReason::PolicyPending);
    }
    // A pod without an IPv6 address has no IPv6 source of its own beyond
    // the link (the host has no rp_filter for IPv6).
    if let Some(ifindex) = sent_by
        && ep.flags & EndpointInfo::FLAG_VERIFY_SOURCE != 0
    {
        let src = ctx.load::<[u8; 16]>(SRC_OFF).map_err(|_| DropReason::Malformed)?;
        if endpoint::ipv6_of(ifindex) != Some(src) {
            return Err(DropReason::SourceSpoofed);
        }
    }
    if policy::active(&ep) {
        return Err(DropReason::Ipv6UnderPolicy);
    }
    Ok(())
}

/// Whether a destination (its first two bytes) stays on the link:
/// fe80::/10, or multicast (ff00::/8) of interface- or link-local scope.
#[inline(always)]
fn within_link(dst: [u8; 2]) -> bool {
    (dst[0] == 0xfe && dst[1] & 0xc0 == 0x80) || (dst[0] == 0xff && matches!(dst[1] & 0x0f, 1 | 2))
}
