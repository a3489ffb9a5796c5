//! The drill's dataset checks, on one replication job's offsite copy: its newest snapshot is one
//! the source has (lineage) with the same guid, recent enough (RPO), and its files — read from a
//! clone — are the source snapshot's files byte for byte. The clone is destroyed before the step
//! ends; a crash in between leaves one the drill's cleanup finds by its name.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use proxflow_schemas::lifecycle::DrillCheck;
use proxflow_zfs::parse::SnapshotInfo;
use proxflow_zfs::{Zfs, ZfsError, names};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::files;

/// The name prefix of every clone a drill makes.
pub const CLONE_PREFIX: &str = "pf-drill-";
/// File problems listed per check before the rest are counted.
const PROBLEMS_SHOWN: usize = 20;

/// One replication job's two sides, as the drill sees them.
#[derive(Debug, Clone)]
pub struct DrillTarget {
    /// The job's name.
    pub job: String,
    /// Its source dataset.
    pub source: String,
    /// Its offsite copy.
    pub target: String,
    /// The source side's zfs.
    pub source_zfs: Zfs,
    /// The offsite side's zfs.
    pub target_zfs: Zfs,
}

/// What the files step found, and what it measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Examined {
    /// The checks, in order.
    pub checks: Vec<DrillCheck>,
    /// Age of the newest replicated snapshot, seconds.
    pub age_secs: Option<u64>,
    /// When the first clone was started.
    pub cloned_at: Option<DateTime<Utc>>,
    /// Seconds reading and hashing.
    pub checksum_secs: f64,
    /// Seconds cloning and destroying.
    pub clone_secs: f64,
    /// The newest export bundle found in the copy, when asked to look: (its name, its
    /// verification check, the files it holds).
    pub bundle: Option<FoundBundle>,
}

/// An export bundle found on the offsite copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FoundBundle {
    /// Its name.
    pub name: String,
    /// Whether it verified against its manifest, and what did not.
    pub check: DrillCheck,
    /// Its VMs' configs (`vms/<vmid>/config.json`), by VMID, for the restore.
    pub vms: Vec<(u32, Value)>,
}

pub(crate) fn check(
    check: &str,
    target: &str,
    passed: bool,
    detail: impl Into<String>,
    figures: Value,
) -> DrillCheck {
    DrillCheck {
        check: check.to_owned(),
        target: target.to_owned(),
        passed,
        detail: detail.into(),
        figures: match figures {
            Value::Object(map) => map,
            _ => Map::new(),
        },
    }
}

fn zfs_failed(what: &str, target: &str, e: &ZfsError) -> DrillCheck {
    check(what, target, false, format!("zfs: {e}"), Value::Null)
}

/// The clone names of drill `tag`'s target `index`.
pub fn clone_names(tag: &str, index: usize, target: &DrillTarget) -> (String, String) {
    (
        format!(
            "{}/{CLONE_PREFIX}{tag}-{index}",
            names::pool_of(&target.target)
        ),
        format!(
            "{}/{CLONE_PREFIX}{tag}-{index}-src",
            names::pool_of(&target.source)
        ),
    )
}

/// How one target is examined.
#[derive(Debug, Clone, Copy)]
pub struct Examine<'a> {
    /// The drill's clone tag.
    pub tag: &'a str,
    /// The target's index (clone names).
    pub index: usize,
    /// The drill's time.
    pub now: DateTime<Utc>,
    /// `drill.rpo`.
    pub rpo: Duration,
    /// `drill.files_timeout`.
    pub files_timeout: Duration,
    /// Clone and compare the files (not in a dry run).
    pub files: bool,
    /// Look for the newest export bundle in the copy.
    pub bundle_here: bool,
}

/// Examines one target: lineage, guid, RPO, and (when asked) files and the newest export bundle.
pub async fn examine(target: &DrillTarget, how: Examine<'_>) -> Examined {
    let Examine { now, rpo, .. } = how;
    let mut out = Examined {
        checks: Vec::new(),
        age_secs: None,
        cloned_at: None,
        checksum_secs: 0.0,
        clone_secs: 0.0,
        bundle: None,
    };
    let copy = match target.target_zfs.snapshots(&target.target).await {
        Ok(s) => s,
        Err(e) => {
            out.checks.push(zfs_failed("lineage", &target.target, &e));
            return out;
        }
    };
    let original = match target.source_zfs.snapshots(&target.source).await {
        Ok(s) => s,
        Err(e) => {
            out.checks.push(zfs_failed("lineage", &target.source, &e));
            return out;
        }
    };
    let Some(newest) = copy.last() else {
        out.checks.push(check(
            "lineage",
            &target.target,
            false,
            "the offsite copy has no snapshot: nothing was ever replicated",
            Value::Null,
        ));
        return out;
    };
    let on_source = |s: &SnapshotInfo| original.iter().find(|o| o.name == s.name);
    let common = copy
        .iter()
        .rev()
        .find(|s| on_source(s).is_some_and(|o| o.guid == s.guid));
    let newest_name = newest.full_name();
    match on_source(newest) {
        Some(o) if o.guid == newest.guid => {
            out.checks.push(check(
                "lineage",
                &newest_name,
                true,
                "the newest offsite snapshot is one the source took",
                Value::Null,
            ));
            out.checks.push(check(
                "guid",
                &newest_name,
                true,
                format!("guid {} on both sides", newest.guid),
                json!({"guid": newest.guid.to_string()}),
            ));
        }
        Some(o) => out.checks.push(check(
            "guid",
            &newest_name,
            false,
            format!(
                "guid {} on the offsite copy, {} on the source's {}: not the same snapshot",
                newest.guid,
                o.guid,
                o.full_name()
            ),
            Value::Null,
        )),
        None => out.checks.push(check(
            "lineage",
            &newest_name,
            false,
            format!(
                "the offsite copy's newest snapshot {} is not on the source (taken on the offsite \
                 side?); the newest snapshot both have is {}",
                newest.name,
                common.map_or("none".to_owned(), |c| c.name.clone())
            ),
            Value::Null,
        )),
    }
    let Some(common) = common else {
        out.checks.push(check(
            "files",
            &newest_name,
            false,
            "no snapshot on the offsite copy matches one of the source by name and guid: nothing \
             to compare the files with",
            Value::Null,
        ));
        return out;
    };
    let age = (now - common.creation).num_seconds().max(0) as u64;
    out.age_secs = Some(age);
    let within = Duration::from_secs(age) <= rpo;
    out.checks.push(check(
        "rpo",
        &common.full_name(),
        within,
        format!(
            "newest replicated snapshot is {} old (RPO {})",
            human(Duration::from_secs(age)),
            human(rpo)
        ),
        json!({"age_secs": age, "rpo_secs": rpo.as_secs()}),
    ));
    if how.files {
        files_check(target, how, newest, common, &mut out).await;
    }
    out
}

fn human(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}

/// Clones the copy's newest snapshot (and the source's common one when its files are not
/// reachable under `.zfs/snapshot`), compares, destroys the clones.
async fn files_check(
    target: &DrillTarget,
    how: Examine<'_>,
    newest: &SnapshotInfo,
    common: &SnapshotInfo,
    out: &mut Examined,
) {
    let Examine {
        tag,
        index,
        files_timeout,
        bundle_here,
        ..
    } = how;
    let (copy_clone, source_clone) = clone_names(tag, index, target);
    let name = newest.full_name();
    let started = Instant::now();
    out.cloned_at = Some(Utc::now());
    let copy_dir = match clone_at(&target.target_zfs, &name, &copy_clone).await {
        Ok(dir) => dir,
        Err(detail) => {
            out.checks
                .push(check("files", &name, false, detail, Value::Null));
            return;
        }
    };
    if bundle_here {
        out.bundle = Some(super::bundle::find(&copy_dir, &name));
    }
    let source_snapshot = names::full_name(&target.source, &common.name);
    let snapdir = match target.source_zfs.mountpoint(&target.source).await {
        Ok(Some(mp)) => Some(mp.join(".zfs/snapshot").join(&common.name)),
        _ => None,
    };
    let mut made_source_clone = false;
    let source_dir = match snapdir.filter(|d| d.is_dir()) {
        Some(dir) => Ok(dir),
        None => {
            made_source_clone = true;
            clone_at(&target.source_zfs, &source_snapshot, &source_clone).await
        }
    };
    out.clone_secs += started.elapsed().as_secs_f64();
    match source_dir {
        Ok(source_dir) => {
            let hashing = Instant::now();
            let result = compare_trees(&source_dir, &copy_dir, files_timeout).await;
            out.checksum_secs += hashing.elapsed().as_secs_f64();
            out.checks.push(match result {
                Ok((problems, files, bytes)) => check(
                    "files",
                    &name,
                    problems.is_empty(),
                    if problems.is_empty() {
                        format!("{files} files match {source_snapshot} byte for byte")
                    } else {
                        format!("against {source_snapshot}: {}", problems.join("; "))
                    },
                    json!({"files": files, "bytes": bytes}),
                ),
                Err(detail) => check("files", &name, false, detail, Value::Null),
            });
        }
        Err(detail) => out
            .checks
            .push(check("files", &name, false, detail, Value::Null)),
    }
    let destroying = Instant::now();
    // Destroyed here, not only at the end: a clone pins its snapshot against pruning.
    let mut leftovers = Vec::new();
    if let Err(e) = target.target_zfs.destroy_clone(&copy_clone).await {
        leftovers.push(format!("{copy_clone}: {e}"));
    }
    if made_source_clone && let Err(e) = target.source_zfs.destroy_clone(&source_clone).await {
        leftovers.push(format!("{source_clone}: {e}"));
    }
    out.clone_secs += destroying.elapsed().as_secs_f64();
    if !leftovers.is_empty() {
        out.checks.push(check(
            "cleanup",
            &name,
            false,
            format!("clone not destroyed: {}", leftovers.join("; ")),
            Value::Null,
        ));
    }
}

/// Clones `snapshot` as `clone` and returns where it is mounted.
async fn clone_at(zfs: &Zfs, snapshot: &str, clone: &str) -> Result<PathBuf, String> {
    // A leftover of a crashed drill of the same run: replaced.
    zfs.destroy_clone(clone)
        .await
        .map_err(|e| format!("removing a leftover clone {clone}: {e}"))?;
    zfs.clone_snapshot(snapshot, clone)
        .await
        .map_err(|e| format!("cloning {snapshot}: {e}"))?;
    match zfs.mountpoint(clone).await {
        Ok(Some(dir)) if dir.is_dir() => Ok(dir),
        Ok(_) => Err(format!(
            "the clone {clone} is not mounted on this host: the drill reads files locally"
        )),
        Err(e) => Err(format!("the clone {clone}: {e}")),
    }
}

/// Hashes both trees (on blocking threads, both at once) and compares them; gives up after
/// `timeout` instead of hanging on a device that does not answer.
async fn compare_trees(
    source: &Path,
    copy: &Path,
    timeout: Duration,
) -> Result<(Vec<String>, usize, u64), String> {
    let (s, c) = (source.to_owned(), copy.to_owned());
    let both = async {
        let a = tokio::task::spawn_blocking(move || files::scan(&s));
        let b = tokio::task::spawn_blocking(move || files::scan(&c));
        let (a, b) = tokio::join!(a, b);
        let a = a
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the source: {e}"))?;
        let b = b
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the copy: {e}"))?;
        Ok::<_, String>((files::compare(&a, &b, PROBLEMS_SHOWN), b.len(), b.bytes))
    };
    match tokio::time::timeout(timeout, both).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "reading the files took longer than drill.files_timeout ({})",
            human(timeout)
        )),
    }
}
