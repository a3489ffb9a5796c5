//! Console sessions without server-side state: a bearer token, presented once on the login form,
//! becomes a cookie `pf_session=<name>.<expiry>.<nonce>.<mac>` whose MAC is keyed by that token's
//! digest. So a session outlives a gateway restart and works on every replica with the same
//! configuration, holds no memory per login, and dies with its token: remove the token from
//! `gateway.bearer_tokens` and every session made with it stops verifying.
//!
//! The CSRF token of a session is another MAC over its nonce; every console `POST` carries it as a
//! form field. The login form, which has no session yet, uses a double-submit cookie instead.

use axum::http::{HeaderMap, HeaderValue, header};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::auth::Authenticator;

/// The session cookie.
pub const SESSION_COOKIE: &str = "pf_session";
/// The login form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "pf_login";
/// How long a session lasts: a working day.
pub const SESSION_SECS: i64 = 8 * 3600;
/// How long a login form stays usable.
const LOGIN_FORM_SECS: i64 = 15 * 60;
/// A cookie longer than this is not looked at.
const MAX_COOKIE: usize = 512;

/// A verified session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The bearer token's configured name: who is logged in.
    pub name: String,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
    /// What every `POST` of this session must carry.
    pub csrf: String,
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &HmacSha256, parts: &[&str]) -> String {
    let mut mac = key.clone();
    for part in parts {
        mac.update(part.as_bytes());
        mac.update(b"|");
    }
    hex::encode(mac.finalize().into_bytes())
}

fn nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The value of cookie `name` in the request, if present and of sane size.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| v.len() <= MAX_COOKIE)
}

/// The `Set-Cookie` attributes every console cookie gets. `Secure` when the gateway is reached
/// over https (its `public_url`), so a plain-http local setup still works.
fn attributes(secure: bool, max_age: i64) -> String {
    format!(
        "Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Makes and checks sessions against the configured tokens.
#[derive(Debug, Clone)]
pub struct Sessions {
    auth: Authenticator,
    /// Per token name, the MAC keyed by that token's digest.
    keys: Vec<(String, HmacSha256)>,
    secure: bool,
}

impl Sessions {
    /// Sessions of `auth`'s bearer tokens; `secure` marks the cookies `Secure`.
    pub fn new(auth: Authenticator, secure: bool) -> Self {
        let keys = auth
            .token_digests()
            // HMAC takes a key of any length: a 32-byte digest is never refused.
            .filter_map(|(name, digest)| {
                HmacSha256::new_from_slice(digest)
                    .ok()
                    .map(|k| (name.to_owned(), k))
            })
            .collect();
        Self { auth, keys, secure }
    }

    fn key(&self, name: &str) -> Option<&HmacSha256> {
        self.keys.iter().find(|(n, _)| n == name).map(|(_, k)| k)
    }

    /// Logs in with a bearer token: the session and its `Set-Cookie`. `None` for a token that is
    /// not configured.
    pub fn login(&self, token: &str, now: DateTime<Utc>) -> Option<(Session, HeaderValue)> {
        let name = self.auth.token_name(token)?;
        let key = self.key(&name)?;
        // Whole seconds: what the cookie carries is what the session says.
        let expires_at = DateTime::from_timestamp(now.timestamp() + SESSION_SECS, 0)?;
        let expiry = expires_at.timestamp().to_string();
        let nonce = nonce();
        let tag = mac(key, &["session", &name, &expiry, &nonce]);
        let value = format!(
            "{SESSION_COOKIE}={name}.{expiry}.{nonce}.{tag}; {}",
            attributes(self.secure, SESSION_SECS)
        );
        let header = HeaderValue::from_str(&value).ok()?;
        let csrf = mac(key, &["csrf", &nonce]);
        Some((
            Session {
                name,
                expires_at,
                csrf,
            },
            header,
        ))
    }

    /// The session of a request, if its cookie verifies and has not expired.
    pub fn check(&self, headers: &HeaderMap, now: DateTime<Utc>) -> Option<Session> {
        let value = cookie(headers, SESSION_COOKIE)?;
        let mut parts = value.rsplitn(4, '.');
        let (tag, nonce, expiry, name) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let key = self.key(name)?;
        let expected = mac(key, &["session", name, expiry, nonce]);
        if !bool::from(expected.as_bytes().ct_eq(tag.as_bytes())) {
            return None;
        }
        let expires_at = DateTime::from_timestamp(expiry.parse().ok()?, 0)?;
        if expires_at <= now {
            return None;
        }
        Some(Session {
            name: name.to_owned(),
            expires_at,
            csrf: mac(key, &["csrf", nonce]),
        })
    }

    /// A `Set-Cookie` that ends the session in the browser.
    pub fn logout(&self) -> HeaderValue {
        HeaderValue::from_str(&format!(
            "{SESSION_COOKIE}=; {}",
            attributes(self.secure, 0)
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("pf_session=; Path=/ui; Max-Age=0"))
    }

    /// A fresh login form token and its cookie.
    pub fn login_form(&self) -> (String, HeaderValue) {
        let token = nonce();
        let value = format!(
            "{LOGIN_COOKIE}={token}; {}",
            attributes(self.secure, LOGIN_FORM_SECS)
        );
        let header = HeaderValue::from_str(&value)
            .unwrap_or_else(|_| HeaderValue::from_static("pf_login=; Path=/ui; Max-Age=0"));
        (token, header)
    }

    /// Whether a login form's field matches its cookie (double submit).
    pub fn login_form_ok(headers: &HeaderMap, field: &str) -> bool {
        cookie(headers, LOGIN_COOKIE).is_some_and(|c| {
            !c.is_empty()
                && c.len() == field.len()
                && bool::from(c.as_bytes().ct_eq(field.as_bytes()))
        })
    }
}

/// Whether a form's CSRF field is the session's.
pub fn csrf_ok(session: &Session, field: &str) -> bool {
    session.csrf.len() == field.len() && bool::from(session.csrf.as_bytes().ct_eq(field.as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use proxflow_runtime::config::Secret;

    use super::*;

    fn sessions(tokens: &[(&str, &str)]) -> Sessions {
        let tokens: BTreeMap<String, Secret> = tokens
            .iter()
            .map(|(n, t)| ((*n).to_owned(), Secret::new(*t)))
            .collect();
        let auth = Authenticator::new(
            &[],
            &tokens,
            Duration::from_secs(300),
            Duration::from_secs(900),
            true,
        )
        .expect("auth");
        Sessions::new(auth, false)
    }

    fn request_with(set_cookie: &HeaderValue) -> HeaderMap {
        let pair = set_cookie
            .to_str()
            .expect("ascii")
            .split(';')
            .next()
            .expect("pair")
            .to_owned();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&pair).expect("value"));
        h
    }

    #[test]
    fn a_session_verifies_until_it_expires_and_carries_its_csrf_token() {
        let s = sessions(&[("ops", "ops-token-0123456789")]);
        let now = Utc::now();
        assert!(s.login("wrong-token", now).is_none());
        let (made, cookie) = s.login("ops-token-0123456789", now).expect("login");
        let attrs = cookie.to_str().expect("ascii");
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
            assert!(attrs.contains(attr), "{attrs}");
        }
        assert!(
            !attrs.contains("ops-token"),
            "the token itself never goes in the cookie"
        );
        let headers = request_with(&cookie);
        let checked = s.check(&headers, now).expect("verifies");
        assert_eq!(checked, made);
        assert!(csrf_ok(&checked, &made.csrf));
        assert!(!csrf_ok(&checked, "0".repeat(64).as_str()));
        let later = now + chrono::Duration::seconds(SESSION_SECS + 1);
        assert!(s.check(&headers, later).is_none());
    }

    #[test]
    fn a_forged_or_revoked_session_does_not_verify() {
        let s = sessions(&[
            ("ops", "ops-token-0123456789"),
            ("ci", "ci-token-0123456789"),
        ]);
        let now = Utc::now();
        let (_, cookie) = s.login("ci-token-0123456789", now).expect("login");
        let pair = cookie
            .to_str()
            .expect("ascii")
            .split(';')
            .next()
            .expect("pair");
        // Claiming another name with ci's MAC.
        let forged = pair.replacen("pf_session=ci.", "pf_session=ops.", 1);
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&forged).expect("value"),
        );
        assert!(s.check(&h, now).is_none());
        // A later expiry with the old MAC.
        let parts: Vec<&str> = pair.trim_start_matches("pf_session=").split('.').collect();
        let extended = format!(
            "pf_session={}.{}.{}.{}",
            parts[0],
            parts[1].parse::<i64>().expect("expiry") + 3600,
            parts[2],
            parts[3]
        );
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&extended).expect("value"),
        );
        assert!(s.check(&h, now).is_none());
        // The token is removed from the configuration: its sessions end.
        let without_ci = sessions(&[("ops", "ops-token-0123456789")]);
        assert!(without_ci.check(&request_with(&cookie), now).is_none());
    }

    #[test]
    fn the_login_form_needs_its_cookie_and_field_to_match() {
        let s = sessions(&[("ops", "ops-token-0123456789")]);
        let (token, cookie) = s.login_form();
        let headers = request_with(&cookie);
        assert!(Sessions::login_form_ok(&headers, &token));
        assert!(!Sessions::login_form_ok(&headers, "something-else"));
        assert!(!Sessions::login_form_ok(&HeaderMap::new(), &token));
        assert!(!Sessions::login_form_ok(&HeaderMap::new(), ""));
    }
}
