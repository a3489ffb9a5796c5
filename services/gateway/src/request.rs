//! The body of `POST /v1/provision` and its validation.
//!
//! The body is read field by field from a JSON object rather than through a derived `Deserialize`,
//! so that a caller learns every problem at once, each under its path (`name`, `overrides.cores`,
//! `ip.cidr`, `ssh_keys[1]`), instead of serde's first error.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use proxflow_platform::{Profile, Profiles, Subnet};
use proxflow_schemas::provision::{IpConfig, VmOverrides};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Profile used when a request names none.
pub const DEFAULT_PROFILE: &str = "k8s-node";
/// Most SSH keys or tags in one request.
const MAX_LIST: usize = 32;
/// Longest idempotency key.
const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Longest tag (Proxmox keeps tags in the VM's one-line config; nobody needs more).
const MAX_TAG: usize = 64;
/// OpenSSH public key types cloud-init can install.
const SSH_KEY_TYPES: [&str; 7] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// A provisioning request as the API takes it. `proxflow provision` serialises this; the gateway
/// reads bodies with [`parse`], which applies the defaults and validates every field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    /// VM name, a DNS label.
    pub name: String,
    /// Profile name; [`DEFAULT_PROFILE`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Changes to the profile's sizes.
    #[serde(default, skip_serializing_if = "is_default")]
    pub overrides: VmOverrides,
    /// OpenSSH public keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
    /// Address configuration; DHCP when absent.
    #[serde(default = "dhcp")]
    pub ip: IpConfig,
    /// Proxmox tags added to the profile's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Repeating a request with the same key names the same workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

fn is_default(o: &VmOverrides) -> bool {
    *o == VmOverrides::default()
}

fn dhcp() -> IpConfig {
    IpConfig::Dhcp
}

impl ProvisionRequest {
    /// The profile name with the default applied.
    pub fn profile_name(&self) -> &str {
        self.profile.as_deref().unwrap_or(DEFAULT_PROFILE)
    }
}

/// Problems by field path, as the 422 body carries them.
pub type FieldErrors = BTreeMap<String, String>;

/// Collects problems; the first one per field is kept.
#[derive(Default)]
struct Problems(FieldErrors);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.entry(path.into()).or_insert_with(|| message.into());
    }

    fn string(&mut self, path: &str, value: Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s),
            _ => {
                self.add(path, "must be a string");
                None
            }
        }
    }

    fn list(&mut self, path: &str, value: Value) -> Vec<(String, Value)> {
        match value {
            Value::Array(items) if items.len() <= MAX_LIST => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (format!("{path}[{i}]"), v))
                .collect(),
            Value::Array(_) => {
                self.add(path, format!("at most {MAX_LIST} entries"));
                Vec::new()
            }
            _ => {
                self.add(path, "must be a list");
                Vec::new()
            }
        }
    }

    fn object(&mut self, path: &str, value: Value) -> Option<Map<String, Value>> {
        match value {
            Value::Object(map) => Some(map),
            _ => {
                self.add(path, "must be an object");
                None
            }
        }
    }

    fn unknown(&mut self, prefix: &str, rest: Map<String, Value>) {
        for key in rest.keys() {
            self.add(format!("{prefix}{key}"), "unknown field");
        }
    }
}

/// Decodes and validates a body against the configured profiles. `header_key` is the
/// `Idempotency-Key` header, an alternative to the body's `idempotency_key`.
pub fn parse(
    body: &[u8],
    header_key: Option<&str>,
    profiles: &Profiles,
) -> Result<ProvisionRequest, FieldErrors> {
    let mut p = Problems::default();
    // serde_json keeps the last of two equal keys; a request saying two things is refused instead.
    if let Err(e) = serde_json::from_slice::<UniqueKeys>(body)
        && e.is_data()
    {
        return Err(FieldErrors::from([("body".into(), e.to_string())]));
    }
    let mut fields = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(FieldErrors::from([(
                "body".into(),
                "must be a JSON object".into(),
            )]));
        }
        Err(e) => {
            return Err(FieldErrors::from([(
                "body".into(),
                format!("not valid JSON: {e}"),
            )]));
        }
    };

    let name = match fields.remove("name") {
        Some(v) => p.string("name", v).filter(|name| {
            let ok = is_dns_label(name);
            if !ok {
                p.add(
                    "name",
                    "must be a DNS label: 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'",
                );
            }
            ok
        }),
        None => {
            p.add("name", "required");
            None
        }
    };

    let profile = fields
        .remove("profile")
        .and_then(|v| p.string("profile", v));
    let profile_name = profile.as_deref().unwrap_or(DEFAULT_PROFILE);
    let chosen = profiles.get(profile_name);
    if chosen.is_none() {
        p.add(
            "profile",
            format!(
                "unknown profile {profile_name:?}; known: {}",
                profiles.names().join(", ")
            ),
        );
    }

    let (overrides, overrides_ok) = fields
        .remove("overrides")
        .map_or((VmOverrides::default(), true), |v| overrides(&mut p, v));
    // Checked even when some override did not decode (it counts as absent), so the limits of the
    // others are reported too; a field already in error keeps its first message.
    if let Some(profile) = chosen
        && let Err(errors) = profile.shape(&overrides)
    {
        for (field, message) in errors {
            p.add(field, message);
        }
    }

    let ssh_keys: Vec<String> = match fields.remove("ssh_keys") {
        Some(v) => p
            .list("ssh_keys", v)
            .into_iter()
            .filter_map(|(path, v)| {
                let key = p.string(&path, v)?;
                let key = key.trim().to_owned();
                check_ssh_key(&key)
                    .map_err(|e| p.add(&path, e.to_string()))
                    .ok()?;
                Some(key)
            })
            .collect(),
        None => Vec::new(),
    };

    let ip = match fields.remove("ip") {
        Some(v) => ip_config(&mut p, v),
        None => Some(IpConfig::Dhcp),
    };
    if let (Some(profile), Some(IpConfig::Static { cidr, .. })) = (chosen, &ip)
        && let Some(why) = outside_subnet(profile, profile_name, cidr)
    {
        p.add("ip.cidr", why);
    }

    let tags: Vec<String> = match fields.remove("tags") {
        Some(v) => p
            .list("tags", v)
            .into_iter()
            .filter_map(|(path, v)| {
                let tag = p.string(&path, v)?;
                if tag.len() > MAX_TAG {
                    p.add(&path, format!("is {} characters; at most {MAX_TAG}", tag.len()));
                    None
                } else if is_tag(&tag) {
                    Some(tag)
                } else {
                    p.add(
                        &path,
                        "must be a Proxmox tag: a-z, 0-9 or '_' first, then a-z, 0-9, '_', '-', '+', '.'",
                    );
                    None
                }
            })
            .collect(),
        None => Vec::new(),
    };

    let body_key = fields
        .remove("idempotency_key")
        .and_then(|v| p.string("idempotency_key", v));
    let idempotency_key = match (body_key, header_key) {
        (Some(body), Some(header)) if body != header => {
            p.add(
                "idempotency_key",
                "differs from the Idempotency-Key header; send one or make them equal",
            );
            None
        }
        (Some(key), _) => Some(key),
        (None, header) => header.map(str::to_owned),
    };
    if let Some(key) = &idempotency_key
        && !is_idempotency_key(key)
    {
        p.add(
            "idempotency_key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"),
        );
    }

    p.unknown("", fields);

    match (name, ip) {
        (Some(name), Some(ip)) if overrides_ok && p.0.is_empty() => Ok(ProvisionRequest {
            name,
            profile: Some(profile_name.to_owned()),
            overrides,
            ssh_keys,
            ip,
            tags,
            idempotency_key,
        }),
        _ => Err(p.0),
    }
}

/// The overrides that decoded, and whether all of them did.
fn overrides(p: &mut Problems, value: Value) -> (VmOverrides, bool) {
    let Some(mut map) = p.object("overrides", value) else {
        return (VmOverrides::default(), false);
    };
    let mut ok = true;
    let mut size = |key: &str| {
        let v = map.remove(key)?;
        let n = v.as_u64().and_then(|n| u32::try_from(n).ok());
        if n.is_none() {
            p.add(format!("overrides.{key}"), "must be a whole number");
            ok = false;
        }
        n
    };
    let overrides = VmOverrides {
        cores: size("cores"),
        memory_mib: size("memory_mib"),
        balloon_mib: size("balloon_mib"),
        disk_gib: size("disk_gib"),
    };
    let unknown = !map.is_empty();
    p.unknown("overrides.", map);
    (overrides, ok && !unknown)
}

fn ip_config(p: &mut Problems, value: Value) -> Option<IpConfig> {
    let mut map = p.object("ip", value)?;
    let mode = match map.remove("mode") {
        Some(v) => p.string("ip.mode", v)?,
        None => {
            p.add("ip.mode", "required: \"dhcp\" or \"static\"");
            return None;
        }
    };
    match mode.as_str() {
        "dhcp" => {
            p.unknown("ip.", map);
            Some(IpConfig::Dhcp)
        }
        "static" => {
            let mut text = |key: &str| match map.remove(key) {
                Some(v) => p.string(&format!("ip.{key}"), v),
                None => {
                    p.add(format!("ip.{key}"), "required with mode \"static\"");
                    None
                }
            };
            let (cidr, gateway) = (text("cidr"), text("gateway"));
            p.unknown("ip.", map);
            let (cidr, gateway) = (cidr?, gateway?);
            match check_static(&cidr, &gateway) {
                Ok(()) => Some(IpConfig::Static { cidr, gateway }),
                Err((field, message)) => {
                    p.add(format!("ip.{field}"), message);
                    None
                }
            }
        }
        _ => {
            p.add("ip.mode", "must be \"dhcp\" or \"static\"");
            None
        }
    }
}

/// `10.20.0.44/24` with gateway `10.20.0.1`: a host address (not the network or broadcast address)
/// and a gateway inside the same subnet that is another host.
fn check_static(cidr: &str, gateway: &str) -> Result<(), (&'static str, String)> {
    let bad_cidr = || {
        (
            "cidr",
            "must be an IPv4 host address with prefix, e.g. 10.20.0.44/24".to_owned(),
        )
    };
    let (addr, prefix) = cidr.split_once('/').ok_or_else(bad_cidr)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad_cidr())?;
    let prefix: u32 = prefix.parse().map_err(|_| bad_cidr())?;
    if !(1..=31).contains(&prefix) {
        return Err(("cidr", "the prefix length must be 1 to 31".into()));
    }
    let mask = u32::MAX << (32 - prefix);
    let network = u32::from(addr) & mask;
    let broadcast = network | !mask;
    // A /31 has no network or broadcast address (RFC 3021): both addresses are hosts.
    let is_host = |a: u32| prefix == 31 || (a != network && a != broadcast);
    if !is_host(u32::from(addr)) {
        return Err((
            "cidr",
            "is the subnet's network or broadcast address".into(),
        ));
    }
    let gw: Ipv4Addr = gateway
        .parse()
        .map_err(|_| ("gateway", "must be an IPv4 address".to_owned()))?;
    let gw = u32::from(gw);
    if gw & mask != network {
        return Err((
            "gateway",
            format!("must be inside {}/{prefix}", Ipv4Addr::from(network)),
        ));
    }
    if !is_host(gw) || gw == u32::from(addr) {
        return Err((
            "gateway",
            "must be another host address of the subnet".into(),
        ));
    }
    Ok(())
}

/// Why a (well-formed) static address does not belong on the profile's network, if it does not.
fn outside_subnet(profile: &Profile, profile_name: &str, cidr: &str) -> Option<String> {
    // The profile's subnet was checked when the configuration was loaded.
    let subnet = Subnet::parse(profile.subnet.as_deref()?).ok()?;
    let (addr, prefix) = cidr.split_once('/')?;
    let (addr, prefix) = (addr.parse().ok()?, prefix.parse().ok()?);
    (!subnet.holds(addr, prefix)).then(|| {
        let vlan = profile
            .vlan
            .map_or_else(String::new, |v| format!(" (VLAN {v})"));
        format!("must be an address of {subnet}, the network of profile {profile_name:?}{vlan}")
    })
}

/// RFC 1123 label, lowercase: 1–63 of `[a-z0-9-]`, not starting or ending with `-`.
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A JSON document whose objects, at every depth, have no key twice (checked while reading; the
/// values are discarded).
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} appears twice in one object"
                )));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
}

/// Proxmox tag syntax, `^[a-z0-9_][a-z0-9_\-+.]*$`.
fn is_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    first_ok
        && bytes.all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'+' | b'.')
        })
}

fn is_idempotency_key(key: &str) -> bool {
    (1..=MAX_IDEMPOTENCY_KEY).contains(&key.len()) && key.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// Why a string is not an OpenSSH public key.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum SshKeyError {
    /// A line break or other control character (a cloud-init injection).
    #[error("must be one line without control characters")]
    ControlCharacter,
    /// Fewer than two fields.
    #[error("must be an OpenSSH public key: <type> <base64> [comment]")]
    Shape,
    /// A type cloud-init and OpenSSH would not take.
    #[error("key type {0:?} is not one of {types}", types = SSH_KEY_TYPES.join(", "))]
    UnknownType(String),
    /// The blob does not decode.
    #[error("the key data is not base64")]
    NotBase64(#[source] base64::DecodeError),
    /// The blob is a key of another type than the one named.
    #[error("the key data is not an {0} key")]
    TypeMismatch(String),
}

/// `<type> <base64 blob> [comment]` on one line, where the blob is a key of that type (its first
/// field repeats the type, as in every OpenSSH public key).
fn check_ssh_key(key: &str) -> Result<(), SshKeyError> {
    if key.chars().any(char::is_control) {
        return Err(SshKeyError::ControlCharacter);
    }
    let mut parts = key.split_ascii_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err(SshKeyError::Shape);
    };
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(SshKeyError::UnknownType(kind.to_owned()));
    }
    let blob = BASE64.decode(blob).map_err(SshKeyError::NotBase64)?;
    let embedded = blob
        .get(..4)
        .and_then(|len| <[u8; 4]>::try_from(len).ok())
        .map(|len| u32::from_be_bytes(len) as usize)
        .and_then(|len| blob.get(4..4 + len));
    if embedded != Some(kind.as_bytes()) {
        return Err(SshKeyError::TypeMismatch(kind.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A syntactically real OpenSSH key of `kind` (its blob starts with the type, like real ones).
    fn ssh_key(kind: &str, comment: &str) -> String {
        let mut blob = (kind.len() as u32).to_be_bytes().to_vec();
        blob.extend_from_slice(kind.as_bytes());
        blob.extend_from_slice(&[0, 0, 0, 32]);
        blob.extend_from_slice(&[7; 32]);
        format!("{kind} {} {comment}", BASE64.encode(blob))
    }

    fn check(body: Value) -> Result<ProvisionRequest, FieldErrors> {
        parse(body.to_string().as_bytes(), None, &Profiles::default())
    }

    fn errors(body: Value) -> FieldErrors {
        check(body).expect_err("invalid")
    }

    #[test]
    fn a_minimal_request_gets_the_defaults() {
        let r = check(json!({"name": "k3s-4"})).expect("valid");
        assert_eq!(r.profile.as_deref(), Some("k8s-node"));
        assert_eq!(r.ip, IpConfig::Dhcp);
        assert_eq!(r.overrides, VmOverrides::default());
        assert!(r.ssh_keys.is_empty() && r.tags.is_empty() && r.idempotency_key.is_none());
    }

    #[test]
    fn a_full_request_round_trips_through_the_client_type() {
        let key = ssh_key("ssh-ed25519", "ops@laptop");
        let request = ProvisionRequest {
            name: "k3s-4".into(),
            profile: Some("k8s-node".into()),
            overrides: VmOverrides {
                cores: Some(8),
                memory_mib: Some(16384),
                balloon_mib: None,
                disk_gib: Some(80),
            },
            ssh_keys: vec![key],
            ip: IpConfig::Static {
                cidr: "10.20.0.44/24".into(),
                gateway: "10.20.0.1".into(),
            },
            tags: vec!["gpu".into(), "zone.a+b".into()],
            idempotency_key: Some("ticket-42".into()),
        };
        let body = serde_json::to_vec(&request).expect("json");
        assert_eq!(
            parse(&body, None, &Profiles::default()).expect("valid"),
            request
        );
    }

    #[test]
    fn duplicate_keys_and_overlong_tags_are_field_errors() {
        let e = errors_of(br#"{"name": "a", "name": "b"}"#);
        assert!(e["body"].contains("\"name\" appears twice"), "{e:?}");
        let e = errors_of(br#"{"name": "a", "overrides": {"cores": 2, "cores": 64}}"#);
        assert!(e["body"].contains("\"cores\" appears twice"), "{e:?}");
        let e = errors(json!({"name": "a", "tags": ["x".repeat(65_519)]}));
        assert!(e["tags[0]"].contains("at most 64"), "{e:?}");
    }

    fn errors_of(body: &[u8]) -> FieldErrors {
        parse(body, None, &Profiles::default()).expect_err("refused")
    }

    #[test]
    fn every_problem_is_reported_under_its_path() {
        let good = ssh_key("ssh-rsa", "");
        let e = errors(json!({
            "name": "-Bad",
            "overrides": {"cores": 64, "memory_mib": "lots", "gpu": 1},
            "ssh_keys": [good, "ssh-ed25519 AAAA", "ssh-dss AAAA", 7],
            "ip": {"mode": "static", "cidr": "10.20.0.44/24", "gateway": "10.30.0.1"},
            "tags": ["ok", "Not-OK"],
            "idempotency_key": "",
            "colour": "blue",
        }));
        let paths: Vec<&str> = e.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "colour",
                "idempotency_key",
                "ip.gateway",
                "name",
                "overrides.cores",
                "overrides.gpu",
                "overrides.memory_mib",
                "ssh_keys[1]",
                "ssh_keys[2]",
                "ssh_keys[3]",
                "tags[1]",
            ],
            "{e:?}"
        );
        assert_eq!(e["colour"], "unknown field");
        assert!(e["overrides.cores"].contains("1 to 16"), "{e:?}");
        assert!(e["ip.gateway"].contains("10.20.0.0/24"), "{e:?}");
    }

    #[test]
    fn a_static_address_must_lie_in_the_profiles_subnet() {
        let request = |cidr: &str, gateway: &str| json!({"name": "a", "ip": {"mode": "static", "cidr": cidr, "gateway": gateway}});
        let e = errors(request("192.168.7.44/24", "192.168.7.1"));
        assert_eq!(
            e["ip.cidr"],
            "must be an address of 10.20.0.0/24, the network of profile \"k8s-node\" (VLAN 20)"
        );
        let e = errors(request("10.20.0.44/16", "10.20.0.1"));
        assert!(e["ip.cidr"].contains("10.20.0.0/24"), "{e:?}");
        let body = serde_json::to_vec(&request("10.20.0.44/24", "10.20.0.1")).expect("json");
        parse(&body, None, &Profiles::default()).expect("inside the subnet");
    }

    #[test]
    fn an_unknown_profile_lists_the_known_ones() {
        let e = errors(json!({"name": "a", "profile": "gpu-node"}));
        assert_eq!(
            e["profile"],
            "unknown profile \"gpu-node\"; known: k8s-node"
        );
    }

    #[test]
    fn names_are_dns_labels() {
        for ok in ["a", "k3s-4", "0", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn static_addresses_must_fit_their_subnet() {
        assert_eq!(check_static("10.20.0.44/24", "10.20.0.1"), Ok(()));
        assert_eq!(check_static("192.168.1.0/31", "192.168.1.1"), Ok(()));
        for (cidr, gw, field) in [
            ("10.20.0.44", "10.20.0.1", "cidr"),
            ("10.20.0.300/24", "10.20.0.1", "cidr"),
            ("10.20.0.44/33", "10.20.0.1", "cidr"),
            ("10.20.0.0/24", "10.20.0.1", "cidr"),
            ("10.20.0.255/24", "10.20.0.1", "cidr"),
            ("10.20.0.44/24", "10.20.1.1", "gateway"),
            ("10.20.0.44/24", "10.20.0.44", "gateway"),
            ("10.20.0.44/24", "10.20.0.255", "gateway"),
            ("10.20.0.44/24", "gw", "gateway"),
        ] {
            assert_eq!(
                check_static(cidr, gw).map_err(|(f, _)| f),
                Err(field),
                "{cidr} via {gw}"
            );
        }
        let e = errors(json!({"name": "a", "ip": {"mode": "static"}}));
        assert!(
            e.contains_key("ip.cidr") && e.contains_key("ip.gateway"),
            "{e:?}"
        );
        let e = errors(json!({"name": "a", "ip": {"mode": "dhcp", "cidr": "10.0.0.1/8"}}));
        assert_eq!(e["ip.cidr"], "unknown field");
    }

    #[test]
    fn ssh_keys_must_be_real_openssh_public_keys() {
        for kind in SSH_KEY_TYPES {
            assert_eq!(check_ssh_key(&ssh_key(kind, "c")), Ok(()), "{kind}");
        }
        let rsa_blob_as_ed25519 = ssh_key("ssh-rsa", "").replacen("ssh-rsa", "ssh-ed25519", 1);
        assert!(check_ssh_key(&rsa_blob_as_ed25519).is_err());
        let injected = format!("{}\nruncmd: [rm -rf /]", ssh_key("ssh-ed25519", ""));
        assert!(check_ssh_key(&injected).is_err());
        assert!(check_ssh_key("ssh-ed25519").is_err());
        assert!(check_ssh_key("ssh-ed25519 !!!").is_err());
    }

    #[test]
    fn tags_follow_proxmox_syntax() {
        for ok in ["k3s", "_x", "a.b+c-d_e", "9"] {
            assert!(is_tag(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "A", "a b", "a/b"] {
            assert!(!is_tag(bad), "{bad}");
        }
    }

    #[test]
    fn the_idempotency_key_comes_from_the_body_or_the_header() {
        let body = json!({"name": "a"}).to_string();
        let r = parse(body.as_bytes(), Some("hdr-1"), &Profiles::default()).expect("valid");
        assert_eq!(r.idempotency_key.as_deref(), Some("hdr-1"));
        let body = json!({"name": "a", "idempotency_key": "other"}).to_string();
        let e = parse(body.as_bytes(), Some("hdr-1"), &Profiles::default()).expect_err("differs");
        assert!(e.contains_key("idempotency_key"));
        let e = errors(json!({"name": "a", "idempotency_key": "x".repeat(129)}));
        assert!(e.contains_key("idempotency_key"));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_named_as_such() {
        let e = parse(b"[1]", None, &Profiles::default()).expect_err("array");
        assert_eq!(e["body"], "must be a JSON object");
        let e = parse(b"{", None, &Profiles::default()).expect_err("broken");
        assert!(e["body"].starts_with("not valid JSON"), "{e:?}");
    }
}
