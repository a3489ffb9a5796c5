//! Writes a review to its directory: `<name>.md` and `<name>.json`, each written to a temporary
//! file and renamed into place, so a reader never sees half a report and a rerun replaces it whole.

use std::path::{Path, PathBuf};

use proxflow_schemas::capacity_review::CapacityReview;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::render;

/// Where a review was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The Markdown report.
    pub markdown_path: String,
    /// The JSON report.
    pub json_path: String,
    /// SHA-256 of the JSON file, hex.
    pub sha256: String,
}

/// Why the report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The directory or a file could not be written.
    #[error("writing {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The report did not encode.
    #[error("encoding the review as JSON")]
    Encode(#[from] serde_json::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn replace(path: &Path, contents: &[u8]) -> Result<(), WriteError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The JSON report exactly as written (pretty, trailing newline): what the hash is of.
pub fn json(review: &CapacityReview) -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string_pretty(review)?;
    text.push('\n');
    Ok(text)
}

/// Writes `review` as `<dir>/<name>.md` and `<dir>/<name>.json`, creating `dir`.
pub fn write(dir: &Path, name: &str, review: &CapacityReview) -> Result<Written, WriteError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let markdown = dir.join(format!("{name}.md"));
    let json_path = dir.join(format!("{name}.json"));
    let text = json(review)?;
    replace(&markdown, render::markdown(review).as_bytes())?;
    replace(&json_path, text.as_bytes())?;
    Ok(Written {
        markdown_path: markdown.display().to_string(),
        json_path: json_path.display().to_string(),
        sha256: hex::encode(Sha256::digest(text.as_bytes())),
    })
}
