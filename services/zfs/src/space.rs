//! Space of a dataset tree: every filesystem, volume and snapshot under a root with `used`,
//! `referenced`, `usedbysnapshots` and `creation`, for the capacity review. Read with one
//! `zfs get -Hrp` (which zfs-fuse has as well as OpenZFS, unlike `zfs list -p`), parsed here.

use chrono::{DateTime, Utc};

use crate::parse::ParseError;
use crate::{Zfs, ZfsError, valid_dataset};

/// The properties read per object, after `type`.
const PROPERTIES: &str = "type,used,referenced,usedbysnapshots,creation";

/// What an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    /// A file system.
    Filesystem,
    /// A block device (zvol).
    Volume,
    /// A snapshot (`dataset@name`).
    Snapshot,
}

/// One object's space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    /// Full name (`tank/vm-100-disk-0`, `tank/data@pf-daily-20261124T030000Z`).
    pub name: String,
    /// What it is.
    pub kind: ObjectType,
    /// `used`, bytes.
    pub used: u64,
    /// `referenced`, bytes.
    pub referenced: u64,
    /// `usedbysnapshots`, bytes (0 for snapshots, where it does not apply).
    pub usedbysnapshots: u64,
    /// `creation`.
    pub creation: DateTime<Utc>,
}

impl Space {
    /// The dataset and the snapshot's own name, for a snapshot.
    pub fn snapshot_of(&self) -> Option<(&str, &str)> {
        (self.kind == ObjectType::Snapshot)
            .then(|| self.name.split_once('@'))
            .flatten()
    }
}

fn bad(line: &str, problem: impl Into<String>) -> ParseError {
    ParseError {
        line: line.to_owned(),
        problem: problem.into(),
    }
}

/// Parses `zfs get -Hrp -o name,property,value type,used,referenced,usedbysnapshots,creation`:
/// one line per (object, property), objects in the order listed. Bookmarks and other types are
/// skipped; a property printed `-` (does not apply) is 0.
pub fn parse_space(text: &str) -> Result<Vec<Space>, ParseError> {
    let mut out: Vec<Space> = Vec::new();
    let mut current: Option<(String, Option<Space>)> = None;
    let mut finish = |entry: Option<(String, Option<Space>)>| {
        if let Some((_, Some(space))) = entry {
            out.push(space);
        }
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.splitn(3, '\t');
        let (Some(name), Some(property), Some(value)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(line, "expected name, property and value"));
        };
        if current.as_ref().is_none_or(|(n, _)| n != name) {
            finish(current.take());
            current = Some((name.to_owned(), None));
        }
        let Some((_, slot)) = current.as_mut() else {
            continue;
        };
        if property == "type" {
            let kind = match value {
                "filesystem" => Some(ObjectType::Filesystem),
                "volume" => Some(ObjectType::Volume),
                "snapshot" => Some(ObjectType::Snapshot),
                _ => None,
            };
            *slot = kind.map(|kind| Space {
                name: name.to_owned(),
                kind,
                used: 0,
                referenced: 0,
                usedbysnapshots: 0,
                creation: DateTime::UNIX_EPOCH,
            });
            continue;
        }
        // Properties of a skipped type (a bookmark), or before `type`: not ours.
        let Some(space) = slot.as_mut() else {
            continue;
        };
        let number = || -> Result<u64, ParseError> {
            if value == "-" {
                return Ok(0);
            }
            value
                .parse()
                .map_err(|_| bad(line, format!("{property} {value:?} is not a whole number")))
        };
        match property {
            "used" => space.used = number()?,
            "referenced" => space.referenced = number()?,
            "usedbysnapshots" => space.usedbysnapshots = number()?,
            "creation" => {
                let secs = i64::try_from(number()?).unwrap_or(i64::MAX);
                space.creation = DateTime::from_timestamp(secs, 0)
                    .ok_or_else(|| bad(line, format!("creation {value} is out of range")))?;
            }
            _ => {}
        }
    }
    finish(current.take());
    Ok(out)
}

impl Zfs {
    /// Every file system, volume and snapshot under `root` (itself included) with its space.
    pub async fn space(&self, root: &str) -> Result<Vec<Space>, ZfsError> {
        valid_dataset(root)?;
        let text = self
            .check(&["get", "-Hrp", "-o", "name,property,value", PROPERTIES, root])
            .await?;
        parse_space(&text).map_err(|source| ZfsError::Parse {
            host: self.host(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn datasets_and_snapshots_with_their_space() {
        let text = "tank\ttype\tfilesystem\ntank\tused\t4956160\ntank\treferenced\t212992\n\
                    tank\tusedbysnapshots\t4096\ntank\tcreation\t1764000000\n\
                    tank@pf-daily-20261124T030000Z\ttype\tsnapshot\n\
                    tank@pf-daily-20261124T030000Z\tused\t4096\n\
                    tank@pf-daily-20261124T030000Z\treferenced\t200000\n\
                    tank@pf-daily-20261124T030000Z\tusedbysnapshots\t-\n\
                    tank@pf-daily-20261124T030000Z\tcreation\t1764000100\n\
                    tank#b\ttype\tbookmark\ntank#b\tused\t-\n";
        let space = parse_space(text).unwrap();
        assert_eq!(space.len(), 2, "the bookmark is skipped");
        assert_eq!(space[0].kind, ObjectType::Filesystem);
        assert_eq!(
            (space[0].used, space[0].referenced, space[0].usedbysnapshots),
            (4_956_160, 212_992, 4096)
        );
        assert_eq!(
            space[1].snapshot_of(),
            Some(("tank", "pf-daily-20261124T030000Z"))
        );
        assert_eq!(space[1].usedbysnapshots, 0);
        assert_eq!(space[1].creation.timestamp(), 1_764_000_100);
        assert!(parse_space("tank\tused").is_err());
        assert!(parse_space("tank\ttype\tfilesystem\ntank\tused\tlots").is_err());
    }
}
