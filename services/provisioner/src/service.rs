//! The provisioner service: runs the `provision` workflows ([`crate::workflow`]) on the workflow
//! engine. The orchestrator (for a webhook's request) or a scale-out starts them; this service only
//! advances them.

use proxflow_pve::PveClient;
use proxflow_runtime::admission::{AdmissionError, Admissions};
use proxflow_runtime::workflow::{Engine, EngineError};
use proxflow_runtime::{ServiceContext, TaskError, Tasks};
use tokio_util::sync::CancellationToken;

use crate::config::ProvisionConfig;
use crate::file_sd::FileSd;
use crate::vmid::{Reservations, VmidError};
use crate::workflow::Provision;

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The workflow bucket is missing.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The admissions bucket is missing.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// The VMID bucket is missing.
    #[error(transparent)]
    Vmid(#[from] VmidError),
    /// The workflow engine failed.
    #[error(transparent)]
    Task(#[from] TaskError),
}

/// Everything the provisioner needs beyond the [`ServiceContext`].
#[derive(Debug, Clone)]
pub struct ProvisionerSettings {
    /// `[provision]`.
    pub config: ProvisionConfig,
    /// The Proxmox it provisions on.
    pub pve: PveClient,
}

/// Runs the provisioner until `shutdown`.
pub async fn run(
    ctx: ServiceContext,
    settings: ProvisionerSettings,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let ProvisionerSettings { config, pve } = settings;
    let mut engine = Engine::new(&ctx).await?;
    engine.register(Provision {
        pve,
        vmids: Reservations::open(&ctx.bus.js).await?,
        admissions: Admissions::open(&ctx.bus.js).await?,
        file_sd: FileSd::new(&config.file_sd),
        publisher: ctx.bus.publisher.clone(),
        clock: ctx.clock.clone(),
        config: config.clone(),
    });
    let mut tasks = Tasks::new(&ctx, &shutdown);
    engine.spawn(&ctx, &config.consumer, &mut tasks);
    Ok(tasks.join().await?)
}
