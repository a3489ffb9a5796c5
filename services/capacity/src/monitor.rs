//! One poll: read Proxmox, compute the sample, export the gauges, publish the sample, feed every
//! detector and publish what fired.
//!
//! Detector state lives in the `pf_capacity` bucket, one key per metric, written by compare-and-set
//! after each change. A restarted monitor reads it back and continues its windows where they were;
//! a second replica's writes show up as revision conflicts, after which the state is re-read and
//! the observation re-applied (an observation not newer than the stored one is ignored). Events are
//! published before the state is stored, with ids derived from the firing (metric, run start,
//! sequence): a crash in between re-publishes the same id, which the stream and the orchestrator
//! both drop.

use std::collections::HashMap;

use async_nats::jetstream::kv;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use proxflow_pve::PveClient;
use proxflow_pve::types::ResourceType;
use proxflow_runtime::ServiceContext;
use proxflow_runtime::bus::Publisher;
use proxflow_runtime::clock::SharedClock;
use proxflow_schemas::capacity::{CapacityExceeded, CapacityRecovered, CapacitySample, MetricId};
use proxflow_schemas::names::bucket;

use crate::compute::{self, Inventory};
use crate::config::CapacityConfig;
use crate::detector::{DetectorState, Status, Transition};
use crate::gauges::Gauges;

/// Conflicting writers tolerated per detector and poll.
const CAS_ATTEMPTS: usize = 10;

/// Why a poll could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The detector bucket failed.
    #[error("capacity state {key}: {reason}")]
    Kv {
        /// Key.
        key: String,
        /// What failed.
        reason: String,
    },
    /// An event could not be published.
    #[error("publishing {what}: {reason}")]
    Publish {
        /// Which event.
        what: String,
        /// Why.
        reason: String,
    },
}

/// What one poll did.
#[derive(Debug, Default)]
pub struct PollReport {
    /// The sample, when Proxmox answered.
    pub sample: Option<CapacitySample>,
    /// Why Proxmox did not answer.
    pub failed: Option<String>,
    /// `capacity.exceeded` events published.
    pub exceeded: Vec<CapacityExceeded>,
    /// `capacity.recovered` events published.
    pub recovered: Vec<CapacityRecovered>,
}

struct Cached {
    kind: &'static str,
    state: DetectorState,
    revision: Option<u64>,
}

/// The capacity monitor of one Proxmox node.
pub struct Monitor {
    pve: PveClient,
    config: CapacityConfig,
    clock: SharedClock,
    publisher: Publisher,
    kv: kv::Store,
    gauges: Gauges,
    detectors: HashMap<MetricId, Cached>,
}

impl Monitor {
    /// A monitor publishing through `ctx` and keeping its detectors in the `pf_capacity` bucket.
    pub async fn new(
        ctx: &ServiceContext,
        config: CapacityConfig,
        pve: PveClient,
    ) -> Result<Self, MonitorError> {
        let kv = ctx
            .bus
            .js
            .get_key_value(bucket::CAPACITY)
            .await
            .map_err(|e| MonitorError::Kv {
                key: bucket::CAPACITY.into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            pve,
            config,
            clock: ctx.clock.clone(),
            publisher: ctx.bus.publisher.clone(),
            kv,
            gauges: Gauges::register(&ctx.metrics),
            detectors: HashMap::new(),
        })
    }

    /// Bytes the detectors hold in memory.
    pub fn detector_memory(&self) -> usize {
        self.detectors
            .values()
            .map(|c| c.state.memory_bytes())
            .sum()
    }

    /// Reads everything one poll needs, all requests at once.
    pub async fn fetch(&self) -> Result<Inventory, proxflow_pve::PveError> {
        let (status, guests, vms, storages, zfs_pools) = tokio::try_join!(
            self.pve.node_status(),
            self.pve.cluster_resources(Some(ResourceType::Vm)),
            self.pve.list_vms(),
            self.pve.storages(),
            self.pve.zfs_pools(),
        )?;
        Ok(Inventory {
            node: self.pve.node().to_string(),
            status,
            guests,
            vms,
            storages,
            zfs_pools,
        })
    }

    /// One poll at the clock's now. Its span is the root of the trace a firing starts: the
    /// events carry it, so the scale-out and the new node's provision join it.
    #[tracing::instrument(name = "capacity.poll", skip_all)]
    pub async fn poll(&mut self) -> Result<PollReport, MonitorError> {
        let at = self.clock.now();
        let mut report = PollReport::default();
        let inventory = match self.fetch().await {
            Ok(inv) => inv,
            Err(e) => {
                tracing::warn!(error = %e, "capacity poll failed; every running window is broken");
                self.gauges.poll("failed");
                report.failed = Some(e.to_string());
                let known: Vec<MetricId> = self.known().await?;
                for id in known {
                    self.apply(&id, None, at, None, &mut report).await?;
                }
                return Ok(report);
            }
        };
        self.gauges.poll("ok");
        let sample = compute::evaluate(&inventory, &self.config, at);
        self.gauges.set_sample(&sample);
        self.publisher
            .publish(&sample)
            .await
            .map_err(|e| MonitorError::Publish {
                what: "capacity.sample".into(),
                reason: e.to_string(),
            })?;
        let observed = compute::observations(&sample);
        report.sample = Some(sample.clone());
        let mut seen = Vec::with_capacity(observed.len());
        for (id, kind, value) in observed {
            self.apply(&id, Some(kind), at, Some(value), &mut report)
                .await?;
            seen.push(id);
        }
        // Metrics that vanished from this poll (a cluster with no running node, a storage gone)
        // were not observed: their runs are broken like any missed poll's.
        let vanished: Vec<MetricId> = self
            .known()
            .await?
            .into_iter()
            .filter(|id| !seen.contains(id))
            .collect();
        for id in vanished {
            self.apply(&id, None, at, Some(f64::NAN), &mut report)
                .await?;
        }
        for (id, cached) in &self.detectors {
            self.gauges
                .exceeded(id, cached.state.status == Status::Exceeded);
        }
        self.gauges.detector_memory(self.detector_memory());
        Ok(report)
    }

    /// Metric ids with a detector, cached or only stored (after a restart).
    async fn known(&mut self) -> Result<Vec<MetricId>, MonitorError> {
        let mut ids: Vec<MetricId> = self.detectors.keys().cloned().collect();
        if ids.is_empty() {
            let mut keys = self.kv.keys().await.map_err(|e| MonitorError::Kv {
                key: "detector/*".into(),
                reason: e.to_string(),
            })?;
            while let Some(key) = keys.next().await {
                let key = key.map_err(|e| MonitorError::Kv {
                    key: "detector/*".into(),
                    reason: e.to_string(),
                })?;
                if let Some((id, _, _)) = self.load_key(&key).await? {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    async fn load_key(
        &self,
        key: &str,
    ) -> Result<Option<(MetricId, DetectorState, u64)>, MonitorError> {
        let entry = self.kv.entry(key).await.map_err(|e| MonitorError::Kv {
            key: key.into(),
            reason: e.to_string(),
        })?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        match serde_json::from_slice::<Stored>(&entry.value) {
            Ok(stored) => Ok(Some((stored.metric, stored.state, entry.revision))),
            Err(e) => {
                // A record this version cannot read starts over rather than stopping all polls.
                tracing::error!(key, error = %e, "unreadable detector state, starting it afresh");
                Ok(None)
            }
        }
    }

    /// Feeds one observation (`None` = missed) to the detector of `id` and stores the result.
    async fn apply(
        &mut self,
        id: &MetricId,
        kind: Option<&'static str>,
        at: DateTime<Utc>,
        value: Option<f64>,
        report: &mut PollReport,
    ) -> Result<(), MonitorError> {
        let key = proxflow_schemas::names::key::capacity_detector(id);
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 || !self.detectors.contains_key(id) {
                let loaded = self.load_key(&key).await?;
                let kind = kind
                    .or_else(|| self.detectors.get(id).map(|c| c.kind))
                    .unwrap_or("host_cpu");
                let (state, revision) = loaded.map(|(_, s, r)| (s, Some(r))).unwrap_or_default();
                self.detectors.insert(
                    id.clone(),
                    Cached {
                        kind,
                        state,
                        revision,
                    },
                );
            }
            let Some(cached) = self.detectors.get_mut(id) else {
                return Ok(());
            };
            if let Some(kind) = kind {
                cached.kind = kind;
            }
            let mut state = cached.state.clone();
            let step = match value {
                Some(v) if v.is_finite() => {
                    state.observe(&self.config.rule(cached.kind), self.config.max_gap, at, v)
                }
                _ => state.missed(at),
            };
            if !step.changed {
                return Ok(());
            }
            let revision = cached.revision;
            // Before publishing, make sure the state it came from is the stored one: a second
            // replica may have moved it on (its event is then already out, under the same id).
            if step.transition.is_some() && attempt == 0 && revision.is_some() {
                let current = self.kv.entry(&key).await.map_err(|e| MonitorError::Kv {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
                if current.map(|e| e.revision) != revision {
                    continue;
                }
            }
            if let Some(transition) = step.transition {
                let rule = self.config.rule(cached.kind);
                match transition {
                    Transition::Exceeded {
                        since,
                        sequence,
                        evidence,
                    } => {
                        // Only a successful poll observes values, and it stores its sample first.
                        let Some(sample) = report.sample.clone() else {
                            return Ok(());
                        };
                        let event = CapacityExceeded {
                            metric: id.clone(),
                            value: value.unwrap_or_default(),
                            threshold: rule.threshold,
                            clear_below: rule.clear_below,
                            window_secs: rule.window.as_secs(),
                            since,
                            sequence,
                            evidence,
                            sample,
                        };
                        self.publish(&event, "capacity.exceeded").await?;
                        tracing::warn!(metric = %id, value = event.value, threshold = rule.threshold, "capacity exceeded (sustained)");
                        report.exceeded.push(event);
                    }
                    Transition::Recovered { episode_since } => {
                        let event = CapacityRecovered {
                            metric: id.clone(),
                            value: value.unwrap_or_default(),
                            clear_below: rule.clear_below,
                            exceeded_since: episode_since,
                            at,
                        };
                        self.publish(&event, "capacity.recovered").await?;
                        tracing::info!(metric = %id, value = event.value, "capacity recovered");
                        report.recovered.push(event);
                    }
                }
            }
            let stored = Stored {
                metric: id.clone(),
                state: state.clone(),
            };
            let bytes =
                serde_json::to_vec(&stored)
                    .map(Bytes::from)
                    .map_err(|e| MonitorError::Kv {
                        key: key.clone(),
                        reason: format!("encoding: {e}"),
                    })?;
            let written = match revision {
                Some(rev) => self.kv.update(&key, bytes, rev).await.map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
                None => self.kv.create(&key, bytes).await.map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                }),
            };
            match written {
                Ok(rev) => {
                    if let Some(cached) = self.detectors.get_mut(id) {
                        cached.state = state;
                        cached.revision = Some(rev);
                    }
                    return Ok(());
                }
                // Someone else (a second replica) wrote: read again and re-apply.
                Err((true, _)) => continue,
                Err((false, reason)) => return Err(MonitorError::Kv { key, reason }),
            }
        }
        Err(MonitorError::Kv {
            key,
            reason: format!("gave up after {CAS_ATTEMPTS} conflicting writes"),
        })
    }

    async fn publish<M: proxflow_schemas::Message>(
        &self,
        message: &M,
        what: &str,
    ) -> Result<(), MonitorError> {
        self.publisher
            .publish(message)
            .await
            .map(|_| ())
            .map_err(|e| MonitorError::Publish {
                what: what.into(),
                reason: e.to_string(),
            })
    }
}

/// What the bucket holds per metric.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    metric: MetricId,
    state: DetectorState,
}
