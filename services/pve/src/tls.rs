//! TLS trust for pveproxy: a CA file, a pinned SHA-256 fingerprint, or (explicitly) nothing.
//!
//! A Proxmox node serves a certificate signed by its own per-cluster CA, so the public web PKI never
//! applies. Pinning the leaf fingerprint is what Proxmox itself does between nodes (and what the GUI
//! shows under Certificates); it survives a changed hostname or IP but not a renewed certificate, which
//! is the point.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// Parses `AA:BB:…` (colons optional, any case) into the 32 digest bytes.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(hex).ok()?;
    bytes.try_into().ok()
}

/// `AA:BB:…`, the form Proxmox prints.
pub fn format_fingerprint(digest: &[u8]) -> String {
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// SHA-256 fingerprint of a DER certificate, formatted like Proxmox.
pub fn fingerprint_of(der: &[u8]) -> String {
    format_fingerprint(&Sha256::digest(der))
}

/// Checks the server certificate against a pinned SHA-256 fingerprint, or (`insecure`) not at all.
/// Handshake signatures are verified either way, so the peer holds the key of the certificate it sent.
pub struct CertVerifier {
    pin: Option<[u8; 32]>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for CertVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pin = self.pin.map(|p| format_fingerprint(&p));
        f.debug_struct("CertVerifier").field("pin", &pin).finish()
    }
}

impl CertVerifier {
    /// Accepts exactly the leaf certificate whose DER has this SHA-256.
    pub fn pinned(pin: [u8; 32]) -> Self {
        Self {
            pin: Some(pin),
            algorithms: provider().signature_verification_algorithms,
        }
    }

    /// Accepts any certificate: the `insecure` option, for labs.
    pub fn insecure() -> Self {
        Self {
            pin: None,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for CertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pin) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if seen == pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "certificate fingerprint {} does not match the pinned {}",
                format_fingerprint(&seen),
                format_fingerprint(&pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The provider every proxflow TLS connection uses (never `ring`, see the workspace Cargo.toml).
fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// A rustls client config with a custom verifier and HTTP/1.1 ALPN (pveproxy speaks HTTP/1.1 only).
pub fn client_config(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_round_trip() {
        let fp = fingerprint_of(b"certificate");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert_eq!(
            parse_fingerprint(&fp).map(|b| format_fingerprint(&b)),
            Some(fp.clone())
        );
        assert_eq!(
            parse_fingerprint(&fp.to_lowercase().replace(':', "")).map(|b| format_fingerprint(&b)),
            Some(fp)
        );
        assert!(parse_fingerprint("AA:BB").is_none());
        assert!(parse_fingerprint("zz").is_none());
    }
}
