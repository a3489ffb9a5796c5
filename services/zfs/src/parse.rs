//! Parsers for `zfs` output. All of them read `-H` (tab-separated, no header) output with exact
//! numbers (`-p`): `zfs list -Hp` where the zfs has it, `zfs get -Hp` otherwise. Without `-p` even the
//! guid is printed rounded (`7.26E` on zfs-fuse), which would make guid matching impossible, so no
//! human-readable form is ever parsed.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

/// The user property holding a pre-change snapshot's expiry (epoch seconds), set when it is taken.
pub const EXPIRES_PROPERTY: &str = "proxflow:expires";

/// The properties read per snapshot, in the column order of [`parse_list`].
pub const SNAPSHOT_PROPERTIES: [&str; 7] = [
    "name",
    "guid",
    "createtxg",
    "creation",
    "used",
    "userrefs",
    EXPIRES_PROPERTY,
];

/// One snapshot of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The dataset.
    pub dataset: String,
    /// The snapshot's own name (after `@`).
    pub name: String,
    /// Its guid: the same on every copy of it, whatever it is called there.
    pub guid: u64,
    /// Transaction group it was taken in: orders snapshots of one dataset exactly (creation times
    /// have one-second resolution).
    pub createtxg: u64,
    /// When it was taken.
    pub creation: DateTime<Utc>,
    /// Bytes only it holds.
    pub used: u64,
    /// Number of holds on it; ZFS refuses to destroy it while this is above zero.
    pub userrefs: u64,
    /// [`EXPIRES_PROPERTY`], when set.
    pub expires: Option<DateTime<Utc>>,
}

impl SnapshotInfo {
    /// `dataset@name`.
    pub fn full_name(&self) -> String {
        crate::names::full_name(&self.dataset, &self.name)
    }

    /// Held by anyone (a replication job, an operator): must not be pruned.
    pub fn is_held(&self) -> bool {
        self.userrefs > 0
    }
}

/// A line that does not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected zfs output line {line:?}: {problem}")]
pub struct ParseError {
    /// The line.
    pub line: String,
    /// What is wrong with it.
    pub problem: String,
}

fn bad(line: &str, problem: impl Into<String>) -> ParseError {
    ParseError {
        line: line.to_owned(),
        problem: problem.into(),
    }
}

fn number(line: &str, what: &str, value: &str) -> Result<u64, ParseError> {
    // Properties that do not apply print `-` (userrefs on a pool older than version 18).
    if value == "-" && what == "userrefs" {
        return Ok(0);
    }
    value
        .parse()
        .map_err(|_| bad(line, format!("{what} {value:?} is not a whole number")))
}

fn epoch(line: &str, what: &str, value: &str) -> Result<DateTime<Utc>, ParseError> {
    let secs = number(line, what, value)?;
    i64::try_from(secs)
        .ok()
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .ok_or_else(|| bad(line, format!("{what} {value} is out of range")))
}

fn expires(line: &str, value: &str) -> Result<Option<DateTime<Utc>>, ParseError> {
    match value {
        "-" | "" => Ok(None),
        v => epoch(line, EXPIRES_PROPERTY, v).map(Some),
    }
}

/// Builds one snapshot from its properties, checking it belongs to `dataset`.
fn snapshot(
    line: &str,
    dataset: &str,
    props: &BTreeMap<&str, &str>,
) -> Result<Option<SnapshotInfo>, ParseError> {
    let get = |key: &str| {
        props
            .get(key)
            .copied()
            .ok_or_else(|| bad(line, format!("no {key}")))
    };
    let full = get("name")?;
    let Some((ds, name)) = full.split_once('@') else {
        return Err(bad(line, "not a snapshot name"));
    };
    // `-d 1` also lists children (get) — only this dataset's own snapshots count.
    if ds != dataset {
        return Ok(None);
    }
    Ok(Some(SnapshotInfo {
        dataset: ds.to_owned(),
        name: name.to_owned(),
        guid: number(line, "guid", get("guid")?)?,
        createtxg: number(line, "createtxg", get("createtxg")?)?,
        creation: epoch(line, "creation", get("creation")?)?,
        used: number(line, "used", get("used")?)?,
        userrefs: number(line, "userrefs", get("userrefs")?)?,
        expires: expires(line, get(EXPIRES_PROPERTY)?)?,
    }))
}

/// `zfs list -Hp -t snapshot -d 1 -o <SNAPSHOT_PROPERTIES> <dataset>`, sorted by `createtxg`.
pub fn parse_list(text: &str, dataset: &str) -> Result<Vec<SnapshotInfo>, ParseError> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != SNAPSHOT_PROPERTIES.len() {
            return Err(bad(
                line,
                format!(
                    "{} fields, expected {}",
                    fields.len(),
                    SNAPSHOT_PROPERTIES.len()
                ),
            ));
        }
        let props: BTreeMap<&str, &str> = SNAPSHOT_PROPERTIES
            .iter()
            .copied()
            .zip(fields.iter().copied())
            .collect();
        if let Some(s) = snapshot(line, dataset, &props)? {
            out.push(s);
        }
    }
    out.sort_by_key(|s| s.createtxg);
    Ok(out)
}

/// One object of a `zfs get` output: its name and its properties by name.
pub type GetObject<'a> = (&'a str, BTreeMap<&'a str, &'a str>);

/// Objects of a `zfs get -H -o name,property,value …` output (one line per (object, property)),
/// in first-seen order, each with its properties (its `name` among them).
pub fn group_get(text: &str) -> Result<Vec<GetObject<'_>>, ParseError> {
    let mut objects: Vec<GetObject<'_>> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.splitn(3, '\t');
        let (Some(name), Some(property), Some(value)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(line, "expected name, property and value"));
        };
        match objects.last_mut() {
            Some((last, props)) if *last == name => {
                props.insert(property, value);
            }
            _ => objects.push((name, BTreeMap::from([("name", name), (property, value)]))),
        }
    }
    Ok(objects)
}

/// `zfs get -Hp -d 1 -o name,property,value type,<SNAPSHOT_PROPERTIES but name> <dataset>`: one
/// line per (object, property), the dataset and its children included; only the dataset's
/// snapshots are returned, sorted by `createtxg`.
pub fn parse_get(text: &str, dataset: &str) -> Result<Vec<SnapshotInfo>, ParseError> {
    let objects = group_get(text)?;
    let mut out = Vec::new();
    for (name, props) in &objects {
        if props.get("type") != Some(&"snapshot") {
            continue;
        }
        if let Some(s) = snapshot(name, dataset, props)? {
            out.push(s);
        }
    }
    out.sort_by_key(|s| s.createtxg);
    Ok(out)
}

/// The subcommands `zfs` names in its usage text (printed when run without arguments), e.g.
/// `hold`, `holds`, `bookmark`: what this zfs can do at all.
pub fn parse_commands(usage: &str) -> BTreeSet<String> {
    usage
        .lines()
        // Command lines are indented by a tab (both OpenZFS and the old Solaris-derived text);
        // continuation lines by more whitespace after it.
        .filter_map(|l| l.strip_prefix('\t'))
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .map(str::to_owned)
        .collect()
}

/// `zfs holds -H <snapshot>`: `name<TAB>tag<TAB>timestamp` per hold → the tags.
pub fn parse_holds(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split('\t').nth(1))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    // Captured from zfs-fuse 0.7.0 (`zfs get -Hp -d 1 ...`): the dataset, a child, two snapshots.
    const GET: &str = "tank/a\ttype\tfilesystem\n\
tank/a\tguid\t7001520220435091265\n\
tank/a\tcreatetxg\t7\n\
tank/a\tcreation\t1795559053\n\
tank/a\tused\t157880320\n\
tank/a\tuserrefs\t-\n\
tank/a\tproxflow:expires\t-\n\
tank/a@s2\ttype\tsnapshot\n\
tank/a@s2\tguid\t1756200784453245810\n\
tank/a@s2\tcreatetxg\t23\n\
tank/a@s2\tcreation\t1795559054\n\
tank/a@s2\tused\t90112\n\
tank/a@s2\tuserrefs\t1\n\
tank/a@s2\tproxflow:expires\t1795559999\n\
tank/a@s1\ttype\tsnapshot\n\
tank/a@s1\tguid\t8367712670715534611\n\
tank/a@s1\tcreatetxg\t12\n\
tank/a@s1\tcreation\t1795559053\n\
tank/a@s1\tused\t0\n\
tank/a@s1\tuserrefs\t0\n\
tank/a@s1\tproxflow:expires\t-\n\
tank/a/child\ttype\tfilesystem\n\
tank/a/child\tguid\t16317944734548205180\n\
tank/a/child@x\ttype\tsnapshot\n\
tank/a/child@x\tguid\t1\n\
tank/a/child@x\tcreatetxg\t40\n\
tank/a/child@x\tcreation\t1795559107\n\
tank/a/child@x\tused\t0\n\
tank/a/child@x\tuserrefs\t0\n\
tank/a/child@x\tproxflow:expires\t-\n";

    #[test]
    fn get_output_gives_the_datasets_own_snapshots_in_txg_order() {
        let snaps = parse_get(GET, "tank/a").unwrap();
        let names: Vec<&str> = snaps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["s1", "s2"]);
        assert_eq!(snaps[0].guid, 8367712670715534611);
        assert_eq!(snaps[1].createtxg, 23);
        assert_eq!(snaps[1].creation.timestamp(), 1795559054);
        assert_eq!(snaps[1].used, 90112);
        assert!(snaps[1].is_held() && !snaps[0].is_held());
        assert_eq!(snaps[1].expires.map(|e| e.timestamp()), Some(1795559999));
        assert_eq!(snaps[0].expires, None);
        assert_eq!(snaps[0].full_name(), "tank/a@s1");
    }

    #[test]
    fn list_output_parses_the_same_fields() {
        let text = "tank/a@s2\t1756200784453245810\t23\t1795559054\t90112\t0\t-\n\
                    tank/a@s1\t8367712670715534611\t12\t1795559053\t0\t2\t1795559999\n";
        let snaps = parse_list(text, "tank/a").unwrap();
        assert_eq!(snaps.len(), 2);
        assert_eq!(snaps[0].name, "s1");
        assert_eq!(snaps[0].userrefs, 2);
        assert!(snaps[0].expires.is_some());
        assert!(parse_list("", "tank/a").unwrap().is_empty());
    }

    #[test]
    fn rounded_or_malformed_numbers_are_errors_not_guesses() {
        // What zfs-fuse prints for a guid without -p: must never be taken for a number.
        let text = "tank/a@s1\t7.26E\t12\t1795559053\t0\t0\t-\n";
        let e = parse_list(text, "tank/a").unwrap_err();
        assert!(e.problem.contains("guid"), "{e}");
        assert!(parse_list("tank/a@s1\t1\t2\n", "tank/a").is_err());
        assert!(parse_get("tank/a@s1\ttype\n", "tank/a").is_err());
        assert!(parse_list("tank/a\t1\t2\t3\t4\t5\t-\n", "tank/a").is_err());
    }

    #[test]
    fn commands_come_from_the_usage_text() {
        let usage = "usage: zfs command args ...\nwhere 'command' is one of the following:\n\n\
\tcreate [-p] [-o property=value] ... <filesystem>\n\
\tlist [-rH][-d max] [-o property[,...]] [-t type[,...]] [-s property] ...\n\
\t    [-S property] ... [filesystem|volume|snapshot] ...\n\
\tsend [-RDp] [-[iI] snapshot] <snapshot>\n\
\thold [-r] <tag> <snapshot> ...\n\
\tholds [-r] <snapshot> ...\n\
\trelease [-r] <tag> <snapshot> ...\n\
Each dataset is of the form: pool/[dataset/]*dataset[@name]\n";
        let commands = parse_commands(usage);
        for c in ["create", "list", "send", "hold", "holds", "release"] {
            assert!(commands.contains(c), "{c}");
        }
        assert!(!commands.contains("bookmark"));
        assert!(!commands.contains("[-S"));
    }

    #[test]
    fn holds_output_gives_tags() {
        let text = "tank/a@s1\tproxflow-repl-offsite\tTue Nov 24 22:23 2026\n\
                    tank/a@s1\tkeep\tTue Nov 24 22:24 2026\n";
        assert_eq!(parse_holds(text), ["proxflow-repl-offsite", "keep"]);
        assert!(parse_holds("").is_empty());
    }
}

/// `zpool get all <pool>`'s table → the settable properties `(property, value, source)`, sorted:
/// rows whose source is `-` are statistics and left out.
pub fn parse_pool_properties(text: &str, pool: &str) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = text
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            match cols.as_slice() {
                [name, property, value @ .., source] if *name == pool && !value.is_empty() => {
                    Some((
                        (*property).to_owned(),
                        value.join(" "),
                        (*source).to_owned(),
                    ))
                }
                _ => None,
            }
        })
        .filter(|(_, _, source)| source != "-")
        .collect();
    rows.sort();
    rows
}

#[cfg(test)]
mod pool_property_tests {
    use super::*;

    #[test]
    fn statistics_are_left_out_and_the_header_is_skipped() {
        let text = "NAME  PROPERTY  VALUE  SOURCE\n\
                    tank  size      3.97G  -\n\
                    tank  autoexpand off   default\n\
                    tank  comment   two words  local\n\
                    tank  free      3.96G  -\n";
        assert_eq!(
            parse_pool_properties(text, "tank"),
            [
                ("autoexpand".into(), "off".into(), "default".into()),
                ("comment".into(), "two words".into(), "local".into()),
            ]
        );
    }
}
