//! Fine-tuning jobs over HTTP (`/v1/tune/jobs`, the admin key only: jobs spend money), and
//! the poller that follows them and serves the finished models at once.
//!
//! - `GET /v1/tune/jobs`: jobs, newest first.
//! - `POST /v1/tune/jobs`: `{"provider", "model", "dataset", "method", "hyperparameters",
//!   "suffix", "alias", "eval", "dry_run"}`; `dry_run` answers the plan (files, rows, tokens,
//!   estimated cost) and sends nothing; `eval` (`{"dataset", "split", "scorers", "limit"}`)
//!   runs the tuned model against its base model once the job succeeds.
//! - `GET /v1/tune/jobs/{id}`, `POST /v1/tune/jobs/{id}/cancel`,
//!   `POST /v1/tune/jobs/{id}/promote` (`{"route", "percent"}`; 0 takes it back).
//!
//! [`spawn_poller`] polls the jobs this instance may hold every interval and applies the
//! succeeded jobs' routes to the gateway; a launch, a promotion or a job seen finishing
//! applies them at once.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use fungible_tune::{LaunchRequest, TuneError, Tuner};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

fn tuner(state: &AppState) -> Result<&Tuner, ApiError> {
    state.tuner.as_ref().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        ..ApiError::invalid_request(None, "tuning jobs live in the store, and it is disabled ([store] enabled = false)")
    })
}

fn api_error(e: TuneError) -> ApiError {
    match e {
        TuneError::BadInput(_) => ApiError::invalid_request(None, e.to_string()),
        TuneError::NotFound(_) => ApiError::not_found(e.to_string()),
        TuneError::Dataset(fungible_datasets::DatasetError::NotFound(_) | fungible_datasets::DatasetError::NoVersion { .. }) => {
            ApiError::not_found(e.to_string())
        }
        TuneError::Dataset(fungible_datasets::DatasetError::BadInput(_)) => ApiError::invalid_request(None, e.to_string()),
        // The provider refused the request itself (a model or hyperparameter it does not
        // take): the client's to fix, in the provider's words.
        TuneError::Provider(fungible_tune::ClientError::Http { status: Some(400 | 404 | 409 | 422), .. }) => {
            ApiError::invalid_request(None, e.to_string())
        }
        // The provider failed, or refused fungible's key: a 502 in its words (never the key).
        TuneError::Provider(_) => {
            ApiError { status: StatusCode::BAD_GATEWAY, kind: "upstream_error", ..ApiError::invalid_request(None, e.to_string()) }
        }
        TuneError::Dataset(_) | TuneError::Store(_) | TuneError::Corrupt(_) => {
            tracing::error!("{e}");
            ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "server_error",
                ..ApiError::invalid_request(None, "the store failed; see the gateway log")
            }
        }
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    crate::json_response(status, serde_json::to_vec(value).unwrap_or_default())
}

/// Applies the succeeded jobs' routes to the gateway now.
async fn apply_overlays(state: &AppState) {
    let Some(tuner) = &state.tuner else { return };
    match tuner.overlays().await {
        Ok(overlays) => state.gateway.set_overlays(overlays),
        Err(e) => tracing::warn!("tuned models not applied: {e}"),
    }
}

/// `GET /v1/tune/jobs`.
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let jobs = tuner(&state)?.jobs(1000).await.map_err(api_error)?;
    Ok(json_response(StatusCode::OK, &json!({"object": "list", "data": jobs})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(flatten)]
    request: LaunchRequest,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/tune/jobs`.
pub async fn create(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let bytes = crate::read_body(body, state.max_body_bytes).await?;
    let body: CreateBody =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid_request(None, format!("invalid tuning job: {e}")))?;
    let tuner = tuner(&state)?;
    let plan = tuner.plan(body.request).await.map_err(api_error)?;
    if body.dry_run {
        return Ok(json_response(StatusCode::OK, &json!({"object": "tune.plan", "plan": plan})));
    }
    let job = tuner.launch(plan).await.map_err(api_error)?;
    Ok(json_response(StatusCode::CREATED, &serde_json::to_value(&job).unwrap_or_default()))
}

/// `GET /v1/tune/jobs/{id}`.
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = tuner(&state)?.job(&id).await.map_err(api_error)?;
    Ok(json_response(StatusCode::OK, &serde_json::to_value(&job).unwrap_or_default()))
}

/// `POST /v1/tune/jobs/{id}/cancel`.
pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = tuner(&state)?.cancel(&id).await.map_err(api_error)?;
    Ok(json_response(StatusCode::OK, &serde_json::to_value(&job).unwrap_or_default()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    route: String,
    percent: u32,
}

/// `POST /v1/tune/jobs/{id}/promote`: `percent` of a configured route's first picks.
pub async fn promote(State(state): State<AppState>, Path(id): Path<String>, body: Body) -> Result<Response, ApiError> {
    let bytes = crate::read_body(body, state.max_body_bytes).await?;
    let body: PromoteBody =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid_request(None, format!("invalid promotion: {e}")))?;
    let job = tuner(&state)?.promote(&id, &body.route, body.percent).await.map_err(api_error)?;
    apply_overlays(&state).await;
    Ok(json_response(StatusCode::OK, &serde_json::to_value(&job).unwrap_or_default()))
}

/// Serves the models of jobs that already succeeded, then polls every `interval` until
/// the process ends.
pub fn spawn_poller(state: AppState, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        apply_overlays(&state).await;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            poll_once(&state).await;
        }
    })
}

/// One round: polls the due jobs and applies the routes (other instances' jobs included).
pub async fn poll_once(state: &AppState) {
    let Some(tuner) = &state.tuner else { return };
    if let Err(e) = tuner.poll_due().await {
        tracing::warn!("tuning jobs not polled: {e}");
    }
    apply_overlays(state).await;
    // The evals finished jobs asked for, now that their models are served.
    if let Err(e) = tuner.evaluate_finished(&state.gateway, &state.recording.prices).await {
        tracing::warn!("tuning jobs not evaluated: {e}");
    }
}
