//! What makes an export deterministic and safe to keep: object keys sorted (serde_json's map),
//! list entries in the order of their identity (a firewall's rules in their `pos` order), values
//! that change without anyone changing the host left out (`digest`, the clock), and secrets
//! replaced by a marker before anything is written.

use serde_json::{Map, Value};

/// What a secret's value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Keys that identify a list entry, the first present wins.
const IDENTITY_KEYS: &[&str] = &[
    "vmid", "userid", "groupid", "roleid", "poolid", "storage", "iface", "realm", "tokenid", "id",
    "pos", "name", "key",
];

/// Keys whose values are derived or change by themselves: a config's `digest` (a hash of the rest,
/// which would show as a change next to the real one), the node's clock.
const VOLATILE_KEYS: &[&str] = &["digest", "time", "localtime", "uptime"];

/// Whether `key` names a secret: Proxmox returns a cloud-init password hash (`cipassword`), and a
/// storage or notification target may carry one.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key == "encryption-key"
        || key == "keyring"
        || key == "token-value"
}

/// `value`, normalised.
pub fn normalize(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, v) in map {
                if VOLATILE_KEYS.contains(&key.as_str()) {
                    continue;
                }
                let v = if is_secret(&key) && !v.is_null() {
                    Value::String(REDACTED.to_owned())
                } else {
                    normalize(v)
                };
                out.insert(key, v);
            }
            Value::Object(out)
        }
        Value::Array(list) => {
            let mut list: Vec<Value> = list.into_iter().map(normalize).collect();
            list.sort_by_cached_key(sort_key);
            Value::Array(list)
        }
        other => other,
    }
}

/// Entries with a position keep their order; others go by identity, then by content.
fn sort_key(v: &Value) -> (u64, String, String) {
    let pos = v
        .get("pos")
        .and_then(|p| p.as_u64().or_else(|| p.as_str()?.parse().ok()))
        .unwrap_or(u64::MAX);
    (pos, identity(v), v.to_string())
}

/// A list entry's identity, for sorting and for naming what changed: the first of
/// [`IDENTITY_KEYS`] it has, an ACL's `path:type:ugid:roleid`, else its content.
pub fn identity(v: &Value) -> String {
    let text = |key: &str| match v.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    // An ACL entry first: its `roleid` alone would make every grant of a role one entry.
    if let (Some(path), Some(ugid)) = (text("path"), text("ugid")) {
        let kind = text("type").unwrap_or_default();
        let role = text("roleid").unwrap_or_default();
        return format!("{path}:{kind}:{ugid}:{role}");
    }
    if let Some(id) = IDENTITY_KEYS.iter().find_map(|k| text(k)) {
        return id;
    }
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A VM's pending changes: only the entries that are pending (a new value or a deletion), by
/// key. Entries without either are the current config, already in `config.json`.
pub fn pending_only(value: Value) -> Value {
    let Value::Array(list) = value else {
        return Value::Array(Vec::new());
    };
    let pending = list
        .into_iter()
        .filter(|e| e.get("pending").is_some() || e.get("delete").is_some())
        .collect();
    normalize(Value::Array(pending))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn the_same_content_in_any_order_normalises_to_the_same_bytes() {
        let a = json!([{"userid": "b@pve", "enable": 1}, {"userid": "a@pve", "enable": 1}]);
        let b = json!([{"enable": 1, "userid": "a@pve"}, {"userid": "b@pve", "enable": 1}]);
        assert_eq!(normalize(a).to_string(), normalize(b).to_string());
    }

    #[test]
    fn rules_keep_their_position_and_acls_have_an_identity() {
        let rules =
            normalize(json!([{"pos": 1, "action": "DROP"}, {"pos": 0, "action": "ACCEPT"}]));
        assert_eq!(rules[0]["action"], "ACCEPT");
        let acl = json!({"path": "/vms", "type": "group", "ugid": "ops", "roleid": "PVEVMUser"});
        assert_eq!(identity(&acl), "/vms:group:ops:PVEVMUser");
    }

    #[test]
    fn secrets_are_redacted_and_digests_and_clocks_dropped() {
        let v = normalize(json!({
            "cipassword": "$5$hash", "memory": 8192, "digest": "abc",
            "nested": {"password": "p", "time": 17}
        }));
        assert_eq!(
            v,
            json!({"cipassword": REDACTED, "memory": 8192, "nested": {"password": REDACTED}})
        );
        assert!(!v.to_string().contains("$5$hash"));
    }

    #[test]
    fn only_pending_entries_are_kept() {
        let v = pending_only(json!([
            {"key": "memory", "value": 8192, "pending": 16384},
            {"key": "cores", "value": 4},
            {"key": "net1", "value": "virtio", "delete": 1}
        ]));
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[0]["key"], "memory");
    }
}
