//! [`Store`]: the database behind the recorder and the read-back API. The only SQL in the
//! workspace is in this crate: here, [`crate::migrations`], `keys.rs` and `rollups.rs`.

use std::collections::BTreeMap;
use std::str::FromStr;

use fungible_types::Usage;
use fungible_types::date::utc_date;
use serde::Serialize;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, ConnectOptions, Row};

use crate::migrations::MIGRATIONS;
use crate::record::{AttemptRecord, EncodedRecord, Feedback, FeedbackTarget, InferenceRecord, RawExchange};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store: a recorded {field} is not valid JSON: {source}")]
    Json {
        field: &'static str,
        source: serde_json::Error,
    },
    #[error("store: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether retrying cannot help: the database refused this data (a constraint, a value
    /// it cannot hold), as opposed to being unreachable, busy or failing.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::Json { .. } => true,
            StoreError::Database(sqlx::Error::Database(e)) => {
                if !matches!(e.kind(), sqlx::error::ErrorKind::Other) {
                    return true; // unique, foreign key, not null, check
                }
                let code = e.code().unwrap_or_default();
                match backend_of_code(&code) {
                    // SQLSTATE class 22: data exception (a NUL in text, a number out of range).
                    Backend::Postgres => code.starts_with("22"),
                    // Primary result codes: SQLITE_TOOBIG, SQLITE_CONSTRAINT, SQLITE_MISMATCH.
                    Backend::Sqlite => code
                        .parse::<i32>()
                        .is_ok_and(|c| matches!(c & 0xff, 18..=20)),
                }
            }
            _ => false,
        }
    }
}

/// Which database an error code comes from: PostgreSQL's SQLSTATEs have five characters,
/// SQLite's (extended) result codes at most four digits.
fn backend_of_code(code: &str) -> Backend {
    if code.len() == 5 { Backend::Postgres } else { Backend::Sqlite }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// An open store. Cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
}

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
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub before: Option<String>,
    pub limit: Option<u32>,
}

/// What [`Store::stats`] groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// `PROVIDER/MODEL` that answered.
    Model,
    Provider,
    Route,
    User,
    /// The virtual key (`-`: none).
    Key,
    /// Each tag (`key=value`) of an inference; an inference counts once per tag, `-` for
    /// none.
    Tag,
    /// UTC date.
    Day,
    Inbound,
}

impl FromStr for GroupBy {
    type Err = String;
    fn from_str(s: &str) -> Result<GroupBy, String> {
        Ok(match s {
            "model" => GroupBy::Model,
            "provider" => GroupBy::Provider,
            "route" => GroupBy::Route,
            "user" => GroupBy::User,
            "key" => GroupBy::Key,
            "tag" => GroupBy::Tag,
            "day" => GroupBy::Day,
            "inbound" => GroupBy::Inbound,
            _ => {
                return Err(format!(
                    "unknown group {s:?}: expected model, provider, route, key, user, tag, day or inbound"
                ));
            }
        })
    }
}

/// One group of [`Store::stats`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsRow {
    pub key: String,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    /// Sum of the known costs.
    pub cost: f64,
    /// Requests whose cost is unknown.
    pub unpriced: u64,
    /// Requests the response cache answered.
    pub cache_hits: u64,
    pub p50_latency_ms: f64,
    pub p95_latency_ms: f64,
}

const INSERT_INFERENCE: &str = "INSERT INTO inferences (id, time_ms, inbound, requested_model, route, variant, provider, model, stream, error, request, response, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, cost, ttft_ms, latency_ms, user_id, tags, episode_id, key_id, cache_hit, truncated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)";
const INSERT_TAG: &str = "INSERT INTO inference_tags (inference_id, tag) VALUES ($1, $2)";
const INSERT_ATTEMPT: &str = "INSERT INTO attempts (inference_id, idx, provider, model, status, error, latency_ms, cost) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const INFERENCE_COLUMNS: &str = "id, time_ms, inbound, requested_model, route, variant, provider, model, stream, error, request, response, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, cost, ttft_ms, latency_ms, user_id, tags, episode_id, key_id, cache_hit, truncated";

impl Store {
    /// Connects to `url` (`sqlite://PATH?mode=rwc` or `postgres://...`) and applies the
    /// migrations not applied yet. SQLite runs in WAL mode.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let options = AnyConnectOptions::from_str(url)?.disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        use sqlx::Executor;
                        conn.execute("PRAGMA journal_mode=WAL").await?;
                        conn.execute("PRAGMA synchronous=NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let store = Store { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies every migration not applied yet; running it again does nothing.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::query("CREATE TABLE IF NOT EXISTS fungible_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)")
            .execute(&self.pool)
            .await?;
        for (version, statements) in MIGRATIONS {
            let mut tx = self.pool.begin().await?;
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM fungible_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_some() {
                continue;
            }
            for statement in *statements {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO fungible_migrations (version, applied_ms) VALUES ($1, $2)")
                .bind(*version)
                .bind(crate::record::now_ms())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version, "store: migration applied");
        }
        Ok(())
    }

    /// The migration versions applied, in order.
    pub async fn applied_migrations(&self) -> Result<Vec<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT version FROM fungible_migrations ORDER BY version")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub fn is_postgres(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// Whether statements with nullable floats may be prepared once and reused. sqlx 0.8's
    /// `any` driver binds a NULL double as a PostgreSQL `float4`, and a statement prepared
    /// with that type then rejects a real `f64`; on PostgreSQL such statements are prepared
    /// per execution.
    fn cache_statements(&self) -> bool {
        self.backend == Backend::Sqlite
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

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
        let mut sql = format!("SELECT {INFERENCE_COLUMNS} FROM inferences WHERE 1 = 1");
        let mut binds: Vec<Bind> = Vec::new();
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
        for tag in &filter.tags {
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
        if let Some(since) = filter.since_ms {
            binds.push(Bind::Int(since));
            sql.push_str(&format!(" AND time_ms >= ${}", binds.len()));
        }
        if let Some(until) = filter.until_ms {
            binds.push(Bind::Int(until));
            sql.push_str(&format!(" AND time_ms < ${}", binds.len()));
        }
        let limit = filter.limit.unwrap_or(50).clamp(1, 1000);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
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

    /// Requests, errors, tokens, cost and latency percentiles per group, over the inferences
    /// in `[since_ms, until_ms)`. Sorted by requests, most first.
    ///
    /// The database aggregates: PostgreSQL computes exact nearest-rank percentiles
    /// (`percentile_disc`); SQLite, which has no percentile aggregate, returns one row per
    /// group and latency bucket (1 ms wide below 1 s, 1% of the latency above), with each
    /// bucket's smallest and largest latency, and the percentile is read from the buckets:
    /// exact when its bucket holds one distinct latency, else within the bucket's width.
    pub async fn stats(
        &self,
        group: GroupBy,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<Vec<StatsRow>, StoreError> {
        self.stats_of(group, since_ms, until_ms, None).await
    }

    /// [`Store::stats`] over the inferences of one virtual key (`Some(key_id)`) only: read
    /// from the rows (the roll-ups are per dimension, not per key and dimension).
    pub async fn stats_of(
        &self,
        group: GroupBy,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        key_id: Option<&str>,
    ) -> Result<Vec<StatsRow>, StoreError> {
        let key = match group {
            GroupBy::Model => "provider || '/' || model",
            GroupBy::Provider => "provider",
            GroupBy::Route => "route",
            GroupBy::User => "user_id",
            GroupBy::Key => "key_id",
            GroupBy::Tag => "inference_tags.tag",
            GroupBy::Day => "time_ms / 86400000",
            GroupBy::Inbound => "inbound",
        };
        let join = if group == GroupBy::Tag {
            " LEFT JOIN inference_tags ON inference_tags.inference_id = inferences.id"
        } else {
            ""
        };
        // Whole days up to the roll-up watermark come from the roll-ups; the rest (a range's
        // edges off the day, what is newer than the watermark, tags) from the rows.
        let day = crate::rollups::DAY_MS;
        let rolled = match crate::rollups::dimension(group) {
            _ if key_id.is_some() => None,
            None => None,
            Some(_) => {
                let watermark = self.rollup_watermark().await?;
                let from = since_ms.map_or(i64::MIN / day, |s| s.div_euclid(day) + i64::from(s.rem_euclid(day) != 0));
                let to = until_ms.map_or(watermark / day, |u| u.div_euclid(day).min(watermark / day));
                // Watermark 0: nothing is rolled up yet.
                (watermark > 0 && from < to).then_some((from, to))
            }
        };
        // PostgreSQL's exact percentiles when the rows alone answer; histograms otherwise.
        let exact = rolled.is_none() && self.backend == Backend::Postgres;
        let mut parts: Vec<(crate::rollups::GroupKey, crate::rollups::Sums, Option<(f64, f64)>)> = Vec::new();
        let mut raw_ranges = Vec::new();
        match rolled {
            Some((from, to)) => {
                for (k, sums) in self.rolled_up_stats(group, from, to).await? {
                    parts.push((k, sums, None));
                }
                if from > i64::MIN / day {
                    raw_ranges.push((since_ms, Some(from * day)));
                }
                raw_ranges.push((Some(to * day), until_ms));
            }
            None => raw_ranges.push((since_ms, until_ms)),
        }
        for (since_ms, until_ms) in raw_ranges {
            if let (Some(a), Some(b)) = (since_ms, until_ms)
                && a >= b
            {
                continue;
            }
            for r in self.raw_stats(key, join, since_ms, until_ms, key_id, exact).await? {
                let k = crate::rollups::group_key(group, &r)?;
                if exact {
                    // Same layout without the bucket: the percentiles in columns 9 and 10.
                    let mut sums = crate::rollups::Sums::from_bucket_row_exact(&r)?;
                    sums.latencies.clear();
                    let p = (r.try_get::<Option<f64>, _>(9)?.unwrap_or(0.0), r.try_get::<Option<f64>, _>(10)?.unwrap_or(0.0));
                    parts.push((k, sums, Some(p)));
                } else {
                    parts.push((k, crate::rollups::Sums::from_bucket_row(&r)?, None));
                }
            }
        }
        let mut groups: BTreeMap<String, (crate::rollups::Sums, Option<(f64, f64)>)> = BTreeMap::new();
        for (k, sums, exact) in parts {
            let key = match k {
                crate::rollups::GroupKey::Day(d) => d.map_or_else(|| "-".into(), |d| utc_date(d * 86_400_000)),
                crate::rollups::GroupKey::Text(t) => t.unwrap_or_else(|| "-".into()),
            };
            let entry = groups.entry(key).or_default();
            entry.0.add(sums);
            if exact.is_some() {
                entry.1 = exact;
            }
        }
        let mut out: Vec<StatsRow> = groups
            .into_iter()
            .map(|(key, (sums, exact))| {
                let buckets: Vec<Bucket> = sums.latencies.values().copied().collect();
                let (p50, p95) = exact.unwrap_or_else(|| (bucket_percentile(&buckets, 0.50), bucket_percentile(&buckets, 0.95)));
                StatsRow {
                    key,
                    requests: sums.requests,
                    errors: sums.errors,
                    input_tokens: sums.input_tokens,
                    output_tokens: sums.output_tokens,
                    cache_read_tokens: sums.cache_read_tokens,
                    cost: sums.cost,
                    unpriced: sums.unpriced,
                    cache_hits: sums.cache_hits,
                    p50_latency_ms: p50,
                    p95_latency_ms: p95,
                }
            })
            .collect();
        out.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.key.cmp(&b.key)));
        Ok(out)
    }

    /// Stats rows straight from `inferences` in `[since_ms, until_ms)`: with `exact`
    /// (PostgreSQL), one row per key with its percentiles; else one row per key and latency
    /// bucket with the bucket's min and max.
    async fn raw_stats(
        &self,
        key: &str,
        join: &str,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        key_id: Option<&str>,
        exact: bool,
    ) -> Result<Vec<AnyRow>, StoreError> {
        let sums = "COUNT(*), CAST(SUM(CASE WHEN error IS NULL THEN 0 ELSE 1 END) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cache_read_tokens) AS BIGINT), SUM(cost), CAST(SUM(CASE WHEN cost IS NULL THEN 1 ELSE 0 END) AS BIGINT), CAST(SUM(cache_hit) AS BIGINT)";
        // Only the bounds given: an unbounded range would make the planner walk the time
        // index row by row instead of scanning.
        let mut range = Vec::new();
        let mut binds = Vec::new();
        for (bound, op) in [(since_ms, ">="), (until_ms, "<")] {
            if let Some(ms) = bound {
                binds.push(ms);
                range.push(format!("time_ms {op} ${}", binds.len()));
            }
        }
        if key_id.is_some() {
            range.push(format!("key_id = ${}", binds.len() + 1));
        }
        let filter = if range.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", range.join(" AND "))
        };
        let sql = if exact {
            format!(
                "SELECT {key} AS k, {sums}, percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_ms), percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms) FROM inferences{join}{filter} GROUP BY k"
            )
        } else {
            let bucket = crate::rollups::latency_bucket(self.backend);
            format!(
                "SELECT {key} AS k, {sums}, MIN(latency_ms), MAX(latency_ms), {bucket} AS b FROM inferences{join}{filter} GROUP BY k, b"
            )
        };
        let mut query = sqlx::query(&sql);
        for ms in binds {
            query = query.bind(ms);
        }
        if let Some(key_id) = key_id {
            query = query.bind(key_id);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }
}

use crate::rollups::Bucket;

/// The nearest-rank percentile `q` of the latencies summarised by `buckets` (sorted, and
/// not overlapping): the bucket holding the rank, and within it, the smallest latency for
/// its first rank, the largest for its last, and a linear interpolation between them.
fn bucket_percentile(buckets: &[Bucket], q: f64) -> f64 {
    let n: u64 = buckets.iter().map(|b| b.count).sum();
    if n == 0 {
        return 0.0;
    }
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    let mut before = 0;
    for b in buckets {
        if rank <= before + b.count {
            let j = rank - before; // 1..=count
            if b.count <= 1 || j == 1 {
                return b.min;
            }
            if j == b.count {
                return b.max;
            }
            return b.min + (b.max - b.min) * (j - 1) as f64 / (b.count - 1) as f64;
        }
        before += b.count;
    }
    buckets.last().map_or(0.0, |b| b.max)
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

/// Runs `f`, CPU work of the writer's, without holding up the async workers that serve
/// requests: on a multi-threaded runtime the worker hands its other tasks over first
/// (`block_in_place`); elsewhere (tests' current-thread runtimes) it just runs.
fn off_the_workers<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
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

    #[test]
    fn dates_and_percentiles() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_764_460_800_000), "2025-11-30");
        let ones = |v: &[f64]| -> Vec<Bucket> {
            v.iter()
                .map(|&x| Bucket {
                    count: 1,
                    min: x,
                    max: x,
                })
                .collect()
        };
        assert_eq!(bucket_percentile(&ones(&[1.0, 2.0, 3.0, 4.0]), 0.5), 2.0);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(bucket_percentile(&ones(&hundred), 0.95), 95.0);
        assert_eq!(bucket_percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn percentiles_within_a_bucket() {
        // Five latencies 10.0..=10.8 in one bucket, then one at 500.
        let b = [
            Bucket {
                count: 5,
                min: 10.0,
                max: 10.8,
            },
            Bucket {
                count: 1,
                min: 500.0,
                max: 500.0,
            },
        ];
        // Ranks: p50 of 6 is the 3rd (the middle of the bucket), p95 the 6th.
        assert!((bucket_percentile(&b, 0.5) - 10.4).abs() < 1e-9);
        assert_eq!(bucket_percentile(&b, 0.95), 500.0);
        assert_eq!(bucket_percentile(&b, 0.01), 10.0);
        assert_eq!(bucket_percentile(&b, 0.8), 10.8);
    }
}
