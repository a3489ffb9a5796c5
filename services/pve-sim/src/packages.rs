//! A guest's Debian/Ubuntu package state, as a patching service sees it through the QEMU guest
//! agent's `exec`: the installed packages, the running and the installed kernels, holds,
//! `/var/run/reboot-required`, and the updates the archive offers ([`GuestUpdate`]).
//!
//! [`GuestPackages::exec`] understands exactly these argument vectors (anything else is not a
//! package command and keeps the agent's default answer), with the real tools' output formats:
//!
//! - `apt-get update` — the archive's index lines, exit 0;
//! - `apt-get -s -o APT::Ignore-Hold=true dist-upgrade` — the simulated plan with every pending
//!   update, held ones included; `apt-get -s dist-upgrade` — the same without the held ones, which
//!   are listed as kept back;
//! - `env DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::=--force-confold
//!   dist-upgrade` — applies the pending non-held updates in their listed order; it runs for
//!   `durations.guest_upgrade` (its exec reports "not exited" that long), an update marked `fail`
//!   stops it there with dpkg's error (exit 100);
//! - `apt-mark hold|unhold P...`, `test -f /var/run/reboot-required`, `dpkg-query -W`,
//!   `uname -r`, and `systemctl reboot` (the caller reboots the guest).
//!
//! The upgrade's effect is applied when it starts, not when its exec reports the exit: nothing a
//! client can read through the agent tells the two apart, except `dpkg-query` during the run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The update-file path `test -f` checks, written by packages that need a reboot.
const REBOOT_REQUIRED: &str = "/var/run/reboot-required";
/// Real apt prints this when `-s` runs without root; the contract keeps it (see the module docs).
const SIMULATION_NOTE: &str = "NOTE: This is only a simulation!\n      apt-get needs root privileges for real execution.\n      Keep also in mind that locking is deactivated,\n      so don't depend on the relevance to the real current situation!\n";
const DPKG_ERROR: &str = "E: Sub-process /usr/bin/dpkg returned an error code (1)\n";
/// Width apt wraps its package lists at when not writing to a terminal.
const LIST_WIDTH: usize = 80;

/// One update the archive offers a guest: scenario `[[guest_update]]` without `vmid`, and an item
/// of `PUT /_sim/guest/{vmid}/updates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestUpdate {
    /// Package name; one not installed is a new package.
    pub package: String,
    /// Candidate version (may be left out for a removal).
    #[serde(default)]
    pub version: String,
    /// The archive it comes from, e.g. `jammy-security` (`jammy-updates` is not security); may be
    /// left out for a removal.
    #[serde(default)]
    pub archive: String,
    /// The kernel release this package installs (`5.15.0-119-generic`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Installing it writes `/var/run/reboot-required`.
    #[serde(default)]
    pub reboot: bool,
    /// The upgrade removes this installed package instead (a `Remv` line).
    #[serde(default)]
    pub remove: bool,
    /// The upgrade fails at this package (dpkg's configure error).
    #[serde(default)]
    pub fail: bool,
}

/// Why a pending update cannot be offered; the message starts with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// Not a Debian package name.
    #[error(
        "package: '{0}' is not a package name (a lower-case letter or digit, then at least one of a-z 0-9 + - .)"
    )]
    PackageName(String),
    /// An install without a version.
    #[error("version: must not be empty")]
    EmptyVersion,
    /// An install without an archive.
    #[error("archive: must not be empty (e.g. jammy-security)")]
    EmptyArchive,
    /// The candidate is what is installed already: nothing to update.
    #[error("version: {version} of {package} is installed already")]
    SameVersion {
        /// The package.
        package: String,
        /// Its version.
        version: String,
    },
    /// A removal of a package that is not installed.
    #[error("remove: {0} is not installed")]
    RemoveNotInstalled(String),
    /// A `kernel` that names nothing.
    #[error("kernel: must not be empty when given")]
    EmptyKernel,
    /// A removal cannot install a kernel.
    #[error("kernel: a removal installs no kernel")]
    KernelOnRemoval,
    /// Two pending updates of one package.
    #[error("package: {0} has another pending update")]
    Duplicate(String),
}

/// Debian policy: at least two characters, lower-case alphanumerics and `+ - .`, starting with
/// an alphanumeric.
pub(crate) fn is_package_name(name: &str) -> bool {
    name.len() >= 2
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

impl GuestUpdate {
    /// Checks one update against what is installed.
    pub(crate) fn check(&self, installed: &BTreeMap<String, String>) -> Result<(), UpdateError> {
        if !is_package_name(&self.package) {
            return Err(UpdateError::PackageName(self.package.clone()));
        }
        if self.remove {
            if !installed.contains_key(&self.package) {
                return Err(UpdateError::RemoveNotInstalled(self.package.clone()));
            }
            if self.kernel.is_some() {
                return Err(UpdateError::KernelOnRemoval);
            }
            return Ok(());
        }
        if self.version.trim().is_empty() {
            return Err(UpdateError::EmptyVersion);
        }
        if self.archive.trim().is_empty() {
            return Err(UpdateError::EmptyArchive);
        }
        if installed.get(&self.package) == Some(&self.version) {
            return Err(UpdateError::SameVersion {
                package: self.package.clone(),
                version: self.version.clone(),
            });
        }
        if self.kernel.as_ref().is_some_and(|k| k.trim().is_empty()) {
            return Err(UpdateError::EmptyKernel);
        }
        Ok(())
    }
}

/// Checks a VM's pending list: each update, and one update per package. `Err` carries the index.
pub(crate) fn check_updates(
    updates: &[GuestUpdate],
    installed: &BTreeMap<String, String>,
) -> Result<(), (usize, UpdateError)> {
    let mut seen = BTreeSet::new();
    for (i, update) in updates.iter().enumerate() {
        update.check(installed).map_err(|e| (i, e))?;
        if !seen.insert(update.package.as_str()) {
            return Err((i, UpdateError::Duplicate(update.package.clone())));
        }
    }
    Ok(())
}

/// What one package command answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecOutcome {
    pub(crate) exitcode: i64,
    pub(crate) out: String,
    pub(crate) err: String,
    /// Until when its `exec-status` reports it still running (`None`: done at once).
    pub(crate) running_until: Option<Instant>,
    /// The guest goes down for a reboot now (`systemctl reboot`).
    pub(crate) reboot: bool,
}

impl ExecOutcome {
    fn done(exitcode: i64, out: String, err: String) -> Self {
        Self {
            exitcode,
            out,
            err,
            running_until: None,
            reboot: false,
        }
    }
}

/// The commands understood, parsed from an exact argument vector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command<'a> {
    Update,
    Simulate { ignore_hold: bool },
    Upgrade,
    Hold(&'a [String]),
    Unhold(&'a [String]),
    RebootRequired,
    DpkgQuery,
    Uname,
    Reboot,
}

impl<'a> Command<'a> {
    fn parse(argv: &'a [String]) -> Option<Self> {
        let words: Vec<&str> = argv.iter().map(String::as_str).collect();
        let command = match words.as_slice() {
            ["apt-get", "update"] => Self::Update,
            [
                "apt-get",
                "-s",
                "-o",
                "APT::Ignore-Hold=true",
                "dist-upgrade",
            ] => Self::Simulate { ignore_hold: true },
            ["apt-get", "-s", "dist-upgrade"] => Self::Simulate { ignore_hold: false },
            [
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "-y",
                "-o",
                "Dpkg::Options::=--force-confold",
                "dist-upgrade",
            ] => Self::Upgrade,
            ["apt-mark", "hold", ..] => Self::Hold(argv.get(2..)?),
            ["apt-mark", "unhold", ..] => Self::Unhold(argv.get(2..)?),
            ["test", "-f", REBOOT_REQUIRED] => Self::RebootRequired,
            ["dpkg-query", "-W"] => Self::DpkgQuery,
            ["uname", "-r"] => Self::Uname,
            ["systemctl", "reboot"] => Self::Reboot,
            _ => return None,
        };
        Some(command)
    }
}

/// One guest's package state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuestPackages {
    /// Package -> installed version.
    pub(crate) installed: BTreeMap<String, String>,
    pub(crate) kernel_running: String,
    /// Oldest first: the last is the newest, the one the next boot runs.
    pub(crate) kernels_installed: Vec<String>,
    pub(crate) reboot_required: bool,
    pub(crate) held: BTreeSet<String>,
    /// In the order the upgrade applies them.
    pub(crate) pending: Vec<GuestUpdate>,
    /// `dist-upgrade` runs that changed something.
    pub(crate) upgrades: u32,
    /// Boots of any kind (start, reboot task, guest reboot).
    pub(crate) reboots: u32,
    /// dpkg's frontend lock, held by a running upgrade: (until, its exec pid).
    lock: Option<(Instant, u32)>,
}

impl GuestPackages {
    pub(crate) fn new(
        kernel: String,
        installed: BTreeMap<String, String>,
        pending: Vec<GuestUpdate>,
    ) -> Self {
        Self {
            installed,
            kernels_installed: vec![kernel.clone()],
            kernel_running: kernel,
            reboot_required: false,
            held: BTreeSet::new(),
            pending,
            upgrades: 0,
            reboots: 0,
            lock: None,
        }
    }

    /// A clone's state: the same packages, its own (zero) counters, no command running.
    pub(crate) fn for_clone(&self) -> Self {
        Self {
            upgrades: 0,
            reboots: 0,
            lock: None,
            ..self.clone()
        }
    }

    /// Back to a snapshot's packages; the counters keep counting what happened.
    pub(crate) fn restore(&mut self, snapshot: &Self) {
        let (upgrades, reboots) = (self.upgrades, self.reboots);
        *self = Self {
            upgrades,
            reboots,
            lock: None,
            ..snapshot.clone()
        };
    }

    /// The guest (re)starts: the newest installed kernel runs, `/var/run` (a tmpfs) is empty.
    pub(crate) fn on_boot(&mut self) {
        if let Some(newest) = self.kernels_installed.last() {
            self.kernel_running.clone_from(newest);
        }
        self.reboot_required = false;
        self.reboots = self.reboots.saturating_add(1);
        self.lock = None;
    }

    /// The guest stops: whatever ran is gone.
    pub(crate) fn on_stop(&mut self) {
        self.lock = None;
    }

    /// Replaces the pending updates after checking them.
    pub(crate) fn set_pending(
        &mut self,
        updates: Vec<GuestUpdate>,
    ) -> Result<(), (usize, UpdateError)> {
        check_updates(&updates, &self.installed)?;
        self.pending = updates;
        Ok(())
    }

    /// For `GET /_sim/state`.
    pub(crate) fn summary(&self) -> Value {
        json!({
            "installed": self.installed,
            "kernel_running": self.kernel_running,
            "kernels_installed": self.kernels_installed,
            "reboot_required": self.reboot_required,
            "held": self.held,
            "pending": self.pending,
            "upgrades": self.upgrades,
            "reboots": self.reboots,
        })
    }

    /// The answer to `argv` if it is a package command; `pid` is its exec pid, `upgrade_time` how
    /// long an upgrade runs (real time).
    pub(crate) fn exec(
        &mut self,
        argv: &[String],
        pid: u32,
        now: Instant,
        upgrade_time: Duration,
    ) -> Option<ExecOutcome> {
        let outcome = match Command::parse(argv)? {
            Command::Update => ExecOutcome::done(0, self.index_lines(), String::new()),
            Command::Simulate { ignore_hold } => {
                ExecOutcome::done(0, self.simulation(ignore_hold), String::new())
            }
            Command::Upgrade => self.upgrade(pid, now, upgrade_time),
            Command::Hold(names) => self.mark(names, true),
            Command::Unhold(names) => self.mark(names, false),
            Command::RebootRequired => ExecOutcome::done(
                i64::from(!self.reboot_required),
                String::new(),
                String::new(),
            ),
            Command::DpkgQuery => {
                let out = self
                    .installed
                    .iter()
                    .map(|(name, version)| format!("{name}\t{version}\n"))
                    .collect();
                ExecOutcome::done(0, out, String::new())
            }
            Command::Uname => {
                ExecOutcome::done(0, format!("{}\n", self.kernel_running), String::new())
            }
            Command::Reboot => ExecOutcome {
                reboot: true,
                ..ExecOutcome::done(0, String::new(), String::new())
            },
        };
        Some(outcome)
    }

    /// The release the archive lines name: the one the pending updates come from.
    fn codename(&self) -> &str {
        self.pending
            .iter()
            .map(|u| codename(&u.archive))
            .find(|c| !c.is_empty())
            .unwrap_or("jammy")
    }

    /// `apt-get update` (no terminal: no progress, no "Done").
    fn index_lines(&self) -> String {
        let c = self.codename();
        format!(
            "Hit:1 http://archive.ubuntu.com/ubuntu {c} InRelease\n\
             Hit:2 http://archive.ubuntu.com/ubuntu {c}-updates InRelease\n\
             Hit:3 http://archive.ubuntu.com/ubuntu {c}-backports InRelease\n\
             Hit:4 http://security.ubuntu.com/ubuntu {c}-security InRelease\n\
             Reading package lists...\n"
        )
    }

    fn is_held(&self, update: &GuestUpdate) -> bool {
        self.held.contains(&update.package)
    }

    /// (to apply, kept back) in pending order.
    fn plan(&self, ignore_hold: bool) -> (Vec<&GuestUpdate>, Vec<&GuestUpdate>) {
        self.pending
            .iter()
            .partition(|u| ignore_hold || !self.is_held(u))
    }

    /// apt's resolver lines, package lists and summary line, for the plan.
    fn plan_header(&self, apply: &[&GuestUpdate], kept: &[&GuestUpdate]) -> String {
        let mut out = String::from(
            "Reading package lists...\nBuilding dependency tree...\nReading state information...\nCalculating upgrade...\n",
        );
        fn names<'a>(
            from: &[&'a GuestUpdate],
            filter: impl Fn(&GuestUpdate) -> bool,
        ) -> Vec<&'a str> {
            let mut list: Vec<&str> = from
                .iter()
                .filter(|u| filter(u))
                .map(|u| u.package.as_str())
                .collect();
            list.sort_unstable();
            list
        }
        let removed = names(apply, |u| u.remove);
        let new = names(apply, |u| {
            !u.remove && !self.installed.contains_key(&u.package)
        });
        let kept_back = names(kept, |_| true);
        let upgraded = names(apply, |u| {
            !u.remove && self.installed.contains_key(&u.package)
        });
        for (title, list) in [
            ("The following packages will be REMOVED:", &removed),
            ("The following NEW packages will be installed:", &new),
            ("The following packages have been kept back:", &kept_back),
            ("The following packages will be upgraded:", &upgraded),
        ] {
            if !list.is_empty() {
                out.push_str(title);
                out.push('\n');
                out.push_str(&wrap(list));
            }
        }
        out.push_str(&format!(
            "{} upgraded, {} newly installed, {} to remove and {} not upgraded.\n",
            upgraded.len(),
            new.len(),
            removed.len(),
            kept_back.len()
        ));
        out
    }

    /// `apt-get -s [...] dist-upgrade`.
    fn simulation(&self, ignore_hold: bool) -> String {
        let (apply, kept) = self.plan(ignore_hold);
        let mut out = String::from(SIMULATION_NOTE);
        out.push_str(&self.plan_header(&apply, &kept));
        for update in &apply {
            let old = self.installed.get(&update.package);
            let line = match (update.remove, old) {
                (true, Some(old)) => format!("Remv {} [{old}]\n", update.package),
                (true, None) => format!("Remv {}\n", update.package),
                (false, Some(old)) => {
                    format!("Inst {} [{old}] ({})\n", update.package, candidate(update))
                }
                (false, None) => format!("Inst {} ({})\n", update.package, candidate(update)),
            };
            out.push_str(&line);
        }
        for update in apply.iter().filter(|u| !u.remove) {
            out.push_str(&format!(
                "Conf {} ({})\n",
                update.package,
                candidate(update)
            ));
        }
        out
    }

    /// `apt-get -y dist-upgrade`: applies the non-held updates in order until one fails.
    fn upgrade(&mut self, pid: u32, now: Instant, upgrade_time: Duration) -> ExecOutcome {
        if let Some((until, holder)) = self.lock
            && now < until
        {
            return ExecOutcome::done(
                100,
                String::new(),
                format!(
                    "E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process {holder} (apt-get)\n\
                     E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is another process using it?\n"
                ),
            );
        }
        let (apply, kept) = self.plan(false);
        let mut out = self.plan_header(&apply, &kept);
        let mut applied: Vec<GuestUpdate> = Vec::new();
        let mut failed: Option<String> = None;
        for update in apply {
            if update.fail {
                let v = &update.version;
                let p = &update.package;
                out.push_str(&format!(
                    "Setting up {p} ({v}) ...\n\
                     dpkg: error processing package {p} (--configure):\n \
                     installed {p} package post-installation script subprocess returned error exit status 1\n\
                     Errors were encountered while processing:\n {p}\n"
                ));
                failed = Some(p.clone());
                break;
            }
            out.push_str(&self.dpkg_lines(update));
            applied.push(update.clone());
        }
        for update in &applied {
            if update.remove {
                self.installed.remove(&update.package);
                self.held.remove(&update.package);
            } else {
                self.installed
                    .insert(update.package.clone(), update.version.clone());
            }
            if let Some(kernel) = &update.kernel
                && !self.kernels_installed.contains(kernel)
            {
                self.kernels_installed.push(kernel.clone());
            }
            if update.kernel.is_some() || update.reboot {
                self.reboot_required = true;
            }
        }
        self.pending.retain(|u| !applied.contains(u));
        if !applied.is_empty() {
            self.upgrades = self.upgrades.saturating_add(1);
        }
        // An absurd duration overflows Instant: a year is "still running" all the same.
        let until = now
            .checked_add(upgrade_time)
            .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
            .unwrap_or(now);
        self.lock = Some((until, pid));
        let (exitcode, err) = match failed {
            Some(_) => (100, DPKG_ERROR.to_owned()),
            None => (0, String::new()),
        };
        ExecOutcome {
            running_until: Some(until),
            ..ExecOutcome::done(exitcode, out, err)
        }
    }

    /// What dpkg prints for one applied update.
    fn dpkg_lines(&self, update: &GuestUpdate) -> String {
        let p = &update.package;
        let v = &update.version;
        match self.installed.get(p) {
            Some(old) if update.remove => format!("Removing {p} ({old}) ...\n"),
            _ if update.remove => format!("Removing {p} ...\n"),
            Some(old) => format!(
                "Preparing to unpack .../{p}_{}_amd64.deb ...\nUnpacking {p} ({v}) over ({old}) ...\nSetting up {p} ({v}) ...\n",
                deb_version(v)
            ),
            None => format!(
                "Selecting previously unselected package {p}.\nPreparing to unpack .../{p}_{}_amd64.deb ...\nUnpacking {p} ({v}) ...\nSetting up {p} ({v}) ...\n",
                deb_version(v)
            ),
        }
    }

    /// `apt-mark hold|unhold`: every name must be installed, else nothing changes.
    fn mark(&mut self, names: &[String], hold: bool) -> ExecOutcome {
        if names.is_empty() {
            return ExecOutcome::done(100, String::new(), "E: No packages found\n".into());
        }
        if let Some(missing) = names.iter().find(|n| !self.installed.contains_key(*n)) {
            return ExecOutcome::done(
                100,
                String::new(),
                format!("E: Unable to locate package {missing}\n"),
            );
        }
        let mut out = String::new();
        for name in names {
            // apt-mark's own words when nothing changes.
            let line = match (hold, self.held.contains(name)) {
                (true, false) => format!("{name} set on hold.\n"),
                (true, true) => format!("{name} was already set on hold.\n"),
                (false, true) => format!("Canceled hold on {name}.\n"),
                (false, false) => format!("{name} was already not on hold.\n"),
            };
            out.push_str(&line);
            if hold {
                self.held.insert(name.clone());
            } else {
                self.held.remove(name);
            }
        }
        ExecOutcome::done(0, out, String::new())
    }
}

/// `jammy` of `jammy-security`.
fn codename(archive: &str) -> &str {
    archive.split('-').next().unwrap_or("")
}

/// `VERSION ORIGIN:RELEASE/ARCHIVE [arch]`, as apt's simulation prints a candidate.
fn candidate(update: &GuestUpdate) -> String {
    let code = codename(&update.archive);
    let (origin, release) = match code {
        "bionic" => ("Ubuntu", "18.04"),
        "focal" => ("Ubuntu", "20.04"),
        "jammy" => ("Ubuntu", "22.04"),
        "noble" => ("Ubuntu", "24.04"),
        "oracular" => ("Ubuntu", "24.10"),
        "plucky" => ("Ubuntu", "25.04"),
        "bullseye" if update.archive.ends_with("-security") => ("Debian-Security", "11"),
        "bookworm" if update.archive.ends_with("-security") => ("Debian-Security", "12"),
        "trixie" if update.archive.ends_with("-security") => ("Debian-Security", "13"),
        "bullseye" => ("Debian", "11"),
        "bookworm" => ("Debian", "12"),
        "trixie" => ("Debian", "13"),
        other => ("Ubuntu", other),
    };
    format!(
        "{} {origin}:{release}/{} [amd64]",
        update.version, update.archive
    )
}

/// The version as it appears in a `.deb` file name (the epoch colon is URL-encoded).
fn deb_version(version: &str) -> String {
    version.replace(':', "%3a")
}

/// apt's package list: two spaces of indent, names separated by one, wrapped at 80 columns.
fn wrap(names: &[&str]) -> String {
    let mut out = String::new();
    let mut line = String::from(" ");
    for name in names {
        if line.len() > 1 && line.len() + 1 + name.len() > LIST_WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = String::from(" ");
        }
        line.push(' ');
        line.push_str(name);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(package: &str, version: &str) -> GuestUpdate {
        GuestUpdate {
            package: package.into(),
            version: version.into(),
            archive: "jammy-security".into(),
            kernel: None,
            reboot: false,
            remove: false,
            fail: false,
        }
    }

    fn guest() -> GuestPackages {
        GuestPackages::new(
            "5.15.0-118-generic".into(),
            BTreeMap::from([
                ("openssl".to_owned(), "3.0.2-0ubuntu1.15".to_owned()),
                ("libssl3".to_owned(), "3.0.2-0ubuntu1.15".to_owned()),
                ("foo".to_owned(), "1.2".to_owned()),
            ]),
            vec![
                update("libssl3", "3.0.2-0ubuntu1.16"),
                update("openssl", "3.0.2-0ubuntu1.16"),
                GuestUpdate {
                    kernel: Some("5.15.0-119-generic".into()),
                    version: "5.15.0-119.129".into(),
                    ..update("linux-image-5.15.0-119-generic", "")
                },
                GuestUpdate {
                    remove: true,
                    ..update("foo", "")
                },
            ],
        )
    }

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn the_simulation_prints_apts_plan() {
        let mut g = guest();
        let now = Instant::now();
        let out = g
            .exec(
                &argv("apt-get -s -o APT::Ignore-Hold=true dist-upgrade"),
                1,
                now,
                Duration::ZERO,
            )
            .expect("understood");
        assert_eq!(out.exitcode, 0);
        let expected = format!(
            "{SIMULATION_NOTE}Reading package lists...\nBuilding dependency tree...\nReading state information...\nCalculating upgrade...\n\
             The following packages will be REMOVED:\n  foo\n\
             The following NEW packages will be installed:\n  linux-image-5.15.0-119-generic\n\
             The following packages will be upgraded:\n  libssl3 openssl\n\
             2 upgraded, 1 newly installed, 1 to remove and 0 not upgraded.\n\
             Inst libssl3 [3.0.2-0ubuntu1.15] (3.0.2-0ubuntu1.16 Ubuntu:22.04/jammy-security [amd64])\n\
             Inst openssl [3.0.2-0ubuntu1.15] (3.0.2-0ubuntu1.16 Ubuntu:22.04/jammy-security [amd64])\n\
             Inst linux-image-5.15.0-119-generic (5.15.0-119.129 Ubuntu:22.04/jammy-security [amd64])\n\
             Remv foo [1.2]\n\
             Conf libssl3 (3.0.2-0ubuntu1.16 Ubuntu:22.04/jammy-security [amd64])\n\
             Conf openssl (3.0.2-0ubuntu1.16 Ubuntu:22.04/jammy-security [amd64])\n\
             Conf linux-image-5.15.0-119-generic (5.15.0-119.129 Ubuntu:22.04/jammy-security [amd64])\n"
        );
        assert_eq!(out.out, expected);
        // A hold keeps openssl back from the plain run only.
        let held = g.exec(&argv("apt-mark hold openssl"), 2, now, Duration::ZERO);
        assert_eq!(held.map(|o| o.out), Some("openssl set on hold.\n".into()));
        let plain = g
            .exec(&argv("apt-get -s dist-upgrade"), 3, now, Duration::ZERO)
            .expect("understood")
            .out;
        assert!(
            plain.contains("The following packages have been kept back:\n  openssl\n"),
            "{plain}"
        );
        assert!(
            plain.contains("1 upgraded, 1 newly installed, 1 to remove and 1 not upgraded.\n"),
            "{plain}"
        );
        assert!(!plain.contains("Inst openssl"), "{plain}");
    }

    #[test]
    fn unknown_argv_are_not_package_commands() {
        let mut g = guest();
        for words in [
            "apt-get upgrade",
            "apt-get -y dist-upgrade",
            "uname",
            "true",
        ] {
            assert_eq!(
                g.exec(&argv(words), 1, Instant::now(), Duration::ZERO),
                None,
                "{words}"
            );
        }
    }

    #[test]
    fn the_upgrade_stops_at_a_failing_package_and_holds_dpkgs_lock_while_it_runs() {
        let mut g = guest();
        g.pending[1].fail = true;
        let now = Instant::now();
        let upgrade = argv(
            "env DEBIAN_FRONTEND=noninteractive apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade",
        );
        let out = g
            .exec(&upgrade, 7, now, Duration::from_secs(20))
            .expect("understood");
        assert_eq!(out.exitcode, 100);
        assert_eq!(out.err, DPKG_ERROR);
        assert!(
            out.out
                .contains("dpkg: error processing package openssl (--configure):"),
            "{}",
            out.out
        );
        assert_eq!(g.installed["libssl3"], "3.0.2-0ubuntu1.16");
        assert_eq!(g.installed["openssl"], "3.0.2-0ubuntu1.15");
        assert_eq!(
            g.pending
                .iter()
                .map(|u| u.package.as_str())
                .collect::<Vec<_>>(),
            ["openssl", "linux-image-5.15.0-119-generic", "foo"]
        );
        assert_eq!((g.upgrades, g.reboot_required), (1, false));
        let again = g
            .exec(&upgrade, 8, now, Duration::ZERO)
            .expect("understood");
        assert_eq!(again.exitcode, 100);
        assert!(
            again.err.contains("held by process 7 (apt-get)"),
            "{}",
            again.err
        );
    }

    #[test]
    fn lists_wrap_at_eighty_columns() {
        let names: Vec<String> = (0..12).map(|i| format!("package-number-{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let text = wrap(&refs);
        assert!(
            text.lines()
                .all(|l| l.len() <= LIST_WIDTH && l.starts_with("  "))
        );
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn checks_name_the_field() {
        let installed = BTreeMap::from([("openssl".to_owned(), "1".to_owned())]);
        let bad = |u: GuestUpdate| u.check(&installed).expect_err("refused").to_string();
        assert!(bad(update("Openssl", "2")).starts_with("package:"));
        assert!(bad(update("openssl", "")).starts_with("version:"));
        assert!(bad(update("openssl", "1")).starts_with("version:"));
        assert!(
            bad(GuestUpdate {
                remove: true,
                ..update("bar", "")
            })
            .starts_with("remove:")
        );
        assert!(update("newpkg", "1.0").check(&installed).is_ok());
        let twice = [update("openssl", "2"), update("openssl", "3")];
        assert_eq!(
            check_updates(&twice, &installed).map_err(|(i, _)| i),
            Err(1)
        );
    }
}
