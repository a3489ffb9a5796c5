//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): the one implementation of
//! signing and verifying, used by the gateway, `proxflow provision` and the tests.
//!
//! A sender signs `"{webhook-id}.{webhook-timestamp}.{body}"` with HMAC-SHA256 under the secret's key
//! (`whsec_<base64 key>`) and sends `webhook-signature: v1,<base64 mac>`; several space-separated
//! signatures may be sent, so a sender can sign with the old and the new key during a rotation.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use proxflow_runtime::config::Secret;
use sha2::{Digest, Sha256};

/// Header carrying the delivery's unique id (the same on every retry of one delivery).
pub const ID_HEADER: &str = "webhook-id";
/// Header carrying the signing time, unix seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Header carrying the space-separated `v1,<base64>` signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// Prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Shortest and longest key the standard recommends, in bytes.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// Signatures looked at per request: a sender rotating keys sends two or three; a header holding
/// thousands would only make the gateway compute MACs for an attacker.
const MAX_SIGNATURES: usize = 8;
/// Longest accepted `webhook-id`; it is recorded and echoed, so it stays bounded.
const MAX_ID_LEN: usize = 256;

type HmacSha256 = Hmac<Sha256>;

/// Why a secret cannot sign or verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No `whsec_` prefix.
    #[error("must start with {SECRET_PREFIX}")]
    Prefix,
    /// The rest is not standard base64.
    #[error("the part after {SECRET_PREFIX} is not standard base64")]
    Base64,
    /// The key is too short or too long.
    #[error("the key is {0} bytes; Standard Webhooks keys are 24 to 64 bytes")]
    Length(usize),
}

/// A decoded webhook secret.
#[derive(Clone)]
pub struct WebhookKey {
    /// HMAC state keyed once; each signature starts from a clone.
    keyed: HmacSha256,
    id: String,
}

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookKey").field("id", &self.id).finish()
    }
}

impl WebhookKey {
    /// Decodes `whsec_<base64>`.
    pub fn parse(secret: &Secret) -> Result<Self, SecretError> {
        let encoded = secret
            .expose()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Prefix)?;
        let key = BASE64.decode(encoded).map_err(|_| SecretError::Base64)?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        let keyed = HmacSha256::new_from_slice(&key).map_err(|_| SecretError::Length(key.len()))?;
        // A name for the key that says which one signed (during a rotation) without revealing it.
        let id = hex::encode(&Sha256::digest(&key)[..4]);
        Ok(Self { keyed, id })
    }

    /// A short public fingerprint of the key (8 hex digits of its SHA-256), for `requested_by`.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of one delivery.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", BASE64.encode(tag))
    }
}

/// Signs one delivery with `secret`: the value of the `webhook-signature` header.
pub fn sign(
    secret: &Secret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, SecretError> {
    Ok(WebhookKey::parse(secret)?.sign(msg_id, timestamp, body))
}

/// The three headers of a freshly signed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`: a new random id.
    pub id: String,
    /// `webhook-timestamp`: now.
    pub timestamp: i64,
    /// `webhook-signature`.
    pub signature: String,
}

impl SignedHeaders {
    /// Signs `body` now under a new random id.
    pub fn new(secret: &Secret, body: &[u8]) -> Result<Self, SecretError> {
        let id = format!("msg_{}", hex::encode(rand::random::<[u8; 16]>()));
        Self::with_id(secret, &id, body)
    }

    /// Signs `body` now under the message id `id` (a sender's retry keeps its id).
    pub fn with_id(secret: &Secret, id: &str, body: &[u8]) -> Result<Self, SecretError> {
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(secret, id, timestamp, body)?;
        Ok(Self {
            id: id.to_string(),
            timestamp,
            signature,
        })
    }

    /// (name, value) pairs to put on the request.
    pub fn pairs(&self) -> [(&'static str, String); 3] {
        [
            (ID_HEADER, self.id.clone()),
            (TIMESTAMP_HEADER, self.timestamp.to_string()),
            (SIGNATURE_HEADER, self.signature.clone()),
        ]
    }
}

/// A new random secret (32 bytes), for `proxflow dev` and for operators setting one up.
pub fn generate_secret() -> Secret {
    Secret::new(format!(
        "{SECRET_PREFIX}{}",
        BASE64.encode(rand::random::<[u8; 32]>())
    ))
}

/// Why a delivery's signature was refused. Logged, never sent back: a caller learns only "401".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// One of the three headers is missing or not text.
    #[error("header {0} missing or not visible ASCII")]
    Header(&'static str),
    /// The id is empty or too long.
    #[error("webhook-id is empty or longer than {MAX_ID_LEN} characters")]
    Id,
    /// The timestamp is not unix seconds.
    #[error("webhook-timestamp is not an integer")]
    Timestamp,
    /// The timestamp is too old or too far ahead.
    #[error("webhook-timestamp is {age}s from now, outside the accepted window")]
    OutsideWindow {
        /// now − timestamp, seconds (negative: in the future).
        age: i64,
    },
    /// No signature matched any key.
    #[error("no v1 signature matches a configured secret")]
    NoMatch,
}

/// A delivery that passed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Its `webhook-id`.
    pub id: String,
    /// Which key signed it ([`WebhookKey::id`]).
    pub key_id: String,
}

/// The raw header values of a delivery, as received.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// `webhook-id`.
    pub id: Option<&'a str>,
    /// `webhook-timestamp`.
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`.
    pub signature: Option<&'a str>,
    /// The raw body.
    pub body: &'a [u8],
}

/// Checks deliveries against the configured keys and the timestamp window.
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Vec<WebhookKey>,
    max_age: i64,
    max_ahead: i64,
}

impl Verifier {
    /// Accepts timestamps up to `tolerance` old. Timestamps in the future are accepted up to
    /// `tolerance` too, but never further than `replay_memory − tolerance`: a delivery must stop
    /// being acceptable (by its timestamp) before the record of its id expires, or it could be
    /// replayed once the record is gone.
    pub fn new(keys: Vec<WebhookKey>, tolerance: Duration, replay_memory: Duration) -> Self {
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let max_age = secs(tolerance);
        let max_ahead = max_age.min(secs(replay_memory).saturating_sub(max_age).max(0));
        Self {
            keys,
            max_age,
            max_ahead,
        }
    }

    /// Whether any key is configured.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks everything about a delivery that its headers alone decide (the three headers, the id,
    /// the timestamp window, a well-formed `v1` signature), so a caller that cannot be authentic is
    /// refused before its body is read. [`Verifier::verify`] then checks the signature itself.
    pub fn check_headers(&self, delivery: Delivery<'_>, now: i64) -> Result<(), VerifyError> {
        let (_, _, candidates) = self.envelope(&delivery, now)?;
        if candidates.is_empty() {
            return Err(VerifyError::NoMatch);
        }
        Ok(())
    }

    /// The id, timestamp and decoded `v1` signatures of a delivery inside the time window.
    fn envelope<'d>(
        &self,
        delivery: &Delivery<'d>,
        now: i64,
    ) -> Result<(&'d str, i64, Vec<Vec<u8>>), VerifyError> {
        let id = delivery.id.ok_or(VerifyError::Header(ID_HEADER))?;
        let timestamp = delivery
            .timestamp
            .ok_or(VerifyError::Header(TIMESTAMP_HEADER))?;
        let signatures = delivery
            .signature
            .ok_or(VerifyError::Header(SIGNATURE_HEADER))?;
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err(VerifyError::Id);
        }
        let timestamp: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::Timestamp)?;
        let age = now.saturating_sub(timestamp);
        if age > self.max_age || -age > self.max_ahead {
            return Err(VerifyError::OutsideWindow { age });
        }
        let candidates: Vec<Vec<u8>> = signatures
            .split_ascii_whitespace()
            .take(MAX_SIGNATURES)
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b64| BASE64.decode(b64).ok())
            .collect();
        Ok((id, timestamp, candidates))
    }

    /// Verifies a delivery at time `now` (unix seconds). Every signature is compared with every key
    /// in constant time (`verify_slice`), so timing tells nothing about how close a forgery came.
    pub fn verify(&self, delivery: Delivery<'_>, now: i64) -> Result<Verified, VerifyError> {
        let (id, timestamp, candidates) = self.envelope(&delivery, now)?;
        for key in &self.keys {
            let mac = key.mac(id, timestamp, delivery.body);
            if candidates
                .iter()
                .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
            {
                return Ok(Verified {
                    id: id.to_owned(),
                    key_id: key.id.clone(),
                });
            }
        }
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const FIVE_MIN: Duration = Duration::from_secs(300);
    const MEMORY: Duration = Duration::from_secs(900);

    fn verifier(secrets: &[&str]) -> Verifier {
        let keys = secrets
            .iter()
            .map(|s| WebhookKey::parse(&Secret::new(*s)).expect("valid"))
            .collect();
        Verifier::new(keys, FIVE_MIN, MEMORY)
    }

    fn delivery<'a>(id: &'a str, ts: &'a str, sig: &'a str, body: &'a [u8]) -> Delivery<'a> {
        Delivery {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
            body,
        }
    }

    #[test]
    fn signs_the_standard_webhooks_reference_vector() {
        // The example of the specification and of every reference library: a receiver using any of
        // them accepts what proxflow signs, and proxflow accepts what they sign.
        let signature = sign(&Secret::new(SECRET), ID, TS, BODY).expect("signs");
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let verified = verifier(&[SECRET])
            .verify(delivery(ID, "1614265330", &signature, BODY), TS)
            .expect("verifies");
        assert_eq!(verified.id, ID);
    }

    #[test]
    fn a_tampered_body_id_or_timestamp_fails() {
        let v = verifier(&[SECRET]);
        let sig = sign(&Secret::new(SECRET), ID, TS, BODY).expect("signs");
        let tampered = br#"{"test": 2432232315}"#;
        assert_eq!(
            v.verify(delivery(ID, "1614265330", &sig, tampered), TS),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            v.verify(delivery("msg_other", "1614265330", &sig, BODY), TS),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            v.verify(delivery(ID, "1614265331", &sig, BODY), TS),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn any_signature_with_any_key_passes() {
        let old = generate_secret();
        let new = generate_secret();
        let v = verifier(&[old.expose(), new.expose()]);
        let with_new = sign(&new, ID, TS, BODY).expect("signs");
        let garbage = "v1,AAAA v1a,xyz v1,not-base64!";
        let header = format!("{garbage} {with_new}");
        let verified = v
            .verify(delivery(ID, "1614265330", &header, BODY), TS)
            .expect("the second key's signature passes");
        assert_eq!(
            verified.key_id,
            WebhookKey::parse(&new).expect("valid").id()
        );
        let stranger = sign(&generate_secret(), ID, TS, BODY).expect("signs");
        assert_eq!(
            v.verify(delivery(ID, "1614265330", &stranger, BODY), TS),
            Err(VerifyError::NoMatch)
        );
    }

    #[test]
    fn the_timestamp_window_is_enforced_both_ways() {
        let v = verifier(&[SECRET]);
        let sig = sign(&Secret::new(SECRET), ID, TS, BODY).expect("signs");
        let at = |now| v.verify(delivery(ID, "1614265330", &sig, BODY), now);
        assert!(at(TS + 300).is_ok());
        assert!(at(TS - 300).is_ok());
        assert_eq!(at(TS + 301), Err(VerifyError::OutsideWindow { age: 301 }));
        assert_eq!(at(TS - 301), Err(VerifyError::OutsideWindow { age: -301 }));
        assert_eq!(
            v.verify(delivery(ID, "soon", &sig, BODY), TS),
            Err(VerifyError::Timestamp)
        );
    }

    #[test]
    fn future_skew_never_outlives_the_replay_record() {
        // A 10-minute tolerance with a 15-minute id record: a delivery stamped 10 minutes ahead
        // would still be fresh when its record expired, so at most 5 minutes ahead are accepted.
        let key = WebhookKey::parse(&Secret::new(SECRET)).expect("valid");
        let v = Verifier::new(vec![key], Duration::from_secs(600), MEMORY);
        let sig = sign(&Secret::new(SECRET), ID, TS, BODY).expect("signs");
        let at = |now| v.verify(delivery(ID, "1614265330", &sig, BODY), now);
        assert!(at(TS + 600).is_ok());
        assert!(at(TS - 300).is_ok());
        assert_eq!(at(TS - 301), Err(VerifyError::OutsideWindow { age: -301 }));
    }

    #[test]
    fn missing_headers_and_bad_secrets_are_named() {
        let v = verifier(&[SECRET]);
        let d = Delivery {
            id: Some(ID),
            timestamp: None,
            signature: Some("v1,x"),
            body: BODY,
        };
        assert_eq!(v.verify(d, TS), Err(VerifyError::Header(TIMESTAMP_HEADER)));
        assert_eq!(
            WebhookKey::parse(&Secret::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).err(),
            Some(SecretError::Prefix)
        );
        assert_eq!(
            WebhookKey::parse(&Secret::new("whsec_???")).err(),
            Some(SecretError::Base64)
        );
        assert_eq!(
            WebhookKey::parse(&Secret::new("whsec_c2hvcnQ=")).err(),
            Some(SecretError::Length(5))
        );
        let generated = generate_secret();
        assert!(generated.expose().starts_with(SECRET_PREFIX));
        assert!(WebhookKey::parse(&generated).is_ok());
    }

    #[test]
    fn fresh_headers_verify_now() {
        let secret = generate_secret();
        let signed = SignedHeaders::new(&secret, BODY).expect("signs");
        let pairs = signed.pairs();
        let v = Verifier::new(
            vec![WebhookKey::parse(&secret).expect("valid")],
            FIVE_MIN,
            MEMORY,
        );
        let d = delivery(&pairs[0].1, &pairs[1].1, &pairs[2].1, BODY);
        assert!(v.verify(d, chrono::Utc::now().timestamp()).is_ok());
        assert_ne!(
            SignedHeaders::new(&secret, BODY).expect("signs").id,
            signed.id,
            "every delivery gets its own id"
        );
    }
}
