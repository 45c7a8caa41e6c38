//! Virtual keys on the request path: who is calling ([`layer`]), and whether their key's
//! model allowance, rate limits and budget admit a chat ([`admit`]), settled with the real
//! usage and cost once the answer is known ([`Ticket`]).
//!
//! [`layer`] is the outermost middleware. With `[auth] enabled`, every route but the open
//! ones (`[auth] open_routes`, default `/health` and `/openapi.json`) needs a key, taken from
//! whichever header the client's API uses: `Authorization: Bearer`, `x-api-key`,
//! `x-goog-api-key`, or `?key=`. A valid virtual key puts a [`Principal`] on the request's
//! extensions; the admin key is accepted too (no principal, no limits). `/admin/*` always
//! needs the admin key. A refusal is in the inbound API's own error shape: 401 for a
//! missing, unknown, revoked or expired key.
//!
//! `dispatch` calls [`admit`] before asking the gateway: a model the key may not use is a
//! 403, a reached RPM/TPM limit or budget a 429 with `Retry-After` (when the window or
//! period resets). A budget is checked by reserving the request's estimated cost (input
//! tokens estimated from the request's size, output tokens from `max_tokens` or
//! `[auth] default_output_tokens`, priced with the price table); the [`Ticket`] settles the
//! real cost when the answer is known, at a stream's end or drop, and releases the
//! reservation if the request failed. A budgeted key may not use a model whose price is
//! unknown (403); local models are free.
//!
//! The presented key is never logged or stored: only its hash is looked up, and a
//! principal carries the key's id.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fungible_access::{Access, Denial, Limits, Reservation};
use fungible_gateway::config::AuthConfig;
use fungible_gateway::{GatewayError, Target};
use fungible_providers::Secret;
use fungible_store::{KeyRecord, PriceTable, Store};
use fungible_types::{ChatRequest, ErrorKind, ProviderError, Usage};

use crate::AppState;
use crate::error::{ApiError, ApiFormat};
use crate::principal::Principal;

/// Auth settings and state, shared by every request (cheap to clone).
#[derive(Clone)]
pub struct Auth {
    pub enabled: bool,
    /// Guards `/admin/*`; `None`: the admin API is off.
    pub admin_key: Option<Secret>,
    pub admin_key_env: String,
    pub open_routes: Arc<Vec<String>>,
    pub default_output_tokens: u32,
    /// Keys, limits and budgets; `None` without a store.
    pub access: Option<Arc<Access>>,
}

impl Default for Auth {
    fn default() -> Auth {
        Auth {
            enabled: false,
            admin_key: None,
            admin_key_env: fungible_gateway::config::DEFAULT_ADMIN_KEY_ENV.to_owned(),
            open_routes: Arc::default(),
            default_output_tokens: 1024,
            access: None,
        }
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("enabled", &self.enabled)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "[redacted]"))
            .field("open_routes", &self.open_routes)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error(
        "auth: [auth] enabled and the admin API need the store (keys live there); [store] is disabled"
    )]
    NoStore,
    #[error("state.redis: {0}")]
    Redis(fungible_access::AccessError),
}

impl Auth {
    /// Builds auth from `config` over `store`, connecting to Redis when `[state] redis` is
    /// set (counters in memory otherwise).
    pub async fn from_config(
        config: &AuthConfig,
        store: Option<Store>,
    ) -> Result<Auth, AuthSetupError> {
        let access = match store {
            None if config.enabled || config.admin_key.is_some() => {
                return Err(AuthSetupError::NoStore);
            }
            None => None,
            Some(store) => {
                let limits = match &config.redis {
                    Some(url) => Limits::redis(url).await.map_err(AuthSetupError::Redis)?,
                    None => Limits::memory(),
                };
                Some(Arc::new(Access::new(store, limits, config.key_cache)))
            }
        };
        Ok(Auth {
            enabled: config.enabled,
            admin_key: config.admin_key.clone(),
            admin_key_env: config.admin_key_env.clone(),
            open_routes: Arc::new(config.open_routes.clone()),
            default_output_tokens: config.default_output_tokens,
            access,
        })
    }
}

/// The key a request authenticated with, in its extensions (the admin key and auth off
/// leave none); the dispatch layer puts it in the request's context for [`admit`].
#[derive(Debug, Clone)]
pub struct CallerKey(pub Arc<KeyRecord>);

/// The inbound API a path belongs to, for its error shape.
pub fn format_of(path: &str) -> ApiFormat {
    if path.starts_with("/v1/messages") {
        ApiFormat::Anthropic
    } else if path.starts_with("/v1beta/") || path.starts_with("/v1/models/") {
        ApiFormat::Gemini
    } else {
        ApiFormat::OpenAi
    }
}

/// The key a request presents, in any inbound API's header (or `?key=`, Gemini's way).
fn presented_key(request: &Request) -> Option<String> {
    let headers = request.headers();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if let Some(value) = header("authorization") {
        let (scheme, token) = value.split_once(' ').unwrap_or(("", value));
        if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
            return Some(token.trim().to_owned());
        }
    }
    if let Some(v) = header("x-api-key").or_else(|| header("x-goog-api-key")) {
        return Some(v.to_owned());
    }
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

pub(crate) fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        kind: "authentication_error",
        code: Some("invalid_api_key"),
        ..ApiError::invalid_request(None, message)
    }
}

pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError { status: StatusCode::FORBIDDEN, kind: "permission_error", ..ApiError::invalid_request(None, message) }
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "service_unavailable_error",
        ..ApiError::invalid_request(None, message)
    }
}

/// Whether `presented` is the admin key.
fn is_admin(auth: &Auth, presented: Option<&str>) -> bool {
    match (&auth.admin_key, presented) {
        (Some(admin), Some(presented)) => fungible_access::key::secrets_equal(presented, admin.expose()),
        _ => false,
    }
}

/// Middleware: authenticates the request (see the module docs).
pub async fn layer(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let presented = presented_key(&request);
    // A signed-in page's session stands for its key when the request presents none.
    // Signing in is not something a session does: it starts one (its own checks are in
    // `ui::pages::login`), so an old or ended cookie neither blocks nor follows it.
    let signing_in = request.uri().path() == "/ui/login" && request.method() == axum::http::Method::POST;
    if presented.is_none()
        && !signing_in
        && let Some(sessions) = state.ui.as_ref().map(|ui| &ui.sessions)
        && let Some(session) = sessions.from_headers(request.headers(), fungible_access::now_ms())
    {
        return with_session(&state, session, request, next).await;
    }
    let path = request.uri().path();
    let format = format_of(path);
    let auth = &state.auth;
    if crate::ui::is_ui_path(path) {
        // The pages sign in with their own form: without a session, nobody is signed in.
        request.extensions_mut().insert(crate::ui::Viewer::nobody(auth.enabled));
        return next.run(request).await;
    }
    if path == "/admin" || path.starts_with("/admin/") {
        if let Some(off) = admin_api_off(auth) {
            return off;
        }
        if !is_admin(auth, presented.as_deref()) {
            return unauthorized("the admin API needs the admin key (Authorization: Bearer ...)")
                .into_response();
        }
        return next.run(request).await;
    }
    if !auth.enabled
        || auth
            .open_routes
            .iter()
            .any(|pattern| fungible_access::glob_matches(pattern, path))
    {
        return next.run(request).await;
    }
    let Some(presented) = presented else {
        return unauthorized("missing API key: send a virtual key as Authorization: Bearer, x-api-key, x-goog-api-key or ?key=")
            .into_response_for(format);
    };
    if is_admin(auth, Some(&presented)) {
        return next.run(request).await;
    }
    let Some(access) = &auth.access else {
        return unavailable("API keys cannot be checked: no store").into_response_for(format);
    };
    match access.authenticate(&presented).await {
        Ok(Ok(key)) => {
            drop(presented);
            as_key(request, key, next).await
        }
        Ok(Err(failure)) => unauthorized(failure.to_string()).into_response_for(format),
        Err(e) => {
            tracing::error!("could not look up an API key: {e}");
            unavailable("API keys cannot be checked right now").into_response_for(format)
        }
    }
}

/// The refusal of an `/admin/*` request when no admin key is configured.
fn admin_api_off(auth: &Auth) -> Option<Response> {
    auth.admin_key.is_none().then(|| {
        ApiError {
            status: StatusCode::FORBIDDEN,
            kind: "permission_error",
            ..ApiError::invalid_request(None, format!("the admin API is off: set the admin key in {}", auth.admin_key_env))
        }
        .into_response()
    })
}

/// Runs `request` as virtual key `key`: its scopes must cover the path; its principal and
/// the key go on the request's extensions.
async fn as_key(mut request: Request, key: Arc<KeyRecord>, next: Next) -> Response {
    let path = request.uri().path();
    let format = format_of(path);
    let principal = Principal {
        key_id: key.id.clone(),
        key_name: key.name.clone(),
        tags: key.tags.clone(),
        scopes: key.scopes.clone(),
    };
    let needed = crate::principal::needs(path);
    if needed.is_empty() {
        return forbidden(format!("{path} is for the admin key only")).into_response_for(format);
    }
    if !needed.iter().any(|scope| principal.has(*scope)) {
        let names: Vec<&str> = needed.iter().map(|s| s.as_str()).collect();
        return forbidden(format!("this API key may not use {path}: it needs the {} scope", names.join(" or ")))
            .into_response_for(format);
    }
    request.extensions_mut().insert(principal);
    request.extensions_mut().insert(CallerKey(key));
    next.run(request).await
}

/// Who a UI session is now.
pub(crate) enum SessionCaller {
    Admin,
    Key(Arc<KeyRecord>),
    /// The key was revoked or expired, or the admin API was turned off.
    Ended,
}

/// A request made by a signed-in page (see `ui::session`): every state change must carry
/// the session's CSRF token (and, when the browser says where it comes from, come from this
/// origin); the pages get a [`crate::ui::Viewer`], the API the key or the admin rights the
/// session stands for. A session that has ended (its key revoked or expired, the admin key
/// changed) is cleared from the browser; with auth off its requests go on as nobody's.
async fn with_session(state: &AppState, session: crate::ui::Session, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let format = format_of(path);
    let auth = &state.auth;
    let Some(ui) = state.ui.as_ref() else {
        return next.run(request).await;
    };
    let caller = match &session.who {
        crate::ui::Who::Admin { fingerprint } => match &auth.admin_key {
            Some(admin) if fungible_access::key::secrets_equal(fingerprint, &ui.sessions.admin_fingerprint(admin.expose())) => {
                SessionCaller::Admin
            }
            _ => SessionCaller::Ended,
        },
        crate::ui::Who::Key { hash } => match &auth.access {
            None => SessionCaller::Ended,
            Some(access) => match access.authenticate_hash(hash.clone()).await {
                Ok(Ok(key)) => SessionCaller::Key(key),
                Ok(Err(_)) => SessionCaller::Ended,
                Err(e) => {
                    tracing::error!("could not look up a signed-in key: {e}");
                    return unavailable("API keys cannot be checked right now").into_response_for(format);
                }
            },
        },
    };
    // A state change must come from one of this session's pages; an ended session has
    // nothing to protect (with auth off its requests go on as nobody's, else are refused).
    let ended = matches!(caller, SessionCaller::Ended);
    let changes_state = !matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if changes_state && !ended {
        if !ui.sessions.csrf_ok(&session, request.headers()) {
            return forbidden(format!(
                "a signed-in page's {} needs the page's CSRF token in {}",
                request.method(),
                crate::ui::CSRF_HEADER
            ))
            .into_response_for(format);
        }
        if !crate::ui::same_origin(request.headers()) {
            return forbidden("a signed-in page's change must come from the gateway's own pages").into_response_for(format);
        }
    }
    let clear = ended.then(|| ui.sessions.clear_cookies());
    let mut response = if crate::ui::is_ui_path(path) {
        let viewer = match caller {
            // With auth off, the pages need nobody: an ended session is just gone.
            SessionCaller::Ended if !auth.enabled => crate::ui::Viewer::nobody(false),
            _ => crate::ui::Viewer::signed_in(auth.enabled, session, &caller),
        };
        if let SessionCaller::Key(key) = caller {
            request.extensions_mut().insert(CallerKey(key));
        }
        request.extensions_mut().insert(viewer);
        next.run(request).await
    } else {
        let is_admin_path = path == "/admin" || path.starts_with("/admin/");
        let open = !auth.enabled || auth.open_routes.iter().any(|p| fungible_access::glob_matches(p, path));
        match caller {
            SessionCaller::Ended if open && !is_admin_path => next.run(request).await,
            SessionCaller::Ended => unauthorized("the session has ended: sign in again").into_response_for(format),
            SessionCaller::Admin => match admin_api_off(auth).filter(|_| is_admin_path) {
                Some(off) => off,
                None => next.run(request).await,
            },
            SessionCaller::Key(_) if is_admin_path => {
                unauthorized("the admin API needs the admin key: sign in with it").into_response_for(format)
            }
            SessionCaller::Key(_) if open => next.run(request).await,
            SessionCaller::Key(key) => as_key(request, key, next).await,
        }
    };
    for clear in clear.into_iter().flatten() {
        response.headers_mut().append(axum::http::header::SET_COOKIE, clear);
    }
    response
}

fn refusal(kind: ErrorKind, message: String, retry_after: Option<u64>) -> GatewayError {
    let mut error = ProviderError::new(kind, "fungible", message);
    error.retry_after = retry_after;
    GatewayError::Provider(error)
}

fn denial(denial: &Denial) -> GatewayError {
    refusal(
        ErrorKind::RateLimited,
        denial.to_string(),
        denial.retry_after_secs(),
    )
}

fn state_error(e: fungible_access::AccessError) -> GatewayError {
    tracing::error!("limits: {e}");
    refusal(
        ErrorKind::Unavailable,
        "rate limits and budgets cannot be checked right now".into(),
        None,
    )
}

/// A request's admission: settles its real usage and cost once, when finished or dropped.
#[must_use]
pub struct Ticket {
    pending: Option<Pending>,
}

struct Pending {
    access: Arc<Access>,
    key: Arc<KeyRecord>,
    reservation: Option<Reservation>,
    prices: Arc<PriceTable>,
}

impl Ticket {
    fn none() -> Ticket {
        Ticket { pending: None }
    }

    /// Settles with what `target` used (no target: nothing was answered).
    pub fn finish(mut self, target: Option<&Target>, usage: &Usage) {
        self.settle(target, usage);
    }

    fn settle(&mut self, target: Option<&Target>, usage: &Usage) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let cost = target.and_then(|t| p.prices.cost(&t.provider, &t.model, usage)).unwrap_or(0.0);
        let tokens = usage.total_tokens();
        let key_id = p.key.id.clone();
        let work = async move {
            if let Err(e) = p.access.settle(&p.key, p.reservation, tokens, cost).await {
                tracing::warn!(key = %p.key.id, "could not settle a request's usage: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(work);
            }
            Err(_) => tracing::warn!(key = %key_id, "no runtime to settle a request's usage on"),
        }
    }

    /// Whether there is nothing to settle (no key, or already settled).
    pub(crate) fn is_settled(&self) -> bool {
        self.pending.is_none()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Unfinished (the request failed): release the reservation.
        self.settle(None, &Usage::default());
    }
}

/// Admits a chat for the request's key (see the module docs); no key (auth off, or the
/// admin key): always admitted.
///
/// Every target the request can reach is judged, not only the first: its route's targets and
/// its per-request fallbacks (`models` / `fallbacks`), any of which may answer. Each must be
/// allowed for the key, and the budget reserves what the dearest of them would cost.
pub async fn admit(state: &AppState, key: Option<&Arc<KeyRecord>>, req: &ChatRequest) -> Result<Ticket, GatewayError> {
    let Some(key) = key.cloned() else {
        return Ok(Ticket::none());
    };
    let Some(access) = state.auth.access.clone() else {
        return Ok(Ticket::none());
    };
    let targets = allowed_targets(state, &key, req)?;
    let prices = Arc::clone(&state.recording.prices);
    let estimate = match &key.budget {
        Some(_) => {
            let usage = estimate_usage(req, state.auth.default_output_tokens);
            let mut dearest: f64 = 0.0;
            for target in &targets {
                match prices.get(&target.provider, &target.model) {
                    Some(price) => dearest = dearest.max(price.cost(&usage)),
                    None => {
                        return Err(refusal(
                            ErrorKind::PermissionDenied,
                            format!(
                                "model {target} has no known price, and this API key has a budget: add [prices.\"{target}\"] to the config"
                            ),
                            None,
                        ));
                    }
                }
            }
            dearest
        }
        None => 0.0,
    };
    // Rate limits and the budget reservation in one atomic step (one Redis round trip).
    let reservation = if key.budget.is_some() && !targets.is_empty() {
        match access.admit(&key, estimate).await.map_err(state_error)? {
            Ok(reservation) => reservation,
            Err(d) => return Err(denial(&d)),
        }
    } else {
        if let Err(d) = access.check_rate(&key).await.map_err(state_error)? {
            return Err(denial(&d));
        }
        None
    };
    Ok(Ticket {
        pending: Some(Pending {
            access,
            key,
            reservation,
            prices,
        }),
    })
}

/// Every target `req` can reach, if the key may use each: a leg (the model, or a per-request
/// fallback) is allowed by its own name (an alias grants its whole route), or else by each of
/// its targets. An unknown model reaches nothing here; the gateway says so.
fn allowed_targets(state: &AppState, key: &KeyRecord, req: &ChatRequest) -> Result<Vec<Target>, GatewayError> {
    let legs = match state.gateway.reachable(req) {
        Ok(legs) => legs,
        // Not served here: a name the key may not use is still refused as such; the gateway
        // answers the rest (404).
        Err(GatewayError::UnknownModel(_)) if fungible_access::model_allowed(&key.models, &req.model) => {
            return Ok(Vec::new());
        }
        Err(GatewayError::UnknownModel(_)) => {
            return Err(refusal(
                ErrorKind::PermissionDenied,
                format!("this API key may not use model {:?}", req.model),
                None,
            ));
        }
        Err(e) => return Err(e),
    };
    let mut out: Vec<Target> = Vec::new();
    for leg in legs {
        if !fungible_access::model_allowed(&key.models, &leg.name) {
            if let Some(forbidden) =
                leg.targets.iter().find(|t| !fungible_access::model_allowed(&key.models, &t.to_string()))
            {
                let via = if leg.name == forbidden.to_string() { String::new() } else { format!(" (through {:?})", leg.name) };
                return Err(refusal(
                    ErrorKind::PermissionDenied,
                    format!("this API key may not use model {:?}{via}", forbidden.to_string()),
                    None,
                ));
            }
        }
        for target in leg.targets {
            if !out.contains(&target) {
                out.push(target);
            }
        }
    }
    Ok(out)
}

/// The target `model` resolves to (`None`: unknown, the gateway will say so), if the key
/// may use it: an alias is allowed by its own name, or by every target of its route.
fn allowed_target(state: &AppState, key: &KeyRecord, model: &str) -> Result<Option<Target>, GatewayError> {
    let probe = ChatRequest { model: model.to_owned(), ..ChatRequest::default() };
    let targets = allowed_targets(state, key, &probe)?;
    Ok(targets.into_iter().next())
}

/// Whether `key` may use `model` (no key: yes). For listings: an alias is judged by its
/// own name.
pub(crate) fn key_allows(key: Option<&Arc<KeyRecord>>, model: &str) -> bool {
    key.is_none_or(|key| fungible_access::model_allowed(&key.models, model))
}

/// Admits a call that spends a provider key but is not priced (embeddings, token counts) for
/// the request's key: the model allowance (every target of an alias) and RPM. Such
/// calls are not priced yet, so TPM and budgets do not count them.
pub async fn admit_unpriced(state: &AppState, key: Option<&Arc<KeyRecord>>, model: &str) -> Result<(), GatewayError> {
    let Some(key) = key.cloned() else {
        return Ok(());
    };
    let Some(access) = state.auth.access.clone() else {
        return Ok(());
    };
    allowed_target(state, &key, model)?;
    match access.check_rate(&key).await.map_err(state_error)? {
        Ok(()) => Ok(()),
        Err(d) => Err(denial(&d)),
    }
}

/// An upper-leaning estimate of what `req` will use: a token per 4 bytes of the request
/// (JSON framing makes this more, not less, than the text's tokens) and `max_tokens` (or
/// `default_output` when unset) of output.
fn estimate_usage(req: &ChatRequest, default_output: u32) -> Usage {
    /// Counts what is written, keeping none of it: no copy of the request per admission.
    struct Counter(u64);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let bytes = match serde_json::to_writer(&mut counter, req) {
        Ok(()) => counter.0,
        Err(_) => 0,
    };
    Usage {
        input_tokens: bytes.div_ceil(4),
        output_tokens: u64::from(req.params.max_tokens.unwrap_or(default_output)),
        ..Usage::default()
    }
}
