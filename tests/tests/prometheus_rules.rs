//! The shipped Prometheus alert rules, checked by Prometheus's own `promtool`: every rule file in
//! `deploy/prometheus/` parses (`promtool check rules`; a file added there is checked without
//! touching this test), and every unit test under `deploy/prometheus/tests/` passes (`promtool
//! test rules`: e.g. PoolDegraded fires for a pool at 0 and not for one at 1).
//!
//! promtool comes with Debian's `prometheus` package (`deploy/dev/install-tools.sh test`); without
//! it this test fails with that hint rather than skipping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

const HINT: &str = "promtool is needed to check the shipped alert rules: run \
                    `deploy/dev/install-tools.sh test` (apt-get install prometheus), or set \
                    PROMTOOL_BIN";

fn promtool() -> PathBuf {
    if let Some(bin) = std::env::var_os("PROMTOOL_BIN") {
        return bin.into();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{HINT}"))
}

fn run(args: &[&str], file: &std::path::Path) {
    let out = Command::new(promtool())
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("promtool cannot run ({e}); {HINT}"));
    assert!(
        out.status.success(),
        "promtool {} {}:\n{}{}",
        args.join(" "),
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The YAML files directly in `dir`, sorted.
fn yaml_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_shipped_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = proxflow_testkit::project_dir().join("deploy/prometheus");
    let rules = yaml_files(&dir);
    assert!(
        rules.iter().any(|r| r.ends_with("proxflow-alerts.yml")),
        "{rules:?}"
    );
    for file in &rules {
        run(&["check", "rules"], file);
    }
    let tests = yaml_files(&dir.join("tests"));
    for expected in ["health.test.yml", "lifecycle.test.yml"] {
        assert!(
            tests.iter().any(|t| t.ends_with(expected)),
            "{expected}: {tests:?}"
        );
    }
    for t in &tests {
        run(&["test", "rules"], t);
    }
}
