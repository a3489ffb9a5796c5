//! How many workflows there are by kind and state: `proxflow_workflows{kind, state}` — the live
//! ones now (pending, running, waiting, compensating), set by each engine's waker from the index
//! lines it watches anyway, so it costs no listing — and `proxflow_workflows_ended_total{kind,
//! state}`, counted by the engine that writes a workflow's end (succeeded, failed, cancelled).
//! Each process reports the kinds it runs; a dashboard sums them.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use proxflow_schemas::workflow::{IndexEntry, WorkflowState};

use super::index::state_name;
use crate::ops::Registrar;

/// The states a workflow is live in, as the waker watches them.
pub(crate) const LIVE: [WorkflowState; 4] = [
    WorkflowState::Waiting,
    WorkflowState::Running,
    WorkflowState::Pending,
    WorkflowState::Compensating,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindState {
    kind: String,
    state: &'static str,
}

/// The families, registered once per registry ([`crate::ops::Metrics`]).
#[derive(Clone, Debug)]
pub struct WorkflowMetrics {
    live: Family<KindState, Gauge>,
    ended: Family<KindState, Counter>,
}

impl WorkflowMetrics {
    pub(crate) fn register(registry: &Registrar) -> Self {
        let live = Family::<KindState, Gauge>::default();
        let ended = Family::<KindState, Counter>::default();
        registry.register(
            "workflows",
            "Live workflows (pending, running, waiting, compensating) by kind and state",
            live.clone(),
        );
        registry.register(
            "workflows_ended",
            "Workflows that ended (succeeded, failed, cancelled), by kind and state",
            ended.clone(),
        );
        Self { live, ended }
    }

    /// Sets the live gauges of `kinds` from their index `lines`: every live state of each kind,
    /// a state without workflows at 0.
    pub(crate) fn set_live<'a>(
        &self,
        kinds: &[&'static str],
        lines: impl Iterator<Item = &'a IndexEntry>,
    ) {
        let mut counts: HashMap<(&str, &str), i64> = HashMap::new();
        for line in lines {
            *counts
                .entry((line.kind.as_str(), state_name(line.state)))
                .or_default() += 1;
        }
        for kind in kinds {
            for state in LIVE {
                let n = counts
                    .get(&(*kind, state_name(state)))
                    .copied()
                    .unwrap_or(0);
                self.live
                    .get_or_create(&KindState {
                        kind: (*kind).to_owned(),
                        state: state_name(state),
                    })
                    .set(n);
            }
        }
    }

    /// Counts a workflow of `kind` that ended in `state`.
    pub(crate) fn ended(&self, kind: &str, state: WorkflowState) {
        self.ended
            .get_or_create(&KindState {
                kind: kind.to_owned(),
                state: state_name(state),
            })
            .inc();
    }
}
