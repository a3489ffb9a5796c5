//! The process's metric registry, remembering what was registered in it: prometheus_client leaves
//! a family out of the exposition until it has a series, so a failure counter that never counted
//! would look like a metric the process does not have — to a dashboard or an alert rule being
//! checked, and to an operator reading `/metrics`. [`Registrar::encode`] describes those families
//! too (`# HELP` and `# TYPE` without samples, which both text formats allow).

use std::fmt::Write;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::{Metric, Registry};

/// The prefix of every metric name.
const PREFIX: &str = "proxflow";

/// A registered family: its full name, help and type.
#[derive(Debug)]
struct Described {
    name: String,
    help: String,
    kind: &'static str,
}

/// A registry under [`PREFIX`] and the families registered in it.
#[derive(Clone, Debug)]
pub(crate) struct Registrar {
    registry: Arc<Mutex<Registry>>,
    /// Every family, in registration order.
    families: Arc<Mutex<Vec<Described>>>,
}

impl Registrar {
    pub(crate) fn new() -> Self {
        Self {
            registry: Arc::new(Mutex::new(Registry::with_prefix(PREFIX))),
            families: Arc::default(),
        }
    }

    /// Registers `metric` as `proxflow_<name>`.
    pub(crate) fn register(&self, name: &str, help: &str, metric: impl Metric) {
        let kind = match metric.metric_type().as_str() {
            "counter" => "counter",
            "gauge" => "gauge",
            "histogram" => "histogram",
            "info" => "info",
            _ => "unknown",
        };
        self.families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Described {
                name: format!("{PREFIX}_{name}"),
                help: help.to_owned(),
                kind,
            });
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, help, metric);
    }

    /// The text exposition, every registered family in it.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        {
            let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
                tracing::error!(error = %e, "metrics encoding failed");
            }
        }
        let mut empty = String::new();
        for Described { name, help, kind } in self
            .families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if !out.contains(&format!("# TYPE {name} ")) {
                // prometheus_client ends every help text with a period; so do these.
                let _ = write!(empty, "# HELP {name} {help}.\n# TYPE {name} {kind}\n");
            }
        }
        match out.rfind("# EOF") {
            Some(at) => out.insert_str(at, &empty),
            None => out.push_str(&empty),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    #[test]
    fn a_family_without_series_is_described_before_the_end_marker() {
        let registrar = Registrar::new();
        let family = Family::<Vec<(String, String)>, Counter>::default();
        registrar.register("failures", "Failures", family.clone());
        let text = registrar.encode();
        assert!(
            text.contains("# HELP proxflow_failures Failures.\n# TYPE proxflow_failures counter\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        family
            .get_or_create(&vec![("reason".into(), "x".into())])
            .inc();
        let text = registrar.encode();
        assert_eq!(
            text.matches("# TYPE proxflow_failures counter").count(),
            1,
            "{text}"
        );
    }
}
