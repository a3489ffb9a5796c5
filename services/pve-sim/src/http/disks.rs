//! `PUT /_sim/host/disk`: sets a disk's SMART health (`PASSED`/`FAILED`) and wearout, which
//! `disks/list` and `disks/smart` then report — how a test makes a disk fail.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::{control_json, control_message};
use crate::platform::{DiskHealth, DiskHealthError};
use crate::{Shared, SimHandle};

/// Answers the disk as `disks/list` now lists it; 404 for an unknown disk, 400 for a bad value.
pub(super) async fn put_disk_health(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let change: DiskHealth = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return control_message(StatusCode::BAD_REQUEST, &e.to_string(), Some("body".into()));
        }
    };
    match (SimHandle { shared }).set_disk_health(&change) {
        Ok(disk) => control_json(StatusCode::OK, &json!({ "disk": disk })),
        Err(e @ DiskHealthError::NoDisk(_)) => {
            control_message(StatusCode::NOT_FOUND, &e.to_string(), None)
        }
        Err(e @ DiskHealthError::Invalid { field, .. }) => control_message(
            StatusCode::BAD_REQUEST,
            &e.to_string(),
            Some(field.to_owned()),
        ),
    }
}
