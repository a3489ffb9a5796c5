//! A bundle: a directory of normalised files and a manifest of their sha256, written so that the
//! same content gives the same bytes, verified against its manifest, compared with another bundle.
//!
//! The manifest is `MANIFEST.sha256` in `sha256sum` format (`<hex>  <path>`, sorted by path), so an
//! operator without proxflow can check a bundle with `sha256sum -c MANIFEST.sha256` from inside it.
//! Nothing in a bundle's content says when it was made: the directory name does, and the
//! workflow's record. That is what makes two exports of an unchanged host byte-identical.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use proxflow_schemas::lifecycle::{BundleChange, ChangeKind};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The manifest's file name.
pub const MANIFEST: &str = "MANIFEST.sha256";
/// The prefix of every bundle directory (`export-20261206T0300Z`).
pub const PREFIX: &str = "export-";
/// The prefix of a bundle being written; a crash leaves one, which the next export removes.
const PARTIAL: &str = ".partial-";

/// Why a bundle could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not in the manifest format.
    #[error("{path}: line {line} is not `<sha256>  <path>`")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A bundle's content, in memory, by relative path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    files: BTreeMap<String, Vec<u8>>,
}

/// The hex sha256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Bundle {
    /// An empty bundle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` at `path` as canonical JSON: object keys sorted (serde_json's map is
    /// ordered), two-space indentation, a final newline.
    pub fn insert_json(&mut self, path: &str, value: &Value) {
        let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
        text.push('\n');
        self.files.insert(path.to_owned(), text.into_bytes());
    }

    /// Adds raw bytes at `path`.
    pub fn insert_bytes(&mut self, path: &str, bytes: Vec<u8>) {
        self.files.insert(path.to_owned(), bytes);
    }

    /// The files, by path.
    pub fn files(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.files
    }

    /// The bytes of every file.
    pub fn bytes(&self) -> u64 {
        self.files.values().map(|b| b.len() as u64).sum()
    }

    /// The manifest text.
    pub fn manifest(&self) -> String {
        self.files
            .iter()
            .map(|(path, bytes)| format!("{}  {path}\n", sha256(bytes)))
            .collect()
    }

    /// Writes the bundle as `root/name`: into a partial directory first, renamed when complete,
    /// so a reader never sees half a bundle. An existing `root/name` (a run repeated after a
    /// crash) is replaced.
    pub fn write(&self, root: &Path, name: &str) -> Result<PathBuf, BundleError> {
        let partial = root.join(format!("{PARTIAL}{name}"));
        let dir = root.join(name);
        remove_dir(&partial)?;
        for (path, bytes) in &self.files {
            let file = partial.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::write(&file, bytes).map_err(io(&file))?;
        }
        std::fs::create_dir_all(&partial).map_err(io(&partial))?;
        let manifest = partial.join(MANIFEST);
        std::fs::write(&manifest, self.manifest()).map_err(io(&manifest))?;
        remove_dir(&dir)?;
        std::fs::rename(&partial, &dir).map_err(io(&dir))?;
        Ok(dir)
    }

    /// Reads the bundle in `dir` as its manifest lists it (a file the manifest misses is not
    /// read; [`verify`] reports it).
    pub fn read(dir: &Path) -> Result<Self, BundleError> {
        let mut files = BTreeMap::new();
        for (path, _) in read_manifest(dir)? {
            let file = dir.join(&path);
            let bytes = std::fs::read(&file).map_err(io(&file))?;
            files.insert(path, bytes);
        }
        Ok(Self { files })
    }
}

fn remove_dir(dir: &Path) -> Result<(), BundleError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io(dir)(e)),
        _ => Ok(()),
    }
}

/// The manifest of the bundle in `dir`: (path, sha256) in its order.
pub fn read_manifest(dir: &Path) -> Result<Vec<(String, String)>, BundleError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    text.lines()
        .enumerate()
        .map(|(n, line)| {
            let (hash, file) = line.split_once("  ").ok_or(BundleError::Manifest {
                path: path.clone(),
                line: n + 1,
            })?;
            let well_formed = hash.len() == 64
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
                && !file.is_empty()
                && !file.starts_with('/')
                && !file.split('/').any(|part| part == ".." || part.is_empty());
            if !well_formed {
                return Err(BundleError::Manifest {
                    path: path.clone(),
                    line: n + 1,
                });
            }
            Ok((file.to_owned(), hash.to_owned()))
        })
        .collect()
}

/// What is wrong with one file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Its content is not what the manifest says.
    Mismatch {
        /// The file.
        path: String,
        /// The manifest's sha256.
        expected: String,
        /// The file's.
        found: String,
    },
    /// The manifest lists it; it is not there.
    Missing {
        /// The file.
        path: String,
    },
    /// It is there; the manifest does not list it.
    Unlisted {
        /// The file.
        path: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Mismatch {
                path,
                expected,
                found,
            } => write!(
                f,
                "{path}: content differs from the manifest (sha256 {found}, manifest says {expected})"
            ),
            Self::Missing { path } => write!(f, "{path}: listed in the manifest, missing"),
            Self::Unlisted { path } => write!(f, "{path}: not in the manifest"),
        }
    }
}

/// A verified bundle: how much was checked, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// The bundle.
    pub dir: PathBuf,
    /// Files the manifest lists.
    pub files: usize,
    /// sha256 of the manifest itself.
    pub manifest_sha256: String,
    /// Everything that does not match; empty when the bundle is intact.
    pub problems: Vec<Problem>,
}

impl Verification {
    /// Whether every file matches and nothing else is there.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every file of the bundle in `dir` against its manifest, and that no file is there the
/// manifest does not list. A manifest that cannot be read is an error, not a verification.
pub fn verify(dir: &Path) -> Result<Verification, BundleError> {
    let manifest_path = dir.join(MANIFEST);
    let manifest_bytes = std::fs::read(&manifest_path).map_err(io(&manifest_path))?;
    let listed = read_manifest(dir)?;
    let mut problems = Vec::new();
    for (path, expected) in &listed {
        let file = dir.join(path);
        match std::fs::read(&file) {
            Ok(bytes) => {
                let found = sha256(&bytes);
                if &found != expected {
                    problems.push(Problem::Mismatch {
                        path: path.clone(),
                        expected: expected.clone(),
                        found,
                    });
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                problems.push(Problem::Missing { path: path.clone() });
            }
            // An unreadable file (an I/O error from a damaged pool) is a failed check, named.
            Err(e) => problems.push(Problem::Mismatch {
                path: path.clone(),
                expected: expected.clone(),
                found: format!("unreadable: {e}"),
            }),
        }
    }
    let known: std::collections::BTreeSet<&str> = listed.iter().map(|(p, _)| p.as_str()).collect();
    for path in files_under(dir)? {
        if path != MANIFEST && !known.contains(path.as_str()) {
            problems.push(Problem::Unlisted { path });
        }
    }
    Ok(Verification {
        dir: dir.to_owned(),
        files: listed.len(),
        manifest_sha256: sha256(&manifest_bytes),
        problems,
    })
}

/// Every regular file under `dir`, relative, sorted.
pub(crate) fn files_under(dir: &Path) -> Result<Vec<String>, BundleError> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).map_err(io(&at))? {
            let entry = entry.map_err(io(&at))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io(&path))?;
            if kind.is_dir() {
                pending.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The complete bundles under `root`, oldest first (their names sort by time).
pub fn list(root: &Path) -> Result<Vec<String>, BundleError> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(io(root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(PREFIX) && entry.path().join(MANIFEST).is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Removes the partial bundles a crash left under `root`: those untouched for `stale_after`. A
/// younger one may be another export's, being written right now (a scheduled run and one started
/// by hand at the same time), and is left alone; a run's own partial is replaced by its write.
pub fn clean_partials(root: &Path, stale_after: std::time::Duration) -> Result<(), BundleError> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(PARTIAL) {
            continue;
        }
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if age.is_some_and(|age| age >= stale_after) {
            remove_dir(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes `name` under `root`.
pub fn remove(root: &Path, name: &str) -> Result<(), BundleError> {
    remove_dir(&root.join(name))
}

/// What changed from `old` to `new`, file by file in path order.
pub fn diff(old: &Bundle, new: &Bundle) -> Vec<BundleChange> {
    let mut changes = Vec::new();
    let paths: std::collections::BTreeSet<&String> =
        old.files.keys().chain(new.files.keys()).collect();
    for path in paths {
        let change = match (old.files.get(path), new.files.get(path)) {
            (None, Some(_)) => (ChangeKind::Added, Vec::new()),
            (Some(_), None) => (ChangeKind::Removed, Vec::new()),
            (Some(a), Some(b)) if a != b => (ChangeKind::Changed, changed_keys(a, b)),
            _ => continue,
        };
        changes.push(BundleChange {
            path: path.clone(),
            subject: subject_of(path),
            change: change.0,
            keys: change.1,
        });
    }
    changes
}

/// The entries that differ between two versions of a JSON file: the top-level keys of objects,
/// the identities of list entries; nothing for other files.
fn changed_keys(a: &[u8], b: &[u8]) -> Vec<String> {
    let (Ok(a), Ok(b)) = (
        serde_json::from_slice::<Value>(a),
        serde_json::from_slice::<Value>(b),
    ) else {
        return Vec::new();
    };
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .cloned()
                .collect()
        }
        (Value::Array(a), Value::Array(b)) => {
            let by_id = |list: &[Value]| -> BTreeMap<String, Value> {
                list.iter()
                    .map(|v| (crate::export::normalize::identity(v), v.clone()))
                    .collect()
            };
            let (a, b) = (by_id(&a), by_id(&b));
            let ids: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            ids.into_iter()
                .filter(|id| a.get(*id) != b.get(*id))
                .cloned()
                .collect()
        }
        _ => Vec::new(),
    }
}

/// A file's subject in words, from its path.
fn subject_of(path: &str) -> String {
    let parts: Vec<&str> = path.trim_end_matches(".json").split('/').collect();
    match parts.as_slice() {
        ["vms", vmid, ..] => format!("VM {vmid}"),
        ["nodes", node, rest @ ..] => format!("node {node} {}", rest.join(" ")),
        ["access", what] => format!("access {what}"),
        ["zfs", what] => format!("ZFS {what}"),
        _ => parts.join(" "),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn sample() -> Bundle {
        let mut b = Bundle::new();
        b.insert_json("vms/105/config.json", &json!({"memory": 8192, "cores": 4}));
        b.insert_json(
            "access/acl.json",
            &json!([{"path": "/", "roleid": "Administrator", "type": "user", "ugid": "root@pam"}]),
        );
        b
    }

    #[test]
    fn only_stale_partials_are_cleaned_a_live_export_keeps_its_own() {
        let root = tempfile::tempdir().expect("tempdir");
        let live = root.path().join(format!("{PARTIAL}export-live"));
        let crashed = root.path().join(format!("{PARTIAL}export-crashed"));
        for dir in [&live, &crashed] {
            std::fs::create_dir_all(dir).expect("partial");
            std::fs::write(dir.join("file.json"), b"{}").expect("file");
        }
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        std::fs::File::open(&crashed)
            .and_then(|f| f.set_modified(two_hours_ago))
            .expect("age the crashed partial");
        clean_partials(root.path(), std::time::Duration::from_secs(3600)).expect("clean");
        assert!(
            live.join("file.json").exists(),
            "a live export's partial was removed"
        );
        assert!(!crashed.exists(), "a crashed export's partial was left");
    }

    #[test]
    fn the_same_content_writes_the_same_bytes_and_verifies() {
        let root = tempfile::tempdir().unwrap();
        let a = sample().write(root.path(), "export-a").unwrap();
        let b = sample().write(root.path(), "export-b").unwrap();
        for file in ["vms/105/config.json", "access/acl.json", MANIFEST] {
            assert_eq!(
                std::fs::read(a.join(file)).unwrap(),
                std::fs::read(b.join(file)).unwrap(),
                "{file}"
            );
        }
        let v = verify(&a).unwrap();
        assert!(v.ok(), "{:?}", v.problems);
        assert_eq!(v.files, 2);
        assert_eq!(list(root.path()).unwrap(), ["export-a", "export-b"]);
        assert_eq!(Bundle::read(&a).unwrap(), sample());
    }

    #[test]
    fn an_edited_missing_or_added_file_is_named() {
        let root = tempfile::tempdir().unwrap();
        let dir = sample().write(root.path(), "export-a").unwrap();
        std::fs::write(dir.join("vms/105/config.json"), "{\"memory\": 1}\n").unwrap();
        std::fs::remove_file(dir.join("access/acl.json")).unwrap();
        std::fs::write(dir.join("extra.txt"), "x").unwrap();
        let v = verify(&dir).unwrap();
        let named: Vec<String> = v.problems.iter().map(ToString::to_string).collect();
        assert_eq!(v.problems.len(), 3, "{named:?}");
        // In manifest order, then what the manifest does not know.
        assert_eq!(named[0], "access/acl.json: listed in the manifest, missing");
        assert!(
            named[1].starts_with("vms/105/config.json: content differs"),
            "{named:?}"
        );
        assert_eq!(named[2], "extra.txt: not in the manifest");
    }

    #[test]
    fn a_manifest_escaping_the_bundle_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = sample().write(root.path(), "export-a").unwrap();
        let hash = "0".repeat(64);
        std::fs::write(dir.join(MANIFEST), format!("{hash}  ../../etc/passwd\n")).unwrap();
        assert!(matches!(
            verify(&dir),
            Err(BundleError::Manifest { line: 1, .. })
        ));
    }

    #[test]
    fn a_diff_names_the_file_its_subject_and_the_keys() {
        let old = sample();
        let mut new = sample();
        new.insert_json("vms/105/config.json", &json!({"memory": 16384, "cores": 4}));
        new.insert_json("vms/106/config.json", &json!({"memory": 1}));
        let changes = diff(&old, &new);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert_eq!(changes[0].path, "vms/105/config.json");
        assert_eq!(changes[0].subject, "VM 105");
        assert_eq!(changes[0].change, ChangeKind::Changed);
        assert_eq!(changes[0].keys, ["memory"]);
        assert_eq!(changes[1].change, ChangeKind::Added);
        assert!(diff(&old, &sample()).is_empty());
    }
}
