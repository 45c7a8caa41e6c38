//! Datasets over HTTP (`/v1/datasets`), and the one parser of dataset rows written by people
//! (the API's row bodies and `fungible datasets add/import` files).
//!
//! - `GET /v1/datasets`: every dataset's latest version.
//! - `POST /v1/datasets`: build a version from recorded traffic
//!   (`{"name", "description"?, "selection"?, "curation"?}`).
//! - `GET /v1/datasets/{name}`: every version with its spec, report and statistics.
//! - `DELETE /v1/datasets/{name}`: delete the versions nothing used.
//! - `GET /v1/datasets/{name}/rows?version=&split=&after=&limit=`: rows in order, paged.
//! - `POST /v1/datasets/{name}/rows`: add or replace rows (`{"rows": [...]}`).
//! - `DELETE /v1/datasets/{name}/rows/{row_id}`: remove a row.
//! - `GET /v1/datasets/{name}/export?format=&version=&split=&skip_invalid=`: a provider's
//!   fine-tuning JSONL, or a 400 listing the rows that break its rules.
//!
//! Datasets hold every key's traffic, so a virtual key needs `read:all` (see `principal`) to
//! read them, and only the admin key (or auth off) changes them.
//! A row is OpenAI-shaped (`messages` ending with the answer, `tools`), or a preference pair
//! (`input`, `preferred_output`, `non_preferred_output`), or `prompt` and `completion`;
//! other fields of `fungible`'s own format (`id`, `split`, `rejected`, `tags`, `label`,
//! `schema`) are kept.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fungible_datasets::versions::{self, DatasetError};
use fungible_datasets::{Curation, Example, Format, Selection, Source, Split};
use fungible_store::{DatasetStoreError, Store};
use fungible_types::{Message, Role};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::principal::Principal;

type Caller = Option<axum::Extension<Principal>>;

/// Reading datasets takes `read:all`; changing them (building one reads every key's traffic
/// into it, and may call an embedding model) is for the admin key (or auth off).
fn may_change(caller: &Caller) -> Result<(), ApiError> {
    match caller {
        Some(_) => Err(ApiError::forbidden("changing datasets is for the admin key; a key with read:all may read them")),
        None => Ok(()),
    }
}

fn store(state: &AppState) -> Result<&Store, ApiError> {
    state.store.as_ref().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        ..ApiError::invalid_request(None, "datasets live in the store, and it is disabled ([store] enabled = false)")
    })
}

fn api_error(e: DatasetError) -> ApiError {
    match e {
        DatasetError::NotFound(_) | DatasetError::NoVersion { .. } | DatasetError::NoRow { .. } => {
            ApiError::not_found(e.to_string())
        }
        DatasetError::Version(DatasetStoreError::NoVersion { .. }) => ApiError::not_found(e.to_string()),
        DatasetError::Version(DatasetStoreError::Used { .. }) => {
            ApiError { status: StatusCode::CONFLICT, ..ApiError::invalid_request(None, e.to_string()) }
        }
        DatasetError::Empty(_) | DatasetError::BadInput(_) => ApiError::invalid_request(None, e.to_string()),
        DatasetError::Curation(_) => ApiError {
            status: StatusCode::BAD_GATEWAY,
            kind: "server_error",
            ..ApiError::invalid_request(Some("curation".into()), e.to_string())
        },
        DatasetError::Store(_) | DatasetError::Version(DatasetStoreError::Store(_)) => {
            tracing::error!("{e}");
            ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "server_error",
                ..ApiError::invalid_request(None, "the store failed; see the gateway log")
            }
        }
    }
}

fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::invalid_request(None, rejection.body_text())
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    crate::json_response(status, serde_json::to_vec(value).unwrap_or_default())
}

fn info_json(info: &versions::VersionInfo) -> Value {
    serde_json::to_value(info).unwrap_or_default()
}

/// `GET /v1/datasets`.
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let all = versions::list(store(&state)?).await.map_err(api_error)?;
    Ok(json_response(StatusCode::OK, &json!({"object": "list", "data": all.iter().map(info_json).collect::<Vec<_>>()})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    selection: Selection,
    #[serde(default)]
    curation: Curation,
}

/// `POST /v1/datasets`: a new version built from recorded traffic.
pub async fn build(State(state): State<AppState>, caller: Caller, body: Body) -> Result<Response, ApiError> {
    may_change(&caller)?;
    let bytes = crate::read_body(body, state.max_body_bytes).await?;
    let body: BuildBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid_request(None, format!("invalid dataset build: {e}")))?;
    let store = store(&state)?;
    let embedder = body.curation.near_duplicates.is_some().then_some(&state.gateway);
    let info = versions::build(store, &body.name, body.description.as_deref(), body.selection, body.curation, embedder)
        .await
        .map_err(api_error)?;
    Ok(json_response(StatusCode::CREATED, &info_json(&info)))
}

/// `GET /v1/datasets/{name}`.
pub async fn get(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let all = versions::versions(store(&state)?, &name).await.map_err(api_error)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "dataset", "name": name, "versions": all.iter().map(info_json).collect::<Vec<_>>()}),
    ))
}

/// `DELETE /v1/datasets/{name}`: the versions nothing used.
pub async fn delete(State(state): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<Response, ApiError> {
    may_change(&caller)?;
    let store = store(&state)?;
    versions::versions(store, &name).await.map_err(api_error)?;
    let deleted = store.delete_unused_dataset_versions(&name).await.map_err(|e| api_error(e.into()))?;
    let kept = store.dataset_versions(&name).await.map_err(|e| api_error(e.into()))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"name": name, "deleted_versions": deleted, "kept_versions": kept.iter().map(|v| json!({"version": v.version, "used_by": v.used_by})).collect::<Vec<_>>()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowsQuery {
    version: Option<i64>,
    split: Option<String>,
    #[serde(default = "minus_one")]
    after: i64,
    limit: Option<i64>,
}

fn minus_one() -> i64 {
    -1
}

fn parse_split(split: Option<&str>) -> Result<Option<Split>, ApiError> {
    split
        .map(|s| {
            Split::parse(s).ok_or_else(|| ApiError::invalid_request(Some("split".into()), format!("split {s:?}: expected train or validation")))
        })
        .transpose()
}

/// `GET /v1/datasets/{name}/rows`.
pub async fn rows(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<RowsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let store = store(&state)?;
    let info = versions::info(store, &name, q.version).await.map_err(api_error)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let split = parse_split(q.split.as_deref())?;
    let page = versions::page(store, &name, info.version, split, q.after, limit).await.map_err(api_error)?;
    let next = (page.len() as i64 == limit).then(|| page.last().map(|(idx, _)| *idx)).flatten();
    let data: Vec<Value> = page.iter().filter_map(|(_, row)| fungible_datasets::row_json(row).ok()).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "name": name, "version": info.version, "data": data, "next_after": next}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutRowsBody {
    rows: Vec<Value>,
}

/// `POST /v1/datasets/{name}/rows`: adds rows (or replaces rows with the same `id`).
pub async fn put_rows(State(state): State<AppState>, caller: Caller, Path(name): Path<String>, body: Body) -> Result<Response, ApiError> {
    may_change(&caller)?;
    let bytes = crate::read_body(body, state.max_body_bytes).await?;
    let body: PutRowsBody =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid_request(None, format!("invalid rows: {e}")))?;
    if body.rows.is_empty() {
        return Err(ApiError::invalid_request(Some("rows".into()), "no rows given"));
    }
    let rows = body
        .rows
        .into_iter()
        .enumerate()
        .map(|(i, v)| parse_row(v, Source::Manual).map_err(|e| ApiError::invalid_request(Some(format!("rows[{i}]")), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let count = rows.len();
    let info = versions::put_rows(store(&state)?, &name, rows).await.map_err(api_error)?;
    let mut out = info_json(&info);
    out["written"] = json!(count);
    Ok(json_response(StatusCode::OK, &out))
}

/// `DELETE /v1/datasets/{name}/rows/{row_id}`.
pub async fn delete_row(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, row_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    may_change(&caller)?;
    let info = versions::remove_row(store(&state)?, &name, &row_id).await.map_err(api_error)?;
    Ok(json_response(StatusCode::OK, &info_json(&info)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    format: String,
    version: Option<i64>,
    split: Option<String>,
    #[serde(default)]
    skip_invalid: bool,
}

/// `GET /v1/datasets/{name}/export`: JSONL (`application/jsonl`), or a 400 naming the rows
/// that break the format's rules.
pub async fn export(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let format = Format::parse(&q.format).ok_or_else(|| {
        let known: Vec<&str> = Format::ALL.iter().map(|f| f.as_str()).collect();
        ApiError::invalid_request(Some("format".into()), format!("unknown format {:?} (expected one of {})", q.format, known.join(", ")))
    })?;
    let store = store(&state)?;
    let info = versions::info(store, &name, q.version).await.map_err(api_error)?;
    let split = parse_split(q.split.as_deref())?;
    let rows = versions::rows(store, &name, info.version).await.map_err(api_error)?;
    let exported = fungible_datasets::export::export(&rows, split, format, q.skip_invalid).map_err(|e| ApiError {
        param: Some("format".into()),
        ..ApiError::invalid_request(None, format!("dataset {name:?} version {} cannot be exported as {}:\n{e}", info.version, format.as_str()))
    })?;
    let mut response = (StatusCode::OK, exported.jsonl).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jsonl"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}-v{}-{}.jsonl\"", info.version, format.as_str())) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&exported.skipped.len().to_string()) {
        headers.insert("x-fungible-skipped-rows", v);
    }
    Ok(response)
}

/// A row written by a person: OpenAI's SFT shape (`messages` ending with the answer,
/// `tools`), a preference pair (`input`, `preferred_output`, `non_preferred_output`), or
/// `prompt` and `completion`; with `fungible`'s other row fields where present. `source` is
/// what the row is marked as unless it says otherwise; the split is the row's when it gives
/// one.
pub fn parse_row(value: Value, source: Source) -> Result<versions::NewRow, String> {
    let Value::Object(mut obj) = value else {
        return Err("a row must be a JSON object".into());
    };
    let text = serde_json::to_string(&obj).unwrap_or_default();
    let (messages, tools, output, mut rejected) = if let Some(input) = obj.remove("input") {
        let Value::Object(mut input) = input else {
            return Err("input must be an object with messages".into());
        };
        let (messages, tools) = conversation(input.remove("messages"), input.remove("tools"))?;
        let output = single_answer(obj.remove("preferred_output"), "preferred_output")?;
        let rejected = single_answer(obj.remove("non_preferred_output"), "non_preferred_output")?;
        (messages, tools, output, Some(rejected))
    } else if let Some(messages) = obj.remove("messages") {
        let (mut messages, tools) = conversation(Some(messages), obj.remove("tools"))?;
        let output = match messages.pop() {
            Some(m) if m.role == Role::Assistant => m,
            _ => return Err("the last message must be the assistant's answer".into()),
        };
        (messages, tools, output, None)
    } else if let (Some(Value::String(prompt)), Some(Value::String(completion))) = (obj.remove("prompt"), obj.remove("completion")) {
        (vec![Message::text(Role::User, prompt)], Vec::new(), fungible_datasets::assistant(Some(completion), Vec::new()), None)
    } else {
        return Err("a row needs messages (ending with the assistant's answer), input with preferred_output and non_preferred_output, or prompt and completion".into());
    };
    if let Some(r) = obj.remove("rejected").filter(|r| !r.is_null()) {
        rejected = Some(single_answer(Some(Value::Array(vec![r])), "rejected")?);
    }
    let id = match obj.remove("id") {
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => id,
        Some(Value::String(_)) => return Err("id must be 1 to 128 characters".into()),
        Some(other) if !other.is_null() => return Err("id must be a string".into()),
        _ => fungible_datasets::stable_id(text.as_bytes()),
    };
    let source = match obj.remove("source").as_ref().and_then(Value::as_str) {
        Some("demonstration") => Source::Demonstration,
        Some("recorded") => Source::Recorded,
        Some("imported") => Source::Imported,
        Some("manual") => Source::Manual,
        Some(other) => return Err(format!("source {other:?}: expected demonstration, recorded, imported or manual")),
        None => source,
    };
    let mut example = Example::new(id, source, messages, tools, output);
    example.rejected = rejected;
    let split = match obj.remove("split") {
        Some(Value::String(split)) => Some(Split::parse(&split).ok_or_else(|| format!("split {split:?}: expected train or validation"))?),
        None | Some(Value::Null) => None,
        Some(_) => return Err("split must be train or validation".into()),
    };
    if let Some(Value::String(id)) = obj.remove("inference_id") {
        example.inference_id = Some(id);
    }
    match obj.remove("tags") {
        Some(Value::Object(tags)) => example.tags = tags,
        None | Some(Value::Null) => {}
        Some(_) => return Err("tags must be an object".into()),
    }
    match obj.remove("label") {
        Some(Value::Number(n)) => example.label = n.as_f64(),
        Some(Value::Bool(b)) => example.label = Some(if b { 1.0 } else { 0.0 }),
        None | Some(Value::Null) => {}
        Some(_) => return Err("label must be a number or a boolean".into()),
    }
    example.schema = obj.remove("schema").filter(|s| !s.is_null());
    if let Some(problem) = example.problem() {
        return Err(problem);
    }
    Ok((example, split))
}

/// Messages and tools, parsed as a Chat Completions request's.
fn conversation(messages: Option<Value>, tools: Option<Value>) -> Result<(Vec<Message>, Vec<fungible_types::Tool>), String> {
    let mut request = Map::new();
    request.insert("model".into(), json!("dataset"));
    request.insert("messages".into(), messages.ok_or("messages is required")?);
    if let Some(tools) = tools.filter(|t| !t.is_null()) {
        request.insert("tools".into(), tools);
    }
    let bytes = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    let parsed = crate::openai_chat::request::parse(&bytes).map_err(|e| e.message)?;
    Ok((parsed.messages, parsed.tools))
}

/// `[assistant message]`: one answer.
fn single_answer(value: Option<Value>, field: &str) -> Result<Message, String> {
    let list = match value {
        Some(Value::Array(list)) if list.len() == 1 => list,
        Some(Value::Array(_)) => return Err(format!("{field} must hold exactly one assistant message")),
        _ => return Err(format!("{field} is required (a list of one assistant message)")),
    };
    let mut request = Map::new();
    request.insert("model".into(), json!("dataset"));
    request.insert("messages".into(), Value::Array(list));
    let bytes = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    let mut parsed = crate::openai_chat::request::parse(&bytes).map_err(|e| format!("{field}: {}", e.message))?;
    match parsed.messages.pop() {
        Some(m) if m.role == Role::Assistant => Ok(m),
        _ => Err(format!("{field} must hold an assistant message")),
    }
}
