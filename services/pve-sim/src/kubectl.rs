//! A stand-in for `kubectl` against the simulated platform's k3s cluster: the simulator's VMs run
//! no k3s, so there is no API server to cordon or drain a node on. The nodes' state is kept in a
//! JSON file (`--state FILE`, the first arguments) and every call the patcher makes is answered as
//! kubectl would, on stdout, or with kubectl's message as the error:
//!
//! - `get node NAME -o json` → `{"metadata": {"name", "annotations"}, "spec": {"unschedulable"},
//!   "status": {"conditions": [{"type": "Ready", "status"}]}}`
//! - `annotate node NAME k=v ... [--overwrite]` (`k-` removes), `cordon NAME`, `uncordon NAME`
//! - `drain NAME [flags]` (waits the state's `drain_ms`; fails when the node's `drain_fails`)
//!
//! A node the state does not list answers like the API server (`Error from server (NotFound)`),
//! unless the state says `auto_join`: then it joins, `Ready` and schedulable, when first named —
//! `proxflow dev` counts every simulated VM as a k3s node that way. Every call is appended to the
//! state's `log` (`["cordon k3s-1", ...]`), which tests read to prove order. A lock file serialises
//! concurrent calls (a test edits the state while the patcher runs).
//!
//! The patching tests run it as `pf-test-kubectl`, `proxflow dev` as `proxflow sim-hook kubectl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long a call waits for another call's lock before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The nodes and what was asked of them.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// How long a drain takes.
    pub drain_ms: u64,
    /// A node not in `nodes` joins when first named (else: NotFound).
    pub auto_join: bool,
    /// Every call, in order.
    pub log: Vec<String>,
}

/// One node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Node {
    /// Cordoned.
    pub unschedulable: bool,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// Its `Ready` condition.
    pub ready: bool,
    /// A drain fails (a pod disruption budget in the way).
    pub drain_fails: bool,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            unschedulable: false,
            annotations: BTreeMap::new(),
            ready: true,
            drain_fails: false,
        }
    }
}

/// Why a call did not succeed; the message is what kubectl prints.
#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    /// The arguments do not start with `--state FILE`.
    #[error("simulated kubectl: the first arguments must be --state FILE")]
    Usage,
    /// A call this stand-in does not answer.
    #[error("simulated kubectl does not know: kubectl {0}")]
    Unknown(String),
    /// The node does not exist.
    #[error("Error from server (NotFound): nodes \"{0}\" not found")]
    NotFound(String),
    /// kubectl refuses (an annotation without `--overwrite`, a drain blocked by a budget).
    #[error("{0}")]
    Refused(String),
    /// The state file could not be read, written or locked.
    #[error("simulated kubectl state {path}: {source}", path = .path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not the state's JSON.
    #[error("simulated kubectl state {path}: {source}", path = .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

impl State {
    /// Reads the state at `path` (none yet: an empty one).
    pub fn load(path: &Path) -> Result<Self, KubectlError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| KubectlError::Parse {
                path: path.to_owned(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(io(path, source)),
        }
    }

    /// Writes it to `path` (through a temporary file and a rename, so a reader never sees half).
    pub fn save(&self, path: &Path) -> Result<(), KubectlError> {
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|source| KubectlError::Parse {
            path: path.to_owned(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(path, e))
    }

    fn node(&mut self, name: &str) -> Result<&mut Node, KubectlError> {
        if self.auto_join {
            return Ok(self.nodes.entry(name.to_owned()).or_default());
        }
        self.nodes
            .get_mut(name)
            .ok_or_else(|| KubectlError::NotFound(name.to_owned()))
    }
}

fn io(path: &Path, source: std::io::Error) -> KubectlError {
    KubectlError::State {
        path: path.to_owned(),
        source,
    }
}

/// The lock file next to the state, removed when dropped.
struct Lock(PathBuf);

impl Lock {
    fn take(state: &Path) -> Result<Self, KubectlError> {
        let path = state.with_extension("lock");
        let started = Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(Self(path)),
                Err(_) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(io(&path, e)),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Answers one call, `args` being `--state FILE` and then kubectl's arguments; returns what
/// kubectl prints.
pub fn run(args: &[String]) -> Result<String, KubectlError> {
    let (path, words) = match args {
        [flag, path, rest @ ..] if flag == "--state" => (PathBuf::from(path), rest),
        _ => return Err(KubectlError::Usage),
    };
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let (out, drain_ms) = {
        let _lock = Lock::take(&path)?;
        let mut state = State::load(&path)?;
        state.log.push(words.join(" "));
        let out = answer(&mut state, &words);
        let drain_ms = match (&out, words.first()) {
            (Ok(_), Some(&"drain")) => state.drain_ms,
            _ => 0,
        };
        state.save(&path)?;
        (out?, drain_ms)
    };
    // Outside the lock: a drain takes its time without blocking the other calls.
    if drain_ms > 0 {
        std::thread::sleep(Duration::from_millis(drain_ms));
    }
    Ok(out)
}

fn answer(state: &mut State, words: &[&str]) -> Result<String, KubectlError> {
    match words {
        ["get", "node", name, "-o", "json"] => {
            let node = state.node(name)?;
            let json = serde_json::json!({
                "metadata": {"name": name, "annotations": node.annotations},
                "spec": {"unschedulable": node.unschedulable},
                "status": {"conditions": [{"type": "Ready", "status": if node.ready { "True" } else { "False" }}]},
            });
            Ok(json.to_string())
        }
        ["annotate", "node", name, rest @ ..] => {
            let node = state.node(name)?;
            let overwrite = rest.contains(&"--overwrite");
            for a in rest.iter().filter(|a| !a.starts_with("--")) {
                if let Some(key) = a.strip_suffix('-') {
                    node.annotations.remove(key);
                } else if let Some((k, v)) = a.split_once('=') {
                    if node.annotations.contains_key(k) && !overwrite {
                        return Err(KubectlError::Refused(format!(
                            "error: --overwrite is false but found the following declared annotation(s): '{k}' already has a value"
                        )));
                    }
                    node.annotations.insert(k.to_owned(), v.to_owned());
                } else {
                    return Err(KubectlError::Refused(format!(
                        "error: invalid annotation format: {a}"
                    )));
                }
            }
            Ok(format!("node/{name} annotated\n"))
        }
        ["cordon", name] | ["uncordon", name] => {
            let cordon = words[0] == "cordon";
            state.node(name)?.unschedulable = cordon;
            Ok(format!(
                "node/{name} {}\n",
                if cordon { "cordoned" } else { "uncordoned" }
            ))
        }
        ["drain", name, ..] => {
            if state.node(name)?.drain_fails {
                Err(KubectlError::Refused(format!(
                    "error: unable to drain node \"{name}\": cannot evict pod as it would violate the pod's disruption budget"
                )))
            } else {
                Ok(format!("node/{name} drained\n"))
            }
        }
        _ => Err(KubectlError::Unknown(words.join(" "))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn call(state: &Path, words: &str) -> Result<String, KubectlError> {
        let mut args = vec!["--state".to_owned(), state.display().to_string()];
        args.extend(words.split_whitespace().map(str::to_owned));
        run(&args)
    }

    #[test]
    fn unknown_nodes_are_not_found_unless_they_join_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kube.json");
        let e = call(&path, "get node k3s-1 -o json").unwrap_err();
        assert!(e.to_string().contains("(NotFound)"), "{e}");

        State {
            auto_join: true,
            ..State::default()
        }
        .save(&path)
        .unwrap();
        let node: serde_json::Value =
            serde_json::from_str(&call(&path, "get node k3s-1 -o json").unwrap()).unwrap();
        assert_eq!(node["status"]["conditions"][0]["status"], "True");
        call(&path, "annotate node k3s-1 a=b --overwrite").unwrap();
        call(&path, "cordon k3s-1").unwrap();
        let refused = call(&path, "annotate node k3s-1 a=c").unwrap_err();
        assert!(matches!(refused, KubectlError::Refused(_)), "{refused}");
        let state = State::load(&path).unwrap();
        assert!(state.nodes["k3s-1"].unschedulable);
        assert_eq!(state.nodes["k3s-1"].annotations["a"], "b");
        assert_eq!(state.log.len(), 4);
    }
}
