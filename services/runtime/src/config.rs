//! Configuration loading and the sections every service shares.
//!
//! Precedence, lowest first: built-in defaults (they run the seed's single-host platform) < a TOML file
//! (`--config` or `PROXFLOW_CONFIG`) < `PROXFLOW_*` environment variables, where `__` separates levels
//! (`PROXFLOW_GATEWAY__LISTEN=0.0.0.0:8080`). Unknown keys are errors, not ignored: a typo in a safety
//! setting must never silently fall back to a default. Errors name the key and where the bad value came
//! from, and the binary exits non-zero on them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

/// Prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "PROXFLOW_";
/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_PATH_ENV: &str = "PROXFLOW_CONFIG";
/// Documented shorthand for `PROXFLOW_NATS__URL` (`proxflow dev` uses an external server when it is set).
pub const NATS_URL_ENV: &str = "PROXFLOW_NATS_URL";

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Parsing or merging failed; one line per offending key.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    /// A value parsed but is not acceptable.
    #[error("invalid configuration:\n  {key}: {message}")]
    Value {
        /// Dotted key, e.g. `nats.replicas`.
        key: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
}

impl ConfigError {
    /// A semantic error on one key.
    pub fn value(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Value {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Checks a configuration once it has parsed; run before anything starts.
pub trait Validate {
    /// Returns the first unacceptable value, naming its key.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads `T` from defaults, the optional TOML file and the environment, then validates it.
///
/// `file` is the `--config` argument; when it is `None`, `PROXFLOW_CONFIG` is consulted. A named file
/// that does not exist is an error (a typo in a path must not run the defaults against production).
pub fn load<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Default + Validate,
{
    let file = file
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os(CONFIG_PATH_ENV).map(PathBuf::from));
    // Defaults come from `#[serde(default)]` on every section, not from serialising `T::default()`:
    // a `Secret` serialises as `<redacted>`, which would replace a non-empty default secret.
    let mut figment = Figment::new();
    if let Some(path) = &file {
        figment = figment.merge(Toml::file_exact(path));
    }
    let figment = figment.merge(
        Env::prefixed(ENV_PREFIX)
            // The config path is an argument, not a setting.
            .ignore(&["CONFIG"])
            .map(|key| {
                if key == "nats_url" {
                    "nats.url".into()
                } else {
                    key.as_str().replace("__", ".").into()
                }
            })
            // Global: `Env::prefixed` would otherwise bind to the default profile only.
            .global(),
    );
    let config: T = figment.extract().map_err(describe)?;
    config.validate()?;
    Ok(config)
}

/// Turns figment's error chain into one line per key: `key: problem (from <source>)`.
fn describe(error: figment::Error) -> ConfigError {
    ConfigError::Invalid(
        error
            .into_iter()
            .map(|e| {
                let key = if e.path.is_empty() {
                    "<top level>".to_owned()
                } else {
                    e.path.join(".")
                };
                let source = match e.metadata.as_ref() {
                    Some(m) if m.source.is_some() => {
                        format!(
                            " (from {})",
                            m.source
                                .as_ref()
                                .map(ToString::to_string)
                                .unwrap_or_default()
                        )
                    }
                    // Name the exact variable: "PROXFLOW_ environment variable(s)" sends the
                    // operator hunting through the whole environment.
                    Some(m) if m.name.contains("environment") && !e.path.is_empty() => {
                        format!(" (from environment variable {})", env_variable(&e.path))
                    }
                    Some(m) => format!(" (from {})", m.name),
                    None => String::new(),
                };
                format!("{key}: {}{source}", e.kind)
            })
            .collect(),
    )
}

/// The environment variable that set the value at `path`: `PROXFLOW_<A>__<B>`, or the
/// `PROXFLOW_NATS_URL` shorthand when that is what the operator set.
fn env_variable(path: &[String]) -> String {
    let full = format!("{ENV_PREFIX}{}", path.join("__").to_uppercase());
    if path == ["nats", "url"]
        && std::env::var_os(&full).is_none()
        && std::env::var_os(NATS_URL_ENV).is_some()
    {
        return NATS_URL_ENV.to_owned();
    }
    full
}

/// A secret value: shown as `<redacted>` by `Debug`, `Display` and serialisation, so printing a config
/// or logging an error never leaks it. Read it with [`Secret::expose`] at the single place it is sent.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it was left unset.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

const REDACTED: &str = "<redacted>";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { REDACTED })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "" } else { REDACTED })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { REDACTED })
    }
}

/// Why a `nats.url` entry is not a NATS server URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNatsUrl {
    /// No URL at all.
    #[error("no server URL given")]
    Empty,
    /// An empty entry in a list (`a,,b` or a trailing comma).
    #[error("entry {position} is empty")]
    EmptyEntry {
        /// 1-based position in the list.
        position: usize,
    },
    /// An entry that does not parse.
    #[error("entry {position} `{url}` is not a NATS server URL: {reason}")]
    Malformed {
        /// 1-based position in the list.
        position: usize,
        /// The entry, its credentials redacted.
        url: String,
        /// What the client library said.
        reason: String,
    },
}

/// The servers a process connects to: one URL, or several for a cluster (the client picks one and
/// fails over to the others). Configured as one string, comma-separated for several (the form an
/// environment variable has), or as a TOML list of strings. Every entry is checked when the
/// configuration loads, so a typo is a configuration error naming `nats.url` instead of a start-up
/// that retries an unparseable address until `nats.connect_timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrls(Vec<String>);

impl NatsUrls {
    /// One comma-separated string: `nats://a:4222,nats://b:4222`.
    pub fn parse(text: &str) -> Result<Self, InvalidNatsUrl> {
        Self::from_list(text.split(','))
    }

    /// A list of URLs, each one server.
    pub fn from_list<I, S>(list: I) -> Result<Self, InvalidNatsUrl>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls = list
            .into_iter()
            .enumerate()
            .map(|(i, url)| {
                let url = url.as_ref().trim();
                parse_entry(i + 1, url).map(|_| url.to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?;
        if urls.is_empty() {
            return Err(InvalidNatsUrl::Empty);
        }
        Ok(Self(urls))
    }

    /// `nats://127.0.0.1:<port>`: a server on this host (the embedded one, a test's).
    pub fn local(port: u16) -> Self {
        Self(vec![format!("nats://127.0.0.1:{port}")])
    }

    /// Every URL of both lists, these first.
    pub fn plus(mut self, other: Self) -> Self {
        self.0.extend(other.0);
        self
    }

    /// The URLs as configured.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// The addresses for the client. Checked again here because a `NatsUrls` can also be built
    /// in code; a bad one is an error, never a panic.
    pub fn server_addrs(&self) -> Result<Vec<async_nats::ServerAddr>, InvalidNatsUrl> {
        if self.0.is_empty() {
            return Err(InvalidNatsUrl::Empty);
        }
        self.0
            .iter()
            .enumerate()
            .map(|(i, url)| parse_entry(i + 1, url))
            .collect()
    }
}

/// One entry of a URL list, `position` 1-based.
fn parse_entry(position: usize, url: &str) -> Result<async_nats::ServerAddr, InvalidNatsUrl> {
    if url.is_empty() {
        return Err(InvalidNatsUrl::EmptyEntry { position });
    }
    url.parse()
        .map_err(|e: std::io::Error| InvalidNatsUrl::Malformed {
            position,
            url: redact_userinfo(url),
            reason: e.to_string(),
        })
}

impl Default for NatsUrls {
    fn default() -> Self {
        Self::local(4222)
    }
}

impl std::str::FromStr for NatsUrls {
    type Err = InvalidNatsUrl;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// Comma-separated, credentials redacted: safe for logs and error messages.
impl fmt::Display for NatsUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted: Vec<String> = self.0.iter().map(|u| redact_userinfo(u)).collect();
        f.write_str(&redacted.join(","))
    }
}

/// One URL as a string, several as a list; credentials in a URL print as `<redacted>`, as every
/// [`Secret`] does.
impl Serialize for NatsUrls {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(&redact_userinfo(one)),
            many => serializer.collect_seq(many.iter().map(|u| redact_userinfo(u))),
        }
    }
}

impl<'de> Deserialize<'de> for NatsUrls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let parsed = match OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a URL string (comma-separated for several) or a list of URL strings",
            )
        })? {
            OneOrMany::One(text) => Self::parse(&text),
            OneOrMany::Many(list) => Self::from_list(list),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

/// `nats://user:pass@host` → `nats://user:<redacted>@host`; a lone user part is a token
/// (`nats://token@host`) and is redacted whole.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None => REDACTED.to_owned(),
    };
    format!("{scheme}://{shown}{}", &rest[at..])
}

/// How a service reaches NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s): one, or several for a cluster (a comma-separated string or a list).
    pub url: NatsUrls,
    /// User name (with `password`); the deploy configs give each service its own least-privilege user.
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Secret,
    /// NATS `.creds` file (JWT + nkey seed), an alternative to user/password.
    pub credentials_file: Option<PathBuf>,
    /// Subject prefix of this process's reply inboxes. The deploy configs give each service its own
    /// (`_INBOX_gateway`, ...) so that no user may read another service's replies.
    pub inbox_prefix: String,
    /// Replicas for streams and KV buckets: 1 on a single node, 3 on the production cluster.
    pub replicas: usize,
    /// How long start-up keeps trying to reach the server before giving up with an error.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on each JetStream API request and publish acknowledgement.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Publish attempts on a timeout or "no responders" before the error reaches the caller. Safe because
    /// every publish carries a `Nats-Msg-Id`: a retry of a publish that did land is dropped as a duplicate.
    pub publish_attempts: u32,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: NatsUrls::default(),
            user: None,
            password: Secret::default(),
            credentials_file: None,
            inbox_prefix: "_INBOX".into(),
            replicas: 1,
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
            publish_attempts: 5,
        }
    }
}

impl Validate for NatsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        // Deserialising checked every entry; a value built in code is checked here.
        self.url
            .server_addrs()
            .map_err(|e| ConfigError::value("nats.url", e.to_string()))?;
        if !matches!(self.replicas, 1 | 3 | 5) {
            return Err(ConfigError::value(
                "nats.replicas",
                format!(
                    "{} is not 1, 3 or 5 (JetStream needs an odd quorum)",
                    self.replicas
                ),
            ));
        }
        if self.user.is_some() == self.password.is_empty() {
            return Err(ConfigError::value(
                "nats.password",
                "nats.user and nats.password go together: set both or neither",
            ));
        }
        if self.inbox_prefix.is_empty() || self.inbox_prefix.contains(['.', '*', '>', ' ']) {
            return Err(ConfigError::value(
                "nats.inbox_prefix",
                "must be one subject token: no '.', '*', '>' or spaces",
            ));
        }
        if self.publish_attempts == 0 {
            return Err(ConfigError::value(
                "nats.publish_attempts",
                "must be at least 1",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::value(
                "nats.request_timeout",
                "must be above zero",
            ));
        }
        Ok(())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging and tracing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// `tracing` filter directives; `RUST_LOG` overrides it.
    pub log_level: String,
    /// OTLP/HTTP collector base URL (e.g. `http://jaeger:4318`). `OTEL_EXPORTER_OTLP_ENDPOINT`, when set,
    /// takes precedence, as every OpenTelemetry SDK does.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Human,
            log_level: "info".into(),
            otlp_endpoint: None,
        }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map(drop)
            .map_err(|e| ConfigError::value("telemetry.log_level", e.to_string()))
    }
}

/// The per-process operations endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`; port 0 picks a free one (printed at start).
    pub listen: SocketAddr,
    /// How long shutdown waits for in-flight handlers before handing their messages back to the server.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Validate for OpsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Delivery settings of one durable consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerConfig {
    /// Deliveries before a message that keeps asking for a retry is dead-lettered.
    pub max_deliver: u32,
    /// Delay before the n-th retry (the last value repeats). Applied as a delayed NAK by the runtime,
    /// not as the server's `backoff` list, because the server's list would also replace `ack_wait`.
    #[serde(with = "duration_list")]
    pub retry_backoff: Vec<Duration>,
    /// How long the server waits for an ack before redelivering (a crashed worker's messages come back
    /// after this). Long handlers keep their messages with progress acks sent every third of it.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Messages handled at once by this consumer in this process.
    pub max_in_flight: usize,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_deliver: 5,
            retry_backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
                Duration::from_secs(120),
            ],
            ack_wait: Duration::from_secs(30),
            max_in_flight: 16,
        }
    }
}

impl ConsumerConfig {
    /// Checks the settings of the consumer configured under `key`.
    pub fn validate_at(&self, key: &str) -> Result<(), ConfigError> {
        if self.max_deliver == 0 {
            return Err(ConfigError::value(
                format!("{key}.max_deliver"),
                "must be at least 1",
            ));
        }
        if self.retry_backoff.is_empty() {
            return Err(ConfigError::value(
                format!("{key}.retry_backoff"),
                "needs at least one delay",
            ));
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err(ConfigError::value(
                format!("{key}.ack_wait"),
                "must be at least 1s",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(ConfigError::value(
                format!("{key}.max_in_flight"),
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The delay before retrying after delivery number `delivered` (1-based).
    pub fn retry_delay(&self, delivered: u32) -> Duration {
        let index = (delivered.max(1) as usize - 1).min(self.retry_backoff.len().saturating_sub(1));
        self.retry_backoff
            .get(index)
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// `["1s", "5s"]` lists of durations, as humantime_serde does for one.
mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|d| humantime_serde::Serde::from(*d)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let list = Vec::<humantime_serde::Serde<Duration>>::deserialize(d)?;
        Ok(list
            .into_iter()
            .map(humantime_serde::Serde::into_inner)
            .collect())
    }
}

#[cfg(test)]
// figment::Jail's closures must return figment's own error type, which is large; not ours to shrink.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        nats: NatsConfig,
        ops: OpsConfig,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            self.nats.validate()
        }
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct WithSecret {
        secret: Secret,
    }

    impl Default for WithSecret {
        fn default() -> Self {
            Self {
                secret: Secret::new("built-in"),
            }
        }
    }

    impl Validate for WithSecret {
        fn validate(&self) -> Result<(), ConfigError> {
            Ok(())
        }
    }

    #[test]
    fn a_default_secret_survives_loading() {
        figment::Jail::expect_with(|_| {
            let cfg: WithSecret = load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.secret.expose(), "built-in");
            Ok(())
        });
    }

    #[test]
    fn defaults_then_file_then_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "pf.toml",
                "[nats]\nurl = \"nats://file:4222\"\nreplicas = 3\n[ops]\nlisten = \"127.0.0.1:1111\"\n",
            )?;
            jail.set_env("PROXFLOW_NATS__URL", "nats://env:4222");
            let cfg: Sample = load(Some(Path::new("pf.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                cfg.nats.url.to_string(),
                "nats://env:4222",
                "env beats file"
            );
            assert_eq!(cfg.nats.replicas, 3, "file beats default");
            assert_eq!(cfg.ops.listen.port(), 1111);
            assert_eq!(
                cfg.nats.request_timeout,
                Duration::from_secs(5),
                "default kept"
            );
            Ok(())
        });
    }

    #[test]
    fn config_path_from_env_and_url_shorthand() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("other.toml", "[nats]\nreplicas = 5\n")?;
            jail.set_env("PROXFLOW_CONFIG", "other.toml");
            jail.set_env("PROXFLOW_NATS_URL", "nats://short:1");
            let cfg: Sample = load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.nats.replicas, 5);
            assert_eq!(cfg.nats.url.to_string(), "nats://short:1");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_the_key_and_source() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PROXFLOW_OPS__LISTEN", "not-an-address");
            let err = load::<Sample>(None)
                .expect_err("bad address must fail")
                .to_string();
            assert!(err.contains("ops.listen"), "{err}");
            assert!(err.contains("PROXFLOW_OPS__LISTEN"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("pf.toml", "[nats]\nurll = \"x\"\n")?;
            let err = load::<Sample>(Some(Path::new("pf.toml")))
                .expect_err("typo must fail")
                .to_string();
            assert!(err.contains("nats") && err.contains("urll"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn missing_named_file_is_an_error() {
        figment::Jail::expect_with(|_| {
            let err = load::<Sample>(Some(Path::new("nope.toml")))
                .expect_err("missing file must fail")
                .to_string();
            assert!(err.contains("nope.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn validation_names_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PROXFLOW_NATS__REPLICAS", "2");
            let err = load::<Sample>(None)
                .expect_err("2 replicas must fail")
                .to_string();
            assert!(err.contains("nats.replicas"), "{err}");
            Ok(())
        });
    }

    const THREE: &str = "nats://a:4222,nats://b:4222,nats://c:4222";

    #[test]
    fn nats_url_takes_a_comma_separated_string() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "PROXFLOW_NATS__URL",
                "nats://a:4222, nats://b:4222,nats://c:4222",
            );
            let cfg: Sample = load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.nats.url.to_string(), THREE);
            Ok(())
        });
    }

    #[test]
    fn nats_url_takes_a_toml_list_and_an_environment_list() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "pf.toml",
                "[nats]\nurl = [\"nats://a:4222\", \"nats://b:4222\", \"nats://c:4222\"]\n",
            )?;
            let cfg: Sample = load(Some(Path::new("pf.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(cfg.nats.url.to_string(), THREE);
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "PROXFLOW_NATS__URL",
                "[nats://a:4222, nats://b:4222, nats://c:4222]",
            );
            let cfg: Sample = load(None).map_err(|e| e.to_string())?;
            assert_eq!(cfg.nats.url.to_string(), THREE);
            Ok(())
        });
    }

    #[test]
    fn a_malformed_nats_url_names_the_key_the_entry_and_the_variable() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PROXFLOW_NATS__URL", "nats://a:4222,nats://b:42x22");
            let err = load::<Sample>(None)
                .expect_err("a bad port must fail")
                .to_string();
            assert!(err.contains("nats.url"), "{err}");
            assert!(err.contains("entry 2"), "{err}");
            assert!(err.contains("PROXFLOW_NATS__URL"), "{err}");
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("PROXFLOW_NATS_URL", "nats://a:4222,");
            let err = load::<Sample>(None)
                .expect_err("a trailing comma must fail")
                .to_string();
            assert!(err.contains("nats.url"), "{err}");
            assert!(err.contains("entry 2 is empty"), "{err}");
            assert!(
                err.contains("PROXFLOW_NATS_URL)"),
                "the shorthand is named: {err}"
            );
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file("pf.toml", "[nats]\nurl = [\"nats://a:4222\", \"\"]\n")?;
            let err = load::<Sample>(Some(Path::new("pf.toml")))
                .expect_err("an empty entry must fail")
                .to_string();
            assert!(err.contains("nats.url") && err.contains("pf.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn nats_urls_print_without_credentials() {
        let urls = NatsUrls::from_list([
            "nats://svc:hunter2@a:4222",
            "nats://t0ken@b:4222",
            "nats://c:4222",
        ])
        .expect("valid");
        assert_eq!(
            urls.to_string(),
            "nats://svc:<redacted>@a:4222,nats://<redacted>@b:4222,nats://c:4222"
        );
        assert_eq!(
            serde_json::to_string(&urls).expect("serialises"),
            r#"["nats://svc:<redacted>@a:4222","nats://<redacted>@b:4222","nats://c:4222"]"#
        );
        assert_eq!(
            serde_json::to_string(&NatsUrls::local(4222)).expect("serialises"),
            r#""nats://127.0.0.1:4222""#,
            "one URL prints as a string, as it was written"
        );
        let err = NatsUrls::parse("nats://svc:hunter2@a:42x22")
            .expect_err("bad port")
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(
            urls.server_addrs().expect("addresses").len(),
            3,
            "the client gets every server"
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(
            serde_json::to_string(&s).expect("serialises"),
            "\"<redacted>\""
        );
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn retry_delay_walks_the_backoff_and_repeats_the_last() {
        let c = ConsumerConfig {
            retry_backoff: vec![Duration::from_millis(10), Duration::from_millis(20)],
            ..ConsumerConfig::default()
        };
        assert_eq!(c.retry_delay(1), Duration::from_millis(10));
        assert_eq!(c.retry_delay(2), Duration::from_millis(20));
        assert_eq!(c.retry_delay(9), Duration::from_millis(20));
    }
}
