//! The validation walk, transcribed from `PVE::JSONSchema::check_prop`/`check_object`/`check_type`
//! and `parse_property_string` (pve-common), including their order of checks and their messages:
//! type, then format, pattern, maxLength, minLength, range, enum; the first failure per property
//! wins. Format errors are reported as `invalid format - <reason>\n` with Perl's trailing newline,
//! and a property string's inner errors as `invalid format - format error\n<key>.<sub>: <msg>\n`,
//! byte for byte what a real host returns in the `errors` map.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use regex::Regex;
use serde_json::{Map, Value};

use super::formats::{self, FormatError};

/// Per-parameter messages keyed by dotted path (`net0.tag`); `_root` for the value itself.
pub type Errors = BTreeMap<String, String>;

/// Indexed names (`net[n]`) are accepted for n up to this when the description gives no bound:
/// the qemu-server limits for the keys we use (net, ipconfig) are 32 slots.
const DEFAULT_INDEX_MAX: u32 = 31;

pub(crate) struct Checker<'a> {
    pub(crate) patterns: &'a HashMap<String, OnceLock<Option<Regex>>>,
    pub(crate) named_dicts: &'a HashMap<&'static str, Value>,
}

/// Why `parse_property_string` refused a property string; `Display` is pve-common's `die` text,
/// trailing newline included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PropertyStringError {
    #[error("properties must not contain newlines\n")]
    Newline,
    #[error("duplicate key in comma-separated list property: {0}\n")]
    DuplicateKey(String),
    #[error("key alias '{0}' is already defined\n")]
    DuplicateKeyAlias(String),
    #[error("value without key, but schema does not define a default key\n")]
    NoDefaultKey,
    #[error("missing key in comma-separated list property\n")]
    MissingKey,
    /// The parts parsed but break the format's schema: `PVE::Exception` stringifies as its
    /// message, then one `key: msg` line per error.
    #[error("format error\n{}", error_lines(.0))]
    Invalid(Errors),
}

fn error_lines(errors: &Errors) -> String {
    errors
        .iter()
        .map(|(key, err)| format!("{key}: {}\n", err.trim_end_matches('\n')))
        .collect()
}

/// Why a value does not match its `format`: an inline or named property string, or a named format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum InvalidFormat {
    #[error(transparent)]
    PropertyString(#[from] PropertyStringError),
    #[error(transparent)]
    Named(#[from] FormatError),
}

fn add_error(errors: &mut Errors, path: &str, msg: impl Into<String>) {
    let path = if path.is_empty() { "_root" } else { path };
    let msg = msg.into();
    errors
        .entry(path.to_owned())
        .and_modify(|old| {
            old.push('\n');
            old.push_str(&msg);
        })
        .or_insert(msg);
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Perl truthiness of a schema flag (`optional: 1`, `default_key: 1`, ...).
pub(crate) fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty() && s != "0",
        Some(_) => true,
    }
}

/// `^[+-]?\d+$`
pub(crate) fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Perl's `is_number`: `^[+-]?(\d+\.\d+|\d+\.|\.\d+|\d+)([eE][+-]?\d+)?$`
pub(crate) fn is_number(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    if let Some(exp) = exponent {
        let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        if exp.is_empty() || !exp.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    match frac {
        None => !int.is_empty() && all_digits(int),
        Some(f) => (!int.is_empty() || !f.is_empty()) && all_digits(int) && all_digits(f),
    }
}

/// A scalar as Perl would stringify it; `None` for arrays and objects.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "1".into() } else { "0".into() }),
        Value::Null => Some(String::new()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// Perl's name for a reference type, as it appears in `type check ... got HASH`.
fn ref_name(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "ARRAY",
        Value::Object(_) => "HASH",
        _ => "JSON::PP::Boolean",
    }
}

/// A number from the schema (`minimum` is sometimes the string "0").
fn schema_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// How Perl would print a schema number in a message: `100`, not `100.0`.
fn schema_number_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Splits `net12` into (`net`, 12); `None` for names without a canonical trailing index.
pub(crate) fn split_index(name: &str) -> Option<(&str, u32)> {
    let cut = name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (prefix, digits) = name.split_at(cut);
    if prefix.is_empty() || digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    Some((prefix, digits.parse().ok()?))
}

/// The schema of an indexed name (`net0` -> `net[n]`), if the index is within the bound that the
/// description states ("(n is 0 to 30)") or [`DEFAULT_INDEX_MAX`].
pub(crate) fn indexed_schema<'m>(props: &'m Map<String, Value>, name: &str) -> Option<&'m Value> {
    let (prefix, index) = split_index(name)?;
    let schema = props.get(&format!("{prefix}[n]"))?;
    let max = schema
        .get("description")
        .and_then(Value::as_str)
        .and_then(stated_max)
        .unwrap_or(DEFAULT_INDEX_MAX);
    (index <= max).then_some(schema)
}

/// Parses the "(n is 0 to N)" the descriptions carry.
fn stated_max(description: &str) -> Option<u32> {
    let at = description.find("(n is 0 to ")?;
    let rest = &description[at + "(n is 0 to ".len()..];
    let end = rest.find(')')?;
    rest[..end].parse().ok()
}

impl Checker<'_> {
    pub(crate) fn check_object(
        &self,
        path: &str,
        props: &Map<String, Value>,
        value: &Map<String, Value>,
        additional: Option<&Value>,
        errors: &mut Errors,
    ) {
        for (key, schema) in props {
            // Collapsed indexed entries stand for optional net0..netN keys, checked below.
            if key.ends_with("[n]") {
                continue;
            }
            self.check_prop(value.get(key), schema, &join(path, key), errors);
        }
        for (key, v) in value {
            let newpath = join(path, key);
            if let Some(schema) = props.get(key) {
                if let Some(requires) = schema.get("requires").and_then(Value::as_str)
                    && value.get(requires).is_none_or(Value::is_null)
                {
                    add_error(
                        errors,
                        &join(path, requires),
                        format!("missing property - '{newpath}' requires this property"),
                    );
                }
                continue;
            }
            if let Some(schema) = indexed_schema(props, key) {
                self.check_prop(Some(v), schema, &newpath, errors);
                continue;
            }
            match additional {
                Some(extra @ Value::Object(_)) => self.check_prop(Some(v), extra, &newpath, errors),
                Some(flag) if !truthy(Some(flag)) => add_error(
                    errors,
                    &newpath,
                    "property is not defined in schema and the schema does not allow additional properties",
                ),
                _ => {}
            }
        }
    }

    pub(crate) fn check_prop(
        &self,
        value: Option<&Value>,
        schema: &Value,
        path: &str,
        errors: &mut Errors,
    ) {
        let Some(s) = schema.as_object() else {
            add_error(errors, path, "Invalid schema definition.");
            return;
        };
        let ty = s.get("type").and_then(Value::as_str);
        let value = match value {
            None | Some(Value::Null) => {
                if ty == Some("null") {
                    return;
                }
                if !truthy(s.get("optional"))
                    && !s.contains_key("alias")
                    && !s.contains_key("group")
                {
                    add_error(errors, path, "property is missing and it is not optional");
                }
                return;
            }
            Some(v) => v,
        };
        if !check_type(path, s.get("type"), value, errors) {
            return;
        }
        match value {
            Value::Array(items) => {
                if let Some(item_schema) = s.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check_prop(Some(item), item_schema, &format!("{path}[{i}]"), errors);
                    }
                }
            }
            Value::Object(map) => {
                let props = s.get("properties").and_then(Value::as_object);
                let additional = s.get("additionalProperties");
                if props.is_some() || truthy(additional) {
                    let empty = Map::new();
                    self.check_object(path, props.unwrap_or(&empty), map, additional, errors);
                }
            }
            scalar => {
                let text = scalar_text(scalar).unwrap_or_default();
                self.check_scalar(&text, s, path, errors);
            }
        }
    }

    fn check_scalar(&self, text: &str, s: &Map<String, Value>, path: &str, errors: &mut Errors) {
        if let Some(format) = s.get("format")
            && let Err(msg) = self.check_format(format, text, path)
        {
            add_error(errors, path, format!("invalid format - {msg}"));
            return;
        }
        if let Some(pattern) = s.get("pattern").and_then(Value::as_str) {
            // A pattern Rust cannot compile is accepted (none in the PVE 8 dump; a unit test
            // keeps it that way) rather than rejecting requests a real host takes.
            let compiled = self.patterns.get(pattern).and_then(|cell| {
                cell.get_or_init(|| super::compile_pattern(pattern))
                    .as_ref()
            });
            if let Some(re) = compiled
                && !re.is_match(text)
            {
                add_error(errors, path, "value does not match the regex pattern");
                return;
            }
        }
        let length = text.chars().count();
        if let Some(max) = s.get("maxLength").and_then(schema_number)
            && length as f64 > max
        {
            let max = s
                .get("maxLength")
                .map(schema_number_text)
                .unwrap_or_default();
            add_error(
                errors,
                path,
                format!("value may only be {max} characters long"),
            );
            return;
        }
        if let Some(min) = s.get("minLength").and_then(schema_number)
            && (length as f64) < min
        {
            let min = s
                .get("minLength")
                .map(schema_number_text)
                .unwrap_or_default();
            add_error(
                errors,
                path,
                format!("value must be at least {min} characters long"),
            );
            return;
        }
        if is_number(text)
            && let Ok(number) = text.parse::<f64>()
        {
            if let Some(max) = s.get("maximum")
                && schema_number(max).is_some_and(|m| number > m)
            {
                let max = schema_number_text(max);
                add_error(
                    errors,
                    path,
                    format!("value must have a maximum value of {max}"),
                );
                return;
            }
            if let Some(min) = s.get("minimum")
                && schema_number(min).is_some_and(|m| number < m)
            {
                let min = schema_number_text(min);
                add_error(
                    errors,
                    path,
                    format!("value must have a minimum value of {min}"),
                );
                return;
            }
        }
        if let Some(options) = s.get("enum").and_then(Value::as_array) {
            let listed: Vec<String> = options.iter().filter_map(scalar_text).collect();
            if !listed.iter().any(|o| o == text) {
                add_error(
                    errors,
                    path,
                    format!(
                        "value '{text}' does not have a value in the enumeration '{}'",
                        listed.join(", ")
                    ),
                );
            }
        }
    }

    /// `check_format`: an inline dict is a property string; a name is a registered format.
    fn check_format(&self, format: &Value, text: &str, path: &str) -> Result<(), InvalidFormat> {
        match format {
            Value::Object(dict) => {
                self.parse_property_string(dict, text, path)?;
            }
            Value::String(name) => {
                match self
                    .named_dicts
                    .get(name.as_str())
                    .and_then(Value::as_object)
                {
                    Some(dict) => {
                        self.parse_property_string(dict, text, path)?;
                    }
                    None => formats::check_named(name, text)?,
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `parse_property_string` of pve-common: `k=v` parts, a bare value for the `default_key`,
    /// `alias`/`keyAlias` (net's `virtio=<mac>`), booleans normalised, then `check_object` with
    /// additional properties forbidden.
    pub(crate) fn parse_property_string(
        &self,
        format: &Map<String, Value>,
        data: &str,
        path: &str,
    ) -> Result<Map<String, Value>, PropertyStringError> {
        let mut res = Map::new();
        let mut default_key: Option<String> = None;
        for part in split_perl(data) {
            if part.trim().is_empty() {
                continue;
            }
            if part.contains('\n') {
                return Err(PropertyStringError::Newline);
            }
            match part.split_once('=') {
                Some((k, v)) if !k.is_empty() && !v.is_empty() => {
                    if res.contains_key(k) {
                        return Err(PropertyStringError::DuplicateKey(k.to_owned()));
                    }
                    let mut key = k.to_owned();
                    let mut schema = format.get(k);
                    if let Some(alias) = schema.and_then(|s| s.get("alias")).and_then(Value::as_str)
                    {
                        if let Some(key_alias) = schema
                            .and_then(|s| s.get("keyAlias"))
                            .and_then(Value::as_str)
                        {
                            if res.contains_key(key_alias) {
                                return Err(PropertyStringError::DuplicateKeyAlias(
                                    key_alias.to_owned(),
                                ));
                            }
                            res.insert(key_alias.to_owned(), Value::String(k.to_owned()));
                        }
                        key = alias.to_owned();
                        schema = format.get(alias);
                    }
                    let mut value = v.to_owned();
                    if schema.and_then(|s| s.get("type")).and_then(Value::as_str) == Some("boolean")
                        && let Some(b) = parse_boolean(&value)
                    {
                        value = b.to_owned();
                    }
                    res.insert(key, Value::String(value));
                }
                None => {
                    if let Some(dk) = default_key {
                        return Err(PropertyStringError::DuplicateKey(dk));
                    }
                    let Some(dk) = format
                        .iter()
                        .find(|(_, s)| truthy(s.get("default_key")))
                        .map(|(k, _)| k.clone())
                    else {
                        return Err(PropertyStringError::NoDefaultKey);
                    };
                    if res.get(&dk).is_some_and(|v| truthy(Some(v))) {
                        return Err(PropertyStringError::DuplicateKey(dk));
                    }
                    res.insert(dk.clone(), Value::String(part.to_owned()));
                    default_key = Some(dk);
                }
                Some(_) => return Err(PropertyStringError::MissingKey),
            }
        }
        let mut errors = Errors::new();
        self.check_object(path, format, &res, Some(&Value::from(0)), &mut errors);
        if errors.is_empty() {
            Ok(res)
        } else {
            Err(PropertyStringError::Invalid(errors))
        }
    }
}

/// `check_type`; records the error and returns false on a mismatch.
fn check_type(path: &str, ty: Option<&Value>, value: &Value, errors: &mut Errors) -> bool {
    let Some(ty) = ty else { return true };
    let ty = match ty {
        Value::String(t) => t.as_str(),
        Value::Array(alternatives) => {
            let ok = alternatives.iter().any(|t| {
                let mut scratch = Errors::new();
                check_type(path, Some(t), value, &mut scratch)
            });
            if !ok {
                let names: Vec<String> = alternatives.iter().filter_map(scalar_text).collect();
                add_error(
                    errors,
                    path,
                    format!("type check ('{}') failed", names.join("|")),
                );
            }
            return ok;
        }
        _ => return true,
    };
    match ty {
        "any" => true,
        "null" => {
            add_error(
                errors,
                path,
                "type check ('null') failed - value is not null",
            );
            false
        }
        "array" | "object" => {
            let ok = (ty == "array" && value.is_array()) || (ty == "object" && value.is_object());
            if !ok {
                add_error(errors, path, format!("type check ('{ty}') failed"));
            }
            ok
        }
        _ => match value {
            Value::Array(_) | Value::Object(_) => {
                add_error(
                    errors,
                    path,
                    format!("type check ('{ty}') failed - got {}", ref_name(value)),
                );
                false
            }
            // JSON booleans arrive as JSON::PP::Boolean objects: fine for booleans only.
            Value::Bool(_) if ty == "boolean" => true,
            Value::Bool(_) if matches!(ty, "string" | "integer" | "number") => {
                add_error(
                    errors,
                    path,
                    format!("type check ('{ty}') failed - got {}", ref_name(value)),
                );
                false
            }
            scalar => {
                let text = scalar_text(scalar).unwrap_or_default();
                let ok = match ty {
                    "boolean" => text == "1" || text == "0",
                    "integer" => is_integer(&text),
                    "number" => is_number(&text),
                    _ => true,
                };
                if !ok {
                    add_error(
                        errors,
                        path,
                        format!("type check ('{ty}') failed - got '{text}'"),
                    );
                }
                ok
            }
        },
    }
}

/// `parse_boolean` of pve-common.
fn parse_boolean(v: &str) -> Option<&'static str> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "on" | "yes" | "true" => Some("1"),
        "0" | "off" | "no" | "false" => Some("0"),
        _ => None,
    }
}

/// Perl's `split(/,/, $data)`: trailing empty fields are dropped.
fn split_perl(data: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = data.split(',').collect();
    while parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    parts
}
