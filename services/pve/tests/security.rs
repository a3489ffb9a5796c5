//! TLS trust (fingerprint pin, CA file, nothing) against the simulator's self-signed HTTPS, and token
//! refusal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, client_config};
use proxflow_pve::{ErrorKind, PveClient, PveConfig};
use proxflow_runtime::config::Secret;
use std::io::Write;

const WRONG_PIN: &str = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";

#[tokio::test]
async fn https_trust_by_pin_or_ca_file_and_nothing_else() {
    let fx = Fixture::with(|c| c.tls = true).await;
    let sim = fx.sim.as_ref().unwrap();
    assert!(sim.base_url().starts_with("https://"));
    let pin = sim.fingerprint().expect("HTTPS has a fingerprint");

    let pinned = PveClient::new(&PveConfig {
        fingerprint: Some(pin.clone()),
        ..client_config(sim)
    })
    .unwrap();
    pinned.next_id().await.expect("the right pin is accepted");

    let wrong = PveClient::new(&PveConfig {
        fingerprint: Some(WRONG_PIN.into()),
        ..client_config(sim)
    })
    .unwrap();
    let err = wrong.next_id().await.expect_err("a wrong pin is refused");
    assert_eq!(
        err.kind,
        ErrorKind::Setup,
        "never retried as transient: {err}"
    );
    assert!(
        err.message.contains(&pin),
        "names the certificate seen: {err}"
    );

    let mut ca = tempfile::NamedTempFile::new().unwrap();
    ca.write_all(sim.ca_pem().expect("PEM").as_bytes()).unwrap();
    let by_ca = PveClient::new(&PveConfig {
        ca_file: Some(ca.path().to_path_buf()),
        fingerprint: None,
        ..client_config(sim)
    })
    .unwrap();
    by_ca.next_id().await.expect("the CA file is trusted");

    let system_roots = PveClient::new(&PveConfig {
        fingerprint: None,
        ..client_config(sim)
    })
    .unwrap();
    let err = system_roots
        .next_id()
        .await
        .expect_err("a self-signed cert is not in the system roots");
    assert_eq!(err.kind, ErrorKind::Setup, "{err}");

    let insecure = PveClient::new(&PveConfig {
        insecure: true,
        fingerprint: None,
        ..client_config(sim)
    })
    .unwrap();
    insecure.next_id().await.expect("insecure accepts anything");
}

#[tokio::test]
async fn a_wrong_token_is_refused_without_retries() {
    let fx = Fixture::start().await;
    let sim = fx.sim.as_ref().unwrap();
    let client = PveClient::new(&PveConfig {
        token_secret: Secret::new("wrong-secret"),
        ..client_config(sim)
    })
    .unwrap();
    let err = client.list_vms().await.expect_err("401");
    assert_eq!((err.kind, err.status), (ErrorKind::Unauthorized, Some(401)));
    let attempts = fx.journal().iter().filter(|e| e.status == 401).count();
    assert_eq!(attempts, 1, "a refused token is not retried");
    // Keep the contract check meaningful: one good call too.
    fx.client.list_vms().await.unwrap();
}
