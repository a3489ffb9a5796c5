//! The simulator's TLS identity: a self-signed certificate generated at start (SANs `localhost`,
//! `127.0.0.1`, `::1` and the node name), served through rustls with the aws-lc-rs provider named
//! explicitly (the workspace never links `ring`, and two providers would make rustls refuse to
//! pick one). Clients either trust the PEM as a CA file or pin the fingerprint, as with pveproxy.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

/// What `start` keeps of the certificate.
pub(crate) struct Identity {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) fingerprint: String,
    pub(crate) pem: String,
}

/// SHA-256 of the DER, uppercase hex, colon separated (`AA:BB:...`), as Proxmox shows it.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Why the simulator's TLS identity could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The self-signed certificate or its key.
    #[error("{0}")]
    Certificate(#[source] rcgen::Error),
    /// The server configuration.
    #[error("{0}")]
    Config(#[source] rustls::Error),
}

pub(crate) fn generate(node: &str) -> Result<Identity, TlsError> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        node.to_owned(),
    ];
    let mut params = rcgen::CertificateParams::new(names).map_err(TlsError::Certificate)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "PVE Simulator");
    let key = rcgen::KeyPair::generate().map_err(TlsError::Certificate)?;
    let cert = params.self_signed(&key).map_err(TlsError::Certificate)?;
    let der: CertificateDer<'static> = cert.der().clone();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], private)
        .map_err(TlsError::Config)?;
    // pveproxy speaks HTTP/1.1 only (reason phrases carry Proxmox's error texts).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Identity {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        fingerprint: fingerprint(der.as_ref()),
        pem: cert.pem(),
    })
}
