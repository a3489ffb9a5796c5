//! `just bench`: replication throughput through proxflow against a bare `zfs send | zfs receive` of
//! the same snapshot, in the same run, on the real zfs-fuse pools (`tank` → `offsite`), and their
//! ratio (target ≥ 0.9).
//!
//! 256 MiB of incompressible data (`BENCH_REPLICATION_MIB` changes it) in one snapshot; each round
//! sends it in full into a fresh target once with `sh -c 'zfs send … | zfs receive …'` and once with
//! the replicator's first run (`Replicator::run_job`: capability probe, listings, lease, the send |
//! receive copied through proxflow, readonly, holds, events), alternating which goes first. Printed:
//! the stream's throughput through proxflow's pipe (the run's transfer time) and over the whole run
//! (its fixed bookkeeping of a dozen zfs commands weighs on a one-second transfer), each against
//! the bare pipe; medians over the rounds (`BENCH_ROUNDS`, default 5). Then where a run's time goes
//! besides the stream: the run's `replication.phase` spans (probe, listing, transfer, readonly,
//! holds, announce) summed per run, the rest (lease, bookkeeping) and the number of zfs commands
//! run, as medians over the rounds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxflow_replicator::{JobConfig, ReplicationConfig, Replicator, RunControl};
use proxflow_testkit::TestNats;
use tracing::span::{Attributes, Id};
use tracing::{Subscriber, field};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Collects the wall time of every closed `replication.phase` span by its `phase`, and counts the
/// `command` spans whose program is zfs (the pipe's two ends are not `command`s).
#[derive(Clone, Default)]
struct Phases(Arc<Mutex<Phase>>);

#[derive(Default)]
struct Phase {
    times: BTreeMap<String, Duration>,
    zfs_commands: usize,
}

/// What [`Phases`] keeps in a span: its label and when it opened.
struct Opened(Option<String>, Instant);

struct Fields {
    phase: Option<String>,
    program: Option<String>,
}

impl field::Visit for Fields {
    fn record_str(&mut self, f: &field::Field, value: &str) {
        if f.name() == "phase" {
            self.phase = Some(value.to_owned());
        }
    }
    fn record_debug(&mut self, f: &field::Field, value: &dyn std::fmt::Debug) {
        match f.name() {
            "phase" => self.phase = Some(format!("{value:?}").trim_matches('"').to_owned()),
            "command.program" => self.program = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Phases {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let name = attrs.metadata().name();
        if name != "replication.phase" && name != "command" {
            return;
        }
        let mut fields = Fields {
            phase: None,
            program: None,
        };
        attrs.record(&mut fields);
        if name == "command" {
            if fields
                .program
                .as_deref()
                .is_some_and(|p| p.ends_with("zfs"))
            {
                self.0.lock().unwrap().zfs_commands += 1;
            }
            return;
        }
        if let Some(span) = ctx.span(id) {
            span.extensions_mut()
                .insert(Opened(fields.phase, Instant::now()));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        if let Some(Opened(Some(phase), at)) = span.extensions().get::<Opened>() {
            *self
                .0
                .lock()
                .unwrap()
                .times
                .entry(phase.clone())
                .or_default() += at.elapsed();
        }
    }
}

impl Phases {
    fn take(&self) -> Phase {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn zfs(args: &[&str]) -> (bool, String) {
    let out = Command::new("zfs").args(args).output().expect(
        "zfs runs (deploy/dev/install-tools.sh zfs installs zfs-fuse and creates the pools)",
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn destroy(dataset: &str) {
    for _ in 0..50 {
        if zfs(&["destroy", "-r", dataset]).0 || !zfs(&["get", "-H", "type", dataset]).0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    proxflow_runtime::install_crypto_provider();
    let phases = Phases::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(phases.clone()))
        .unwrap();
    let mib: usize = std::env::var("BENCH_REPLICATION_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let pid = std::process::id();
    let source = format!("tank/pfbench-{pid}");
    let (ok, err) = zfs(&["create", &source]);
    assert!(
        ok,
        "{err}: needs the pools from `deploy/dev/install-tools.sh zfs`"
    );
    let mountpoint = {
        let out = Command::new("zfs")
            .args(["get", "-H", "-o", "value", "mountpoint", &source])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let mut data = vec![0u8; 1 << 20];
    let mut file = std::fs::File::create(format!("{mountpoint}/data.bin")).unwrap();
    for _ in 0..mib {
        rand::fill(&mut data[..]);
        std::io::Write::write_all(&mut file, &data).unwrap();
    }
    drop(file);
    assert!(zfs(&["snapshot", &format!("{source}@bench")]).0);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (bare, piped, whole, bytes, breakdown) = runtime.block_on(async {
        let nats = TestNats::start().expect("nats-server");
        let ctx = nats.context("replication-bench").await.unwrap();
        let jobs: Vec<JobConfig> = (0..rounds)
            .map(|i| JobConfig {
                name: format!("bench-{i}"),
                source: source.clone(),
                target: format!("offsite/pfbench-pf-{pid}-{i}"),
                transfer_timeout: Duration::from_secs(1800),
                ..JobConfig::default()
            })
            .collect();
        let replicator = Replicator::new(
            &ctx,
            ReplicationConfig {
                jobs: jobs.clone(),
                ..ReplicationConfig::default()
            },
        )
        .unwrap();
        let (mut bare, mut piped, mut whole, mut bytes) =
            (Vec::new(), Vec::new(), Vec::new(), 0u64);
        // Per round: each phase's milliseconds, the rest of the run, the zfs commands run.
        let mut breakdown: Vec<(BTreeMap<String, f64>, f64, usize)> = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            let bare_target = format!("offsite/pfbench-bare-{pid}-{i}");
            let run_bare = || {
                let started = Instant::now();
                let status = Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "zfs send {source}@bench | zfs receive {bare_target}"
                    ))
                    .status()
                    .unwrap();
                assert!(status.success(), "bare send | receive failed");
                started.elapsed()
            };
            let mut bare_time = Duration::ZERO;
            if i % 2 == 0 {
                bare_time = run_bare();
            }
            phases.take();
            let report = replicator
                .run_job(&job.name, &RunControl::default())
                .await
                .expect("replication");
            let round = phases.take();
            let ms: BTreeMap<String, f64> = round
                .times
                .iter()
                .map(|(k, v)| (k.clone(), v.as_secs_f64() * 1e3))
                .collect();
            let rest = report.duration.as_secs_f64() * 1e3 - ms.values().sum::<f64>();
            breakdown.push((ms, rest, round.zfs_commands));
            if i % 2 == 1 {
                bare_time = run_bare();
            }
            bytes = report.bytes;
            let mbps = |d: Duration| report.bytes as f64 / d.as_secs_f64() / 1e6;
            bare.push(mbps(bare_time));
            piped.push(mbps(report.transfer_duration));
            whole.push(mbps(report.duration));
            // Fresh targets each round: the job's holds go first (zfs refuses to destroy held
            // snapshots).
            let tag = proxflow_zfs::names::hold_tag(&job.name);
            zfs(&["release", &tag, &format!("{source}@bench")]);
            zfs(&["release", &tag, &format!("{}@bench", job.target)]);
            destroy(&job.target);
            destroy(&bare_target);
        }
        (bare, piped, whole, bytes, breakdown)
    });
    destroy(&source);
    let (bare, piped, whole) = (median(bare), median(piped), median(whole));
    println!(
        "replication, zfs-fuse tank -> offsite, full send of {mib} MiB ({} stream bytes), median of {rounds} rounds:",
        bytes
    );
    println!("  bare zfs send | zfs receive (sh)         {bare:>8.1} MB/s");
    println!("  through proxflow (send | copy | receive) {piped:>8.1} MB/s");
    println!(
        "  whole replicator run                     {whole:>8.1} MB/s  (+ probe, listings, lease, events, readonly, holds)"
    );
    println!(
        "  ratio through proxflow / bare            {:>8.2}  (target >= 0.9)",
        piped / bare
    );
    println!(
        "  ratio whole run / bare                   {:>8.2}  (target >= 0.9)",
        whole / bare
    );
    print_breakdown(&breakdown);
}

/// Where a run's time goes: each phase's median over the rounds (and its slowest round: the first
/// run probes the hosts' capabilities, later ones reuse them), the rest of the run (lease,
/// bookkeeping) and the zfs commands per run.
fn print_breakdown(rounds: &[(BTreeMap<String, f64>, f64, usize)]) {
    let mut names: Vec<&String> = rounds.iter().flat_map(|(m, _, _)| m.keys()).collect();
    names.sort();
    names.dedup();
    println!("  where a whole run's time goes (ms per run, median / slowest of the rounds):");
    let line = |label: &str, values: Vec<f64>| {
        let max = values.iter().copied().fold(0.0, f64::max);
        println!("    {label:<36} {:>8.1} / {max:>7.1}", median(values));
    };
    for name in names {
        let values = rounds
            .iter()
            .map(|(m, _, _)| m.get(name).copied().unwrap_or(0.0))
            .collect();
        let label = if name == "transfer" {
            "transfer (the pipe)".to_owned()
        } else {
            name.clone()
        };
        line(&label, values);
    }
    line(
        "around the pipe (all but transfer)",
        rounds
            .iter()
            .map(|(m, rest, _)| {
                m.iter()
                    .filter(|(k, _)| *k != "transfer")
                    .map(|(_, v)| v)
                    .sum::<f64>()
                    + rest
            })
            .collect(),
    );
    line(
        "rest (lease, bookkeeping)",
        rounds.iter().map(|(_, rest, _)| *rest).collect(),
    );
    let commands: Vec<f64> = rounds.iter().map(|(_, _, c)| *c as f64).collect();
    line("zfs commands per run", commands);
}
