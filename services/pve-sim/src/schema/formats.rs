//! Named formats (`format: "pve-vmid"`), whose Perl verify functions are not in the API dump.
//!
//! Implemented with pve-common's / qemu-server's checks and `die` messages: those a Proxmox client
//! of ours sends (VM ids, node and storage names, config ids, DNS names, tags, url-encoded ssh keys,
//! cloud-init ip configs, addresses, MACs, bridges, disk sizes). A `-list` / `-alist` suffix checks
//! each element of a `split_list`, `-opt` allows the empty string. Any other named format is
//! accepted: rejecting it would invent a refusal no real host gives.

use std::collections::HashMap;
use std::net::Ipv6Addr;

use serde_json::{Value, json};

/// Property-string formats that the dump refers to by name only.
pub(crate) fn named_dicts() -> HashMap<&'static str, Value> {
    HashMap::from([(
        // qemu-server's `$ipconfig_fmt`.
        "pve-qm-ipconfig",
        json!({
            "ip": {"type": "string", "format": "pve-ipv4-config", "optional": 1},
            "gw": {"type": "string", "format": "ipv4", "optional": 1, "requires": "ip"},
            "ip6": {"type": "string", "format": "pve-ipv6-config", "optional": 1},
            "gw6": {"type": "string", "format": "ipv6", "optional": 1, "requires": "ip6"},
        }),
    )])
}

/// `PVE::Tools::split_list`: NUL-separated if it contains a NUL, else split on `,`, `;` and
/// white space.
pub fn split_list(text: &str) -> Vec<&str> {
    if text.contains('\0') {
        return text.split('\0').collect();
    }
    text.split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Why a value does not match a named format; `Display` is Proxmox's `die` text, trailing
/// newline included, as it appears after `invalid format - ` in the `errors` map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FormatError {
    #[error("value does not look like a valid VM ID\n")]
    Vmid,
    #[error("value does not look like a valid node name\n")]
    Node,
    #[error("invalid configuration ID '{0}'\n")]
    ConfigId(String),
    #[error("storage ID '{0}' contains illegal characters\n")]
    StorageId(String),
    #[error("pool name '{0}' contains invalid characters\n")]
    PoolId(String),
    #[error("value does not look like a valid DNS name\n")]
    DnsName,
    #[error("invalid characters in tag\n")]
    Tag,
    #[error("invalid urlencoded string: {0}\n")]
    UrlEncoded(String),
    #[error("value does not look like a valid IPv4 address\n")]
    Ipv4,
    #[error("value does not look like a valid IPv6 address\n")]
    Ipv6,
    #[error("value does not look like a valid IP address\n")]
    Ip,
    #[error("value does not look like a valid IPv4 CIDR network\n")]
    CidrV4,
    #[error("value does not look like a valid IPv6 CIDR network\n")]
    CidrV6,
    #[error("value does not look like a valid CIDR network\n")]
    Cidr,
    #[error("value does not look like a valid IP address or CIDR network\n")]
    IpOrCidr,
    #[error("value does not look like a valid ipv4 network configuration\n")]
    Ipv4Config,
    #[error("value does not look like a valid ipv6 network configuration\n")]
    Ipv6Config,
    #[error("value does not look like a valid address: {0}\n")]
    Address(String),
    #[error("value does not look like a valid unicast MAC address\n")]
    Mac,
    #[error("invalid bridge ID '{0}'\n")]
    BridgeId(String),
    #[error("invalid network interface name '{0}'\n")]
    Iface(String),
    #[error("value does not look like a valid disk size: {0}\n")]
    DiskSize(String),
}

/// Checks `text` against a named format.
pub(crate) fn check_named(name: &str, text: &str) -> Result<(), FormatError> {
    if let Some(result) = check_known(name, text) {
        return result;
    }
    let list_base = name
        .strip_suffix("-alist")
        .or_else(|| name.strip_suffix("-list"));
    if let Some(base) = list_base {
        for item in split_list(text) {
            if let Some(result) = check_known(base, item) {
                result?;
            }
        }
        return Ok(());
    }
    if let Some(base) = name.strip_suffix("-opt") {
        if text.is_empty() {
            return Ok(());
        }
        return check_known(base, text).unwrap_or(Ok(()));
    }
    Ok(())
}

fn fail(ok: bool, error: impl FnOnce() -> FormatError) -> Result<(), FormatError> {
    if ok { Ok(()) } else { Err(error()) }
}

/// `None` when the format is not one we implement.
fn check_known(name: &str, v: &str) -> Option<Result<(), FormatError>> {
    let text = || v.to_owned();
    Some(match name {
        "string" => Ok(()),
        "pve-vmid" => fail(is_vmid(v), || FormatError::Vmid),
        "pve-node" => fail(is_dns_label(v), || FormatError::Node),
        "pve-configid" => fail(is_configid(v), || FormatError::ConfigId(text())),
        "pve-storage-id" => fail(is_storage_id(v), || FormatError::StorageId(text())),
        "pve-poolid" => fail(is_poolid(v), || FormatError::PoolId(text())),
        "dns-name" => fail(is_dns_name(v), || FormatError::DnsName),
        "pve-tag" => fail(is_tag(v), || FormatError::Tag),
        "urlencoded" => fail(is_urlencoded(v), || FormatError::UrlEncoded(text())),
        "ipv4" => fail(is_ipv4(v), || FormatError::Ipv4),
        "ipv6" => fail(is_ipv6(v), || FormatError::Ipv6),
        "ip" => fail(is_ipv4(v) || is_ipv6(v), || FormatError::Ip),
        "CIDRv4" => fail(is_cidr_v4(v), || FormatError::CidrV4),
        "CIDRv6" => fail(is_cidr_v6(v), || FormatError::CidrV6),
        "CIDR" => fail(is_cidr_v4(v) || is_cidr_v6(v), || FormatError::Cidr),
        "IPorCIDR" => fail(
            is_ipv4(v) || is_ipv6(v) || is_cidr_v4(v) || is_cidr_v6(v),
            || FormatError::IpOrCidr,
        ),
        "pve-ipv4-config" => fail(matches!(v, "dhcp" | "manual") || is_cidr_v4(v), || {
            FormatError::Ipv4Config
        }),
        "pve-ipv6-config" => fail(
            matches!(v, "auto" | "dhcp" | "manual") || is_cidr_v6(v),
            || FormatError::Ipv6Config,
        ),
        "address" => fail(is_ipv4(v) || is_ipv6(v) || is_dns_name(v), || {
            FormatError::Address(text())
        }),
        "mac-addr" => fail(is_unicast_mac(v), || FormatError::Mac),
        "pve-bridge-id" => fail(
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.')),
            || FormatError::BridgeId(text()),
        ),
        "pve-iface" => fail(is_iface(v), || FormatError::Iface(text())),
        "disk-size" => fail(parse_size(v).is_some(), || FormatError::DiskSize(text())),
        _ => return None,
    })
}

/// `^[1-9][0-9]{2,8}$`
pub(crate) fn is_vmid(v: &str) -> bool {
    let b = v.as_bytes();
    (3..=9).contains(&b.len()) && b[0] != b'0' && b.iter().all(u8::is_ascii_digit)
}

/// `^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$` (node names, DNS labels).
fn is_dns_label(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

fn is_dns_name(v: &str) -> bool {
    v.split('.').all(is_dns_label)
}

/// `^[a-z][a-z0-9_-]+$` case-insensitively (config keys, snapshot names).
pub(crate) fn is_configid(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-'))
}

/// `^[a-z][a-z0-9\-\_\.]*[a-z0-9]$` case-insensitively.
fn is_storage_id(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Pool names, up to three levels of nesting (PVE 8.1+).
fn is_poolid(v: &str) -> bool {
    let parts: Vec<&str> = v.split('/').collect();
    parts.len() <= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
        })
}

/// `^[a-z0-9_][a-z0-9_\-\+\.]*$` case-insensitively.
pub(crate) fn is_tag(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'+' | b'.'))
}

/// `^[-%a-zA-Z0-9_.!~*'()]*$`
fn is_urlencoded(v: &str) -> bool {
    v.bytes().all(|c| {
        c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'%' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
            )
    })
}

/// Perl's `$IPV4RE`: four dot-separated decimal octets up to 255 (leading zeros allowed).
pub(crate) fn is_ipv4(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            (1..=3).contains(&p.len())
                && p.bytes().all(|c| c.is_ascii_digit())
                && p.parse::<u16>().is_ok_and(|n| n <= 255)
        })
}

fn is_ipv6(v: &str) -> bool {
    v.parse::<Ipv6Addr>().is_ok()
}

fn prefix_in(v: &str, max: u32) -> Option<(&str, u32)> {
    let (addr, bits) = v.split_once('/')?;
    if bits.is_empty() || !bits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let bits: u32 = bits.parse().ok()?;
    (bits > 7 && bits <= max).then_some((addr, bits))
}

/// An IPv4 address with a prefix length 8..=32 (pve-common's `CIDRv4`).
pub(crate) fn is_cidr_v4(v: &str) -> bool {
    prefix_in(v, 32).is_some_and(|(a, _)| is_ipv4(a))
}

fn is_cidr_v6(v: &str) -> bool {
    prefix_in(v, 128).is_some_and(|(a, _)| is_ipv6(a))
}

/// `^[a-f0-9][02468ace](?::[a-f0-9]{2}){5}$` case-insensitively: the multicast bit must be clear.
fn is_unicast_mac(v: &str) -> bool {
    let parts: Vec<&str> = v.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))
        && parts
            .first()
            .and_then(|p| p.as_bytes().get(1))
            .is_some_and(|c| {
                matches!(
                    c.to_ascii_lowercase(),
                    b'0' | b'2' | b'4' | b'6' | b'8' | b'a' | b'c' | b'e'
                )
            })
}

/// `^[a-z][a-z0-9_]{1,20}([:\.]\d+)?$` case-insensitively.
fn is_iface(v: &str) -> bool {
    let (name, suffix) = match v.find([':', '.']) {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let b = name.as_bytes();
    (2..=21).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && suffix.is_none_or(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
}

/// pve-common `parse_size`: `^(\d+(\.\d+)?)([KMGT])?$` in bytes (binary units).
pub fn parse_size(v: &str) -> Option<u64> {
    let (number, unit) = match v.char_indices().last() {
        Some((i, c @ ('K' | 'M' | 'G' | 'T'))) => (&v[..i], Some(c)),
        _ => (v, None),
    };
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    if int.is_empty()
        || !int.bytes().all(|c| c.is_ascii_digit())
        || frac.is_some_and(|f| f.is_empty() || !f.bytes().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let factor: f64 = match unit {
        None => 1.0,
        Some('K') => 1024.0,
        Some('M') => 1024.0 * 1024.0,
        Some('G') => 1024.0 * 1024.0 * 1024.0,
        _ => 1024.0 * 1024.0 * 1024.0 * 1024.0,
    };
    let bytes = value * factor;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}
