//! # proxflow-view
//!
//! What an operator reads, computed from the bus: the workflow list and a workflow's detail, the
//! plans waiting for approval, the dead letters (and their one-time replay), and the status overview
//! (the console's first screen, `proxflow status`). A library, not a service: the gateway's console
//! and the `proxflow` CLI render the same models, so a number on the page is the number in the
//! terminal.
//!
//! ## Layout
//! - [`workflows`] — the workflow list (kind, state, age) and a workflow's detail.
//! - [`approvals`] — the patch plans waiting for a decision.
//! - [`overview`] — the first screen: gauges, pools, replication, snapshots, lifecycle, live work.
//! - [`words`] — ages and durations in words.

pub mod approvals;
pub mod overview;
pub mod words;
pub mod workflows;

/// Why a view could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// The workflow records or their index.
    #[error(transparent)]
    Engine(#[from] proxflow_runtime::workflow::EngineError),
    /// An event history.
    #[error(transparent)]
    History(#[from] proxflow_runtime::bus::history::HistoryError),
}
