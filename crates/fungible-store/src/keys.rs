//! Virtual keys and their spend: the rows behind `/admin/keys` and the auth middleware.
//!
//! A key is stored only as the SHA-256 of its text (`hash`, hex) and a short `prefix` shown
//! in lists; the key itself is shown once, at creation, and never stored. Spend is kept per
//! key and budget period (`2026-11-30`, `2026-11`, `total`) and only ever grows, by
//! [`Store::add_key_spend`], so several gateway instances may add to it at once.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::store::{Backend, Store, StoreError};

/// How often a key's budget starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// Each UTC day.
    Daily,
    /// Each UTC calendar month.
    Monthly,
    /// Never: the budget is for the key's whole life.
    Total,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Monthly => "monthly",
            BudgetPeriod::Total => "total",
        }
    }

    pub fn parse(text: &str) -> Option<BudgetPeriod> {
        Some(match text {
            "daily" => BudgetPeriod::Daily,
            "monthly" => BudgetPeriod::Monthly,
            "total" => BudgetPeriod::Total,
            _ => return None,
        })
    }
}

/// What a virtual key may do besides nothing. The names are stored and shown: they never
/// change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Call models: chat, responses, messages, embeddings, token counts, the model list.
    #[serde(rename = "inference")]
    Inference,
    /// Read its own inferences and stats, and give feedback on its own inferences.
    #[serde(rename = "read:own")]
    ReadOwn,
    /// Read every key's inferences and stats, `/metrics` and `/v1/routes`; give feedback on
    /// any inference.
    #[serde(rename = "read:all")]
    ReadAll,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Inference, Scope::ReadOwn, Scope::ReadAll];
    /// What a key gets when it is created without `scopes` (and what keys created before
    /// scopes existed have).
    pub const DEFAULT: [Scope; 2] = [Scope::Inference, Scope::ReadOwn];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Inference => "inference",
            Scope::ReadOwn => "read:own",
            Scope::ReadAll => "read:all",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// A spend limit in USD per period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBudget {
    pub usd: f64,
    pub period: BudgetPeriod,
}

/// One virtual key, as stored. Serializes without its hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyRecord {
    pub id: String,
    /// SHA-256 of the key text, hex. Never shown.
    #[serde(skip_serializing)]
    pub hash: String,
    /// The first characters of the key, for recognising it in lists.
    pub prefix: String,
    pub name: Option<String>,
    /// Models and routes the key may use (`openai/*`, `gpt-cheap`); empty: every model.
    pub models: Vec<String>,
    /// Requests per minute; `None`: no limit.
    pub rpm: Option<u64>,
    /// Tokens (input + output) per minute; `None`: no limit.
    pub tpm: Option<u64>,
    pub budget: Option<KeyBudget>,
    /// Unix milliseconds after which the key is refused.
    pub expires_ms: Option<i64>,
    pub tags: Vec<String>,
    /// What the key may do (see [`Scope`]).
    pub scopes: Vec<Scope>,
    pub metadata: Map<String, Value>,
    pub created_ms: i64,
    /// When the key was revoked; a revoked key is refused.
    pub revoked_ms: Option<i64>,
}

const KEY_COLUMNS: &str = "id, hash, prefix, name, models, rpm, tpm, budget_usd, budget_period, expires_ms, tags, metadata, created_ms, revoked_ms, scopes";

fn json_text<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn key_from_row(row: &AnyRow) -> Result<KeyRecord, StoreError> {
    let json = |field: &'static str| -> Result<Value, StoreError> {
        let text: String = row.try_get(field)?;
        serde_json::from_str(&text).map_err(|source| StoreError::Json { field, source })
    };
    let budget_usd: Option<f64> = row.try_get("budget_usd")?;
    let period: Option<String> = row.try_get("budget_period")?;
    let budget = match (budget_usd, period.as_deref().and_then(BudgetPeriod::parse)) {
        (Some(usd), Some(period)) => Some(KeyBudget { usd, period }),
        _ => None,
    };
    let strings = |v: Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let rpm: Option<i64> = row.try_get("rpm")?;
    let tpm: Option<i64> = row.try_get("tpm")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        hash: row.try_get("hash")?,
        prefix: row.try_get("prefix")?,
        name: row.try_get("name")?,
        models: strings(json("models")?),
        rpm: rpm.map(|n| n.max(0) as u64),
        tpm: tpm.map(|n| n.max(0) as u64),
        budget,
        expires_ms: row.try_get("expires_ms")?,
        tags: strings(json("tags")?),
        metadata: match json("metadata")? {
            Value::Object(map) => map,
            _ => Map::new(),
        },
        created_ms: row.try_get("created_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
        // NULL: a key from before scopes, with the default ones. An unknown name (from a
        // newer version) grants nothing.
        scopes: match row.try_get::<Option<String>, _>("scopes")? {
            None => Scope::DEFAULT.to_vec(),
            Some(text) => {
                let names: Value = serde_json::from_str(&text).map_err(|source| StoreError::Json { field: "scopes", source })?;
                strings(names).iter().filter_map(|s| Scope::parse(s)).collect()
            }
        },
    })
}

impl Store {
    /// Stores a new key.
    pub async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO virtual_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        );
        // Nullable floats: prepared per execution on PostgreSQL (see `cache_statements`).
        sqlx::query(&sql)
            .persistent(self.backend == Backend::Sqlite)
            .bind(&key.id)
            .bind(&key.hash)
            .bind(&key.prefix)
            .bind(&key.name)
            .bind(json_text(&key.models))
            .bind(key.rpm.map(|n| n as i64))
            .bind(key.tpm.map(|n| n as i64))
            .bind(key.budget.map(|b| b.usd))
            .bind(key.budget.map(|b| b.period.as_str()))
            .bind(key.expires_ms)
            .bind(json_text(&key.tags))
            .bind(json_text(&key.metadata))
            .bind(key.created_ms)
            .bind(key.revoked_ms)
            .bind(json_text(&key.scopes))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Replaces the settings of key `key.id` (everything but its id, hash, prefix and
    /// creation time); `false` when there is no such key.
    pub async fn update_key(&self, key: &KeyRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE virtual_keys SET name = $1, models = $2, rpm = $3, tpm = $4, budget_usd = $5, budget_period = $6, expires_ms = $7, tags = $8, metadata = $9, revoked_ms = $10, scopes = $11 WHERE id = $12",
        )
        .persistent(self.backend == Backend::Sqlite)
        .bind(&key.name)
        .bind(json_text(&key.models))
        .bind(key.rpm.map(|n| n as i64))
        .bind(key.tpm.map(|n| n as i64))
        .bind(key.budget.map(|b| b.usd))
        .bind(key.budget.map(|b| b.period.as_str()))
        .bind(key.expires_ms)
        .bind(json_text(&key.tags))
        .bind(json_text(&key.metadata))
        .bind(key.revoked_ms)
        .bind(json_text(&key.scopes))
        .bind(&key.id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Marks a key revoked at `now_ms` (a key revoked before stays revoked at its first
    /// time); `false` when there is no such key.
    pub async fn revoke_key(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE virtual_keys SET revoked_ms = COALESCE(revoked_ms, $1) WHERE id = $2",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The key whose text hashes to `hash`.
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM virtual_keys WHERE hash = $1");
        let row = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    pub async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM virtual_keys WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(key_from_row).transpose()
    }

    /// Every key, oldest first.
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM virtual_keys ORDER BY created_ms, id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(key_from_row).collect()
    }

    /// Adds `usd` to what key `key_id` spent in `period` (a period name such as
    /// `2026-11-30`, `2026-11` or `total`). Atomic: instances may add at once.
    pub async fn add_key_spend(
        &self,
        key_id: &str,
        period: &str,
        usd: f64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO key_spend (key_id, period, spend) VALUES ($1, $2, $3) ON CONFLICT (key_id, period) DO UPDATE SET spend = key_spend.spend + excluded.spend",
        )
        .bind(key_id)
        .bind(period)
        .bind(usd)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What key `key_id` spent in `period` (0 when nothing was recorded).
    pub async fn key_spend(&self, key_id: &str, period: &str) -> Result<f64, StoreError> {
        let spend: Option<f64> =
            sqlx::query_scalar("SELECT spend FROM key_spend WHERE key_id = $1 AND period = $2")
                .bind(key_id)
                .bind(period)
                .fetch_optional(&self.pool)
                .await?;
        Ok(spend.unwrap_or(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> Store {
        let dir = std::env::temp_dir().join("fungible-store-key-tests");
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(format!("{}.db", crate::new_id()));
        Store::open(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .expect("store opens")
    }

    fn key(id: &str) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            hash: format!("hash-{id}"),
            prefix: "fk-abc".into(),
            name: Some("ci".into()),
            models: vec!["openai/*".into()],
            rpm: Some(10),
            tpm: None,
            budget: Some(KeyBudget {
                usd: 1.5,
                period: BudgetPeriod::Monthly,
            }),
            expires_ms: Some(123),
            tags: vec!["team=a".into()],
            scopes: vec![Scope::Inference, Scope::ReadAll],
            metadata: serde_json::json!({"owner": "x"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            created_ms: 1,
            revoked_ms: None,
        }
    }

    #[tokio::test]
    async fn keys_round_trip_update_and_revoke() {
        let store = store().await;
        let k = key("k1");
        store.insert_key(&k).await.unwrap();
        assert_eq!(store.key_by_hash("hash-k1").await.unwrap(), Some(k.clone()));
        assert_eq!(store.key_by_hash("nope").await.unwrap(), None);
        let mut changed = k.clone();
        changed.rpm = None;
        changed.budget = None;
        assert!(store.update_key(&changed).await.unwrap());
        assert_eq!(store.key("k1").await.unwrap(), Some(changed));
        assert!(store.revoke_key("k1", 50).await.unwrap());
        assert!(store.revoke_key("k1", 60).await.unwrap());
        assert_eq!(store.key("k1").await.unwrap().unwrap().revoked_ms, Some(50));
        assert!(!store.revoke_key("missing", 1).await.unwrap());
        assert_eq!(store.list_keys().await.unwrap().len(), 1);
        let shown = serde_json::to_value(&k).unwrap();
        assert!(shown.get("hash").is_none(), "{shown}");
    }

    #[tokio::test]
    async fn spend_adds_up_per_period() {
        let store = store().await;
        assert_eq!(store.key_spend("k1", "2026-11").await.unwrap(), 0.0);
        store.add_key_spend("k1", "2026-11", 0.25).await.unwrap();
        store.add_key_spend("k1", "2026-11", 0.5).await.unwrap();
        store.add_key_spend("k1", "2026-12", 1.0).await.unwrap();
        assert_eq!(store.key_spend("k1", "2026-11").await.unwrap(), 0.75);
        assert_eq!(store.key_spend("k1", "2026-12").await.unwrap(), 1.0);
    }
}
