//! From what a package manager says to a classified target plan: `apt-get -s dist-upgrade` output
//! parsed into changes, and each change judged minor (applied in the window) or major (held for an
//! approval) by the `[patch.major]` rules. Pure functions: the scan feeds them, the tests too.

use std::collections::BTreeMap;

use proxflow_schemas::patch::{MajorChange, PackageChange, TargetPlan};

use crate::config::MajorRules;

/// The changes `apt-get -s dist-upgrade` lists: `Inst NAME [OLD] (NEW ARCHIVE [arch])` and
/// `Remv NAME [OLD]`. Other lines (headers, `Conf`) are ignored; an `Inst` line that does not
/// parse is an error naming it, so a format change is noticed instead of planned around.
pub fn parse_simulation(output: &str) -> Result<Vec<PackageChange>, String> {
    let mut changes = Vec::new();
    for line in output.lines() {
        let (verb, rest) = match line.split_once(' ') {
            Some((v @ ("Inst" | "Remv"), rest)) => (v, rest.trim()),
            _ => continue,
        };
        let bad = || format!("cannot read the apt line {line:?}");
        let (package, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        if package.is_empty() {
            return Err(bad());
        }
        let rest = rest.trim();
        let (from, rest) = match rest.strip_prefix('[') {
            Some(r) => {
                let (old, after) = r.split_once(']').ok_or_else(bad)?;
                (Some(old.to_string()), after.trim())
            }
            None => (None, rest),
        };
        let change = if verb == "Remv" {
            PackageChange {
                package: package.to_string(),
                from,
                to: None,
                security: false,
                origin: String::new(),
            }
        } else {
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.rsplit_once(')'))
                .map(|(inner, _)| inner)
                .ok_or_else(bad)?;
            let (version, origin) = inner.split_once(' ').ok_or_else(bad)?;
            // `Ubuntu:22.04/jammy-updates, Ubuntu:22.04/jammy-security [amd64]`.
            let origin = origin
                .rsplit_once(" [")
                .map_or(origin, |(o, _)| o)
                .to_string();
            PackageChange {
                package: package.to_string(),
                from,
                to: Some(version.to_string()),
                security: origin.split(", ").any(|o| o.ends_with("-security")),
                origin,
            }
        };
        changes.push(change);
    }
    changes.sort();
    changes.dedup();
    Ok(changes)
}

/// `name` matches `pattern` (`name` or `prefix*`).
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

fn any_match(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| matches(p, name))
}

/// The upstream part of a Debian version: without epoch and revision (`1:8.4.1-2` → `8.4.1`).
fn upstream(version: &str) -> &str {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    v.rsplit_once('-').map_or(v, |(u, _)| u)
}

/// The leading numeric components of a version (`12ubuntu4.6` → `[12]`, `8.4.1` → `[8, 4, 1]`).
fn numbers(version: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for part in version.split('.') {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        match digits.parse() {
            Ok(n) => out.push(n),
            Err(_) => break,
        }
        if digits.len() != part.len() {
            break;
        }
    }
    out
}

/// The kernel series (`major.minor`) a kernel release or kernel package names: `5.15.0-118-generic`,
/// `linux-image-6.5.0-41-generic`, `proxmox-kernel-6.11`, `proxmox-kernel-6.8.12-9-pve-signed`.
pub fn kernel_series(text: &str) -> Option<(u64, u64)> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let n = numbers(&text[start..]);
    match n.as_slice() {
        [a, b, ..] => Some((*a, *b)),
        _ => None,
    }
}

/// Whether the kernel release is a HWE flavour.
fn is_hwe(text: &str) -> bool {
    text.contains("hwe")
}

/// What the classifier knows about a target beyond its changes.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The running kernel (`uname -r`).
    pub kernel: Option<&'a str>,
    /// Whether this is the Proxmox VE host.
    pub host: bool,
    /// Whether a host reboot needs an approval (`host_reboot = "approve"`).
    pub host_reboot_needs_approval: bool,
}

/// Why `change` is major, if it is.
pub fn major_reason(rules: &MajorRules, change: &PackageChange, cx: Context<'_>) -> Option<String> {
    let name = change.package.as_str();
    let Some(to) = change.to.as_deref() else {
        return Some("the upgrade removes the package".into());
    };
    if let Some(from) = change.from.as_deref() {
        let (old, new) = (numbers(upstream(from)), numbers(upstream(to)));
        if any_match(&rules.release_packages, name) && old.first() != new.first() {
            return Some(format!("release change ({from} -> {to})"));
        }
        if any_match(&rules.pve_major_packages, name) && old.first() != new.first() {
            return Some(format!("Proxmox VE major ({from} -> {to})"));
        }
        if any_match(&rules.upstream_minor_packages, name) && old.get(..2) != new.get(..2) {
            return Some(format!("upstream minor bump ({from} -> {to})"));
        }
    }
    if any_match(&rules.kernel_packages, name) {
        let running = cx.kernel.and_then(kernel_series);
        // The series a kernel package brings is in its name when the name carries one
        // (`linux-image-6.5.0-41-generic`, `proxmox-kernel-6.11`), else in its version
        // (`linux-image-generic 5.15.0.119.119`).
        // A HWE metapackage's name carries the release (`-hwe-22.04`), not a kernel.
        let series = if is_hwe(name) {
            kernel_series(to)
        } else {
            kernel_series(name).or_else(|| kernel_series(to))
        };
        if let (Some(running), Some(series)) = (running, series)
            && running != series
        {
            return Some(format!(
                "new kernel series ({}.{} -> {}.{})",
                running.0, running.1, series.0, series.1
            ));
        }
        if is_hwe(name) && !cx.kernel.is_some_and(is_hwe) {
            return Some("new kernel flavour (GA -> HWE)".into());
        }
    }
    None
}

/// Whether the change brings a kernel (a reboot is needed to run it).
pub fn is_kernel(rules: &MajorRules, change: &PackageChange) -> bool {
    change.to.is_some() && any_match(&rules.kernel_packages, &change.package)
}

/// Fills in `plan.reboot` and `plan.majors` from its changes, its kind and its running kernel; a
/// host's reboot is major when `host_reboot_needs_approval`.
pub fn classify(rules: &MajorRules, plan: &mut TargetPlan, host_reboot_needs_approval: bool) {
    let kernel = plan.kernel.clone();
    let cx = Context {
        kernel: kernel.as_deref(),
        host: plan.kind == proxflow_schemas::patch::TargetKind::Host,
        host_reboot_needs_approval,
    };
    // A host reboots for a new kernel only; a VM also for what Ubuntu asks a reboot for.
    plan.reboot = plan.changes.iter().any(|c| {
        is_kernel(rules, c)
            || (!cx.host && c.to.is_some() && any_match(&rules.reboot_packages, &c.package))
    });
    plan.majors = plan
        .changes
        .iter()
        .filter_map(|c| {
            major_reason(rules, c, cx).map(|reason| MajorChange {
                package: Some(c.package.clone()),
                reason,
            })
        })
        .collect();
    if cx.host && plan.reboot && cx.host_reboot_needs_approval {
        plan.majors.push(MajorChange {
            package: None,
            reason: "host reboot: every VM on this single node goes down".into(),
        });
    }
}

/// `dpkg-query -W` output (`NAME\tVERSION` lines) as a map.
pub fn parse_installed(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .filter(|(n, _)| !n.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use proxflow_schemas::patch::TargetKind;

    use super::*;

    const SIMULATION: &str = "NOTE: This is only a simulation!
Reading package lists...
The following packages will be upgraded:
  libssl3 openssl
Inst libssl3 [3.0.2-0ubuntu1.15] (3.0.2-0ubuntu1.16 Ubuntu:22.04/jammy-updates, Ubuntu:22.04/jammy-security [amd64])
Inst openssl [3.0.2-0ubuntu1.15] (3.0.2-0ubuntu1.16 Ubuntu:22.04/jammy-security [amd64])
Inst linux-image-6.5.0-41-generic (6.5.0-41.41~22.04.1 Ubuntu:22.04/jammy-security [amd64])
Inst vim [2:8.2.3995-1ubuntu2.15] (2:8.2.3995-1ubuntu2.16 Ubuntu:22.04/jammy-updates [amd64])
Remv foo [1.2]
Conf libssl3 (3.0.2-0ubuntu1.16 Ubuntu:22.04/jammy-security [amd64])
";

    #[test]
    fn the_simulation_is_read_into_changes() {
        let changes = parse_simulation(SIMULATION).expect("parses");
        let names: Vec<&str> = changes.iter().map(|c| c.package.as_str()).collect();
        assert_eq!(
            names,
            [
                "foo",
                "libssl3",
                "linux-image-6.5.0-41-generic",
                "openssl",
                "vim"
            ]
        );
        let by = |n: &str| changes.iter().find(|c| c.package == n).expect(n);
        assert!(by("libssl3").security && by("openssl").security);
        assert!(!by("vim").security);
        assert_eq!(by("foo").to, None);
        assert_eq!(by("linux-image-6.5.0-41-generic").from, None);
        assert_eq!(by("vim").from.as_deref(), Some("2:8.2.3995-1ubuntu2.15"));
        assert!(parse_simulation("Inst broken").is_err());
    }

    fn plan(changes: Vec<PackageChange>) -> TargetPlan {
        TargetPlan {
            target: "vm/101".into(),
            kind: TargetKind::Agent,
            name: "k3s-1".into(),
            vmid: Some(101),
            kernel: None,
            address: None,
            changes,
            skipped: Vec::new(),
            reboot: false,
            majors: Vec::new(),
            changelogs: Default::default(),
        }
    }

    fn change(p: &str, from: Option<&str>, to: Option<&str>) -> PackageChange {
        PackageChange {
            package: p.into(),
            from: from.map(Into::into),
            to: to.map(Into::into),
            security: true,
            origin: String::new(),
        }
    }

    #[test]
    fn the_default_rules_hold_what_the_issue_names() {
        let rules = MajorRules::default();
        let vm = Context {
            kernel: Some("5.15.0-118-generic"),
            host: false,
            host_reboot_needs_approval: true,
        };
        let host = Context {
            kernel: Some("6.8.12-9-pve"),
            host: true,
            host_reboot_needs_approval: true,
        };
        let major = |c: PackageChange, cx| major_reason(&rules, &c, cx);
        // Minor: a security fix, the same kernel series, a pve-manager bugfix release.
        assert_eq!(
            major(
                change(
                    "openssl",
                    Some("3.0.2-0ubuntu1.15"),
                    Some("3.0.2-0ubuntu1.16")
                ),
                vm
            ),
            None
        );
        assert_eq!(
            major(
                change(
                    "linux-image-5.15.0-119-generic",
                    None,
                    Some("5.15.0-119.129")
                ),
                vm
            ),
            None
        );
        assert_eq!(
            major(
                change(
                    "linux-image-generic",
                    Some("5.15.0.118.118"),
                    Some("5.15.0.119.119")
                ),
                vm
            ),
            None
        );
        assert_eq!(
            major(change("pve-manager", Some("8.4.1"), Some("8.4.2")), host),
            None
        );
        // Major.
        for (c, cx, word) in [
            (
                change("base-files", Some("12ubuntu4.6"), Some("13ubuntu10")),
                vm,
                "release",
            ),
            (
                change("pve-manager", Some("8.4.1"), Some("9.0.3")),
                host,
                "Proxmox VE major",
            ),
            (
                change("qemu-server", Some("8.3.12"), Some("8.4.1")),
                host,
                "upstream minor",
            ),
            (
                change("libpve-common-perl", Some("8.2.9"), Some("8.3.1")),
                host,
                "upstream minor",
            ),
            (
                change("linux-image-6.5.0-41-generic", None, Some("6.5.0-41.41")),
                vm,
                "kernel series",
            ),
            (
                change("linux-generic-hwe-22.04", None, Some("5.15.0.119.119")),
                vm,
                "HWE",
            ),
            (
                change("proxmox-kernel-6.11", None, Some("6.11.0-2")),
                host,
                "kernel series",
            ),
            (change("foo", Some("1.2"), None), vm, "removes"),
        ] {
            let why = major(c.clone(), cx).unwrap_or_else(|| panic!("{c:?} is major"));
            assert!(why.contains(word), "{why}");
        }
    }

    #[test]
    fn a_host_reboot_is_major_unless_automatic() {
        let rules = MajorRules::default();
        let mut p = plan(vec![change(
            "proxmox-kernel-6.8.12-10-pve-signed",
            None,
            Some("6.8.12-10"),
        )]);
        p.kind = TargetKind::Host;
        p.kernel = Some("6.8.12-9-pve".into());
        classify(&rules, &mut p, true);
        assert!(p.reboot);
        assert_eq!(p.majors.len(), 1);
        assert!(p.majors[0].reason.contains("host reboot"));
        classify(&rules, &mut p, false);
        assert!(p.reboot && p.majors.is_empty());
        // A VM's reboot is never major by itself.
        p.kind = TargetKind::Agent;
        classify(&rules, &mut p, true);
        assert!(p.reboot && p.majors.is_empty());
        // libc6 makes a VM ask for a reboot; the host reboots for kernels only.
        let mut libc = plan(vec![change(
            "libc6",
            Some("2.35-0ubuntu3.8"),
            Some("2.35-0ubuntu3.9"),
        )]);
        classify(&rules, &mut libc, true);
        assert!(libc.reboot && libc.majors.is_empty());
        libc.kind = TargetKind::Host;
        classify(&rules, &mut libc, true);
        assert!(!libc.reboot && libc.majors.is_empty());
    }

    #[test]
    fn installed_packages_are_read() {
        let m = parse_installed("openssl\t3.0.2\nbase-files\t12ubuntu4.6\n\nbad-line\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m["openssl"], "3.0.2");
    }
}
