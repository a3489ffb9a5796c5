//! Reading recorded spans back: every [`SpanRecord`] of one trace from the `PF_TRACE` stream, and
//! the tree they form (parent links cross services, so the tree is only whole once read back).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::{self, context::GetStreamErrorKind};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use proxflow_schemas::Versioned;
use proxflow_schemas::names::{header, stream, subject};
use proxflow_schemas::trace::{SpanRecord, is_trace_id};

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not a trace id, so it cannot name a subject.
    #[error("{0:?} is not a trace id (32 lowercase hex digits)")]
    InvalidTraceId(String),
    /// The stream does not exist yet: no service has declared the topology on this server.
    #[error(
        "stream {} does not exist on this server; start a proxflow service once to declare it",
        stream::TRACE
    )]
    NoStream,
    /// A JetStream call failed.
    #[error("reading {what}: {source}")]
    Api {
        /// What was being read.
        what: &'static str,
        /// The client's error.
        #[source]
        source: async_nats::Error,
    },
    /// The server stopped delivering before the trace was read to its end.
    #[error("no span delivered within {0:?} although more were pending")]
    Stalled(Duration),
}

fn api(what: &'static str) -> impl FnOnce(async_nats::Error) -> FetchError {
    move |source| FetchError::Api { what, source }
}

/// The records of one trace as read from the stream.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// Every readable record, in stream order.
    pub spans: Vec<SpanRecord>,
    /// Messages that were not a readable [`SpanRecord`] (another schema, a newer version, bad JSON).
    pub unreadable: usize,
}

/// Reads every span recorded for `trace_id` with an ordered consumer, until it has caught up with
/// the stream; `wait` bounds the wait for each message.
pub async fn fetch_trace(
    js: &jetstream::Context,
    trace_id: &str,
    wait: Duration,
) -> Result<Fetched, FetchError> {
    if !is_trace_id(trace_id) {
        return Err(FetchError::InvalidTraceId(trace_id.to_owned()));
    }
    let traces = js
        .get_stream(stream::TRACE)
        .await
        .map_err(|e| match e.kind() {
            GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                FetchError::NoStream
            }
            _ => api("the trace stream")(e.into()),
        })?;
    let consumer = traces
        .create_consumer(OrderedConfig {
            filter_subject: subject::trace(trace_id),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| api("a consumer on the trace stream")(e.into()))?;
    let mut fetched = Fetched::default();
    let mut pending = consumer.cached_info().num_pending;
    if pending == 0 {
        return Ok(fetched);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| api("spans")(e.into()))?;
    while pending > 0 {
        let message = match tokio::time::timeout(wait, messages.next()).await {
            Ok(Some(message)) => message.map_err(|e| api("spans")(e.into()))?,
            Ok(None) | Err(_) => return Err(FetchError::Stalled(wait)),
        };
        pending = message.info().map_err(api("span delivery info"))?.pending;
        let schema_ok = message
            .headers
            .as_ref()
            .and_then(|h| h.get(header::SCHEMA))
            .is_some_and(|s| SpanRecord::SCHEMA.accepts(s.as_str()).is_ok());
        match serde_json::from_slice::<SpanRecord>(&message.payload) {
            Ok(record) if schema_ok => fetched.spans.push(record),
            _ => fetched.unreadable += 1,
        }
    }
    Ok(fetched)
}

/// The spans of a trace as a forest: each span under its parent, children and roots by start time.
/// A span whose parent was not recorded (dropped, or outside proxflow) becomes a root, so nothing
/// recorded is hidden.
#[derive(Debug, Clone, Default)]
pub struct SpanTree {
    /// By start time.
    spans: Vec<SpanRecord>,
    /// Indices into `spans`, per span, by start time.
    children: Vec<Vec<usize>>,
    /// Indices into `spans` of the roots, by start time.
    roots: Vec<usize>,
}

/// One span met on a depth-first walk of a [`SpanTree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit<'a> {
    /// The span.
    pub span: &'a SpanRecord,
    /// 0 for a root.
    pub depth: usize,
    /// For each level from the root down to this span: whether the span on the path at that level
    /// is the last of its siblings (what a tree drawing needs to choose `├─`, `└─` or `│`).
    pub last: Vec<bool>,
}

impl SpanTree {
    /// Builds the tree. A span recorded twice (same span id) counts once; spans whose parent links
    /// form a cycle (only possible in forged records) are cut apart at their earliest span.
    pub fn build(mut spans: Vec<SpanRecord>) -> Self {
        spans.sort_by(|a, b| (a.start, &a.span_id).cmp(&(b.start, &b.span_id)));
        let mut seen = std::collections::HashSet::new();
        spans.retain(|s| seen.insert(s.span_id.clone()));
        let index: HashMap<&str, usize> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| (s.span_id.as_str(), i))
            .collect();
        let parent: Vec<Option<usize>> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parent_span_id
                    .as_deref()
                    .and_then(|p| index.get(p).copied())
                    .filter(|&p| p != i)
            })
            .collect();
        let mut children = vec![Vec::new(); spans.len()];
        let mut roots = Vec::new();
        for (i, p) in parent.iter().enumerate() {
            match p {
                Some(p) => children[*p].push(i),
                None => roots.push(i),
            }
        }
        let mut reached = vec![false; spans.len()];
        for &root in &roots {
            mark(&children, root, &mut reached);
        }
        // Whatever no root reaches sits on a cycle: promote its earliest span to a root, detached
        // from its parent, which makes the rest of that cycle reachable.
        for i in 0..spans.len() {
            if !reached[i] {
                if let Some(p) = parent[i] {
                    children[p].retain(|&c| c != i);
                }
                roots.push(i);
                mark(&children, i, &mut reached);
            }
        }
        roots.sort_unstable();
        Self {
            spans,
            children,
            roots,
        }
    }

    /// The spans by start time.
    pub fn spans(&self) -> &[SpanRecord] {
        &self.spans
    }

    /// Whether there are no spans.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// From the first start to the last end.
    pub fn extent(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let first = self.spans.first()?.start;
        let last = self.spans.iter().map(|s| s.end).max()?;
        Some((first, last.max(first)))
    }

    /// Every span, depth first: each root by start time, then its children by start time.
    pub fn walk(&self) -> Vec<Visit<'_>> {
        let mut visits = Vec::with_capacity(self.spans.len());
        // (span, path of last-flags); iterative, so a deep trace cannot overflow the stack.
        let mut stack: Vec<(usize, Vec<bool>)> = self
            .roots
            .iter()
            .enumerate()
            .rev()
            .map(|(n, &root)| (root, vec![n + 1 == self.roots.len()]))
            .collect();
        while let Some((i, last)) = stack.pop() {
            let kids = &self.children[i];
            for (n, &kid) in kids.iter().enumerate().rev() {
                let mut path = last.clone();
                path.push(n + 1 == kids.len());
                stack.push((kid, path));
            }
            visits.push(Visit {
                span: &self.spans[i],
                depth: last.len() - 1,
                last,
            });
        }
        visits
    }
}

fn mark(children: &[Vec<usize>], from: usize, reached: &mut [bool]) {
    let mut stack = vec![from];
    while let Some(i) = stack.pop() {
        if !std::mem::replace(&mut reached[i], true) {
            stack.extend(&children[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proxflow_schemas::trace::{SpanKind, SpanStatus, StatusCode};

    use super::*;

    fn span(id: &str, parent: Option<&str>, start_ms: i64) -> SpanRecord {
        let start = Utc
            .timestamp_millis_opt(1_700_000_000_000 + start_ms)
            .single()
            .expect("time");
        SpanRecord {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_owned),
            name: format!("span {id}"),
            service: "test".into(),
            kind: SpanKind::Internal,
            start,
            end: start + chrono::Duration::milliseconds(10),
            duration_us: 10_000,
            status: SpanStatus {
                code: StatusCode::Ok,
                message: None,
            },
            attributes: Default::default(),
            events: Vec::new(),
        }
    }

    fn outline(tree: &SpanTree) -> Vec<(usize, String, Vec<bool>)> {
        tree.walk()
            .into_iter()
            .map(|v| (v.depth, v.span.span_id.clone(), v.last))
            .collect()
    }

    #[test]
    fn children_nest_under_parents_in_start_order() {
        // Given in the order spans finish (children first), as the stream holds them.
        let tree = SpanTree::build(vec![
            span("c2", Some("b"), 30),
            span("c1", Some("b"), 20),
            span("b", Some("a"), 10),
            span("d", Some("a"), 40),
            span("a", None, 0),
        ]);
        assert_eq!(
            outline(&tree),
            vec![
                (0, "a".into(), vec![true]),
                (1, "b".into(), vec![true, false]),
                (2, "c1".into(), vec![true, false, false]),
                (2, "c2".into(), vec![true, false, true]),
                (1, "d".into(), vec![true, true]),
            ]
        );
        let (first, last) = tree.extent().expect("extent");
        assert_eq!((last - first).num_milliseconds(), 50);
    }

    #[test]
    fn a_span_whose_parent_is_missing_becomes_a_root_in_start_order() {
        let tree = SpanTree::build(vec![
            span("late", Some("never-recorded"), 50),
            span("root", None, 0),
            span("child", Some("root"), 5),
        ]);
        assert_eq!(
            outline(&tree),
            vec![
                (0, "root".into(), vec![false]),
                (1, "child".into(), vec![false, true]),
                (0, "late".into(), vec![true]),
            ]
        );
    }

    #[test]
    fn a_span_recorded_twice_appears_once() {
        let tree = SpanTree::build(vec![span("a", None, 0), span("a", None, 0)]);
        assert_eq!(tree.spans().len(), 1);
        assert_eq!(tree.walk().len(), 1);
    }

    #[test]
    fn forged_cycles_and_self_parents_still_show_every_span_once() {
        let tree = SpanTree::build(vec![
            span("x", Some("y"), 0),
            span("y", Some("x"), 10),
            span("self", Some("self"), 20),
        ]);
        assert_eq!(
            outline(&tree),
            vec![
                (0, "x".into(), vec![false]),
                (1, "y".into(), vec![false, true]),
                (0, "self".into(), vec![true]),
            ]
        );
    }

    #[test]
    fn an_empty_tree_has_no_extent() {
        let tree = SpanTree::build(Vec::new());
        assert!(tree.is_empty());
        assert_eq!(tree.extent(), None);
        assert!(tree.walk().is_empty());
    }
}
