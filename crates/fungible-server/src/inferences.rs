//! Reading recorded inferences back: `POST /v1/feedback`, `GET /v1/inferences`,
//! `GET /v1/inferences/{id}`, `GET /v1/stats`, and `GET /metrics` (Prometheus).
//!
//! A virtual key without `read:all` sees, lists, counts and annotates only the inferences
//! made with it ([`DataScope`]); another key's inference is a 404, as if it did not exist.

use axum::body::Body;
use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fungible_store::{Feedback, FeedbackTarget, GroupBy, InferenceFilter, Store};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::principal::{DataScope, Principal};

type Caller = Option<Extension<Principal>>;

fn scope_of(caller: &Caller) -> DataScope {
    DataScope::of(caller.as_ref().map(|Extension(p)| p))
}

fn store(state: &AppState) -> Result<&Store, ApiError> {
    state.store.as_ref().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        ..ApiError::invalid_request(
            None,
            "the inference store is disabled ([store] enabled = false)",
        )
    })
}

fn internal(e: fungible_store::StoreError) -> ApiError {
    tracing::error!("{e}");
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "server_error",
        ..ApiError::invalid_request(None, "the inference store failed; see the gateway log")
    }
}

/// A query string that does not parse, as a 400 in OpenAI's shape (axum's own rejection is
/// plain text).
fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::invalid_request(None, rejection.body_text())
}

fn json_ok(value: &Value) -> Response {
    crate::json_response(
        StatusCode::OK,
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    inference_id: Option<String>,
    episode_id: Option<String>,
    #[serde(default)]
    boolean: Option<bool>,
    #[serde(default)]
    score: Option<f64>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    demonstration: Option<Value>,
}

/// `POST /v1/feedback`: `{"inference_id" | "episode_id", "boolean"?, "score"?, "comment"?, "demonstration"?}`.
pub async fn feedback(State(state): State<AppState>, caller: Caller, body: Body) -> Result<Response, ApiError> {
    let scope = scope_of(&caller);
    let bytes = crate::read_body(body, state.max_body_bytes).await?;
    let body: FeedbackBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid_request(None, format!("invalid feedback: {e}")))?;
    let (target, target_id) = match (body.inference_id, body.episode_id) {
        (Some(id), None) => (FeedbackTarget::Inference, id),
        (None, Some(id)) => (FeedbackTarget::Episode, id),
        _ => {
            return Err(ApiError::invalid_request(
                None,
                "give exactly one of inference_id and episode_id",
            ));
        }
    };
    if body.boolean.is_none()
        && body.score.is_none()
        && body.comment.is_none()
        && body.demonstration.is_none()
    {
        return Err(ApiError::invalid_request(
            None,
            "feedback needs at least one of boolean, score, comment, demonstration",
        ));
    }
    if body.score.is_some_and(|s| !s.is_finite()) {
        return Err(ApiError::invalid_request(
            Some("score".into()),
            "score must be a finite number",
        ));
    }
    let store = store(&state)?;
    let mut known = visible(store, &scope, target, &target_id).await?;
    if !known {
        // It may still be in the recorder's queue.
        if let Some(recorder) = &state.recording.recorder {
            recorder.flush().await;
            known = visible(store, &scope, target, &target_id).await?;
        }
    }
    if !known {
        return Err(ApiError::not_found(format!(
            "no recorded {} with id {target_id:?}",
            target.as_str()
        )));
    }
    let feedback = Feedback {
        id: fungible_store::new_id(),
        time_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        target,
        target_id,
        boolean: body.boolean,
        score: body.score,
        comment: body.comment,
        demonstration: body.demonstration,
    };
    store.insert_feedback(&feedback).await.map_err(internal)?;
    Ok(json_ok(&json!({"id": feedback.id})))
}

/// Whether the feedback target exists and `scope` may annotate it: its inference was made
/// with the caller's key; an episode, only when every inference in it was.
async fn visible(store: &Store, scope: &DataScope, target: FeedbackTarget, id: &str) -> Result<bool, ApiError> {
    match (scope, target) {
        (DataScope::All, _) => store.exists(target, id).await.map_err(internal),
        (DataScope::Key(_), FeedbackTarget::Inference) => {
            let record = store.get(id).await.map_err(internal)?;
            Ok(record.is_some_and(|r| scope.sees(r.key_id.as_deref())))
        }
        (DataScope::Key(_), FeedbackTarget::Episode) => {
            let filter = InferenceFilter { episode_id: Some(id.to_owned()), limit: Some(1000), ..InferenceFilter::default() };
            let records = store.list(&filter).await.map_err(internal)?;
            Ok(!records.is_empty() && records.iter().all(|r| scope.sees(r.key_id.as_deref())))
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    provider: Option<String>,
    model: Option<String>,
    route: Option<String>,
    user: Option<String>,
    episode_id: Option<String>,
    key_id: Option<String>,
    errors: Option<bool>,
    error: Option<String>,
    has_feedback: Option<bool>,
    tag: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    before: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/inferences`: newest first; `next` is the `before` of the next page.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let key_id = match scope_of(&caller) {
        DataScope::All => q.key_id,
        DataScope::Key(own) => match q.key_id {
            Some(other) if other != own => {
                return Err(crate::auth::forbidden("this API key may only read its own inferences (it lacks read:all)"));
            }
            _ => Some(own),
        },
    };
    let filter = InferenceFilter {
        provider: q.provider,
        model: q.model,
        route: q.route,
        user: q.user,
        episode_id: q.episode_id,
        key_id,
        tags: q.tag.into_iter().collect(),
        errors: q.errors,
        error_class: q.error,
        has_feedback: q.has_feedback,
        since_ms: q.since_ms,
        until_ms: q.until_ms,
        before: q.before,
        limit: q.limit,
    };
    let limit = filter.limit.unwrap_or(50).clamp(1, 1000) as usize;
    let records = store(&state)?.list(&filter).await.map_err(internal)?;
    let next = (records.len() == limit)
        .then(|| records.last().map(|r| r.id.clone()))
        .flatten();
    Ok(json_ok(
        &json!({"object": "list", "data": records, "next": next}),
    ))
}

/// `GET /v1/inferences/{id}`: the record, its attempts and its feedback.
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = store(&state)?;
    let mut record = store.get(&id).await.map_err(internal)?;
    if record.is_none()
        && let Some(recorder) = &state.recording.recorder
    {
        recorder.flush().await;
        record = store.get(&id).await.map_err(internal)?;
    }
    let Some(record) = record.filter(|r| scope_of(&caller).sees(r.key_id.as_deref())) else {
        return Err(ApiError::not_found(format!(
            "no recorded inference with id {id:?}"
        )));
    };
    let feedback = store.feedback(&id).await.map_err(internal)?;
    let mut value = serde_json::to_value(&record).unwrap_or_default();
    value["feedback"] = serde_json::to_value(feedback).unwrap_or_default();
    Ok(json_ok(&value))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    by: Option<String>,
    /// With `by=day` or `by=hour`: a row per time bucket and value of this dimension.
    split: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
}

/// `GET /v1/stats?by=model|provider|route|key|user|tag|day|hour|inbound[&split=...]`.
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let scope = scope_of(&caller);
    let key_id = scope.key_id();
    let by: GroupBy =
        q.by.as_deref()
            .unwrap_or("model")
            .parse()
            .map_err(|e: String| ApiError::invalid_request(Some("by".into()), e))?;
    let split = q
        .split
        .as_deref()
        .map(str::parse::<GroupBy>)
        .transpose()
        .map_err(|e| ApiError::invalid_request(Some("split".into()), e))?;
    let query = fungible_store::StatsQuery {
        group: by,
        split,
        since_ms: q.since_ms,
        until_ms: q.until_ms,
        key_id,
    };
    query
        .check()
        .map_err(|e| ApiError::invalid_request(Some("split".into()), e))?;
    let rows = store(&state)?.stats_of(&query).await.map_err(internal)?;
    Ok(json_ok(
        &json!({"object": "list", "by": q.by.as_deref().unwrap_or("model"), "split": q.split, "data": rows}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RangeQuery {
    since_ms: Option<i64>,
    until_ms: Option<i64>,
}

/// `GET /v1/stats/shadows`: each route's shadow candidates over their recorded calls (of the
/// caller's key, for a key that reads its own): calls, failures, agreement with its 95%
/// Wilson interval, mean score, latency and cost against the primaries.
pub async fn shadow_stats(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<RangeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let scope = scope_of(&caller);
    let key_id = scope.key_id();
    let rows = store(&state)?.shadow_stats(q.since_ms, q.until_ms, key_id).await.map_err(internal)?;
    let data: Vec<Value> = rows.iter().map(crate::shadow::recorded_row).collect();
    Ok(json_ok(&json!({"object": "list", "data": data})))
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state
        .recording
        .metrics
        .render(state.recording.recorder.as_ref());
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
