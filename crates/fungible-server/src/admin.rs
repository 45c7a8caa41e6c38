//! The admin API: virtual keys. `POST /admin/keys` creates one (its text is in that answer
//! and nowhere else, ever), `GET /admin/keys` lists them, `GET /admin/keys/{id}` shows one
//! with its spend in the current budget period, `PATCH /admin/keys/{id}` changes its
//! settings (`null` clears one) and `DELETE /admin/keys/{id}` revokes it. A key's `scopes`
//! say what it may do (default `["inference", "read:own"]`; see `fungible_store::Scope`).
//!
//! `auth::layer` lets only the admin key in. Errors are in OpenAI's shape.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use fungible_access::{Access, BudgetPeriod, KeyBudget};
use fungible_store::{KeyRecord, Scope};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::ApiError;

/// The settings a key is created or patched with. In a patch, a missing field is left as it
/// is and `null` clears it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySettings {
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    rpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    budget: Option<Option<BudgetSettings>>,
    /// Unix milliseconds.
    #[serde(default, deserialize_with = "present")]
    expires_ms: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    tags: Option<Option<Vec<String>>>,
    /// `inference`, `read:own`, `read:all`; `null`: the defaults.
    #[serde(default, deserialize_with = "present")]
    scopes: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "present")]
    metadata: Option<Option<Map<String, Value>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetSettings {
    usd: f64,
    period: BudgetPeriod,
}

/// A field that is present (possibly `null`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn access(state: &AppState) -> Result<&Access, ApiError> {
    state.auth.access.as_deref().ok_or_else(|| ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "service_unavailable_error",
        ..ApiError::invalid_request(None, "the admin API needs the store ([store] is disabled)")
    })
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    tracing::error!("admin: {e}");
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "service_unavailable_error",
        ..ApiError::invalid_request(None, "the key store is unavailable")
    }
}

async fn parse(body: Body, limit: usize) -> Result<KeySettings, ApiError> {
    let bytes = crate::read_body(body, limit).await?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then(|| path.clone());
        ApiError::invalid_request(
            param,
            format!("invalid key settings at {path}: {}", e.inner()),
        )
    })
}

/// Applies `settings` to `key`, validating each.
fn apply(key: &mut KeyRecord, settings: KeySettings) -> Result<(), ApiError> {
    let bad = |field: &str, message: &str| {
        ApiError::invalid_request(Some(field.to_owned()), format!("{field}: {message}"))
    };
    if let Some(name) = settings.name {
        key.name = name.filter(|n| !n.is_empty());
    }
    if let Some(models) = settings.models {
        let models = models.unwrap_or_default();
        if models.iter().any(|m| m.trim().is_empty()) {
            return Err(bad("models", "a model pattern must not be empty"));
        }
        key.models = models;
    }
    if let Some(rpm) = settings.rpm {
        if rpm == Some(0) {
            return Err(bad("rpm", "must be at least 1 (null: no limit)"));
        }
        key.rpm = rpm;
    }
    if let Some(tpm) = settings.tpm {
        if tpm == Some(0) {
            return Err(bad("tpm", "must be at least 1 (null: no limit)"));
        }
        key.tpm = tpm;
    }
    if let Some(budget) = settings.budget {
        if let Some(b) = &budget
            && !(b.usd.is_finite() && b.usd >= 0.0)
        {
            return Err(bad(
                "budget.usd",
                "must be a non-negative number of US dollars",
            ));
        }
        key.budget = budget.map(|b| KeyBudget {
            usd: b.usd,
            period: b.period,
        });
    }
    if let Some(expires) = settings.expires_ms {
        key.expires_ms = expires;
    }
    if let Some(tags) = settings.tags {
        key.tags = tags.unwrap_or_default();
    }
    if let Some(scopes) = settings.scopes {
        key.scopes = match scopes {
            None => Scope::DEFAULT.to_vec(),
            Some(names) => {
                let mut scopes = Vec::with_capacity(names.len());
                for name in &names {
                    let scope = Scope::parse(name).ok_or_else(|| {
                        let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                        bad("scopes", &format!("unknown scope {name:?}; scopes are {}", known.join(", ")))
                    })?;
                    if !scopes.contains(&scope) {
                        scopes.push(scope);
                    }
                }
                scopes.sort();
                scopes
            }
        };
    }
    if let Some(metadata) = settings.metadata {
        key.metadata = metadata.unwrap_or_default();
    }
    Ok(())
}

fn reply(status: StatusCode, value: &Value) -> Response {
    crate::json_response(status, serde_json::to_vec(value).unwrap_or_default())
}

async fn shown(access: &Access, key: &KeyRecord) -> Result<Value, ApiError> {
    let spend = access.spend(key).await.map_err(store_error)?;
    let mut value = serde_json::to_value(key).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("object".into(), json!("key"));
        map.insert("spend".into(), json!(spend));
    }
    Ok(value)
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no key with id {id:?}"))
}

/// `POST /admin/keys`.
pub async fn create(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let access = access(&state)?;
    let settings = parse(body, state.max_body_bytes).await?;
    let text = fungible_access::key::generate();
    let mut key = KeyRecord {
        id: fungible_access::key::new_id(),
        hash: fungible_access::key::hash(&text),
        prefix: fungible_access::key::prefix(&text),
        name: None,
        models: Vec::new(),
        rpm: None,
        tpm: None,
        budget: None,
        expires_ms: None,
        tags: Vec::new(),
        scopes: Scope::DEFAULT.to_vec(),
        metadata: Map::new(),
        created_ms: fungible_access::now_ms(),
        revoked_ms: None,
    };
    apply(&mut key, settings)?;
    access.store().insert_key(&key).await.map_err(store_error)?;
    tracing::info!(key = %key.id, "admin: key created");
    let mut value = shown(access, &key).await?;
    if let Value::Object(map) = &mut value {
        map.insert("key".into(), Value::String(text));
    }
    Ok(reply(StatusCode::CREATED, &value))
}

/// `GET /admin/keys`.
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let access = access(&state)?;
    let keys = access.store().list_keys().await.map_err(store_error)?;
    let mut data = Vec::with_capacity(keys.len());
    for key in &keys {
        data.push(shown(access, key).await?);
    }
    Ok(reply(
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
    ))
}

/// `GET /admin/keys/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let access = access(&state)?;
    let key = access
        .store()
        .key(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found(&id))?;
    Ok(reply(StatusCode::OK, &shown(access, &key).await?))
}

/// `PATCH /admin/keys/{id}`.
pub async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let access = access(&state)?;
    let settings = parse(body, state.max_body_bytes).await?;
    let mut key = access
        .store()
        .key(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found(&id))?;
    apply(&mut key, settings)?;
    if !access.store().update_key(&key).await.map_err(store_error)? {
        return Err(not_found(&id));
    }
    access.forget();
    tracing::info!(key = %key.id, "admin: key updated");
    Ok(reply(StatusCode::OK, &shown(access, &key).await?))
}

/// `DELETE /admin/keys/{id}`: revokes the key (it stays listed, refused everywhere).
pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let access = access(&state)?;
    if !access
        .store()
        .revoke_key(&id, fungible_access::now_ms())
        .await
        .map_err(store_error)?
    {
        return Err(not_found(&id));
    }
    access.forget();
    tracing::info!(key = %id, "admin: key revoked");
    Ok(reply(
        StatusCode::OK,
        &json!({"id": id, "object": "key", "revoked": true}),
    ))
}
