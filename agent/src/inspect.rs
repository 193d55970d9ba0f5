//! Read-only views of the datapath for operators.
use std::path::Path;

use anyhow::Context as _;

use crate::datapath::loader::verdict_counts;

pub fn drops(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let counts = verdict_counts(pin_dir).with_context(|| format!("reading counters under {}", pin_dir.display()))?;
    if json {
        let rows: Vec<_> = counts
            .iter()
            .map(|(r, n)| serde_json::json!({"reason": r.name(), "packets": n, "meaning": r.describe()}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<20} {:>12}  MEANING", "VERDICT", "PACKETS");
        for (r, n) in counts {
            println!("{:<20} {:>12}  {}", r.name(), n, r.describe());
        }
    }
    Ok(())
}
