//! # proxflow-pve
//!
//! The only code in proxflow that speaks HTTP to Proxmox VE 8. Everything else asks this crate.
//!
//! - [`PveClient`] — API-token auth (`PVEAPIToken=USER@REALM!TOKENID=SECRET`, the secret never
//!   printed), TLS by CA file, by pinned SHA-256 fingerprint, or explicitly `insecure`; one span per
//!   call with method, path, VMID, UPID and outcome.
//! - [`PveError`] / [`ErrorKind`] — every Proxmox error form (400 field errors, 401, 403, 500 texts,
//!   501, task failures with their log tail) as kinds a caller can branch on.
//! - Retries only where nothing can have happened (see [`client`]); a request whose outcome is unknown
//!   is resolved by looking at the task list before anything is sent again ([`PveClient::dispatch_task`]).
//! - [`task`] — UPIDs and [`PveClient::wait_task`] (`WARNINGS: n` is success).
//! - [`api`] — the operations: VMs, clones, config with digest, power, guest agent, snapshots, node,
//!   storage, cluster resources, ZFS pools, apt; [`lifecycle`] — creating a VM from a config,
//!   disks and SMART health.
//! - [`rrd`] — RRD history of the node and its VMs (`rrddata`), for the capacity review.
//! - [`perl`] — lenient decoding of Perl typing (0/1 booleans, numbers as strings).
//!
//! Facts behind the behaviour: `../shared/reference/pve-api.md`; the contract it is tested against:
//! the official API schema, through `proxflow-pve-sim`.

pub mod api;
pub mod client;
pub mod config;
pub mod error;
pub mod lifecycle;
pub mod perl;
pub mod rrd;
pub mod task;
pub mod tls;
pub mod types;

pub use api::{CloneSpec, ConfigChange, ShutdownOptions, encode_sshkeys};
pub use client::{Params, PveClient};
pub use config::PveConfig;
pub use error::{ErrorKind, PveError};
pub use lifecycle::{DiskInfo, SmartReport};
pub use rrd::{Consolidation, Timeframe};
pub use task::{TaskDone, Upid};
