//! SCTP's CRC32c kept valid when a translation changes a port.
//!
//! The CRC covers the SCTP packet (no pseudo-header: a changed address
//! leaves it valid), ports included, so a NodePort, a targetPort other than
//! the Service's port or a SNAT port taken by another client would make the
//! receiver drop the packet. kube-proxy's NAT recomputes it; here it is
//! updated for the ports' change alone (`weir_common::crc32c`), two
//! multiplications whatever the packet's length.
//!
//! A CRC field of 0 is left alone. The kernel's SCTP leaves the field 0
//! when it hands the CRC to the device (`CHECKSUM_PARTIAL`, as a pod's veth
//! does): whoever computes it later does so over the packet as it is then,
//! new ports included, with the field still 0. A real CRC32c of 0 (one
//! packet in 2^32) goes uncorrected and is dropped by its receiver.
//!
//! The length comes from the IP header, not the skb: a frame from a wire
//! may carry Ethernet padding past its datagram. A fragment's CRC covers
//! the whole datagram, which no fragment's length gives: callers leave
//! fragments out (the receiver drops such a datagram whose ports changed,
//! as before).
use aya_ebpf::programs::TcContext;
use weir_common::{DropReason, crc32c};

use crate::packet::IP_OFF;

/// The CRC's offset in the SCTP common header (after ports and the
/// verification tag).
const CRC_OFF: usize = 8;
/// The smallest SCTP packet: its common header.
const HEADER_LEN: usize = 12;
const IPV4_TOTAL_LEN_OFF: usize = IP_OFF + 2;
const IPV6_PAYLOAD_LEN_OFF: usize = IP_OFF + 4;
const IPV6_HEADER_LEN: usize = 40;
/// Past any header a packet here can have (IPv6's four extension headers
/// included): a bound the verifier needs for the packet pointer.
const MAX_L4_OFF: usize = 1024;

/// The ports' change as `ports_changed` takes it: the old ports' bytes XOR
/// the new ones', as stored (network order), source then destination.
#[inline(always)]
pub fn port_xor(old: (u16, u16), new: (u16, u16)) -> u32 {
    let (s, d) = ((old.0 ^ new.0).to_ne_bytes(), (old.1 ^ new.1).to_ne_bytes());
    u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
}

/// Updates the CRC32c of the SCTP packet at `l4_off` (of an IPv6 datagram
/// if `ipv6`, else IPv4) for ports that changed by `xor` (`port_xor`).
/// A packet too short to hold an SCTP header, or whose lengths disagree,
/// is left as it is: its receiver drops it anyway.
// Not inlined, and reading the packet in place rather than into buffers:
// its frame sits below the deepest IPv6 Service call chains, which leave
// it a few bytes of stack.
#[inline(never)]
pub fn ports_changed(ctx: &TcContext, l4_off: usize, xor: u32, ipv6: bool) -> Result<(), DropReason> {
    if xor == 0 || l4_off > MAX_L4_OFF {
        return Ok(());
    }
    let crc_end = l4_off + CRC_OFF + 4;
    if ctx.data() + crc_end > ctx.data_end() {
        // Headers past the skb's linear part (rare: drivers pull them in).
        ctx.pull_data(crc_end as u32).map_err(|_| DropReason::RewriteFailed)?;
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let (len_off, fixed) =
        if ipv6 { (IPV6_PAYLOAD_LEN_OFF, IP_OFF + IPV6_HEADER_LEN) } else { (IPV4_TOTAL_LEN_OFF, IP_OFF) };
    // Each read checked against the packet's end on the pointer it reads
    // through: the verifier tracks a bound per pointer.
    let header = data + l4_off;
    let ip_len_at = data + len_off;
    if header + CRC_OFF + 4 > data_end || ip_len_at + 2 > data_end {
        return Ok(());
    }
    // Safety: both reads lie before `data_end`, checked above.
    let (ip_len, field) =
        unsafe { ((ip_len_at as *const [u8; 2]).read(), ((header + CRC_OFF) as *const [u8; 4]).read()) };
    let end = fixed + usize::from(u16::from_be_bytes(ip_len));
    let Some(len) = end.checked_sub(l4_off) else { return Ok(()) };
    let crc = u32::from_le_bytes(field);
    if !(HEADER_LEN..=0xffff).contains(&len) || crc == 0 {
        return Ok(());
    }
    let crc = crc ^ crc_change(u32::from_le(xor), len as u32);
    ctx.store(l4_off + CRC_OFF, &crc.to_le_bytes(), 0).map_err(|_| DropReason::RewriteFailed)
}

// Not inlined: a leaf with no stack, whose many temporaries would
// otherwise push `ports_changed`'s values onto its stack.
#[inline(never)]
fn crc_change(xor: u32, len: u32) -> u32 {
    crc32c::port_change(xor, len as u16)
}
