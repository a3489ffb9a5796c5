//! # proxflow-view
//!
//! What an operator reads, computed from the bus: the workflow list and a workflow's detail, the
//! plans waiting for approval, the dead letters (and their one-time replay), and the status overview
//! (the console's first screen, `proxflow status`). A library, not a service: the gateway's console
//! and the `proxflow` CLI render the same models, so a number on the page is the number in the
//! terminal.
//!
//! ## Layout
