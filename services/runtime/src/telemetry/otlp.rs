//! OTLP/HTTP export with every span under the resource of its own service.
//!
//! OTLP names the service once per resource, not per span, and the SDK's exporter sends everything
//! under the one resource the provider gives it. So [`ServiceExporter`] splits each batch by the
//! span's service ([`super::service`]) and hands each part to an OTLP exporter of its own whose
//! resource is that service's (`service.name`, plus the process's `service.namespace`,
//! `service.instance.id` and detected attributes). Spans of no service go to the exporter under the
//! provider's resource, the process's name.
//!
//! All of them export from the batch processor's thread, with the same endpoint and settings
//! (`OTEL_EXPORTER_OTLP_*` read by the SDK). A service's exporter is built the first time one of its
//! spans is exported, so a process builds only those of the services it runs; trace and parent ids
//! are untouched, so a trace that crosses services in one process stays one tree in the collector.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use opentelemetry_otlp::{
    ExporterBuildError, Protocol, SpanExporter as OtlpExporter, WithExportConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

use super::service;

/// The OTLP exporter that files each span under its service's resource.
#[derive(Debug)]
pub(super) struct ServiceExporter {
    /// The configured endpoint with its signal path, or none for the SDK to read the environment.
    endpoint: Option<String>,
    /// The provider's resource (the process's), set by the provider.
    resource: Resource,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// By service; `None` for spans of no service.
    exporters: HashMap<Option<String>, Arc<OtlpExporter>>,
    shut_down: bool,
}

impl ServiceExporter {
    /// Builds the exporter of spans of no service at once, so that settings the SDK refuses stop
    /// start-up rather than every later export.
    pub(super) fn new(endpoint: Option<String>) -> Result<Self, ExporterBuildError> {
        let process = Arc::new(build(endpoint.as_deref())?);
        Ok(Self {
            endpoint,
            resource: Resource::builder_empty().build(),
            state: Mutex::new(State {
                exporters: HashMap::from([(None, process)]),
                shut_down: false,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the map was held cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The exporter of `service`'s spans, built on first use.
    fn exporter(&self, service: &Option<String>) -> Result<Arc<OtlpExporter>, OTelSdkError> {
        let mut state = self.state();
        if state.shut_down {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        if let Some(exporter) = state.exporters.get(service) {
            return Ok(Arc::clone(exporter));
        }
        let mut exporter = build(self.endpoint.as_deref())
            .map_err(|e| OTelSdkError::InternalFailure(format!("OTLP exporter: {e}")))?;
        if let Some(name) = service {
            exporter.set_resource(&service::renamed(&self.resource, name));
        }
        let exporter = Arc::new(exporter);
        state
            .exporters
            .insert(service.clone(), Arc::clone(&exporter));
        Ok(exporter)
    }
}

/// `batch` split by service, in order of first appearance (a batch holds a few services at most).
fn partition(batch: Vec<SpanData>) -> Vec<(Option<String>, Vec<SpanData>)> {
    let mut parts: Vec<(Option<String>, Vec<SpanData>)> = Vec::new();
    for span in batch {
        let service = service::of(&span);
        match parts.iter().position(|(s, _)| s.as_deref() == service) {
            Some(i) => parts[i].1.push(span),
            None => parts.push((service.map(str::to_owned), vec![span])),
        }
    }
    parts
}

impl SpanExporter for ServiceExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let parts: Vec<_> = partition(batch)
            .into_iter()
            .map(|(service, spans)| (self.exporter(&service), spans))
            .collect();
        async move {
            // Every part is sent even when one fails; the first failure is reported.
            let mut result = Ok(());
            for (exporter, spans) in parts {
                let sent = match exporter {
                    Ok(exporter) => exporter.export(spans).await,
                    Err(e) => Err(e),
                };
                if result.is_ok() {
                    result = sent;
                }
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let mut state = self.state();
        state.shut_down = true;
        state
            .exporters
            .values()
            .map(|e| e.shutdown_with_timeout(timeout))
            .fold(Ok(()), Result::and)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.clone();
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(process) = state.exporters.get_mut(&None).and_then(Arc::get_mut) {
            process.set_resource(resource);
        }
    }
}

/// An OTLP/HTTP protobuf exporter to `endpoint`, or to where `OTEL_EXPORTER_OTLP_*` say. The
/// blocking client: the batch processor exports from its own thread, where the async reqwest
/// client has no runtime and silently drops spans.
fn build(endpoint: Option<&str>) -> Result<OtlpExporter, ExporterBuildError> {
    let mut builder = OtlpExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use opentelemetry::InstrumentationScope;
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    use super::*;

    fn span(id: u64, service: Option<&'static str>) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(1),
                SpanId::from(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "span".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes: service
                .map(|s| KeyValue::new(service::KEY, s))
                .into_iter()
                .collect(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("test").build(),
        }
    }

    #[test]
    fn a_batch_splits_by_service_keeping_order_within_each() {
        let batch = vec![
            span(1, Some("gateway")),
            span(2, None),
            span(3, Some("provisioner")),
            span(4, Some("gateway")),
            span(5, None),
        ];
        let parts: Vec<(Option<String>, Vec<u64>)> = partition(batch)
            .into_iter()
            .map(|(service, spans)| {
                let ids = spans
                    .iter()
                    .map(|s| u64::from_be_bytes(s.span_context.span_id().to_bytes()))
                    .collect();
                (service, ids)
            })
            .collect();
        assert_eq!(
            parts,
            [
                (Some("gateway".to_owned()), vec![1, 4]),
                (None, vec![2, 5]),
                (Some("provisioner".to_owned()), vec![3]),
            ]
        );
    }
}
