//! The provisioning platform of end-to-end tests and the provisioning benchmark: a real nats-server,
//! the Proxmox simulator, and orchestrator + provisioner running in this process (each under its own
//! service name, as `proxflow dev` runs them).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use proxflow_e2e::{provisioner_config, test_consumer};
use proxflow_orchestrator::Orchestration;
use proxflow_provisioner::ProvisionConfig;
use proxflow_provisioner::file_sd::FileSd;
use proxflow_pve_sim::{RunningSim, SimConfig};
use proxflow_runtime::ServiceContext;
use proxflow_runtime::telemetry::service;
use proxflow_runtime::workflow::WorkflowStore;
use proxflow_schemas::names::{bucket, durable};
use proxflow_schemas::provision::{IpConfig, ProvisionRequested, VmOverrides};
use proxflow_schemas::workflow::WorkflowRecord;
use proxflow_testkit::pve::start_sim;
use proxflow_testkit::{TestCluster, TestNats};
use tokio_util::sync::CancellationToken;

/// The NATS servers under a platform: one, or the shipped 3-node cluster (R3).
pub enum Servers {
    One(TestNats),
    Three(TestCluster),
}

pub struct Platform {
    pub servers: Servers,
    pub sim: RunningSim,
    pub ctx: ServiceContext,
    pub store: WorkflowStore,
    pub file_sd: tempfile::TempDir,
    pub stop: CancellationToken,
}

impl Platform {
    pub async fn start(join_script: &str, tweak_sim: impl FnOnce(&mut SimConfig)) -> Self {
        Self::start_with(join_script, tweak_sim, |_| {}).await
    }

    /// As [`Platform::start`], with the provisioner's configuration adjusted by `tweak_provisioner`.
    pub async fn start_with(
        join_script: &str,
        tweak_sim: impl FnOnce(&mut SimConfig),
        tweak_provisioner: impl FnOnce(&mut ProvisionConfig),
    ) -> Self {
        Self::start_orchestrated(
            join_script,
            tweak_sim,
            tweak_provisioner,
            |_| {},
            proxflow_runtime::clock::system(),
        )
        .await
    }

    /// As [`Platform::start_with`], with the orchestrator's capacity settings adjusted by
    /// `tweak_orchestration`, and the services on `clock`.
    pub async fn start_orchestrated(
        join_script: &str,
        tweak_sim: impl FnOnce(&mut SimConfig),
        tweak_provisioner: impl FnOnce(&mut ProvisionConfig),
        tweak_orchestration: impl FnOnce(&mut Orchestration),
        clock: proxflow_runtime::clock::SharedClock,
    ) -> Self {
        let nats = TestNats::start().expect("nats-server");
        let ctx = nats.context("provision-e2e").await.expect("context");
        Self::start_on(
            Servers::One(nats),
            ctx,
            join_script,
            tweak_sim,
            tweak_provisioner,
            tweak_orchestration,
            clock,
        )
        .await
    }

    /// As [`Platform::start_with`], on the shipped 3-node cluster (every stream and bucket R3).
    pub async fn start_on_cluster(
        join_script: &str,
        tweak_sim: impl FnOnce(&mut SimConfig),
        tweak_provisioner: impl FnOnce(&mut ProvisionConfig),
    ) -> Self {
        let cluster = TestCluster::start().expect("three nodes from the shipped files");
        cluster
            .wait_for_jetstream(Duration::from_secs(30))
            .await
            .expect("JetStream answers");
        let ctx = cluster.context("provision-e2e").await.expect("context");
        Self::start_on(
            Servers::Three(cluster),
            ctx,
            join_script,
            tweak_sim,
            tweak_provisioner,
            |_| {},
            proxflow_runtime::clock::system(),
        )
        .await
    }

    async fn start_on(
        servers: Servers,
        ctx: ServiceContext,
        join_script: &str,
        tweak_sim: impl FnOnce(&mut SimConfig),
        tweak_provisioner: impl FnOnce(&mut ProvisionConfig),
        tweak_orchestration: impl FnOnce(&mut Orchestration),
        clock: proxflow_runtime::clock::SharedClock,
    ) -> Self {
        let (sim, client) = start_sim(|c| {
            c.durations.agent_boot = Duration::from_millis(500);
            tweak_sim(c);
        })
        .await
        .expect("simulator");
        let ctx = ctx.with_clock(clock);
        let file_sd = tempfile::tempdir().unwrap();
        let mut config = provisioner_config(
            file_sd.path().join("k3s-nodes.json"),
            Duration::from_secs(30),
        );
        config.join.command = ["sh", "-c", join_script].map(String::from).to_vec();
        tweak_provisioner(&mut config);
        let stop = CancellationToken::new();
        let mut orchestration = Orchestration::new(
            test_consumer(Duration::from_secs(30)),
            config.profiles.clone(),
        );
        tweak_orchestration(&mut orchestration);
        // Each under its own name, as `proxflow dev` runs them in one process.
        tokio::spawn(service::scope(
            "orchestrator",
            proxflow_orchestrator::run(ctx.clone(), orchestration, stop.clone()),
        ));
        tokio::spawn(service::scope(
            "provisioner",
            proxflow_provisioner::run(
                ctx.clone(),
                proxflow_provisioner::ProvisionerSettings {
                    config,
                    pve: client,
                },
                stop.clone(),
            ),
        ));
        let store = WorkflowStore::open(&ctx.bus.js).await.unwrap();
        Self {
            servers,
            sim,
            ctx,
            store,
            file_sd,
            stop,
        }
    }

    pub async fn request(&self, name: &str, key: &str) -> String {
        let workflow_id = format!("prov-{key}");
        let req = ProvisionRequested {
            workflow_id: workflow_id.clone(),
            idempotency_key: key.into(),
            name: name.into(),
            profile: "k8s-node".into(),
            overrides: VmOverrides::default(),
            ssh_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm9 ops@bastion".into()],
            ip: IpConfig::Dhcp,
            tags: vec![],
            requested_by: "test".into(),
            requested_at: Utc::now(),
        };
        self.ctx
            .bus
            .publisher
            .publish(&req)
            .await
            .expect("published");
        workflow_id
    }

    /// Waits until the workflow is `running` (admitted, its provision under way).
    pub async fn until_running(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((r, _)) = self.store.get(id).await.unwrap()
                && r.state == proxflow_schemas::workflow::WorkflowState::Running
            {
                return;
            }
            assert!(Instant::now() < deadline, "workflow {id} never ran");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// [`Platform::request`] with the name as idempotency key, for concurrent use.
    pub async fn request_owned(&self, name: String) -> String {
        self.request(&name, &name).await
    }

    pub async fn until_ended(&self, id: &str) -> WorkflowRecord {
        proxflow_e2e::until_ended(&self.store, id).await
    }

    /// Waits until both consumers have nothing pending or unacknowledged: whatever the last request
    /// caused has happened.
    pub async fn until_idle(&self) {
        proxflow_e2e::until_idle(
            &self.ctx,
            &[
                ("PF_INGEST", durable::ORCHESTRATOR_PROVISION),
                ("PF_CMD", durable::PROVISIONER),
                ("PF_EVT", durable::ORCHESTRATOR_OUTCOMES),
                ("PF_EVT", durable::PROVISIONER_GIVEN_UP),
                ("PF_EVT", durable::ORCHESTRATOR_SCALE_OUT),
            ],
        )
        .await;
    }

    pub async fn reservations(&self) -> Vec<String> {
        let kv = self.ctx.bus.js.get_key_value(bucket::VMIDS).await.unwrap();
        kv.keys()
            .await
            .unwrap()
            .filter_map(|k| async { k.ok() })
            .collect()
            .await
    }

    pub fn targets(&self) -> FileSd {
        FileSd::new(self.file_sd.path().join("k3s-nodes.json"))
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Servers::One(nats) = &mut self.servers {
            nats.stop();
        }
    }
}

/// Posts `body` to the gateway's `/v1/provision`, signed with `secret`, until it is accepted (202),
/// and returns the answer. Retried because a gateway just spawned may still be opening its buckets;
/// the request is idempotent (same webhook id and key), so retrying is what a real sender does.
pub async fn provision_via_gateway(
    gateway_url: &str,
    secret: &proxflow_runtime::config::Secret,
    body: &[u8],
) -> serde_json::Value {
    let mut post = reqwest::Client::new()
        .post(format!("{gateway_url}/v1/provision"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in proxflow_gateway::webhook::SignedHeaders::new(secret, body)
        .expect("signed")
        .pairs()
    {
        post = post.header(name, value);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match post.try_clone().expect("clonable").send().await {
            Ok(r) if r.status() == 202 => return r.json().await.expect("json"),
            other => {
                assert!(Instant::now() < deadline, "not accepted: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
