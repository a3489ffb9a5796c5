//! `/access`: users (with `full=1` their groups and API token ids — never secrets, which a
//! simulator does not keep but for its own token), a user's tokens, groups (derived from the
//! users' memberships, as `user.cfg` holds them), the built-in roles, ACLs and the realms.
//! Lists are sorted by id, as pve-access-control sorts the keys of `user.cfg`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{ApiError, P, Reply, failed};
use crate::state::State;

/// The built-in roles of PVE 8 and their privileges (pve-access-control `AccessControl.pm`).
const ROLES: [(&str, &str); 17] = [
    (
        "Administrator",
        "Datastore.Allocate,Datastore.AllocateSpace,Datastore.AllocateTemplate,Datastore.Audit,Group.Allocate,Mapping.Audit,Mapping.Modify,Mapping.Use,Permissions.Modify,Pool.Allocate,Pool.Audit,Realm.Allocate,Realm.AllocateUser,SDN.Allocate,SDN.Audit,SDN.Use,Sys.AccessNetwork,Sys.Audit,Sys.Console,Sys.Incoming,Sys.Modify,Sys.PowerMgmt,Sys.Syslog,User.Modify,VM.Allocate,VM.Audit,VM.Backup,VM.Clone,VM.Config.CDROM,VM.Config.CPU,VM.Config.Cloudinit,VM.Config.Disk,VM.Config.HWType,VM.Config.Memory,VM.Config.Network,VM.Config.Options,VM.Console,VM.Migrate,VM.Monitor,VM.PowerMgmt,VM.Snapshot,VM.Snapshot.Rollback",
    ),
    ("NoAccess", ""),
    (
        "PVEAdmin",
        "Datastore.Allocate,Datastore.AllocateSpace,Datastore.AllocateTemplate,Datastore.Audit,Group.Allocate,Mapping.Audit,Mapping.Use,Pool.Allocate,Pool.Audit,Realm.AllocateUser,SDN.Allocate,SDN.Audit,SDN.Use,Sys.Audit,Sys.Console,Sys.Syslog,User.Modify,VM.Allocate,VM.Audit,VM.Backup,VM.Clone,VM.Config.CDROM,VM.Config.CPU,VM.Config.Cloudinit,VM.Config.Disk,VM.Config.HWType,VM.Config.Memory,VM.Config.Network,VM.Config.Options,VM.Console,VM.Migrate,VM.Monitor,VM.PowerMgmt,VM.Snapshot,VM.Snapshot.Rollback",
    ),
    (
        "PVEAuditor",
        "Datastore.Audit,Mapping.Audit,Pool.Audit,SDN.Audit,Sys.Audit,VM.Audit",
    ),
    (
        "PVEDatastoreAdmin",
        "Datastore.Allocate,Datastore.AllocateSpace,Datastore.AllocateTemplate,Datastore.Audit",
    ),
    (
        "PVEDatastoreUser",
        "Datastore.AllocateSpace,Datastore.Audit",
    ),
    (
        "PVEMappingAdmin",
        "Mapping.Audit,Mapping.Modify,Mapping.Use",
    ),
    ("PVEMappingUser", "Mapping.Audit,Mapping.Use"),
    ("PVEPoolAdmin", "Pool.Allocate,Pool.Audit"),
    ("PVEPoolUser", "Pool.Audit"),
    ("PVESDNAdmin", "SDN.Allocate,SDN.Audit,SDN.Use"),
    ("PVESDNUser", "SDN.Audit,SDN.Use"),
    (
        "PVESysAdmin",
        "Permissions.Modify,Sys.Audit,Sys.Console,Sys.Syslog",
    ),
    ("PVETemplateUser", "VM.Audit,VM.Clone"),
    (
        "PVEUserAdmin",
        "Group.Allocate,Realm.AllocateUser,User.Modify",
    ),
    (
        "PVEVMAdmin",
        "VM.Allocate,VM.Audit,VM.Backup,VM.Clone,VM.Config.CDROM,VM.Config.CPU,VM.Config.Cloudinit,VM.Config.Disk,VM.Config.HWType,VM.Config.Memory,VM.Config.Network,VM.Config.Options,VM.Console,VM.Migrate,VM.Monitor,VM.PowerMgmt,VM.Snapshot,VM.Snapshot.Rollback",
    ),
    (
        "PVEVMUser",
        "VM.Audit,VM.Backup,VM.Config.CDROM,VM.Config.Cloudinit,VM.Console,VM.PowerMgmt",
    ),
];

fn realm_of(userid: &str) -> &str {
    userid.rsplit_once('@').map_or("", |(_, realm)| realm)
}

impl State {
    /// `GET /access/users`: sorted by id; `full=1` adds `groups` and `tokens` (ids, comments,
    /// privsep, expiry); `enabled` filters.
    pub(super) fn access_users(&self, p: &P<'_>) -> Value {
        let full = p.flag("full").unwrap_or(false);
        let enabled = p.flag("enabled");
        let list: Vec<Value> = self
            .platform
            .users
            .iter()
            .filter(|u| enabled.is_none_or(|e| e == u.enable))
            .map(|u| {
                let realm = realm_of(&u.userid);
                let mut entry = json!({
                    "userid": u.userid,
                    "enable": u8::from(u.enable),
                    "expire": 0,
                    "realm-type": realm,
                });
                if !u.comment.is_empty() {
                    entry["comment"] = json!(u.comment);
                }
                if !u.email.is_empty() {
                    entry["email"] = json!(u.email);
                }
                if full {
                    let mut groups = u.groups.clone();
                    groups.sort();
                    entry["groups"] = json!(groups.join(","));
                    entry["tokens"] = json!(token_list(u));
                }
                entry
            })
            .collect();
        json!(list)
    }

    /// `GET /access/users/{userid}/token`.
    pub(super) fn access_user_tokens(&self, p: &P<'_>) -> Result<Reply, ApiError> {
        let userid = p.str("userid").unwrap_or_default();
        let user = self
            .platform
            .users
            .iter()
            .find(|u| u.userid == userid)
            .ok_or_else(|| failed(format!("no such user ('{userid}')")))?;
        Ok(Reply::data(json!(token_list(user))))
    }

    /// `GET /access/groups`: every group a user names, with its members.
    pub(super) fn access_groups(&self) -> Value {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for user in &self.platform.users {
            for group in &user.groups {
                groups.entry(group).or_default().push(&user.userid);
            }
        }
        json!(
            groups
                .into_iter()
                .map(|(groupid, users)| json!({"groupid": groupid, "users": users.join(",")}))
                .collect::<Vec<_>>()
        )
    }

    /// `GET /access/roles`: the built-in roles (`special` = 1).
    pub(super) fn access_roles() -> Value {
        json!(
            ROLES
                .iter()
                .map(|(roleid, privs)| json!({"roleid": roleid, "privs": privs, "special": 1}))
                .collect::<Vec<_>>()
        )
    }

    /// `GET /access/acl`: the scenario's entries, sorted by path then id.
    pub(super) fn access_acl(&self) -> Value {
        let mut acl = self.platform.acl.clone();
        acl.sort_by(|a, b| {
            (&a.path, &a.kind, &a.ugid, &a.roleid).cmp(&(&b.path, &b.kind, &b.ugid, &b.roleid))
        });
        json!(
            acl.iter()
                .map(|a| json!({
                    "path": a.path,
                    "roleid": a.roleid,
                    "type": a.kind,
                    "ugid": a.ugid,
                    "propagate": u8::from(a.propagate),
                }))
                .collect::<Vec<_>>()
        )
    }

    /// `GET /access/domains`: the two realms every PVE host has.
    pub(super) fn access_domains() -> Value {
        json!([
            {"realm": "pam", "type": "pam", "comment": "Linux PAM standard authentication"},
            {"realm": "pve", "type": "pve", "comment": "Proxmox VE authentication server"},
        ])
    }
}

/// A user's tokens, sorted by id, as `user.cfg` lists them (ids only, never a secret).
fn token_list(user: &crate::scenario::UserSpec) -> Vec<Value> {
    let mut tokens = user.tokens.clone();
    tokens.sort_by(|a, b| a.tokenid.cmp(&b.tokenid));
    tokens
        .iter()
        .map(|t| {
            let mut v = json!({
                "tokenid": t.tokenid,
                "privsep": u8::from(t.privsep),
                "expire": t.expire,
            });
            if !t.comment.is_empty() {
                v["comment"] = json!(t.comment);
            }
            v
        })
        .collect()
}
