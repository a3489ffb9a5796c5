//! Proxmox task ids (UPIDs), as they travel in workflow records and events.
//!
//! `UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:` (pve-common `upid_encode`); parsed
//! with the same rules as pve-common's decode regex. Both the Proxmox client and the simulator use
//! this one type, so what the simulator hands out is exactly what the client accepts.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A parsed task id. Serialises as its string form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct Upid {
    raw: String,
    /// Node that runs the worker.
    pub node: String,
    /// Worker PID.
    pub pid: u32,
    /// Worker process start (jiffies since boot).
    pub pstart: u64,
    /// Start time, epoch seconds.
    pub starttime: u64,
    /// Task type (`qmclone`, `qmstart`, …).
    pub task_type: String,
    /// Object id (the VMID for VM tasks; the *source* VMID for `qmclone`; empty for `aptupdate`).
    pub id: String,
    /// `user@realm` or `user@realm!token`.
    pub user: String,
}

/// A string that is not a UPID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a Proxmox UPID")]
pub struct UpidError(pub String);

impl Upid {
    /// Encodes a UPID as Proxmox does (`%08X` fields).
    pub fn new(
        node: &str,
        pid: u32,
        pstart: u64,
        starttime: u64,
        task_type: &str,
        id: &str,
        user: &str,
    ) -> Self {
        Self {
            raw: format!(
                "UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{task_type}:{id}:{user}:"
            ),
            node: node.to_owned(),
            pid,
            pstart,
            starttime,
            task_type: task_type.to_owned(),
            id: id.to_owned(),
            user: user.to_owned(),
        }
    }

    /// The UPID as Proxmox wrote it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl FromStr for Upid {
    type Err = UpidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || UpidError(s.chars().take(120).collect());
        let body = s
            .strip_prefix("UPID:")
            .and_then(|r| r.strip_suffix(':'))
            .ok_or_else(bad)?;
        let parts: Vec<&str> = body.split(':').collect();
        let [node, pid, pstart, starttime, task_type, id, user] = parts.as_slice() else {
            return Err(bad());
        };
        let hex = |v: &str, lens: &[usize]| {
            (lens.contains(&v.len()) && v.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(v, 16).ok())
                .flatten()
        };
        let node_ok = !node.is_empty()
            && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !node.starts_with('-')
            && !node.ends_with('-');
        let word = |v: &str| !v.contains(|c: char| c.is_whitespace() || c == '/');
        if !node_ok
            || task_type.is_empty()
            || user.is_empty()
            || !word(task_type)
            || !word(id)
            || !word(user)
        {
            return Err(bad());
        }
        Ok(Self {
            raw: s.to_owned(),
            node: (*node).to_owned(),
            pid: hex(pid, &[8])
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(bad)?,
            pstart: hex(pstart, &[8, 9]).ok_or_else(bad)?,
            starttime: hex(starttime, &[8]).ok_or_else(bad)?,
            task_type: (*task_type).to_owned(),
            id: (*id).to_owned(),
            user: (*user).to_owned(),
        })
    }
}

impl TryFrom<String> for Upid {
    type Error = UpidError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Upid> for String {
    fn from(u: Upid) -> Self {
        u.raw
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_real_upids() {
        let u: Upid = "UPID:pve1:0003A2F1:00C4B2D0:6564A1B2:qmclone:9000:root@pam!ci:"
            .parse()
            .unwrap();
        assert_eq!(u.node, "pve1");
        assert_eq!(u.pid, 0x3A2F1);
        assert_eq!(u.starttime, 0x6564A1B2);
        assert_eq!(u.task_type, "qmclone");
        assert_eq!(u.id, "9000");
        assert_eq!(u.user, "root@pam!ci");
        // 9-digit pstart and an empty id (aptupdate) are valid.
        let apt: Upid = "UPID:pve-1:00001234:1C4B2D0AA:6564A1B2:aptupdate::root@pam:"
            .parse()
            .unwrap();
        assert_eq!(apt.id, "");
        assert_eq!(apt.pstart, 0x1C4B2D0AA);
    }

    #[test]
    fn encodes_what_it_parses() {
        let u = Upid::new(
            "pve1",
            0x3A2F1,
            0xC4B2D0,
            0x6564A1B2,
            "qmclone",
            "9000",
            "root@pam!ci",
        );
        assert_eq!(
            u.as_str(),
            "UPID:pve1:0003A2F1:00C4B2D0:6564A1B2:qmclone:9000:root@pam!ci:"
        );
        assert_eq!(u.as_str().parse::<Upid>().unwrap(), u);
        let json = serde_json::to_string(&u).unwrap();
        assert_eq!(serde_json::from_str::<Upid>(&json).unwrap(), u);
    }

    #[test]
    fn rejects_what_proxmox_rejects() {
        for bad in [
            "",
            "UPID:pve1:0003A2F1:00C4B2D0:6564A1B2:qmclone:9000:root@pam",
            "UPID:pve1:3A2F1:00C4B2D0:6564A1B2:qmclone:9000:root@pam:",
            "UPID:-pve:0003A2F1:00C4B2D0:6564A1B2:qmclone:9000:root@pam:",
            "UPID:pve1:0003A2F1:00C4B2D0:6564A1B2::9000:root@pam:",
            "UPID:pve1:0003A2F1:00C4B2D0:6564A1B2:qm clone:9000:root@pam:",
            "UPID:pve1:XYZ:00C4B2D0:6564A1B2:qmclone:9000:root@pam:",
        ] {
            assert!(bad.parse::<Upid>().is_err(), "{bad}");
        }
    }
}
