//! The official Proxmox VE 8 API schema (`pve8-apidata.json`), read at runtime, and a validator that
//! answers like Proxmox's own `PVE::JSONSchema`.
//!
//! The schema is the contract that nobody in this project wrote, so both the simulator (to reject
//! what a real host would reject) and the client's contract test (to check every request it sends)
//! validate against it. It is never copied into the repository: [`ApiSchema::locate`] finds the
//! shared checkout beside the repo or follows `PVE_API_SCHEMA`.
//!
//! What the dump cannot tell us is filled in by hand (module `formats`): the named formats
//! (`pve-vmid`, `dns-name`, ...) are Perl functions whose code is not in the dump. Those a Proxmox
//! client of ours uses are implemented with Proxmox's messages; unknown named formats are accepted,
//! because refusing them would reject valid requests for a reason no real host would give.

mod check;
pub(crate) mod formats;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use regex::Regex;
use serde_json::{Map, Value};

pub use check::Errors;
pub(crate) use check::split_index;
pub use formats::{parse_size, split_list};

/// Environment variable naming the schema file; it wins over the search.
pub const SCHEMA_ENV: &str = "PVE_API_SCHEMA";

/// Where the shared checkout keeps the schema, relative to the project root.
const RELATIVE_PATH: &str = "../shared/pve-api/pve8-apidata.json";

/// Why the schema could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// No candidate path held the file.
    #[error(
        "Proxmox API schema not found; looked in:\n  {}\nfix: set {SCHEMA_ENV}=/path/to/pve8-apidata.json, or clone the \
         shared repository beside this one so that {RELATIVE_PATH} exists relative to the project root",
        tried.join("\n  ")
    )]
    NotFound {
        /// Every path tried, in order.
        tried: Vec<String>,
    },
    /// The file exists but could not be read.
    #[error("cannot read the Proxmox API schema {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("the Proxmox API schema {path} is not valid JSON: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The JSON is not the expected tree of `{path, info, children}` nodes.
    #[error("the Proxmox API schema {path} has an unexpected shape: {source}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// What was expected.
        source: ShapeError,
    },
}

/// How the schema JSON departs from a tree of `{path, info, children}` nodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The document is not an array.
    #[error("the top level is not a JSON list of nodes")]
    NotAList,
    /// A node is not an object.
    #[error("a node is not an object")]
    NodeNotObject,
    /// A node has no `path` string.
    #[error("a node has no string `path`")]
    NoPath,
    /// No node describes a method.
    #[error("no node has an `info` object")]
    NoMethods,
}

/// A request path resolved to its schema template.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The schema path, e.g. `/nodes/{node}/qemu/{vmid}/clone`.
    pub template: String,
    /// The values of the `{param}` segments, as strings (percent-decoded).
    pub path_params: Map<String, Value>,
}

/// Why a request has no handler in the schema; both answer 501 like Proxmox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No schema path matches.
    #[error("Method '{method} {path}' not implemented")]
    NoSuchPath {
        /// The HTTP method.
        method: String,
        /// The requested path (after `/api2/json`).
        path: String,
    },
    /// The path exists but not with this method.
    #[error("Method '{method} {path}' not implemented")]
    NoSuchMethod {
        /// The HTTP method.
        method: String,
        /// The requested path (after `/api2/json`).
        path: String,
    },
}

/// The parsed schema; cloning is cheap (one `Arc`).
#[derive(Clone)]
pub struct ApiSchema {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ApiSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSchema")
            .field("paths", &self.inner.methods.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Path trie for routing.
    root: Segment,
    /// template -> method -> method info (`parameters`, `returns`, ...).
    methods: HashMap<String, BTreeMap<String, Value>>,
    /// Every `pattern` in the dump, compiled on first use (most are never needed, and compiling
    /// all of them up front dominated start-up); `None` when Rust's regex cannot express it.
    patterns: HashMap<String, OnceLock<Option<Regex>>>,
    /// Property-string formats that the dump names but does not inline.
    named_dicts: HashMap<&'static str, Value>,
}

#[derive(Default)]
struct Segment {
    literal: BTreeMap<String, Segment>,
    param: Option<(String, Box<Segment>)>,
    template: Option<String>,
}

impl ApiSchema {
    /// Reads and indexes the schema file.
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let tree: Value = serde_json::from_str(&text).map_err(|source| SchemaError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_tree(tree).map_err(|source| SchemaError::Shape {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Finds and loads the schema: `PVE_API_SCHEMA` when set, else `../shared/pve-api/pve8-apidata.json`
    /// relative to the working directory and each of its ancestors, then relative to this crate's
    /// source directory and its ancestors (so `cargo test` from anywhere in the workspace finds it).
    pub fn locate() -> Result<(Self, PathBuf), SchemaError> {
        if let Some(path) = std::env::var_os(SCHEMA_ENV) {
            let path = PathBuf::from(path);
            if path.is_file() {
                return Ok((Self::load(&path)?, path));
            }
            return Err(SchemaError::NotFound {
                tried: vec![format!("{} (from {SCHEMA_ENV})", path.display())],
            });
        }
        let mut tried: Vec<PathBuf> = Vec::new();
        let mut bases: Vec<PathBuf> = Vec::new();
        if let Ok(cwd) = std::env::current_dir() {
            bases.extend(cwd.ancestors().map(Path::to_path_buf));
        }
        bases.extend(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .map(Path::to_path_buf),
        );
        for base in bases {
            let candidate = normalize(&base.join(RELATIVE_PATH));
            if tried.contains(&candidate) {
                continue;
            }
            if candidate.is_file() {
                return Ok((Self::load(&candidate)?, candidate));
            }
            tried.push(candidate);
        }
        Err(SchemaError::NotFound {
            tried: tried.iter().map(|p| p.display().to_string()).collect(),
        })
    }

    fn from_tree(tree: Value) -> Result<Self, ShapeError> {
        let Value::Array(roots) = tree else {
            return Err(ShapeError::NotAList);
        };
        let mut methods = HashMap::new();
        let mut stack: Vec<Value> = roots;
        while let Some(node) = stack.pop() {
            let Value::Object(mut node) = node else {
                return Err(ShapeError::NodeNotObject);
            };
            let Some(Value::String(path)) = node.remove("path") else {
                return Err(ShapeError::NoPath);
            };
            if let Some(Value::Object(info)) = node.remove("info") {
                let by_method: BTreeMap<String, Value> = info
                    .into_iter()
                    .map(|(m, i)| (m.to_ascii_uppercase(), i))
                    .collect();
                methods.insert(path, by_method);
            }
            if let Some(Value::Array(children)) = node.remove("children") {
                stack.extend(children);
            }
        }
        if methods.is_empty() {
            return Err(ShapeError::NoMethods);
        }
        let mut root = Segment::default();
        for template in methods.keys() {
            let mut at = &mut root;
            for seg in template.split('/').filter(|s| !s.is_empty()) {
                at = match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => {
                        let slot = at
                            .param
                            .get_or_insert_with(|| (name.to_owned(), Box::default()));
                        &mut slot.1
                    }
                    None => at.literal.entry(seg.to_owned()).or_default(),
                };
            }
            at.template = Some(template.clone());
        }
        let mut patterns = HashMap::new();
        for by_method in methods.values() {
            for info in by_method.values() {
                collect_patterns(info, &mut patterns);
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                methods,
                patterns,
                named_dicts: formats::named_dicts(),
            }),
        })
    }

    /// Resolves `path` (after `/api2/json`) to its schema template; literal segments win over
    /// `{param}` segments, as in Proxmox's handler lookup.
    pub fn route(&self, method: &str, path: &str) -> Result<Route, RouteError> {
        let method = method.to_ascii_uppercase();
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let mut params = Map::new();
        let Some(template) = find(&self.inner.root, &segments, &mut params) else {
            return Err(RouteError::NoSuchPath {
                method,
                path: path.to_owned(),
            });
        };
        let known = self
            .inner
            .methods
            .get(template)
            .is_some_and(|m| m.contains_key(&method));
        if !known {
            return Err(RouteError::NoSuchMethod {
                method,
                path: path.to_owned(),
            });
        }
        Ok(Route {
            template: template.clone(),
            path_params: params,
        })
    }

    /// Validates request parameters (query, body and path merged) like `PVE::JSONSchema::validate`
    /// does before a handler runs. `Err` carries Proxmox's per-parameter messages.
    pub fn validate_params(
        &self,
        method: &str,
        template: &str,
        params: &Map<String, Value>,
    ) -> Result<(), BTreeMap<String, String>> {
        let Some(parameters) = self
            .method_info(method, template)
            .map(|i| i.get("parameters"))
        else {
            return Err(unknown_method(method, template));
        };
        let empty = Value::Object(Map::new());
        let parameters = parameters.unwrap_or(&empty);
        let props = parameters
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut errors = Errors::new();
        self.checker().check_object(
            "",
            &props,
            params,
            parameters.get("additionalProperties"),
            &mut errors,
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Checks response `data` against the method's `returns` schema, Perl-leniently (numeric strings
    /// pass as integers/numbers, `0`/`1`/`"0"`/`"1"`/`true`/`false` as booleans). `Err` lists one
    /// `path: message` line per problem.
    pub fn validate_returns(
        &self,
        method: &str,
        template: &str,
        data: &Value,
    ) -> Result<(), Vec<String>> {
        let Some(info) = self.method_info(method, template) else {
            return Err(unknown_method(method, template)
                .into_iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect());
        };
        let Some(returns) = info.get("returns") else {
            return Ok(());
        };
        let mut errors = Errors::new();
        self.checker()
            .check_prop(Some(data), returns, "", &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors
                .into_iter()
                .map(|(path, msg)| format!("{path}: {}", msg.trim_end()))
                .collect())
        }
    }

    /// The declared `type` of a parameter, following indexed names (`net0` -> `net[n]`).
    pub(crate) fn param_type(&self, method: &str, template: &str, name: &str) -> Option<String> {
        let props = self
            .method_info(method, template)?
            .get("parameters")?
            .get("properties")?
            .as_object()?;
        let prop = props
            .get(name)
            .or_else(|| check::indexed_schema(props, name))?;
        prop.get("type").and_then(Value::as_str).map(str::to_owned)
    }

    fn method_info(&self, method: &str, template: &str) -> Option<&Value> {
        self.inner
            .methods
            .get(template)?
            .get(&method.to_ascii_uppercase())
    }

    fn checker(&self) -> check::Checker<'_> {
        check::Checker {
            patterns: &self.inner.patterns,
            named_dicts: &self.inner.named_dicts,
        }
    }

    /// Every path template that has `method`, sorted (for sweeps over the whole API).
    pub fn templates(&self, method: &str) -> Vec<String> {
        let mut templates: Vec<String> = self
            .inner
            .methods
            .iter()
            .filter(|(_, methods)| methods.contains_key(method))
            .map(|(template, _)| template.clone())
            .collect();
        templates.sort();
        templates
    }

    /// Whether an API token may call the method (`allowtoken`, 1 unless the dump says 0).
    pub(crate) fn allows_token(&self, method: &str, template: &str) -> bool {
        self.method_info(method, template)
            .and_then(|i| i.get("allowtoken"))
            .is_none_or(|v| check::truthy(Some(v)))
    }

    /// Whether the schema has `method` on `template`; fault keys are checked with it at start.
    pub(crate) fn has_method(&self, method: &str, template: &str) -> bool {
        self.method_info(method, template).is_some()
    }
}

fn unknown_method(method: &str, template: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(
        "_root".to_owned(),
        format!("no method '{method} {template}' in the schema"),
    )])
}

/// Depth-first match, literal children before the `{param}` child, backtracking on dead ends.
fn find<'a>(
    at: &'a Segment,
    rest: &[String],
    params: &mut Map<String, Value>,
) -> Option<&'a String> {
    let Some((first, tail)) = rest.split_first() else {
        return at.template.as_ref();
    };
    if let Some(next) = at.literal.get(first)
        && let Some(found) = find(next, tail, params)
    {
        return Some(found);
    }
    if let Some((name, next)) = &at.param {
        let mut inner = params.clone();
        inner.insert(name.clone(), Value::String(first.clone()));
        if let Some(found) = find(next, tail, &mut inner) {
            *params = inner;
            return Some(found);
        }
    }
    None
}

fn collect_patterns(value: &Value, out: &mut HashMap<String, OnceLock<Option<Regex>>>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "pattern"
                    && let Some(p) = v.as_str()
                {
                    out.entry(p.to_owned()).or_default();
                } else {
                    collect_patterns(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_patterns(v, out)),
        _ => {}
    }
}

/// Compiles a dump pattern. Rust's regex refuses a few that Perl takes because their compiled
/// form is too big (`[...\w...]{0,256}` with Unicode classes); those are retried with the bounded
/// repetition's upper bound dropped, a small leniency instead of no check at all.
pub(crate) fn compile_pattern(pattern: &str) -> Option<Regex> {
    let rust = perl_to_rust_regex(pattern);
    if let Ok(re) = Regex::new(&rust) {
        return Some(re);
    }
    let unbounded = Regex::new(r"\{(\d+),\d+\}")
        .ok()?
        .replace_all(&rust, "{$1,}")
        .into_owned();
    Regex::new(&unbounded).ok()
}

/// Proxmox matches `m/^$pattern$/`; the dump has Perl's stringified regexes (`(?^:...)`, `{,16}`).
fn perl_to_rust_regex(pattern: &str) -> String {
    let converted = pattern.replace("(?^", "(?").replace("{,", "{0,");
    format!("^(?:{converted})$")
}

/// Lexically removes `..` so the error message lists readable paths.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                if !out.pop() && !out.has_root() {
                    out.push("..");
                }
            }
            std::path::Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests;
