//! The web UI at `/ui`: pages rendered here, from the same process and the same data the
//! JSON API serves, with their CSS, script and charting library embedded in the binary
//! (`assets.rs`). What a page changes (feedback, keys, datasets, the playground's chats) it
//! changes through the documented JSON API, with the session cookie and its CSRF token
//! (`session.rs`; the auth middleware checks both).
//!
//! Who sees what: with `[auth] enabled`, every page but the sign-in page needs a session; a
//! virtual key sees what its scopes let it read through the API (its own inferences and
//! stats with `read:own`, everything with `read:all`), and the keys and tuning pages need
//! the admin key. With auth off, the pages are open to whoever the guard lets in (loopback
//! names and `[server] allowed_hosts` only), and the admin pages still need a sign-in with
//! the admin key. Every page is sent with a strict Content-Security-Policy (no inline
//! script or style, nothing from another origin) and may not be framed.

mod assets;
mod evals;
mod pages;
mod session;
mod view;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use fungible_store::Scope;

use crate::AppState;
use crate::auth::SessionCaller;
use crate::principal::{DataScope, Principal};

pub use pages::warm;
pub use session::{CSRF_HEADER, Session, Sessions, Who};

/// The UI's state: sessions and the compiled templates.
#[derive(Debug)]
pub struct Ui {
    pub sessions: Sessions,
    templates: minijinja::Environment<'static>,
    /// Where `fungible eval run` writes its runs (`[ui] eval_runs_dir`).
    eval_runs: std::path::PathBuf,
}

impl Ui {
    pub fn new(sessions: Sessions) -> Ui {
        Ui { sessions, templates: pages::templates(), eval_runs: "eval-runs".into() }
    }

    /// Lists the eval runs under `dir` on the evals page.
    pub fn with_eval_runs(mut self, dir: std::path::PathBuf) -> Ui {
        self.eval_runs = dir;
        self
    }
}

/// Whether a state change comes from this gateway's own pages, as far as the browser says:
/// `Sec-Fetch-Site` (sent by every current browser) must be `same-origin` (or `none`: typed
/// by the user) when present. Requests that are not a browser's carry no such header.
pub fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|site| matches!(site.trim().to_ascii_lowercase().as_str(), "same-origin" | "none"))
}

/// Whether `path` is one of the UI's.
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// Who is looking at a page: put on the request's extensions by the auth middleware.
#[derive(Debug, Clone)]
pub struct Viewer {
    auth_enabled: bool,
    session: Option<Session>,
    admin: bool,
    principal: Option<Principal>,
    /// The session's key was revoked or expired, or the admin API was turned off.
    ended: bool,
}

impl Viewer {
    pub(crate) fn nobody(auth_enabled: bool) -> Viewer {
        Viewer { auth_enabled, session: None, admin: false, principal: None, ended: false }
    }

    pub(crate) fn signed_in(auth_enabled: bool, session: Session, caller: &SessionCaller) -> Viewer {
        let (admin, principal, ended) = match caller {
            SessionCaller::Admin => (true, None, false),
            SessionCaller::Key(key) => (
                false,
                Some(Principal {
                    key_id: key.id.clone(),
                    key_name: key.name.clone(),
                    tags: key.tags.clone(),
                    scopes: key.scopes.clone(),
                }),
                false,
            ),
            SessionCaller::Ended => (false, None, true),
        };
        Viewer { auth_enabled, session: Some(session), admin, principal, ended }
    }

    /// Whether the pages need a sign-in before anything is shown.
    fn must_sign_in(&self) -> bool {
        self.ended || (self.auth_enabled && self.session.is_none())
    }

    /// Whose data the pages show: the API's rule ([`DataScope::of`]).
    fn scope(&self) -> DataScope {
        DataScope::of(self.principal.as_ref())
    }

    /// Whether the viewer may read recorded inferences and stats (a key needs a read scope).
    fn may_read(&self) -> bool {
        self.principal.as_ref().is_none_or(|p| p.has(Scope::ReadOwn) || p.has(Scope::ReadAll))
    }

    /// Whether the viewer may read what holds every key's traffic (routes, datasets).
    fn may_read_all(&self) -> bool {
        self.principal.as_ref().is_none_or(|p| p.has(Scope::ReadAll))
    }

    /// Whether the viewer may use the admin API (keys, tuning jobs).
    fn is_admin(&self) -> bool {
        self.admin
    }

    /// Whether chats from the playground are allowed (a key needs `inference`).
    fn may_chat(&self) -> bool {
        self.principal.as_ref().is_none_or(|p| p.has(Scope::Inference))
    }
}

/// The UI's routes, under `/ui`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/", get(pages::overview))
        .route("/ui/login", get(pages::login_page).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/inferences", get(pages::inferences))
        .route("/ui/inferences/{id}", get(pages::inference))
        .route("/ui/playground", get(pages::playground))
        .route("/ui/routes", get(pages::routes_page))
        .route("/ui/datasets", get(pages::datasets))
        .route("/ui/tuning", get(pages::tuning))
        .route("/ui/keys", get(pages::keys))
        .route("/ui/evals", get(evals::list))
        .route("/ui/evals/compare", get(evals::compare_page))
        .route("/ui/evals/compare/report", get(evals::compare_report))
        .route("/ui/evals/{run}", get(evals::run_page))
        .route("/ui/evals/{run}/report", get(evals::run_report))
        .route("/ui/assets/{name}", get(assets::serve))
        .layer(axum::middleware::from_fn(headers))
}

/// The Content-Security-Policy of every UI response: scripts, styles, images and requests
/// from this origin only (images also as `data:` URLs, which recorded conversations carry),
/// no inline script or style attribute, no plugins, no framing, forms posting nowhere else.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Middleware on the UI's routes: the security headers, and no caching of pages.
async fn headers(request: Request, next: Next) -> Response {
    let is_asset = request.uri().path().starts_with("/ui/assets/");
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    // An eval report (framed by its page) sets its own.
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !is_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
