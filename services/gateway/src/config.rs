//! Gateway settings (`[gateway]`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use proxflow_runtime::config::{ConfigError, Secret, Validate};
use proxflow_runtime::serve::HttpLimits;
use proxflow_schemas::names::WEBHOOK_ID_TTL_SECS;
use serde::{Deserialize, Deserializer, Serialize};

use crate::webhook::WebhookKey;

/// Largest `signature_tolerance`: below the 15-minute lifetime of accepted webhook ids, so a delivery
/// stops being fresh before the record that refuses its replay expires.
pub const MAX_SIGNATURE_TOLERANCE: Duration = Duration::from_secs(10 * 60);
const _: () = assert!(MAX_SIGNATURE_TOLERANCE.as_secs() < WEBHOOK_ID_TTL_SECS);

/// Smallest `max_body`: a provisioning request with a few SSH keys is about 2 KiB.
const MIN_BODY: usize = 1024;
/// Shortest bearer token: a guessable token is no authentication.
const MIN_TOKEN_LEN: usize = 16;

/// `[gateway]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Public HTTP listener (webhooks, APIs, plus the ops endpoints). Port 0 picks a free one.
    pub listen: SocketAddr,
    /// Standard Webhooks secrets (`whsec_<base64>`). A signature by any of them is accepted, so a key
    /// is rotated by adding the new one, moving senders over, then removing the old one. In the
    /// environment: `PROXFLOW_GATEWAY__WEBHOOK_SECRETS=whsec_a,whsec_b`.
    #[serde(deserialize_with = "one_or_many")]
    pub webhook_secrets: Vec<Secret>,
    /// Bearer tokens by name (`Authorization: Bearer <token>`), for operators and CI; the name is
    /// recorded as `token:<name>`. The workflow status API accepts only these.
    pub bearer_tokens: BTreeMap<String, Secret>,
    /// Refuse requests without valid credentials. `false` is for local demos only (logged as a
    /// warning at start).
    pub require_auth: bool,
    /// How far a `webhook-timestamp` may be from now (at most 10 minutes).
    #[serde(with = "humantime_serde")]
    pub signature_tolerance: Duration,
    /// Largest accepted request body, bytes.
    pub max_body: usize,
    /// Base URL callers reach the gateway at (behind a proxy), for `Location` and `status_url`;
    /// unset, the listener's own address (never the request's `Host`, which the caller controls).
    pub public_url: Option<String>,
    /// `[gateway.alerts]`: the Alertmanager webhook.
    pub alerts: AlertIngestConfig,
    /// `[gateway.http]`: connection cap, header, body and idle timeouts.
    pub http: HttpLimits,
}

/// `[gateway.alerts]`. Alertmanager cannot sign requests: it authenticates with a bearer token
/// (any of `gateway.bearer_tokens`) or HTTP basic auth (a user here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertIngestConfig {
    /// Basic-auth users and passwords Alertmanager may post as (`basic_auth` in its
    /// `http_config`); recorded as `basic:<user>`.
    pub basic_auth: BTreeMap<String, Secret>,
    /// Largest delivery, bytes (a group of many alerts is large).
    pub max_body: usize,
    /// Alerts being published at once across deliveries; past it a delivery gets 503 and
    /// Alertmanager retries it later (back-pressure instead of unbounded queueing).
    pub max_in_flight: usize,
    /// Of those, what one delivery may hold (at most `max_in_flight`): a big delivery publishes
    /// through its share in turn, so small ones next to it keep flowing.
    pub max_per_delivery: usize,
}

impl Default for AlertIngestConfig {
    fn default() -> Self {
        Self {
            basic_auth: BTreeMap::new(),
            max_body: 1 << 20,
            max_in_flight: 4096,
            max_per_delivery: 512,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            webhook_secrets: Vec::new(),
            bearer_tokens: BTreeMap::new(),
            require_auth: true,
            signature_tolerance: Duration::from_secs(5 * 60),
            max_body: 64 * 1024,
            public_url: None,
            alerts: AlertIngestConfig::default(),
            http: HttpLimits::default(),
        }
    }
}

impl Validate for GatewayConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.http.validate_at("gateway.http")?;
        for (i, secret) in self.webhook_secrets.iter().enumerate() {
            // The error says what is wrong with the shape, never the secret itself.
            WebhookKey::parse(secret).map_err(|e| {
                ConfigError::value(format!("gateway.webhook_secrets[{i}]"), e.to_string())
            })?;
        }
        for (name, token) in &self.bearer_tokens {
            let key = format!("gateway.bearer_tokens.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(ConfigError::value(
                    key,
                    "the name must be letters, digits, '-', '_' or '.' (it is recorded as token:<name>)",
                ));
            }
            let value = token.expose();
            if value.len() < MIN_TOKEN_LEN || !value.chars().all(|c| c.is_ascii_graphic()) {
                return Err(ConfigError::value(
                    key,
                    format!("must be at least {MIN_TOKEN_LEN} visible ASCII characters"),
                ));
            }
        }
        for (user, password) in &self.alerts.basic_auth {
            let key = format!("gateway.alerts.basic_auth.{user}");
            if user.is_empty() || user.contains(':') {
                return Err(ConfigError::value(
                    key,
                    "a user name must be non-empty and without ':'",
                ));
            }
            if password.expose().len() < MIN_TOKEN_LEN {
                return Err(ConfigError::value(
                    key,
                    format!("the password must be at least {MIN_TOKEN_LEN} characters"),
                ));
            }
        }
        if self.alerts.max_body < MIN_BODY || self.alerts.max_in_flight == 0 {
            return Err(ConfigError::value(
                "gateway.alerts",
                format!("max_body must be at least {MIN_BODY} bytes and max_in_flight above zero"),
            ));
        }
        if self.alerts.max_per_delivery == 0 {
            return Err(ConfigError::value(
                "gateway.alerts.max_per_delivery",
                "must be at least 1 (it is capped at max_in_flight)",
            ));
        }
        if self.signature_tolerance.is_zero() || self.signature_tolerance > MAX_SIGNATURE_TOLERANCE
        {
            return Err(ConfigError::value(
                "gateway.signature_tolerance",
                "must be above zero and at most 10m (accepted webhook ids are remembered for 15m)",
            ));
        }
        if self.max_body < MIN_BODY {
            return Err(ConfigError::value(
                "gateway.max_body",
                format!("must be at least {MIN_BODY} bytes"),
            ));
        }
        if let Some(url) = &self.public_url {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(['?', '#', ' '])) {
                return Err(ConfigError::value(
                    "gateway.public_url",
                    "must be an http:// or https:// base URL without query or fragment",
                ));
            }
        }
        Ok(())
    }
}

impl GatewayConfig {
    /// Refuses to serve with `require_auth` and nothing to authenticate with. Checked when the gateway
    /// starts rather than at load, so that `proxflow config` and the client commands work without
    /// the gateway's credentials.
    pub fn check_credentials(&self) -> Result<(), ConfigError> {
        if self.require_auth
            && self.webhook_secrets.is_empty()
            && self.bearer_tokens.is_empty()
            && self.alerts.basic_auth.is_empty()
        {
            return Err(ConfigError::value(
                "gateway.webhook_secrets",
                "gateway.require_auth is on but no credential is configured: set \
                 PROXFLOW_GATEWAY__WEBHOOK_SECRETS=whsec_<base64> (Standard Webhooks secrets, \
                 comma-separated) and/or bearer tokens as PROXFLOW_GATEWAY__BEARER_TOKENS__<NAME>; \
                 require_auth = false only for a local demo",
            ));
        }
        Ok(())
    }

    /// `public_url` without a trailing slash.
    pub fn public_base(&self) -> Option<&str> {
        self.public_url.as_deref().map(|u| u.trim_end_matches('/'))
    }
}

/// A list of secrets, or one string of comma-separated secrets (the form an environment variable has).
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .collect(),
        OneOrMany::Many(v) => v.into_iter().map(Secret::new).collect(),
    };
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut GatewayConfig)) -> Result<(), ConfigError> {
        let mut c = GatewayConfig::default();
        f(&mut c);
        c.validate()
    }

    #[test]
    fn the_defaults_are_valid_but_cannot_serve_without_credentials() {
        let c = GatewayConfig::default();
        c.validate().expect("valid");
        let err = c
            .check_credentials()
            .expect_err("no credentials")
            .to_string();
        assert!(err.contains("PROXFLOW_GATEWAY__WEBHOOK_SECRETS"), "{err}");
        assert!(err.contains("PROXFLOW_GATEWAY__BEARER_TOKENS__"), "{err}");
        let demo = GatewayConfig {
            require_auth: false,
            ..GatewayConfig::default()
        };
        demo.check_credentials().expect("a demo may run without");
    }

    #[test]
    fn bad_values_name_their_key_and_never_the_secret() {
        let err = with(|c| {
            c.webhook_secrets = vec![
                crate::webhook::generate_secret(),
                Secret::new("whsec_c2hvcnQ="),
            ]
        })
        .expect_err("short key")
        .to_string();
        assert!(err.contains("gateway.webhook_secrets[1]"), "{err}");
        assert!(!err.contains("c2hvcnQ"), "{err}");
        let err = with(|c| {
            c.bearer_tokens.insert("ci".into(), Secret::new("short"));
        })
        .expect_err("short token")
        .to_string();
        assert!(err.contains("gateway.bearer_tokens.ci"), "{err}");
        assert!(!err.contains("short\""), "{err}");
        let err = with(|c| c.signature_tolerance = Duration::from_secs(601))
            .expect_err("too long")
            .to_string();
        assert!(err.contains("gateway.signature_tolerance"), "{err}");
        let err = with(|c| c.max_body = 10)
            .expect_err("too small")
            .to_string();
        assert!(err.contains("gateway.max_body"), "{err}");
        let err = with(|c| c.public_url = Some("gateway.example".into()))
            .expect_err("no scheme")
            .to_string();
        assert!(err.contains("gateway.public_url"), "{err}");
        with(|c| c.public_url = Some("https://gw.example/proxflow/".into())).expect("valid");
    }

    #[test]
    fn secrets_come_as_a_list_or_a_comma_separated_string() {
        let a = crate::webhook::generate_secret();
        let b = crate::webhook::generate_secret();
        let from_string: GatewayConfig = serde_json::from_value(serde_json::json!({
            "webhook_secrets": format!("{}, {}", a.expose(), b.expose())
        }))
        .expect("string");
        assert_eq!(from_string.webhook_secrets, vec![a.clone(), b.clone()]);
        let from_list: GatewayConfig = serde_json::from_value(serde_json::json!({
            "webhook_secrets": [a.expose(), b.expose()]
        }))
        .expect("list");
        assert_eq!(from_list.webhook_secrets, vec![a, b]);
    }
}
