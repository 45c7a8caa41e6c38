//! The HTTP server: routes, inbound API front ends and error rendering over the gateway
//! core. This is the only crate that knows axum and HTTP status codes.
//!
//! [`app`] builds the whole router, so tests drive it with `oneshot` and no socket;
//! [`serve`] binds it to an address with connection timeouts, a connection cap and a
//! shutdown deadline (`serve.rs`).

pub mod adaptive;
pub mod admin;
pub mod anthropic_messages;
pub mod auth;
pub mod budget;
mod cache;
pub mod datasets;
pub mod dispatch;
pub mod error;
mod fields;
#[doc(hidden)]
pub mod fuzzing;
pub mod gemini_api;
pub mod guard;
pub mod inferences;
pub mod learned;
pub mod limits;
pub mod openai_chat;
pub mod openai_embeddings;
pub mod openai_responses;
pub mod principal;
mod metrics;
pub mod recording;
pub mod routes_status;
pub mod tune;
pub mod serve;
pub mod shadow;
pub mod ui;
mod streaming;
mod tap;
mod tags;

pub use serve::{serve, serve_on};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fungible_gateway::Gateway;
use serde::Serialize;

use error::ApiError;

/// What every handler can reach: a handle to [`Shared`], so that the clone axum makes for
/// each middleware and handler of every request is one reference count, not one per field.
/// Built once with the `with_*` methods, then read through `Deref`.
#[derive(Debug, Clone)]
pub struct AppState(std::sync::Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// The state to change while building it (copied first if a clone of it is in use).
    pub fn shared_mut(&mut self) -> &mut Shared {
        std::sync::Arc::make_mut(&mut self.0)
    }
}

/// The state itself (see [`AppState`]).
#[derive(Debug, Clone)]
pub struct Shared {
    pub gateway: Gateway,
    pub max_body_bytes: usize,
    /// `[server] max_inflight_body_bytes`: the memory all request bodies in flight may take.
    pub budget: budget::InflightBudget,
    /// Responses kept for `previous_response_id` and `GET /v1/responses/{id}`.
    pub responses: openai_responses::ResponseStore,
    /// Metrics, prices and the recorder every inference is handed to.
    pub recording: recording::Recording,
    /// The store read back by `/v1/inferences`, `/v1/stats` and `/v1/feedback`.
    pub store: Option<fungible_store::Store>,
    /// OpenTelemetry export of every inference (`[telemetry]`); `None`: off.
    pub telemetry: Option<fungible_telemetry::Telemetry>,
    /// The response cache (`[cache]`); `None`: off.
    pub cache: Option<fungible_cache::ResponseCache>,
    /// Virtual keys, rate limits and budgets (`[auth]`); off by default.
    pub auth: auth::Auth,
    /// `[server] allowed_hosts`: the `Host` names served with auth off besides loopback ones.
    pub allowed_hosts: guard::AllowedHosts,
    /// Fine-tuning jobs (`/v1/tune/jobs`); `None` without a store.
    pub tuner: Option<fungible_tune::Tuner>,
    /// Few-shot examples of the routes that have `examples` (`fungible-datasets`' `fewshot`).
    pub examples: fungible_datasets::Examples,
    /// The web UI at `/ui` (`[ui]`); `None`: off.
    pub ui: Option<std::sync::Arc<ui::Ui>>,
    /// The routes' shadow candidates (see [`shadow`]).
    pub shadows: shadow::Shadows,
}

impl AppState {
    pub fn new(gateway: Gateway, max_body_bytes: usize) -> AppState {
        AppState(std::sync::Arc::new(Shared {
            gateway,
            max_body_bytes,
            budget: budget::InflightBudget::default(),
            responses: openai_responses::ResponseStore::default(),
            recording: recording::Recording::default(),
            store: None,
            telemetry: None,
            cache: None,
            auth: auth::Auth::default(),
            allowed_hosts: guard::AllowedHosts::default(),
            tuner: None,
            examples: fungible_datasets::Examples::default(),
            ui: None,
            shadows: shadow::Shadows::default(),
        }))
    }

    /// Bounds the memory of the request bodies in flight to `bytes` (see [`budget`]).
    pub fn with_inflight_budget(mut self, bytes: usize) -> AppState {
        self.shared_mut().budget = budget::InflightBudget::new(bytes);
        self
    }

    /// With auth off, also serves these `Host` names (see [`guard`]).
    pub fn with_allowed_hosts(mut self, patterns: Vec<String>) -> AppState {
        self.shared_mut().allowed_hosts = guard::AllowedHosts::new(patterns);
        self
    }

    /// Checks keys, limits and budgets with `auth` (see [`auth`]).
    pub fn with_auth(mut self, auth: auth::Auth) -> AppState {
        self.shared_mut().auth = auth;
        self
    }

    /// Records every inference into `store` through `recorder` (which writes to it).
    pub fn with_recorder(mut self, store: fungible_store::Store, recorder: fungible_store::Recorder) -> AppState {
        let shared = self.shared_mut();
        shared.store = Some(store);
        shared.recording.recorder = Some(recorder);
        self
    }

    /// Runs fine-tuning jobs with `tuner` (`/v1/tune/jobs`; see [`tune`]).
    pub fn with_tuner(mut self, tuner: fungible_tune::Tuner) -> AppState {
        self.shared_mut().tuner = Some(tuner);
        self
    }

    /// Inserts retrieved few-shot examples into the requests of the routes `examples` has.
    pub fn with_examples(mut self, examples: fungible_datasets::Examples) -> AppState {
        self.shared_mut().examples = examples;
        self
    }

    /// Sends samples of the routes' traffic to their shadow candidates (see [`shadow`]).
    pub fn with_shadows(mut self, shadows: shadow::Shadows) -> AppState {
        self.shared_mut().shadows = shadows;
        self
    }

    /// Answers repeated requests from `cache` (see `fungible-cache`).
    pub fn with_cache(mut self, cache: fungible_cache::ResponseCache) -> AppState {
        self.shared_mut().cache = Some(cache);
        self
    }

    /// Exports a span per inference and per attempt through `telemetry`.
    pub fn with_telemetry(mut self, telemetry: fungible_telemetry::Telemetry) -> AppState {
        self.shared_mut().telemetry = Some(telemetry);
        self
    }

    /// Serves the web UI at `/ui` (see [`ui`]).
    pub fn with_ui(mut self, ui: ui::Ui) -> AppState {
        self.shared_mut().ui = Some(std::sync::Arc::new(ui));
        self
    }

    /// Prices costs with `prices` instead of the built-in table.
    pub fn with_prices(mut self, prices: fungible_store::PriceTable) -> AppState {
        self.shared_mut().recording.prices = std::sync::Arc::new(prices);
        self
    }
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    let ui = match state.ui {
        Some(_) => ui::routes(),
        None => Router::new(),
    };
    Router::new()
        .merge(ui)
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(openai_chat::chat_completions))
        // Some clients are configured with the origin only.
        .route("/chat/completions", post(openai_chat::chat_completions))
        .route("/v1/embeddings", post(openai_embeddings::embeddings))
        .route("/v1/messages", post(anthropic_messages::messages))
        .route("/v1/messages/count_tokens", post(anthropic_messages::count_tokens))
        .route("/v1/responses", post(openai_responses::create_response))
        .route("/v1/responses/{id}", get(openai_responses::get_response).delete(openai_responses::delete_response))
        // Gemini API: `models/{PROVIDER/MODEL}:{method}`; the google-genai SDKs use v1beta (1.x) or v1 (3.x).
        .route("/v1beta/models/{*rest}", post(gemini_api::models_post))
        // Other methods stay 404 here, as `GET /v1/models/{id}` (OpenAI's model lookup) was.
        .route("/v1/models/{*rest}", post(gemini_api::models_post).fallback(not_found))
        .route("/v1/feedback", post(inferences::feedback))
        .route("/v1/inferences", get(inferences::list))
        .route("/v1/inferences/{id}", get(inferences::get))
        .route("/v1/stats", get(inferences::stats))
        .route("/v1/stats/shadows", get(inferences::shadow_stats))
        .route("/v1/routes", get(routes_status::list))
        .route("/v1/datasets", get(datasets::list).post(datasets::build))
        .route("/v1/datasets/{name}", get(datasets::get).delete(datasets::delete))
        .route("/v1/datasets/{name}/rows", get(datasets::rows).post(datasets::put_rows))
        .route("/v1/datasets/{name}/rows/{row_id}", axum::routing::delete(datasets::delete_row))
        .route("/v1/datasets/{name}/export", get(datasets::export))
        .route("/v1/tune/jobs", get(tune::list).post(tune::create))
        .route("/v1/tune/jobs/{id}", get(tune::get))
        .route("/v1/tune/jobs/{id}/cancel", post(tune::cancel))
        .route("/v1/tune/jobs/{id}/promote", post(tune::promote))
        .route("/metrics", get(inferences::metrics))
        .route("/admin/keys", post(admin::create).get(admin::list))
        .route("/admin/keys/{id}", get(admin::get).patch(admin::update).delete(admin::revoke))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), dispatch::layer))
        // Every body is charged to the in-flight memory budget as it arrives, and the charge
        // is held until the response is done; refused requests reach no handler.
        .layer(axum::middleware::from_fn_with_state(state.clone(), budget::layer))
        // A refused request reaches nothing inside, and a virtual key's principal is on the
        // request before recording and the cache look for it.
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::layer))
        // Outermost: what a web page could make a browser send (a foreign Host or Origin with
        // auth off, a form body) is refused before anything else runs.
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::layer))
        .with_state(state)
}

/// Reads a request body up to `limit` bytes; more is a 413 in the client's error shape, a
/// body that ran past `[server] body_read_timeout_ms` a 408, and one the in-flight memory
/// budget refused a 413 or 503 ([`budget`]). The body is gathered into one buffer of its
/// announced size (no second copy when it arrives in chunks).
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let announced = usize::try_from(hyper::body::Body::size_hint(&body).lower()).unwrap_or(usize::MAX);
    let mut first: Option<Bytes> = None;
    let mut gathered: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                let (error, refused) = body_error(e);
                if refused {
                    // The client is still sending: read the rest so that it sees the refusal.
                    budget::drain(body).await;
                }
                return Err(error);
            }
        };
        let Ok(data) = frame.into_data() else { continue };
        total += data.len();
        if total > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        match first.take() {
            // The common case: one chunk (or the first of several) is kept as it is.
            None if gathered.is_empty() => first = Some(data),
            Some(head) => {
                gathered.reserve_exact(announced.clamp(total, limit) - gathered.len());
                gathered.extend_from_slice(&head);
                gathered.extend_from_slice(&data);
            }
            None => gathered.extend_from_slice(&data),
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(gathered)))
}

/// The error a body failed with, and whether the in-flight budget refused it.
fn body_error(e: axum::Error) -> (ApiError, bool) {
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<budget::BudgetError>() {
            return (ApiError::from(*refused), true);
        }
        if let Some(timeout) = err.downcast_ref::<serve::BodyTimeout>() {
            return (ApiError::request_timeout(timeout.to_string()), false);
        }
        source = err.source();
    }
    (ApiError::invalid_request(None, format!("could not read the request body: {e}")), false)
}

/// The OpenAPI 3.1 description of every route, kept beside the router (a test checks that
/// each documented operation is routed).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    json_response(StatusCode::OK, OPENAPI.as_bytes().to_vec())
}

async fn health() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

async fn models(State(state): State<AppState>, context: dispatch::Context) -> Response {
    #[derive(Serialize)]
    struct List {
        object: &'static str,
        data: Vec<Model>,
    }
    #[derive(Serialize)]
    struct Model {
        id: String,
        object: &'static str,
        created: u64,
        owned_by: String,
        /// A local model's values for the parameters a request leaves out.
        #[serde(skip_serializing_if = "Option::is_none")]
        defaults: Option<fungible_providers::local::Defaults>,
    }
    // A virtual key sees the models it may use.
    let data = state
        .gateway
        .models()
        .into_iter()
        .filter(|m| auth::key_allows(context.key(), &m.id))
        .map(|m| Model { id: m.id, object: "model", created: 0, owned_by: m.owned_by, defaults: m.defaults })
        .collect();
    json_response(StatusCode::OK, serde_json::to_vec(&List { object: "list", data }).unwrap_or_default())
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError { status: StatusCode::METHOD_NOT_ALLOWED, ..ApiError::invalid_request(None, "method not allowed") }
}

/// `body` (JSON text) with `status` and `Content-Type: application/json`: how every handler answers JSON.
fn json_response(status: StatusCode, body: impl IntoResponse) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
