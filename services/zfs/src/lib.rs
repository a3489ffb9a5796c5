//! # proxflow-zfs
//!
//! The only code in proxflow that runs `zfs`. A [`Zfs`] handle is a command prefix — empty for the
//! local host, e.g. `["ssh", "-o", "BatchMode=yes", "backup@offsite"]` for a remote one — plus a
//! timeout; every operation is one `zfs` command through it (run by
//! [`proxflow_runtime::command`]: deadline, process-group kill, bounded output, a span each).
//!
//! ZFS versions differ in what they can do, so a handle probes once what its zfs has
//! ([`Capabilities`]) and degrades instead of assuming: without `zfs list -p` the snapshot listing
//! comes from `zfs get -Hp`; without `zfs holds` (zfs-fuse lacks the Python helper behind it) holds
//! are seen through the `userrefs` count and released tag by tag; without resumable receive an
//! interrupted transfer is retried from the common base. Nothing here ever destroys a dataset, and
//! [`Zfs::destroy_snapshot`] takes only a snapshot name.
//!
//! ## Layout
//! - [`names`] — name validation, the shell-safety rule for ssh prefixes, the lease key and hold tag
//!   the snapshotter and replicator share.
//! - [`parse`] — parsers for `-H` output ([`SnapshotInfo`]), usage text and `zfs holds`.
//! - [`space`] — used / referenced / snapshot space of a dataset tree (`zfs get -Hrp`), for the
//!   capacity review.
//! - [`status`] — `zpool status -v` parsed (zfs-fuse's and OpenZFS's formats) into
//!   [`proxflow_schemas::health::PoolStatus`], for the disk and pool health job.
//! - [`pipe`] — `zfs send | zfs receive` between two handles, copied and counted in this process.
//! - `pools` — the pools a host has and [`Zfs::create`], for `proxflow dev`'s own dataset.

mod clones;
pub mod names;
pub mod parse;
pub mod pipe;
mod pools;
pub mod space;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proxflow_runtime::command::{self, CommandError, CommandOutput, CommandSpec};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

pub use parse::{EXPIRES_PROPERTY, SnapshotInfo};
pub use pipe::{PipeEnd, PipeError, Transfer};

/// What this host's zfs can do, probed once per [`Zfs`] handle and the handles derived from it
/// ([`Zfs::with_timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `zfs list -p` (exact numbers in listings). Absent on zfs-fuse.
    pub parsable_list: bool,
    /// `zfs get -p`. Present on every zfs proxflow can work with: without it guids print rounded.
    pub parsable_get: bool,
    /// `zfs receive -s` and the `receive_resume_token` property. Absent on zfs-fuse.
    pub resumable_receive: bool,
    /// `zfs bookmark`. Absent on zfs-fuse (proxflow keeps the replication base with holds instead).
    pub bookmarks: bool,
    /// `zfs hold` / `zfs release`.
    pub holds: bool,
    /// `zfs holds` lists tags. zfs-fuse has the command but not the helper it runs.
    pub hold_listing: bool,
}

/// Why a zfs operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    /// A dataset or snapshot name proxflow refuses.
    #[error(
        "{0:?} is not a valid ZFS name (letters, digits, '_', '.', ':', '-', '/' between components)"
    )]
    InvalidName(String),
    /// An argument that would be reinterpreted by the remote shell behind an ssh prefix.
    #[error("argument {0:?} cannot be passed through the command prefix safely")]
    UnsafeArgument(String),
    /// The command could not be run.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The command ran and failed.
    #[error("`{command}` on {host}: {summary}")]
    Failed {
        /// The zfs arguments.
        command: String,
        /// `local` or the prefix.
        host: String,
        /// Exit and last stderr line.
        summary: String,
        /// Stderr tail.
        stderr: String,
    },
    /// Output that does not parse.
    #[error("{host}: {source}")]
    Parse {
        /// `local` or the prefix.
        host: String,
        /// The parser's error.
        #[source]
        source: parse::ParseError,
    },
    /// `zpool status` output that is not a status.
    #[error("{host}: {source}")]
    Status {
        /// `local` or the prefix.
        host: String,
        /// The parser's error.
        #[source]
        source: status::StatusParseError,
    },
    /// The zfs lacks something proxflow cannot do without.
    #[error("{host}: {what}")]
    Unsupported {
        /// `local` or the prefix.
        host: String,
        /// What is missing.
        what: String,
    },
    /// A send | receive did not complete.
    #[error(transparent)]
    Pipe(Box<PipeError>),
}

impl From<PipeError> for ZfsError {
    fn from(e: PipeError) -> Self {
        Self::Pipe(Box::new(e))
    }
}

/// A zfs on one host.
#[derive(Debug, Clone)]
pub struct Zfs {
    prefix: Vec<String>,
    timeout: Duration,
    capabilities: Arc<OnceCell<Capabilities>>,
}

impl Zfs {
    /// A zfs run through `prefix` (empty: this host), each command bounded by `timeout`.
    pub fn new(prefix: Vec<String>, timeout: Duration) -> Self {
        Self {
            prefix,
            timeout,
            capabilities: Arc::new(OnceCell::new()),
        }
    }

    /// This host's zfs.
    pub fn local(timeout: Duration) -> Self {
        Self::new(Vec::new(), timeout)
    }

    /// The same host's zfs with another command timeout, sharing its [`Capabilities`]: they belong
    /// to the host's zfs, not to a handle, so a second handle (another job on the same host) need
    /// not probe them again.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            prefix: self.prefix.clone(),
            timeout,
            capabilities: self.capabilities.clone(),
        }
    }

    /// The command prefix (empty: this host).
    pub fn prefix(&self) -> &[String] {
        &self.prefix
    }

    /// `local`, or the prefix, for messages.
    pub fn host(&self) -> String {
        if self.prefix.is_empty() {
            "local".to_owned()
        } else {
            self.prefix.join(" ")
        }
    }

    /// The full argv of `zfs <args>` on this host.
    pub fn argv(&self, args: &[&str]) -> Result<Vec<String>, ZfsError> {
        self.program_argv("zfs", args)
    }

    /// The full argv of `<program> <args>` (`zfs`, `zpool`) on this host.
    fn program_argv(&self, program: &str, args: &[&str]) -> Result<Vec<String>, ZfsError> {
        if !self.prefix.is_empty()
            && let Some(bad) = args.iter().find(|a| !names::is_shell_safe(a))
        {
            return Err(ZfsError::UnsafeArgument((*bad).to_owned()));
        }
        Ok(self
            .prefix
            .iter()
            .cloned()
            .chain(std::iter::once(program.to_owned()))
            .chain(args.iter().map(|a| (*a).to_owned()))
            .collect())
    }

    /// Runs `zfs <args>` whatever its exit status.
    async fn run(&self, args: &[&str]) -> Result<CommandOutput, ZfsError> {
        self.run_program("zfs", args).await
    }

    /// Runs `<program> <args>` whatever its exit status.
    async fn run_program(&self, program: &str, args: &[&str]) -> Result<CommandOutput, ZfsError> {
        let spec = CommandSpec {
            argv: self.program_argv(program, args)?,
            timeout: self.timeout,
            ..CommandSpec::default()
        };
        Ok(command::run(&spec).await?)
    }

    /// Runs `zfs <args>` and returns its stdout, or the failure.
    async fn check(&self, args: &[&str]) -> Result<String, ZfsError> {
        let out = self.run(args).await?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(self.failed(args, &out))
        }
    }

    /// Runs `zpool <args>` and returns its stdout, or the failure.
    async fn zpool(&self, args: &[&str]) -> Result<String, ZfsError> {
        let out = self.run_program("zpool", args).await?;
        if out.success() {
            Ok(out.stdout)
        } else {
            Err(ZfsError::Failed {
                command: format!("zpool {}", args.join(" ")),
                host: self.host(),
                summary: out.summary(),
                stderr: out.stderr.clone(),
            })
        }
    }

    /// `pool`'s settable properties, `(property, value, source)` sorted by property: `zpool get
    /// all` without the statistics (source `-`: size, free, capacity, health …), which change
    /// without anyone changing the pool. (`zpool get -H` is not in every zpool, zfs-fuse's
    /// included, so the table is parsed.)
    pub async fn pool_properties(
        &self,
        pool: &str,
    ) -> Result<Vec<(String, String, String)>, ZfsError> {
        valid_dataset(pool)?;
        let text = self.zpool(&["get", "all", pool]).await?;
        Ok(parse::parse_pool_properties(&text, pool))
    }

    /// `zpool status <pool>` as printed (`-v` lists the files with errors).
    pub async fn pool_status(&self, pool: &str) -> Result<String, ZfsError> {
        valid_dataset(pool)?;
        self.zpool(&["status", "-v", pool]).await
    }

    /// `zpool status -v <pool>` parsed; its scan dates are the host's local time, read in `tz`.
    pub async fn pool_health<Tz: chrono::TimeZone>(
        &self,
        pool: &str,
        tz: &Tz,
    ) -> Result<proxflow_schemas::health::PoolStatus, ZfsError> {
        let text = self.pool_status(pool).await?;
        status::parse(&text, tz).map_err(|source| ZfsError::Status {
            host: self.host(),
            source,
        })
    }

    /// `zpool scrub <pool>`: starts a scrub (zpool refuses while one or a resilver runs).
    pub async fn scrub(&self, pool: &str) -> Result<(), ZfsError> {
        valid_dataset(pool)?;
        self.zpool(&["scrub", pool]).await.map(drop)
    }

    /// The properties set on `pool`'s datasets (source `local` or `received`), as `(dataset,
    /// property, value, source)` in zfs's order: what a rebuilt pool needs set again.
    pub async fn local_properties(
        &self,
        pool: &str,
    ) -> Result<Vec<(String, String, String, String)>, ZfsError> {
        valid_dataset(pool)?;
        let args = [
            "get",
            "-r",
            "-H",
            "-s",
            "local,received",
            "-o",
            "name,property,value,source",
            "all",
            pool,
        ];
        let text = self.check(&args).await?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let mut cols = line.split('\t');
                Some((
                    cols.next()?.to_owned(),
                    cols.next()?.to_owned(),
                    cols.next()?.to_owned(),
                    cols.next()?.to_owned(),
                ))
            })
            .collect())
    }

    /// Where `dataset` is mounted, if it is.
    pub async fn mountpoint(&self, dataset: &str) -> Result<Option<PathBuf>, ZfsError> {
        valid_dataset(dataset)?;
        let text = self
            .check(&["get", "-H", "-o", "value", "mountpoint", dataset])
            .await?;
        let value = text.trim();
        Ok(value.starts_with('/').then(|| PathBuf::from(value)))
    }

    fn failed(&self, args: &[&str], out: &CommandOutput) -> ZfsError {
        ZfsError::Failed {
            command: format!("zfs {}", args.join(" ")),
            host: self.host(),
            summary: out.summary(),
            stderr: out.stderr.clone(),
        }
    }

    /// What this zfs can do, probed on `dataset`'s pool the first time and remembered.
    pub async fn capabilities(&self, dataset: &str) -> Result<Capabilities, ZfsError> {
        self.capabilities
            .get_or_try_init(|| self.probe(names::pool_of(dataset)))
            .await
            .copied()
    }

    async fn probe(&self, pool: &str) -> Result<Capabilities, ZfsError> {
        if !names::is_dataset_name(pool) {
            return Err(ZfsError::InvalidName(pool.to_owned()));
        }
        let option = |args: Vec<&'static str>, marker: &'static [&'static str]| {
            let zfs = self.clone();
            let pool = pool.to_owned();
            async move {
                let mut full: Vec<&str> = args;
                full.push(&pool);
                let out = zfs.run(&full).await?;
                if out.success() {
                    return Ok(true);
                }
                if marker.iter().any(|m| out.stderr.contains(m)) {
                    return Ok(false);
                }
                Err(zfs.failed(&full, &out))
            }
        };
        // zfs-fuse parses `holds` but fails in its Python helper before looking at the name; a
        // working one answers that this snapshot does not exist. (Asked even where the usage below
        // lists no `holds`: the answer is then ignored, and asking costs nothing.)
        let holds_probe = format!("{pool}@proxflow-probe-nonexistent");
        let holds_args = ["holds", "-H", holds_probe.as_str()];
        // The probes are independent read-only questions: asked at once, the probe takes one
        // command's latency instead of five.
        let (usage, parsable_list, parsable_get, resumable_receive, holds_answer) = tokio::try_join!(
            // Without arguments zfs prints its usage, one line per subcommand, and exits 2.
            self.run(&[]),
            option(
                vec!["list", "-Hp", "-o", "name"],
                &["invalid option", "unrecognized option"],
            ),
            option(
                vec!["get", "-Hp", "-o", "value", "guid"],
                &["invalid option", "unrecognized option"],
            ),
            option(
                vec!["get", "-H", "-o", "value", "receive_resume_token"],
                &["invalid property", "bad property list"],
            ),
            self.run(&holds_args),
        )?;
        let commands = parse::parse_commands(&format!("{}\n{}", usage.stdout, usage.stderr));
        let holds = commands.contains("hold") && commands.contains("release");
        let hold_listing = commands.contains("holds")
            && (holds_answer.success() || holds_answer.stderr.contains("does not exist"));
        let caps = Capabilities {
            parsable_list,
            parsable_get,
            resumable_receive,
            bookmarks: commands.contains("bookmark"),
            holds,
            hold_listing,
        };
        tracing::info!(host = %self.host(), ?caps, "zfs capabilities");
        Ok(caps)
    }

    /// Whether `dataset` exists.
    pub async fn exists(&self, dataset: &str) -> Result<bool, ZfsError> {
        valid_dataset(dataset)?;
        let args = ["get", "-H", "-o", "value", "type", dataset];
        let out = self.run(&args).await?;
        if out.success() {
            return Ok(true);
        }
        if out.stderr.contains("does not exist") {
            return Ok(false);
        }
        Err(self.failed(&args, &out))
    }

    /// The snapshots of `dataset` (not its children), oldest first (by `createtxg`).
    pub async fn snapshots(&self, dataset: &str) -> Result<Vec<SnapshotInfo>, ZfsError> {
        let listing = self.snapshot_listing(dataset).await?;
        let args: Vec<&str> = listing.iter().map(String::as_str).collect();
        let text = self.check(&args).await?;
        self.parse_snapshots(&listing, &text, dataset)
    }

    /// The snapshots of `dataset` as [`Zfs::snapshots`], or `None` when `dataset` does not exist:
    /// one command where [`Zfs::exists`] then [`Zfs::snapshots`] would take two.
    pub async fn snapshots_if_exists(
        &self,
        dataset: &str,
    ) -> Result<Option<Vec<SnapshotInfo>>, ZfsError> {
        let listing = self.snapshot_listing(dataset).await?;
        let args: Vec<&str> = listing.iter().map(String::as_str).collect();
        let out = self.run(&args).await?;
        if out.success() {
            return self
                .parse_snapshots(&listing, &out.stdout, dataset)
                .map(Some);
        }
        // The same answer `exists` reads as "no such dataset".
        if out.stderr.contains("does not exist") {
            return Ok(None);
        }
        Err(self.failed(&args, &out))
    }

    /// The arguments of the snapshot listing this zfs can give exactly: `list -Hp`, or else
    /// `get -Hp` (zfs-fuse).
    async fn snapshot_listing(&self, dataset: &str) -> Result<Vec<String>, ZfsError> {
        valid_dataset(dataset)?;
        let caps = self.capabilities(dataset).await?;
        if caps.parsable_list {
            let columns = parse::SNAPSHOT_PROPERTIES.join(",");
            return Ok([
                "list", "-Hp", "-t", "snapshot", "-d", "1", "-o", &columns, dataset,
            ]
            .map(str::to_owned)
            .to_vec());
        }
        if caps.parsable_get {
            let properties = std::iter::once("type")
                .chain(parse::SNAPSHOT_PROPERTIES.iter().copied().skip(1))
                .collect::<Vec<_>>()
                .join(",");
            return Ok([
                "get",
                "-Hp",
                "-d",
                "1",
                "-o",
                "name,property,value",
                &properties,
                dataset,
            ]
            .map(str::to_owned)
            .to_vec());
        }
        Err(ZfsError::Unsupported {
            host: self.host(),
            what: "neither `zfs list -p` nor `zfs get -p`: guids would print rounded".into(),
        })
    }

    /// Parses what the `listing` command (from [`Zfs::snapshot_listing`]: `list …` or `get …`)
    /// printed.
    fn parse_snapshots(
        &self,
        listing: &[String],
        text: &str,
        dataset: &str,
    ) -> Result<Vec<SnapshotInfo>, ZfsError> {
        let parsed = if listing.first().is_some_and(|a| a == "list") {
            parse::parse_list(text, dataset)
        } else {
            parse::parse_get(text, dataset)
        };
        parsed.map_err(|source| ZfsError::Parse {
            host: self.host(),
            source,
        })
    }

    /// Takes `dataset@name`, with [`EXPIRES_PROPERTY`] set when `expires` is given.
    pub async fn snapshot(
        &self,
        dataset: &str,
        name: &str,
        expires: Option<DateTime<Utc>>,
    ) -> Result<(), ZfsError> {
        valid_dataset(dataset)?;
        valid_snapshot(name)?;
        let full = names::full_name(dataset, name);
        match expires {
            Some(at) => {
                let property = format!("{EXPIRES_PROPERTY}={}", at.timestamp());
                self.check(&["snapshot", "-o", &property, &full]).await?
            }
            None => self.check(&["snapshot", &full]).await?,
        };
        Ok(())
    }

    /// Destroys `dataset@name` — a snapshot only: there is no way to name a dataset here. A held
    /// snapshot is refused by ZFS itself ("dataset is busy").
    pub async fn destroy_snapshot(&self, dataset: &str, name: &str) -> Result<(), ZfsError> {
        valid_dataset(dataset)?;
        valid_snapshot(name)?;
        let full = names::full_name(dataset, name);
        // `@` is guaranteed by construction; checked again because this is the one destructive call.
        if !full.contains('@') {
            return Err(ZfsError::InvalidName(full));
        }
        self.check(&["destroy", &full]).await.map(drop)
    }

    /// Places hold `tag` on `dataset@name`; `false` when it already had it.
    pub async fn hold(&self, tag: &str, dataset: &str, name: &str) -> Result<bool, ZfsError> {
        let full = self.held_name(tag, dataset, name)?;
        let args = ["hold", tag, &full];
        let out = self.run(&args).await?;
        if out.success() {
            return Ok(true);
        }
        if out.stderr.contains("tag already exists") {
            return Ok(false);
        }
        Err(self.failed(&args, &out))
    }

    /// Releases hold `tag` from `dataset@name`; `false` when it did not have it (tried rather than
    /// listed first, because not every zfs can list holds).
    pub async fn release(&self, tag: &str, dataset: &str, name: &str) -> Result<bool, ZfsError> {
        let full = self.held_name(tag, dataset, name)?;
        let args = ["release", tag, &full];
        let out = self.run(&args).await?;
        if out.success() {
            return Ok(true);
        }
        if out.stderr.contains("no such tag") {
            return Ok(false);
        }
        Err(self.failed(&args, &out))
    }

    fn held_name(&self, tag: &str, dataset: &str, name: &str) -> Result<String, ZfsError> {
        valid_dataset(dataset)?;
        valid_snapshot(name)?;
        if !names::is_snapshot_name(tag) {
            return Err(ZfsError::InvalidName(tag.to_owned()));
        }
        Ok(names::full_name(dataset, name))
    }

    /// The hold tags on `dataset@name`, or `None` where this zfs cannot list them (then
    /// [`SnapshotInfo::userrefs`] still counts them).
    pub async fn holds(&self, dataset: &str, name: &str) -> Result<Option<Vec<String>>, ZfsError> {
        valid_dataset(dataset)?;
        valid_snapshot(name)?;
        if !self.capabilities(dataset).await?.hold_listing {
            return Ok(None);
        }
        let full = names::full_name(dataset, name);
        let text = self.check(&["holds", "-H", &full]).await?;
        Ok(Some(parse::parse_holds(&text)))
    }

    /// The `receive_resume_token` of an interrupted resumable receive into `dataset`, where this
    /// zfs has them.
    pub async fn receive_resume_token(&self, dataset: &str) -> Result<Option<String>, ZfsError> {
        valid_dataset(dataset)?;
        if !self.capabilities(dataset).await?.resumable_receive {
            return Ok(None);
        }
        // Asked directly rather than after `exists`: a missing dataset answers "does not exist",
        // which saves a command on every run.
        let args = ["get", "-H", "-o", "value", "receive_resume_token", dataset];
        let out = self.run(&args).await?;
        if !out.success() {
            if out.stderr.contains("does not exist") {
                return Ok(None);
            }
            return Err(self.failed(&args, &out));
        }
        let token = out.stdout.trim();
        Ok((!token.is_empty() && token != "-").then(|| token.to_owned()))
    }

    /// Aborts an interrupted resumable receive into `dataset` (`zfs receive -A`): discards only the
    /// partial state, never a received snapshot.
    pub async fn abort_resumable_receive(&self, dataset: &str) -> Result<(), ZfsError> {
        valid_dataset(dataset)?;
        self.check(&["receive", "-A", dataset]).await.map(drop)
    }

    /// Sets `property=value` on `dataset`.
    pub async fn set(&self, dataset: &str, property: &str, value: &str) -> Result<(), ZfsError> {
        valid_dataset(dataset)?;
        let assignment = format!("{property}={value}");
        self.check(&["set", &assignment, dataset]).await.map(drop)
    }
}

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendStream {
    /// `zfs send dataset@snapshot`.
    Full {
        /// The snapshot.
        snapshot: String,
    },
    /// `zfs send -I dataset@base dataset@snapshot` (every snapshot in between too).
    Incremental {
        /// The common base.
        base: String,
        /// The newest snapshot.
        snapshot: String,
    },
    /// `zfs send -t <token>`.
    Resume {
        /// The target's `receive_resume_token`.
        token: String,
    },
}

/// Sends `stream` of `source_dataset` from `source` into `target_dataset` on `target`, without
/// `-F` (a receive never rolls back or destroys anything on the target). `resumable` asks the
/// receiver to keep a resume token if interrupted (`receive -s`; only where the target has it).
#[allow(clippy::too_many_arguments)]
pub async fn send_receive(
    source: &Zfs,
    source_dataset: &str,
    stream: &SendStream,
    target: &Zfs,
    target_dataset: &str,
    resumable: bool,
    timeout: Duration,
    cancel: &CancellationToken,
    progress: Option<&AtomicU64>,
) -> Result<Transfer, ZfsError> {
    valid_dataset(source_dataset)?;
    valid_dataset(target_dataset)?;
    let send = match stream {
        SendStream::Full { snapshot } => {
            valid_snapshot(snapshot)?;
            source.argv(&["send", &names::full_name(source_dataset, snapshot)])?
        }
        SendStream::Incremental { base, snapshot } => {
            valid_snapshot(base)?;
            valid_snapshot(snapshot)?;
            source.argv(&[
                "send",
                "-I",
                &names::full_name(source_dataset, base),
                &names::full_name(source_dataset, snapshot),
            ])?
        }
        SendStream::Resume { token } => source.argv(&["send", "-t", token])?,
    };
    let receive = if resumable {
        target.argv(&["receive", "-s", target_dataset])?
    } else {
        target.argv(&["receive", target_dataset])?
    };
    match pipe::pipe(&send, &receive, timeout, cancel, progress).await {
        Ok(transfer) => Ok(transfer),
        Err(e) => {
            // Only a local sender's pid is the zfs process's own (behind ssh or sudo it is not).
            if source.prefix.is_empty()
                && let Some(pid) = e.send_pid
            {
                source.release_send_holds(source_dataset, pid).await;
            }
            Err(e.into())
        }
    }
}

impl Zfs {
    /// Releases the temporary holds an interrupted `zfs send` (process `pid`) left behind.
    ///
    /// Old libzfs (zfs-fuse) holds every snapshot of a `-I` range for the duration of a send, under
    /// the tag `.send-<pid>-0`, and releases them from the sending process itself; a sender killed
    /// mid-stream leaves them until the pool is next imported, where they would block pruning and
    /// destroying those snapshots. Newer zfs releases them in the kernel when the sender exits, so
    /// there the release finds no such tag and nothing happens.
    async fn release_send_holds(&self, dataset: &str, pid: u32) {
        let tag = format!(".send-{pid}-0");
        let snaps = match self.snapshots(dataset).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%dataset, error = %e, "cannot look for holds of the interrupted send");
                return;
            }
        };
        for snap in snaps.iter().filter(|s| s.is_held()) {
            match self.release(&tag, dataset, &snap.name).await {
                Ok(true) => {
                    tracing::info!(snapshot = %snap.full_name(), %tag, "released a hold left by the interrupted send")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(snapshot = %snap.full_name(), error = %e, "hold of the interrupted send not released")
                }
            }
        }
    }
}

fn valid_dataset(name: &str) -> Result<(), ZfsError> {
    if names::is_dataset_name(name) {
        Ok(())
    } else {
        Err(ZfsError::InvalidName(name.to_owned()))
    }
}

fn valid_snapshot(name: &str) -> Result<(), ZfsError> {
    if names::is_snapshot_name(name) {
        Ok(())
    } else {
        Err(ZfsError::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn argv_adds_the_prefix_and_refuses_unsafe_arguments_through_it() {
        let local = Zfs::local(Duration::from_secs(1));
        assert_eq!(
            local.argv(&["list", "a b"]).unwrap(),
            ["zfs", "list", "a b"]
        );
        assert_eq!(local.host(), "local");
        let remote = Zfs::new(
            vec!["ssh".into(), "backup@offsite".into()],
            Duration::from_secs(1),
        );
        assert_eq!(
            remote.argv(&["list", "-Hp", "tank/a"]).unwrap(),
            ["ssh", "backup@offsite", "zfs", "list", "-Hp", "tank/a"]
        );
        assert!(matches!(
            remote.argv(&["list", "tank/a;reboot"]),
            Err(ZfsError::UnsafeArgument(_))
        ));
        assert_eq!(remote.host(), "ssh backup@offsite");
    }

    #[tokio::test]
    async fn destructive_calls_refuse_anything_but_a_snapshot_name() {
        let zfs = Zfs::local(Duration::from_secs(1));
        // Rejected before any command runs.
        assert!(matches!(
            zfs.destroy_snapshot("tank/a", "").await,
            Err(ZfsError::InvalidName(_))
        ));
        assert!(matches!(
            zfs.destroy_snapshot("tank/a@x", "y").await,
            Err(ZfsError::InvalidName(_))
        ));
        assert!(matches!(
            zfs.destroy_snapshot("tank/a", "x y").await,
            Err(ZfsError::InvalidName(_))
        ));
    }
}
