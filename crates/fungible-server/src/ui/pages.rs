//! The UI's pages: each handler checks who may see it ([`gate`]), reads what it shows from
//! the store or the gateway (the reads the JSON API makes, under the same [`DataScope`]), and
//! renders a template. The templates (`templates/`) are compiled once, HTML-escaped by
//! default.

use std::collections::BTreeMap;

use axum::Extension;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use fungible_store::{GroupBy, InferenceFilter, StatsRow};
use minijinja::{Environment, context};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Viewer, Who, view};
use crate::AppState;
use crate::auth::CallerKey;
use crate::error::ApiError;
use crate::principal::DataScope;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("message.html", include_str!("templates/message.html")),
    ("overview.html", include_str!("templates/overview.html")),
    ("inferences.html", include_str!("templates/inferences.html")),
    ("inference.html", include_str!("templates/inference.html")),
    ("playground.html", include_str!("templates/playground.html")),
    ("routes.html", include_str!("templates/routes.html")),
    ("datasets.html", include_str!("templates/datasets.html")),
    ("tuning.html", include_str!("templates/tuning.html")),
    ("keys.html", include_str!("templates/keys.html")),
    ("evals.html", include_str!("templates/evals.html")),
    ("eval.html", include_str!("templates/eval.html")),
];

/// The templates, compiled, with the filters they format numbers with.
pub(super) fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    for (name, text) in TEMPLATES {
        if let Err(e) = env.add_template(name, text) {
            // A test renders every page, so this cannot ship.
            tracing::error!("ui: template {name} does not compile: {e:#}");
        }
    }
    env.add_filter("usd", view::usd);
    env.add_filter("ms", view::duration);
    env.add_filter("time", view::utc_time);
    env.add_filter("num", view::count);
    env.add_filter("compact", view::compact);
    env.add_filter("urlencode", |s: String| view::percent_encode(&s));
    env
}

/// What a page needs of its viewer.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Need {
    /// Recorded inferences and stats (a key needs `read:own` or `read:all`).
    Read,
    /// What holds every key's traffic: routes, datasets (`read:all`).
    ReadAll,
    /// Chats from the playground (`inference`).
    Chat,
    /// The admin key: keys, tuning jobs.
    Admin,
}

/// `None` when `viewer` may see the page at `uri`; else what to answer instead: the sign-in
/// page (nobody signed in) or a 403 page.
pub(super) fn gate(state: &AppState, viewer: &Viewer, need: Need, uri: &Uri) -> Option<Response> {
    if viewer.must_sign_in() {
        return Some(to_login(uri));
    }
    let allowed = match need {
        Need::Read => viewer.may_read(),
        Need::ReadAll => viewer.may_read_all(),
        Need::Chat => viewer.may_chat(),
        Need::Admin => viewer.is_admin(),
    };
    if allowed {
        return None;
    }
    if need == Need::Admin && viewer.session.is_none() {
        // Auth is off and nobody signed in: the admin pages still need the admin key.
        return Some(to_login(uri));
    }
    let why = match need {
        Need::Admin => "This page is for the admin key.",
        Need::ReadAll => "This page shows every key's traffic: it needs a key with the read:all scope.",
        Need::Read => "Reading recorded inferences needs a key with the read:own or read:all scope.",
        Need::Chat => "The playground needs a key with the inference scope.",
    };
    Some(message(state, viewer, StatusCode::FORBIDDEN, "Not allowed", why))
}

/// A 303 to the sign-in page, coming back to `uri` after.
fn to_login(uri: &Uri) -> Response {
    let back = uri.path_and_query().map_or("/ui", |p| p.as_str());
    let next = view::percent_encode(back);
    see_other(&format!("/ui/login?next={next}"))
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Who is signed in, as the templates show it.
#[derive(Serialize)]
struct Me {
    signed_in: bool,
    label: String,
    admin: bool,
    auth_enabled: bool,
    may_read: bool,
    may_read_all: bool,
    may_chat: bool,
}

fn me(viewer: &Viewer) -> Me {
    let label = match (&viewer.principal, viewer.admin) {
        (_, true) => "admin".to_owned(),
        (Some(p), _) => p.key_name.clone().unwrap_or_else(|| p.key_id.clone()),
        (None, false) => String::new(),
    };
    Me {
        signed_in: viewer.session.is_some(),
        label,
        admin: viewer.is_admin(),
        auth_enabled: viewer.auth_enabled,
        may_read: viewer.may_read(),
        may_read_all: viewer.may_read_all(),
        may_chat: viewer.may_chat(),
    }
}

/// Renders `template` with `page` as its data.
pub(super) fn render(state: &AppState, viewer: &Viewer, status: StatusCode, template: &str, page: minijinja::Value) -> Response {
    let Some(ui) = state.ui.as_deref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let csrf = viewer.session.as_ref().map(|s| ui.sessions.csrf_token(s)).unwrap_or_default();
    let ctx = context! { me => me(viewer), csrf, page };
    match ui.templates.get_template(template).and_then(|t| t.render(ctx)) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!("ui: rendering {template}: {e:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered; see the gateway log").into_response()
        }
    }
}

pub(super) fn message(state: &AppState, viewer: &Viewer, status: StatusCode, title: &str, text: &str) -> Response {
    render(state, viewer, status, "message.html", minijinja::Value::from_serialize(json!({"title": title, "text": text})))
}

fn bad_query(state: &AppState, viewer: &Viewer, rejection: &QueryRejection) -> Response {
    message(state, viewer, StatusCode::BAD_REQUEST, "Bad query", &rejection.body_text())
}

fn store_failed(state: &AppState, viewer: &Viewer, e: &fungible_store::StoreError) -> Response {
    tracing::error!("ui: {e}");
    message(state, viewer, StatusCode::INTERNAL_SERVER_ERROR, "The store failed", "See the gateway log.")
}

fn no_store(state: &AppState, viewer: &Viewer) -> Response {
    message(
        state,
        viewer,
        StatusCode::SERVICE_UNAVAILABLE,
        "Nothing is recorded",
        "The inference store is disabled ([store] enabled = false), so there is nothing to show here.",
    )
}

fn now_ms() -> i64 {
    fungible_access::now_ms()
}

/// A time range as the pages offer it: its start and the chart's bucket. The ranges of days
/// start at a UTC midnight, so the store answers them from its daily roll-ups but for today.
fn range_of(range: Option<&str>) -> (&'static str, Option<i64>, &'static str) {
    const H: i64 = 3_600_000;
    const DAY: i64 = 24 * H;
    let today = now_ms().div_euclid(DAY) * DAY;
    match range.unwrap_or("24h") {
        "1h" => ("1h", Some(now_ms() - H), "hour"),
        "7d" => ("7d", Some(today - 6 * DAY), "day"),
        "30d" => ("30d", Some(today - 29 * DAY), "day"),
        "all" => ("all", None, "day"),
        _ => ("24h", Some(now_ms() - 24 * H), "hour"),
    }
}

/// The breakdowns of the overview.
const OVERVIEW_GROUPS: [GroupBy; 5] = [GroupBy::Model, GroupBy::Provider, GroupBy::Route, GroupBy::Key, GroupBy::Tag];

/// Reads what the overview reads for every key over its ranges of a day or more (the
/// breakdowns and the charts' series), so that the store's roll-up cache holds their share
/// before anyone asks: a month of roll-ups takes some 400 ms to read on 1M inferences, once.
/// The gateway calls it at start and after each roll-up that moved.
pub async fn warm(store: &fungible_store::Store) {
    for range in ["24h", "7d", "30d"] {
        let (_, since_ms, bucket) = range_of(Some(range));
        let series = if bucket == "hour" { GroupBy::Hour } else { GroupBy::Day };
        for group in OVERVIEW_GROUPS.into_iter().chain([series]) {
            if let Err(e) = store.stats_of(&fungible_store::StatsQuery { since_ms, ..fungible_store::StatsQuery::new(group) }).await {
                tracing::debug!("ui: could not warm the overview's stats: {e}");
                return;
            }
        }
    }
}

// ---- signing in -------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub(super) struct NextQuery {
    next: Option<String>,
}

/// Where to go after signing in: a UI path only (never another site).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if super::is_ui_path(n.split(['?', '#']).next().unwrap_or_default()) && !n.contains("//") && !n.contains('\\') => {
            n.to_owned()
        }
        _ => "/ui".to_owned(),
    }
}

/// `GET /ui/login`.
pub(super) async fn login_page(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    query: Result<Query<NextQuery>, QueryRejection>,
) -> Response {
    let next = safe_next(query.ok().and_then(|Query(q)| q.next).as_deref());
    if viewer.session.is_some() && !viewer.ended {
        return see_other(&next);
    }
    let page = json!({
        "next": next,
        "ended": viewer.ended,
        "auth_enabled": viewer.auth_enabled,
        "admin_api": state.auth.admin_key.is_some(),
    });
    render(&state, &viewer, StatusCode::OK, "login.html", minijinja::Value::from_serialize(page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    key: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /ui/login` with `{"key", "next"?}`: the admin key or a virtual key; answers
/// `{"next"}` with the session cookie.
pub(super) async fn login(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let Some(ui) = state.ui.as_deref() else {
        return Err(ApiError::not_found("the UI is off"));
    };
    // Only the sign-in page's own script: JSON (a page elsewhere can send a body without a
    // type, which no preflight stops) from this origin.
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(ApiError::unsupported_media_type("sign in with a JSON body (Content-Type: application/json)"));
    }
    if !super::same_origin(&headers) {
        return Err(crate::auth::forbidden("sign in from the gateway's own sign-in page"));
    }
    let bytes = crate::read_body(body, 16 * 1024).await?;
    let body: LoginBody =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid_request(None, format!("invalid sign-in: {e}")))?;
    let presented = body.key.trim();
    if presented.is_empty() {
        return Err(ApiError::invalid_request(Some("key".into()), "enter a key"));
    }
    let admin = state.auth.admin_key.as_ref().filter(|k| fungible_access::key::secrets_equal(presented, k.expose()));
    let (mut may_read, mut may_chat) = (true, true);
    let who = if let Some(admin) = admin {
        Who::Admin { fingerprint: ui.sessions.admin_fingerprint(admin.expose()) }
    } else {
        let Some(access) = state.auth.access.as_ref().filter(|_| state.auth.enabled) else {
            return Err(crate::auth::unauthorized(if state.auth.admin_key.is_some() {
                "that is not the admin key (with [auth] off, the pages need no key, and the admin pages the admin key)"
            } else {
                "with [auth] off the pages need no key, and the admin API is off"
            }));
        };
        match access.authenticate(presented).await {
            Ok(Ok(key)) => {
                may_read = key.scopes.iter().any(|s| matches!(s, fungible_store::Scope::ReadOwn | fungible_store::Scope::ReadAll));
                may_chat = key.scopes.contains(&fungible_store::Scope::Inference);
                Who::Key { hash: key.hash.clone() }
            }
            Ok(Err(failure)) => return Err(crate::auth::unauthorized(failure.to_string())),
            Err(e) => {
                tracing::error!("ui: could not look up a key: {e}");
                return Err(ApiError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    ..ApiError::invalid_request(None, "keys cannot be checked right now")
                });
            }
        }
    };
    let (cookie, _) = ui.sessions.issue(who, now_ms());
    // A key that may not read inferences starts in the playground, not on a 403.
    let next = safe_next(body.next.as_deref());
    let overview = matches!(next.split(['?', '#']).next(), Some("/ui" | "/ui/"));
    let next = if overview && !may_read && may_chat { "/ui/playground".to_owned() } else { next };
    let mut response = crate::json_response(StatusCode::OK, serde_json::to_vec(&json!({"next": next})).unwrap_or_default());
    response.headers_mut().insert(header::SET_COOKIE, ui.sessions.set_cookie(&cookie, &headers));
    Ok(response)
}

/// `POST /ui/logout` (with the CSRF token, checked by the auth middleware).
pub(super) async fn logout(State(state): State<AppState>, Extension(viewer): Extension<Viewer>) -> Response {
    let Some(ui) = state.ui.as_deref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if let Some(session) = &viewer.session {
        ui.sessions.sign_out(session, now_ms());
    }
    let mut response = crate::json_response(StatusCode::OK, br#"{"next":"/ui/login"}"#.to_vec());
    for clear in ui.sessions.clear_cookies() {
        response.headers_mut().append(header::SET_COOKIE, clear);
    }
    response
}

// ---- overview ---------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub(super) struct RangeQuery {
    range: Option<String>,
    /// The dimension the charts draw a series per value of (empty: totals).
    split: Option<String>,
}

/// What the overview's charts may be split by (`""`: not split).
const SPLITS: [&str; 6] = ["", "model", "provider", "route", "key", "tag"];

#[derive(Serialize, Default)]
struct Totals {
    requests: u64,
    errors: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost: f64,
    unpriced: u64,
    cache_hits: u64,
}

/// `GET /ui`: totals, the charts (drawn by the page's script from `/v1/stats`) and the
/// breakdowns by model, provider, route, key and tag.
pub(super) async fn overview(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    uri: Uri,
    query: Result<Query<RangeQuery>, QueryRejection>,
) -> Response {
    if let Some(r) = gate(&state, &viewer, Need::Read, &uri) {
        return r;
    }
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_query(&state, &viewer, &e),
    };
    let Some(store) = state.store.as_ref() else {
        return no_store(&state, &viewer);
    };
    let (range, since_ms, bucket) = range_of(q.range.as_deref());
    let split = SPLITS.into_iter().find(|s| Some(*s) == q.split.as_deref()).unwrap_or_default();
    let scope = viewer.scope();
    let key_id = scope.key_id();
    // Side by side: SQLite reads on several connections.
    let queries = OVERVIEW_GROUPS.map(|group| fungible_store::StatsQuery { since_ms, key_id, ..fungible_store::StatsQuery::new(group) });
    let reads = queries.iter().map(|q| store.stats_of(q));
    let [model, provider, route, key, tag] = match futures::future::try_join_all(reads).await {
        Ok(v) => match <[Vec<StatsRow>; 5]>::try_from(v) {
            Ok(v) => v,
            Err(_) => return message(&state, &viewer, StatusCode::INTERNAL_SERVER_ERROR, "Stats", "unexpected answer"),
        },
        Err(e) => return store_failed(&state, &viewer, &e),
    };
    let mut totals = Totals::default();
    for r in &model {
        totals.requests += r.requests;
        totals.errors += r.errors;
        totals.input_tokens += r.input_tokens;
        totals.output_tokens += r.output_tokens;
        totals.cost += r.cost;
        totals.unpriced += r.unpriced;
        totals.cache_hits += r.cache_hits;
    }
    let page = json!({
        "range": range,
        "ranges": ["1h", "24h", "7d", "30d", "all"],
        "since_ms": since_ms,
        "bucket": bucket,
        "split": split,
        "splits": SPLITS,
        "totals": totals,
        "groups": [
            {"name": "Model", "by": "model", "rows": model},
            {"name": "Provider", "by": "provider", "rows": provider},
            {"name": "Route", "by": "route", "rows": route},
            {"name": "Key", "by": "key_id", "rows": key},
            {"name": "Tag", "by": "tag", "rows": tag},
        ],
    });
    render(&state, &viewer, StatusCode::OK, "overview.html", minijinja::Value::from_serialize(page))
}

// ---- inferences -------------------------------------------------------------------------

#[derive(Deserialize, Serialize, Default)]
pub(super) struct ListQuery {
    #[serde(default)]
    model: String,
    #[serde(default)]
    route: String,
    #[serde(default)]
    key_id: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    tag: String,
    /// `ok`, `error` or empty.
    #[serde(default)]
    status: String,
    /// An error class (`rate_limited`, ...), or empty.
    #[serde(default)]
    error: String,
    /// `yes`, `no` or empty.
    #[serde(default)]
    feedback: String,
    #[serde(default)]
    range: String,
    #[serde(default)]
    before: String,
}

fn given(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// `GET /ui/inferences`: newest first, filtered, 50 a page, paged by cursor.
pub(super) async fn inferences(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    uri: Uri,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    if let Some(r) = gate(&state, &viewer, Need::Read, &uri) {
        return r;
    }
    let Query(mut q) = match query {
        Ok(q) => q,
        Err(e) => return bad_query(&state, &viewer, &e),
    };
    let Some(store) = state.store.as_ref() else {
        return no_store(&state, &viewer);
    };
    // A key without read:all sees its own inferences, whatever the filter asks.
    if let DataScope::Key(own) = viewer.scope() {
        q.key_id = own;
    }
    let (range, since_ms, _) = range_of(Some(if q.range.is_empty() { "all" } else { &q.range }));
    // `PROVIDER/MODEL`, or a model name alone.
    let (provider, model) = match given(&q.model) {
        Some(m) => match m.split_once('/') {
            Some((p, m)) => (Some(p.to_owned()), Some(m.to_owned())),
            None => (None, Some(m)),
        },
        None => (None, None),
    };
    const PAGE: u32 = 50;
    let filter = InferenceFilter {
        provider,
        model,
        route: given(&q.route),
        user: given(&q.user),
        episode_id: None,
        key_id: given(&q.key_id),
        tags: given(&q.tag).into_iter().collect(),
        errors: match q.status.as_str() {
            "error" => Some(true),
            "ok" => Some(false),
            _ => None,
        },
        error_class: given(&q.error),
        has_feedback: match q.feedback.as_str() {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        },
        since_ms,
        until_ms: None,
        before: given(&q.before),
        limit: Some(PAGE),
    };
    let records = match store.list(&filter).await {
        Ok(r) => r,
        Err(e) => return store_failed(&state, &viewer, &e),
    };
    let next = (records.len() == PAGE as usize).then(|| records.last().map(|r| r.id.clone())).flatten();
    let rows: Vec<view::Row> = records.iter().map(view::row).collect();
    let next_url = next.map(|before| {
        let mut params = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [("model", &q.model), ("route", &q.route), ("key_id", &q.key_id), ("user", &q.user), ("tag", &q.tag), ("status", &q.status), ("error", &q.error), ("feedback", &q.feedback)] {
            if !v.is_empty() {
                params.append_pair(k, v);
            }
        }
        params.append_pair("range", range);
        params.append_pair("before", &before);
        format!("/ui/inferences?{}", params.finish())
    });
    let page = json!({
        "q": q,
        "range": range,
        "ranges": ["1h", "24h", "7d", "30d", "all"],
        "rows": rows,
        "next_url": next_url,
        "first_page": q.before.is_empty(),
        "own_only": matches!(viewer.scope(), DataScope::Key(_)),
        "error_classes": fungible_types::ErrorKind::ALL.iter().map(|k| k.class()).chain(["unknown_model"]).collect::<Vec<_>>(),
    });
    render(&state, &viewer, StatusCode::OK, "inferences.html", minijinja::Value::from_serialize(page))
}

/// `GET /ui/inferences/{id}`: the conversation, the attempts, usage and cost, the raw bodies
/// when recorded, the feedback given, and the forms that add feedback or a dataset row.
pub(super) async fn inference(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = gate(&state, &viewer, Need::Read, &uri) {
        return r;
    }
    let Some(store) = state.store.as_ref() else {
        return no_store(&state, &viewer);
    };
    let mut record = match store.get(&id).await {
        Ok(r) => r,
        Err(e) => return store_failed(&state, &viewer, &e),
    };
    if record.is_none()
        && let Some(recorder) = &state.recording.recorder
    {
        recorder.flush().await;
        record = store.get(&id).await.ok().flatten();
    }
    // Another key's inference is not found, as in the API.
    let Some(record) = record.filter(|r| viewer.scope().sees(r.key_id.as_deref())) else {
        return message(&state, &viewer, StatusCode::NOT_FOUND, "Not found", &format!("No recorded inference has the id {id:?}."));
    };
    let feedback = match store.feedback(&id).await {
        Ok(f) => f,
        Err(e) => return store_failed(&state, &viewer, &e),
    };
    let turns = view::request_turns(&record.request);
    let answer = record.response.as_ref().and_then(view::response_turn);
    let finish = record
        .response
        .as_ref()
        .and_then(|r| r.get("finish_reason"))
        .and_then(|f| serde_json::from_value::<fungible_types::FinishReason>(f.clone()).ok())
        .map(|f| f.as_openai_str());
    let raw: Vec<_> = record
        .raw
        .iter()
        .map(|x| {
            let pretty = |s: &str| {
                serde_json::from_str::<serde_json::Value>(s)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok())
                    .unwrap_or_else(|| s.to_owned())
            };
            json!({"provider": x.provider, "request": pretty(&x.request), "response": pretty(&x.response), "truncated": x.truncated})
        })
        .collect();
    let tags = record.tag_list();
    let tools: Vec<String> = record
        .request
        .get("tools")
        .and_then(|t| t.as_array())
        .map(|t| t.iter().filter_map(|t| t.get("name")?.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let page = json!({
        "r": view::row(&record),
        "episode_id": record.episode_id,
        "variant": record.variant,
        "inbound": record.inbound,
        "usage": record.usage,
        "truncated": record.truncated,
        "turns": turns,
        "answer": answer,
        "finish": finish,
        "tools": tools,
        "spans": view::timeline(&record.attempts, record.latency_ms),
        "raw": raw,
        "tags": tags,
        "feedback": feedback,
        "may_change_datasets": viewer.principal.is_none(),
        "answer_text": record.response.as_ref().and_then(|r| r.pointer("/message/content")).and_then(|c| c.as_str()).unwrap_or_default(),
    });
    render(&state, &viewer, StatusCode::OK, "inference.html", minijinja::Value::from_serialize(page))
}

// ---- the other pages --------------------------------------------------------------------

/// `GET /ui/playground`: the models the viewer may use; the page's script streams each
/// column's chat through `/v1/chat/completions`.
pub(super) async fn playground(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    key: Option<Extension<CallerKey>>,
    uri: Uri,
) -> Response {
    if let Some(r) = gate(&state, &viewer, Need::Chat, &uri) {
        return r;
    }
    let key = key.map(|Extension(k)| k.0);
    let models: Vec<String> =
        state.gateway.models().into_iter().map(|m| m.id).filter(|id| crate::auth::key_allows(key.as_ref(), id)).collect();
    let page = json!({"models": models, "may_change_datasets": viewer.principal.is_none()});
    render(&state, &viewer, StatusCode::OK, "playground.html", minijinja::Value::from_serialize(page))
}

/// `GET /ui/routes`: what `GET /v1/routes` serves, as tables.
pub(super) async fn routes_page(State(state): State<AppState>, Extension(viewer): Extension<Viewer>, uri: Uri) -> Response {
    if let Some(r) = gate(&state, &viewer, Need::ReadAll, &uri) {
        return r;
    }
    // The shadow calls recorded over the last 7 days (the live tallies are per process).
    let mut recorded: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    if let Some(store) = &state.store {
        match store.shadow_stats(Some(now_ms() - 7 * 86_400_000), None, None).await {
            Ok(rows) => {
                for r in rows {
                    recorded.entry(r.route.clone()).or_default().push(crate::shadow::recorded_row(&r));
                }
            }
            Err(e) => return store_failed(&state, &viewer, &e),
        }
    }
    let page = json!({"routes": crate::routes_status::snapshot(&state), "recorded": recorded});
    render(&state, &viewer, StatusCode::OK, "routes.html", minijinja::Value::from_serialize(page))
}

/// `GET /ui/datasets`: the page's script lists `/v1/datasets` and pages through rows.
pub(super) async fn datasets(State(state): State<AppState>, Extension(viewer): Extension<Viewer>, uri: Uri) -> Response {
    if let Some(r) = gate(&state, &viewer, Need::ReadAll, &uri) {
        return r;
    }
    let page = json!({"may_change_datasets": viewer.principal.is_none()});
    render(&state, &viewer, StatusCode::OK, "datasets.html", minijinja::Value::from_serialize(page))
}

/// `GET /ui/tuning`: the page's script lists `/v1/tune/jobs` (admin key only).
pub(super) async fn tuning(State(state): State<AppState>, Extension(viewer): Extension<Viewer>, uri: Uri) -> Response {
    if let Some(r) = gate(&state, &viewer, Need::Admin, &uri) {
        return r;
    }
    render(&state, &viewer, StatusCode::OK, "tuning.html", minijinja::Value::from_serialize(json!({})))
}

/// `GET /ui/keys`: the page's script lists, creates, changes and revokes keys through
/// `/admin/keys`.
pub(super) async fn keys(State(state): State<AppState>, Extension(viewer): Extension<Viewer>, uri: Uri) -> Response {
    if let Some(r) = gate(&state, &viewer, Need::Admin, &uri) {
        return r;
    }
    render(&state, &viewer, StatusCode::OK, "keys.html", minijinja::Value::from_serialize(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        let env = templates();
        for (name, _) in TEMPLATES {
            assert!(env.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn sign_in_goes_back_to_ui_pages_only() {
        assert_eq!(safe_next(Some("/ui/inferences?model=x")), "/ui/inferences?model=x");
        for bad in ["https://evil.example/", "//evil.example/ui", "/ui//evil", "/uix", "/v1/models", "/ui\\..\\x"] {
            assert_eq!(safe_next(Some(bad)), "/ui", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui");
    }
}
