//! Metrics onboarding: node-exporter targets in a Prometheus `file_sd` JSON file.
//!
//! Prometheus re-reads `file_sd_configs` files when they change, so adding a scrape target is writing
//! one file. The file is shared with whatever else the operator lists there, so proxflow merges instead
//! of overwriting: it owns only the groups labelled `proxflow_vmid`, keeps every other group as it
//! found it, refuses to touch a file it cannot parse, and replaces the file atomically (temp file,
//! fsync, rename) under an exclusive lock so concurrent writers never lose each other's targets.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The label that marks a group as proxflow's, with the VMID it scrapes.
pub const OWNER_LABEL: &str = "proxflow_vmid";

/// Why the targets file could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum FileSdError {
    /// Reading, locking or writing failed.
    #[error("file_sd {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The existing file is not a file_sd JSON list; it is left untouched.
    #[error("file_sd {path} is not a list of target groups ({reason}); left untouched")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
}

/// One target group as Prometheus reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetGroup {
    /// `host:port` targets.
    pub targets: Vec<String>,
    /// Labels attached to every target of the group.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A `file_sd` targets file.
#[derive(Debug, Clone)]
pub struct FileSd {
    path: PathBuf,
}

impl FileSd {
    /// The file at `path` (created on first write, with its directory).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds or replaces the group for `vmid`: one target with `labels` plus the owner label.
    pub fn upsert(
        &self,
        vmid: u32,
        target: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), FileSdError> {
        let mut labels = labels;
        labels.insert(OWNER_LABEL.to_string(), vmid.to_string());
        let group = TargetGroup {
            targets: vec![target.to_string()],
            labels,
        };
        self.update(|groups| {
            groups.retain(|g| !owned_by(g, vmid));
            groups.push(serde_json::to_value(&group).unwrap_or_default());
        })
    }

    /// Removes the group for `vmid`; removing one that is not there is fine (compensation reruns).
    pub fn remove(&self, vmid: u32) -> Result<(), FileSdError> {
        self.update(|groups| groups.retain(|g| !owned_by(g, vmid)))
    }

    /// The target of `vmid`, if the file has one.
    pub fn target_of(&self, vmid: u32) -> Result<Option<String>, FileSdError> {
        let groups = self.read()?;
        Ok(groups
            .iter()
            .find(|g| owned_by(g, vmid))
            .and_then(|g| g.get("targets")?.get(0)?.as_str().map(str::to_string)))
    }

    fn read(&self) -> Result<Vec<Value>, FileSdError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(self.io(source)),
        };
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        // Other groups are kept as raw JSON, so fields proxflow does not know survive the rewrite.
        let groups: Vec<Value> =
            serde_json::from_str(&text).map_err(|e| FileSdError::Malformed {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        Ok(groups)
    }

    fn update(&self, change: impl FnOnce(&mut Vec<Value>)) -> Result<(), FileSdError> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        // A sibling lock file: the targets file itself is replaced by rename, so it cannot hold the lock.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_extension("lock"))
            .map_err(|e| self.io(e))?;
        lock.lock().map_err(|e| self.io(e))?;
        let mut groups = self.read()?;
        change(&mut groups);
        let text = serde_json::to_string_pretty(&groups).unwrap_or_else(|_| "[]".into());
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(|e| self.io(e))
    }

    fn io(&self, source: std::io::Error) -> FileSdError {
        FileSdError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

fn owned_by(group: &Value, vmid: u32) -> bool {
    group
        .get("labels")
        .and_then(|l| l.get(OWNER_LABEL))
        .and_then(Value::as_str)
        == Some(vmid.to_string().as_str())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn merges_with_foreign_groups_and_removes_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sd/nodes.json");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(
            &path,
            r#"[{"targets":["db1:9100"],"labels":{"role":"db"},"extra":"kept"}]"#,
        )
        .unwrap();
        let sd = FileSd::new(&path);
        let labels = BTreeMap::from([("name".to_string(), "k3s-4".to_string())]);
        sd.upsert(104, "10.20.0.44:9100", labels.clone()).unwrap();
        sd.upsert(105, "10.20.0.45:9100", labels.clone()).unwrap();
        sd.upsert(104, "10.20.0.54:9100", labels).unwrap(); // replaced, not duplicated
        let groups: Vec<Value> = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0]["extra"], "kept");
        assert_eq!(
            sd.target_of(104).unwrap().as_deref(),
            Some("10.20.0.54:9100")
        );
        sd.remove(104).unwrap();
        sd.remove(104).unwrap();
        assert_eq!(sd.target_of(104).unwrap(), None);
        assert_eq!(
            sd.target_of(105).unwrap().as_deref(),
            Some("10.20.0.45:9100")
        );
        let groups: Vec<Value> = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(groups.len(), 2, "the foreign group survives");
    }

    #[test]
    fn a_malformed_file_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.json");
        fs::write(&path, "{not json").unwrap();
        let err = FileSd::new(&path)
            .upsert(104, "10.20.0.44:9100", BTreeMap::new())
            .unwrap_err();
        assert!(matches!(err, FileSdError::Malformed { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "{not json");
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.json");
        let handles: Vec<_> = (0..20u32)
            .map(|i| {
                let sd = FileSd::new(&path);
                std::thread::spawn(move || {
                    sd.upsert(200 + i, &format!("10.20.1.{i}:9100"), BTreeMap::new())
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        let groups: Vec<Value> = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(groups.len(), 20);
    }
}
