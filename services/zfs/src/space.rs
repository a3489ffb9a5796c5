//! Space of a dataset tree: every filesystem, volume and snapshot under a root with `used`,
//! `referenced`, `usedbysnapshots` and `creation`, for the capacity review. Read with one
//! `zfs get -Hrp` (which zfs-fuse has as well as OpenZFS, unlike `zfs list -p`), parsed here.

use chrono::{DateTime, Utc};

use crate::parse::{ParseError, group_get};
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
    let mut out = Vec::new();
    for (name, props) in group_get(text)? {
        let kind = match props.get("type").copied() {
            Some("filesystem") => ObjectType::Filesystem,
            Some("volume") => ObjectType::Volume,
            Some("snapshot") => ObjectType::Snapshot,
            // A bookmark, or a type this does not know: not ours.
            _ => continue,
        };
        let number = |property: &str| -> Result<u64, ParseError> {
            match props.get(property).copied() {
                None | Some("-") => Ok(0),
                Some(value) => value
                    .parse()
                    .map_err(|_| bad(name, format!("{property} {value:?} is not a whole number"))),
            }
        };
        let secs = i64::try_from(number("creation")?).unwrap_or(i64::MAX);
        out.push(Space {
            name: name.to_owned(),
            kind,
            used: number("used")?,
            referenced: number("referenced")?,
            usedbysnapshots: number("usedbysnapshots")?,
            creation: DateTime::from_timestamp(secs, 0)
                .ok_or_else(|| bad(name, format!("creation {secs} is out of range")))?,
        });
    }
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
