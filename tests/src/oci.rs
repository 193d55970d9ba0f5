//! A minimal OCI image built locally (nothing can be pulled here): one layer
//! with a static busybox and its applet links, a config, a manifest and an
//! index, packed as an image-layout tar that `ctr images import` accepts.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::exec;

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Writes the image-layout tar for `busybox` (a static binary) to `out`.
pub fn write_busybox_image(busybox: &Path, image_name: &str, out: &Path) -> Result<()> {
    let bytes = fs::read(busybox).with_context(|| format!("read {}", busybox.display()))?;
    let list = exec::run(Command::new(busybox).arg("--list"), exec::DEFAULT_TIMEOUT)?;
    let applets: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
        .map(String::from)
        .collect();
    if applets.is_empty() {
        bail!("{} --list printed no applets", busybox.display());
    }
    let tar = image_layout(&bytes, &applets, image_name)?;
    fs::write(out, tar).with_context(|| format!("write {}", out.display()))
}

/// The image-layout tar, in memory.
pub fn image_layout(busybox: &[u8], applets: &[String], image_name: &str) -> Result<Vec<u8>> {
    let layer = layer(busybox, applets)?;
    let layer_digest = digest(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/"
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [{ "created_by": "weir-testbed: busybox-static and applet links" }]
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, &config),
        "layers": [descriptor(MEDIA_LAYER, &layer)]
    }))?;
    let mut manifest_desc = descriptor(MEDIA_MANIFEST, &manifest);
    manifest_desc["annotations"] = json!({
        "io.containerd.image.name": image_name,
        "org.opencontainers.image.ref.name": image_name.rsplit_once(':').map_or("latest", |(_, tag)| tag),
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest_desc]
    }))?;

    let mut tar = tar::Builder::new(Vec::new());
    append_dir(&mut tar, "blobs/")?;
    append_dir(&mut tar, "blobs/sha256/")?;
    for blob in [&layer, &config, &manifest] {
        append_file(
            &mut tar,
            &format!("blobs/sha256/{}", hex(blob)),
            blob,
            0o644,
        )?;
    }
    append_file(
        &mut tar,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;
    append_file(&mut tar, "index.json", &index, 0o644)?;
    Ok(tar.into_inner()?)
}

/// The root filesystem: /bin/busybox, /bin/<applet> -> busybox, and the
/// directories runc mounts onto.
fn layer(busybox: &[u8], applets: &[String]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for dir in [
        "bin/", "dev/", "etc/", "proc/", "sys/", "tmp/", "root/", "run/",
    ] {
        append_dir(&mut tar, dir)?;
    }
    append_file(&mut tar, "bin/busybox", busybox, 0o755)?;
    for applet in applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name("busybox")?;
        tar.append_data(&mut h, format!("bin/{applet}"), std::io::empty())?;
    }
    Ok(tar.into_inner()?)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

fn append_file(tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    tar.append_data(&mut h, path, data)?;
    Ok(())
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(data))
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest(data), "size": data.len() })
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, io::Read};

    use super::*;

    fn entries(tar_bytes: &[u8]) -> BTreeMap<String, (tar::EntryType, Vec<u8>, Option<String>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        let mut out = BTreeMap::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let kind = e.header().entry_type();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(path, (kind, data, link));
        }
        out
    }

    #[test]
    fn layout_digests_chain_from_index_to_layer() {
        let tar = image_layout(
            b"\x7fELF fake busybox",
            &["sh".into(), "ip".into()],
            "docker.io/library/t:v1",
        )
        .unwrap();
        let files = entries(&tar);
        assert_eq!(files["oci-layout"].1, br#"{"imageLayoutVersion":"1.0.0"}"#);
        let blob = |d: &Value| {
            let digest = d["digest"].as_str().unwrap();
            let data =
                &files[&format!("blobs/sha256/{}", digest.strip_prefix("sha256:").unwrap())].1;
            assert_eq!(digest, super::digest(data), "digest matches content");
            assert_eq!(d["size"].as_u64().unwrap(), data.len() as u64);
            data.clone()
        };
        let index: Value = serde_json::from_slice(&files["index.json"].1).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "docker.io/library/t:v1"
        );
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "v1");
        let manifest: Value = serde_json::from_slice(&blob(m)).unwrap();
        let config: Value = serde_json::from_slice(&blob(&manifest["config"])).unwrap();
        let layer = blob(&manifest["layers"][0]);
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            super::digest(&layer),
            "uncompressed layer: diff_id = digest"
        );

        let rootfs = entries(&layer);
        assert_eq!(rootfs["bin/busybox"].1, b"\x7fELF fake busybox");
        assert_eq!(rootfs["bin/sh"].0, tar::EntryType::Symlink);
        assert_eq!(rootfs["bin/ip"].2.as_deref(), Some("busybox"));
        assert!(rootfs.contains_key("proc/"));
    }

    #[test]
    fn layouts_are_reproducible() {
        let a = image_layout(b"x", &["sh".into()], "t:latest").unwrap();
        let b = image_layout(b"x", &["sh".into()], "t:latest").unwrap();
        assert_eq!(a, b);
    }
}
