//! The rules file (`remediation.rules_file`, TOML): which alerts lead to which action, under which
//! guardrails. Loaded and validated at start; every error names the rule and the field.
//!
//! ```toml
//! [[rule]]
//! name = "vm-down-restart"
//! alertname = "VMDown"
//! labels = { severity = "critical" }
//! labels_regex = { vmid = "^1[0-9]{2}$" }
//! target = "vm/{labels.vmid}"
//! action = { kind = "restart_vm", vmid = "{labels.vmid}", shutdown_timeout = "2m" }
//! cooldown = "30m"
//! threshold = { count = 2, within = "10m" }
//! max_targets = { count = 3, per = "1h" }
//! dry_run = false
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use proxflow_schemas::alert::{AlertReceived, AlertStatus};
use regex::Regex;
use serde::{Deserialize, Serialize};

use super::template;

/// A rules-file problem: where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct RulesError {
    /// `rule[2] "vm-down-restart".labels_regex.vmid`, or the file.
    pub at: String,
    /// What is wrong.
    pub message: String,
}

/// What a matched alert makes proxflow do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Clean shutdown within `shutdown_timeout`, else stop; then start.
    RestartVm {
        /// VMID template.
        vmid: String,
        /// How long the guest gets to shut down.
        #[serde(with = "humantime_serde", default = "default_shutdown")]
        shutdown_timeout: Duration,
    },
    /// A pre-change snapshot of the VM (kept for `ttl`).
    SnapshotVm {
        /// VMID template.
        vmid: String,
        /// How long the snapshot is kept.
        #[serde(with = "humantime_serde", default = "default_ttl")]
        ttl: Duration,
    },
    /// One more node for the k3s cluster, through the capacity scale-out and its guards.
    ScaleOut {
        /// Cluster name (`[capacity.clusters.<name>]`).
        cluster: String,
    },
    /// Run a replication job now.
    Replicate {
        /// Job name template.
        job: String,
    },
    /// Apply the snapshot policies' retention on a ZFS pool now (a filling pool): prunes only what
    /// the grids already let go.
    PruneSnapshots {
        /// Pool name template.
        pool: String,
    },
    /// Post the alert and the decision to a webhook (a pager, a chat).
    Notify {
        /// Where.
        url: String,
    },
    /// Run a configured command (templated arguments).
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// How long it may run.
        #[serde(with = "humantime_serde", default = "default_command_timeout")]
        timeout: Duration,
    },
}

fn default_shutdown() -> Duration {
    Duration::from_secs(120)
}

fn default_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(300)
}

impl Action {
    /// The action's name as audited (`restart_vm`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::RestartVm { .. } => "restart_vm",
            Self::SnapshotVm { .. } => "snapshot_vm",
            Self::ScaleOut { .. } => "scale_out",
            Self::Replicate { .. } => "replicate",
            Self::PruneSnapshots { .. } => "prune_snapshots",
            Self::Notify { .. } => "notify",
            Self::Command { .. } => "command",
        }
    }

    /// Every templated parameter, with its field name.
    fn templates(&self) -> Vec<(String, &str)> {
        match self {
            Self::RestartVm { vmid, .. } | Self::SnapshotVm { vmid, .. } => {
                vec![("vmid".into(), vmid.as_str())]
            }
            Self::ScaleOut { cluster } => vec![("cluster".into(), cluster.as_str())],
            Self::Replicate { job } => vec![("job".into(), job.as_str())],
            Self::PruneSnapshots { pool } => vec![("pool".into(), pool.as_str())],
            Self::Notify { url } => vec![("url".into(), url.as_str())],
            Self::Command { argv, .. } => argv
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("argv[{i}]"), a.as_str()))
                .collect(),
        }
    }
}

/// N alerts for one target within a window before acting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// How many.
    pub count: u32,
    /// Within how long.
    #[serde(with = "humantime_serde")]
    pub within: Duration,
}

/// At most `count` distinct targets acted on per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxTargets {
    /// How many.
    pub count: u32,
    /// Per how long.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

/// One rule as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name (audited).
    pub name: String,
    /// `alertname` to match (any when absent).
    #[serde(default)]
    pub alertname: Option<String>,
    /// Labels that must be equal.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Labels that must match a regex (anchored as written).
    #[serde(default)]
    pub labels_regex: BTreeMap<String, String>,
    /// `severity` label values accepted (any when empty).
    #[serde(default)]
    pub severity: Vec<String>,
    /// Statuses that act: firing only unless the rule says otherwise.
    #[serde(default = "firing_only")]
    pub status: Vec<AlertStatus>,
    /// What the guards count and lock by (template), e.g. `vm/{labels.vmid}`.
    pub target: String,
    /// What to do.
    pub action: Action,
    /// No second action on the same target within this.
    #[serde(with = "humantime_serde", default = "default_cooldown")]
    pub cooldown: Duration,
    /// Act only from the N-th alert within T.
    #[serde(default)]
    pub threshold: Option<Threshold>,
    /// At most N distinct targets per window.
    #[serde(default)]
    pub max_targets: Option<MaxTargets>,
    /// Record what would be done and do nothing. On unless the rule says `false`.
    #[serde(default = "dry_run_default")]
    pub dry_run: bool,
}

fn firing_only() -> Vec<AlertStatus> {
    vec![AlertStatus::Firing]
}

fn default_cooldown() -> Duration {
    Duration::from_secs(30 * 60)
}

fn dry_run_default() -> bool {
    true
}

/// A validated rule with its regexes compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    /// As written.
    pub spec: RuleSpec,
    regexes: Vec<(String, Regex)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

/// All rules, in file order (an alert is decided by every rule it matches).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// Loads and validates a rules file.
    pub fn load(path: &Path) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RulesError {
            at: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text).map_err(|mut e| {
            e.at = format!("{}: {}", path.display(), e.at);
            e
        })
    }

    /// Parses and validates rules-file text.
    pub fn parse(text: &str) -> Result<Self, RulesError> {
        let file: RulesFile = toml::from_str(text).map_err(|e| RulesError {
            at: "file".into(),
            message: e.message().to_string(),
        })?;
        let mut names = std::collections::BTreeSet::new();
        let rules = file
            .rule
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let at = |field: &str| format!("rule[{i}] {:?}{field}", spec.name);
                let fail = |field: &str, message: String| RulesError {
                    at: at(field),
                    message,
                };
                if spec.name.is_empty() || !names.insert(spec.name.clone()) {
                    return Err(fail(".name", "must be present and unique".into()));
                }
                if spec.status.is_empty() {
                    return Err(fail(".status", "must list firing and/or resolved".into()));
                }
                template::check(&spec.target).map_err(|e| fail(".target", e.to_string()))?;
                if spec.target.trim().is_empty() {
                    return Err(fail(".target", "must not be empty".into()));
                }
                for (field, text) in spec.action.templates() {
                    template::check(text)
                        .map_err(|e| fail(&format!(".action.{field}"), e.to_string()))?;
                }
                if let Action::Command { argv, .. } = &spec.action
                    && argv.is_empty()
                {
                    return Err(fail(".action.argv", "must name a program".into()));
                }
                if spec
                    .threshold
                    .is_some_and(|t| t.count == 0 || t.within.is_zero())
                {
                    return Err(fail(
                        ".threshold",
                        "count and within must be above zero".into(),
                    ));
                }
                if spec
                    .max_targets
                    .is_some_and(|m| m.count == 0 || m.per.is_zero())
                {
                    return Err(fail(
                        ".max_targets",
                        "count and per must be above zero".into(),
                    ));
                }
                let regexes = spec
                    .labels_regex
                    .iter()
                    .map(|(label, pattern)| {
                        Regex::new(pattern)
                            .map(|r| (label.clone(), r))
                            .map_err(|e| fail(&format!(".labels_regex.{label}"), e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Rule { spec, regexes })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules })
    }

    /// The rules `alert` matches on labels and severity (its status is the engine's first guard, so
    /// a resolved alert is audited as ignored rather than unmatched).
    pub fn matching<'a>(&'a self, alert: &'a AlertReceived) -> impl Iterator<Item = &'a Rule> {
        self.rules.iter().filter(move |r| r.matches(alert))
    }

    /// How many rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// No rules at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl Rule {
    fn matches(&self, alert: &AlertReceived) -> bool {
        let s = &self.spec;
        s.alertname.as_deref().is_none_or(|n| n == alert.name())
            && s.labels.iter().all(|(k, v)| alert.labels.get(k) == Some(v))
            && self
                .regexes
                .iter()
                .all(|(k, r)| alert.labels.get(k).is_some_and(|v| r.is_match(v)))
            && (s.severity.is_empty()
                || alert
                    .labels
                    .get("severity")
                    .is_some_and(|sev| s.severity.contains(sev)))
    }

    /// Whether the rule acts on an alert of this status.
    pub fn acts_on(&self, status: AlertStatus) -> bool {
        self.spec.status.contains(&status)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::remediation::template::tests::alert;

    const GOOD: &str = r#"
[[rule]]
name = "vm-down-restart"
alertname = "VMDown"
labels = { severity = "critical" }
labels_regex = { vmid = "^1[0-9]{2}$" }
target = "vm/{labels.vmid}"
action = { kind = "restart_vm", vmid = "{labels.vmid}", shutdown_timeout = "1m" }
cooldown = "30m"
threshold = { count = 2, within = "10m" }

[[rule]]
name = "page"
severity = ["critical", "warning"]
status = ["firing", "resolved"]
target = "{alertname}"
action = { kind = "notify", url = "http://pager.local/hook" }
"#;

    #[test]
    fn rules_match_on_name_labels_regex_and_severity() {
        let rules = Rules::parse(GOOD).unwrap();
        assert_eq!(rules.len(), 2);
        let names = |labels: &[(&str, &str)]| -> Vec<String> {
            let a = alert(labels);
            rules.matching(&a).map(|r| r.spec.name.clone()).collect()
        };
        assert_eq!(
            names(&[
                ("alertname", "VMDown"),
                ("severity", "critical"),
                ("vmid", "104")
            ]),
            ["vm-down-restart", "page"]
        );
        // The regex excludes VM 9000 (the template), the severity the info alert.
        assert_eq!(
            names(&[
                ("alertname", "VMDown"),
                ("severity", "critical"),
                ("vmid", "9000")
            ]),
            ["page"]
        );
        assert!(
            names(&[
                ("alertname", "VMDown"),
                ("severity", "info"),
                ("vmid", "104")
            ])
            .is_empty()
        );
        let r = Rules::parse(GOOD).unwrap();
        let restart = r.rules.first().unwrap();
        assert!(restart.acts_on(AlertStatus::Firing));
        assert!(!restart.acts_on(AlertStatus::Resolved));
        assert!(
            restart.spec.dry_run,
            "dry-run unless the rule says otherwise"
        );
    }

    #[test]
    fn bad_rules_name_the_rule_and_the_field() {
        let cases = [
            (
                GOOD.replace("^1[0-9]{2}$", "^1[0-9"),
                "rule[0] \"vm-down-restart\".labels_regex.vmid",
            ),
            (
                GOOD.replace("vm/{labels.vmid}", "vm/{label.vmid}"),
                "rule[0] \"vm-down-restart\".target",
            ),
            (
                GOOD.replace("vmid = \"{labels.vmid}\"", "vmid = \"{labels.vmid\""),
                "rule[0] \"vm-down-restart\".action.vmid",
            ),
            (
                GOOD.replace("name = \"page\"", "name = \"vm-down-restart\""),
                "rule[1] \"vm-down-restart\".name",
            ),
            (
                GOOD.replace("count = 2", "count = 0"),
                "rule[0] \"vm-down-restart\".threshold",
            ),
            (
                GOOD.replace("kind = \"notify\"", "kind = \"reboot_host\""),
                "file",
            ),
        ];
        for (text, at) in cases {
            let e = Rules::parse(&text).unwrap_err();
            assert_eq!(e.at, at, "{e}");
        }
    }
}
