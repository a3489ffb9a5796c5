//! The shipped Grafana dashboard (`deploy/grafana/proxflow.json`) asks only for metrics proxflow
//! exposes: every metric name in its PromQL is one that a running pipeline — `proxflow dev`, every
//! service, the zfs parts included — lists on its `/metrics` endpoints (the ops endpoint and the
//! gateway's), under the sample names its family's type gives (`_total` of a counter,
//! `_bucket`/`_sum`/`_count` of a histogram). A renamed metric, or a panel written against a
//! metric that does not exist, fails here instead of showing "No data" on the first incident.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/cli.rs"]
mod cli;
#[path = "support/dev.rs"]
mod dev;
#[path = "../../../tests/tests/support/zfs.rs"]
mod zfs_fixture;

use std::collections::BTreeSet;

use dev::Dev;
use zfs_fixture::ZfsFixture;

/// Words of PromQL that are not metric names.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
];
/// Aggregations: a modifier may stand between one and its parenthesis (`max by (a) (x)`).
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names `expr` selects: its identifiers that are not functions, aggregations,
/// keywords or label names, with strings, label matchers and ranges taken out first.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings, `{...}` matchers and `[...]` ranges hold no metric name.
    let mut plain = String::new();
    let mut closing: Option<char> = None;
    for c in expr.chars() {
        match closing {
            Some(end) => {
                if c == end {
                    closing = None;
                    plain.push(' ');
                }
            }
            None => match c {
                '"' | '\'' | '`' => closing = Some(c),
                '{' => closing = Some('}'),
                '[' => closing = Some(']'),
                _ => plain.push(c),
            },
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            // A number (`0.95`, `1e3`) is skipped whole.
            if c.is_ascii_digit() {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            } else {
                i += 1;
            }
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut next = i;
        while next < chars.len() && chars[next].is_whitespace() {
            next += 1;
        }
        let call = chars.get(next) == Some(&'(');
        if LABEL_LISTS.contains(&word.as_str()) && call {
            // Skip the label names up to the closing parenthesis.
            while next < chars.len() && chars[next] != ')' {
                next += 1;
            }
            i = next + 1;
            continue;
        }
        let lower = word.to_ascii_lowercase();
        if !call && !KEYWORDS.contains(&lower.as_str()) && !AGGREGATIONS.contains(&lower.as_str()) {
            names.insert(word);
        }
    }
    names
}

/// Every sample name the families of a text exposition give.
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// Every PromQL expression of the dashboard's panels (rows' nested panels included).
fn expressions(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let title = panel["title"].as_str().unwrap_or_default().to_owned();
                out.push((title, expr.to_owned()));
            }
        }
    }
    out
}

#[test]
fn promql_metric_names_are_read_out_of_expressions() {
    let names = metric_names(
        "histogram_quantile(0.95, sum by (route, le) (rate(proxflow_x_bucket{route=~\"/v1.*\"}[$__rate_interval]))) \
         / on (route) group_left max without (a) (proxflow_y) > bool 1.5e3 and time() - proxflow_z offset 5m",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["proxflow_x_bucket", "proxflow_y", "proxflow_z"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_one_proxflow_exposes() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/proxflow.json"
    ))
    .expect("deploy/grafana/proxflow.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let queries = expressions(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());

    // The whole pipeline, so that every service has registered its metrics.
    let fx = ZfsFixture::absent("dev-dashboard").with_job("dev-offsite");
    let state = tempfile::tempdir().expect("tempdir");
    let env = vec![
        ("PROXFLOW_DEV__ZFS_SOURCE", fx.source.clone()),
        ("PROXFLOW_DEV__ZFS_TARGET", fx.target.clone()),
    ];
    let dev = {
        let state = state.path().to_owned();
        tokio::task::spawn_blocking(move || Dev::start(&state, &env))
            .await
            .expect("join")
    };
    let http = reqwest::Client::new();
    let mut names = BTreeSet::new();
    for url in [dev.url("ops"), format!("{}/metrics", dev.url("gateway"))] {
        let body = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("metrics")
            .text()
            .await
            .expect("text");
        names.extend(exposed(&body));
    }
    assert!(
        names.contains("proxflow_replication_lag_seconds"),
        "the replicator runs: {names:?}"
    );

    let mut unknown = Vec::new();
    for (panel, expr) in &queries {
        let wanted = metric_names(expr);
        assert!(!wanted.is_empty(), "{panel}: no metric in {expr}");
        for name in wanted.iter().filter(|n| !names.contains(*n)) {
            unknown.push(format!("{panel}: {name} (in {expr})"));
        }
    }
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics proxflow does not expose:\n  {}",
        unknown.join("\n  ")
    );
    tokio::task::spawn_blocking(move || dev.stop())
        .await
        .expect("join");
}
