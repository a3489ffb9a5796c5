//! The checked-in JSON Schema files must match the Rust types: a wire change shows up in review as a
//! diff of `schemas/json/`, never silently. Fix a failure with `just schemas`.

use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn checked_in_schemas_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    let docs = proxflow_schemas::registry::all();
    let mut drift = Vec::new();
    for doc in &docs {
        let path = dir.join(doc.id.file_name());
        match std::fs::read_to_string(&path) {
            Ok(on_disk) => {
                let on_disk: serde_json::Value = serde_json::from_str(&on_disk)
                    .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
                if on_disk != doc.schema {
                    drift.push(format!("{} differs from {}", path.display(), doc.id));
                }
            }
            Err(e) => drift.push(format!("{} missing: {e}", path.display())),
        }
    }
    let expected: BTreeSet<String> = docs.iter().map(|d| d.id.file_name()).collect();
    for entry in std::fs::read_dir(&dir).expect("schemas/json exists") {
        let name = entry.expect("readable dir entry").file_name();
        let name = name.to_string_lossy().into_owned();
        if !expected.contains(&name) {
            drift.push(format!("{name} has no type behind it"));
        }
    }
    assert!(
        drift.is_empty(),
        "schemas/json drifted from the types; run `just schemas`:\n  {}",
        drift.join("\n  ")
    );
}

#[test]
fn every_schema_id_is_unique() {
    let docs = proxflow_schemas::registry::all();
    let names: BTreeSet<_> = docs.iter().map(|d| d.id.name).collect();
    assert_eq!(
        names.len(),
        docs.len(),
        "two wire types share a schema name"
    );
}
