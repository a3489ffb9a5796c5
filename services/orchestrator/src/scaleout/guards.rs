//! The scale-out guards, evaluated in the `decide` step: cap, cooldown, host headroom, dry-run.

use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use proxflow_platform::{ClusterConfig, Profile};
use proxflow_runtime::workflow::StepError;
use proxflow_schemas::capacity::{CapacityExceeded, HostExhausted};
use proxflow_schemas::names::key;
use serde::{Deserialize, Serialize};

const GIB: f64 = (1u64 << 30) as f64;

/// The last scale-out of a cluster, kept in `pf_cooldowns` under `scaleout.<cluster>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LastScaleOut {
    pub(crate) workflow_id: String,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) node: String,
}

/// What the guards decided (the `decide` step's output).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Verdict {
    /// Provision `node`.
    Go {
        /// The new node's name.
        node: String,
    },
    /// Do nothing; `reason` names the guard and its numbers.
    Refuse {
        /// Why.
        reason: String,
        /// Only the dry-run held it back: this is what would have been done.
        dry_run: bool,
        /// The host-headroom veto, published as `capacity.host_exhausted`.
        veto: Option<Box<HostExhausted>>,
    },
}

impl Verdict {
    fn refuse(reason: String) -> Self {
        Verdict::Refuse {
            reason,
            dry_run: false,
            veto: None,
        }
    }
}

/// Reads and writes the clusters' last scale-outs.
#[derive(Clone)]
pub(crate) struct Cooldowns(pub(crate) kv::Store);

impl Cooldowns {
    pub(crate) async fn last(&self, cluster: &str) -> Result<Option<LastScaleOut>, StepError> {
        match self.0.get(key::scale_out(cluster)).await {
            Ok(Some(bytes)) => Ok(serde_json::from_slice(&bytes).ok()),
            Ok(None) => Ok(None),
            Err(e) => {
                Err(StepError::transient(format!("reading the cooldown: {e}")).with_source(e))
            }
        }
    }

    pub(crate) async fn record(&self, cluster: &str, last: &LastScaleOut) -> Result<(), StepError> {
        let bytes = serde_json::to_vec(last).map_err(|e| {
            StepError::terminal(format!("encoding the cooldown: {e}")).with_source(e)
        })?;
        self.0
            .put(key::scale_out(cluster), bytes.into())
            .await
            .map(drop)
            .map_err(|e| {
                StepError::transient(format!("recording the cooldown: {e}")).with_source(e)
            })
    }
}

/// Cap, cooldown, headroom and dry-run for scale-out `id` of `event`'s cluster.
pub(crate) fn decide(
    id: &str,
    event: &CapacityExceeded,
    cluster: &ClusterConfig,
    profile: &Profile,
    last: Option<&LastScaleOut>,
    now: DateTime<Utc>,
) -> Verdict {
    let so = &cluster.scale_out;
    let name = &event.metric.name;
    let dry = |s: String| {
        if so.dry_run {
            format!("dry-run: {s}")
        } else {
            s
        }
    };
    let Some(members) = event.sample.cluster(name) else {
        return Verdict::refuse(format!("the event carries no sample of cluster {name}"));
    };
    let node = next_name(&so.name_prefix, &members.nodes, last);
    let nodes = members.nodes.len() as u32;
    if nodes >= so.max_nodes {
        return Verdict::refuse(dry(format!(
            "cap reached: cluster {name} has {nodes} nodes, max_nodes {}",
            so.max_nodes
        )));
    }
    if let Some(l) = last {
        let cooldown = chrono::Duration::from_std(so.cooldown).unwrap_or_default();
        if now < l.started_at + cooldown {
            return Verdict::refuse(dry(format!(
                "cooldown: the last scale-out of {name} ({}, node {}) started at {}; the next is allowed from {}",
                l.workflow_id,
                l.node,
                l.started_at.to_rfc3339(),
                (l.started_at + cooldown).to_rfc3339()
            )));
        }
    }
    if let Some(veto) = headroom(id, name, event, cluster, profile, now) {
        if so.dry_run {
            return Verdict::Refuse {
                reason: dry(format!("would veto: {}", veto.reason)),
                dry_run: true,
                veto: None,
            };
        }
        return Verdict::Refuse {
            reason: format!("vetoed: {}", veto.reason),
            dry_run: false,
            veto: Some(Box::new(veto)),
        };
    }
    if so.dry_run {
        let h = &event.sample.host;
        return Verdict::Refuse {
            reason: format!(
                "dry-run: would provision {node} (profile {}) for cluster {name}: {} nodes, memory commitment {:.2}:1 of budget {:.2}:1",
                so.profile,
                members.nodes.len(),
                h.memory_commitment_ratio,
                so.memory_commitment_budget
            ),
            dry_run: true,
            veto: None,
        };
    }
    Verdict::Go { node }
}

/// One scale-out at a time per cluster, whatever started it.
pub(crate) fn one_at_a_time() -> proxflow_runtime::admission::Caps {
    proxflow_runtime::admission::Caps {
        max_running: 1,
        max_per_window: u32::MAX,
        window: Duration::from_secs(3600),
    }
}

/// `<prefix><n>`, n one above the highest number among the cluster's nodes and the last node a
/// scale-out asked for (which may not be in the sample yet).
fn next_name(prefix: &str, nodes: &[String], last: Option<&LastScaleOut>) -> String {
    let highest = nodes
        .iter()
        .map(String::as_str)
        .chain(last.map(|l| l.node.as_str()))
        .filter_map(|n| n.strip_prefix(prefix)?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    format!("{prefix}{}", highest + 1)
}

/// The headroom veto, if one more node of `profile` would break the host's budget.
fn headroom(
    id: &str,
    cluster_name: &str,
    event: &CapacityExceeded,
    cluster: &ClusterConfig,
    profile: &Profile,
    now: DateTime<Utc>,
) -> Option<HostExhausted> {
    let so = &cluster.scale_out;
    let h = &event.sample.host;
    let total = h.memory_total as f64;
    let added = f64::from(profile.memory_mib) * (1u64 << 20) as f64;
    let after = if total > 0.0 {
        (h.memory_committed as f64 + added) / total
    } else {
        f64::INFINITY
    };
    let storage = h.storages.iter().find(|s| s.name == so.storage);
    let storage_after = storage.map(|s| {
        let disk = f64::from(profile.disk_gib) * GIB;
        if s.total > 0 {
            (s.used as f64 + disk) / s.total as f64 * 100.0
        } else {
            100.0
        }
    });
    let mut reasons = Vec::new();
    if after > so.memory_commitment_budget {
        reasons.push(format!(
            "memory commitment would be {after:.2}:1 ({:.1} GiB committed + {:.1} GiB of the new node, on {:.1} GiB), budget {:.2}:1",
            h.memory_committed as f64 / GIB,
            added / GIB,
            total / GIB,
            so.memory_commitment_budget
        ));
    }
    if let Some(pct) = storage_after.filter(|p| *p > so.storage_limit_percent) {
        reasons.push(format!(
            "storage {} would be {pct:.1} % full with the new node's {} GiB disk, limit {:.1} %",
            so.storage, profile.disk_gib, so.storage_limit_percent
        ));
    }
    if reasons.is_empty() {
        return None;
    }
    Some(HostExhausted {
        workflow_id: id.to_string(),
        cluster: cluster_name.to_string(),
        node: h.node.clone(),
        reason: reasons.join("; "),
        memory_commitment_ratio: h.memory_commitment_ratio,
        memory_commitment_after: after,
        memory_commitment_budget: so.memory_commitment_budget,
        storage_percent_after: storage_after,
        storage_limit_percent: so.storage_limit_percent,
        at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_name_is_one_above_the_highest_known() {
        let nodes = ["k3s-1", "k3s-3", "other", "k3s-x"].map(String::from);
        assert_eq!(next_name("k3s-", &nodes, None), "k3s-4");
        let last = LastScaleOut {
            workflow_id: "w".into(),
            started_at: Utc::now(),
            node: "k3s-7".into(),
        };
        assert_eq!(next_name("k3s-", &nodes, Some(&last)), "k3s-8");
        assert_eq!(next_name("k3s-", &[], None), "k3s-1");
    }
}
