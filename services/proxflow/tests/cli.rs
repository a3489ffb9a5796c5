//! The `proxflow` binary as an operator runs it: configuration precedence and errors, the simulator
//! on its own, the operator tools. (`proxflow dev`: tests/dev.rs.)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn proxflow() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxflow"));
    // Only what a test sets may reach the binary's configuration.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PROXFLOW_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A configuration file with `contents` (the directory lives as long as the returned guard).
fn config_file(contents: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("proxflow.toml");
    std::fs::write(&file, contents).expect("write");
    (dir, file)
}

/// What `proxflow config` printed, asserting that it succeeded.
fn printed_config(out: &std::process::Output) -> toml::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8_lossy(&out.stdout)).expect("toml")
}

/// The `nats.url` entries a printed configuration lists.
fn printed_urls(printed: &toml::Value) -> Vec<String> {
    printed["nats"]["url"]
        .as_array()
        .expect("several URLs print as a list")
        .iter()
        .filter_map(toml::Value::as_str)
        .map(str::to_owned)
        .collect()
}

#[test]
fn file_overrides_defaults_and_env_overrides_the_file() {
    let (_dir, file) = config_file(
        "[nats]\nurl = \"nats://from-file:4222\"\nreplicas = 3\n[gateway]\nlisten = \"0.0.0.0:8443\"\n",
    );
    let out = proxflow()
        .args(["--config"])
        .arg(&file)
        .arg("config")
        .env("PROXFLOW_NATS__URL", "nats://from-env:4222")
        .output()
        .expect("runs");
    let printed = printed_config(&out);
    assert_eq!(
        printed["nats"]["url"].as_str(),
        Some("nats://from-env:4222")
    );
    assert_eq!(printed["nats"]["replicas"].as_integer(), Some(3));
    assert_eq!(printed["gateway"]["listen"].as_str(), Some("0.0.0.0:8443"));
    assert_eq!(
        printed["ops"]["listen"].as_str(),
        Some("127.0.0.1:9464"),
        "default kept"
    );
}

#[test]
fn secrets_are_redacted_when_printed() {
    let out = proxflow()
        .arg("config")
        .env("PROXFLOW_NATS__USER", "gateway")
        .env("PROXFLOW_NATS__PASSWORD", "s3cr3t-value")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("s3cr3t-value"), "{stdout}");
    assert!(stdout.contains("<redacted>"), "{stdout}");
}

#[test]
fn a_bad_value_names_its_key_and_exits_78() {
    let out = proxflow()
        .arg("config")
        .env("PROXFLOW_GATEWAY__LISTEN", "not-an-address")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gateway.listen"), "{stderr}");
    assert!(stderr.contains("PROXFLOW_GATEWAY__LISTEN"), "{stderr}");
}

#[test]
fn nats_url_takes_a_cluster_list_and_a_malformed_one_exits_78() {
    let cluster = "nats://pf-nats-1:4222,nats://pf-nats-2:4222,nats://pf-nats-3:4222";
    let out = proxflow()
        .arg("config")
        .env("PROXFLOW_NATS__URL", cluster)
        .output()
        .expect("runs");
    assert_eq!(
        printed_urls(&printed_config(&out)),
        cluster.split(',').collect::<Vec<_>>()
    );

    // The same list as a TOML array in the file.
    let (_dir, file) =
        config_file("[nats]\nurl = [\"nats://pf-nats-1:4222\", \"nats://pf-nats-2:4222\"]\n");
    let out = proxflow()
        .arg("--config")
        .arg(&file)
        .arg("config")
        .output()
        .expect("runs");
    assert_eq!(
        printed_urls(&printed_config(&out)),
        ["nats://pf-nats-1:4222", "nats://pf-nats-2:4222"]
    );

    // A bad entry is a configuration error naming the key, not 30 s of "not reachable".
    let out = proxflow()
        .arg("config")
        .env(
            "PROXFLOW_NATS__URL",
            "nats://pf-nats-1:4222,nats://pf-nats-2:42x22",
        )
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nats.url"), "{stderr}");
    assert!(stderr.contains("entry 2"), "{stderr}");
    assert!(stderr.contains("PROXFLOW_NATS__URL"), "{stderr}");
}

#[test]
fn an_unknown_key_or_missing_file_is_an_error() {
    let (dir, file) = config_file("[gateway]\nlisten_addr = \"127.0.0.1:1\"\n");
    let out = proxflow()
        .arg("--config")
        .arg(&file)
        .arg("config")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("listen_addr"), "{stderr}");

    let out = proxflow()
        .arg("config")
        .env("PROXFLOW_CONFIG", dir.path().join("absent.toml"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.toml"));
}

#[test]
fn a_gateway_without_credentials_does_not_start() {
    let out = proxflow()
        .args(["serve", "gateway"])
        // Unreachable on purpose: the refusal must come before any connection attempt.
        .env("PROXFLOW_NATS__URL", "nats://127.0.0.1:9")
        .env("PROXFLOW_NATS__CONNECT_TIMEOUT", "1s")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PROXFLOW_GATEWAY__WEBHOOK_SECRETS"),
        "{stderr}"
    );
    assert!(
        stderr.contains("PROXFLOW_GATEWAY__BEARER_TOKENS__"),
        "{stderr}"
    );
}

#[test]
fn the_shipped_example_config_is_complete_and_matches_the_defaults() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/proxflow.example.toml"
    );
    // The example must load (a failure prints why), and documents the defaults: loading it must
    // change nothing.
    let from_file = printed_config(
        &proxflow()
            .args(["--config", example, "config"])
            .output()
            .expect("runs"),
    );
    let table = printed_config(&proxflow().arg("config").output().expect("runs"));
    assert_eq!(from_file, table);
    // And it names every key that has a default, so none is undocumented.
    let text = std::fs::read_to_string(example).expect("read example");
    assert_documented(&text, "", table.as_table().expect("table"));
}

/// Every sub-table has its `[header]` in `text`, every other key a `key =` line (possibly commented).
fn assert_documented(text: &str, prefix: &str, table: &toml::Table) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        match value.as_table() {
            Some(sub) => {
                assert!(
                    text.contains(&format!("[{path}]")),
                    "[{path}] missing from the example"
                );
                assert_documented(text, &format!("{path}."), sub);
            }
            None => assert!(
                text.contains(&format!("{key} =")),
                "{path} missing from the example"
            ),
        }
    }
}

/// Reads stdout lines of a child on a thread, so a test can wait for one with a deadline.
fn line_reader(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    lines
}

#[test]
fn sim_serves_and_pve_check_uses_it() {
    let mut sim = proxflow()
        .arg("sim")
        .env("PROXFLOW_SIM__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sim starts");
    let lines = line_reader(&mut sim);
    let (mut url, mut fingerprint) = (None, None);
    while url.is_none() || fingerprint.is_none() {
        let Ok(line) = lines.recv_timeout(Duration::from_secs(30)) else {
            let _ = sim.kill();
            panic!("proxflow sim printed no endpoint");
        };
        if let Some(v) = line.trim().strip_prefix("export PROXFLOW_PVE__URL=") {
            url = Some(v.to_owned());
        }
        if let Some(v) = line
            .trim()
            .strip_prefix("export PROXFLOW_PVE__FINGERPRINT=")
        {
            fingerprint = Some(v.to_owned());
        }
    }
    let (url, fingerprint) = (url.expect("url"), fingerprint.expect("fingerprint"));
    let check = |fp: &str, secret: Option<&str>| {
        let mut cmd = proxflow();
        cmd.args(["pve", "check"])
            .env("PROXFLOW_PVE__URL", &url)
            .env("PROXFLOW_PVE__FINGERPRINT", fp)
            .env("PROXFLOW_PVE__RETRY_ATTEMPTS", "1");
        if let Some(secret) = secret {
            cmd.env("PROXFLOW_PVE__TOKEN_SECRET", secret);
        }
        cmd.output().expect("runs")
    };
    let ok = check(&fingerprint, Some(proxflow_pve_sim::DEV_TOKEN_SECRET));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout.contains("k3s-1") && stdout.contains("local-zfs"),
        "{stdout}"
    );

    let wrong_pin = check(
        &fingerprint.replace(|c: char| c.is_ascii_hexdigit(), "0"),
        Some(proxflow_pve_sim::DEV_TOKEN_SECRET),
    );
    assert_eq!(wrong_pin.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong_pin.stderr).contains("fingerprint"));

    let no_secret = check(&fingerprint, None);
    assert_eq!(
        no_secret.status.code(),
        Some(78),
        "a missing secret is a config error"
    );
    assert!(String::from_utf8_lossy(&no_secret.stderr).contains("PROXFLOW_PVE__TOKEN_SECRET"));

    let wrong_secret = check(&fingerprint, Some("not-the-secret"));
    assert_eq!(wrong_secret.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong_secret.stderr).contains("401"));

    let _ = sim.kill();
    let _ = sim.wait();
}

#[test]
fn a_rules_file_that_does_not_validate_stops_the_orchestrator_with_78_naming_the_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"restart\"\nalertname = \"VMDown\"\nlabels_regex = { vmid = \"^1[0-9\" }\n\
         target = \"vm/{labels.vmid}\"\naction = { kind = \"restart_vm\", vmid = \"{labels.vmid}\" }\n",
    )
    .expect("write");
    let out = proxflow()
        .args(["serve", "orchestrator"])
        .env("PROXFLOW_REMEDIATION__RULES_FILE", &rules)
        // Refused before connecting: no server is needed to see it.
        .env("PROXFLOW_NATS__URL", "nats://127.0.0.1:1")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("remediation.rules_file")
            && stderr.contains("rule[0] \"restart\".labels_regex.vmid"),
        "{stderr}"
    );
}

#[tokio::test]
async fn remediations_lists_the_audit_trail_from_the_bus() {
    use proxflow_schemas::alert::AlertStatus;
    use proxflow_schemas::remediation::{Reason, RemediationDecision, Verdict};
    let nats = proxflow_testkit::TestNats::start().expect("nats-server");
    let ctx = nats.context("cli-test").await.expect("context");
    let decision = |n: u32, verdict: Verdict, reason: Reason| RemediationDecision {
        alert_id: format!("alert/f{n}/0/firing"),
        fingerprint: format!("f{n}"),
        alertname: "VMDown".into(),
        status: AlertStatus::Firing,
        rule: Some("vm-down-restart".into()),
        target: Some(format!("vm/10{n}")),
        verdict,
        reason,
        detail: format!("detail {n}"),
        action: Some("restart_vm".into()),
        workflow_id: None,
        trace_id: None,
        at: chrono::Utc::now(),
    };
    let published = [
        decision(1, Verdict::Acted, Reason::None),
        decision(2, Verdict::Suppressed, Reason::Cooldown),
    ];
    for d in &published {
        ctx.bus.publisher.publish(d).await.expect("published");
    }
    let run = |args: &[&str]| {
        proxflow()
            .arg("remediations")
            .args(args)
            .env("PROXFLOW_NATS__URL", nats.url())
            .output()
            .expect("runs")
    };
    let json = run(&["--json"]);
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let listed: Vec<RemediationDecision> =
        serde_json::from_slice(&json.stdout).expect("decision JSON");
    assert_eq!(listed, published.to_vec());
    let table = run(&["--limit", "1"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("suppressed") && text.contains("cooldown") && text.contains("vm/102"),
        "{text}"
    );
}

/// `deploy/nats/accounts.conf` is generated from the consumer table and the message subjects: a
/// consumer, subject or user change shows up in review as a diff of the permissions, and a hand edit
/// of the file (which the next generation would silently undo) fails here. Fix with
/// `just nats-accounts`.
#[test]
fn checked_in_nats_accounts_match_the_generator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated = dir.path().join("accounts.conf");
    let out = proxflow()
        .args(["nats-accounts", "--out"])
        .arg(&generated)
        .output()
        .expect("run proxflow nats-accounts");
    assert!(
        out.status.success(),
        "nats-accounts failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked_in =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats/accounts.conf");
    let want = std::fs::read_to_string(&generated).expect("generated file");
    let have = std::fs::read_to_string(&checked_in).expect("deploy/nats/accounts.conf");
    if have != want {
        let first = have
            .lines()
            .zip(want.lines())
            .position(|(h, w)| h != w)
            .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
        panic!(
            "deploy/nats/accounts.conf differs from what `proxflow nats-accounts` writes (first at \
             line {}: checked in {:?}, generated {:?}); run `just nats-accounts`",
            first + 1,
            have.lines().nth(first).unwrap_or("<end of file>"),
            want.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}
