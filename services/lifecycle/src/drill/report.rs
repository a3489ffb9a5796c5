//! The drill's Markdown report: the verdict first, then every check with its numbers, then how to
//! read a failure.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use proxflow_schemas::lifecycle::{DrillReport, Verdict};

/// The report of drill `run`, ended at `at`.
pub fn render(run: &str, at: DateTime<Utc>, report: &DrillReport) -> String {
    let mut md = String::new();
    let verdict = match report.verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
    };
    let _ = writeln!(md, "# Restore drill {run}: {verdict}\n");
    let _ = writeln!(md, "Ended {}.", at.format("%Y-%m-%d %H:%M:%S UTC"));
    if let Some(rpo) = report.rpo_secs {
        let _ = writeln!(md, "- RPO (age of the newest replicated snapshot): {rpo} s");
    }
    if let Some(rto) = report.rto_secs {
        let _ = writeln!(
            md,
            "- RTO (first clone → restored VM's agent answering): {rto:.1} s"
        );
    }
    let _ = writeln!(
        md,
        "- Time checksumming {:.1} s, cloning and destroying clones {:.1} s\n",
        report.checksum_secs, report.clone_secs
    );
    let _ = writeln!(md, "| check | on | result | detail |");
    let _ = writeln!(md, "|---|---|---|---|");
    for c in &report.checks {
        let _ = writeln!(
            md,
            "| {} | `{}` | {} | {} |",
            c.check,
            c.target,
            if c.passed { "pass" } else { "**FAIL**" },
            c.detail.replace('|', "\\|")
        );
    }
    if report.verdict == Verdict::Fail {
        let _ = writeln!(
            md,
            "\n## Reading a failure\n\n\
             - `lineage`/`guid`: the offsite copy has a snapshot the source never took, or a \
             different one under the same name — someone wrote on the offsite side; do not \
             trust it until it is re-replicated.\n\
             - `files`: the named files differ from the source snapshot's, or could not be read \
             (an I/O error is a ZFS checksum error: run `zpool status -v` on the offsite pool).\n\
             - `rpo`: replication has not completed recently enough; look at \
             `proxflow_replication_*` and the replicator's events.\n\
             - `bundle`: the export bundle on the offsite copy is missing or does not match its \
             manifest.\n\
             - `restore`: the exported config did not create, start or answer in time.\n\
             - `cleanup`: a clone or the scratch VM was left behind; remove it by hand."
        );
    }
    md
}
