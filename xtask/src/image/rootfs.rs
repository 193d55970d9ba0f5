//! An image's root filesystem as a sorted map of entries, filled from this
//! host's files (Debian packages) and from generated content, closed over
//! what the dynamic loader needs, checked, then written as one layer.
//!
//! The image is merged-/usr like Debian 12: `/bin`, `/sbin`, `/lib` and
//! `/lib64` are links into `/usr`, and host files under those names land
//! under `/usr`. Host symlinks are kept (sonames, iptables' command names)
//! except those through `/etc/alternatives`, which the image does not carry:
//! they point straight at what they resolve to.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use weir_testbed::oci::LayerWriter;

use super::elf::{self, Dynamic};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { source: Source, mode: u32, elf: Option<Dynamic> },
    Symlink { target: String },
}

/// Top-level names that are links into /usr (Debian's merged /usr).
const MERGED: [&str; 4] = ["bin", "sbin", "lib", "lib64"];

pub struct Rootfs {
    /// Paths relative to the root, no leading or trailing slash.
    entries: BTreeMap<String, Node>,
    /// Where the loader looks by default, relative to the root
    /// (`lib/x86_64-linux-gnu`, `usr/lib/x86_64-linux-gnu`, `lib`, `usr/lib`).
    lib_dirs: Vec<String>,
    /// The same on the host, to find what an image file needs.
    host_lib_dirs: Vec<PathBuf>,
}

impl Rootfs {
    /// The skeleton: merged-/usr links and the directories a container
    /// runtime mounts onto. `multiarch` is e.g. `x86_64-linux-gnu`.
    pub fn new(multiarch: &str) -> Result<Self> {
        let lib_dirs: Vec<String> =
            [format!("lib/{multiarch}"), format!("usr/lib/{multiarch}"), "lib".into(), "usr/lib".into()].into();
        let mut me = Self {
            entries: BTreeMap::new(),
            host_lib_dirs: lib_dirs.iter().map(|d| Path::new("/").join(d)).collect(),
            lib_dirs,
        };
        for top in MERGED {
            me.dir(&format!("usr/{top}"), 0o755)?;
            me.symlink(top, &format!("usr/{top}"))?;
        }
        for dir in ["dev", "etc", "proc", "sys", "run", "var", "usr/local/bin", "usr/local/sbin"] {
            me.dir(dir, 0o755)?;
        }
        me.dir("root", 0o700)?;
        me.dir("tmp", 0o1777)?;
        me.dir("var/tmp", 0o1777)?;
        me.symlink("var/run", "../run")?;
        Ok(me)
    }

    pub fn entries(&self) -> &BTreeMap<String, Node> {
        &self.entries
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.insert(path, Node::Dir { mode })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(path, Node::Symlink { target: target.into() })
    }

    pub fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Result<()> {
        self.insert(path, Node::File { source: Source::Bytes(data.into()), mode, elf: None })
    }

    /// The host file `host` (followed if a symlink) at `path` in the image.
    pub fn host_file_at(&mut self, path: &str, host: &Path) -> Result<()> {
        let real = fs::canonicalize(host).with_context(|| format!("{} is missing", host.display()))?;
        let meta = fs::metadata(&real)?;
        if !meta.is_file() {
            bail!("{} is not a regular file", real.display());
        }
        let node = Node::File {
            source: Source::Host(real.clone()),
            mode: normal_mode(meta.permissions().mode()),
            elf: elf::read(&real)?,
        };
        self.insert(path, node)
    }

    /// The host path `host` at the same place in the image (merged into
    /// /usr), with every symlink met on the way; returns the image path of
    /// the regular file it ends at.
    pub fn host(&mut self, host: &Path) -> Result<String> {
        let mut host = host.to_path_buf();
        for _ in 0..40 {
            if !host.is_absolute() {
                bail!("{}: host paths are absolute", host.display());
            }
            let (parent, name) = match (host.parent(), host.file_name()) {
                (Some(p), Some(n)) => (p, n),
                _ => bail!("{}: not a file path", host.display()),
            };
            let real_parent = fs::canonicalize(parent).with_context(|| format!("{} is missing", parent.display()))?;
            let here = real_parent.join(name);
            let (asked, placed) = (image_path(&host)?, image_path(&here)?);
            if asked != placed {
                self.symlink(&asked, &format!("/{placed}"))?;
            }
            let meta = fs::symlink_metadata(&here).with_context(|| format!("{} is missing", here.display()))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&here)?;
                if target.starts_with("/etc/alternatives") {
                    // Not in the image: point at what the host resolves it to.
                    let real =
                        fs::canonicalize(&here).with_context(|| format!("{} is a dangling link", here.display()))?;
                    self.symlink(&placed, &format!("/{}", image_path(&real)?))?;
                    host = real;
                } else {
                    let text = target.to_str().context("non-UTF-8 link")?.to_string();
                    self.symlink(&placed, &text)?;
                    host = real_parent.join(target);
                }
                continue;
            }
            if !meta.is_file() {
                bail!("{} is not a regular file", here.display());
            }
            let node = Node::File {
                source: Source::Host(here.clone()),
                mode: normal_mode(meta.permissions().mode()),
                elf: elf::read(&here)?,
            };
            self.insert(&placed, node)?;
            return Ok(placed);
        }
        bail!("{}: too many levels of symbolic links", host.display())
    }

    /// Adds entries (parents first, as directories) and refuses to replace
    /// an entry by a different one.
    fn insert(&mut self, path: &str, node: Node) -> Result<()> {
        let path = clean(path)?;
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let parent = parts[..i].join("/");
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(parent.clone(), Node::Dir { mode: 0o755 });
                }
                Some(Node::Dir { .. }) => {}
                Some(other) => bail!("/{path}: its parent /{parent} is not a directory in the image ({other:?})"),
            }
        }
        match self.entries.get(&path) {
            None => {
                self.entries.insert(path, node);
            }
            Some(old) if *old == node => {}
            // An implicit parent made before its explicit entry.
            Some(Node::Dir { .. }) if matches!(node, Node::Dir { .. }) => {
                self.entries.insert(path, node);
            }
            Some(old) => bail!("/{path} is already in the image as {old:?}, not {node:?}"),
        }
        Ok(())
    }

    /// Where `path` ends inside the image once every link is followed;
    /// None when something on the way is missing.
    pub fn resolve(&self, path: &str) -> Option<String> {
        let mut todo: VecDeque<String> = path.split('/').map(String::from).collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(part) = todo.pop_front() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(part);
            match self.entries.get(&cur.join("/"))? {
                Node::Symlink { target } => {
                    hops += 1;
                    if hops > 40 {
                        return None;
                    }
                    cur.pop();
                    if target.starts_with('/') {
                        cur.clear();
                    }
                    for t in target.split('/').rev() {
                        todo.push_front(t.to_string());
                    }
                }
                Node::File { .. } if !todo.is_empty() => return None,
                _ => {}
            }
        }
        Some(cur.join("/"))
    }

    fn is_file(&self, path: &str) -> bool {
        self.resolve(path).is_some_and(|p| matches!(self.entries.get(&p), Some(Node::File { .. })))
    }

    /// Adds, from the host, every interpreter and library an ELF file of the
    /// image needs and the image lacks, until nothing is missing.
    pub fn add_dependencies(&mut self) -> Result<()> {
        let mut tried = BTreeSet::new();
        loop {
            let mut wanted: Vec<(String, String, Vec<String>)> = Vec::new(); // (who, what, runpath)
            for (path, node) in &self.entries {
                let Node::File { elf: Some(d), .. } = node else {
                    continue;
                };
                if let Some(interp) = &d.interp
                    && !self.is_file(interp)
                {
                    wanted.push((path.clone(), interp.clone(), Vec::new()));
                }
                for lib in &d.needed {
                    if self.find_library(path, lib, &d.runpath).is_none() {
                        wanted.push((path.clone(), lib.clone(), d.runpath.clone()));
                    }
                }
            }
            if wanted.is_empty() {
                return Ok(());
            }
            let mut progress = false;
            for (who, what, runpath) in wanted {
                if !tried.insert(what.clone()) {
                    continue;
                }
                let host = if what.contains('/') {
                    Some(PathBuf::from(&what))
                } else {
                    let mut dirs: Vec<PathBuf> =
                        runpath.iter().filter(|d| d.starts_with('/')).map(PathBuf::from).collect();
                    dirs.extend(self.host_lib_dirs.iter().cloned());
                    dirs.into_iter().map(|d| d.join(&what)).find(|p| p.is_file())
                };
                let Some(host) = host.filter(|p| p.exists()) else {
                    bail!("/{who} needs {what}, which is neither in the image nor on this host");
                };
                self.host(&host).with_context(|| format!("/{who} needs {what}"))?;
                progress = true;
            }
            if !progress {
                // Added, yet still not found where the loader looks.
                return self.check();
            }
        }
    }

    /// Where the loader would find `lib` for the image file `who`.
    fn find_library(&self, who: &str, lib: &str, runpath: &[String]) -> Option<String> {
        if lib.contains('/') {
            return self.is_file(lib).then(|| lib.to_string());
        }
        let origin = who.rsplit_once('/').map_or("", |(d, _)| d);
        runpath
            .iter()
            .map(|d| d.replace("${ORIGIN}", &format!("/{origin}")).replace("$ORIGIN", &format!("/{origin}")))
            .chain(self.lib_dirs.iter().cloned())
            .map(|d| format!("{}/{lib}", d.trim_end_matches('/')))
            .find(|p| self.is_file(p))
    }

    /// Every link resolves, every ELF file's interpreter and libraries are
    /// in the image where the loader looks for them.
    pub fn check(&self) -> Result<()> {
        let mut problems = Vec::new();
        for (path, node) in &self.entries {
            match node {
                Node::Symlink { target } if self.resolve(path).is_none_or(|p| !self.entries.contains_key(&p)) => {
                    problems.push(format!("/{path} -> {target} leads nowhere"));
                }
                Node::File { elf: Some(d), .. } => {
                    if let Some(interp) = &d.interp
                        && !self.is_file(interp)
                    {
                        problems.push(format!("/{path}: interpreter {interp} missing"));
                    }
                    for lib in &d.needed {
                        if self.find_library(path, lib, &d.runpath).is_none() {
                            problems.push(format!("/{path}: library {lib} missing"));
                        }
                    }
                }
                _ => {}
            }
        }
        if !problems.is_empty() {
            bail!("the image is incomplete:\n  {}", problems.join("\n  "));
        }
        Ok(())
    }

    /// `path`, `path/ -> target`, `path (mode, size)` lines, sorted.
    pub fn listing(&self) -> Result<Vec<String>> {
        self.entries
            .iter()
            .map(|(path, node)| {
                Ok(match node {
                    Node::Dir { mode } => format!("/{path}/ {mode:04o}"),
                    Node::Symlink { target } => format!("/{path} -> {target}"),
                    Node::File { source, mode, .. } => {
                        format!("/{path} {mode:04o} {}", source_len(source)?)
                    }
                })
            })
            .collect()
    }

    /// Writes the layer tar: entries in path order, headers normalised.
    pub fn write_layer(&self, out: &Path) -> Result<()> {
        let mut w = LayerWriter::create(out)?;
        for (path, node) in &self.entries {
            match node {
                Node::Dir { mode } => w.dir(path, *mode)?,
                Node::Symlink { target } => w.symlink(path, target)?,
                Node::File { source: Source::Bytes(b), mode, .. } => {
                    w.file(path, *mode, b.len() as u64, b.as_slice())?
                }
                Node::File { source: Source::Host(h), mode, .. } => {
                    let f = fs::File::open(h).with_context(|| format!("open {}", h.display()))?;
                    let size = f.metadata()?.len();
                    w.file(path, *mode, size, std::io::BufReader::new(f))?
                }
            }
        }
        w.finish()?;
        Ok(())
    }
}

fn source_len(source: &Source) -> Result<u64> {
    Ok(match source {
        Source::Bytes(b) => b.len() as u64,
        Source::Host(h) => fs::metadata(h).with_context(|| format!("stat {}", h.display()))?.len(),
    })
}

/// 0755 for anything executable, 0644 otherwise: no setuid, no group or
/// world write, whatever the host had.
fn normal_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

/// A host path's place in the image: relative, merged into /usr.
fn image_path(host: &Path) -> Result<String> {
    let s = host.to_str().context("non-UTF-8 path")?;
    let rel = clean(s)?;
    let (top, rest) = rel.split_once('/').unwrap_or((rel.as_str(), ""));
    Ok(if MERGED.contains(&top) && !rest.is_empty() { format!("usr/{rel}") } else { rel })
}

/// `/a//b/./c` -> `a/b/c`; `..` is refused (entries are never relative).
fn clean(path: &str) -> Result<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.is_empty() || parts.contains(&"..") {
        bail!("{path:?} is not a path inside the image");
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_merge_into_usr() {
        assert_eq!(
            image_path(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap(),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(image_path(Path::new("/bin/busybox")).unwrap(), "usr/bin/busybox");
        assert_eq!(image_path(Path::new("/usr/sbin/iptables")).unwrap(), "usr/sbin/iptables");
        assert_eq!(image_path(Path::new("/etc/ssl/certs/x")).unwrap(), "etc/ssl/certs/x");
        assert!(image_path(Path::new("/a/../b")).is_err());
    }

    #[test]
    fn links_resolve_inside_the_image() {
        let mut r = Rootfs::new("x86_64-linux-gnu").unwrap();
        r.bytes("usr/lib/x86_64-linux-gnu/ld.so", "x", 0o755).unwrap();
        r.symlink("usr/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld.so").unwrap();
        r.symlink("usr/bin/sh", "busybox").unwrap();
        r.bytes("usr/bin/busybox", "b", 0o755).unwrap();
        assert_eq!(r.resolve("lib64/ld-linux-x86-64.so.2").as_deref(), Some("usr/lib/x86_64-linux-gnu/ld.so"));
        assert_eq!(r.resolve("/bin/sh").as_deref(), Some("usr/bin/busybox"));
        assert_eq!(r.resolve("var/run/../etc").as_deref(), Some("etc"));
        assert_eq!(r.resolve("bin/nope"), None);
        r.check().unwrap();
        r.symlink("usr/bin/dangling", "nope").unwrap();
        let e = r.check().unwrap_err().to_string();
        assert!(e.contains("/usr/bin/dangling -> nope leads nowhere"), "{e}");
    }

    #[test]
    fn entries_do_not_replace_one_another() {
        let mut r = Rootfs::new("x86_64-linux-gnu").unwrap();
        r.bytes("etc/passwd", "a", 0o644).unwrap();
        r.bytes("etc/passwd", "a", 0o644).unwrap();
        assert!(r.bytes("etc/passwd", "b", 0o644).is_err());
        // Nothing goes below a link.
        assert!(r.bytes("lib/x", "x", 0o644).is_err());
    }

    #[test]
    fn dependencies_come_from_the_host_and_are_checked() {
        let mut r = Rootfs::new(super::super::multiarch().unwrap()).unwrap();
        let me = std::env::current_exe().unwrap();
        r.host_file_at("usr/local/bin/me", &me).unwrap();
        assert!(r.check().is_err(), "libc is not there yet");
        r.add_dependencies().unwrap();
        r.check().unwrap();
        let Some(Node::File { elf: Some(d), .. }) = r.entries().get("usr/local/bin/me") else { panic!() };
        let interp = d.interp.clone().unwrap();
        assert!(r.is_file(&interp), "{interp}");
        assert!(r.find_library("usr/local/bin/me", "libc.so.6", &[]).is_some());
    }
}
