//! `proxflow dev` on its defaults, as `just up` runs it: every capability runs and the summary lists
//! each one's URL or status; the credentials it makes up are kept in the state directory and are
//! the same after a restart (configured ones win); the snapshot policies, the zfs dataset's
//! replication, a patch run up to its approval and the config export work against the simulator
//! and the zfs-fuse pools.
//!
//! The zfs parts use unique datasets of their own under `tank` and `offsite` (dev's
//! `dev.zfs_source` / `dev.zfs_target`), destroyed when the test ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cli.rs"]
mod cli;
#[path = "support/dev.rs"]
mod dev;
#[path = "../../../tests/tests/support/zfs.rs"]
mod zfs_fixture;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use cli::{proxflow, text};
use dev::Dev;
use zfs_fixture::ZfsFixture;

/// The replication job dev sets up (its hold tag is released before the fixture's cleanup).
const DEV_JOB: &str = "dev-offsite";
const SECRET_VAR: &str = "PROXFLOW_GATEWAY__WEBHOOK_SECRETS";
const TOKEN_VAR: &str = "PROXFLOW_GATEWAY__BEARER_TOKENS__DEV";

fn zfs_env(fx: &ZfsFixture) -> Vec<(&'static str, String)> {
    vec![
        ("PROXFLOW_DEV__ZFS_SOURCE", fx.source.clone()),
        ("PROXFLOW_DEV__ZFS_TARGET", fx.target.clone()),
    ]
}

fn assert_has(line: &str, parts: &[&str], dev: &Dev) {
    for part in parts {
        assert!(
            line.contains(part),
            "{part:?} missing from {line:?}; summary:\n{}",
            dev.text()
        );
    }
}

#[test]
fn dev_lists_every_capability_and_keeps_its_credentials_across_restarts() {
    let fx = ZfsFixture::absent("dev-up").with_job(DEV_JOB);
    let state = tempfile::tempdir().expect("tempdir");
    let dev = Dev::start(state.path(), &zfs_env(&fx));

    assert!(dev.url("nats").starts_with("nats://"), "{}", dev.text());
    assert!(dev.url("pve-sim").starts_with("https://"), "{}", dev.text());
    let gateway = dev.url("gateway");
    assert_has(
        dev.line("gateway"),
        &[
            "/v1/provision",
            "/v1/alerts/alertmanager",
            "/v1/workflows/{id}",
            "/v1/remediations",
            "/v1/patch/runs",
            "/metrics",
        ],
        &dev,
    );
    let secret = dev.credential(SECRET_VAR).expect("the webhook secret");
    let token = dev.credential(TOKEN_VAR).expect("the dev token");
    let addr = gateway.strip_prefix("http://").expect("an http URL");
    let console = format!("  console  http://{addr}/ui  (log in with the dev token: {token})");
    assert!(
        dev.summary.contains(&console),
        "no {console:?} in\n{}",
        dev.text()
    );
    // The VM policy over the simulator's k3s VMs, the dataset policy over the dev dataset, and its
    // replication offsite.
    let snaps = dev.lines("snap");
    assert!(
        snaps.iter().any(|l| l.contains("dev-k3s-vms")
            && l.contains("tagged k3s")
            && l.contains("daily@03:00")),
        "{}",
        dev.text()
    );
    assert!(
        snaps
            .iter()
            .any(|l| l.contains("dev-dataset") && l.contains(&fx.source)),
        "{}",
        dev.text()
    );
    assert_has(dev.line("repl"), &[DEV_JOB, &fx.source, &fx.target], &dev);
    assert_has(dev.line("zfs"), &[&fx.source], &dev);
    assert!(fx.exists(&fx.source), "dev creates its dataset");
    assert_has(dev.line("patch"), &["proxflow patch run", "dev"], &dev);
    let export_dir = state.path().join("export");
    assert_has(
        dev.line("export"),
        &[
            "weekly@sun 02:30",
            &export_dir.display().to_string(),
            "proxflow export run",
        ],
        &dev,
    );
    assert_has(dev.line("health"), &["proxflow health check"], &dev);
    assert_has(dev.line("scale"), &["capacity"], &dev);
    assert_has(dev.line("alerts"), &["remediation"], &dev);
    assert!(dev.url("ops").ends_with("/metrics"), "{}", dev.text());

    // Kept in the state directory, readable by its owner only.
    let file = state.path().join("dev-secrets.toml");
    let kept = std::fs::read_to_string(&file).expect("dev-secrets.toml");
    assert!(kept.contains(&secret) && kept.contains(&token), "{kept}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    dev.stop();

    // The same credentials after a restart.
    let again = Dev::start(state.path(), &zfs_env(&fx));
    assert_eq!(
        again.credential(SECRET_VAR).as_deref(),
        Some(secret.as_str())
    );
    assert_eq!(again.credential(TOKEN_VAR).as_deref(), Some(token.as_str()));
    again.stop();

    // A configured token wins (and is not written down); the secret stays the kept one.
    let configured = "configured-dev-token-0123456789";
    let mut env = zfs_env(&fx);
    env.push((TOKEN_VAR, configured.to_owned()));
    let chosen = Dev::start(state.path(), &env);
    let gateway = chosen.url("gateway");
    assert_eq!(
        chosen.line("console"),
        format!(
            "{gateway}/ui  (log in with the dev token: {configured})",
            gateway = gateway
        )
    );
    assert_eq!(chosen.credential(TOKEN_VAR), None, "{}", chosen.text());
    assert_eq!(
        chosen.credential(SECRET_VAR).as_deref(),
        Some(secret.as_str())
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), kept);
    chosen.stop();
}

#[test]
fn without_the_zfs_pools_dev_says_so_and_runs_the_rest() {
    let state = tempfile::tempdir().expect("tempdir");
    let pool = format!("pft-nopool-{}", std::process::id());
    let dev = Dev::start(
        state.path(),
        &[
            ("PROXFLOW_DEV__ZFS_SOURCE", format!("{pool}/dev")),
            ("PROXFLOW_DEV__ZFS_TARGET", format!("{pool}/copy")),
        ],
    );
    assert_has(
        dev.line("zfs"),
        &["not available — run `just tools zfs`"],
        &dev,
    );
    assert!(dev.lines("repl").is_empty(), "{}", dev.text());
    let snaps = dev.lines("snap");
    assert_eq!(snaps.len(), 1, "{}", dev.text());
    assert_has(snaps[0], &["dev-k3s-vms"], &dev);
    for label in ["patch", "export", "scale", "alerts", "ops", "console"] {
        dev.line(label);
    }
    dev.stop();
}

/// A client of the simulator dev runs, pinned to the certificate whose fingerprint it printed.
fn sim_client(dev: &Dev) -> proxflow_pve::PveClient {
    let words: Vec<&str> = dev.line("pve-sim").split_whitespace().collect();
    let [url, "(fingerprint", fingerprint] = words.as_slice() else {
        panic!("not a simulator line: {words:?}");
    };
    proxflow_pve::PveClient::new(&proxflow_pve::PveConfig {
        url: url.trim_end_matches("/api2/json").to_owned(),
        fingerprint: Some(fingerprint.trim_end_matches(')').to_owned()),
        token_secret: proxflow_runtime::config::Secret::new(proxflow_pve_sim::DEV_TOKEN_SECRET),
        ..proxflow_pve::PveConfig::default()
    })
    .expect("client")
}

/// Starts dev off the async runtime (it waits for the summary on this thread).
async fn start(state: &std::path::Path, env: Vec<(&'static str, String)>) -> Dev {
    let state = state.to_owned();
    tokio::task::spawn_blocking(move || Dev::start(&state, &env))
        .await
        .expect("join")
}

/// Asks `probe` until it answers `Some`, for at most `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_snapshots_replicates_patches_up_to_the_approval_and_exports() {
    let fx = ZfsFixture::absent("dev-run").with_job(DEV_JOB);
    let state = tempfile::tempdir().expect("tempdir");
    let mut env = zfs_env(&fx);
    // Passes every second instead of every minute; a replication that found nothing to send yet
    // (it may look before the first snapshot) tries again a second later.
    env.extend([
        ("PROXFLOW_SNAPSHOT__INTERVAL", "1s".to_owned()),
        ("PROXFLOW_REPLICATION__INTERVAL", "1s".to_owned()),
        ("PROXFLOW_REPLICATION__RETRY_AFTER", "1s".to_owned()),
    ]);
    let dev = start(state.path(), env).await;
    let pve = sim_client(&dev);

    // The VM policy snapshots the simulator's k3s VMs.
    let snapshot = eventually(
        "a policy snapshot of VM 101",
        Duration::from_secs(60),
        || async {
            pve.snapshots(101)
                .await
                .ok()?
                .into_iter()
                .find(|s| s.name.starts_with("pf-"))
                .map(|s| s.name)
        },
    )
    .await;
    assert!(snapshot.starts_with("pf-daily-"), "{snapshot}");

    // The dataset policy snapshots the dev dataset, and the job replicates it offsite.
    let replicated = eventually(
        "the dev dataset replicated",
        Duration::from_secs(60),
        || {
            let source = fx.names(&fx.source);
            let target = if fx.exists(&fx.target) {
                fx.names(&fx.target)
            } else {
                Vec::new()
            };
            async move {
                let newest = source.iter().rfind(|n| n.starts_with("pf-daily-"))?;
                target.contains(newest).then(|| newest.clone())
            }
        },
    )
    .await;
    assert!(!replicated.is_empty());

    // A patch run started by hand goes through the VMs (simulated kubectl) and waits for the
    // approval of the host's reboot.
    let gateway = dev.url("gateway");
    let token = dev.credential(TOKEN_VAR).expect("dev token");
    let started = {
        let (gateway, token) = (gateway.clone(), token.clone());
        tokio::task::spawn_blocking(move || {
            proxflow(&[], &["patch", "run", "--url", &gateway, "--token", &token])
        })
        .await
        .expect("join")
    };
    assert!(started.status.success(), "{}", text(&started.stderr));
    let stdout = text(&started.stdout);
    let run = stdout
        .lines()
        .find_map(|l| l.strip_prefix("run     "))
        .unwrap_or_else(|| panic!("no run in {stdout}"))
        .to_owned();
    let http = reqwest::Client::new();
    let awaiting = eventually(
        "the patch run's approval wait",
        Duration::from_secs(120),
        || {
            let request = http
                .get(format!("{gateway}/v1/workflows/{run}"))
                .bearer_auth(&token);
            async move {
                let record: serde_json::Value = request.send().await.ok()?.json().await.ok()?;
                let state = record["state"].as_str().unwrap_or_default();
                assert!(
                    !matches!(state, "succeeded" | "failed" | "cancelled"),
                    "the run ended before asking: {record}"
                );
                record["data"]["awaiting"]["approval_hash"]
                    .is_string()
                    .then_some(record)
            }
        },
    )
    .await;
    let plan = awaiting["data"]["plan"].to_string();
    assert!(plan.contains("host/"), "{plan}");

    // The export job writes its bundle into the state directory.
    let nats = dev.url("nats");
    let exported = tokio::task::spawn_blocking(move || {
        proxflow(
            &[("PROXFLOW_NATS__URL", nats)],
            &["export", "run", "--timeout", "2m"],
        )
    })
    .await
    .expect("join");
    assert!(
        exported.status.success(),
        "{}\n{}",
        text(&exported.stdout),
        text(&exported.stderr)
    );
    let bundles: Vec<_> = std::fs::read_dir(state.path().join("export"))
        .expect("the export directory")
        .filter_map(Result::ok)
        .collect();
    assert!(!bundles.is_empty(), "no bundle in the export directory");

    tokio::task::spawn_blocking(move || dev.stop())
        .await
        .expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_provisions_a_vm_traces_it_and_stops_cleanly() {
    let fx = ZfsFixture::absent("dev-provision").with_job(DEV_JOB);
    let state = tempfile::tempdir().expect("tempdir");
    let dev = start(state.path(), zfs_env(&fx)).await;
    // The simulator answers over HTTPS with the certificate whose fingerprint dev printed.
    let vms = sim_client(&dev)
        .list_vms()
        .await
        .expect("the simulator answers");
    assert!(
        vms.iter().any(|v| v.vmid == 9000 && v.template),
        "seed template"
    );
    assert!(
        state.path().join("nats").is_dir(),
        "JetStream data not under the state dir"
    );
    let gateway = dev.url("gateway");
    let nats = dev.url("nats");
    let http = reqwest::Client::new();
    for probe in ["healthz", "readyz"] {
        let answer = http
            .get(format!("{gateway}/{probe}"))
            .send()
            .await
            .expect(probe);
        assert_eq!(answer.status(), 200, "{probe}");
    }

    // The gateway runs with the webhook secret dev printed.
    let secret = proxflow_runtime::config::Secret::new(dev.credential(SECRET_VAR).expect("secret"));
    let body = br#"{"name": "k3s-dev"}"#;
    let mut post = http
        .post(format!("{gateway}/v1/provision"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in proxflow_gateway::webhook::SignedHeaders::new(&secret, body)
        .expect("a whsec_ secret")
        .pairs()
    {
        post = post.header(name, value);
    }
    let accepted = post.send().await.expect("provision");
    assert_eq!(accepted.status(), 202);
    let accepted: serde_json::Value = accepted.json().await.expect("json");
    let workflow_id = accepted["workflow_id"]
        .as_str()
        .expect("workflow id")
        .to_owned();

    // The whole pipeline runs: the workflow succeeds against the simulator.
    let token = dev.credential(TOKEN_VAR).expect("dev token");
    let record = eventually("the provisioning's end", Duration::from_secs(60), || {
        let request = http
            .get(format!("{gateway}/v1/workflows/{workflow_id}"))
            .bearer_auth(&token);
        async move {
            let r: serde_json::Value = request.send().await.ok()?.json().await.ok()?;
            matches!(
                r["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
            .then_some(r)
        }
    })
    .await;
    assert_eq!(record["state"], "succeeded", "{record}");

    // And its trace can be read back with `proxflow trace`: one tree, gateway to Proxmox calls.
    // Spans reach the bus about a second after they end (batched), so ask until the last ones are in.
    let expected = [
        "POST /v1/provision",
        "provision k3s-dev",
        "pve POST",
        "qmclone",
        "run sh",
        " gateway ",
        " orchestrator ",
        " provisioner ",
    ];
    eventually("the whole trace", Duration::from_secs(30), || {
        let (nats, id) = (nats.clone(), workflow_id.clone());
        async move {
            let trace = tokio::task::spawn_blocking(move || {
                proxflow(&[("PROXFLOW_NATS_URL", nats)], &["trace", &id])
            })
            .await
            .ok()?;
            let tree = text(&trace.stdout);
            (trace.status.success() && expected.iter().all(|e| tree.contains(e))).then_some(())
        }
    })
    .await;
    // The embedded server really carries the topology.
    let client = async_nats::connect(nats.as_str())
        .await
        .expect("embedded nats");
    async_nats::jetstream::new(client.clone())
        .get_stream("PF_EVT")
        .await
        .expect("topology declared");
    drop(client);

    tokio::task::spawn_blocking(move || dev.stop())
        .await
        .expect("join");
    // The nats-server child went with it.
    let port: u16 = nats
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "embedded nats-server still listening after dev stopped"
    );
}
