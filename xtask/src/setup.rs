//! `cargo xtask setup`: make this machine able to build and test weir.
//! Every step checks first and acts only when something is missing, so a
//! second run does nothing and takes a moment.

use std::{collections::BTreeSet, path::Path, process::Command};

use anyhow::{Context, Result, bail};
use weir_testbed::{bpffs, exec, is_root, tools};

/// bpf-linker line the kernel crate needs (0.11+ wants a system LLVM 21+).
const BPF_LINKER_VERSION: &str = "0.10.4";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `cargo xtask setup`: anything that cannot be done is an error.
    Strict,
    /// Before unit tests as non-root: report what cannot be done, go on.
    BestEffort,
}

#[derive(Default)]
pub struct Report {
    pub done: Vec<String>,
    /// What is missing and could not be fixed (not root, no network...).
    pub unmet: Vec<String>,
}

pub fn run(mode: Mode) -> Result<Report> {
    let mut report = Report::default();
    packages(&mut report)?;
    rust_src(&mut report)?;
    lint_tools(&mut report)?;
    bpf_linker(&mut report)?;
    manifest_validator(&mut report)?;
    mount_bpffs(&mut report)?;
    if report.done.is_empty() {
        println!("setup: nothing to do, everything is in place");
    } else {
        for d in &report.done {
            println!("setup: {d}");
        }
    }
    for u in &report.unmet {
        eprintln!("setup: NOT DONE: {u}");
    }
    if mode == Mode::Strict && !report.unmet.is_empty() {
        bail!("setup incomplete: {}", report.unmet.join("; "));
    }
    Ok(report)
}

fn packages(report: &mut Report) -> Result<()> {
    let mut needed: BTreeSet<&str> = tools::missing(tools::ALL).iter().map(|t| t.package).collect();
    // The containerd test's image needs a static busybox: Debian's plain
    // `busybox` package installs a dynamic one at the same path.
    if Path::new(tools::BUSYBOX.binary).is_file() && !is_static_elf(Path::new(tools::BUSYBOX.binary))? {
        needed.insert(tools::BUSYBOX.package);
    }
    if needed.is_empty() {
        return Ok(());
    }
    let list: Vec<&str> = needed.into_iter().collect();
    if !is_root() {
        report.unmet.push(format!("apt packages {} (run as root)", list.join(" ")));
        return Ok(());
    }
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = Command::new("apt-get");
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        crate::cargo::must(&mut cmd)
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&list);
    apt(&args)?;
    report.done.push(format!("installed apt packages: {}", list.join(" ")));
    Ok(())
}

fn rust_src(report: &mut Report) -> Result<()> {
    component("nightly", "rust-src", report)
}

/// rustfmt and clippy on the toolchain that builds user space: the lint
/// gate of `cargo xtask test` runs them.
fn lint_tools(report: &mut Report) -> Result<()> {
    component("stable", "rustfmt", report)?;
    component("stable", "clippy", report)
}

/// Adds `name` to `toolchain` unless it is installed.
fn component(toolchain: &str, name: &str, report: &mut Report) -> Result<()> {
    let installed = exec::run(
        Command::new("rustup").args(["component", "list", "--toolchain", toolchain, "--installed"]),
        exec::DEFAULT_TIMEOUT,
    )
    .with_context(|| {
        format!("list the {toolchain} toolchain's components (is rustup and that toolchain installed?)")
    })?;
    if installed.lines().any(|l| l.trim().starts_with(name)) {
        return Ok(());
    }
    crate::cargo::must(Command::new("rustup").args(["component", "add", name, "--toolchain", toolchain]))?;
    report.done.push(format!("added {name} to the {toolchain} toolchain"));
    Ok(())
}

fn bpf_linker(report: &mut Report) -> Result<()> {
    let current = exec::output(Command::new("bpf-linker").arg("--version"), None, exec::DEFAULT_TIMEOUT)
        .ok()
        .filter(|o| o.success())
        .map(|o| o.stdout_str());
    if current.as_deref().is_some_and(is_bpf_linker_0_10) {
        return Ok(());
    }
    crate::cargo::must(crate::cargo::cargo().args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
    ]))?;
    report.done.push(format!(
        "installed bpf-linker {BPF_LINKER_VERSION} (was: {})",
        current.as_deref().map(str::trim).unwrap_or("absent")
    ));
    Ok(())
}

/// `kubernetes-validate` (PyPI) carries the Kubernetes API schemas the
/// manifest test checks manifests/ against.
fn manifest_validator(report: &mut Report) -> Result<()> {
    let present = exec::output(Command::new("kubernetes-validate").arg("--version"), None, exec::DEFAULT_TIMEOUT)
        .ok()
        .is_some_and(|o| o.success());
    if present {
        return Ok(());
    }
    crate::cargo::must(Command::new("python3").args(["-m", "pip", "install", "--quiet", "kubernetes-validate"]))?;
    report.done.push("installed kubernetes-validate (pip)".into());
    Ok(())
}

/// `bpf-linker --version` prints e.g. "bpf-linker 0.10.4".
fn is_bpf_linker_0_10(version_output: &str) -> bool {
    version_output.split_whitespace().nth(1).is_some_and(|v| v.starts_with("0.10."))
}

fn mount_bpffs(report: &mut Report) -> Result<()> {
    if bpffs::is_mounted()? {
        return Ok(());
    }
    if !is_root() {
        report.unmet.push("bpffs on /sys/fs/bpf (run as root)".into());
        return Ok(());
    }
    bpffs::ensure_mounted()?;
    report.done.push("mounted bpffs on /sys/fs/bpf".into());
    Ok(())
}

/// Whether an ELF file has no program interpreter (PT_INTERP), i.e. is
/// statically linked.
fn is_static_elf(path: &Path) -> Result<bool> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    elf_has_no_interpreter(&bytes).with_context(|| format!("{} is not a 64-bit little-endian ELF", path.display()))
}

fn elf_has_no_interpreter(b: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if b.get(..4)? != b"\x7fELF" || *b.get(4)? != 2 || *b.get(5)? != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?);
        if p_type == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_linker_versions() {
        assert!(is_bpf_linker_0_10("bpf-linker 0.10.4\n"));
        assert!(is_bpf_linker_0_10("bpf-linker 0.10.0"));
        assert!(!is_bpf_linker_0_10("bpf-linker 0.11.0"));
        assert!(!is_bpf_linker_0_10("bpf-linker 0.1.0"));
        assert!(!is_bpf_linker_0_10(""));
    }

    #[test]
    fn tells_static_from_dynamic_elf() {
        // A dynamic executable: the test binary itself.
        let me = std::env::current_exe().unwrap();
        assert!(!is_static_elf(&me).unwrap());
        // A minimal ELF header with one PT_LOAD and no PT_INTERP.
        let mut elf = vec![0u8; 0x40 + 0x38];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(elf_has_no_interpreter(&elf), Some(true));
        elf[0x40..0x44].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(elf_has_no_interpreter(&elf), Some(false));
        assert_eq!(elf_has_no_interpreter(b"#!/bin/sh\n"), None);
    }
}
