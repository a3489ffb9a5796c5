//! Every way a Proxmox call can fail, decoded into something a caller can branch on.
//!
//! pveproxy reports errors in several shapes (see `reference/pve-api.md` §1): 400 with an `errors` map
//! for parameter verification, 401 with an empty body, 403 with the permission in the reason phrase,
//! 500 with the handler's `die` text as reason phrase and (since http-server 5.2) a body `message`,
//! 501 for unknown paths. The 500 texts carry the meaning (`VM is locked (clone)`, `… does not exist`),
//! so [`ErrorKind`] is derived from them in one place, [`classify`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// What kind of failure, for callers that branch (retry, compensate, treat as done, give up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The VM, snapshot, storage or task does not exist.
    NotFound,
    /// The VM holds a config lock (`clone`, `backup`, `snapshot`, …).
    Locked,
    /// Creating something that is already there (VMID taken, snapshot name used).
    AlreadyExists,
    /// The token lacks a privilege (403).
    Permission,
    /// Proxmox rejected the parameters (400); the field messages say why.
    Validation,
    /// The token was refused (401).
    Unauthorized,
    /// Worth retrying: connection errors, lock timeouts, 502/503/504/59x; reported only once retries ran out.
    Transient,
    /// A request was sent but its outcome is unknown (timeout or reset after sending). Look at the state.
    OutcomeUnknown,
    /// A task ended with an error.
    TaskFailed,
    /// A task did not finish before the deadline (it may still be running).
    TaskTimeout,
    /// The path or method does not exist on this Proxmox version (501).
    NotImplemented,
    /// Any other server-side failure.
    Server,
    /// The response did not have the expected shape.
    Decode,
    /// The client could not be built (bad TLS material, bad URL).
    Setup,
}

/// A failed Proxmox call. The token secret is never part of it. Boxed so `Result<_, PveError>` stays
/// one pointer wide; read the details through `Deref` (`err.kind`, `err.message`, …).
#[derive(Debug)]
pub struct PveError(Box<ErrorDetail>);

impl std::error::Error for PveError {}

impl std::ops::Deref for PveError {
    type Target = ErrorDetail;
    fn deref(&self) -> &ErrorDetail {
        &self.0
    }
}

impl std::ops::DerefMut for PveError {
    fn deref_mut(&mut self) -> &mut ErrorDetail {
        &mut self.0
    }
}

/// What went wrong, where.
#[derive(Debug, Clone)]
pub struct ErrorDetail {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// HTTP method of the call, or `TASK` for task waits.
    pub method: String,
    /// API path after `/api2/json` (or the UPID for task errors).
    pub path: String,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// Proxmox's message: body `message`, else the reason phrase, else the transport error.
    pub message: String,
    /// Per-parameter messages of a 400.
    pub field_errors: BTreeMap<String, String>,
    /// The task, for task failures and timeouts.
    pub upid: Option<String>,
    /// Last lines of the task log, for task failures.
    pub log_tail: Vec<String>,
}

impl fmt::Display for PveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxmox {} {}", self.method, self.path)?;
        if let Some(status) = self.status {
            write!(f, " ({status})")?;
        }
        write!(f, ": {}", self.message)?;
        if !self.field_errors.is_empty() {
            let fields: Vec<String> = self
                .field_errors
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.trim_end()))
                .collect();
            write!(f, " [{}]", fields.join("; "))?;
        }
        if !self.log_tail.is_empty() {
            write!(
                f,
                "\n  task log tail:\n    {}",
                self.log_tail.join("\n    ")
            )?;
        }
        Ok(())
    }
}

impl PveError {
    pub(crate) fn new(
        kind: ErrorKind,
        method: &str,
        path: &str,
        status: Option<u16>,
        message: impl Into<String>,
    ) -> Self {
        Self(Box::new(ErrorDetail {
            kind,
            method: method.to_string(),
            path: path.to_string(),
            status,
            message: message.into(),
            field_errors: BTreeMap::new(),
            upid: None,
            log_tail: Vec::new(),
        }))
    }

    /// Failure to build a client.
    pub(crate) fn setup(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Setup, "SETUP", "", None, message)
    }

    /// A task that ended with an error.
    pub(crate) fn task_failed(upid: &str, exitstatus: &str, log_tail: Vec<String>) -> Self {
        let mut e = Self::new(ErrorKind::TaskFailed, "TASK", upid, None, exitstatus);
        e.upid = Some(upid.to_string());
        e.log_tail = log_tail;
        e
    }

    /// A task that outlived its deadline.
    pub(crate) fn task_timeout(upid: &str, waited: Duration) -> Self {
        let mut e = Self::new(
            ErrorKind::TaskTimeout,
            "TASK",
            upid,
            None,
            format!(
                "still running after {:.1}s; it may yet finish",
                waited.as_secs_f64()
            ),
        );
        e.upid = Some(upid.to_string());
        e
    }

    /// Whether retrying the same call could succeed without looking at anything first.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

/// Derives the kind of a Proxmox error response from its status and message text.
pub fn classify(status: u16, message: &str) -> ErrorKind {
    let m = message.to_ascii_lowercase();
    match status {
        400 if m.contains("no such") => ErrorKind::NotFound,
        400 if m.contains("already exists") => ErrorKind::AlreadyExists,
        400 => ErrorKind::Validation,
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::Permission,
        501 => ErrorKind::NotImplemented,
        502..=504 | 595 | 596 | 599 => ErrorKind::Transient,
        _ if is_transient_text(&m) => ErrorKind::Transient,
        _ if m.contains("vm is locked") => ErrorKind::Locked,
        _ if m.contains("does not exist") || m.contains("no such") => ErrorKind::NotFound,
        _ if m.contains("already exists") || m.contains("already used") => ErrorKind::AlreadyExists,
        _ => ErrorKind::Server,
    }
}

/// The 500 texts that mean "nothing happened, try again": a config flock not acquired in time, a
/// worker that could not be forked, a cluster filesystem briefly without quorum.
fn is_transient_text(lower: &str) -> bool {
    (lower.contains("can't lock file") && lower.contains("got timeout"))
        || lower.contains("got no worker upid")
        || lower.contains("cluster not ready - no quorum")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_proxmox_texts() {
        let cases = [
            (500, "VM is locked (clone)", ErrorKind::Locked),
            (
                500,
                "can't lock file '/var/lock/qemu-server/lock-101.conf' - got timeout",
                ErrorKind::Transient,
            ),
            (
                500,
                "got no worker upid - start worker failed",
                ErrorKind::Transient,
            ),
            (
                500,
                "Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist",
                ErrorKind::NotFound,
            ),
            (
                500,
                "unable to create VM 101: config file already exists",
                ErrorKind::AlreadyExists,
            ),
            (400, "Parameter verification failed.", ErrorKind::Validation),
            (400, "no such task", ErrorKind::NotFound),
            (
                403,
                "Permission check failed (/vms/100, VM.Audit)",
                ErrorKind::Permission,
            ),
            (401, "Authentication failed!", ErrorKind::Unauthorized),
            (
                501,
                "Method 'GET /nope' not implemented",
                ErrorKind::NotImplemented,
            ),
            (503, "Service Unavailable", ErrorKind::Transient),
            (500, "balloon value too large", ErrorKind::Server),
        ];
        for (status, text, kind) in cases {
            assert_eq!(classify(status, text), kind, "{status} {text}");
        }
    }

    #[test]
    fn display_carries_fields_and_log_tail() {
        let mut e = PveError::new(
            ErrorKind::Validation,
            "POST",
            "/nodes/pve1/qemu/100/clone",
            Some(400),
            "Parameter verification failed.",
        );
        e.field_errors.insert(
            "newid".into(),
            "value does not look like a valid VM ID".into(),
        );
        let text = e.to_string();
        assert!(
            text.contains("newid: value does not look like a valid VM ID"),
            "{text}"
        );
        let t = PveError::task_failed(
            "UPID:x",
            "boom",
            vec!["line 1".into(), "TASK ERROR: boom".into()],
        );
        assert!(t.to_string().contains("TASK ERROR: boom"));
    }
}
