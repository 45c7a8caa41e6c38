//! Signing in to the web UI: a session cookie, and the CSRF token that goes with it.
//!
//! The cookie (`fungible_session`, HttpOnly, SameSite=Strict; over TLS `Secure` and named
//! `__Host-fungible_session`, kept to this exact host) holds who
//! signed in — the admin key (by a fingerprint: an HMAC of it, so a new admin key ends its
//! sessions), or the SHA-256 of a virtual key, never a key itself — when the session ends and
//! a random nonce, signed with HMAC-SHA256. Nothing is kept on the server, so a session works
//! on every instance that shares the secret (`[ui] secret_env`); without one, the secret is
//! random per process (sessions end with it). It is never derived from the admin key: a
//! cookie or a CSRF token would then let whoever holds one guess the admin key offline. A
//! virtual key's session is checked against the key on every request (a revoked or expired
//! key ends it at once). Signing out forgets the nonce on this instance until the session
//! would have ended.
//!
//! Every state change a session makes (any method but GET and HEAD) must carry the session's
//! CSRF token in `x-fungible-csrf`: an HMAC of the nonce, which the pages put in a `<meta>`
//! tag for their script. The auth middleware checks it on every route, so the JSON API the
//! pages call is protected the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const COOKIE: &str = "fungible_session";
/// Its name over TLS: browsers keep a `__Host-` cookie to this exact host (no domain), and
/// only set it from a secure origin.
pub const SECURE_COOKIE: &str = "__Host-fungible_session";
/// The header a session's state changes carry their CSRF token in.
pub const CSRF_HEADER: &str = "x-fungible-csrf";
/// Signed-out nonces kept at most (the oldest are dropped first once expired).
const MAX_SIGNED_OUT: usize = 100_000;

type HmacSha256 = Hmac<Sha256>;

/// Who a session signed in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// The admin key, by its fingerprint ([`Sessions::admin_fingerprint`]).
    Admin { fingerprint: String },
    /// A virtual key, by the SHA-256 (hex) the store keeps of it.
    Key { hash: String },
}

/// A valid session, read from its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub who: Who,
    pub expires_ms: i64,
    nonce: String,
}

/// Issues and checks sessions (cheap to clone).
#[derive(Clone)]
pub struct Sessions {
    key: Arc<[u8; 32]>,
    lifetime: Duration,
    secure_always: bool,
    signed_out: Arc<Mutex<HashMap<String, i64>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

impl Default for Sessions {
    /// A random secret, 12-hour sessions.
    fn default() -> Sessions {
        Sessions::new(None, Duration::from_secs(12 * 3600), false)
    }
}

impl Sessions {
    /// Signs with `secret` (`[ui] secret_env`), else with a random key (sessions last as long
    /// as the process, and only its own are valid).
    pub fn new(secret: Option<&str>, lifetime: Duration, secure_always: bool) -> Sessions {
        let key: [u8; 32] = match secret {
            Some(secret) => Sha256::new().chain_update(b"fungible-ui-secret\0").chain_update(secret).finalize().into(),
            None => {
                let mut bytes = [0u8; 32];
                rand::fill(&mut bytes[..]);
                bytes
            }
        };
        Sessions { key: Arc::new(key), lifetime, secure_always, signed_out: Arc::default() }
    }

    /// What an admin session holds of the admin key: an HMAC of it under the session secret
    /// (so it tells nothing without the secret), compared again on every request.
    pub fn admin_fingerprint(&self, admin_key: &str) -> String {
        URL_SAFE_NO_PAD.encode(&self.mac(&[b"admin", admin_key.as_bytes()]).finalize().into_bytes()[..16])
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        // An HMAC takes a key of any length.
        let mut mac = HmacSha256::new_from_slice(&self.key[..]).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        for part in parts {
            mac.update(part);
            mac.update(b"\0");
        }
        mac
    }

    /// A new session for `who` from `now_ms`, and its cookie's value.
    pub fn issue(&self, who: Who, now_ms: i64) -> (String, Session) {
        let mut nonce = [0u8; 16];
        rand::fill(&mut nonce[..]);
        let session = Session {
            who,
            expires_ms: now_ms.saturating_add(self.lifetime.as_millis() as i64),
            nonce: URL_SAFE_NO_PAD.encode(nonce),
        };
        let payload = match &session.who {
            Who::Admin { fingerprint } => format!("1|a|{fingerprint}|{}|{}", session.expires_ms, session.nonce),
            Who::Key { hash } => format!("1|k|{hash}|{}|{}", session.expires_ms, session.nonce),
        };
        let tag = self.mac(&[b"session", payload.as_bytes()]).finalize().into_bytes();
        (format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(tag)), session)
    }

    /// The session a cookie value holds, if its signature is ours, it has not ended and it
    /// was not signed out.
    pub fn verify(&self, value: &str, now_ms: i64) -> Option<Session> {
        let (payload, tag) = value.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // Constant time.
        self.mac(&[b"session", &payload]).verify_slice(&tag).ok()?;
        let payload = String::from_utf8(payload).ok()?;
        let mut parts = payload.split('|');
        let (version, kind, hash, expires, nonce) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "1" || parts.next().is_some() {
            return None;
        }
        let who = match kind {
            "a" if !hash.is_empty() => Who::Admin { fingerprint: hash.to_owned() },
            "k" if !hash.is_empty() => Who::Key { hash: hash.to_owned() },
            _ => return None,
        };
        let expires_ms: i64 = expires.parse().ok()?;
        if expires_ms <= now_ms {
            return None;
        }
        if self.signed_out.lock().unwrap_or_else(|e| e.into_inner()).contains_key(nonce) {
            return None;
        }
        Some(Session { who, expires_ms, nonce: nonce.to_owned() })
    }

    /// The session found in `headers`' cookies, if one is valid.
    pub fn from_headers(&self, headers: &HeaderMap, now_ms: i64) -> Option<Session> {
        // Over TLS only the `__Host-` name: a sibling domain can set the plain one.
        let name = if self.secure(headers) { SECURE_COOKIE } else { COOKIE };
        cookie_values(headers, name).find_map(|value| self.verify(value, now_ms))
    }

    /// The CSRF token of `session`.
    pub fn csrf_token(&self, session: &Session) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&[b"csrf", session.nonce.as_bytes()]).finalize().into_bytes())
    }

    /// Whether `headers` carry `session`'s CSRF token (compared in constant time).
    pub fn csrf_ok(&self, session: &Session, headers: &HeaderMap) -> bool {
        let Some(presented) = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Ok(presented) = URL_SAFE_NO_PAD.decode(presented.trim()) else {
            return false;
        };
        self.mac(&[b"csrf", session.nonce.as_bytes()]).verify_slice(&presented).is_ok()
    }

    /// Ends `session` on this instance. The list is bounded: when it is full of sessions
    /// still running, the one that would end first is forgotten (and works again until it
    /// ends).
    pub fn sign_out(&self, session: &Session, now_ms: i64) {
        let mut signed_out = self.signed_out.lock().unwrap_or_else(|e| e.into_inner());
        if signed_out.len() >= MAX_SIGNED_OUT {
            signed_out.retain(|_, expires| *expires > now_ms);
        }
        if signed_out.len() >= MAX_SIGNED_OUT
            && let Some(first) = signed_out.iter().min_by_key(|(_, expires)| **expires).map(|(nonce, _)| nonce.clone())
        {
            signed_out.remove(&first);
        }
        signed_out.insert(session.nonce.clone(), session.expires_ms);
    }

    /// Whether cookies set in answer to `headers` should be `Secure`.
    fn secure(&self, headers: &HeaderMap) -> bool {
        self.secure_always
            || headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
    }

    /// The `Set-Cookie` that starts a session.
    pub fn set_cookie(&self, value: &str, request: &HeaderMap) -> HeaderValue {
        let (name, secure) = if self.secure(request) { (SECURE_COOKIE, "; Secure") } else { (COOKIE, "") };
        let text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", self.lifetime.as_secs());
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("fungible_session=; Max-Age=0"))
    }

    /// The `Set-Cookie`s that end a session in the browser, under both names (a gateway put
    /// behind TLS later leaves plain-name cookies behind).
    pub fn clear_cookies(&self) -> [HeaderValue; 2] {
        [
            HeaderValue::from_static("__Host-fungible_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure"),
            HeaderValue::from_static("fungible_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        ]
    }
}

/// The values of the cookies named `name` in `headers`.
fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v.trim())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(Some("a-test-secret-that-is-long-enough-for-ui"), Duration::from_secs(3600), false)
    }

    fn admin(s: &Sessions) -> Who {
        Who::Admin { fingerprint: s.admin_fingerprint("admin-key-0123456789") }
    }

    #[test]
    fn a_session_verifies_until_it_ends() {
        let s = sessions();
        let (cookie, session) = s.issue(Who::Key { hash: "ab".repeat(32) }, 1_000);
        assert_eq!(s.verify(&cookie, 2_000), Some(session.clone()));
        assert_eq!(s.verify(&cookie, session.expires_ms), None);
    }

    #[test]
    fn a_tampered_or_foreign_cookie_is_refused() {
        let s = sessions();
        let (cookie, _) = s.issue(Who::Key { hash: "ab".repeat(32) }, 1_000);
        let (payload, tag) = cookie.split_once('.').unwrap_or_default();
        // Turn the key session into an admin one, keeping the signature.
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap_or_default()).unwrap_or_default();
        let forged = text.replacen("|k|", "|a|", 1);
        assert_eq!(s.verify(&format!("{}.{tag}", URL_SAFE_NO_PAD.encode(forged)), 2_000), None);
        let other = Sessions::new(Some("another-secret-that-is-long-enough-for-ui"), Duration::from_secs(3600), false);
        assert_eq!(other.verify(&cookie, 2_000), None);
        assert_eq!(s.verify("garbage", 2_000), None);
        assert_eq!(s.verify("", 2_000), None);
    }

    #[test]
    fn instances_share_sessions_through_the_secret_only() {
        let a = Sessions::new(Some("a-shared-secret-that-is-long-enough-0"), Duration::from_secs(60), false);
        let b = Sessions::new(Some("a-shared-secret-that-is-long-enough-0"), Duration::from_secs(60), false);
        let (cookie, _) = a.issue(admin(&a), 0);
        assert!(b.verify(&cookie, 1).is_some());
        // Without a secret, each process has its own.
        let (c, d) = (Sessions::default(), Sessions::default());
        let (cookie, _) = c.issue(admin(&c), 0);
        assert!(c.verify(&cookie, 1).is_some() && d.verify(&cookie, 1).is_none());
        // The fingerprint follows the admin key, and means nothing under another secret.
        assert_ne!(a.admin_fingerprint("admin-key-0123456789"), a.admin_fingerprint("another-admin-key-0"));
        assert_ne!(a.admin_fingerprint("admin-key-0123456789"), c.admin_fingerprint("admin-key-0123456789"));
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let s = sessions();
        let (_, one) = s.issue(admin(&s), 0);
        let (_, two) = s.issue(admin(&s), 0);
        let mut headers = HeaderMap::new();
        assert!(!s.csrf_ok(&one, &headers));
        headers.insert(CSRF_HEADER, HeaderValue::from_str(&s.csrf_token(&one)).unwrap_or(HeaderValue::from_static("x")));
        assert!(s.csrf_ok(&one, &headers));
        assert!(!s.csrf_ok(&two, &headers));
    }

    #[test]
    fn a_signed_out_session_is_refused() {
        let s = sessions();
        let (cookie, session) = s.issue(admin(&s), 0);
        s.sign_out(&session, 1);
        assert_eq!(s.verify(&cookie, 2), None);
    }

    #[test]
    fn a_full_sign_out_list_still_records_the_newest() {
        let s = sessions();
        let (_, first) = s.issue(admin(&s), 0);
        s.sign_out(&first, 1);
        for i in 1..MAX_SIGNED_OUT {
            let (_, session) = s.issue(admin(&s), i as i64);
            s.sign_out(&session, 1);
        }
        let (cookie, last) = s.issue(admin(&s), 1_000_000);
        s.sign_out(&last, 1);
        assert_eq!(s.verify(&cookie, 2), None, "the newest sign-out is kept");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let s = sessions();
        let (cookie, session) = s.issue(admin(&s), 0);
        let mut headers = HeaderMap::new();
        let text = format!("theme=dark; {COOKIE}=bogus; {COOKIE}={cookie}");
        headers.insert(header::COOKIE, HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("x")));
        assert_eq!(s.from_headers(&headers, 1), Some(session));
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let s = sessions();
        let value = s.set_cookie("v", &HeaderMap::new());
        let text = value.to_str().unwrap_or_default();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict") && !text.contains("Secure"), "{text}");
        let mut tls = HeaderMap::new();
        tls.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let secure = s.set_cookie("v", &tls);
        let secure = secure.to_str().unwrap_or_default();
        assert!(secure.starts_with("__Host-fungible_session=v;") && secure.ends_with("; Secure"), "{secure}");
        // Read back under either name.
        let (cookie, session) = s.issue(admin(&s), 0);
        let mut headers = tls.clone();
        headers.insert(header::COOKIE, HeaderValue::from_str(&format!("{SECURE_COOKIE}={cookie}")).unwrap_or(HeaderValue::from_static("x")));
        assert_eq!(s.from_headers(&headers, 1), Some(session));
        // Over TLS the plain name (which a sibling domain could set) is not read.
        headers.insert(header::COOKIE, HeaderValue::from_str(&format!("{COOKIE}={cookie}")).unwrap_or(HeaderValue::from_static("x")));
        assert_eq!(s.from_headers(&headers, 1), None);
        let cleared: Vec<String> = s.clear_cookies().iter().map(|v| v.to_str().unwrap_or_default().to_owned()).collect();
        assert!(cleared[0].starts_with("__Host-fungible_session=;") && cleared[1].starts_with("fungible_session=;"));
    }
}
