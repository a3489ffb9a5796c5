//! Lenient decoding of Perl-typed JSON.
//!
//! Proxmox's API is Perl: a boolean arrives as `0`/`1` (rarely `"1"` or `true`), and numbers arrive as
//! strings wherever the value passed through string handling (`nextid` is `"100"`, `loadavg` is
//! `["0.12", …]`, `cpuinfo.mhz` is `"2400.000"`, `memory` in a VM config is `"8192"`). These
//! deserializers accept every form Proxmox is known to send, so a patch release cannot break decoding.

use serde::Deserialize;
use serde::de::{self, Deserializer, Unexpected};
use serde_json::Value;

fn to_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" | "" => Some(false),
            _ => None,
        },
        Value::Null => Some(false),
        _ => None,
    }
}

fn to_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn to_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => {
            let s = s.trim();
            s.parse().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                    .map(|f| f as u64)
            })
        }
        _ => None,
    }
}

fn invalid<E: de::Error>(v: &Value, what: &str) -> E {
    E::invalid_value(Unexpected::Other(&v.to_string()), &what)
}

/// `0`/`1`/`true`/`"1"`/`"yes"` → bool.
pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let v = Value::deserialize(d)?;
    to_bool(&v).ok_or_else(|| invalid(&v, "a Perl boolean (0/1)"))
}

/// Number or numeric string → u64.
pub fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    to_u64(&v).ok_or_else(|| invalid(&v, "a non-negative integer or numeric string"))
}

/// Number or numeric string → u32.
pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Value::deserialize(d)?;
    to_u64(&v)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| invalid(&v, "a 32-bit integer or numeric string"))
}

/// Optional number or numeric string → u64 (`null`/absent → None).
pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    to_u64(&v)
        .map(Some)
        .ok_or_else(|| invalid(&v, "a non-negative integer or numeric string"))
}

/// Number or numeric string → f64.
pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = Value::deserialize(d)?;
    to_f64(&v).ok_or_else(|| invalid(&v, "a number or numeric string"))
}

/// Optional number or numeric string → f64 (`null`/absent → None): RRD rows where nothing was
/// recorded carry only their time.
pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    to_f64(&v)
        .map(Some)
        .ok_or_else(|| invalid(&v, "a number or numeric string"))
}

/// A list of numbers or numeric strings (`loadavg`).
pub fn f64_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Array(items) => items
            .iter()
            .map(|i| to_f64(i).ok_or_else(|| invalid(i, "a number or numeric string")))
            .collect(),
        Value::Null => Ok(Vec::new()),
        _ => Err(invalid(&v, "a list of numbers")),
    }
}

/// A string, or a number rendered as one (config values, `exitstatus`).
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(value_to_string(&v))
}

/// How Perl would stringify a scalar.
pub fn value_to_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct T {
        #[serde(deserialize_with = "super::bool")]
        b: bool,
        #[serde(deserialize_with = "super::u64")]
        n: u64,
        #[serde(deserialize_with = "super::f64")]
        f: f64,
        #[serde(deserialize_with = "super::f64_list")]
        l: Vec<f64>,
        #[serde(default, deserialize_with = "super::opt_u64")]
        o: Option<u64>,
    }

    #[test]
    fn accepts_every_perl_form() {
        for (b, want) in [
            ("1", true),
            ("0", false),
            ("\"1\"", true),
            ("true", true),
            ("\"no\"", false),
        ] {
            let t: T = serde_json::from_str(&format!(
                r#"{{"b":{b},"n":"100","f":"2400.000","l":["0.12","1",2]}}"#
            ))
            .unwrap();
            assert_eq!(t.b, want, "{b}");
            assert_eq!(t.n, 100);
            assert!((t.f - 2400.0).abs() < f64::EPSILON);
            assert_eq!(t.l, vec![0.12, 1.0, 2.0]);
            assert_eq!(t.o, None);
        }
        let t: T = serde_json::from_str(r#"{"b":1,"n":7,"f":0.5,"l":[],"o":"8"}"#).unwrap();
        assert_eq!((t.n, t.o), (7, Some(8)));
    }

    #[test]
    fn rejects_what_is_not_a_number() {
        let err = serde_json::from_str::<T>(r#"{"b":1,"n":"abc","f":1,"l":[]}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("numeric string"), "{err}");
        assert!(serde_json::from_str::<T>(r#"{"b":"maybe","n":1,"f":1,"l":[]}"#).is_err());
    }
}
