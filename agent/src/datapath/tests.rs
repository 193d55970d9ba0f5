//! Verdict tests for the kernel programs, run in the kernel with
//! BPF_PROG_TEST_RUN on crafted packets, one file per attach point's
//! concern; `harness` builds a private pinned datapath and the packets.
//! Privileged (root + bpffs): `cargo xtask test` runs them with
//! `--include-ignored` when it is root.
mod ext6;
mod flows;
mod harness;
mod ipv6;
mod lb;
mod lb6;
mod netdev;
mod netdev6;
mod policy;
mod sctp;
mod socket;
