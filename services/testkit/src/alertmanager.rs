//! A real Alertmanager (Debian's `prometheus-alertmanager`) per test, its webhook receiver pointed at
//! a gateway, killed when dropped. Not found, the test fails with the install hint: a missing
//! Alertmanager is a broken test machine, not a pass.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why no Alertmanager could be started.
#[derive(Debug, thiserror::Error)]
pub enum AlertmanagerError {
    /// The binary is not installed.
    #[error(
        "no Alertmanager binary (ALERTMANAGER_BIN, prometheus-alertmanager or alertmanager on PATH): \
         run `deploy/dev/install-tools.sh test` (apt-get install prometheus-alertmanager)"
    )]
    NotFound,
    /// It did not start or become ready.
    #[error("alertmanager did not start: {0}")]
    Start(String),
}

/// A running Alertmanager.
#[derive(Debug)]
pub struct TestAlertmanager {
    child: Child,
    /// Its API base URL (`http://127.0.0.1:<port>`).
    pub url: String,
    dir: tempfile::TempDir,
}

fn locate() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("ALERTMANAGER_BIN") {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["prometheus-alertmanager", "alertmanager"].map(|b| dir.join(b)))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16, AlertmanagerError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| AlertmanagerError::Start(e.to_string()))
}

impl TestAlertmanager {
    /// Starts one whose only receiver posts to `webhook_url` with `bearer` and sends every group at
    /// once (`group_wait` 0s) and again every `group_interval`, resolved alerts included.
    pub fn start(
        webhook_url: &str,
        bearer: &str,
        group_interval: Duration,
    ) -> Result<Self, AlertmanagerError> {
        let bin = locate().ok_or(AlertmanagerError::NotFound)?;
        let dir = tempfile::tempdir().map_err(|e| AlertmanagerError::Start(e.to_string()))?;
        let config = dir.path().join("alertmanager.yml");
        let interval = format!("{}ms", group_interval.as_millis().max(1));
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: proxflow\n  group_by: ['...']\n  group_wait: 0s\n  group_interval: {interval}\n  repeat_interval: 1h\nreceivers:\n  - name: proxflow\n    webhook_configs:\n      - url: {webhook_url}\n        send_resolved: true\n        http_config:\n          authorization:\n            credentials: {bearer}\n"
            ),
        )
        .map_err(|e| AlertmanagerError::Start(e.to_string()))?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("alertmanager.log"))
            .map_err(|e| AlertmanagerError::Start(e.to_string()))?;
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No gossip: a lone instance, and no port to collide with a parallel test's.
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| AlertmanagerError::Start(format!("{}: {e}", bin.display())))?;
        let am = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        am.wait_ready()?;
        Ok(am)
    }

    fn wait_ready(&self) -> Result<(), AlertmanagerError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = self.url.trim_start_matches("http://").to_string();
        while Instant::now() < deadline {
            // Ready once the API port accepts connections and /-/ready answers 200.
            if let Ok(mut stream) = std::net::TcpStream::connect(&addr) {
                use std::io::{Read, Write};
                let request = format!("GET /-/ready HTTP/1.0\r\nHost: {addr}\r\n\r\n");
                let mut answer = String::new();
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_to_string(&mut answer).is_ok()
                    && answer.starts_with("HTTP/1.0 200")
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(AlertmanagerError::Start(format!(
            "not ready within 20 s; log:\n{}",
            self.log_tail()
        )))
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for TestAlertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
