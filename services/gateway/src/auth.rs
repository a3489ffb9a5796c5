//! Who is calling: a Standard Webhooks signature, a bearer token, or — only with `require_auth = false`
//! — nobody in particular.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use proxflow_runtime::config::Secret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::webhook::{
    self, Delivery, ID_HEADER, SIGNATURE_HEADER, SecretError, TIMESTAMP_HEADER, Verifier,
    VerifyError, WebhookKey,
};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A delivery signed with a webhook secret.
    Webhook {
        /// Its `webhook-id`.
        id: String,
        /// Fingerprint of the key that signed it.
        key_id: String,
    },
    /// A bearer token, by its configured name.
    Token {
        /// The name under `gateway.bearer_tokens`.
        name: String,
    },
    /// HTTP basic auth, by user (Alertmanager's `basic_auth`).
    Basic {
        /// The user under `gateway.alerts.basic_auth`.
        user: String,
    },
    /// No credentials, accepted because `require_auth` is off.
    Anonymous,
}

impl Caller {
    /// `requested_by` of the request: `webhook:<key id>`, `token:<name>` or `anonymous`.
    pub fn requested_by(&self) -> String {
        match self {
            Self::Webhook { key_id, .. } => format!("webhook:{key_id}"),
            Self::Token { name } => format!("token:{name}"),
            Self::Basic { user } => format!("basic:{user}"),
            Self::Anonymous => "anonymous".into(),
        }
    }

    /// The reference recorded in the workflow's origin: the webhook id or the token name.
    pub fn reference(&self) -> &str {
        match self {
            Self::Webhook { id, .. } => id,
            Self::Token { name } => name,
            Self::Basic { user } => user,
            Self::Anonymous => "anonymous",
        }
    }
}

/// Why a request was not authenticated. Logged; the caller only sees 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials while `require_auth` is on.
    #[error("no credentials")]
    Missing,
    /// A signature that does not verify.
    #[error(transparent)]
    Signature(#[from] VerifyError),
    /// A malformed `Authorization` header or an unknown token.
    #[error("bearer token not accepted")]
    Token,
    /// Webhook signatures are not accepted here (GET has no body to sign).
    #[error("this endpoint takes a bearer token, not a webhook signature")]
    TokenRequired,
}

/// Checks credentials against `[gateway]`.
#[derive(Debug, Clone)]
pub struct Authenticator {
    verifier: Verifier,
    /// (name, SHA-256 of the token): digests are compared, so the comparison takes the same time
    /// whatever the length of the presented token.
    tokens: Vec<(String, [u8; 32])>,
    /// (user, SHA-256 of the password), compared the same way.
    basic: Vec<(String, [u8; 32])>,
    require: bool,
}

impl Authenticator {
    /// From the configured secrets and tokens; `replay_memory` is how long accepted webhook ids are
    /// remembered (see [`Verifier::new`]).
    pub fn new(
        secrets: &[Secret],
        tokens: &BTreeMap<String, Secret>,
        tolerance: Duration,
        replay_memory: Duration,
        require: bool,
    ) -> Result<Self, SecretError> {
        let keys = secrets
            .iter()
            .map(WebhookKey::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            verifier: Verifier::new(keys, tolerance, replay_memory),
            tokens: tokens
                .iter()
                .map(|(name, token)| (name.clone(), digest(token.expose())))
                .collect(),
            basic: Vec::new(),
            require,
        })
    }

    /// Adds the basic-auth users of the Alertmanager endpoint.
    pub fn with_basic(mut self, users: &BTreeMap<String, Secret>) -> Self {
        self.basic = users
            .iter()
            .map(|(user, password)| (user.clone(), digest(password.expose())))
            .collect();
        self
    }

    /// The Alertmanager endpoint: a bearer token or basic auth (Alertmanager cannot sign).
    pub fn alertmanager(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Basic ")
                    .or_else(|| v.strip_prefix("basic "))
            });
        let Some(encoded) = basic else {
            return self.bearer(headers);
        };
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(AuthError::Token)?;
        let (user, password) = decoded.split_once(':').ok_or(AuthError::Token)?;
        let presented = digest(password);
        let mut matched = false;
        for (name, expected) in &self.basic {
            // Both compared every time: the timing says neither which user nor whether it exists.
            let same_user = name.as_bytes().ct_eq(user.as_bytes());
            let same_password = presented.ct_eq(expected);
            if bool::from(same_user & same_password) {
                matched = true;
            }
        }
        if matched {
            Ok(Caller::Basic {
                user: user.to_string(),
            })
        } else {
            Err(AuthError::Token)
        }
    }

    /// What a `POST`'s headers alone decide, before its body is read: a bearer token is checked in
    /// full, a webhook delivery as far as its headers go ([`webhook::Verifier::check_headers`]).
    /// Nobody without plausible credentials gets a body read (or memory held) on their behalf.
    pub fn before_body(&self, headers: &HeaderMap, now: i64) -> Result<(), AuthError> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signed = [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER]
            .iter()
            .any(|h| headers.contains_key(*h));
        if signed {
            return Ok(self.verifier.check_headers(
                Delivery {
                    id: text(ID_HEADER),
                    timestamp: text(TIMESTAMP_HEADER),
                    signature: text(SIGNATURE_HEADER),
                    body: &[],
                },
                now,
            )?);
        }
        self.bearer(headers).map(drop)
    }

    /// A request with a body (`POST`): a webhook signature or a bearer token.
    pub fn signed(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<Caller, AuthError> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signed = [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER]
            .iter()
            .any(|h| headers.contains_key(*h));
        if signed {
            let verified = self.verifier.verify(
                Delivery {
                    id: text(ID_HEADER),
                    timestamp: text(TIMESTAMP_HEADER),
                    signature: text(SIGNATURE_HEADER),
                    body,
                },
                now,
            )?;
            return Ok(Caller::Webhook {
                id: verified.id,
                key_id: verified.key_id,
            });
        }
        self.bearer(headers)
    }

    /// A request without a body (`GET`): a bearer token only.
    pub fn read(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        if headers.contains_key(webhook::SIGNATURE_HEADER) && self.require {
            return Err(AuthError::TokenRequired);
        }
        self.bearer(headers)
    }

    /// The configured name of a bearer token presented on its own (the console's login form).
    pub fn token_name(&self, token: &str) -> Option<String> {
        self.match_token(token.trim())
            .ok()
            .map(|caller| caller.reference().to_owned())
    }

    /// Each bearer token's name and digest: what the console keys its sessions with, so a session
    /// ends when its token is removed.
    pub(crate) fn token_digests(&self) -> impl Iterator<Item = (&str, &[u8; 32])> {
        self.tokens
            .iter()
            .map(|(name, digest)| (name.as_str(), digest))
    }

    fn bearer(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return if self.require {
                Err(AuthError::Missing)
            } else {
                Ok(Caller::Anonymous)
            };
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(AuthError::Token)?;
        self.match_token(token)
    }

    fn match_token(&self, token: &str) -> Result<Caller, AuthError> {
        let presented = digest(token);
        // Every configured token is compared, so the time taken does not say which one matched.
        let mut matched = None;
        for (name, expected) in &self.tokens {
            if bool::from(presented.ct_eq(expected)) {
                matched = Some(name);
            }
        }
        matched
            .map(|name| Caller::Token { name: name.clone() })
            .ok_or(AuthError::Token)
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::webhook::{SignedHeaders, generate_secret};

    const TOLERANCE: Duration = Duration::from_secs(300);
    const MEMORY: Duration = Duration::from_secs(900);

    fn auth(secret: &Secret, require: bool) -> Authenticator {
        let tokens = BTreeMap::from([
            ("ci".to_owned(), Secret::new("ci-token-0123456789")),
            ("ops".to_owned(), Secret::new("ops-token-0123456789")),
        ]);
        Authenticator::new(
            std::slice::from_ref(secret),
            &tokens,
            TOLERANCE,
            MEMORY,
            require,
        )
        .expect("valid")
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).expect("ascii"));
        }
        h
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn webhook_signatures_and_tokens_identify_the_caller() {
        let secret = generate_secret();
        let a = auth(&secret, true);
        let signed = SignedHeaders::new(&secret, b"{}").expect("signs");
        let caller = a
            .signed(&headers(&signed.pairs()), b"{}", now())
            .expect("signed");
        assert_eq!(caller.reference(), signed.id);
        assert!(caller.requested_by().starts_with("webhook:"));

        let bearer = headers(&[("authorization", "Bearer ops-token-0123456789".into())]);
        let caller = a.signed(&bearer, b"{}", now()).expect("token");
        assert_eq!(caller, Caller::Token { name: "ops".into() });
        assert_eq!(caller.requested_by(), "token:ops");
        assert_eq!(a.read(&bearer), Ok(caller));
    }

    #[test]
    fn wrong_or_missing_credentials_are_refused() {
        let secret = generate_secret();
        let a = auth(&secret, true);
        let signed = SignedHeaders::new(&secret, b"{}").expect("signs");
        assert_eq!(
            a.signed(&headers(&signed.pairs()), b"{ }", now()),
            Err(AuthError::Signature(VerifyError::NoMatch))
        );
        let wrong = headers(&[("authorization", "Bearer ci-token-012345678".into())]);
        assert_eq!(a.signed(&wrong, b"{}", now()), Err(AuthError::Token));
        let basic = headers(&[("authorization", "Basic Y2k6eA==".into())]);
        assert_eq!(a.read(&basic), Err(AuthError::Token));
        assert_eq!(a.read(&HeaderMap::new()), Err(AuthError::Missing));
        assert_eq!(
            a.read(&headers(&signed.pairs())),
            Err(AuthError::TokenRequired)
        );
    }

    #[test]
    fn without_require_auth_anonymous_calls_pass_but_bad_credentials_do_not() {
        let secret = generate_secret();
        let a = auth(&secret, false);
        assert_eq!(a.read(&HeaderMap::new()), Ok(Caller::Anonymous));
        assert_eq!(
            a.signed(&HeaderMap::new(), b"{}", now()),
            Ok(Caller::Anonymous)
        );
        let wrong = headers(&[("authorization", "Bearer nope".into())]);
        assert_eq!(a.read(&wrong), Err(AuthError::Token));
    }
}
