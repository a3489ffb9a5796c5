//! `proxflow dev` as a child process, the way `just up` runs it (from the repository root, where
//! `.tools/bin/nats-server` lives), on free ports and a fast simulator, with the summary it prints
//! read line by line. Uses the `cli` support module for the environment it starts from.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The summary's last line.
pub const SUMMARY_END: &str = "Ctrl-C stops everything.";

/// A running `proxflow dev`.
pub struct Dev {
    child: Option<Child>,
    errors: Option<std::thread::JoinHandle<String>>,
    /// Every line of the summary, from `proxflow dev is up` to [`SUMMARY_END`].
    pub summary: Vec<String>,
    /// Its state directory.
    pub state: PathBuf,
}

/// The settings every test's dev starts with: state in `state`, free ports, simulated tasks at 1/50
/// of real time, the files dev writes kept in `state`.
pub fn base_env(state: &Path) -> Vec<(&'static str, String)> {
    let at = |p: &str| state.join(p).display().to_string();
    vec![
        ("PROXFLOW_DEV__STATE_DIR", state.display().to_string()),
        ("PROXFLOW_DEV__NATS_PORT", "0".into()),
        ("PROXFLOW_GATEWAY__LISTEN", "127.0.0.1:0".into()),
        ("PROXFLOW_OPS__LISTEN", "127.0.0.1:0".into()),
        ("PROXFLOW_SIM__LISTEN", "127.0.0.1:0".into()),
        ("PROXFLOW_SIM__TIME_SCALE", "0.02".into()),
        ("PROXFLOW_PROVISION__FILE_SD", at("sd.json")),
        ("PROXFLOW_CAPACITY__REVIEW__DIR", at("capacity-reviews")),
    ]
}

impl Dev {
    /// Starts `proxflow dev` with [`base_env`] for `state` and then `env`, and waits (60 s at
    /// most) for its whole summary; panics with its stderr when it does not come.
    pub fn start(state: &Path, env: &[(&str, String)]) -> Self {
        let mut child = super::cli::command()
            .arg("dev")
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .envs(base_env(state))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("proxflow dev starts");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let errors =
            std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut dev = Self {
            child: Some(child),
            errors: Some(errors),
            summary: Vec::new(),
            state: state.to_owned(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let end = line == SUMMARY_END;
                    dev.summary.push(line);
                    if end {
                        return dev;
                    }
                }
                Err(_) => {
                    let printed = dev.summary.join("\n");
                    let stderr = dev.kill();
                    panic!("dev printed no whole summary:\n{printed}\nstderr:\n{stderr}");
                }
            }
        }
    }

    /// The text of every summary line labelled `label` (`  <label>  <text>`).
    pub fn lines(&self, label: &str) -> Vec<&str> {
        self.summary
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("  ")?.strip_prefix(label)?;
                rest.starts_with(' ').then(|| rest.trim_start())
            })
            .collect()
    }

    /// The one summary line labelled `label`; panics with the summary when there is none.
    pub fn line(&self, label: &str) -> &str {
        self.lines(label).first().copied().unwrap_or_else(|| {
            panic!(
                "no {label:?} line in the summary:\n{}",
                self.summary.join("\n")
            )
        })
    }

    /// The first word of the line labelled `label` (its URL).
    pub fn url(&self, label: &str) -> String {
        self.line(label)
            .split_whitespace()
            .next()
            .expect("a URL")
            .to_owned()
    }

    /// The value of `NAME=value` in the `auth export …` line, if it is there.
    pub fn credential(&self, name: &str) -> Option<String> {
        self.lines("auth").iter().find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .map(str::to_owned)
        })
    }

    /// The whole summary, for assertion messages.
    pub fn text(&self) -> String {
        self.summary.join("\n")
    }

    /// Stops it as Ctrl-C would (SIGTERM) and asserts that it exits cleanly.
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = child.wait().expect("wait");
        let stderr = self
            .errors
            .take()
            .map(|e| e.join().unwrap_or_default())
            .unwrap_or_default();
        assert!(exit.success(), "dev exited with {exit}; stderr:\n{stderr}");
    }

    /// Stops it (a failing test) and returns what it wrote to stderr: SIGTERM first, so that it
    /// stops its nats-server child too (a SIGKILL would leave that running), SIGKILL when it has
    /// not gone within 20 s.
    fn kill(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.errors
            .take()
            .map(|e| e.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // A test that failed half-way must not leave a pipeline running.
        self.kill();
    }
}
