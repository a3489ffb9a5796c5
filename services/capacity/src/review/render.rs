//! The review as Markdown: what an operator reads once a month. The JSON beside it carries the
//! same numbers unrounded.

use std::fmt::Write as _;

use proxflow_schemas::capacity_review::{CapacityReview, DaysLeft, TrendSource};

const GIB: f64 = 1_073_741_824.0;

fn gib(bytes: impl Into<f64>) -> String {
    format!("{:.1} GiB", bytes.into() / GIB)
}

fn signed_gib(bytes: i64) -> String {
    format!("{:+.2} GiB", bytes as f64 / GIB)
}

fn days(d: DaysLeft) -> String {
    match d {
        DaysLeft::AlreadyAbove => "0 (already above)".into(),
        DaysLeft::Days { days } => format!("{days:.1}"),
        DaysLeft::Never => "never".into(),
        DaysLeft::Unknown => "unknown (too few points)".into(),
    }
}

/// The Markdown report.
pub fn markdown(r: &CapacityReview) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(w, "# Capacity review: {}\n", r.node);
    let _ = writeln!(
        w,
        "Window {} – {} ({:.1} days), {} capacity samples.\n",
        r.from.format("%Y-%m-%d %H:%M UTC"),
        r.to.format("%Y-%m-%d %H:%M UTC"),
        (r.to - r.from).num_seconds() as f64 / 86_400.0,
        r.samples
    );
    let soonest = match r.soonest() {
        Some((t, d)) if d <= 0.0 => format!(
            "**Soonest:** `{}` is already above its threshold {}.",
            t.metric, t.threshold
        ),
        Some((t, d)) => format!(
            "**Soonest:** `{}` reaches its threshold {} in {d:.1} days at its trend.",
            t.metric, t.threshold
        ),
        None => "**No metric is trending towards its threshold.**".into(),
    };
    let _ = writeln!(w, "{soonest}\n");
    let _ = writeln!(w, "## Trends\n");
    let _ = writeln!(
        w,
        "| metric | source | points | last | trend now | slope / day | threshold | days to threshold |"
    );
    let _ = writeln!(w, "|---|---|---:|---:|---:|---:|---:|---|");
    for t in &r.trends {
        let source = match t.source {
            TrendSource::Samples => "samples",
            TrendSource::Rrd => "rrd",
        };
        let _ = writeln!(
            w,
            "| `{}` | {source} | {} | {:.3} | {:.3} | {:+.4} | {} | {} |",
            t.metric,
            t.points,
            t.last_value,
            t.trend_value,
            t.slope_per_day,
            t.threshold,
            days(t.days_left)
        );
    }
    let c = &r.commitment;
    let _ = writeln!(w, "\n## Memory commitment\n");
    let _ = writeln!(
        w,
        "{:.2}:1 — {} of the {} running VMs' max memory on {} physical; target {:.2}:1, \
         headroom {} ({:+.1} GiB). All {} VMs started: {:.2}:1 ({}).",
        c.ratio,
        gib(c.committed_bytes as f64),
        c.running_vms,
        gib(c.physical_bytes as f64),
        c.target,
        if c.headroom_bytes >= 0 {
            "left"
        } else {
            "exceeded"
        },
        c.headroom_gib,
        c.vms,
        c.ratio_all,
        gib(c.committed_all_bytes as f64),
    );
    let _ = writeln!(w, "\n## Top growing VMs\n");
    if r.top_vms.is_empty() {
        let _ = writeln!(w, "No VM grew over the window.");
    } else {
        let _ = writeln!(w, "| VM | memory | memory growth | disk | disk growth |");
        let _ = writeln!(w, "|---|---:|---:|---:|---:|");
        for v in &r.top_vms {
            let _ = writeln!(
                w,
                "| {} {} | {} | {} | {} | {} |",
                v.vmid,
                v.name.as_deref().unwrap_or(""),
                gib(v.memory_bytes as f64),
                signed_gib(v.memory_growth_bytes),
                gib(v.disk_bytes as f64),
                signed_gib(v.disk_growth_bytes)
            );
        }
    }
    let _ = writeln!(w, "\n## Top growing datasets\n");
    if r.top_datasets.is_empty() {
        let _ = writeln!(w, "No dataset reviewed.");
    } else {
        let _ = writeln!(
            w,
            "| dataset | used | referenced | snapshots | growth | since |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---|");
        for d in &r.top_datasets {
            let _ = writeln!(
                w,
                "| `{}` | {} | {} | {} | {} | {} |",
                d.dataset,
                gib(d.used_bytes as f64),
                gib(d.referenced_bytes as f64),
                gib(d.snapshots_bytes as f64),
                d.growth_bytes.map_or_else(|| "–".into(), signed_gib),
                d.baseline.as_deref().unwrap_or("no snapshot in the window")
            );
        }
    }
    let ss = &r.snapshot_space;
    let _ = writeln!(w, "\n## Snapshot space by policy\n");
    if ss.by_policy.is_empty() {
        let _ = writeln!(w, "No snapshots.");
    } else {
        let _ = writeln!(w, "| policy | snapshots | used |");
        let _ = writeln!(w, "|---|---:|---:|");
        for p in &ss.by_policy {
            let _ = writeln!(
                w,
                "| {} | {} | {} |",
                p.policy.as_str(),
                p.snapshots,
                gib(p.used_bytes as f64)
            );
        }
        let _ = writeln!(
            w,
            "\n`usedbysnapshots` {}, of which {} shared between snapshots.",
            gib(ss.usedbysnapshots_bytes as f64),
            gib(ss.shared_bytes as f64)
        );
    }
    if !r.notes.is_empty() {
        let _ = writeln!(w, "\n## Notes\n");
        for n in &r.notes {
            let _ = writeln!(w, "- {n}");
        }
    }
    s
}
