//! The provisioner service: runs the `provision` workflows ([`crate::workflow`]) on the workflow
//! engine. The orchestrator (for a webhook's request) or a scale-out starts them; this service only
//! advances them.

use proxflow_platform::claims::{ClaimError, Claims, Swept};
use proxflow_pve::PveClient;
use proxflow_runtime::admission::{AdmissionError, Admissions};
use proxflow_runtime::schedule;
use proxflow_runtime::workflow::{Engine, EngineError};
use proxflow_runtime::{ServiceContext, TaskError, Tasks};
use tokio_util::sync::CancellationToken;

use crate::config::ProvisionConfig;
use crate::file_sd::FileSd;
use crate::sweep;
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
    /// The claims bucket is missing.
    #[error(transparent)]
    Claims(#[from] ClaimError),
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
    let claims = Claims::open(&ctx.bus.js).await?;
    let mut tasks = Tasks::new(&ctx, &shutdown);
    let stop = tasks.shutdown();
    let (sweep_pve, sweep_claims, clock) = (pve.clone(), claims.clone(), ctx.clock.clone());
    let (interval, grace) = (config.claims_sweep, ctx.shutdown_grace);
    tasks.spawn("claims sweep", async move {
        schedule::every(interval, &stop, grace, || async {
            match sweep::sweep_once(&sweep_pve, &sweep_claims, &clock).await {
                Ok(swept) if swept != Swept::default() => {
                    tracing::info!(
                        claimed = swept.claimed,
                        dropped = swept.dropped,
                        "claims swept"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "claims sweep failed; the next one retries"),
            }
        })
        .await;
        Ok::<(), ServiceError>(())
    });
    engine.register(Provision {
        pve,
        claims,
        vmids: Reservations::open(&ctx.bus.js).await?,
        admissions: Admissions::open(&ctx.bus.js).await?,
        file_sd: FileSd::new(&config.file_sd),
        publisher: ctx.bus.publisher.clone(),
        clock: ctx.clock.clone(),
        config: config.clone(),
    });
    engine.spawn(&ctx, &config.consumer, &mut tasks);
    Ok(tasks.join().await?)
}
