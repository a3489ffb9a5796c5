//! No service crate depends on another service crate: what two services share lives in
//! `proxflow-runtime` (mechanisms), `proxflow-schemas` (wire types and names) or a small library
//! crate (`proxflow-platform`, the Proxmox and ZFS clients). Read from
//! `cargo metadata`, so a new edge fails here the day it is added.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// The crates that run as services (`proxflow serve <name>`).
const SERVICES: &[&str] = &[
    "proxflow-gateway",
    "proxflow-orchestrator",
    "proxflow-provisioner",
    "proxflow-capacity",
    "proxflow-snapshotter",
    "proxflow-replicator",
    "proxflow-remediator",
    "proxflow-patcher",
    "proxflow-lifecycle",
];

/// The library crates a service may depend on. Anything else in the workspace is not a library a
/// service may lean on: a new crate is a service until it is added here on purpose.
const LIBRARIES: &[&str] = &[
    "proxflow-runtime",
    "proxflow-schemas",
    "proxflow-platform",
    "proxflow-pve",
    "proxflow-pve-sim",
    "proxflow-zfs",
    "proxflow-testkit",
    // The operator's read models, which the gateway's console renders as the CLI does.
    "proxflow-view",
];

#[test]
fn no_service_crate_depends_on_another() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let mut seen = 0;
    let mut edges = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        if !SERVICES.contains(&name) {
            continue;
        }
        seen += 1;
        for d in p["dependencies"].as_array().unwrap() {
            // Dev-dependencies (test fixtures) are not part of the service.
            if d["kind"].as_str() == Some("dev") {
                continue;
            }
            let dep = d["name"].as_str().unwrap();
            // A path dependency is a workspace crate: it must be one of the libraries.
            if d.get("path").is_some_and(|p| !p.is_null()) && !LIBRARIES.contains(&dep) {
                edges.push(format!("{name} -> {dep}"));
            }
        }
    }
    assert_eq!(
        seen,
        SERVICES.len(),
        "every service crate is in the workspace"
    );
    assert!(
        edges.is_empty(),
        "service crates depending on a workspace crate that is not a library: {edges:?}"
    );
}
