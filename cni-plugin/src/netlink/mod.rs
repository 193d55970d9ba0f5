//! A small synchronous rtnetlink client: one request, wait for its answer.
//!
//! The plugin is a short-lived process that makes a handful of requests, so a
//! blocking socket with strict request/ack pairing (as netavark does) is all
//! that is needed; no async runtime. A socket talks to the network namespace
//! of the thread that created it, which is how pod-side work is done without
//! moving the main thread (see `netns.rs`).

pub mod addr;
mod detached_delete;
pub mod link;
pub mod route;
pub mod tc;

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlasIterator,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `NLMSGERR_ATTR_MSG`: the extended-ack attribute carrying the kernel's
/// human readable reason ("Nexthop device is not up", ...).
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Size of a netlink message header, echoed back in capped error messages.
const NLMSG_HDR_LEN: usize = 16;

/// A failed netlink request: what we were doing, the errno, and the kernel's
/// extended-ack message when it gave one.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}{}", kernel_msg.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
pub struct NetlinkError {
    pub op: String,
    #[source]
    pub source: io::Error,
    pub kernel_msg: Option<String>,
}

impl NetlinkError {
    fn io(op: impl Into<String>, source: io::Error) -> Self {
        Self { op: op.into(), source, kernel_msg: None }
    }

    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// The object the request named does not exist (no such device, address
    /// or route).
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL))
    }
}

pub struct NetlinkSocket {
    socket: Socket,
    seq: u32,
}

impl NetlinkSocket {
    /// Opens a route netlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let open_err = |e| NetlinkError::io("open rtnetlink socket", e);
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(open_err)?;
        socket.bind_auto().map_err(open_err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(open_err)?;
        // Extended acks give the kernel's reason for a failure; capped acks
        // keep error replies small. Both are best effort (old kernels).
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        // Lets the kernel filter address dumps by ifindex for us.
        let _ = socket.set_netlink_get_strict_chk(true);
        Ok(Self { socket, seq: 0 })
    }

    /// Sends a request that changes something and waits for the kernel's ack.
    pub fn execute(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<(), NetlinkError> {
        self.request(op, msg, flags, false).map(drop)
    }

    /// Sends a request for one object and returns the kernel's replies.
    pub fn get(&mut self, op: &str, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.request(op, msg, 0, false)
    }

    /// Sends a dump request and returns every object of the reply.
    pub fn dump(&mut self, op: &str, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.request(op, msg, NLM_F_DUMP, true)
    }

    /// Serializes `msg` as the next request of this socket; returns its
    /// sequence number and bytes.
    fn encode(&mut self, msg: RouteNetlinkMessage, flags: u16) -> (u32, Vec<u8>) {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        (seq, buf)
    }

    fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
        is_dump: bool,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let (seq, buf) = self.encode(msg, flags);
        self.socket.send(&buf, 0).map_err(|e| NetlinkError::io(format!("{op}: send"), e))?;

        let mut replies = Vec::new();
        loop {
            let (datagram, _) =
                self.socket.recv_from_full().map_err(|e| NetlinkError::io(format!("{op}: receive"), e))?;
            if parse_replies(op, seq, is_dump, &datagram, &mut replies)? {
                return Ok(replies);
            }
        }
    }
}

/// Parses one datagram of the kernel's answer to request `seq`, adding the
/// objects it carries to `replies`; `Ok(true)` once the answer is complete.
/// A dump ends with NLMSG_DONE and gets no ack; anything else ends with its
/// ack. (Not derivable from the request flags: NLM_F_DUMP shares a bit with
/// NLM_F_EXCL.)
fn parse_replies(
    op: &str,
    seq: u32,
    is_dump: bool,
    datagram: &[u8],
    replies: &mut Vec<RouteNetlinkMessage>,
) -> Result<bool, NetlinkError> {
    let mut offset = 0;
    while offset < datagram.len() {
        let chunk = &datagram[offset..];
        let len = NetlinkBuffer::new_checked(chunk).map(|b| b.length() as usize).map_err(|e| decode_error(op, e))?;
        if len == 0 || len > chunk.len() {
            return Err(decode_error(op, "bad netlink message length"));
        }
        let reply =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(&chunk[..len]).map_err(|e| decode_error(op, e))?;
        offset += (len + 3) & !3;
        if reply.header.sequence_number != seq {
            // A late answer to an earlier request; not ours.
            continue;
        }
        let reply_flags = reply.header.flags;
        match reply.payload {
            NetlinkPayload::InnerMessage(inner) => replies.push(inner),
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(err) => match err.code {
                None if !is_dump => return Ok(true),
                None => {}
                Some(_) => {
                    return Err(NetlinkError {
                        op: op.to_string(),
                        source: err.to_io(),
                        kernel_msg: extack_message(&err.header, reply_flags),
                    });
                }
            },
            NetlinkPayload::Overrun(_) => {
                return Err(decode_error(op, "netlink overrun"));
            }
            _ => {}
        }
    }
    Ok(false)
}

fn decode_error(op: &str, e: impl std::fmt::Display) -> NetlinkError {
    NetlinkError::io(op, io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Pulls `NLMSGERR_ATTR_MSG` out of an error reply's payload: the echoed
/// request header (or the whole request when the ack is not capped) followed
/// by the extended-ack attributes.
fn extack_message(payload: &[u8], flags: u16) -> Option<String> {
    if payload.len() < NLMSG_HDR_LEN {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDR_LEN
    } else {
        let len = u32::from_ne_bytes(payload[0..4].try_into().ok()?) as usize;
        (len + 3) & !3
    };
    let attrs = payload.get(echoed..)?;
    NlasIterator::new(attrs).filter_map(Result::ok).find_map(|nla| {
        (nla.kind() == NLMSGERR_ATTR_MSG).then(|| {
            let value = nla.value();
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            String::from_utf8_lossy(&value[..end]).into_owned()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extack_message_is_read_after_capped_header() {
        let mut payload = vec![0u8; NLMSG_HDR_LEN];
        // NLA header: length 4 + "oops\0" = 9, type 1, padded to 12.
        payload.extend_from_slice(&9u16.to_ne_bytes());
        payload.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend_from_slice(b"oops\0\0\0\0");
        assert_eq!(extack_message(&payload, NLM_F_CAPPED).as_deref(), Some("oops"));
        assert_eq!(extack_message(&payload[..NLMSG_HDR_LEN], NLM_F_CAPPED), None);
    }
}
