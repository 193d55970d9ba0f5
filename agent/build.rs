//! Builds the kernel crate for bpfel-unknown-none on the nightly and leaves
//! the object in OUT_DIR, where `include_bytes_aligned!` embeds it.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "weir-ebpf")
        .ok_or_else(|| anyhow!("weir-ebpf package not found"))?;
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [Package { name: ebpf.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() }],
        Toolchain::default(),
    )
}
