//! Comparing two trees of files by content: every regular file's sha256 (and every symlink's
//! target) on each side, then what differs, is missing, is extra, or could not be read — a ZFS
//! checksum error surfaces here as an I/O error on the file that holds the bad block.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What one side holds at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// A file's sha256 and size.
    File(String, u64),
    /// A symlink's target.
    Link(PathBuf),
    /// It could not be read: why.
    Unreadable(String),
}

/// A tree: relative path → what is there.
#[derive(Debug, Default)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
    /// Bytes read.
    pub bytes: u64,
}

/// Reads and hashes every file under `root` (blocking: run it on a blocking thread).
pub fn scan(root: &Path) -> std::io::Result<Tree> {
    let mut tree = Tree::default();
    let mut pending = vec![root.to_owned()];
    let mut buf = vec![0u8; 1 << 20];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path)?;
                tree.entries.insert(rel, Entry::Link(target));
            } else if kind.is_file() {
                let found = match hash(&path, &mut buf) {
                    Ok((digest, size)) => {
                        tree.bytes += size;
                        Entry::File(digest, size)
                    }
                    Err(e) => Entry::Unreadable(e.to_string()),
                };
                tree.entries.insert(rel, found);
            }
        }
    }
    Ok(tree)
}

fn hash(path: &Path, buf: &mut [u8]) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut sha = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = file.read(buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(sha.finalize()), size))
}

impl Tree {
    /// Files (and links) in it.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How `copy` differs from `original`, one line per path (at most `limit`, then a count).
pub fn compare(original: &Tree, copy: &Tree, limit: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let paths: std::collections::BTreeSet<&String> =
        original.entries.keys().chain(copy.entries.keys()).collect();
    for path in paths {
        let problem = match (original.entries.get(path), copy.entries.get(path)) {
            (_, Some(Entry::Unreadable(e))) => Some(format!("{path}: unreadable on the copy: {e}")),
            (Some(Entry::Unreadable(e)), _) => {
                Some(format!("{path}: unreadable on the source: {e}"))
            }
            (Some(_), None) => Some(format!("{path}: missing on the copy")),
            (None, Some(_)) => Some(format!("{path}: on the copy only")),
            (Some(a), Some(b)) if a != b => Some(format!("{path}: content differs")),
            _ => None,
        };
        problems.extend(problem);
    }
    if problems.len() > limit {
        let more = problems.len() - limit;
        problems.truncate(limit);
        problems.push(format!("… and {more} more"));
    }
    problems
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn differences_are_named_by_path() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for dir in [a.path(), b.path()] {
            std::fs::create_dir_all(dir.join("sub")).unwrap();
            std::fs::write(dir.join("same.txt"), "x").unwrap();
            std::fs::write(dir.join("sub/changed.txt"), "1").unwrap();
        }
        std::fs::write(b.path().join("sub/changed.txt"), "2").unwrap();
        std::fs::write(a.path().join("gone.txt"), "g").unwrap();
        std::fs::write(b.path().join("new.txt"), "n").unwrap();
        let (ta, tb) = (scan(a.path()).unwrap(), scan(b.path()).unwrap());
        assert_eq!(ta.len(), 3);
        assert_eq!(
            compare(&ta, &tb, 10),
            [
                "gone.txt: missing on the copy",
                "new.txt: on the copy only",
                "sub/changed.txt: content differs"
            ]
        );
        assert!(compare(&ta, &scan(a.path()).unwrap(), 10).is_empty());
        assert_eq!(compare(&ta, &tb, 1).len(), 2);
    }
}
