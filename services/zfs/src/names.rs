//! Names: what a dataset and a snapshot may be called, which arguments may travel through an ssh
//! prefix, and the replication hold tag the snapshotter and the replicator must agree on (their
//! shared per-dataset lease key is `proxflow_schemas::names::key::dataset_lease`).

/// Characters ZFS allows in a dataset component or snapshot name (ZFS also allows a few more, such as
/// spaces on newer releases; proxflow refuses those so that every name survives an ssh command line).
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.:-".contains(c)
}

/// `pool[/fs]*`: non-empty components of [`is_name_char`] characters, no `@`.
pub fn is_dataset_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .split('/')
            .all(|part| !part.is_empty() && part.chars().all(is_name_char))
}

/// A snapshot's own name (after the `@`).
pub fn is_snapshot_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 200 && name.chars().all(is_name_char)
}

/// The pool a dataset lives in (its first component).
pub fn pool_of(dataset: &str) -> &str {
    dataset.split(['/', '@']).next().unwrap_or(dataset)
}

/// Whether `arg` reaches the remote `zfs` unchanged through `ssh host zfs <args>`: ssh joins the
/// arguments with spaces and the remote shell splits them again, so anything a shell treats
/// specially would be reinterpreted there. Every argument proxflow builds is of these characters;
/// one that is not is refused rather than quoted.
pub fn is_shell_safe(arg: &str) -> bool {
    !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:/@=,+%-".contains(c))
}

/// The hold tag replication job `job` places on the newest snapshot both sides share, on both
/// sides. The snapshotter never prunes a held snapshot, and ZFS itself refuses to destroy one.
pub fn hold_tag(job: &str) -> String {
    format!("proxflow-repl-{job}")
}

/// `dataset@snapshot`.
pub fn full_name(dataset: &str, snapshot: &str) -> String {
    format!("{dataset}@{snapshot}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_and_snapshot_names() {
        for ok in [
            "tank",
            "tank/data",
            "rpool/data/vm-104-disk-0",
            "a:b/c.d_e-f",
        ] {
            assert!(is_dataset_name(ok), "{ok}");
        }
        for bad in [
            "",
            "/tank",
            "tank/",
            "tank//x",
            "tank@s",
            "tank/a b",
            "tank/$(x)",
        ] {
            assert!(!is_dataset_name(bad), "{bad}");
        }
        assert!(is_snapshot_name("pf-daily-20261124T030000Z"));
        assert!(!is_snapshot_name("a@b"));
        assert!(!is_snapshot_name("a;b"));
        assert!(!is_snapshot_name(""));
    }

    #[test]
    fn shell_safety_refuses_what_a_remote_shell_would_reinterpret() {
        for ok in [
            "-Hp",
            "name,guid",
            "tank/a@s",
            "readonly=on",
            "proxflow:expires=17",
        ] {
            assert!(is_shell_safe(ok), "{ok}");
        }
        for bad in [
            "", "a b", "a;b", "$(id)", "`id`", "a'b", "a\"b", "a|b", "a>b", "a*",
        ] {
            assert!(!is_shell_safe(bad), "{bad}");
        }
    }

    #[test]
    fn hold_tags_and_names() {
        assert_eq!(hold_tag("offsite"), "proxflow-repl-offsite");
        assert_eq!(pool_of("tank/data/x"), "tank");
        assert_eq!(pool_of("tank@s"), "tank");
        assert_eq!(full_name("tank/a", "s1"), "tank/a@s1");
    }
}
