//! OCI images built locally (nothing can be pulled here).
//!
//! - `write_busybox_image`: a minimal test image (one layer with a static
//!   busybox and its applet links), packed as an image-layout tar that
//!   `ctr images import` accepts.
//! - `LayerWriter` + `write_image_archive`: the pieces `cargo xtask image`
//!   builds weir's image with: a deterministic layer written to disk, and an
//!   archive that is at once an OCI image layout (`ctr images import`,
//!   `kind load image-archive`, `docker load` since 25) and a `docker save`
//!   archive (`manifest.json`, `repositories`) for older docker.

use std::{
    fs,
    io::{BufWriter, Read, Write},
    path::{Path, PathBuf},
    process::Command,
};

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
    let applets: Vec<String> =
        list.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox").map(String::from).collect();
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
        append_file(&mut tar, &format!("blobs/sha256/{}", hex(blob)), blob, 0o644)?;
    }
    append_file(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
    append_file(&mut tar, "index.json", &index, 0o644)?;
    Ok(tar.into_inner()?)
}

/// The root filesystem: /bin/busybox, /bin/<applet> -> busybox, and the
/// directories runc mounts onto.
fn layer(busybox: &[u8], applets: &[String]) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    for dir in ["bin/", "dev/", "etc/", "proc/", "sys/", "tmp/", "root/", "run/"] {
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

// ------------------------------------------------------------ image archives

/// Timestamp of every image this module writes: builds from the same inputs
/// must give the same digests.
pub const EPOCH: &str = "1970-01-01T00:00:00Z";
const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A layer tar written straight to disk, with every header normalised
/// (mtime 0, uid/gid 0, no user or group names), so the same entries in the
/// same order always give the same bytes. Parent directories must be added
/// before what they hold; callers add entries in sorted order.
pub struct LayerWriter {
    tar: tar::Builder<BufWriter<fs::File>>,
    path: PathBuf,
}

impl LayerWriter {
    pub fn create(path: &Path) -> Result<Self> {
        let file = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self { tar: tar::Builder::new(BufWriter::new(file)), path: path.to_path_buf() })
    }

    /// `path` relative to the root, without a trailing slash.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        self.tar.append_data(&mut h, format!("{path}/"), std::io::empty())?;
        Ok(())
    }

    /// A regular file of `size` bytes read from `data` (exactly `size`:
    /// a file that changed size while being read is an error).
    pub fn file(&mut self, path: &str, mode: u32, size: u64, data: impl Read) -> Result<()> {
        let mut h = header(tar::EntryType::Regular, mode, size);
        let mut counted = CountingReader { inner: data.take(size), n: 0 };
        self.tar.append_data(&mut h, path, &mut counted).with_context(|| format!("append {path}"))?;
        if counted.n != size {
            bail!("{path}: expected {size} bytes, read {}", counted.n);
        }
        Ok(())
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, path, target).with_context(|| format!("append {path} -> {target}"))?;
        Ok(())
    }

    /// Writes the end-of-archive blocks and flushes the file.
    pub fn finish(self) -> Result<PathBuf> {
        let mut w = self.tar.into_inner()?;
        w.flush()?;
        w.into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
            .with_context(|| format!("sync {}", self.path.display()))?;
        Ok(self.path)
    }
}

struct CountingReader<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// An image reference split the way the archive formats need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `ghcr.io/weir-net/weir:latest`, `docker.io/library/weir:dev`: what
    /// containerd names the image (`io.containerd.image.name`).
    pub full: String,
    /// The repository as docker prints it: `ghcr.io/weir-net/weir`, `weir`.
    pub familiar_repo: String,
    pub tag: String,
}

impl ImageRef {
    /// Parses `name[:tag]` (tag `latest` when absent), normalised like
    /// docker does: `weir` is `docker.io/library/weir`. Digests are refused:
    /// an archive names an image by tag.
    pub fn parse(name: &str) -> Result<Self> {
        if name.contains('@') {
            bail!("{name:?}: an image archive is named by tag, not digest");
        }
        let (repo, tag) = match name.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (name, "latest"),
        };
        let tag_ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !tag_ok {
            bail!("{name:?}: invalid tag {tag:?}");
        }
        let repo_ok = !repo.is_empty()
            && repo.split('/').all(|part| !part.is_empty())
            && repo.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c));
        if !repo_ok {
            bail!("{name:?}: invalid repository {repo:?}");
        }
        let first = repo.split('/').next().unwrap_or_default();
        let has_registry = repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
        let full_repo = if has_registry {
            repo.to_string()
        } else if repo.contains('/') {
            format!("docker.io/{repo}")
        } else {
            format!("docker.io/library/{repo}")
        };
        if full_repo.chars().any(|c| c.is_ascii_uppercase()) {
            bail!("{name:?}: repository names are lowercase");
        }
        let familiar_repo = full_repo
            .strip_prefix("docker.io/library/")
            .or_else(|| full_repo.strip_prefix("docker.io/"))
            .unwrap_or(&full_repo)
            .to_string();
        Ok(Self { full: format!("{full_repo}:{tag}"), familiar_repo, tag: tag.to_string() })
    }

    /// `weir:dev` for docker.io/library/weir:dev (what `docker save` writes).
    pub fn familiar(&self) -> String {
        format!("{}:{}", self.familiar_repo, self.tag)
    }
}

/// What `write_image_archive` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveDigests {
    /// The image's identity: what `ctr images ls` and a registry show.
    pub manifest: String,
    /// What `docker images` shows as the image ID.
    pub config: String,
    /// Uncompressed layer: its digest is also its diff_id.
    pub layer: String,
    pub layer_size: u64,
}

/// Packs one uncompressed layer (a tar on disk) with `config` into an image
/// archive at `out` (written beside, then renamed: a reader never sees half
/// of it). `config` is the image config without `rootfs`, which is filled in
/// here: at least `architecture`, `os` and `config`.
///
/// The archive holds `oci-layout`, `index.json` (the manifest annotated with
/// `io.containerd.image.name` = the full name and
/// `org.opencontainers.image.ref.name` = the tag, as docker 25 writes them),
/// `blobs/sha256/*`, and docker's `manifest.json` and `repositories`
/// pointing at the same blobs. containerd reads the OCI layout and ignores
/// the rest; docker before 25 reads `manifest.json`.
pub fn write_image_archive(name: &ImageRef, config: Value, layer: &Path, out: &Path) -> Result<ArchiveDigests> {
    let (layer_hex, size) = hash_file(layer)?;
    let layer = LayerBlob { path: layer, hex: layer_hex, size };
    let docs = ArchiveDocs::new(name, config, &layer)?;
    write_through_tmp(out, |tar| append_archive(tar, &docs, &layer))?;
    Ok(ArchiveDigests {
        manifest: digest(&docs.manifest),
        config: digest(&docs.config),
        layer: layer.digest(),
        layer_size: layer.size,
    })
}

/// The uncompressed layer on disk, as the archive names it.
struct LayerBlob<'p> {
    path: &'p Path,
    hex: String,
    size: u64,
}

impl LayerBlob<'_> {
    fn digest(&self) -> String {
        format!("sha256:{}", self.hex)
    }
}

/// The archive's JSON documents, serialised: the image config (with
/// `rootfs`), the OCI manifest and index, docker's `manifest.json` and
/// `repositories`.
struct ArchiveDocs {
    config: Vec<u8>,
    manifest: Vec<u8>,
    index: Vec<u8>,
    docker_manifest: Vec<u8>,
    repositories: Vec<u8>,
}

impl ArchiveDocs {
    fn new(name: &ImageRef, mut config: Value, layer: &LayerBlob) -> Result<Self> {
        let layer_digest = layer.digest();
        let obj = config.as_object_mut().context("the image config must be a JSON object")?;
        for key in ["architecture", "os", "config"] {
            if !obj.contains_key(key) {
                bail!("the image config lacks {key:?}");
            }
        }
        obj.insert("rootfs".into(), json!({ "type": "layers", "diff_ids": [layer_digest] }));
        let platform = json!({ "architecture": obj["architecture"], "os": obj["os"] });
        let config = serde_json::to_vec(&config)?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": descriptor(MEDIA_CONFIG, &config),
            "layers": [{ "mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer.size }]
        }))?;
        let mut manifest_desc = descriptor(MEDIA_MANIFEST, &manifest);
        manifest_desc["platform"] = platform;
        manifest_desc["annotations"] = json!({
            "io.containerd.image.name": name.full,
            "org.opencontainers.image.ref.name": name.tag,
        });
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [manifest_desc]
        }))?;
        let docker_manifest = serde_json::to_vec(&json!([{
            "Config": format!("blobs/sha256/{}", hex(&config)),
            "RepoTags": [name.familiar()],
            "Layers": [format!("blobs/sha256/{}", layer.hex)]
        }]))?;
        let repositories = serde_json::to_vec(&json!({
            name.familiar_repo.clone(): { name.tag.clone(): layer.hex }
        }))?;
        Ok(ArchiveDocs { config, manifest, index, docker_manifest, repositories })
    }
}

/// Writes a tar to `out` through a temporary file beside it, synced, then
/// renamed over `out`; on failure the temporary file is removed.
fn write_through_tmp(
    out: &Path,
    fill: impl FnOnce(&mut tar::Builder<BufWriter<fs::File>>) -> Result<()>,
) -> Result<()> {
    let tmp =
        out.with_file_name(format!(".{}.tmp", out.file_name().context("output has no file name")?.to_string_lossy()));
    let file = fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let done = fill(&mut tar).and_then(|()| {
        let mut w = tar.into_inner()?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, out).with_context(|| format!("rename to {}", out.display()))?;
        Ok(())
    });
    if let Err(e) = done {
        let _ = fs::remove_file(&tmp);
        return Err(e.context(format!("write {}", out.display())));
    }
    Ok(())
}

/// The archive's entries: the blobs in digest order (the layer streamed from
/// its file), then `index.json`, `manifest.json`, `oci-layout` and
/// `repositories`.
fn append_archive<W: Write>(tar: &mut tar::Builder<W>, docs: &ArchiveDocs, layer: &LayerBlob) -> Result<()> {
    append_dir(tar, "blobs/")?;
    append_dir(tar, "blobs/sha256/")?;
    let mut blobs: Vec<(String, Option<&[u8]>)> = vec![
        (format!("blobs/sha256/{}", hex(&docs.config)), Some(docs.config.as_slice())),
        (format!("blobs/sha256/{}", hex(&docs.manifest)), Some(docs.manifest.as_slice())),
        (format!("blobs/sha256/{}", layer.hex), None),
    ];
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    for (blob_name, data) in blobs {
        match data {
            Some(d) => append_file(tar, &blob_name, d, 0o644)?,
            None => {
                let f = fs::File::open(layer.path).with_context(|| format!("open {}", layer.path.display()))?;
                let mut h = header(tar::EntryType::Regular, 0o644, layer.size);
                tar.append_data(&mut h, &blob_name, f.take(layer.size))?;
            }
        }
    }
    append_file(tar, "index.json", &docs.index, 0o644)?;
    append_file(tar, "manifest.json", &docs.docker_manifest, 0o644)?;
    append_file(tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
    append_file(tar, "repositories", &docs.repositories, 0o644)?;
    Ok(())
}

/// One entry of a tar archive, as tests look at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    /// Without a trailing slash.
    pub path: String,
    pub kind: EntryKind,
    pub data: Vec<u8>,
    pub link: Option<String>,
    pub mode: u32,
    pub mtime: u64,
    pub uid: u64,
    pub gid: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Every entry of a tar archive, in archive order.
pub fn tar_entries(bytes: &[u8]) -> Result<Vec<TarEntry>> {
    let mut out = Vec::new();
    for e in tar::Archive::new(bytes).entries()? {
        let mut e = e?;
        let h = e.header().clone();
        let path = e.path()?.to_string_lossy().trim_end_matches('/').to_string();
        let link = e.link_name()?.map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        let kind = match h.entry_type() {
            tar::EntryType::Regular => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            _ => EntryKind::Other,
        };
        out.push(TarEntry { path, kind, data, link, mode: h.mode()?, mtime: h.mtime()?, uid: h.uid()?, gid: h.gid()? });
    }
    Ok(out)
}

/// sha256 (hex) and size of a file, read in chunks.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let hex = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, size))
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

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, path, std::io::empty())?;
    Ok(())
}

fn append_file<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8], mode: u32) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    tar.append_data(&mut h, path, data)?;
    Ok(())
}

fn hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
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
            let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(path, (kind, data, link));
        }
        out
    }

    #[test]
    fn layout_digests_chain_from_index_to_layer() {
        let tar = image_layout(b"\x7fELF fake busybox", &["sh".into(), "ip".into()], "docker.io/library/t:v1").unwrap();
        let files = entries(&tar);
        assert_eq!(files["oci-layout"].1, br#"{"imageLayoutVersion":"1.0.0"}"#);
        let blob = |d: &Value| {
            let digest = d["digest"].as_str().unwrap();
            let data = &files[&format!("blobs/sha256/{}", digest.strip_prefix("sha256:").unwrap())].1;
            assert_eq!(digest, super::digest(data), "digest matches content");
            assert_eq!(d["size"].as_u64().unwrap(), data.len() as u64);
            data.clone()
        };
        let index: Value = serde_json::from_slice(&files["index.json"].1).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["io.containerd.image.name"], "docker.io/library/t:v1");
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "v1");
        let manifest: Value = serde_json::from_slice(&blob(m)).unwrap();
        let config: Value = serde_json::from_slice(&blob(&manifest["config"])).unwrap();
        let layer = blob(&manifest["layers"][0]);
        assert_eq!(config["rootfs"]["diff_ids"][0], super::digest(&layer), "uncompressed layer: diff_id = digest");

        let rootfs = entries(&layer);
        assert_eq!(rootfs["bin/busybox"].1, b"\x7fELF fake busybox");
        assert_eq!(rootfs["bin/sh"].0, tar::EntryType::Symlink);
        assert_eq!(rootfs["bin/ip"].2.as_deref(), Some("busybox"));
        assert!(rootfs.contains_key("proc/"));
    }

    #[test]
    fn image_refs_normalise_like_docker() {
        let r = ImageRef::parse("weir").unwrap();
        assert_eq!(r.full, "docker.io/library/weir:latest");
        assert_eq!(r.familiar(), "weir:latest");
        let r = ImageRef::parse("docker.io/library/weir:dev").unwrap();
        assert_eq!((r.full.as_str(), r.familiar().as_str()), ("docker.io/library/weir:dev", "weir:dev"));
        let r = ImageRef::parse("ghcr.io/weir-net/weir:latest").unwrap();
        assert_eq!(r.full, "ghcr.io/weir-net/weir:latest");
        assert_eq!(r.familiar(), "ghcr.io/weir-net/weir:latest");
        assert_eq!(r.tag, "latest");
        let r = ImageRef::parse("someone/weir:1.2").unwrap();
        assert_eq!((r.full.as_str(), r.familiar().as_str()), ("docker.io/someone/weir:1.2", "someone/weir:1.2"));
        let r = ImageRef::parse("localhost:5000/weir").unwrap();
        assert_eq!(r.full, "localhost:5000/weir:latest");
        for bad in ["weir@sha256:00", "Weir:dev", "weir:", "weir:-x", "/weir", "weir//x:1"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} accepted");
        }
    }

    fn layer_file(dir: &Path, content: &[u8]) -> PathBuf {
        let path = dir.join("layer.tar");
        let mut w = LayerWriter::create(&path).unwrap();
        w.dir("usr", 0o755).unwrap();
        w.file("usr/x", 0o755, content.len() as u64, content).unwrap();
        w.symlink("usr/y", "x").unwrap();
        w.finish().unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("weir-oci-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn archives_are_oci_layouts_and_docker_save_archives() {
        let dir = scratch("archive");
        let layer = layer_file(&dir, b"hello");
        let out = dir.join("image.tar");
        let name = ImageRef::parse("docker.io/library/weir:dev").unwrap();
        let config = json!({"architecture": "amd64", "os": "linux", "created": EPOCH,
                            "config": {"Entrypoint": ["/usr/x"]}});
        let d = write_image_archive(&name, config.clone(), &layer, &out).unwrap();
        let bytes = fs::read(&out).unwrap();
        let files = entries(&bytes);
        let blob = |digest: &str| &files[&format!("blobs/sha256/{}", digest.strip_prefix("sha256:").unwrap())].1;

        let index: Value = serde_json::from_slice(&files["index.json"].1).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], d.manifest);
        assert_eq!(m["annotations"]["io.containerd.image.name"], "docker.io/library/weir:dev");
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "dev");
        assert_eq!(m["platform"], json!({"architecture": "amd64", "os": "linux"}));
        let manifest: Value = serde_json::from_slice(blob(&d.manifest)).unwrap();
        assert_eq!(manifest["config"]["digest"], d.config);
        assert_eq!(manifest["layers"][0]["digest"], d.layer);
        assert_eq!(manifest["layers"][0]["size"], d.layer_size);
        let cfg: Value = serde_json::from_slice(blob(&d.config)).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][0], d.layer);
        assert_eq!(cfg["config"]["Entrypoint"][0], "/usr/x");
        assert_eq!(super::digest(blob(&d.layer)), d.layer);
        assert_eq!(super::digest(blob(&d.config)), d.config);
        let rootfs = entries(blob(&d.layer));
        assert_eq!(rootfs["usr/x"].1, b"hello");
        assert_eq!(rootfs["usr/y"].2.as_deref(), Some("x"));

        let docker: Value = serde_json::from_slice(&files["manifest.json"].1).unwrap();
        assert_eq!(docker[0]["RepoTags"], json!(["weir:dev"]));
        assert_eq!(docker[0]["Config"], format!("blobs/sha256/{}", d.config.strip_prefix("sha256:").unwrap()));
        assert_eq!(docker[0]["Layers"][0], format!("blobs/sha256/{}", d.layer.strip_prefix("sha256:").unwrap()));
        let repos: Value = serde_json::from_slice(&files["repositories"].1).unwrap();
        assert!(repos["weir"]["dev"].is_string());
        assert!(files.contains_key("oci-layout"));

        // Same inputs, same bytes; another tag, another manifest digest but
        // the same config and layer.
        let again = dir.join("again.tar");
        assert_eq!(write_image_archive(&name, config.clone(), &layer, &again).unwrap(), d);
        assert_eq!(fs::read(&again).unwrap(), bytes);
        let other = ImageRef::parse("weir:other").unwrap();
        let d2 = write_image_archive(&other, config, &layer, &again).unwrap();
        assert_eq!((d2.config.as_str(), d2.layer.as_str()), (d.config.as_str(), d.layer.as_str()));
        assert!(!dir.join(".image.tar.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn layer_files_must_have_the_size_announced() {
        let dir = scratch("short");
        let mut w = LayerWriter::create(&dir.join("l.tar")).unwrap();
        assert!(w.file("x", 0o644, 10, &b"short"[..]).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn layouts_are_reproducible() {
        let a = image_layout(b"x", &["sh".into()], "t:latest").unwrap();
        let b = image_layout(b"x", &["sh".into()], "t:latest").unwrap();
        assert_eq!(a, b);
    }
}
