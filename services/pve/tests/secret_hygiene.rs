//! The token secret never reaches `Debug` output, error messages or logs (captured at TRACE, with the
//! `insecure` warning path and a refused token included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{Fixture, client_config};
use proxflow_pve::{PveClient, PveConfig};
use proxflow_runtime::config::Secret;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

/// A `MakeWriter` into a shared buffer, so the test reads what the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn the_token_secret_never_reaches_debug_errors_or_logs() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(captured.clone())
            .with_ansi(false)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
    );
    // Global, and alone in this test binary: a thread-local subscriber misses events from callsites
    // whose interest other tests' threads already cached.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let fx = Fixture::with(|c| c.tls = true).await;
    let sim = fx.sim.as_ref().unwrap();
    let secret = sim.token_secret().to_string();
    let config = PveConfig {
        insecure: true, // logs a warning on purpose: that path must not leak either
        fingerprint: None,
        retry_attempts: 2,
        ..client_config(sim)
    };
    let client = PveClient::new(&config).unwrap();
    client.list_vms().await.unwrap();
    let failed = client.vm_config(4242).await.expect_err("no such VM");
    let wrong = PveClient::new(&PveConfig {
        token_secret: Secret::new(format!("{secret}-x")),
        ..config.clone()
    })
    .unwrap();
    let refused = wrong.list_vms().await.expect_err("401");

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("pve.request"), "the capture works: {logs}");
    assert!(logs.contains("insecure"), "the insecure warning was logged");
    for (what, text) in [
        ("client Debug", format!("{client:?}")),
        ("config Debug", format!("{config:?}")),
        ("error Display", failed.to_string()),
        ("error Debug", format!("{failed:?} {refused:?}")),
        ("logs", logs),
    ] {
        assert!(!text.contains(&secret), "{what} leaks the token secret");
    }
    assert!(format!("{client:?}").contains("<redacted>"));
}
