//! Every GET path of the official schema, with its path parameters filled from the seed scenario:
//! each answer is data valid under the schema's `returns` (checked when the test finishes), a 400
//! for a missing required parameter, a 403 for a path PVE refuses to API tokens, or the explicit
//! not-simulated 501 — never PVE's "not implemented", which would claim PVE lacks the path. Prints
//! the count of simulated paths, and fails if it drops below the floor.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use proxflow_pve_sim::schema::ApiSchema;

mod support;

use support::*;

/// GET paths answered with data today; raise it when more are simulated, never lower it.
const SIMULATED_FLOOR: usize = 57;

#[tokio::test]
async fn every_get_path_answers_data_a_parameter_error_or_not_simulated() {
    let s = sim().await;
    let snapshot = s
        .post("/nodes/pve1/qemu/101/snapshot", &[("snapname", "s1")])
        .await;
    let upid = snapshot.body["data"].as_str().unwrap().to_owned();
    assert_eq!(s.run(snapshot).await, "OK");
    let (schema, _) = ApiSchema::locate().unwrap();
    let fill = |name: &str| -> String {
        match name {
            "node" => "pve1".into(),
            "vmid" => "101".into(),
            "storage" => "local-zfs".into(),
            "snapname" => "s1".into(),
            "upid" => encode(&upid),
            "iface" => "vmbr1".into(),
            "name" | "zpool" => "rpool".into(),
            "volume" => encode("local-zfs:vm-101-disk-0"),
            "userid" => "root@pam".into(),
            "poolid" => "k3s".into(),
            other => other.to_owned(),
        }
    };
    let mut by_kind: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for template in schema.templates("GET") {
        let path: String = template
            .split('/')
            .map(
                |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(param) => fill(param),
                    None => segment.to_owned(),
                },
            )
            .collect::<Vec<_>>()
            .join("/");
        let mut a = s.get(&path).await;
        // Required query parameters the simulator knows values for: asked again with them.
        let known = [
            ("timeframe", "hour"),
            ("disk", "/dev/nvme0n1"),
            ("name", "pve-manager"),
        ];
        if a.status == 400
            && let Some(errors) = a.body["errors"].as_object()
            && errors
                .keys()
                .all(|k| known.iter().any(|(name, _)| name == k))
        {
            let query: Vec<String> = known
                .iter()
                .filter(|(name, _)| errors.contains_key(*name))
                .map(|(name, value)| format!("{name}={}", encode(value)))
                .collect();
            a = s.get(&format!("{path}?{}", query.join("&"))).await;
        }
        let message = a.body["message"].as_str().unwrap_or_default();
        let kind = match a.status {
            200 => "simulated",
            400 if a.body["errors"].is_object() => "400 parameters",
            403 => "403 not for tokens",
            501 if message == format!("not simulated by pve-sim: GET {template}\n") => {
                "not simulated"
            }
            other => panic!("GET {path} ({template}) answered {other}: {}", a.body),
        };
        by_kind.entry(kind).or_default().push(template);
    }
    let simulated = by_kind.get("simulated").map_or(0, Vec::len);
    println!("GET paths of the schema by answer:");
    for (kind, templates) in &by_kind {
        println!("  {kind}: {}", templates.len());
    }
    println!("simulated: {:#?}", by_kind.get("simulated"));
    assert!(
        simulated >= SIMULATED_FLOOR,
        "{simulated} GET paths simulated, fewer than the floor {SIMULATED_FLOOR}"
    );
    s.finish().await;
}
