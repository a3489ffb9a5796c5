//! MOCK kubectl — the one mock of the patching tests: there is no Kubernetes API server here, so
//! this scripted stand-in keeps the nodes' state in a JSON file (`--state FILE`, first) and answers
//! the calls the patcher makes, as kubectl would:
//!
//! - `get node NAME -o json` → `{"metadata": {"name", "annotations"}, "spec": {"unschedulable"},
//!   "status": {"conditions": [{"type": "Ready", "status"}]}}`
//! - `annotate node NAME k=v ... [--overwrite]` (`k-` removes), `cordon NAME`, `uncordon NAME`
//! - `drain NAME [flags]` (waits `drain_ms` of the state file; fails when the node's `drain_fails`)
//!
//! An unknown node answers like the API server (`Error from server (NotFound)`, exit 1). Every call
//! is appended to the state's `log` (`["cordon k3s-1", ...]`), which the tests read to prove
//! order. A lock file serialises concurrent calls (the test edits the state while the patcher runs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct State {
    nodes: BTreeMap<String, Node>,
    drain_ms: u64,
    log: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(default)]
struct Node {
    unschedulable: bool,
    annotations: BTreeMap<String, String>,
    ready: bool,
    drain_fails: bool,
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

struct Lock(PathBuf);

impl Lock {
    fn take(state: &Path) -> Result<Self, String> {
        let path = state.with_extension("lock");
        let started = Instant::now();
        loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(Self(path)),
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("lock {}: {e}", path.display())),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn load(path: &Path) -> Result<State, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("state: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(format!("state: {e}")),
    }
}

fn save(path: &Path, state: &State) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, bytes).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())
}

fn not_found(name: &str) -> String {
    format!("Error from server (NotFound): nodes \"{name}\" not found")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(out) => print!("{out}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

fn run(args: &[String]) -> Result<String, String> {
    let (path, words) = match args {
        [flag, path, rest @ ..] if flag == "--state" => (PathBuf::from(path), rest),
        _ => return Err("MOCK kubectl: the first arguments must be --state FILE".into()),
    };
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let drain_ms;
    {
        let _lock = Lock::take(&path)?;
        let mut state = load(&path)?;
        state.log.push(words.join(" "));
        let out = match words.as_slice() {
            ["get", "node", name, "-o", "json"] => {
                let node = state.nodes.get(*name).ok_or_else(|| not_found(name))?;
                let json = serde_json::json!({
                    "metadata": {"name": name, "annotations": node.annotations},
                    "spec": {"unschedulable": node.unschedulable},
                    "status": {"conditions": [{"type": "Ready", "status": if node.ready { "True" } else { "False" }}]},
                });
                Ok(json.to_string())
            }
            ["annotate", "node", name, rest @ ..] => {
                let node = state.nodes.get_mut(*name).ok_or_else(|| not_found(name))?;
                let overwrite = rest.contains(&"--overwrite");
                for a in rest.iter().filter(|a| !a.starts_with("--")) {
                    if let Some(key) = a.strip_suffix('-') {
                        node.annotations.remove(key);
                    } else if let Some((k, v)) = a.split_once('=') {
                        if node.annotations.contains_key(k) && !overwrite {
                            return Err(format!(
                                "error: --overwrite is false but found the following declared annotation(s): '{k}' already has a value"
                            ));
                        }
                        node.annotations.insert(k.to_string(), v.to_string());
                    } else {
                        return Err(format!("error: invalid annotation format: {a}"));
                    }
                }
                Ok(format!("node/{name} annotated\n"))
            }
            ["cordon", name] | ["uncordon", name] => {
                let cordon = words[0] == "cordon";
                let node = state.nodes.get_mut(*name).ok_or_else(|| not_found(name))?;
                node.unschedulable = cordon;
                Ok(format!(
                    "node/{name} {}\n",
                    if cordon { "cordoned" } else { "uncordoned" }
                ))
            }
            ["drain", name, ..] => {
                let node = state.nodes.get(*name).ok_or_else(|| not_found(name))?;
                if node.drain_fails {
                    Err(format!(
                        "error: unable to drain node \"{name}\": cannot evict pod as it would violate the pod's disruption budget"
                    ))
                } else {
                    Ok(format!("node/{name} drained\n"))
                }
            }
            _ => Err(format!(
                "MOCK kubectl does not know: kubectl {}",
                words.join(" ")
            )),
        };
        drain_ms = if matches!(words.first(), Some(&"drain")) && out.is_ok() {
            state.drain_ms
        } else {
            0
        };
        save(&path, &state)?;
        let out = out?;
        if drain_ms == 0 {
            return Ok(out);
        }
    }
    // Outside the lock: a drain takes its time without blocking the other calls.
    std::thread::sleep(Duration::from_millis(drain_ms));
    Ok(format!(
        "node/{} drained\n",
        words.get(1).copied().unwrap_or_default()
    ))
}
