//! Inference records, their attempts and raw exchanges, and feedback: written in batches
//! (one transaction each, multi-row on PostgreSQL, `json_each` on SQLite) and read back.

use fungible_types::Usage;
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::record::{AttemptRecord, EncodedRecord, Feedback, FeedbackTarget, InferenceRecord, RawExchange};
use crate::store::{Backend, Store, StoreError, off_the_workers};

/// Filters and pagination for [`Store::list`]. Newest first; `before` is the id of the last
/// record of the previous page.
#[derive(Debug, Clone, Default)]
pub struct InferenceFilter {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub route: Option<String>,
    pub user: Option<String>,
    pub episode_id: Option<String>,
    /// The virtual key's id.
    pub key_id: Option<String>,
    /// Tags the inference must all have (`key=value`, or a bare `key` for `true`).
    pub tags: Vec<String>,
    /// `true`: only failures; `false`: only successes.
    pub errors: Option<bool>,
    /// Only failures of this class (`rate_limited`, `timeout`, ...).
    pub error_class: Option<String>,
    /// `true`: only inferences with feedback (on them or on their episode); `false`: only
    /// those without.
    pub has_feedback: Option<bool>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub before: Option<String>,
    pub limit: Option<u32>,
}

const INSERT_INFERENCE: &str = "INSERT INTO inferences (id, time_ms, inbound, requested_model, route, variant, provider, model, stream, error, request, response, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, cost, ttft_ms, latency_ms, user_id, tags, episode_id, key_id, cache_hit, truncated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)";
const INSERT_TAG: &str = "INSERT INTO inference_tags (inference_id, tag) VALUES ($1, $2)";
const INSERT_ATTEMPT: &str = "INSERT INTO attempts (inference_id, idx, provider, model, status, error, latency_ms, cost) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const INFERENCE_COLUMNS: &str = "id, time_ms, inbound, requested_model, route, variant, provider, model, stream, error, request, response, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, cost, ttft_ms, latency_ms, user_id, tags, episode_id, key_id, cache_hit, truncated";


impl Store {
    /// Writes `records` and their attempts in one transaction (their JSON values turned into
    /// text first: [`Store::insert_encoded`] is the one way records go in).
    pub async fn insert(&self, records: &[InferenceRecord]) -> Result<(), StoreError> {
        let encoded: Vec<EncodedRecord> = records.iter().cloned().map(EncodedRecord::from).collect();
        self.insert_encoded(&encoded).await
    }

    /// Writes `records` (their bodies already JSON text) and their attempts in one
    /// transaction.
    pub async fn insert_encoded(&self, records: &[EncodedRecord]) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            return self.insert_multi_row(records).await;
        }
        // SQLite: each table's rows as one JSON array bound to one statement. Statements
        // through sqlx are each a round trip to the connection's worker thread, which cost
        // more than the insert itself; `json_each` lets SQLite unpack the rows in C.
        let rows = off_the_workers(|| SqliteRows::of(records));
        let mut tx = self.pool.begin().await?;
        sqlx::query(&json_insert("inferences", INFERENCE_COLUMNS, 26))
            .bind(rows.inferences)
            .execute(&mut *tx)
            .await?;
        if let Some(tags) = rows.tags {
            sqlx::query(&json_insert("inference_tags", "inference_id, tag", 2))
                .bind(tags)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(attempts) = rows.attempts {
            sqlx::query(&json_insert(
                "attempts",
                "inference_id, idx, provider, model, status, error, latency_ms, cost",
                8,
            ))
            .bind(attempts)
            .execute(&mut *tx)
            .await?;
        }
        insert_raw(&mut tx, records).await?;
        crate::rollups::add_late(&mut tx, self.backend, records).await?;
        tx.commit().await?;
        Ok(())
    }

    /// PostgreSQL: one multi-row `INSERT` per table and chunk, since each statement is a
    /// network round trip (and is prepared per execution: see `cache_statements`).
    async fn insert_multi_row(&self, records: &[EncodedRecord]) -> Result<(), StoreError> {
        const ROWS: usize = 500;
        // PostgreSQL's text cannot hold NUL, which a client can put in a user, a model name
        // or a tag: such a record would fail its batch on every retry. (The bodies are JSON
        // text, where a NUL is escaped.)
        let cleaned: Vec<EncodedRecord>;
        let records = if records.iter().any(|e| has_nul(&e.record)) {
            cleaned = records
                .iter()
                .map(|e| EncodedRecord { record: without_nul(&e.record), bodies: e.bodies.clone() })
                .collect();
            &cleaned[..]
        } else {
            records
        };
        let mut tx = self.pool.begin().await?;
        for chunk in records.chunks(ROWS) {
            let sql = multi_row(INSERT_INFERENCE, 26, chunk.len());
            let mut query = sqlx::query(&sql).persistent(false);
            for EncodedRecord { record: r, bodies } in chunk {
                query = query
                    .bind(r.id.as_str())
                    .bind(r.time_ms)
                    .bind(r.inbound.as_str())
                    .bind(r.requested_model.as_str())
                    .bind(r.route.as_deref())
                    .bind(r.variant.as_deref())
                    .bind(r.provider.as_deref())
                    .bind(r.model.as_deref())
                    .bind(i64::from(r.stream))
                    .bind(r.error.as_deref())
                    .bind(bodies.request.as_str())
                    .bind(bodies.response.as_deref())
                    .bind(r.usage.input_tokens as i64)
                    .bind(r.usage.output_tokens as i64)
                    .bind(r.usage.cache_read_tokens as i64)
                    .bind(r.usage.cache_write_tokens as i64)
                    .bind(r.usage.reasoning_tokens as i64)
                    .bind(r.cost)
                    .bind(r.ttft_ms)
                    .bind(r.latency_ms)
                    .bind(r.user.as_deref())
                    .bind(serde_json::to_string(&r.tags).unwrap_or_else(|_| "{}".into()))
                    .bind(r.episode_id.as_deref())
                    .bind(r.key_id.as_deref())
                    .bind(i64::from(r.cache_hit))
                    .bind(i64::from(r.truncated || bodies.truncated));
            }
            query.execute(&mut *tx).await?;
        }
        let tags: Vec<(&str, String)> = records
            .iter()
            .map(|e| &e.record)
            .flat_map(|r| r.tag_list().into_iter().map(move |t| (r.id.as_str(), t)))
            .collect();
        for chunk in tags.chunks(ROWS) {
            let sql = multi_row(INSERT_TAG, 2, chunk.len());
            let mut query = sqlx::query(&sql).persistent(false);
            for (id, tag) in chunk {
                query = query.bind(*id).bind(tag.as_str());
            }
            query.execute(&mut *tx).await?;
        }
        let attempts: Vec<(&str, usize, &AttemptRecord)> = records
            .iter()
            .map(|e| &e.record)
            .flat_map(|r| {
                r.attempts
                    .iter()
                    .enumerate()
                    .map(move |(i, a)| (r.id.as_str(), i, a))
            })
            .collect();
        for chunk in attempts.chunks(ROWS) {
            let sql = multi_row(INSERT_ATTEMPT, 8, chunk.len());
            let mut query = sqlx::query(&sql).persistent(false);
            for (id, i, a) in chunk {
                query = query
                    .bind(*id)
                    .bind(*i as i64)
                    .bind(a.provider.as_str())
                    .bind(a.model.as_str())
                    .bind(a.status.as_str())
                    .bind(a.error.as_deref())
                    .bind(a.latency_ms)
                    .bind(a.cost);
            }
            query.execute(&mut *tx).await?;
        }
        insert_raw(&mut tx, records).await?;
        crate::rollups::add_late(&mut tx, self.backend, records).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One inference with its attempts.
    pub async fn get(&self, id: &str) -> Result<Option<InferenceRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {INFERENCE_COLUMNS} FROM inferences WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut record = inference_from_row(&row)?;
        let attempts = sqlx::query("SELECT provider, model, status, error, latency_ms, cost FROM attempts WHERE inference_id = $1 ORDER BY idx")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        record.attempts = attempts
            .iter()
            .map(|a| -> Result<AttemptRecord, sqlx::Error> {
                Ok(AttemptRecord {
                    provider: a.try_get(0)?,
                    model: a.try_get(1)?,
                    status: a
                        .try_get::<String, _>(2)?
                        .parse()
                        .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
                    error: a.try_get(3)?,
                    latency_ms: a.try_get(4)?,
                    cost: a.try_get(5)?,
                })
            })
            .collect::<Result<_, _>>()?;
        let raw = sqlx::query("SELECT provider, request, response, truncated FROM raw_bodies WHERE inference_id = $1 ORDER BY idx")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        record.raw = raw
            .iter()
            .map(|r| -> Result<RawExchange, sqlx::Error> {
                Ok(RawExchange {
                    provider: r.try_get(0)?,
                    request: r.try_get(1)?,
                    response: r.try_get(2)?,
                    truncated: r.try_get::<i64, _>(3)? != 0,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(record))
    }

    /// Inferences matching `filter`, newest first, without their attempts.
    pub async fn list(&self, filter: &InferenceFilter) -> Result<Vec<InferenceRecord>, StoreError> {
        let mut binds: Vec<Bind> = Vec::new();
        // The first tag drives the query: its index entries, in id order, join the rows, so
        // the newest page of a tag half the inferences have reads a page of rows (an `IN`
        // list of it would be built whole first).
        let (mut sql, order) = match filter.tags.first() {
            Some(tag) => {
                binds.push(Bind::Text(tag.clone()));
                (
                    format!("SELECT {INFERENCE_COLUMNS} FROM inference_tags t0 JOIN inferences ON inferences.id = t0.inference_id WHERE t0.tag = $1"),
                    "t0.inference_id",
                )
            }
            None => (format!("SELECT {INFERENCE_COLUMNS} FROM inferences WHERE 1 = 1"), "id"),
        };
        let mut text = |sql: &mut String, column: &str, value: &Option<String>| {
            if let Some(v) = value {
                binds.push(Bind::Text(v.clone()));
                sql.push_str(&format!(" AND {column} = ${}", binds.len()));
            }
        };
        text(&mut sql, "provider", &filter.provider);
        text(&mut sql, "model", &filter.model);
        text(&mut sql, "route", &filter.route);
        text(&mut sql, "user_id", &filter.user);
        text(&mut sql, "episode_id", &filter.episode_id);
        text(&mut sql, "key_id", &filter.key_id);
        text(&mut sql, "error", &filter.error_class);
        for tag in filter.tags.iter().skip(1) {
            binds.push(Bind::Text(tag.clone()));
            sql.push_str(&format!(" AND id IN (SELECT inference_id FROM inference_tags WHERE tag = ${})", binds.len()));
        }
        if let Some(before) = &filter.before {
            binds.push(Bind::Text(before.clone()));
            sql.push_str(&format!(" AND id < ${}", binds.len()));
        }
        match filter.errors {
            Some(true) => sql.push_str(" AND error IS NOT NULL"),
            Some(false) => sql.push_str(" AND error IS NULL"),
            None => {}
        }
        if let Some(has) = filter.has_feedback {
            let not = if has { "" } else { "NOT " };
            sql.push_str(&format!(
                " AND {not}EXISTS (SELECT 1 FROM feedback WHERE (feedback.target = 'inference' AND feedback.target_id = inferences.id) OR (feedback.target = 'episode' AND feedback.target_id = inferences.episode_id))"
            ));
        }
        if let Some(since) = filter.since_ms {
            binds.push(Bind::Int(since));
            sql.push_str(&format!(" AND time_ms >= ${}", binds.len()));
        }
        if let Some(until) = filter.until_ms {
            binds.push(Bind::Int(until));
            sql.push_str(&format!(" AND time_ms < ${}", binds.len()));
        }
        let limit = filter.limit.unwrap_or(50).clamp(1, 1000);
        sql.push_str(&format!(" ORDER BY {order} DESC LIMIT {limit}"));
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = match b {
                Bind::Text(s) => query.bind(s),
                Bind::Int(i) => query.bind(i),
            };
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(inference_from_row).collect()
    }

    /// Whether an inference (or, for an episode, any inference of it) is recorded.
    pub async fn exists(&self, target: FeedbackTarget, id: &str) -> Result<bool, StoreError> {
        let sql = match target {
            FeedbackTarget::Inference => "SELECT 1 FROM inferences WHERE id = $1 LIMIT 1",
            FeedbackTarget::Episode => "SELECT 1 FROM inferences WHERE episode_id = $1 LIMIT 1",
        };
        Ok(sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    pub async fn insert_feedback(&self, f: &Feedback) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO feedback (id, time_ms, target, target_id, boolean, score, comment, demonstration) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .persistent(self.cache_statements())
            .bind(&f.id)
            .bind(f.time_ms)
            .bind(f.target.as_str())
            .bind(&f.target_id)
            .bind(f.boolean.map(i64::from))
            .bind(f.score)
            .bind(&f.comment)
            .bind(f.demonstration.as_ref().map(|v| serde_json::to_string(v).unwrap_or_default()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Feedback on `target_id` (an inference or an episode), oldest first.
    pub async fn feedback(&self, target_id: &str) -> Result<Vec<Feedback>, StoreError> {
        let rows = sqlx::query("SELECT id, time_ms, target, target_id, boolean, score, comment, demonstration FROM feedback WHERE target_id = $1 ORDER BY id")
            .bind(target_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let target: String = r.try_get(2)?;
                let boolean: Option<i64> = r.try_get(4)?;
                let demonstration: Option<String> = r.try_get(7)?;
                Ok(Feedback {
                    id: r.try_get(0)?,
                    time_ms: r.try_get(1)?,
                    target: if target == "episode" {
                        FeedbackTarget::Episode
                    } else {
                        FeedbackTarget::Inference
                    },
                    target_id: r.try_get(3)?,
                    boolean: boolean.map(|b| b != 0),
                    score: r.try_get(5)?,
                    comment: r.try_get(6)?,
                    demonstration: demonstration
                        .map(|d| json("demonstration", &d))
                        .transpose()?,
                })
            })
            .collect()
    }
}

/// `insert` (a one-row `INSERT ... VALUES (...)`) for `rows` rows of `columns` parameters.
fn multi_row(insert: &str, columns: usize, rows: usize) -> String {
    let head = insert.split(" VALUES ").next().unwrap_or(insert);
    let mut sql = format!("{head} VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", row * columns + c + 1));
        }
        sql.push(')');
    }
    sql
}

/// Whether a text column of `r` (or a tag) holds a NUL character. JSON columns are
/// escaped (`\u0000`), so only their tags matter.
fn has_nul(r: &InferenceRecord) -> bool {
    let nul = |s: &str| s.contains('\0');
    let opt = |s: &Option<String>| s.as_deref().is_some_and(nul);
    nul(&r.id)
        || nul(&r.inbound)
        || nul(&r.requested_model)
        || [&r.route, &r.variant, &r.provider, &r.model, &r.error, &r.user, &r.episode_id, &r.key_id]
            .into_iter()
            .any(opt)
        || r.attempts.iter().any(|a| nul(&a.provider) || nul(&a.model) || opt(&a.error))
        || r.raw.iter().any(|x| nul(&x.provider) || nul(&x.request) || nul(&x.response))
        || r.tag_list().iter().any(|t| nul(t))
}

/// `r` with every NUL in its text replaced by U+FFFD, as PostgreSQL stores it.
fn without_nul(r: &InferenceRecord) -> InferenceRecord {
    fn clean(s: &mut String) {
        if s.contains('\0') {
            *s = s.replace('\0', "\u{FFFD}");
        }
    }
    fn clean_value(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => clean(s),
            serde_json::Value::Array(items) => items.iter_mut().for_each(clean_value),
            serde_json::Value::Object(map) => {
                let entries = std::mem::take(map);
                for (mut k, mut v) in entries {
                    clean(&mut k);
                    clean_value(&mut v);
                    map.insert(k, v);
                }
            }
            _ => {}
        }
    }
    let mut r = r.clone();
    for s in [&mut r.id, &mut r.inbound, &mut r.requested_model] {
        clean(s);
    }
    for s in [&mut r.route, &mut r.variant, &mut r.provider, &mut r.model, &mut r.error, &mut r.user, &mut r.episode_id, &mut r.key_id]
        .into_iter()
        .flatten()
    {
        clean(s);
    }
    for a in &mut r.attempts {
        for s in [&mut a.provider, &mut a.model].into_iter().chain(a.error.as_mut()) {
            clean(s);
        }
    }
    for x in &mut r.raw {
        for s in [&mut x.provider, &mut x.request, &mut x.response] {
            clean(s);
        }
    }
    clean_value(&mut r.tags);
    r
}

/// SQLite: an `INSERT` of the rows in `$1`, a JSON array of rows that are arrays of
/// `columns` values. Each row is turned into JSONB once (a materialised CTE): `json_each`'s
/// `value` is rendered anew as text each time it is read, once per column otherwise.
fn json_insert(table: &str, names: &str, columns: usize) -> String {
    let values = (0..columns).map(|i| format!("r ->> {i}")).collect::<Vec<_>>().join(", ");
    format!(
        "WITH batch(r) AS MATERIALIZED (SELECT jsonb(value) FROM json_each($1)) \
         INSERT INTO {table} ({names}) SELECT {values} FROM batch"
    )
}

/// A batch's rows for SQLite's `json_each`: per table, one JSON array of rows, each row an
/// array in the table's column order. Text columns that hold JSON (request, response, tags)
/// are JSON strings; SQLite reads numbers back exactly (shortest round-trip form). Written
/// straight from the records: no JSON value tree is built.
struct SqliteRows {
    inferences: String,
    tags: Option<String>,
    attempts: Option<String>,
}

/// One `inferences` row, serialised as a JSON array in [`INFERENCE_COLUMNS`]' order.
#[derive(Serialize)]
struct InferenceRow<'a>(
    &'a str,
    i64,
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    i64,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<f64>,
    Option<f64>,
    f64,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    i64,
    i64,
);

impl SqliteRows {
    fn of(records: &[EncodedRecord]) -> SqliteRows {
        let mut inferences = Vec::with_capacity(records.len() * 2048);
        let mut tags: Vec<(&str, String)> = Vec::new();
        let mut attempts = Vec::new();
        inferences.push(b'[');
        for (n, EncodedRecord { record: r, bodies }) in records.iter().enumerate() {
            if n > 0 {
                inferences.push(b',');
            }
            // A map of strings and JSON values: serialising it cannot fail.
            let tags_text = serde_json::to_string(&r.tags).unwrap_or_default();
            let row = InferenceRow(
                &r.id,
                r.time_ms,
                &r.inbound,
                &r.requested_model,
                r.route.as_deref(),
                r.variant.as_deref(),
                r.provider.as_deref(),
                r.model.as_deref(),
                i64::from(r.stream),
                r.error.as_deref(),
                &bodies.request,
                bodies.response.as_deref(),
                r.usage.input_tokens as i64,
                r.usage.output_tokens as i64,
                r.usage.cache_read_tokens as i64,
                r.usage.cache_write_tokens as i64,
                r.usage.reasoning_tokens as i64,
                r.cost,
                r.ttft_ms,
                r.latency_ms,
                r.user.as_deref(),
                if tags_text.is_empty() { "{}" } else { &tags_text },
                r.episode_id.as_deref(),
                r.key_id.as_deref(),
                i64::from(r.cache_hit),
                i64::from(r.truncated || bodies.truncated),
            );
            let _ = serde_json::to_writer(&mut inferences, &row);
            for tag in r.tag_list() {
                tags.push((&r.id, tag));
            }
            for (i, a) in r.attempts.iter().enumerate() {
                attempts.push((&r.id, i as i64, &a.provider, &a.model, a.status.as_str(), &a.error, a.latency_ms, a.cost));
            }
        }
        inferences.push(b']');
        let array = |text: Result<String, serde_json::Error>| text.ok();
        SqliteRows {
            // Serialised from `&str`s and numbers: valid UTF-8.
            inferences: String::from_utf8(inferences).unwrap_or_default(),
            tags: (!tags.is_empty()).then(|| array(serde_json::to_string(&tags))).flatten(),
            attempts: (!attempts.is_empty()).then(|| array(serde_json::to_string(&attempts))).flatten(),
        }
    }
}

enum Bind {
    Text(String),
    Int(i64),
}

fn json(field: &'static str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Json { field, source })
}

/// The raw bodies of `records` (only with `[store] raw_bodies` on), in `tx`.
async fn insert_raw(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    records: &[EncodedRecord],
) -> Result<(), StoreError> {
    for r in records.iter().map(|e| &e.record) {
        for (i, raw) in r.raw.iter().enumerate() {
            sqlx::query("INSERT INTO raw_bodies (inference_id, idx, provider, request, response, truncated) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(&r.id)
                .bind(i as i64)
                .bind(&raw.provider)
                .bind(&raw.request)
                .bind(&raw.response)
                .bind(i64::from(raw.truncated))
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

fn inference_from_row(r: &AnyRow) -> Result<InferenceRecord, StoreError> {
    let request: String = r.try_get(10)?;
    let response: Option<String> = r.try_get(11)?;
    let tags: String = r.try_get(21)?;
    let stream: i64 = r.try_get(8)?;
    let cache_hit: i64 = r.try_get(24)?;
    let truncated: i64 = r.try_get(25)?;
    let tok = |i: usize| -> Result<u64, sqlx::Error> { Ok(r.try_get::<i64, _>(i)? as u64) };
    Ok(InferenceRecord {
        id: r.try_get(0)?,
        time_ms: r.try_get(1)?,
        inbound: r.try_get(2)?,
        requested_model: r.try_get(3)?,
        route: r.try_get(4)?,
        variant: r.try_get(5)?,
        provider: r.try_get(6)?,
        model: r.try_get(7)?,
        stream: stream != 0,
        error: r.try_get(9)?,
        request: json("request", &request)?,
        response: response.map(|t| json("response", &t)).transpose()?,
        usage: Usage {
            input_tokens: tok(12)?,
            output_tokens: tok(13)?,
            cache_read_tokens: tok(14)?,
            cache_write_tokens: tok(15)?,
            reasoning_tokens: tok(16)?,
        },
        cost: r.try_get(17)?,
        ttft_ms: r.try_get(18)?,
        latency_ms: r.try_get(19)?,
        user: r.try_get(20)?,
        tags: json("tags", &tags)?,
        episode_id: r.try_get(22)?,
        attempts: Vec::new(),
        key_id: r.try_get(23)?,
        cache_hit: cache_hit != 0,
        truncated: truncated != 0,
        raw: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_row_numbers_every_parameter() {
        assert_eq!(
            multi_row("INSERT INTO t (a, b) VALUES ($1, $2)", 2, 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
    }
}
