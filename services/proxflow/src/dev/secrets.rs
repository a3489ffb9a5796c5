//! The credentials `proxflow dev` makes up for the gateway — a webhook secret and the bearer token
//! `dev` — kept in `<state_dir>/dev-secrets.toml` (mode 0600): made once and reused, so the printed
//! `export …` line, a console logged in with the token and scripts keep working across restarts.
//! Values the configuration gives win and are not written down. Delete the file for new ones.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use proxflow_gateway::GatewayConfig;
use proxflow_runtime::config::Secret;
use serde::{Deserialize, Serialize};

/// The file, in the state directory.
pub const FILE: &str = "dev-secrets.toml";
/// The name of dev's bearer token (`gateway.bearer_tokens.dev`), also a patch approver.
pub const TOKEN_NAME: &str = "dev";
/// Owner read and write only.
const MODE: u32 = 0o600;

/// What the file holds.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kept {
    /// `gateway.webhook_secrets` when none is configured.
    webhook_secret: Option<String>,
    /// `gateway.bearer_tokens.dev` when it is not configured.
    dev_token: Option<String>,
}

/// Why the kept credentials could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The file could not be read or its mode set.
    #[error("reading {path}: {source}", path = .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the secrets file.
    #[error(
        "{path} is not proxflow dev's credentials file (delete it for new credentials): {source}",
        path = .path.display()
    )]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: toml::de::Error,
    },
    /// The file could not be written.
    #[error("writing {path}: {source}", path = .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What dev authenticates with.
#[derive(Debug, Default)]
pub struct Credentials {
    /// The bearer token `dev`, whether kept or configured (the console logs in with it).
    pub token: Option<Secret>,
    /// The kept ones as `PROXFLOW_*` assignments, for the summary's `export …` line (configured
    /// ones are the operator's already).
    pub kept: Vec<(&'static str, Secret)>,
    /// Where they are kept.
    pub file: PathBuf,
}

/// Gives `gateway` a webhook secret when it has none and the bearer token `dev` when it lacks one,
/// from the file in `state_dir` (made or completed when needed). Nothing when the gateway takes
/// requests without credentials (`gateway.require_auth = false`).
pub fn apply(gateway: &mut GatewayConfig, state_dir: &Path) -> Result<Credentials, SecretsError> {
    let file = state_dir.join(FILE);
    let mut credentials = Credentials {
        file: file.clone(),
        ..Credentials::default()
    };
    if gateway.require_auth {
        let mut kept = load(&file)?;
        let before = (kept.webhook_secret.clone(), kept.dev_token.clone());
        if gateway.webhook_secrets.is_empty() {
            let secret = keep(&mut kept.webhook_secret);
            gateway.webhook_secrets.push(secret.clone());
            credentials
                .kept
                .push(("PROXFLOW_GATEWAY__WEBHOOK_SECRETS", secret));
        }
        if !gateway.bearer_tokens.contains_key(TOKEN_NAME) {
            let token = keep(&mut kept.dev_token);
            gateway
                .bearer_tokens
                .insert(TOKEN_NAME.to_owned(), token.clone());
            credentials
                .kept
                .push(("PROXFLOW_GATEWAY__BEARER_TOKENS__DEV", token));
        }
        if (kept.webhook_secret.clone(), kept.dev_token.clone()) != before {
            save(&file, &kept)?;
        }
    }
    credentials.token = gateway.bearer_tokens.get(TOKEN_NAME).cloned();
    Ok(credentials)
}

/// The kept value, made up first when there is none.
fn keep(slot: &mut Option<String>) -> Secret {
    let value = slot.get_or_insert_with(|| {
        proxflow_gateway::webhook::generate_secret()
            .expose()
            .to_owned()
    });
    Secret::new(value.clone())
}

fn load(file: &Path) -> Result<Kept, SecretsError> {
    let read_err = |source| SecretsError::Read {
        path: file.to_owned(),
        source,
    };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Kept::default()),
        Err(e) => return Err(read_err(e)),
    };
    // Credentials others could read are tightened, not trusted less: they are dev's own.
    let mode = std::fs::metadata(file)
        .map_err(read_err)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(file = %file.display(), mode = format!("{:o}", mode & 0o777), "tightening to 0600");
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(MODE)).map_err(read_err)?;
    }
    toml::from_str(&text).map_err(|source| SecretsError::Parse {
        path: file.to_owned(),
        source,
    })
}

/// Writes through a temporary file created 0600 and a rename: never a moment of a readable or a
/// half-written file.
fn save(file: &Path, kept: &Kept) -> Result<(), SecretsError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SecretsError::Write { path, source }
    };
    let body = toml::to_string(kept)
        .map_err(std::io::Error::other)
        .map_err(write_err(file))?;
    let text = format!(
        "# Credentials proxflow dev made up for its gateway, reused on every start.\n\
         # Delete this file for new ones; gateway.* settings win over it.\n{body}"
    );
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    }
    let tmp = file.with_extension("toml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MODE)
        .open(&tmp)
        .map_err(write_err(&tmp))?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(write_err(&tmp))?;
    std::fs::rename(&tmp, file).map_err(write_err(file))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn made_once_kept_0600_and_configured_values_win() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = GatewayConfig::default();
        let made = apply(&mut first, dir.path()).unwrap();
        assert_eq!(made.kept.len(), 2);
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut second = GatewayConfig::default();
        let again = apply(&mut second, dir.path()).unwrap();
        assert_eq!(second.webhook_secrets, first.webhook_secrets);
        assert_eq!(again.token, made.token);

        let mut configured = GatewayConfig::default();
        configured.bearer_tokens.insert(
            TOKEN_NAME.into(),
            Secret::new("configured-token-0123456789"),
        );
        let chosen = apply(&mut configured, dir.path()).unwrap();
        assert_eq!(
            chosen.token.as_ref().map(Secret::expose),
            Some("configured-token-0123456789")
        );
        assert_eq!(chosen.kept.len(), 1, "only the secret is dev's");
        assert_eq!(configured.webhook_secrets, first.webhook_secrets);
    }

    #[test]
    fn a_file_that_is_not_the_secrets_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "token = [1]\n").unwrap();
        let e = apply(&mut GatewayConfig::default(), dir.path()).unwrap_err();
        assert!(matches!(e, SecretsError::Parse { .. }), "{e}");
        assert!(e.to_string().contains(FILE), "{e}");
    }
}
