//! `proxflow trace <workflow-id | trace-id>`: a workflow's trace as the services recorded it on the
//! bus (`PF_TRACE`), printed as a tree with durations, errors and the Proxmox ids inline, or as the
//! JSON records with `--json`. A workflow id is looked up in `pf_workflows` for its trace id; a
//! 32-hex-digit argument is taken as the trace id itself.

use anyhow::{Context, anyhow, bail};
use proxflow_runtime::bus;
use proxflow_runtime::config::NatsConfig;
use proxflow_runtime::ops::Metrics;
use proxflow_runtime::telemetry::recorded::{self, SpanTree};
use proxflow_schemas::names::bucket;
use proxflow_schemas::trace::{SpanRecord, is_trace_id};
use proxflow_schemas::workflow::WorkflowRecord;

/// Attributes shown after a span's duration, as `label=value`, in this order.
const INLINE: [(&str, &str); 5] = [
    ("pve.vmid", "vmid"),
    ("pve.upid", "upid"),
    ("http.response.status_code", "status"),
    ("command.exit_code", "exit"),
    ("outcome", "outcome"),
];

/// Span names wider than this do not widen the name column for everyone else.
const MAX_NAME_COLUMN: usize = 64;

/// Error messages are cut here in the tree (`--json` has them whole): a task log tail would
/// otherwise fill the screen.
const MAX_ERROR_CHARS: usize = 160;

/// Prints the trace of `id` (a workflow id or a trace id).
pub async fn run(nats: &NatsConfig, id: &str, json: bool) -> anyhow::Result<()> {
    let bus = bus::connect(nats, "proxflow trace", Metrics::new()).await?;
    let (trace_id, workflow) = resolve(&bus.js, id).await?;
    let fetched = recorded::fetch_trace(&bus.js, &trace_id, nats.request_timeout).await?;
    if fetched.unreadable > 0 {
        eprintln!(
            "proxflow: {} record(s) of trace {trace_id} are not readable span records (written by a newer proxflow?)",
            fetched.unreadable
        );
    }
    let tree = SpanTree::build(fetched.spans);
    if tree.is_empty() {
        let of = workflow.map_or_else(String::new, |w| format!(" (workflow {w})"));
        bail!(
            "no spans recorded for trace {trace_id}{of}: spans are kept 7 days, and reach the bus \
             about a second after they end"
        );
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(tree.spans()).context("encoding the records")?
        );
    } else {
        print!("{}", render(&trace_id, workflow.as_deref(), &tree));
    }
    Ok(())
}

/// The trace id to read, and the workflow it belongs to when `id` named one.
async fn resolve(
    js: &async_nats::jetstream::Context,
    id: &str,
) -> anyhow::Result<(String, Option<String>)> {
    let lower = id.to_ascii_lowercase();
    if is_trace_id(&lower) {
        return Ok((lower, None));
    }
    let workflows = js
        .get_key_value(bucket::WORKFLOWS)
        .await
        .with_context(|| format!("opening the workflow bucket {}", bucket::WORKFLOWS))?;
    let entry = workflows
        .get(id)
        .await
        .with_context(|| format!("reading workflow {id:?}"))?
        .ok_or_else(|| {
            anyhow!(
                "workflow {id:?} not found in {} (and it is not a 32-hex-digit trace id)",
                bucket::WORKFLOWS
            )
        })?;
    let record: WorkflowRecord = serde_json::from_slice(&entry)
        .with_context(|| format!("workflow {id:?} is not a readable workflow record"))?;
    let trace_id = record
        .trace_id
        .filter(|t| is_trace_id(t))
        .ok_or_else(|| anyhow!("workflow {id:?} has no trace id"))?;
    Ok((trace_id, Some(record.id)))
}

/// The tree as printed: a header line, then one line per span with its name under its parent,
/// service, duration, key attributes and error.
fn render(trace_id: &str, workflow: Option<&str>, tree: &SpanTree) -> String {
    let visits = tree.walk();
    // The service of a span: its own `proxflow.service`, else its parent's when both ran in the same
    // process, else its record's service. A record's service is its span's own service
    // (`telemetry::service`), so the first two rules only matter for records written before spans
    // carried theirs (kept 7 days), whose service was the process's name (`proxflow-dev` for every
    // span of `proxflow dev`) and whose `proxflow.service` was only on entry spans.
    let mut by_depth: Vec<(String, String)> = Vec::new(); // (process, service) per depth
    let rows: Vec<(String, &SpanRecord, String)> = visits
        .iter()
        .map(|v| {
            by_depth.truncate(v.depth);
            let service = v
                .span
                .attributes
                .get(proxflow_runtime::telemetry::service::KEY)
                .cloned()
                .or_else(|| {
                    by_depth
                        .last()
                        .filter(|(process, _)| *process == v.span.service)
                        .map(|(_, service)| service.clone())
                })
                .unwrap_or_else(|| v.span.service.clone());
            by_depth.push((v.span.service.clone(), service.clone()));
            (
                format!("{}{}", guide(&v.last), one_line(&v.span.name)),
                v.span,
                service,
            )
        })
        .collect();
    let name_width = column(rows.iter().map(|(label, _, _)| label)).min(MAX_NAME_COLUMN);
    let service_width = column(rows.iter().map(|(_, _, service)| service));
    let total = tree
        .extent()
        .map(|(first, last)| (last - first).num_microseconds().unwrap_or(i64::MAX))
        .map_or_else(String::new, |us| {
            format!(", {}", duration(u64::try_from(us).unwrap_or(0)))
        });
    let workflow = workflow.map_or_else(String::new, |w| format!("workflow {}, ", one_line(w)));
    let mut out = format!(
        "trace {trace_id}  ({workflow}{} span{}{total})\n",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    for (label, span, service) in &rows {
        let line = format!(
            "{label:<name_width$}  {service:<service_width$}  {took:>9}{extra}",
            service = one_line(service),
            took = duration(span.duration_us),
            extra = extras(span),
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `├─ `, `└─ ` and `│  ` from the last-sibling flags of a span's path (the root level draws nothing).
fn guide(last: &[bool]) -> String {
    let Some((own, ancestors)) = last.split_last() else {
        return String::new();
    };
    if ancestors.is_empty() {
        return String::new();
    }
    let mut out: String = ancestors[1..]
        .iter()
        .map(|&done| if done { "   " } else { "│  " })
        .collect();
    out.push_str(if *own { "└─ " } else { "├─ " });
    out
}

fn column<'a>(cells: impl Iterator<Item = &'a String>) -> usize {
    cells.map(|c| c.chars().count()).max().unwrap_or(0)
}

/// Key attributes and the error, each preceded by two spaces.
fn extras(span: &SpanRecord) -> String {
    let mut out = String::new();
    for (key, label) in INLINE {
        match span.attributes.get(key) {
            // A successful outcome says nothing the missing ERROR does not.
            Some(value) if key == "outcome" && value == "ok" => {}
            Some(value) => out.push_str(&format!("  {label}={}", one_line(value))),
            None => {}
        }
    }
    if span.is_error() {
        out.push_str("  ERROR");
        if let Some(message) = &span.status.message {
            out.push(' ');
            out.push_str(&cut(&one_line(message), MAX_ERROR_CHARS));
        }
    }
    out
}

/// Recorded text on one line: control characters (newlines of a task log, escape sequences) would
/// break the tree or the terminal.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A duration scaled to its unit with three significant digits: `850 µs`, `12.3 ms`, `4.21 s`,
/// `3m 05s`, `1h 02m`.
fn duration(us: u64) -> String {
    fn scaled(value: f64, unit: &str) -> String {
        if value < 10.0 {
            format!("{value:.2} {unit}")
        } else if value < 100.0 {
            format!("{value:.1} {unit}")
        } else {
            format!("{value:.0} {unit}")
        }
    }
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => scaled(us as f64 / 1e3, "ms"),
        1_000_000..60_000_000 => scaled(us as f64 / 1e6, "s"),
        _ => {
            let secs = us / 1_000_000;
            if secs < 3600 {
                format!("{}m {:02}s", secs / 60, secs % 60)
            } else {
                format!("{}h {:02}m", secs / 3600, secs % 3600 / 60)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{DateTime, Duration, Utc};
    use proxflow_schemas::trace::{SpanKind, SpanStatus, StatusCode};

    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + Duration::milliseconds(1_700_000_000_000 + ms)
    }

    fn span(
        id: &str,
        parent: Option<&str>,
        name: &str,
        service: &str,
        (start_ms, duration_us): (i64, u64),
        attributes: &[(&str, &str)],
        error: Option<&str>,
    ) -> SpanRecord {
        SpanRecord {
            trace_id: TRACE.into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_owned),
            name: name.into(),
            service: service.into(),
            kind: SpanKind::Internal,
            start: at(start_ms),
            end: at(start_ms) + Duration::microseconds(duration_us as i64),
            duration_us,
            status: SpanStatus {
                code: if error.is_some() {
                    StatusCode::Error
                } else {
                    StatusCode::Ok
                },
                message: error.map(str::to_owned),
            },
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            events: Vec::new(),
        }
    }

    #[test]
    fn a_workflow_prints_as_a_tree_with_durations_ids_and_errors() {
        let tree = SpanTree::build(vec![
            span(
                "a",
                None,
                "POST /v1/provision",
                "gateway",
                (0, 12_300),
                &[],
                None,
            ),
            span(
                "b",
                Some("a"),
                "process pf.ingest.webhook.provision",
                "orchestrator",
                (5, 3_100),
                &[],
                None,
            ),
            span(
                "c",
                Some("b"),
                "provision k3s-4",
                "provisioner",
                (10, 4_100_000),
                &[("outcome", "ok")],
                None,
            ),
            span(
                "d",
                Some("c"),
                "pve POST /nodes/{node}/qemu/{vmid}/clone",
                "provisioner",
                (20, 45_000),
                &[
                    ("pve.vmid", "104"),
                    ("pve.upid", "UPID:pve1:0001:qmclone:104:root@pam:"),
                ],
                None,
            ),
            span(
                "e",
                Some("c"),
                "pve.task.wait",
                "provisioner",
                (70, 2_010_000),
                &[("outcome", "failed")],
                None,
            ),
            span(
                "f",
                Some("c"),
                "run ansible-playbook",
                "provisioner",
                (2_100, 1_200_000),
                &[("command.exit_code", "2")],
                Some("exit 2:\nfatal: unreachable"),
            ),
        ]);
        let text = render(TRACE, Some("prov-3f2a"), &tree);
        let expected = "\
trace 4bf92f3577b34da6a3ce929d0e0e4736  (workflow prov-3f2a, 6 spans, 4.11 s)
POST /v1/provision                                 gateway         12.3 ms
└─ process pf.ingest.webhook.provision             orchestrator    3.10 ms
   └─ provision k3s-4                              provisioner      4.10 s
      ├─ pve POST /nodes/{node}/qemu/{vmid}/clone  provisioner     45.0 ms  vmid=104  upid=UPID:pve1:0001:qmclone:104:root@pam:
      ├─ pve.task.wait                             provisioner      2.01 s  outcome=failed
      └─ run ansible-playbook                      provisioner      1.20 s  exit=2  ERROR exit 2: fatal: unreachable
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn a_bare_trace_id_has_no_workflow_in_its_header_and_one_span_is_singular() {
        let tree = SpanTree::build(vec![span("a", None, "x", "gateway", (0, 5), &[], None)]);
        let text = render(TRACE, None, &tree);
        assert!(
            text.starts_with(&format!("trace {TRACE}  (1 span, 5 µs)\n")),
            "{text}"
        );
    }

    #[test]
    fn long_errors_are_cut_and_control_characters_flattened() {
        let long = "e".repeat(MAX_ERROR_CHARS + 50);
        let tree = SpanTree::build(vec![span(
            "a",
            None,
            "evil\u{1b}[2Jname",
            "gateway",
            (0, 5),
            &[],
            Some(&long),
        )]);
        let text = render(TRACE, None, &tree);
        let line = text.lines().nth(1).expect("span line");
        assert!(line.starts_with("evil [2Jname"), "{line}");
        assert!(line.ends_with(&format!("ERROR {}…", "e".repeat(MAX_ERROR_CHARS))));
    }

    #[test]
    fn durations_scale_to_their_unit() {
        assert_eq!(duration(0), "0 µs");
        assert_eq!(duration(850), "850 µs");
        assert_eq!(duration(1_000), "1.00 ms");
        assert_eq!(duration(12_340), "12.3 ms");
        assert_eq!(duration(123_400), "123 ms");
        assert_eq!(duration(4_210_000), "4.21 s");
        assert_eq!(duration(59_900_000), "59.9 s");
        assert_eq!(duration(185_000_000), "3m 05s");
        assert_eq!(duration(3_720_000_000), "1h 02m");
    }

    #[test]
    fn guides_follow_the_last_sibling_flags() {
        assert_eq!(guide(&[true]), "");
        assert_eq!(guide(&[true, false]), "├─ ");
        assert_eq!(guide(&[true, true]), "└─ ");
        assert_eq!(guide(&[false, false, true]), "│  └─ ");
        assert_eq!(guide(&[false, true, false]), "   ├─ ");
        assert_eq!(guide(&[]), "");
    }
}
