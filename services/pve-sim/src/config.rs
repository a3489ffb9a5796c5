//! Simulator configuration: where it listens, how it authenticates, how fast simulated time runs
//! and which faults it injects. `Default` is the seed platform on `127.0.0.1:8006` over TLS, so
//! `proxflow sim` with no configuration behaves like the host the project targets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use proxflow_runtime::config::{ConfigError, Secret, Validate};
use serde::{Deserialize, Serialize};

/// Development-only token secret; a real deployment never talks to the simulator.
pub const DEV_TOKEN_SECRET: &str = "proxflow-dev-secret";

/// Everything `start` needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Listen address; port 0 picks a free port (see `RunningSim::base_url`).
    pub listen: SocketAddr,
    /// Serve HTTPS with a certificate generated at start (as pveproxy does); `false` for plain HTTP.
    pub tls: bool,
    /// The official schema file; `None` searches as `ApiSchema::locate` does.
    pub schema: Option<PathBuf>,
    /// A scenario TOML describing the starting platform; `None` is the built-in seed.
    pub scenario: Option<PathBuf>,
    /// The one accepted API token id, `user@realm!tokenid`.
    pub token_id: String,
    /// Its secret. The default `proxflow-dev-secret` is for development only.
    pub token_secret: Secret,
    /// Multiplies every simulated duration (tasks, guest agent boot); 0 completes tasks at once
    /// (still asynchronously) and makes load curves jump to their last point.
    pub time_scale: f64,
    /// How long each kind of task takes at `time_scale` 1.
    pub durations: TaskDurations,
    /// Seed of the random generator behind MAC addresses, UUIDs and fault draws, so a run can be
    /// replayed.
    pub seed: u64,
    /// Faults injected from the start (changeable at runtime through the control API).
    pub faults: Faults,
    /// The request journal (`/_sim/journal`, the contract check) keeps at most this many of the
    /// newest requests …
    pub journal_max_entries: usize,
    /// … and at most about this many bytes of them (their parameters and answers as JSON), so a
    /// long-running simulator stays bounded whatever it answers.
    pub journal_max_bytes: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8006)),
            tls: true,
            schema: None,
            scenario: None,
            token_id: "root@pam!proxflow".into(),
            token_secret: Secret::new(DEV_TOKEN_SECRET),
            time_scale: 1.0,
            durations: TaskDurations::default(),
            seed: 1,
            faults: Faults::default(),
            journal_max_entries: 10_000,
            journal_max_bytes: 16 << 20,
        }
    }
}

/// Duration of each task type at `time_scale` 1 (estimates for local ZFS, see the API reference).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskDurations {
    /// `qmclone`.
    #[serde(with = "humantime_serde")]
    pub clone: Duration,
    /// `qmstart`.
    #[serde(with = "humantime_serde")]
    pub start: Duration,
    /// `qmshutdown`.
    #[serde(with = "humantime_serde")]
    pub shutdown: Duration,
    /// `qmstop`.
    #[serde(with = "humantime_serde")]
    pub stop: Duration,
    /// `qmreboot`.
    #[serde(with = "humantime_serde")]
    pub reboot: Duration,
    /// `qmconfig` (asynchronous POST config).
    #[serde(with = "humantime_serde")]
    pub config: Duration,
    /// `resize`.
    #[serde(with = "humantime_serde")]
    pub resize: Duration,
    /// `qmsnapshot`.
    #[serde(with = "humantime_serde")]
    pub snapshot: Duration,
    /// `qmdelsnapshot`.
    #[serde(with = "humantime_serde")]
    pub delsnapshot: Duration,
    /// `qmrollback`.
    #[serde(with = "humantime_serde")]
    pub rollback: Duration,
    /// `qmdestroy`.
    #[serde(with = "humantime_serde")]
    pub destroy: Duration,
    /// `aptupdate`.
    #[serde(with = "humantime_serde")]
    pub aptupdate: Duration,
    /// How long a rebooting node is down (answering 503) between shutting its VMs down and
    /// starting the `onboot` ones.
    #[serde(with = "humantime_serde")]
    pub node_reboot: Duration,
    /// How long a guest's `apt-get -y dist-upgrade` (through the agent's exec) runs.
    #[serde(with = "humantime_serde")]
    pub guest_upgrade: Duration,
    /// From a finished start until the guest agent answers.
    #[serde(with = "humantime_serde")]
    pub agent_boot: Duration,
    /// How often pvestatd broadcasts the usage figures `/cluster/resources` shows (they are up to
    /// this old); 0 keeps them current.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// How long pveproxy holds a request that failed authentication before its 401.
    #[serde(with = "humantime_serde")]
    pub auth_failure: Duration,
}

impl Default for TaskDurations {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            clone: ms(2000),
            start: ms(1000),
            shutdown: ms(2000),
            stop: ms(500),
            reboot: ms(2000),
            config: ms(200),
            resize: ms(300),
            snapshot: ms(1000),
            delsnapshot: ms(500),
            rollback: ms(1000),
            destroy: ms(1000),
            aptupdate: ms(3000),
            node_reboot: ms(60_000),
            guest_upgrade: ms(20_000),
            agent_boot: ms(5000),
            status_interval: ms(10_000),
            auth_failure: ms(3000),
        }
    }
}

/// Injected faults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added to every `/api2/json` request.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Per endpoint, keyed `"METHOD /schema/template"`, e.g.
    /// `"POST /nodes/{node}/qemu/{vmid}/clone"`.
    pub endpoints: BTreeMap<String, EndpointFault>,
    /// Task type (`qmclone`, `qmstart`, ...) -> error text its tasks end with.
    pub task_failures: BTreeMap<String, String>,
    /// Task type -> number of warnings its (successful) tasks log (`WARNINGS: n`).
    pub task_warnings: BTreeMap<String, u32>,
    /// VMs whose guest agent never answers.
    pub agent_never_up: Vec<u32>,
    /// A fresh UPID answers 400 `no such task` on its first status or log read, like the short
    /// window before a real worker is visible.
    pub fresh_upid_unknown: bool,
}

/// Faults of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointFault {
    /// Probability (0..=1) of a 500 with a generic error message.
    pub error_rate: f64,
    /// Probability (0..=1) of a 500 `can't lock file ... - got timeout`.
    pub lock_contention_rate: f64,
    /// The next N calls fail with lock contention, deterministically (counts down).
    pub fail_next: u32,
    /// Added to this endpoint's requests (on top of `Faults::latency`).
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
}

impl Validate for SimConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.time_scale.is_finite() || self.time_scale < 0.0 {
            return Err(ConfigError::value(
                "time_scale",
                format!("{} is not a finite number >= 0", self.time_scale),
            ));
        }
        if self.journal_max_entries == 0 || self.journal_max_bytes < 4096 {
            return Err(ConfigError::value(
                "journal_max_entries",
                "the journal needs room for at least one entry and 4096 bytes",
            ));
        }
        if let Err(why) = parse_token_id(&self.token_id) {
            return Err(ConfigError::value("token_id", why.to_string()));
        }
        if self.token_secret.is_empty() {
            return Err(ConfigError::value("token_secret", "must not be empty"));
        }
        if self.token_secret.expose().contains(char::is_whitespace) {
            return Err(ConfigError::value(
                "token_secret",
                "must not contain white space",
            ));
        }
        self.faults.validate_at("faults")
    }
}

impl Faults {
    /// Checks the faults configured under `key`.
    pub fn validate_at(&self, key: &str) -> Result<(), ConfigError> {
        for (endpoint, fault) in &self.endpoints {
            let at = format!("{key}.endpoints.\"{endpoint}\"");
            let well_formed = endpoint.split_once(' ').is_some_and(|(m, p)| {
                matches!(m, "GET" | "POST" | "PUT" | "DELETE") && p.starts_with('/')
            });
            if !well_formed {
                return Err(ConfigError::value(
                    at,
                    "key must be \"METHOD /schema/path\", e.g. \"POST /nodes/{node}/qemu/{vmid}/clone\"",
                ));
            }
            for (name, rate) in [
                ("error_rate", fault.error_rate),
                ("lock_contention_rate", fault.lock_contention_rate),
            ] {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(ConfigError::value(
                        format!("{at}.{name}"),
                        format!("{rate} is not a probability between 0 and 1"),
                    ));
                }
            }
        }
        for (task, text) in &self.task_failures {
            if text.trim().is_empty() {
                return Err(ConfigError::value(
                    format!("{key}.task_failures.{task}"),
                    "the error text must not be empty (it becomes the task's exit status)",
                ));
            }
        }
        if let Some(vmid) = self.agent_never_up.iter().find(|v| **v < 100) {
            return Err(ConfigError::value(
                format!("{key}.agent_never_up"),
                format!("{vmid} is not a VM id (100 or above)"),
            ));
        }
        Ok(())
    }
}

/// A token id that is not `user@realm!tokenid` by Proxmox's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' is not an API token id of the form user@realm!tokenid (realm and token id start with a letter)"
)]
pub(crate) struct InvalidTokenId(String);

/// The parts of `user@realm!tokenid`, checked with Proxmox's token-id rules.
pub(crate) fn parse_token_id(id: &str) -> Result<(&str, &str, &str), InvalidTokenId> {
    let bad = || InvalidTokenId(id.to_owned());
    let (userid, token) = id.rsplit_once('!').ok_or_else(bad)?;
    let (user, realm) = userid.rsplit_once('@').ok_or_else(bad)?;
    let name_ok = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.len() >= 2
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    let user_ok =
        !user.is_empty() && !user.contains(|c: char| c.is_whitespace() || c == ':' || c == '/');
    if user_ok && name_ok(realm) && name_ok(token) {
        Ok((user, realm, token))
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let config = SimConfig::default();
        assert_eq!(config.validate().map_err(|e| e.to_string()), Ok(()));
        let text = toml::to_string(&SimConfig {
            token_secret: Secret::default(),
            ..config.clone()
        })
        .expect("serialises");
        assert!(text.contains("clone = \"2s\""), "{text}");
        let back: SimConfig = toml::from_str(&text).expect("parses");
        assert_eq!(back.durations, config.durations);
        assert_eq!(back.listen, config.listen);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = toml::from_str::<SimConfig>("time_scal = 1.0").expect_err("typo");
        assert!(err.to_string().contains("time_scal"), "{err}");
        let err = toml::from_str::<SimConfig>("[durations]\nclone = \"soon\"").expect_err("bad");
        assert!(err.to_string().contains("clone"), "{err}");

        let bad = |c: SimConfig| c.validate().expect_err("invalid").to_string();
        let e = bad(SimConfig {
            time_scale: -1.0,
            ..SimConfig::default()
        });
        assert!(e.contains("time_scale"), "{e}");
        let e = bad(SimConfig {
            time_scale: f64::NAN,
            ..SimConfig::default()
        });
        assert!(e.contains("time_scale"), "{e}");
        let e = bad(SimConfig {
            token_id: "root@pam".into(),
            ..SimConfig::default()
        });
        assert!(e.contains("token_id"), "{e}");
        let mut faults = Faults::default();
        faults.endpoints.insert(
            "POST /nodes/{node}/qemu/{vmid}/clone".into(),
            EndpointFault {
                error_rate: 1.5,
                ..EndpointFault::default()
            },
        );
        let e = bad(SimConfig {
            faults,
            ..SimConfig::default()
        });
        assert!(e.contains("error_rate"), "{e}");
        let mut faults = Faults::default();
        faults
            .endpoints
            .insert("clone".into(), EndpointFault::default());
        assert!(faults.validate_at("faults").is_err());
    }

    #[test]
    fn token_ids_parse_like_proxmox() {
        assert_eq!(
            parse_token_id("root@pam!proxflow"),
            Ok(("root", "pam", "proxflow"))
        );
        assert!(parse_token_id("root@pam!1x").is_err());
        assert!(parse_token_id("ro ot@pam!tok").is_err());
        assert!(parse_token_id("root!tok").is_err());
    }
}
