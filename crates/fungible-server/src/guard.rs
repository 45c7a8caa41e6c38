//! Refusing what a web page can make its visitor's browser send to the gateway.
//!
//! With `[auth] enabled = false` (the default) whoever reaches the port may use the gateway,
//! and any web page can reach `localhost` through the browser of whoever opens it:
//!
//! - **DNS rebinding.** A page on `evil.example` points its own name at 127.0.0.1 and then
//!   calls the gateway as its own origin; the browser still sends `Host: evil.example`. With
//!   auth off, only loopback names (`localhost`, 127.0.0.0/8, `[::1]`, any port) and
//!   `[server] allowed_hosts` (exact names or `*` globs) are served; any other `Host` is a 403.
//! - **Cross-site requests.** A page may POST to `http://localhost:4000` with no CORS
//!   preflight when the body is `text/plain`, a form or multipart, and the browser sends its
//!   `Origin`. With auth off an `Origin` whose host is not allowed as above (or `null`) is a
//!   403, and on every route a body in one of those three media types is a 415: no route
//!   takes them, and SDKs send `application/json`.
//!
//! `/health` skips the host checks: it tells nothing, and load balancers probe it by address.
//! A request with no `Host` at all is not a browser's (HTTP/1.0 tools, in-process tests) and
//! is served. With auth on the keys protect every route, so any `Host` or `Origin` is served.
//! No route sends CORS headers, so no page on another origin can read an answer.
//!
//! [`layer`] is the outermost middleware: a refused request reaches nothing else, and the
//! refusal is in the inbound API's own error shape.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;
use crate::error::ApiError;

/// `[server] allowed_hosts`: the names served with auth off besides the loopback ones.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(Arc<[String]>);

impl AllowedHosts {
    /// `patterns`: host names without port, `*` matching any run of characters.
    pub fn new(patterns: Vec<String>) -> AllowedHosts {
        AllowedHosts(patterns.into_iter().map(|p| p.to_ascii_lowercase()).collect())
    }

    /// Whether `host` (a name, an IPv4 address or a bracketed IPv6 one, without port) is served.
    fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        // `localhost.` is the same name, fully qualified.
        let host = host.strip_suffix('.').unwrap_or(&host);
        is_loopback(host) || self.0.iter().any(|pattern| fungible_access::glob_matches(pattern, host))
    }
}

/// Middleware: see the module docs.
pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match check(&request, state.auth.enabled, &state.allowed_hosts) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response_for(crate::auth::format_of(request.uri().path())),
    }
}

fn check(request: &Request, auth_enabled: bool, allowed: &AllowedHosts) -> Result<(), ApiError> {
    let reads_no_body = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !reads_no_body && let Some(media_type) = browser_form_type(request.headers()) {
        return Err(ApiError::unsupported_media_type(format!(
            "Content-Type {media_type} is not accepted: send the request body as application/json"
        )));
    }
    if auth_enabled || request.uri().path() == "/health" {
        return Ok(());
    }
    let hosts = request.headers().get_all(header::HOST).iter().map(|v| v.to_str().unwrap_or("\u{fffd}"));
    for authority in hosts.chain(request.uri().authority().map(|a| a.as_str())) {
        if !allowed.allows(host_of(authority)) {
            return Err(ApiError::forbidden(format!(
                "host {authority:?} is not served: with [auth] off, only loopback names (localhost, 127.0.0.1, [::1]) and [server] allowed_hosts are"
            )));
        }
    }
    for origin in request.headers().get_all(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("\u{fffd}");
        let allowed = origin
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
            .is_some_and(|authority| allowed.allows(host_of(authority)));
        if !allowed {
            return Err(ApiError::forbidden(format!(
                "origin {origin:?} may not call this gateway: with [auth] off, only pages on loopback names and [server] allowed_hosts may"
            )));
        }
    }
    Ok(())
}

/// The request's media type when it is one a browser sends cross-site without asking first.
fn browser_form_type(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::CONTENT_TYPE).iter().find_map(|value| {
        let text = String::from_utf8_lossy(value.as_bytes());
        let media_type = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        matches!(media_type.as_str(), "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data")
            .then_some(media_type)
    })
}

/// The host of an authority (`host`, `host:port`, `[v6]:port`), without port. Anything else
/// (user info, say, which no browser sends) stays in and matches no allowed name.
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn is_loopback(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
    }
    host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_served_with_auth_off() {
        let allowed = AllowedHosts::new(vec!["gateway.internal".into(), "*.corp.example".into()]);
        let cases = [
            ("localhost", true),
            ("localhost:8080", true),
            ("LOCALHOST.:4000", true),
            ("127.0.0.1", true),
            ("127.0.0.1:4000", true),
            ("127.8.9.10:4000", true),
            ("[::1]", true),
            ("[::1]:4000", true),
            ("[::ffff:127.0.0.1]:4000", true),
            ("gateway.internal:4000", true),
            ("Gateway.Internal", true),
            ("a.corp.example", true),
            ("evil.example", false),
            ("localhost.evil.example", false),
            ("evil.example:80@localhost", false),
            ("user@localhost", false),
            ("127.0.0.1.evil.example", false),
            ("10.0.0.5:4000", false),
            ("[fd00::1]:4000", false),
            ("[::1", false),
            ("", false),
            ("gateway.internal.evil.example", false),
            ("corp.example", false),
        ];
        for (authority, served) in cases {
            assert_eq!(allowed.allows(host_of(authority)), served, "{authority:?}");
        }
    }

    #[test]
    fn browser_form_types_are_named() {
        let of = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            browser_form_type(&headers)
        };
        assert_eq!(of("text/plain;charset=UTF-8").as_deref(), Some("text/plain"));
        assert_eq!(of("Application/X-WWW-Form-Urlencoded").as_deref(), Some("application/x-www-form-urlencoded"));
        assert_eq!(of("multipart/form-data; boundary=x").as_deref(), Some("multipart/form-data"));
        assert_eq!(of("application/json"), None);
        assert_eq!(of("application/json; charset=utf-8"), None);
        assert_eq!(browser_form_type(&HeaderMap::new()), None);
    }
}
