//! The export bundle as the offsite copy has it: the newest one, verified against its manifest,
//! and its VMs' configs for the restore. A host whose configuration cannot be read back from the
//! offsite side cannot be rebuilt from it, whatever the source side holds.

use std::path::Path;

use serde_json::{Value, json};

use super::datasets::{FoundBundle, check};
use crate::bundle;

/// The newest bundle under `root` (the export dataset's clone), judged.
pub fn find(root: &Path, snapshot: &str) -> FoundBundle {
    let newest = match bundle::list(root) {
        Ok(all) => all.into_iter().next_back(),
        Err(e) => {
            return FoundBundle {
                name: String::new(),
                check: check("bundle", snapshot, false, e.to_string(), Value::Null),
                vms: Vec::new(),
            };
        }
    };
    let Some(name) = newest else {
        return FoundBundle {
            name: String::new(),
            check: check(
                "bundle",
                snapshot,
                false,
                "no export bundle on the offsite copy: has an export run since the dataset was \
                 last replicated?",
                Value::Null,
            ),
            vms: Vec::new(),
        };
    };
    let dir = root.join(&name);
    let at = format!("{snapshot}:{name}");
    let verdict = match bundle::verify(&dir) {
        Ok(v) if v.ok() => check(
            "bundle",
            &at,
            true,
            format!("{} files match the manifest", v.files),
            json!({"files": v.files, "manifest_sha256": v.manifest_sha256}),
        ),
        Ok(v) => check(
            "bundle",
            &at,
            false,
            v.problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            json!({"files": v.files}),
        ),
        Err(e) => check("bundle", &at, false, e.to_string(), Value::Null),
    };
    let vms = if verdict.passed {
        vm_configs(&dir)
    } else {
        Vec::new()
    };
    FoundBundle {
        name,
        check: verdict,
        vms,
    }
}

/// `vms/<vmid>/config.json` of the bundle in `dir`, by VMID.
fn vm_configs(dir: &Path) -> Vec<(u32, Value)> {
    let Ok(entries) = std::fs::read_dir(dir.join("vms")) else {
        return Vec::new();
    };
    let mut vms: Vec<(u32, Value)> = entries
        .flatten()
        .filter_map(|e| {
            let vmid: u32 = e.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read(e.path().join("config.json")).ok()?;
            Some((vmid, serde_json::from_slice(&text).ok()?))
        })
        .collect();
    vms.sort_by_key(|(vmid, _)| *vmid);
    vms
}
