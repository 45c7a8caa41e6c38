//! Daily roll-ups, so that `stats` over millions of inferences reads a few thousand rows.
//!
//! `inference_rollups` holds, per UTC day, per grouping dimension (`model`, `provider`,
//! `route`, `user`, `key`, `inbound`, `tag`, and `all` for days) and value, the sums stats report
//! and a latency histogram (`[[bucket, count, min, max], ...]` over the buckets
//! [`latency_bucket`] defines), so percentiles merge across days. [`Store::roll_up`]
//! aggregates the inferences of whole days that ended at least [`SETTLE_MS`] ago and moves
//! the watermark (`rollup_state`) past them in the same transaction; the first statement
//! of that transaction locks the watermark row, so concurrent roll-ups (several gateways on
//! one PostgreSQL) run one after the other and never count a day twice.
//!
//! A record that arrives for a day already rolled up (a queue that waited out a store
//! outage) gets its own roll-up rows in the insert's transaction, which reads the
//! watermark under a share lock (PostgreSQL) or the write lock (SQLite): each inference is
//! counted exactly once, by the roll-up or by the insert. Rows are only ever added, never
//! updated: readers sum them.
//!
//! [`Store::stats`] reads the rolled-up whole days of its range from here and the rest (the
//! edges of a range that does not fall on days, and everything past the watermark, at most
//! a day and some minutes) from `inferences`.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::record::EncodedRecord;
use crate::store::{Backend, Store, StoreError};

pub(crate) const DAY_MS: i64 = 86_400_000;
/// How long after its end a day is rolled up: records are written within seconds.
pub const SETTLE_MS: i64 = 10 * 60_000;
/// Most days one roll-up transaction covers, so a first roll-up of a large history does
/// not hold the write lock for long.
const DAYS_PER_TRANSACTION: i64 = 7;

/// The dimensions rolled up, and their value in SQL over `inferences`.
const DIMENSIONS: &[(&str, &str)] = &[
    ("all", "NULL"),
    ("model", "provider || '/' || model"),
    ("provider", "provider"),
    ("route", "route"),
    ("user", "user_id"),
    ("key", "key_id"),
    ("inbound", "inbound"),
    // One row per tag (an inference counts once per tag), NULL for none.
    ("tag", "inference_tags.tag"),
];

/// A row's latency bucket in SQL: 1 ms wide below 1 s, 10 ms below 10 s, 100 ms below
/// 100 s, then 1 s (at most 1% of the latency from 1 s up). Truncating on both backends
/// (PostgreSQL's `CAST` rounds), so that it agrees with [`bucket_of`].
pub(crate) fn latency_bucket(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => {
            "CASE WHEN latency_ms < 1000 THEN CAST(latency_ms AS INTEGER) WHEN latency_ms < 10000 THEN CAST(latency_ms / 10 AS INTEGER) * 10 WHEN latency_ms < 100000 THEN CAST(latency_ms / 100 AS INTEGER) * 100 ELSE CAST(latency_ms / 1000 AS INTEGER) * 1000 END"
        }
        Backend::Postgres => {
            "CASE WHEN latency_ms < 1000 THEN CAST(TRUNC(latency_ms) AS BIGINT) WHEN latency_ms < 10000 THEN CAST(TRUNC(latency_ms / 10) AS BIGINT) * 10 WHEN latency_ms < 100000 THEN CAST(TRUNC(latency_ms / 100) AS BIGINT) * 100 ELSE CAST(TRUNC(latency_ms / 1000) AS BIGINT) * 1000 END"
        }
    }
}

/// [`latency_bucket`] in Rust.
fn bucket_of(latency_ms: f64) -> i64 {
    let (width, l) = match latency_ms {
        l if l < 1_000.0 => (1.0, l),
        l if l < 10_000.0 => (10.0, l),
        l if l < 100_000.0 => (100.0, l),
        l => (1_000.0, l),
    };
    (l / width).trunc() as i64 * width as i64
}

const INSERT_ROLLUP: &str = "INSERT INTO inference_rollups (day, dim, value, requests, errors, input_tokens, output_tokens, cache_read_tokens, cost, unpriced, cache_hits, latencies) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// What a roll-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollUp {
    /// Inferences before this time (Unix ms, at a UTC midnight) are rolled up.
    pub watermark_ms: i64,
    /// Days rolled up by this call.
    pub days: i64,
}

/// One latency bucket of a group: how many, and the smallest and largest latency in it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Bucket {
    pub count: u64,
    pub min: f64,
    pub max: f64,
}

impl Bucket {
    pub(crate) fn merge(&mut self, other: Bucket) {
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// A group's sums and latency histogram (bucket -> [`Bucket`]), from rows or roll-ups.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Sums {
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cost: f64,
    pub unpriced: u64,
    pub cache_hits: u64,
    pub latencies: std::collections::BTreeMap<i64, Bucket>,
}

impl Sums {
    pub(crate) fn add(&mut self, other: Sums) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_tokens += other.cache_read_tokens;
        self.cost += other.cost;
        self.unpriced += other.unpriced;
        self.cache_hits += other.cache_hits;
        for (b, bucket) in other.latencies {
            match self.latencies.entry(b) {
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(bucket);
                }
                std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(bucket),
            }
        }
    }

    /// The histogram as stored: `[[bucket, count, min, max], ...]`.
    fn latencies_json(&self) -> String {
        let list: Vec<(i64, u64, f64, f64)> = self
            .latencies
            .iter()
            .map(|(&b, l)| (b, l.count, l.min, l.max))
            .collect();
        serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
    }

    pub(crate) fn parse_latencies(text: &str) -> Result<std::collections::BTreeMap<i64, Bucket>, StoreError> {
        let list: Vec<(i64, u64, f64, f64)> = serde_json::from_str(text).map_err(|source| {
            StoreError::Json {
                field: "rollup latencies",
                source,
            }
        })?;
        Ok(list
            .into_iter()
            .map(|(b, count, min, max)| (b, Bucket { count, min, max }))
            .collect())
    }

    /// The sums of a raw stats row (its columns 1 to 8), no latencies.
    pub(crate) fn from_bucket_row_exact(r: &AnyRow) -> Result<Sums, StoreError> {
        let count = |i: usize| -> Result<u64, sqlx::Error> {
            Ok(r.try_get::<Option<i64>, _>(i)?.unwrap_or(0).max(0) as u64)
        };
        Ok(Sums {
            requests: count(1)?,
            errors: count(2)?,
            input_tokens: count(3)?,
            output_tokens: count(4)?,
            cache_read_tokens: count(5)?,
            cost: r.try_get::<Option<f64>, _>(6)?.unwrap_or(0.0),
            unpriced: count(7)?,
            cache_hits: count(8)?,
            latencies: Default::default(),
        })
    }

    /// A row of the bucketed raw stats query: `k, COUNT, errors, input, output, cache read,
    /// cost, unpriced, cache hits, MIN(latency), MAX(latency), bucket`.
    pub(crate) fn from_bucket_row(r: &AnyRow) -> Result<Sums, StoreError> {
        let mut sums = Sums::from_bucket_row_exact(r)?;
        let requests = sums.requests;
        let bucket = Bucket {
            count: requests,
            min: r.try_get::<Option<f64>, _>(9)?.unwrap_or(0.0),
            max: r.try_get::<Option<f64>, _>(10)?.unwrap_or(0.0),
        };
        sums.latencies.insert(r.try_get::<Option<i64>, _>(11)?.unwrap_or(0), bucket);
        Ok(sums)
    }
}

impl Store {
    /// Rolls up every whole UTC day that ended at least [`SETTLE_MS`] before `now_ms` and is
    /// not rolled up yet (see the module docs). Safe to call from several processes at once.
    pub async fn roll_up(&self, now_ms: i64) -> Result<RollUp, StoreError> {
        let target = (now_ms - SETTLE_MS).div_euclid(DAY_MS) * DAY_MS;
        let mut days = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let watermark = lock_watermark(&mut tx).await?;
            if watermark >= target {
                tx.rollback().await?;
                return Ok(RollUp {
                    watermark_ms: watermark,
                    days,
                });
            }
            // Skip empty days at once (a first roll-up starts at 0).
            let first: Option<i64> =
                sqlx::query_scalar("SELECT MIN(time_ms) FROM inferences WHERE time_ms >= $1")
                    .bind(watermark)
                    .fetch_one(&mut *tx)
                    .await?;
            let start = match first {
                Some(t) if t < target => t.div_euclid(DAY_MS) * DAY_MS,
                _ => target,
            };
            let end = target.min(start + DAYS_PER_TRANSACTION * DAY_MS);
            if start < end {
                let bucket = latency_bucket(self.backend);
                for (dim, value) in DIMENSIONS {
                    let join = if *dim == "tag" {
                        " LEFT JOIN inference_tags ON inference_tags.inference_id = inferences.id"
                    } else {
                        ""
                    };
                    // PostgreSQL refuses a constant (the `all` dimension's NULL) in GROUP BY.
                    let group = if *value == "NULL" {
                        format!("time_ms / {DAY_MS}, {bucket}")
                    } else {
                        format!("time_ms / {DAY_MS}, {value}, {bucket}")
                    };
                    let sql = format!(
                        "SELECT {value} AS k, COUNT(*), CAST(SUM(CASE WHEN error IS NULL THEN 0 ELSE 1 END) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cache_read_tokens) AS BIGINT), SUM(cost), CAST(SUM(CASE WHEN cost IS NULL THEN 1 ELSE 0 END) AS BIGINT), CAST(SUM(cache_hit) AS BIGINT), MIN(latency_ms), MAX(latency_ms), {bucket} AS b, time_ms / {DAY_MS} AS d FROM inferences{join} WHERE time_ms >= $1 AND time_ms < $2 GROUP BY {group}"
                    );
                    let rows = sqlx::query(&sql)
                        .bind(start)
                        .bind(end)
                        .fetch_all(&mut *tx)
                        .await?;
                    let mut groups: std::collections::BTreeMap<(i64, Option<String>), Sums> =
                        Default::default();
                    for r in &rows {
                        let day: i64 = r.try_get::<Option<i64>, _>(12)?.unwrap_or(0);
                        let value = r.try_get::<Option<String>, _>(0)?;
                        groups
                            .entry((day, value))
                            .or_default()
                            .add(Sums::from_bucket_row(r)?);
                    }
                    for ((day, value), sums) in groups {
                        insert_rollup(&mut tx, day, dim, value, &sums).await?;
                    }
                }
                days += (end - start) / DAY_MS;
            }
            sqlx::query("UPDATE rollup_state SET watermark_ms = $1 WHERE id = 1")
                .bind(end)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
    }

    /// The time before which inferences are rolled up (Unix ms).
    pub async fn rollup_watermark(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT watermark_ms FROM rollup_state WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

}

async fn insert_rollup(
    tx: &mut Transaction<'_, Any>,
    day: i64,
    dim: &str,
    value: Option<String>,
    sums: &Sums,
) -> Result<(), StoreError> {
    sqlx::query(INSERT_ROLLUP)
        .bind(day)
        .bind(dim.to_owned())
        .bind(value)
        .bind(sums.requests as i64)
        .bind(sums.errors as i64)
        .bind(sums.input_tokens as i64)
        .bind(sums.output_tokens as i64)
        .bind(sums.cache_read_tokens as i64)
        .bind(sums.cost)
        .bind(sums.unpriced as i64)
        .bind(sums.cache_hits as i64)
        .bind(sums.latencies_json())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Locks the watermark row for the rest of `tx` (a write lock on SQLite, a row lock on
/// PostgreSQL) and reads it.
async fn lock_watermark(tx: &mut Transaction<'_, Any>) -> Result<i64, StoreError> {
    sqlx::query("UPDATE rollup_state SET id = id WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(
        sqlx::query_scalar("SELECT watermark_ms FROM rollup_state WHERE id = 1")
            .fetch_one(&mut **tx)
            .await?,
    )
}

/// In an insert's transaction, after its rows: roll-up rows for the `records` that belong to
/// days already rolled up (rare: see the module docs).
pub(crate) async fn add_late(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    records: &[EncodedRecord],
) -> Result<(), StoreError> {
    let records = || records.iter().map(|e| &e.record);
    let Some(earliest) = records().map(|r| r.time_ms).min() else {
        return Ok(());
    };
    // Shares the lock a roll-up takes: a roll-up either saw these rows or moves the
    // watermark only after this transaction (PostgreSQL); SQLite's write lock is held.
    let sql = match backend {
        Backend::Postgres => "SELECT watermark_ms FROM rollup_state WHERE id = 1 FOR SHARE",
        Backend::Sqlite => "SELECT watermark_ms FROM rollup_state WHERE id = 1",
    };
    let watermark: i64 = sqlx::query_scalar(sql).fetch_one(&mut **tx).await?;
    if earliest >= watermark {
        return Ok(());
    }
    for r in records().filter(|r| r.time_ms < watermark) {
        let mut sums = Sums {
            requests: 1,
            errors: u64::from(r.error.is_some()),
            input_tokens: r.usage.input_tokens,
            output_tokens: r.usage.output_tokens,
            cache_read_tokens: r.usage.cache_read_tokens,
            cost: r.cost.unwrap_or(0.0),
            unpriced: u64::from(r.cost.is_none()),
            cache_hits: u64::from(r.cache_hit),
            latencies: Default::default(),
        };
        sums.latencies.insert(
            bucket_of(r.latency_ms),
            Bucket {
                count: 1,
                min: r.latency_ms,
                max: r.latency_ms,
            },
        );
        let model = r.provider.as_ref().zip(r.model.as_ref()).map(|(p, m)| format!("{p}/{m}"));
        let values = [
            ("all", None),
            ("model", model),
            ("provider", r.provider.clone()),
            ("route", r.route.clone()),
            ("user", r.user.clone()),
            ("key", r.key_id.clone()),
            ("inbound", Some(r.inbound.clone())),
        ];
        let tags = r.tag_list();
        let tags = if tags.is_empty() {
            vec![None]
        } else {
            tags.into_iter().map(Some).collect()
        };
        let tags = tags.into_iter().map(|t| ("tag", t));
        for (dim, value) in values.into_iter().chain(tags) {
            insert_rollup(tx, r.time_ms.div_euclid(DAY_MS), dim, value, &sums).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_truncate_like_the_sql() {
        assert_eq!(bucket_of(0.4), 0);
        assert_eq!(bucket_of(999.9), 999);
        assert_eq!(bucket_of(1_234.5), 1_230);
        assert_eq!(bucket_of(54_321.0), 54_300);
        assert_eq!(bucket_of(123_456.0), 123_000);
    }
}
