//! A real ZFS for a test: a unique child dataset under the pool `tank` (the source) and a unique name
//! under `offsite` (the target, left absent: the first replication creates it), both destroyed when
//! the fixture drops — after releasing the holds the test's jobs placed, since ZFS refuses to destroy
//! a held snapshot. Tests run in parallel, so every name carries the process id and a counter.
//!
//! The pools come from `deploy/dev/install-tools.sh zfs` (Debian's zfs-fuse, file-backed pools),
//! which `just test` and `.ci/run` run first; without them the fixture fails with that hint.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

static NEXT: AtomicUsize = AtomicUsize::new(0);

const HINT: &str = "a real ZFS with pools `tank` and `offsite` is needed: run \
                    `deploy/dev/install-tools.sh zfs` as root (installs zfs-fuse, starts its daemon, \
                    creates file-backed pools under .tools/zfs/)";

/// One snapshot policy, `data`, over `dataset`: daily at 03:00 UTC, keeping `retention`.
pub fn snapshot_config(
    dataset: &str,
    retention: proxflow_snapshotter::retention::Grid,
) -> proxflow_snapshotter::SnapshotConfig {
    proxflow_snapshotter::SnapshotConfig {
        policies: vec![proxflow_snapshotter::PolicyConfig {
            name: "data".into(),
            targets: proxflow_snapshotter::Targets {
                datasets: vec![dataset.to_owned()],
                ..proxflow_snapshotter::Targets::default()
            },
            schedule: "daily@03:00".into(),
            retention,
            ..proxflow_snapshotter::PolicyConfig::default()
        }],
        ..proxflow_snapshotter::SnapshotConfig::default()
    }
}

/// Runs `zfs`/`zpool` and returns stdout, panicking with stderr on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} cannot run ({e}); {HINT}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `zfs` and returns (success, stderr) without judging.
pub fn try_zfs(args: &[&str]) -> (bool, String) {
    let out = Command::new("zfs").args(args).output().expect("zfs runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn zfs(args: &[&str]) -> String {
    run("zfs", args)
}

/// One test's datasets.
pub struct ZfsFixture {
    /// Source dataset (exists).
    pub source: String,
    /// Target dataset name (absent until something is received).
    pub target: String,
    /// Hold tags the test's jobs may have placed; released before cleanup.
    pub hold_tags: Vec<String>,
}

impl ZfsFixture {
    pub fn new(tag: &str) -> Self {
        let fixture = Self::absent(tag);
        zfs(&["create", &fixture.source]);
        fixture
    }

    /// Unique names as [`ZfsFixture::new`] gives, with nothing created: for code under test that
    /// creates the source itself. Both are destroyed all the same.
    pub fn absent(tag: &str) -> Self {
        let pools = Command::new("zpool")
            .args(["list", "-H", "-o", "name", "tank", "offsite"])
            .output();
        match pools {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!("{}; {HINT}", String::from_utf8_lossy(&out.stderr).trim()),
            Err(e) => panic!("zpool cannot run ({e}); {HINT}"),
        }
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("pft-{tag}-{}-{n}", std::process::id());
        let fixture = Self {
            source: format!("tank/{name}"),
            target: format!("offsite/{name}"),
            hold_tags: Vec::new(),
        };
        // Leftovers of a crashed earlier run with the same pid (unlikely, but harmless to clear).
        fixture.cleanup();
        fixture
    }

    /// Registers a replication job's hold tag for cleanup.
    pub fn with_job(mut self, job: &str) -> Self {
        self.hold_tags.push(proxflow_zfs::names::hold_tag(job));
        self
    }

    pub fn mountpoint(&self, dataset: &str) -> PathBuf {
        PathBuf::from(zfs(&["get", "-H", "-o", "value", "mountpoint", dataset]).trim())
    }

    /// Writes `bytes` of random data to `file` in the source dataset.
    pub fn write_random(&self, file: &str, bytes: usize) {
        let mut data = vec![0u8; bytes];
        rand::fill(&mut data[..]);
        std::fs::write(self.mountpoint(&self.source).join(file), data).expect("write");
    }

    pub fn snapshot(&self, dataset: &str, name: &str) {
        zfs(&["snapshot", &format!("{dataset}@{name}")]);
    }

    /// SHA-256 of `file` in `dataset`'s mounted filesystem, or `None` when it does not exist.
    pub fn checksum(&self, dataset: &str, file: &str) -> Option<String> {
        let data = std::fs::read(self.mountpoint(dataset).join(file)).ok()?;
        Some(hex::encode(Sha256::digest(&data)))
    }

    /// Snapshot names of `dataset`, oldest first, with their hold counts (`userrefs`).
    pub fn snapshots(&self, dataset: &str) -> Vec<(String, u64)> {
        let text = zfs(&[
            "list",
            "-H",
            "-t",
            "snapshot",
            "-d",
            "1",
            "-s",
            "createtxg",
            "-o",
            "name,userrefs",
            dataset,
        ]);
        text.lines()
            .filter_map(|l| {
                let (name, refs) = l.split_once('\t')?;
                let (_, snap) = name.split_once('@')?;
                Some((snap.to_owned(), refs.trim().parse().unwrap_or(0)))
            })
            .collect()
    }

    pub fn names(&self, dataset: &str) -> Vec<String> {
        self.snapshots(dataset)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    pub fn exists(&self, dataset: &str) -> bool {
        try_zfs(&["get", "-H", "-o", "value", "type", dataset]).0
    }

    /// A bare `zfs send source@snapshot | zfs receive target` (the target must not exist yet).
    pub fn send_bare(&self, snapshot: &str) {
        let mut send = Command::new("zfs")
            .args(["send", &format!("{}@{snapshot}", self.source)])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("zfs send");
        let received = Command::new("zfs")
            .args(["receive", &self.target])
            .stdin(send.stdout.take().expect("a pipe"))
            .status()
            .expect("zfs receive");
        assert!(received.success(), "zfs receive {}", self.target);
        assert!(send.wait().expect("zfs send").success(), "zfs send");
    }

    /// The exact guid of `dataset@snapshot` (`-p`: without it zfs-fuse prints it rounded).
    pub fn guid(&self, dataset: &str, snapshot: &str) -> String {
        zfs(&[
            "get",
            "-Hp",
            "-o",
            "value",
            "guid",
            &format!("{dataset}@{snapshot}"),
        ])
        .trim()
        .to_owned()
    }

    fn cleanup(&self) {
        for dataset in [&self.source, &self.target] {
            if !self.exists(dataset) {
                continue;
            }
            for (snap, refs) in self.snapshots(dataset) {
                if refs == 0 {
                    continue;
                }
                for tag in self.hold_tags.iter().map(String::as_str).chain(["keep"]) {
                    let _ = try_zfs(&["release", tag, &format!("{dataset}@{snap}")]);
                }
            }
            // The zfs-fuse daemon may still be aborting a killed receive: try for a while.
            for _ in 0..50 {
                let (ok, _) = try_zfs(&["destroy", "-r", dataset]);
                if ok || !self.exists(dataset) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

impl Drop for ZfsFixture {
    fn drop(&mut self) {
        self.cleanup();
    }
}
