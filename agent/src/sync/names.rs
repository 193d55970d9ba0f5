//! The names behind the numbers in the policy maps (slot -> policy,
//! identity -> what it is, endpoint -> pod), for `weir-agent inspect`, a
//! separate process: `<run dir>/policy-names.json`.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use tracing::warn;

pub const NAMES_FILE: &str = "policy-names.json";

/// The names as last written.
#[derive(Debug, PartialEq, Eq)]
pub struct Names {
    pub slots: BTreeMap<u32, String>,
    pub identities: BTreeMap<u32, String>,
    pub endpoints: BTreeMap<u32, String>,
}

/// Writes the names file when the names change (a label or policy change
/// rarely renames anything, and the file is not small).
pub struct NamesFile {
    path: PathBuf,
    written: Option<Names>,
}

impl NamesFile {
    pub fn new(run_dir: &Path) -> Self {
        Self { path: run_dir.join(NAMES_FILE), written: None }
    }

    /// Whether `slots`/`identities`/`endpoints` are what was last written.
    pub fn unchanged<'a>(
        &self,
        slots: impl Iterator<Item = (u32, &'a str)>,
        identities: &BTreeMap<u32, String>,
        endpoints: &BTreeMap<u32, String>,
    ) -> bool {
        let Some(w) = &self.written else { return false };
        if w.identities != *identities || w.endpoints != *endpoints {
            return false;
        }
        let (mut written, mut now) = (w.slots.iter(), slots);
        loop {
            match (written.next(), now.next()) {
                (None, None) => return true,
                (Some((slot, policy)), Some((s, p))) if *slot == s && policy == p => {}
                _ => return false,
            }
        }
    }

    pub fn write(&mut self, names: Names) {
        let text_keys =
            |m: &BTreeMap<u32, String>| m.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<BTreeMap<_, _>>();
        let doc = serde_json::json!({
            "slots": text_keys(&names.slots),
            "identities": text_keys(&names.identities),
            "endpoints": text_keys(&names.endpoints),
        })
        .to_string();
        if let Err(e) = replace_unsynced(&self.path, doc.as_bytes()) {
            warn!(error = %e, path = %self.path.display(), "policy names not written (inspect shows numbers only)");
        } else {
            self.written = Some(names);
        }
    }
}

/// The endpoint -> pod names a previous agent wrote (none if there is no
/// readable file): how a starting agent knows pods it cannot find by IPv4
/// address (IPv6-only pods) until weir-cni announces new ones.
pub fn read_endpoints(run_dir: &Path) -> BTreeMap<u32, String> {
    let Ok(text) = std::fs::read(run_dir.join(NAMES_FILE)) else { return BTreeMap::new() };
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&text) else { return BTreeMap::new() };
    doc["endpoints"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(ifindex, pod)| Some((ifindex.parse().ok()?, pod.as_str()?.to_string())))
        .collect()
}

/// Replaces a file whole (readers see the old or the new contents), without
/// waiting for the disk: for the names file, which describes the pinned
/// maps (gone after a reboot too) and is written afresh by a starting
/// agent, a sync would only hold up every pass that changes a name.
fn replace_unsynced(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
