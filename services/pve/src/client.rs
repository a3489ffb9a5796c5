//! The HTTP core: one authenticated, traced, retrying call to `/api2/json`.
//!
//! Retry policy, the part that keeps automation from doing things twice:
//! - a failure *before* the request left (connect refused, TLS handshake) is retried for every method;
//! - Proxmox's "nothing happened, try again" answers (`can't lock file … got timeout`, `got no worker
//!   upid`, 502/503/504/59x) are retried for every method;
//! - a timeout or reset *after* the request left is retried only for GET. For POST/PUT/DELETE the
//!   outcome is unknown, and the call fails with [`ErrorKind::OutcomeUnknown`] so the caller looks at
//!   the state before deciding (see [`crate::PveClient::dispatch_task`]).
//!
//! Delays are exponential with full jitter, so fifty workers contending for one VM lock spread out
//! instead of retrying in lockstep.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use proxflow_runtime::backoff::Backoff;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::{Instrument, field};

use crate::config::PveConfig;
use crate::error::{ErrorKind, PveError, classify};
use crate::tls;

/// Parameters of one call, in order; sent as query string (GET/DELETE) or form body (POST/PUT).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// No parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one parameter.
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.0.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds a parameter when it has a value.
    pub fn opt(self, key: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }

    /// Adds a boolean as Proxmox expects it on the wire (`0`/`1`; `true` is rejected by form decoding).
    pub fn flag(self, key: &str, value: bool) -> Self {
        self.set(key, if value { "1" } else { "0" })
    }

    /// The pairs, for inspection.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// A Proxmox VE API client for one node. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct PveClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    api: String,
    auth: HeaderValue,
    node: String,
    token_id: String,
    config: PveConfig,
}

impl fmt::Debug for PveClient {
    // Written by hand so the Authorization header (it holds the secret) can never be printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PveClient")
            .field("api", &self.inner.api)
            .field("node", &self.inner.node)
            .field("token_id", &self.inner.token_id)
            .field("token_secret", &self.inner.config.token_secret)
            .finish()
    }
}

impl PveClient {
    /// Builds a client from validated configuration. TLS: `ca_file` trusts that CA, `fingerprint`
    /// pins the leaf certificate, `insecure` trusts anything (warned), none of them uses the system roots.
    pub fn new(config: &PveConfig) -> Result<Self, PveError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("proxflow/", env!("CARGO_PKG_VERSION")));
        let verifier = match (&config.fingerprint, config.insecure) {
            (Some(fp), _) => Some(tls::CertVerifier::pinned(
                tls::parse_fingerprint(fp).ok_or_else(|| {
                    PveError::setup(format!(
                        "pve.fingerprint '{fp}' is not a SHA-256 fingerprint"
                    ))
                })?,
            )),
            (None, true) => {
                tracing::warn!(
                    url = %config.url,
                    "pve.insecure is set: the Proxmox certificate is NOT verified; pin pve.fingerprint instead"
                );
                Some(tls::CertVerifier::insecure())
            }
            (None, false) => None,
        };
        if let Some(verifier) = verifier {
            let tls = tls::client_config(Arc::new(verifier))
                .map_err(|e| PveError::setup(format!("TLS setup: {e}")))?;
            builder = builder.tls_backend_preconfigured(tls);
        } else if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                PveError::setup(format!("reading pve.ca_file {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                PveError::setup(format!("pve.ca_file {} is not PEM: {e}", path.display()))
            })?;
            if certs.is_empty() {
                return Err(PveError::setup(format!(
                    "pve.ca_file {} holds no certificate",
                    path.display()
                )));
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| PveError::setup(format!("building the HTTP client: {e}")))?;
        let mut auth = HeaderValue::from_str(&format!(
            "PVEAPIToken={}={}",
            config.token_id,
            config.token_secret.expose()
        ))
        .map_err(|_| {
            PveError::setup(
                "pve.token_id or pve.token_secret holds characters not allowed in a header",
            )
        })?;
        auth.set_sensitive(true);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                api: format!("{}/api2/json", config.url.trim_end_matches('/')),
                auth,
                node: config.node.clone(),
                token_id: config.token_id.clone(),
                config: config.clone(),
            }),
        })
    }

    /// The node this client manages.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The token id (`user@realm!token`): the `user` of every task this client starts.
    pub fn token_id(&self) -> &str {
        &self.inner.token_id
    }

    pub(crate) fn config(&self) -> &PveConfig {
        &self.inner.config
    }

    /// One call, decoded into `T` from the `data` member.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        params: &Params,
    ) -> Result<T, PveError> {
        let data = self.call_value(method.clone(), path, params).await?;
        serde_json::from_value(data).map_err(|e| {
            PveError::new(
                ErrorKind::Decode,
                method.as_str(),
                path,
                Some(200),
                format!("unexpected response shape: {e}"),
            )
        })
    }

    /// One call, returning the raw `data` member (`null` for void methods).
    pub async fn call_value(
        &self,
        method: Method,
        path: &str,
        params: &Params,
    ) -> Result<Value, PveError> {
        let mut envelope = self.call_envelope(method, path, params).await?;
        Ok(envelope
            .get_mut("data")
            .map(Value::take)
            .unwrap_or(Value::Null))
    }

    /// One call, returning the whole response body (`{"data": …, "total": …}`), for the few calls whose
    /// envelope carries more than `data` (task logs).
    pub async fn call_envelope(
        &self,
        method: Method,
        path: &str,
        params: &Params,
    ) -> Result<Value, PveError> {
        let vmid = vmid_in(path);
        let span = tracing::info_span!(
            "pve.request",
            otel.name = %format!("pve {method} {}", template_of(path)),
            otel.kind = "client",
            otel.status_code = field::Empty,
            http.request.method = %method,
            pve.path = %path,
            pve.vmid = field::Empty,
            pve.upid = field::Empty,
            pve.attempts = field::Empty,
            outcome = field::Empty,
        );
        if let Some(vmid) = vmid {
            span.record("pve.vmid", vmid);
        }
        let result = self
            .call_with_retries(&method, path, params, &span)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(envelope) => {
                let data = envelope.get("data").and_then(Value::as_str);
                if let Some(upid) = data.filter(|s| s.starts_with("UPID:")) {
                    span.record("pve.upid", upid);
                }
                span.record("outcome", "ok");
            }
            Err(e) => {
                span.record("outcome", field::debug(e.kind));
                span.record("otel.status_code", "ERROR");
                tracing::debug!(parent: &span, error = %e, "Proxmox call failed");
            }
        }
        result
    }

    async fn call_with_retries(
        &self,
        method: &Method,
        path: &str,
        params: &Params,
        span: &tracing::Span,
    ) -> Result<Value, PveError> {
        let cfg = &self.inner.config;
        let attempts = cfg.retry_attempts.max(1);
        // Full jitter: many workflows hitting one busy Proxmox must not retry in lock-step. Only the
        // attempt count bounds the loop; each attempt has its own request timeout.
        let mut retries = Backoff {
            base: cfg.retry_base,
            max: cfg.retry_max,
            attempts,
            deadline: Duration::MAX,
        }
        .start();
        // The first attempt: at once.
        let mut attempt = retries.next().await.unwrap_or(1);
        loop {
            let result = self.attempt(method, path, params, span).await;
            span.record("pve.attempts", attempt);
            match result {
                Err(e) if e.is_transient() && attempt < attempts => {
                    tracing::info!(attempt, error = %e.message, "transient Proxmox failure; retrying");
                    match retries.next().await {
                        Some(next) => attempt = next,
                        None => return Err(e),
                    }
                }
                other => return other,
            }
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        params: &Params,
        span: &tracing::Span,
    ) -> Result<Value, PveError> {
        let encoded = serde_urlencoded::to_string(params.pairs()).map_err(|e| {
            PveError::new(ErrorKind::Setup, method.as_str(), path, None, e.to_string())
        })?;
        let in_query = *method == Method::GET || *method == Method::DELETE;
        let url = if in_query && !encoded.is_empty() {
            format!("{}{path}?{encoded}", self.inner.api)
        } else {
            format!("{}{path}", self.inner.api)
        };
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, self.inner.auth.clone());
        proxflow_runtime::telemetry::inject_http(span, &mut headers);
        let mut request = self
            .inner
            .http
            .request(method.clone(), &url)
            .headers(headers);
        if !in_query {
            request = request
                .header(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                )
                .body(encoded);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Err(transport_error(method, path, &e)),
        };
        let status = response.status();
        let reason = response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .and_then(|r| std::str::from_utf8(r.as_bytes()).ok().map(str::to_string))
            .or_else(|| status.canonical_reason().map(str::to_string))
            .unwrap_or_default();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(transport_error(method, path, &e)),
        };
        decode_response(method, path, status, &reason, &body)
    }
}

/// What an answer of Proxmox comes to: the JSON body of a 2xx (`null` when empty), else the error
/// it describes. Total over any status and any bytes: whatever a server (or something posing as
/// one) sends, this returns, never panics.
pub fn decode_response(
    method: &Method,
    path: &str,
    status: StatusCode,
    reason: &str,
    body: &[u8],
) -> Result<Value, PveError> {
    let json: Option<Value> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(body).ok()
    };
    if status.is_success() {
        return match json {
            Some(v) => Ok(v),
            None if body.is_empty() => Ok(Value::Null),
            None => Err(PveError::new(
                ErrorKind::Decode,
                method.as_str(),
                path,
                Some(status.as_u16()),
                format!("response is not JSON: {}", snippet(body)),
            )),
        };
    }
    Err(error_response(method, path, status, reason, json.as_ref()))
}

/// Decodes a non-2xx answer. Prefers the body `message` (full die text, http-server ≥ 5.2), falls back
/// to the reason phrase (older 8.x put the text only there).
fn error_response(
    method: &Method,
    path: &str,
    status: StatusCode,
    reason: &str,
    body: Option<&Value>,
) -> PveError {
    let message = body
        .and_then(|b| b.get("message"))
        .and_then(Value::as_str)
        .map(|m| m.trim_end().to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| reason.to_string());
    let field_errors: BTreeMap<String, String> = body
        .and_then(|b| b.get("errors"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let text = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    (k.clone(), text.trim_end().to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let all_text = std::iter::once(message.as_str())
        .chain(field_errors.values().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let mut err = PveError::new(
        classify(status.as_u16(), &all_text),
        method.as_str(),
        path,
        Some(status.as_u16()),
        message,
    );
    err.field_errors = field_errors;
    err
}

fn transport_error(method: &Method, path: &str, e: &reqwest::Error) -> PveError {
    // Walk the source chain: the interesting part (connection refused, certificate mismatch) is inside.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    let sent = !e.is_connect() && !e.is_builder();
    let kind = if !sent || *method == Method::GET {
        ErrorKind::Transient
    } else {
        ErrorKind::OutcomeUnknown
    };
    if message.contains("certificate") || message.contains("fingerprint") {
        // A TLS trust failure never heals by retrying.
        return PveError::new(ErrorKind::Setup, method.as_str(), path, None, message);
    }
    PveError::new(kind, method.as_str(), path, None, message)
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(200).collect()
}

/// The VMID in a `/nodes/{node}/qemu/{vmid}/…` path, for the span.
fn vmid_in(path: &str) -> Option<u32> {
    let mut parts = path.split('/');
    while let Some(p) = parts.next() {
        if p == "qemu" {
            return parts.next().and_then(|v| v.parse().ok());
        }
    }
    None
}

/// The path with node, VMID, UPID and snapshot names replaced by placeholders: a low-cardinality span name.
fn template_of(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    let mut out = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        let prev = if i > 0 { parts[i - 1] } else { "" };
        out.push(match prev {
            "nodes" => "{node}",
            "qemu" if !p.is_empty() => "{vmid}",
            "tasks" => "{upid}",
            "snapshot" => "{snapname}",
            "storage" if !p.is_empty() => "{storage}",
            _ => p,
        });
    }
    out.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_become_templates() {
        assert_eq!(
            template_of("/nodes/pve1/qemu/101/snapshot/pre-patch/rollback"),
            "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback"
        );
        assert_eq!(template_of("/cluster/nextid"), "/cluster/nextid");
        assert_eq!(vmid_in("/nodes/pve1/qemu/101/config"), Some(101));
        assert_eq!(vmid_in("/nodes/pve1/qemu"), None);
    }

    #[test]
    fn params_encode_booleans_as_perl_does() {
        let p = Params::new()
            .flag("full", true)
            .opt("pool", None::<&str>)
            .set("newid", 101);
        assert_eq!(
            p.pairs(),
            &[
                ("full".to_string(), "1".to_string()),
                ("newid".to_string(), "101".to_string())
            ]
        );
    }
}
