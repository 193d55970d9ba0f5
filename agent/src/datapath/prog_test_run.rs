//! BPF_PROG_TEST_RUN for the tc programs, through aya's `TestRun`: runs a
//! program once on a packet, as if it had arrived on `ifindex`, and returns
//! its verdict and the packet as the program left it.
use aya::programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions};

use weir_common::pin;

use super::Datapath;

/// `struct __sk_buff` is 192 bytes; the kernel accepts a prefix of it and
/// only a few writable fields, all left zero here except `ifindex`.
const SK_BUFF_SIZE: usize = 192;
const SK_BUFF_IFINDEX_OFFSET: usize = 40;

pub struct Outcome {
    pub retval: u32,
    pub packet: Vec<u8>,
}

/// Runs the tc program `name` of `dp`. `ifindex` 1 (loopback) always
/// exists; the kernel refuses an ifindex that names no device in the
/// caller's namespace.
pub fn run(dp: &Datapath, name: &str, packet: &[u8], ifindex: u32) -> Result<Outcome, ProgramError> {
    let prog: &SchedClassifier = dp.ebpf().program(name).expect("program in the object").try_into()?;
    let mut out = vec![0u8; packet.len() + 256];
    let mut ctx = [0u8; SK_BUFF_SIZE];
    ctx[SK_BUFF_IFINDEX_OFFSET..SK_BUFF_IFINDEX_OFFSET + 4].copy_from_slice(&ifindex.to_ne_bytes());
    let opts =
        TestRunOptions { data_in: Some(packet), data_out: Some(&mut out), ctx_in: Some(&ctx), ..TestRunOptions::new() };
    let result = prog.test_run(opts)?;
    out.truncate(result.data_size_out as usize);
    Ok(Outcome { retval: result.return_value, packet: out })
}

/// The errno BPF_PROG_TEST_RUN answers for the (loaded) program `name`,
/// whatever its type. aya implements `TestRun` only for the program types
/// the kernel can test-run, which cgroup sock_addr programs are not; to ask
/// the kernel all the same, the program is pinned and opened again as a
/// classifier, a handle that has `test_run` (the kernel goes by the
/// program's real type).
pub fn errno_of(dp: &mut Datapath, name: &str) -> Option<i32> {
    let path = dp.pin_dir.join(pin::PROGS_DIR).join(format!("{name}_test_run"));
    dp.ebpf_mut().program_mut(name).expect("program in the object").pin(&path).expect("pin");
    let handle = SchedClassifier::from_pin(&path).expect("open the pin");
    let _ = std::fs::remove_file(&path);
    match handle.test_run(TestRunOptions { data_in: Some(&[0u8; 64]), ..TestRunOptions::new() }) {
        Ok(_) => None,
        Err(ProgramError::SyscallError(e)) => e.io_error.raw_os_error(),
        Err(e) => panic!("test run of {name}: {e}"),
    }
}
