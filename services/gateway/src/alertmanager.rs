//! Alertmanager's webhook payload (version 4) to one [`AlertReceived`] per alert, with the first
//! problem named by its JSON path (`alerts[3].startsAt`) when the payload is malformed.
//!
//! Parsed by hand from a JSON value rather than derived: a derived decoder stops at serde's message
//! for the first mismatch, while a refused delivery is only useful to the operator reading
//! Alertmanager's log if it says which alert and which field.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proxflow_schemas::alert::{AlertReceived, AlertStatus};
use serde_json::Value;

/// The payload version this endpoint understands.
pub const VERSION: &str = "4";

/// Alertmanager's "not resolved" end time.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Bounds on what one alert may carry, so no delivery turns into a flood on the bus (every alert
/// becomes a message of its own). Labels identify an alert and are kept whole up to their bound;
/// past it, or past the counts, the delivery is malformed (400, named by path).
const MAX_ENTRIES: usize = 64;
const MAX_NAME: usize = 256;
const MAX_LABEL_VALUE: usize = 8 * 1024;
const MAX_ANNOTATION_VALUE: usize = 16 * 1024;
const MAX_URL: usize = 2048;

/// A malformed payload: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PayloadError {
    /// JSON path of the offending field.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> PayloadError {
    PayloadError {
        path: path.into(),
        message: message.into(),
    }
}

fn string<'a>(obj: &'a Value, path: &str, key: &str) -> Result<&'a str, PayloadError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(err(format!("{path}{key}"), "must be a string")),
        None => Err(err(format!("{path}{key}"), "is required")),
    }
}

fn optional_string(obj: &Value, path: &str, key: &str) -> Result<String, PayloadError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(err(format!("{path}{key}"), "must be a string")),
    }
}

fn string_map(
    obj: &Value,
    path: &str,
    key: &str,
    max_value: usize,
) -> Result<BTreeMap<String, String>, PayloadError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) if map.len() > MAX_ENTRIES => Err(err(
            format!("{path}{key}"),
            format!("has {} entries; at most {MAX_ENTRIES}", map.len()),
        )),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                _ if k.len() > MAX_NAME => Err(err(
                    format!("{path}{key}"),
                    format!("a name is {} characters; at most {MAX_NAME}", k.len()),
                )),
                Value::String(s) if s.len() > max_value => Err(err(
                    format!("{path}{key}.{k}"),
                    format!("is {} characters; at most {max_value}", s.len()),
                )),
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(err(format!("{path}{key}.{k}"), "must be a string")),
            })
            .collect(),
        Some(_) => Err(err(format!("{path}{key}"), "must be an object of strings")),
    }
}

/// An optional URL, at most [`MAX_URL`] characters.
fn url(obj: &Value, path: &str, key: &str) -> Result<String, PayloadError> {
    let url = optional_string(obj, path, key)?;
    if url.len() > MAX_URL {
        return Err(err(
            format!("{path}{key}"),
            format!("is {} characters; at most {MAX_URL}", url.len()),
        ));
    }
    Ok(url)
}

fn time(obj: &Value, path: &str, key: &str) -> Result<DateTime<Utc>, PayloadError> {
    let text = string(obj, path, key)?;
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            err(
                format!("{path}{key}"),
                format!("{text:?} is not an RFC 3339 time ({e})"),
            )
        })
}

fn status(obj: &Value, path: &str) -> Result<AlertStatus, PayloadError> {
    match string(obj, path, "status")? {
        "firing" => Ok(AlertStatus::Firing),
        "resolved" => Ok(AlertStatus::Resolved),
        other => Err(err(
            format!("{path}status"),
            format!("{other:?} is neither \"firing\" nor \"resolved\""),
        )),
    }
}

/// Parses a delivery. `received_by` and `now` are stamped on every alert.
pub fn parse(
    body: &[u8],
    received_by: &str,
    now: DateTime<Utc>,
) -> Result<Vec<AlertReceived>, PayloadError> {
    let payload: Value =
        serde_json::from_slice(body).map_err(|e| err("$", format!("not JSON: {e}")))?;
    if !payload.is_object() {
        return Err(err("$", "must be a JSON object"));
    }
    let version = string(&payload, "", "version")?;
    if version != VERSION {
        return Err(err(
            "version",
            format!("payload version {version:?} is not supported (expected \"{VERSION}\")"),
        ));
    }
    let receiver = string(&payload, "", "receiver")?.to_string();
    if receiver.len() > MAX_NAME {
        return Err(err(
            "receiver",
            format!("is {} characters; at most {MAX_NAME}", receiver.len()),
        ));
    }
    let group = {
        use sha2::Digest as _;
        let key = optional_string(&payload, "", "groupKey")?;
        hex::encode(&sha2::Sha256::digest(key.as_bytes())[..8])
    };
    let external_url = url(&payload, "", "externalURL")?;
    let Some(Value::Array(alerts)) = payload.get("alerts") else {
        return Err(err("alerts", "must be an array"));
    };
    if alerts.is_empty() {
        return Err(err("alerts", "is empty"));
    }
    alerts
        .iter()
        .enumerate()
        .map(|(i, alert)| {
            let path = format!("alerts[{i}].");
            if !alert.is_object() {
                return Err(err(format!("alerts[{i}]"), "must be an object"));
            }
            let labels = string_map(alert, &path, "labels", MAX_LABEL_VALUE)?;
            if labels.get("alertname").is_none_or(String::is_empty) {
                return Err(err(format!("{path}labels.alertname"), "is required"));
            }
            let fingerprint = string(alert, &path, "fingerprint")?.to_string();
            if fingerprint.is_empty() || !fingerprint.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(err(
                    format!("{path}fingerprint"),
                    "must be Alertmanager's alphanumeric fingerprint",
                ));
            }
            let status = status(alert, &path)?;
            let ends_at = match alert.get("endsAt") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s == ZERO_TIME || s.is_empty() => None,
                Some(_) => Some(time(alert, &path, "endsAt")?),
            };
            Ok(AlertReceived {
                fingerprint,
                status,
                labels,
                annotations: string_map(alert, &path, "annotations", MAX_ANNOTATION_VALUE)?,
                starts_at: time(alert, &path, "startsAt")?,
                ends_at,
                generator_url: url(alert, &path, "generatorURL")?,
                receiver: receiver.clone(),
                group: group.clone(),
                external_url: external_url.clone(),
                received_by: received_by.to_string(),
                received_at: now,
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A delivery as Alertmanager 0.25 posts it (captured from a real one).
    const REAL: &str = r#"{"receiver":"pf","status":"firing","alerts":[{"status":"firing","labels":{"alertname":"VMDown","severity":"critical","vmid":"101"},"annotations":{"summary":"x"},"startsAt":"2026-11-24T22:58:58.678296578Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"b82c3e9bcf4c141b"}],"groupLabels":{"alertname":"VMDown","vmid":"101"},"commonLabels":{"alertname":"VMDown","severity":"critical","vmid":"101"},"commonAnnotations":{"summary":"x"},"externalURL":"http://vm:19093","version":"4","groupKey":"{}:{alertname=\"VMDown\", vmid=\"101\"}","truncatedAlerts":0}"#;

    #[test]
    fn every_field_is_bounded_and_the_group_key_is_not_copied() {
        let mut payload: Value = serde_json::from_str(REAL).unwrap();
        payload["groupKey"] = Value::String("g".repeat(100_000));
        let alerts = parse(payload.to_string().as_bytes(), "token:am", Utc::now()).unwrap();
        assert_eq!(alerts[0].group.len(), 16);
        let encoded = serde_json::to_vec(&alerts[0]).unwrap();
        assert!(encoded.len() < 1_000, "{} bytes", encoded.len());

        let too_many: serde_json::Map<String, Value> = (0..65)
            .map(|i| (format!("l{i}"), Value::String("v".into())))
            .chain([("alertname".to_string(), Value::String("X".into()))])
            .collect();
        for (field, value, path) in [
            ("labels", Value::Object(too_many), "alerts[0].labels"),
            (
                "annotations",
                serde_json::json!({"description": "d".repeat(16 * 1024 + 1)}),
                "alerts[0].annotations.description",
            ),
            (
                "generatorURL",
                Value::String("u".repeat(2049)),
                "alerts[0].generatorURL",
            ),
        ] {
            let mut payload: Value = serde_json::from_str(REAL).unwrap();
            payload["alerts"][0][field] = value;
            let e = parse(payload.to_string().as_bytes(), "token:am", Utc::now()).unwrap_err();
            assert_eq!(e.path, path, "{e}");
        }
    }

    #[test]
    fn a_real_delivery_becomes_one_alert_each() {
        let alerts = parse(REAL.as_bytes(), "token:am", Utc::now()).unwrap();
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(a.name(), "VMDown");
        assert_eq!(a.labels["vmid"], "101");
        assert_eq!(a.status, AlertStatus::Firing);
        assert_eq!(a.ends_at, None);
        assert_eq!(a.receiver, "pf");
        assert_eq!(a.fingerprint, "b82c3e9bcf4c141b");
    }

    #[test]
    fn malformed_payloads_name_the_field() {
        let cases = [
            ("[]", "$"),
            (r#"{"version":"3","receiver":"pf","alerts":[]}"#, "version"),
            (r#"{"version":"4","receiver":"pf","alerts":[]}"#, "alerts"),
            (
                r#"{"version":"4","receiver":"pf","alerts":[{"status":"firing","labels":{},"startsAt":"2026-01-01T00:00:00Z","fingerprint":"a1"}]}"#,
                "alerts[0].labels.alertname",
            ),
            (
                r#"{"version":"4","receiver":"pf","alerts":[{"status":"firing","labels":{"alertname":"X"},"startsAt":"yesterday","fingerprint":"a1"}]}"#,
                "alerts[0].startsAt",
            ),
            (
                r#"{"version":"4","receiver":"pf","alerts":[{"status":"firing","labels":{"alertname":"X"},"startsAt":"2026-01-01T00:00:00Z","fingerprint":"a1"},{"status":"gone","labels":{"alertname":"X"},"startsAt":"2026-01-01T00:00:00Z","fingerprint":"a2"}]}"#,
                "alerts[1].status",
            ),
            (
                r#"{"version":"4","receiver":"pf","alerts":[{"status":"firing","labels":{"alertname":"X","vmid":101},"startsAt":"2026-01-01T00:00:00Z","fingerprint":"a1"}]}"#,
                "alerts[0].labels.vmid",
            ),
        ];
        for (body, path) in cases {
            let e = parse(body.as_bytes(), "t", Utc::now()).unwrap_err();
            assert_eq!(e.path, path, "{body}: {e}");
        }
    }
}
