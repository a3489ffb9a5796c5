//! `proxflow approvals`: the patch runs waiting for a decision — a table of the runs (plan hash,
//! when asked, until when), then per run what its plan holds and the exact commands that decide —
//! rendered from [`proxflow_view::approvals`].

use proxflow_runtime::workflow::Engine;
use proxflow_view::approvals::{self, PendingApproval};

use crate::lifecycle::cli_context;
use crate::listing::{Table, at, print_json};
use crate::provision::wire_name;
use crate::settings::Settings;

/// Prints the runs waiting for a decision.
pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let engine = Engine::new(&cli_context(settings, "proxflow approvals").await?).await?;
    let pending = approvals::pending(&engine).await?;
    if json {
        return print_json(&pending);
    }
    if pending.is_empty() {
        println!("no patch run waits for a decision");
        return Ok(());
    }
    print!("{}", render(&pending));
    Ok(())
}

fn render(pending: &[PendingApproval]) -> String {
    let mut runs = Table::new(&["RUN", "PLAN", "REQUESTED", "EXPIRES", "TARGETS"]);
    for p in pending {
        let majors = p.targets.iter().filter(|t| t.major).count();
        runs.row([
            p.run.clone(),
            p.plan_hash.chars().take(12).collect(),
            at(p.requested_at),
            at(p.expires_at),
            format!("{} ({majors} major)", p.targets.len()),
        ]);
    }
    let mut out = runs.render("");
    for p in pending {
        let mut targets = Table::new(&[
            "TARGET", "NAME", "KIND", "PACKAGES", "SECURITY", "REBOOT", "DECISION",
        ]);
        for t in &p.targets {
            let decision = if t.major {
                let why: Vec<String> = t
                    .majors
                    .iter()
                    .map(|m| match &m.package {
                        Some(package) => format!("{package}: {}", m.reason),
                        None => m.reason.clone(),
                    })
                    .collect();
                format!("MAJOR: {}", why.join("; "))
            } else {
                "minor (patched in the window)".to_owned()
            };
            targets.row([
                t.target.clone(),
                t.name.clone(),
                wire_name(t.kind),
                t.packages.to_string(),
                t.security.to_string(),
                if t.reboot { "yes" } else { "no" }.to_owned(),
                decision,
            ]);
        }
        out.push_str(&format!("\n{} asks about plan {}:\n", p.run, p.plan_hash));
        out.push_str(&targets.render("  "));
        out.push_str(&format!(
            "  approve: {}\n  reject:  {}\n",
            p.approve, p.reject
        ));
    }
    out
}
