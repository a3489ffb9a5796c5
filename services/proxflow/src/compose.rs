//! Runs services in this process: connect, declare the topology, serve ops, start each service, and
//! on SIGINT/SIGTERM stop them all within the grace period.
//!
//! [`SERVICES`] is the table of what this binary runs: per service its name, how its settings come
//! from the loaded [`Settings`] and which `run` it is. Every `run` has the one shape
//! `run(ctx, settings, shutdown)` ([`proxflow_runtime::service`]), so starting one is the same code
//! for all of them.
//!
//! Each service runs under [`telemetry::service::scope`]: its spans are exported and recorded under
//! its own name (`gateway`, `orchestrator`, ...), those of the process itself (start-up) under the
//! process's name (`proxflow-dev`, or the services joined by `+` for `proxflow serve`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Context;
use proxflow_pve::PveClient;
use proxflow_runtime::bus::{self, JetStreamProbe, topology};
use proxflow_runtime::config::Validate;
use proxflow_runtime::ops::{self, Health, Metrics};
use proxflow_runtime::serve::HttpLimits;
use proxflow_runtime::telemetry::{self, SpanSink};
use proxflow_runtime::{ServiceContext, shutdown};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::settings::Settings;

/// Where things listen, reported once everything is up.
#[derive(Debug, Clone)]
pub struct Listening {
    /// The ops endpoint.
    pub ops: SocketAddr,
    /// The gateway, when it runs.
    pub gateway: Option<SocketAddr>,
}

/// One service this binary runs.
pub struct ServiceEntry {
    /// Its name on the command line and in logs.
    pub name: &'static str,
    /// What it does, for `--help`.
    pub about: &'static str,
    /// Whether `proxflow dev` runs it.
    pub in_dev: fn(&Settings) -> bool,
    /// Its settings from the loaded configuration, checked. Called before connecting, so a service
    /// that cannot run as configured stops start-up before anything runs.
    prepare: fn(&Settings, &mut Clients) -> anyhow::Result<Launch>,
}

/// Every service, in start order (also the order their configuration errors are reported in).
pub const SERVICES: &[ServiceEntry] = &[
    ServiceEntry {
        name: "gateway",
        about: "HTTP ingress and APIs",
        in_dev: always,
        prepare: |settings, _| {
            // Refused before connecting: a gateway without credentials is a configuration error.
            settings.gateway.check_credentials()?;
            let (config, profiles, approvers) = (
                settings.gateway.clone(),
                settings.provision.profiles.clone(),
                settings.patch.approvers.clone(),
            );
            let console = crate::expectations::of(settings);
            Ok(Box::new(move |ctx, stop| {
                Box::pin(async move {
                    let listener = bind(config.listen, "gateway").await?;
                    let listening = Some(listener.local_addr()?);
                    let settings = proxflow_gateway::GatewaySettings {
                        console,
                        config,
                        profiles,
                        listener,
                        approvers,
                    };
                    Ok(Started {
                        run: running("gateway", proxflow_gateway::run(ctx, settings, stop)),
                        listening,
                    })
                })
            }))
        },
    },
    ServiceEntry {
        name: "orchestrator",
        about: "Workflow admission (caps) and dispatch, scale-out and remediation decisions",
        in_dev: always,
        prepare: |settings, _| {
            // A rules file that does not validate stops start-up (exit 78, naming the rule).
            let rules = settings.remediation_rules()?;
            tracing::info!(rules = rules.len(), "remediation rules loaded");
            let orchestration = proxflow_orchestrator::Orchestration {
                clusters: settings.capacity.clusters.clone(),
                remediation: settings.remediation.clone(),
                rules,
                ..proxflow_orchestrator::Orchestration::new(
                    settings.orchestrator.consumer.clone(),
                    settings.provision.profiles.clone(),
                )
            };
            Ok(launch(
                "orchestrator",
                proxflow_orchestrator::run,
                orchestration,
            ))
        },
    },
    ServiceEntry {
        name: "provisioner",
        about: "Builds VMs against Proxmox, joins them to k3s, onboards their metrics",
        in_dev: always,
        prepare: |settings, clients| {
            let settings = proxflow_provisioner::ProvisionerSettings {
                config: settings.provision.clone(),
                pve: clients.pve(settings)?,
            };
            Ok(launch("provisioner", proxflow_provisioner::run, settings))
        },
    },
    ServiceEntry {
        name: "capacity",
        about: "Polls Proxmox for utilisation, exports gauges, fires sustained-threshold events",
        in_dev: always,
        prepare: |settings, clients| {
            let settings = proxflow_capacity::CapacitySettings {
                config: settings.capacity.clone(),
                pve: clients.pve(settings)?,
                zfs: review_zfs(settings),
                snapshot_prefix: settings.snapshot.prefix.clone(),
            };
            Ok(launch("capacity", proxflow_capacity::run, settings))
        },
    },
    ServiceEntry {
        name: "snapshotter",
        about: "Snapshot policies (VMs and datasets), retention, pre-change snapshots, validity checks",
        // With something to snapshot: dev adds its policies (`dev::platform`) unless configured.
        in_dev: |settings| !settings.snapshot.policies.is_empty(),
        prepare: |settings, _| {
            let settings = proxflow_snapshotter::SnapshotterSettings {
                config: settings.snapshot.clone(),
                pve: snapshot_pve(settings)?,
            };
            Ok(launch("snapshotter", proxflow_snapshotter::run, settings))
        },
    },
    ServiceEntry {
        name: "replicator",
        about: "Incremental ZFS replication to the offsite target",
        // With a job: dev adds one when the zfs-fuse pools are there, unless configured.
        in_dev: |settings| !settings.replication.jobs.is_empty(),
        prepare: |settings, _| {
            Ok(launch(
                "replicator",
                proxflow_replicator::run,
                settings.replication.clone(),
            ))
        },
    },
    ServiceEntry {
        name: "remediator",
        about: "Runs remediation actions (restart or snapshot a VM, notify, commands) the orchestrator decides",
        in_dev: always,
        prepare: |settings, clients| {
            let settings = proxflow_remediator::RemediatorSettings {
                config: settings.remediation.clone(),
                pve: clients.pve(settings)?,
            };
            Ok(launch("remediator", proxflow_remediator::run, settings))
        },
    },
    ServiceEntry {
        name: "patcher",
        about: "Weekly security updates for the k3s VMs and the host, one node at a time, with approvals",
        in_dev: always,
        prepare: |settings, clients| {
            let settings = proxflow_patcher::PatcherSettings {
                config: settings.patch.clone(),
                pve: clients.pve(settings)?,
                replication: !settings.replication.jobs.is_empty(),
            };
            Ok(launch("patcher", proxflow_patcher::run, settings))
        },
    },
    ServiceEntry {
        name: "lifecycle",
        about: "Lifecycle jobs on a schedule: the weekly host-config export, the quarterly restore drill, \
                disk and pool health (daily check, quarterly audit, monthly scrub)",
        // With an export or a drill to run: dev exports into its state directory.
        in_dev: |settings| settings.export.enabled() || !settings.replication.jobs.is_empty(),
        prepare: |settings, clients| {
            let settings = proxflow_lifecycle::LifecycleSettings {
                export: settings.export.clone(),
                drill: settings.drill.clone(),
                health: settings.health.clone(),
                drill_targets: settings.drill_targets(),
                pve: clients.pve(settings)?,
            };
            Ok(launch("lifecycle", proxflow_lifecycle::run, settings))
        },
    },
];

/// The service called `name`.
pub fn service(name: &str) -> Option<&'static ServiceEntry> {
    SERVICES.iter().find(|s| s.name == name)
}

fn always(_: &Settings) -> bool {
    true
}

/// A boxed future, so that one table holds services whose futures differ.
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Starts a prepared service once the bus is up.
type Launch =
    Box<dyn FnOnce(ServiceContext, CancellationToken) -> BoxFuture<anyhow::Result<Started>> + Send>;

/// A started service: its run, and where it listens (the gateway).
struct Started {
    run: BoxFuture<anyhow::Result<()>>,
    listening: Option<SocketAddr>,
}

/// The launch of a service that listens on nothing: `run(ctx, settings, shutdown)`.
fn launch<S, R, F, E>(name: &'static str, run: R, settings: S) -> Launch
where
    S: Send + 'static,
    R: FnOnce(ServiceContext, S, CancellationToken) -> F + Send + 'static,
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    Box::new(move |ctx, stop| {
        Box::pin(async move {
            Ok(Started {
                run: running(name, run(ctx, settings, stop)),
                listening: None,
            })
        })
    })
}

/// A service's run with its errors named after it.
fn running<F, E>(name: &'static str, run: F) -> BoxFuture<anyhow::Result<()>>
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    Box::pin(async move { run.await.context(name) })
}

/// Clients several services share, built once, when the first one needs them.
#[derive(Default)]
struct Clients {
    pve: Option<PveClient>,
}

impl Clients {
    /// The Proxmox client; checked first: a Proxmox-facing service without credentials must not
    /// start half-way.
    fn pve(&mut self, settings: &Settings) -> anyhow::Result<PveClient> {
        if let Some(pve) = &self.pve {
            return Ok(pve.clone());
        }
        settings.pve.validate()?;
        let pve = PveClient::new(&settings.pve)?;
        self.pve = Some(pve.clone());
        Ok(pve)
    }
}

/// The zfs the capacity review lists its datasets with: the snapshotter's (`snapshot.zfs_command`),
/// since the reviewed datasets are the ones it snapshots.
pub fn review_zfs(settings: &Settings) -> proxflow_zfs::Zfs {
    proxflow_zfs::Zfs::new(
        settings.snapshot.zfs_command.clone(),
        settings.snapshot.zfs_timeout,
    )
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
    services: &[&'static ServiceEntry],
    spans: &SpanSink,
    on_ready: Option<&(dyn Fn(&Listening) + Sync)>,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    shutdown::cancel_on_signal(stop.clone()).context("installing signal handlers")?;

    let names: Vec<&str> = services.iter().map(|s| s.name).collect();
    // Every service's settings are built and checked before connecting, in the table's order.
    let mut clients = Clients::default();
    let launches = SERVICES
        .iter()
        .filter(|entry| names.contains(&entry.name))
        .map(|entry| Ok((entry.name, (entry.prepare)(settings, &mut clients)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
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
    let ctx = ServiceContext::new(bus, health, metrics, settings.ops.shutdown_grace).await?;

    let mut tasks = JoinSet::new();
    // Readiness follows JetStream, not just the connection: a quorum loss leaves the client
    // connected to a survivor while every request fails.
    tasks.spawn({
        let (health, js, stop) = (ctx.health.clone(), ctx.bus.js.clone(), stop.clone());
        async move {
            JetStreamProbe::default().run(health, js, stop).await;
            anyhow::Ok(())
        }
    });
    let ops_listener = bind(settings.ops.listen, "ops").await?;
    let mut listening = Listening {
        ops: ops_listener.local_addr()?,
        gateway: None,
    };
    tasks.spawn({
        let (router, stop, grace) = (
            ops::router(ctx.ops_state()),
            stop.clone(),
            ctx.shutdown_grace,
        );
        async move {
            proxflow_runtime::serve::serve(
                ops_listener,
                router,
                stop,
                &HttpLimits::default(),
                grace,
            )
            .await
            .context("ops endpoint")
        }
    });
    for (name, launch) in launches {
        let started = launch(ctx.clone(), stop.clone()).await?;
        listening.gateway = listening.gateway.or(started.listening);
        // Each service's spans under its own name, though they share this process's telemetry.
        tasks.spawn(telemetry::service::scope(name, started.run));
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
