//! The files of a manifest directory, re-read only when they change (size
//! or mtime), each keeping its last good parse when it stops parsing. The
//! manifest-dir source and the fake API server both read directories this
//! way.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use tracing::warn;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

#[derive(Debug)]
pub struct ManifestFiles<T> {
    dir: PathBuf,
    stamps: BTreeMap<PathBuf, Stamp>,
    /// Last good parse of each file.
    files: BTreeMap<PathBuf, T>,
}

impl<T> ManifestFiles<T> {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, stamps: BTreeMap::new(), files: BTreeMap::new() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every file's last good parse, by path.
    pub fn files(&self) -> &BTreeMap<PathBuf, T> {
        &self.files
    }

    /// Re-reads the `.yaml`, `.yml` and `.json` files whose stamp changed
    /// with `parse`, forgets removed ones; returns whether anything changed.
    pub fn scan(&mut self, parse: impl Fn(&str) -> Result<T, String>) -> std::io::Result<bool> {
        let mut seen = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if !is_manifest(&path) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file() {
                seen.insert(path, Stamp { modified: meta.modified().ok(), len: meta.len() });
            }
        }
        for (path, stamp) in &seen {
            if self.stamps.get(path) == Some(stamp) {
                continue;
            }
            match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|t| parse(&t)) {
                Ok(parsed) => {
                    self.files.insert(path.clone(), parsed);
                }
                Err(e) => warn!(file = %path.display(), error = %e, "manifest skipped; keeping its last good contents"),
            }
        }
        self.files.retain(|p, _| seen.contains_key(p));
        let changed = self.stamps != seen;
        self.stamps = seen;
        Ok(changed)
    }
}

fn is_manifest(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}
