//! `[pve]`: how to reach the Proxmox VE API, and how patient to be with it.

use std::path::PathBuf;
use std::time::Duration;

use proxflow_runtime::config::{ConfigError, Secret, Validate};
use serde::{Deserialize, Serialize};

/// Connection, authentication, TLS and retry settings for one Proxmox VE node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PveConfig {
    /// Base URL of pveproxy, without `/api2/json` (`https://pve1.example:8006`).
    pub url: String,
    /// The node every VM lives on (the seed runs a single host).
    pub node: String,
    /// API token id, `USER@REALM!TOKENID` (create it with `pveum user token add`).
    pub token_id: String,
    /// The token's secret (a UUID shown once at creation). Never logged.
    pub token_secret: Secret,
    /// PEM file with the CA that signed the node certificate (`/etc/pve/pve-root-ca.pem`).
    pub ca_file: Option<PathBuf>,
    /// SHA-256 fingerprint of the node certificate, `AA:BB:…` as Proxmox shows it; pins exactly that certificate.
    pub fingerprint: Option<String>,
    /// Skip certificate verification entirely. Logged as a warning at every start; for labs only.
    pub insecure: bool,
    /// TCP + TLS connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Whole-request timeout. pveproxy gives up on a proxied call after 30 s, so waiting longer gains nothing.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Attempts per call for transient failures (connection refused, lock timeouts); 1 disables retries.
    pub retry_attempts: u32,
    /// First retry delay; doubles per attempt, with full jitter.
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    /// Ceiling for one retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Longest pause between two task status polls (polling starts faster and backs off to this).
    #[serde(with = "humantime_serde")]
    pub task_poll_max: Duration,
    /// Default deadline for waiting on a task (clone, start, snapshot, …).
    #[serde(with = "humantime_serde")]
    pub task_timeout: Duration,
    /// How long a just-created UPID may answer `no such task` before that is believed (Proxmox registers
    /// the worker slightly after returning its UPID).
    #[serde(with = "humantime_serde")]
    pub fresh_task_grace: Duration,
}

impl Default for PveConfig {
    fn default() -> Self {
        Self {
            url: "https://127.0.0.1:8006".into(),
            node: "pve1".into(),
            token_id: "root@pam!proxflow".into(),
            token_secret: Secret::default(),
            ca_file: None,
            fingerprint: None,
            insecure: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry_attempts: 5,
            retry_base: Duration::from_millis(200),
            retry_max: Duration::from_secs(5),
            task_poll_max: Duration::from_secs(1),
            task_timeout: Duration::from_secs(600),
            fresh_task_grace: Duration::from_secs(5),
        }
    }
}

impl PveConfig {
    /// Validates under a section name (`pve`), so errors name the full key.
    pub fn validate_at(&self, section: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{section}.{k}");
        let url = self.url.trim_end_matches('/');
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() < 10 {
            return Err(ConfigError::value(
                key("url"),
                format!(
                    "'{}' is not an http(s) URL such as https://pve1:8006",
                    self.url
                ),
            ));
        }
        if url.ends_with("/api2/json") {
            return Err(ConfigError::value(
                key("url"),
                "give the base URL without /api2/json; the client adds it",
            ));
        }
        if self.node.is_empty() {
            return Err(ConfigError::value(
                key("node"),
                "must name the Proxmox node",
            ));
        }
        if !valid_token_id(&self.token_id) {
            return Err(ConfigError::value(
                key("token_id"),
                format!(
                    "'{}' is not USER@REALM!TOKENID (e.g. root@pam!proxflow)",
                    self.token_id
                ),
            ));
        }
        if self.token_secret.is_empty() {
            return Err(ConfigError::value(
                key("token_secret"),
                format!(
                    "is required; set PROXFLOW_{}__TOKEN_SECRET or use a credentials file",
                    section.to_uppercase()
                ),
            ));
        }
        if let Some(fp) = &self.fingerprint
            && crate::tls::parse_fingerprint(fp).is_none()
        {
            return Err(ConfigError::value(
                key("fingerprint"),
                "must be 32 hex bytes separated by colons (AA:BB:…), as `pvenode cert info` prints it",
            ));
        }
        let chosen = [
            self.ca_file.is_some(),
            self.fingerprint.is_some(),
            self.insecure,
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if chosen > 1 {
            return Err(ConfigError::value(
                key("insecure"),
                "choose one of ca_file, fingerprint or insecure",
            ));
        }
        if self.retry_attempts == 0 {
            return Err(ConfigError::value(
                key("retry_attempts"),
                "must be at least 1 (1 = no retries)",
            ));
        }
        for (k, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("task_poll_max", self.task_poll_max),
            ("task_timeout", self.task_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::value(key(k), "must be greater than zero"));
            }
        }
        Ok(())
    }
}

impl Validate for PveConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_at("pve")
    }
}

/// `USER@REALM!TOKENID` as Proxmox's token parser accepts it.
fn valid_token_id(id: &str) -> bool {
    let Some((user_realm, token)) = id.rsplit_once('!') else {
        return false;
    };
    let Some((user, realm)) = user_realm.rsplit_once('@') else {
        return false;
    };
    let name_ok = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    !user.is_empty()
        && !user
            .chars()
            .any(|c| c.is_whitespace() || c == ':' || c == '/')
        && name_ok(realm)
        && name_ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> PveConfig {
        PveConfig {
            token_secret: Secret::new("s3cr3t"),
            ..PveConfig::default()
        }
    }

    #[test]
    fn defaults_need_only_a_secret() {
        assert!(PveConfig::default().validate().is_err());
        valid().validate().expect("valid");
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let cases: Vec<(PveConfig, &str)> = vec![
            (
                PveConfig {
                    url: "pve1:8006".into(),
                    ..valid()
                },
                "pve.url",
            ),
            (
                PveConfig {
                    url: "https://pve1:8006/api2/json".into(),
                    ..valid()
                },
                "pve.url",
            ),
            (
                PveConfig {
                    token_id: "root@pam".into(),
                    ..valid()
                },
                "pve.token_id",
            ),
            (
                PveConfig {
                    fingerprint: Some("AA:BB".into()),
                    ..valid()
                },
                "pve.fingerprint",
            ),
            (
                PveConfig {
                    insecure: true,
                    ca_file: Some("/etc/pve/pve-root-ca.pem".into()),
                    ..valid()
                },
                "pve.insecure",
            ),
            (
                PveConfig {
                    retry_attempts: 0,
                    ..valid()
                },
                "pve.retry_attempts",
            ),
        ];
        for (cfg, key) in cases {
            let err = cfg.validate().expect_err(key).to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn token_ids() {
        assert!(valid_token_id("root@pam!proxflow"));
        assert!(valid_token_id("automation@pve!ci-01"));
        assert!(!valid_token_id("root@pam!1abc"));
        assert!(!valid_token_id("root!tok"));
        assert!(!valid_token_id("ro ot@pam!tok"));
    }
}
