//! BPF_PROG_TEST_RUN for tc programs, through the raw syscall: aya 0.14 does
//! not expose it. Runs a program once on a packet and returns its verdict
//! and the packet as the program left it.
use std::os::fd::{AsRawFd as _, BorrowedFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct __sk_buff` is 192 bytes; the kernel accepts a prefix of it and
/// only a few writable fields, all left zero here except `ifindex`.
const SK_BUFF_SIZE: usize = 192;
const SK_BUFF_IFINDEX_OFFSET: usize = 40;

pub struct Outcome {
    pub retval: u32,
    pub packet: Vec<u8>,
}

/// `ifindex` 1 (loopback) always exists; the kernel refuses an ifindex that
/// names no device in the caller's namespace.
pub fn run(prog: BorrowedFd<'_>, packet: &[u8], ifindex: u32) -> std::io::Result<Outcome> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut ctx = [0u8; SK_BUFF_SIZE];
    ctx[SK_BUFF_IFINDEX_OFFSET..SK_BUFF_IFINDEX_OFFSET + 4].copy_from_slice(&ifindex.to_ne_bytes());
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    // Safety: attr points at buffers that outlive the call; sizes match.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(Outcome { retval: attr.retval, packet: out })
}
