//! The `scale_out` workflow: `decide` (the guards) → `claim` (the cluster's one-at-a-time slot and
//! its cooldown) → `provision` (the new node's `provision` workflow started). It ends `succeeded`
//! once the provision is started; the cluster's slot stays held by that provision until it ends,
//! and a remediation that asked hears the node's outcome then (see `Release`). A refusal ends it
//! `cancelled` with the guard's reason, which the asking remediation hears at once.

use proxflow_platform::{Clusters, Profiles};
use proxflow_runtime::admission::{Admissions, Decision};
use proxflow_runtime::bus::Publisher;
use proxflow_runtime::clock::SharedClock;
use proxflow_runtime::workflow::{Ending, Halt, Run, StepError, Workflow};
use proxflow_schemas::names::key;
use proxflow_schemas::provision::{IpConfig, ProvisionRequested, VmOverrides};
use proxflow_schemas::remediation::HandOffResult;
use serde::{Deserialize, Serialize};

use super::guards::{self, Cooldowns, LastScaleOut, Verdict};
use super::{ScaleOutInput, answer, provision_of};
use crate::admit::ProvisionStart;

/// The definition, with what its steps act on.
pub(crate) struct ScaleOutFlow {
    pub(crate) admissions: Admissions,
    pub(crate) cooldowns: Cooldowns,
    pub(crate) provisions: ProvisionStart,
    pub(crate) publisher: Publisher,
    pub(crate) profiles: Profiles,
    pub(crate) clusters: Clusters,
    pub(crate) clock: SharedClock,
}

/// What a scale-out ends with (also shown in the record's data).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Dispatched {
    node: String,
    provision_workflow: String,
}

/// How a scale-out is undone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Undo {
    /// Frees the cluster's slot the provision would have held.
    FreeSlot {
        /// `scaleout.<cluster>`.
        ledger: String,
        /// The provision id it was claimed for.
        provision: String,
    },
}

impl Workflow for ScaleOutFlow {
    const KIND: &'static str = "scale_out";
    type Input = ScaleOutInput;
    type Output = Dispatched;
    type Undo = Undo;

    async fn run(&self, wf: &mut Run<Self>, input: ScaleOutInput) -> Result<Dispatched, Halt> {
        let id = wf.id().to_string();
        let event = input.event;
        let name = event.metric.name.clone();
        let cluster = self.clusters.get(&name).ok_or_else(|| {
            StepError::refused(format!("no cluster {name:?} in [capacity.clusters]"))
        })?;
        let so = &cluster.scale_out;
        let profile = self.profiles.get(&so.profile).ok_or_else(|| {
            StepError::refused(format!(
                "scale-out profile '{}' is not configured (known: {})",
                so.profile,
                self.profiles.names().join(", ")
            ))
        })?;
        let now = wf.now();
        let verdict: Verdict = wf
            .step("decide", async {
                let last = self.cooldowns.last(&name).await?;
                let verdict = guards::decide(&id, &event, cluster, profile, last.as_ref(), now);
                if let Verdict::Refuse {
                    veto: Some(veto), ..
                } = &verdict
                {
                    self.publisher.publish(veto.as_ref()).await.map_err(|e| {
                        StepError::transient(format!("publishing capacity.host_exhausted: {e}"))
                            .with_source(e)
                    })?;
                }
                Ok(verdict)
            })
            .await?;
        let node = match verdict {
            Verdict::Go { node } => node,
            Verdict::Refuse {
                reason,
                dry_run,
                veto,
            } => {
                if dry_run {
                    wf.note("dry_run", true);
                }
                if let Some(serde_json::Value::Object(fields)) =
                    veto.map(|v| serde_json::to_value(v.as_ref()).unwrap_or_default())
                {
                    for (field, value) in fields {
                        wf.note(&field, value);
                    }
                }
                tracing::info!(workflow = %id, %reason, "scale-out refused");
                return Err(StepError::refused(reason).into());
            }
        };
        let provision = provision_of(&id);
        let ledger = key::scale_out(&name);
        wf.step_undo(
            "claim",
            async {
                let claimed = self
                    .admissions
                    .admit(&ledger, &provision, guards::one_at_a_time(), now)
                    .await
                    .map_err(|e| StepError::transient(e.to_string()).with_source(e))?;
                if let Decision::Refused(why) = claimed {
                    return Err(StepError::refused(format!(
                        "one scale-out at a time for {name}: {why}"
                    )));
                }
                let last = LastScaleOut {
                    workflow_id: id.clone(),
                    started_at: now,
                    node: node.clone(),
                };
                self.cooldowns.record(&name, &last).await
            },
            |()| Undo::FreeSlot {
                ledger: ledger.clone(),
                provision: provision.clone(),
            },
        )
        .await?;
        let request = ProvisionRequested {
            workflow_id: provision.clone(),
            idempotency_key: id.clone(),
            name: node.clone(),
            profile: so.profile.clone(),
            overrides: VmOverrides::default(),
            ssh_keys: so.ssh_keys.clone(),
            ip: IpConfig::Dhcp,
            tags: Vec::new(),
            requested_by: format!("capacity:{id}"),
            requested_at: now,
        };
        // The provision's own first step admits it to its profile's caps; a refusal there ends it
        // `cancelled`, which frees the cluster's slot and answers the requester like any end.
        wf.step("provision", async {
            self.provisions
                .start(&request)
                .await
                .map_err(|e| StepError::transient(e.to_string()).with_source(e))
        })
        .await?;
        tracing::info!(workflow = %id, %node, %provision, "scale-out dispatched");
        wf.note("node", &node);
        wf.note("provision_workflow", &provision);
        Ok(Dispatched {
            node,
            provision_workflow: provision,
        })
    }

    async fn undo(&self, undo: Undo) -> Result<(), StepError> {
        let Undo::FreeSlot { ledger, provision } = undo;
        self.admissions
            .finish(&ledger, &provision)
            .await
            .map_err(|e| StepError::transient(e.to_string()).with_source(e))
    }

    /// A refused or failed scale-out answers the remediation that asked at once; a dispatched one
    /// answers when its provision ends.
    async fn ended(
        &self,
        id: &str,
        input: &ScaleOutInput,
        ending: Ending<'_, Dispatched>,
    ) -> Result<(), StepError> {
        let Some(requester) = &input.requester else {
            return Ok(());
        };
        let (result, detail) = match ending {
            Ending::Succeeded(_) => return Ok(()),
            Ending::Cancelled(why) => (HandOffResult::Refused, why),
            Ending::Failed(why) => (HandOffResult::Failed, why),
        };
        answer(
            &self.publisher,
            requester,
            id,
            result,
            detail,
            self.clock.now(),
        )
        .await
        .map_err(|e| {
            StepError::transient(format!("reporting the scale-out's outcome: {e}")).with_source(e)
        })
    }
}
