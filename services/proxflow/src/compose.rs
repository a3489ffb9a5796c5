//! Runs services in this process: connect, declare the topology, serve ops, start each service, and
//! on SIGINT/SIGTERM stop them all within the grace period.

use std::net::SocketAddr;

use anyhow::Context;
use proxflow_runtime::bus::{self, topology};
use proxflow_runtime::clock;
use proxflow_runtime::config::Validate;
use proxflow_runtime::ops::{self, Health, Metrics};
use proxflow_runtime::telemetry::SpanSink;
use proxflow_runtime::{ServiceContext, shutdown};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::Service;
use crate::settings::Settings;

/// Where things listen, reported once everything is up.
#[derive(Debug, Clone)]
pub struct Listening {
    /// The ops endpoint.
    pub ops: SocketAddr,
    /// The gateway, when it runs.
    pub gateway: Option<SocketAddr>,
}

/// The snapshotter's Proxmox client: required when a policy snapshots VMs (a missing token then
/// stops start-up), otherwise used when `[pve]` is complete (for pre-change requests naming a VM)
/// and left out when it is not (such requests are then answered with an error).
pub fn snapshot_pve(settings: &Settings) -> anyhow::Result<Option<proxflow_pve::PveClient>> {
    if settings.snapshot.needs_pve() {
        settings.pve.validate()?;
        return Ok(Some(proxflow_pve::PveClient::new(&settings.pve)?));
    }
    Ok(settings
        .pve
        .validate()
        .ok()
        .and_then(|()| proxflow_pve::PveClient::new(&settings.pve).ok()))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what}: cannot listen on {addr}"))
}

/// Runs `services` until a signal, recording this process's spans through `spans` once connected;
/// `on_ready` hears where they listen once all are started.
pub async fn run(
    settings: &Settings,
    services: &[Service],
    spans: &SpanSink,
    on_ready: Option<&(dyn Fn(&Listening) + Sync)>,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    shutdown::cancel_on_signal(stop.clone()).context("installing signal handlers")?;

    let names: Vec<&str> = services.iter().map(|s| s.name()).collect();
    // Refused before connecting: a gateway without credentials is a configuration error (exit 78).
    if services.contains(&Service::Gateway) {
        settings.gateway.check_credentials()?;
    }
    // Checked before connecting: a Proxmox-facing service without credentials must not start half-way.
    // Refused before connecting too: a rules file that does not validate (exit 78, naming the rule).
    let rules = if services.contains(&Service::Orchestrator) {
        let rules = settings.remediation_rules()?;
        tracing::info!(rules = rules.len(), "remediation rules loaded");
        rules
    } else {
        proxflow_remediation::Rules::default()
    };
    let pve = if [Service::Provisioner, Service::Capacity, Service::Remediator]
        .iter()
        .any(|s| services.contains(s))
    {
        settings.pve.validate()?;
        Some(proxflow_pve::PveClient::new(&settings.pve)?)
    } else {
        None
    };
    let snapshot_pve = if services.contains(&Service::Snapshotter) {
        snapshot_pve(settings)?
    } else {
        None
    };
    let metrics = Metrics::new();
    let bus = bus::connect(
        &settings.nats,
        &format!("proxflow {}", names.join(",")),
        metrics.clone(),
    )
    .await?;
    let report = topology::declare(&bus.client, &bus.js, bus.replicas).await?;
    tracing::info!(objects = ?report.objects, "topology declared");
    // Spans finished so far wait in the sink's queue; from here on they go to PF_TRACE.
    spans.attach(&bus.js, &metrics)?;
    let health = Health::default();
    health.watch_nats(bus.client.clone());
    let ctx = ServiceContext {
        bus,
        health,
        metrics,
        shutdown_grace: settings.ops.shutdown_grace,
    };

    let mut tasks = JoinSet::new();
    let ops_listener = bind(settings.ops.listen, "ops").await?;
    let mut listening = Listening {
        ops: ops_listener.local_addr()?,
        gateway: None,
    };
    tasks.spawn({
        let (router, stop) = (ops::router(ctx.ops_state()), stop.clone());
        async move {
            ops::serve(ops_listener, router, stop)
                .await
                .context("ops endpoint")
        }
    });
    for service in services {
        match service {
            Service::Gateway => {
                let listener = bind(settings.gateway.listen, "gateway").await?;
                listening.gateway = Some(listener.local_addr()?);
                let (ctx, stop) = (ctx.clone(), stop.clone());
                let (config, profiles) = (
                    settings.gateway.clone(),
                    settings.provision.profiles.clone(),
                );
                tasks.spawn(async move {
                    proxflow_gateway::run(ctx, config, profiles, listener, stop)
                        .await
                        .context("gateway")
                });
            }
            Service::Orchestrator => {
                let (ctx, stop) = (ctx.clone(), stop.clone());
                let orchestration = proxflow_orchestrator::Orchestration {
                    clusters: settings.capacity.clusters.clone(),
                    remediation: settings.remediation.clone(),
                    rules: rules.clone(),
                    ..proxflow_orchestrator::Orchestration::new(
                        settings.orchestrator.consumer.clone(),
                        settings.provision.profiles.clone(),
                    )
                };
                tasks.spawn(async move {
                    proxflow_orchestrator::run(ctx, orchestration, stop)
                        .await
                        .context("orchestrator")
                });
            }
            Service::Remediator => {
                let (ctx, stop) = (ctx.clone(), stop.clone());
                let config = settings.remediation.clone();
                let pve = pve.clone().context("Proxmox client")?;
                tasks.spawn(async move {
                    proxflow_remediator::run(ctx, config, pve, stop)
                        .await
                        .context("remediator")
                });
            }
            Service::Capacity => {
                let (ctx, stop) = (ctx.clone(), stop.clone());
                let config = settings.capacity.clone();
                let pve = pve.clone().context("Proxmox client")?;
                tasks.spawn(async move {
                    proxflow_capacity::run(ctx, config, pve, clock::system(), stop)
                        .await
                        .context("capacity")
                });
            }
            Service::Snapshotter => {
                let (ctx, stop) = (ctx.clone(), stop.clone());
                let (config, pve) = (settings.snapshot.clone(), snapshot_pve.clone());
                tasks.spawn(async move {
                    proxflow_snapshotter::run(ctx, config, pve, clock::system(), stop)
                        .await
                        .context("snapshotter")
                });
            }
            Service::Replicator => {
                let (ctx, stop) = (ctx.clone(), stop.clone());
                let config = settings.replication.clone();
                tasks.spawn(async move {
                    proxflow_replicator::run(ctx, config, clock::system(), stop)
                        .await
                        .context("replicator")
                });
            }
            Service::Provisioner => {
                let (ctx, stop) = (ctx.clone(), stop.clone());
                let config = settings.provision.clone();
                let pve = pve.clone().context("Proxmox client")?;
                tasks.spawn(async move {
                    proxflow_provisioner::run(ctx, config, pve, stop)
                        .await
                        .context("provisioner")
                });
            }
        }
    }
    tracing::info!(services = ?names, ops = %listening.ops, "started");
    if let Some(report) = on_ready {
        report(&listening);
    }

    // The first service to fail stops the others: a half-running process hides outages.
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.context("service task panicked").and_then(|r| r);
        if let Err(e) = result {
            tracing::error!(error = %format!("{e:#}"), "service failed, stopping the rest");
            first_error.get_or_insert(e);
        }
        stop.cancel();
    }
    ctx.bus.client.flush().await.ok();
    first_error.map_or(Ok(()), Err)
}
