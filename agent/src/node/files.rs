//! Files the agent owns on the node, written atomically: a reader (the
//! container runtime, weir-cni) sees the old file or the new one, never half.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Writes `contents` to `path` via a temp file in the same directory, fsync
/// and rename. Returns false (and writes nothing) when the file already has
/// exactly these contents.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<bool, WriteError> {
    let err = |source| WriteError { path: path.to_path_buf(), source };
    if std::fs::read(path).ok().as_deref() == Some(contents) {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = tempfile_in(dir).map_err(err)?;
    tmp.1.write_all(contents).map_err(err)?;
    tmp.1.sync_all().map_err(err)?;
    std::fs::rename(&tmp.0, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp.0);
        err(e)
    })?;
    Ok(true)
}

/// A hidden temp file the runtime's config loader will not pick up
/// (it reads only `*.conf`, `*.conflist`, `*.json`).
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!(".weir-{}.tmp", std::process::id()));
    let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&path)?;
    Ok((path, file))
}

/// `<dir>/<file>` made ready for a socket to be bound there: the directory
/// exists and a stale socket of an earlier agent is gone.
pub fn socket_path(dir: &Path, file: &str) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(file);
    remove_if_exists(&path)?;
    Ok(path)
}

pub fn remove_if_exists(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replaces_and_skips_identical() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/10-weir.conflist");
        assert!(write_atomic(&p, b"one").unwrap());
        assert!(!write_atomic(&p, b"one").unwrap());
        assert!(write_atomic(&p, b"two").unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind");
        assert!(remove_if_exists(&p).unwrap());
        assert!(!remove_if_exists(&p).unwrap());
    }
}
