//! The summary `proxflow dev` prints once everything is up: one line per capability with its URL
//! or its state and how to use it, so that `just up` alone shows what runs and how to reach it.
//! Built from the settings the services actually got (dev's additions included).

use std::fmt::Write;
use std::time::Duration;

use humantime_serde::re::humantime::format_duration;
use proxflow_snapshotter::PolicyConfig;

use super::platform::ZfsStatus;
use super::secrets::Credentials;
use crate::compose::Listening;
use crate::settings::Settings;

/// What the summary says besides where things listen.
pub struct Summary<'a> {
    /// The settings the services run with.
    pub settings: &'a Settings,
    /// The nats-server, and whose it is.
    pub nats: String,
    /// The simulator's endpoint line, when it runs.
    pub simulator: Option<String>,
    /// The gateway's credentials.
    pub credentials: &'a Credentials,
    /// Dev's zfs dataset.
    pub zfs: &'a ZfsStatus,
}

/// One `  <label>  <text>` line.
fn line(out: &mut String, label: &str, text: impl std::fmt::Display) {
    let _ = writeln!(out, "  {label:<7}  {text}");
}

fn duration(d: Duration) -> String {
    format_duration(d).to_string()
}

impl Summary<'_> {
    /// The text, with the listeners in `listening`.
    pub fn render(&self, listening: &Listening) -> String {
        let mut out = String::from("proxflow dev is up\n");
        line(&mut out, "nats", &self.nats);
        if let Some(sim) = &self.simulator {
            out.push_str(sim);
        }
        if let Some(gateway) = listening.gateway {
            line(
                &mut out,
                "gateway",
                format_args!(
                    "http://{gateway}  (/v1/provision, /v1/alerts/alertmanager, /v1/workflows/{{id}}, \
                     /v1/remediations, /v1/patch/runs, /metrics)"
                ),
            );
            if let Some(token) = &self.credentials.token {
                line(
                    &mut out,
                    "console",
                    format_args!(
                        "http://{gateway}/ui  (log in with the dev token: {})",
                        token.expose()
                    ),
                );
            }
        }
        self.snapshots(&mut out);
        self.patching(&mut out);
        self.lifecycle(&mut out);
        self.capacity(&mut out);
        self.remediation(&mut out);
        line(
            &mut out,
            "ops",
            format_args!("http://{}/metrics", listening.ops),
        );
        if !self.credentials.kept.is_empty() {
            let vars: Vec<String> = self
                .credentials
                .kept
                .iter()
                .map(|(var, value)| format!("{var}={}", value.expose()))
                .collect();
            line(
                &mut out,
                "auth",
                format_args!(
                    "export {}  (for proxflow provision, patch, ...; kept in {})",
                    vars.join(" "),
                    self.credentials.file.display()
                ),
            );
        }
        out.push_str("Ctrl-C stops everything.\n");
        out
    }

    /// The snapshot policies, the replication jobs and dev's zfs dataset.
    fn snapshots(&self, out: &mut String) {
        let s = self.settings;
        if s.snapshot.policies.is_empty() {
            line(out, "snap", "no [[snapshot.policies]]");
        }
        for p in &s.snapshot.policies {
            let r = &p.retention;
            let keeps: Vec<String> = [
                (r.hourly, "hourly"),
                (r.daily, "daily"),
                (r.weekly, "weekly"),
                (r.monthly, "monthly"),
            ]
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
            line(
                out,
                "snap",
                format_args!(
                    "{}: {}, {} {} (keeps {})",
                    p.name,
                    targets(p),
                    p.schedule,
                    p.timezone,
                    keeps.join(", ")
                ),
            );
        }
        for j in &s.replication.jobs {
            line(
                out,
                "repl",
                format_args!(
                    "{}: {} -> {}, {} {}",
                    j.name, j.source, j.target, j.schedule, j.timezone
                ),
            );
        }
        match self.zfs {
            ZfsStatus::Ready { source, pools, .. } => line(
                out,
                "zfs",
                format_args!("dev dataset {source} on pools {}", pools.join(", ")),
            ),
            ZfsStatus::Unavailable(why) => line(
                out,
                "zfs",
                format_args!("not available — run `just tools zfs` ({why})"),
            ),
        }
    }

    fn patching(&self, out: &mut String) {
        let p = &self.settings.patch;
        let w = &p.window;
        let window = if *w == proxflow_patcher::window::WindowConfig::always_open() {
            "window always open".to_owned()
        } else {
            format!(
                "window {} {} for {} {}",
                w.days.join(","),
                w.start,
                duration(w.duration),
                w.timezone
            )
        };
        let starts = if p.enabled {
            "a run starts when it opens"
        } else {
            "runs start on request"
        };
        line(
            out,
            "patch",
            format_args!(
                "VMs tagged {}{}; {window}, {starts}: proxflow patch run (approvers: {})",
                p.vm_tag,
                if p.host.enabled { " and the host" } else { "" },
                if p.approvers.is_empty() {
                    "none".to_owned()
                } else {
                    p.approvers.join(", ")
                }
            ),
        );
    }

    /// The export, the drill and the health check.
    fn lifecycle(&self, out: &mut String) {
        let s = self.settings;
        let e = &s.export;
        let into = match (&e.dir, e.dataset()) {
            (Some(dir), _) => dir.display().to_string(),
            (None, Some(dataset)) => format!("dataset {dataset}"),
            (None, None) => String::new(),
        };
        if e.enabled() {
            line(
                out,
                "export",
                format_args!(
                    "{} {} into {into} (now: proxflow export run)",
                    e.schedule, e.timezone
                ),
            );
        } else {
            line(out, "export", "off (export.dataset)");
        }
        let drilled: Vec<String> = s.drill_targets().into_iter().map(|t| t.job).collect();
        if s.drill.enabled && !drilled.is_empty() {
            line(
                out,
                "drill",
                format_args!(
                    "{} {} of {}, reports in {} (now: proxflow drill run)",
                    s.drill.schedule,
                    s.drill.timezone,
                    drilled.join(", "),
                    s.drill.report_dir.display()
                ),
            );
        }
        let h = &s.health;
        if h.enabled {
            line(
                out,
                "health",
                format_args!(
                    "{} {}: disks and pools {} (now: proxflow health check)",
                    h.check_schedule,
                    h.timezone,
                    h.pools.join(", ")
                ),
            );
        } else {
            line(
                out,
                "health",
                "off: no pools to check (now: proxflow health check)",
            );
        }
    }

    fn capacity(&self, out: &mut String) {
        let c = &self.settings.capacity;
        let (memory, commitment) = (c.rule("host_memory"), c.rule("memory_commitment"));
        let clusters: Vec<String> = c
            .clusters
            .0
            .iter()
            .map(|(name, cluster)| {
                let scale = &cluster.scale_out;
                let mode = match (scale.enabled, scale.dry_run) {
                    (false, _) => "off",
                    (true, true) => "dry run",
                    (true, false) => "on",
                };
                format!(
                    "{name} (tag {}): scale-out {mode}, at most {} nodes",
                    cluster.tag, scale.max_nodes
                )
            })
            .collect();
        line(
            out,
            "scale",
            format_args!(
                "capacity polled every {}: above {} % (commitment {}) for {}; {}",
                duration(c.interval),
                memory.threshold,
                commitment.threshold,
                duration(memory.window),
                clusters.join("; ")
            ),
        );
    }

    fn remediation(&self, out: &mut String) {
        let r = &self.settings.remediation;
        let text = match (&r.rules_file, self.settings.remediation_rules()) {
            (Some(file), Ok(rules)) => format!(
                "remediation rules {} ({} rules) on POST /v1/alerts/alertmanager; \
                 decisions: proxflow remediations",
                file.display(),
                rules.len()
            ),
            _ => "remediation: no rules file (remediation.rules_file), alerts are audited and \
                  not acted on; decisions: proxflow remediations"
                .to_owned(),
        };
        line(out, "alerts", text);
    }
}

/// What a policy snapshots, in words.
fn targets(p: &PolicyConfig) -> String {
    let t = &p.targets;
    let mut parts = Vec::new();
    if !t.tags.is_empty() {
        parts.push(format!("VMs tagged {}", t.tags.join(", ")));
    }
    if !t.vms.is_empty() {
        let ids: Vec<String> = t.vms.iter().map(u32::to_string).collect();
        parts.push(format!("VMs {}", ids.join(", ")));
    }
    if !t.datasets.is_empty() {
        parts.push(t.datasets.join(", "));
    }
    parts.join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxflow_runtime::config::Secret;

    #[test]
    fn every_capability_has_a_line_and_the_console_its_exact_one() {
        let settings = Settings::default();
        let credentials = Credentials {
            token: Some(Secret::new("tok")),
            kept: vec![("PROXFLOW_GATEWAY__BEARER_TOKENS__DEV", Secret::new("tok"))],
            file: "state/dev-secrets.toml".into(),
        };
        let zfs = ZfsStatus::Unavailable("no pool tank".into());
        let summary = Summary {
            settings: &settings,
            nats: "nats://127.0.0.1:4222".into(),
            simulator: None,
            credentials: &credentials,
            zfs: &zfs,
        };
        let text = summary.render(&Listening {
            ops: "127.0.0.1:9464".parse().expect("addr"),
            gateway: Some("127.0.0.1:8080".parse().expect("addr")),
        });
        assert!(
            text.contains(
                "\n  console  http://127.0.0.1:8080/ui  (log in with the dev token: tok)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  zfs      not available — run `just tools zfs` (no pool tank)"),
            "{text}"
        );
        for label in [
            "nats", "gateway", "snap", "patch", "export", "health", "scale", "alerts", "ops",
            "auth",
        ] {
            assert!(
                text.contains(&format!("\n  {label:<7}  ")),
                "{label}: {text}"
            );
        }
    }
}
