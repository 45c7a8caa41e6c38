//! Roll-ups, so that `stats` over millions of inferences reads a few thousand rows.
//!
//! Two tiers, each a table of sums per time unit, grouping dimension (`model`, `provider`,
//! `route`, `user`, `key`, `inbound`, `tag`, and `all` for time alone) and value:
//! `inference_rollups` per UTC day and `inference_hour_rollups` per UTC hour. Each row holds
//! the sums stats report and two histograms, of latency and of time to first token
//! (`[[bucket, count, min, max], ...]` over the buckets [`bucket_sql`] defines), so
//! percentiles merge across units. [`Store::roll_up`] aggregates, per tier, the inferences of
//! whole units that ended at least [`SETTLE_MS`] ago and moves the tier's watermark
//! (`rollup_state`, row 1 for days, row 2 for hours) past them in the same transaction; the
//! first statement of that transaction locks the watermark row, so concurrent roll-ups
//! (several gateways on one PostgreSQL) run one after the other and never count a unit twice.
//!
//! A record that arrives for a unit already rolled up (a queue that waited out a store
//! outage) gets its own roll-up rows in the insert's transaction, which reads the
//! watermarks under a share lock (PostgreSQL) or the write lock (SQLite): each inference is
//! counted exactly once per tier, by the roll-up or by the insert. Rows are only ever added,
//! never updated: readers sum them.
//!
//! [`Store::stats`] reads the whole days of its range from the daily tier, the whole hours
//! left from the hourly tier, and the rest (a range's edges off the hour, and what is newer
//! than the hourly watermark, about an hour) from `inferences`.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::record::EncodedRecord;
use crate::store::{Backend, Store, StoreError};

pub(crate) const DAY_MS: i64 = 86_400_000;
pub(crate) const HOUR_MS: i64 = 3_600_000;
/// How long after its end a unit is rolled up: records are written within seconds.
pub const SETTLE_MS: i64 = 10 * 60_000;

/// One tier of roll-ups: its unit, its table and unit column, its watermark row, and the
/// most units one roll-up transaction covers (so that a first roll-up of a large history
/// does not hold the write lock for long).
#[derive(Debug)]
pub(crate) struct Tier {
    pub unit_ms: i64,
    pub table: &'static str,
    pub column: &'static str,
    state_id: i64,
    per_transaction: i64,
}

/// The tiers, coarsest first (the order [`Store::stats`] takes a range apart in).
pub(crate) const TIERS: [Tier; 2] = [
    Tier {
        unit_ms: DAY_MS,
        table: "inference_rollups",
        column: "day",
        state_id: 1,
        per_transaction: 1,
    },
    Tier {
        unit_ms: HOUR_MS,
        table: "inference_hour_rollups",
        column: "hour",
        state_id: 2,
        per_transaction: 24,
    },
];

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

/// The histogram bucket of a duration column (`latency_ms`, `ttft_ms`) in SQL: 1 ms wide
/// below 1 s, 10 ms below 10 s, 100 ms below 100 s, then 1 s (at most 1% of the value from
/// 1 s up). Truncating on both backends (PostgreSQL's `CAST` rounds), so that it agrees
/// with [`bucket_of`].
pub(crate) fn bucket_sql(backend: Backend, column: &str) -> String {
    let c = column;
    match backend {
        Backend::Sqlite => format!(
            "CASE WHEN {c} < 1000 THEN CAST({c} AS INTEGER) WHEN {c} < 10000 THEN CAST({c} / 10 AS INTEGER) * 10 WHEN {c} < 100000 THEN CAST({c} / 100 AS INTEGER) * 100 ELSE CAST({c} / 1000 AS INTEGER) * 1000 END"
        ),
        Backend::Postgres => format!(
            "CASE WHEN {c} < 1000 THEN CAST(TRUNC({c}) AS BIGINT) WHEN {c} < 10000 THEN CAST(TRUNC({c} / 10) AS BIGINT) * 10 WHEN {c} < 100000 THEN CAST(TRUNC({c} / 100) AS BIGINT) * 100 ELSE CAST(TRUNC({c} / 1000) AS BIGINT) * 1000 END"
        ),
    }
}

/// [`bucket_sql`] in Rust.
fn bucket_of(ms: f64) -> i64 {
    let (width, l) = match ms {
        l if l < 1_000.0 => (1.0, l),
        l if l < 10_000.0 => (10.0, l),
        l if l < 100_000.0 => (100.0, l),
        l => (1_000.0, l),
    };
    (l / width).trunc() as i64 * width as i64
}

/// What a roll-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollUp {
    /// Inferences before this time (Unix ms, at a UTC midnight) are rolled up per day.
    pub watermark_ms: i64,
    /// Days rolled up by this call (empty stretches with no inference are skipped, not
    /// counted).
    pub days: i64,
    /// Inferences before this time (Unix ms, on the hour) are rolled up per hour.
    pub hour_watermark_ms: i64,
    /// Hours rolled up by this call.
    pub hours: i64,
}

/// One bucket of a histogram: how many, and the smallest and largest value in it.
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

    fn one(ms: f64) -> Bucket {
        Bucket { count: 1, min: ms, max: ms }
    }
}

/// A histogram: bucket (see [`bucket_sql`]) -> [`Bucket`].
pub(crate) type Histogram = BTreeMap<i64, Bucket>;

/// Adds `bucket` to the histogram's bucket `b`.
pub(crate) fn merge_into(histogram: &mut Histogram, b: i64, bucket: Bucket) {
    histogram
        .entry(b)
        .and_modify(|e| e.merge(bucket))
        .or_insert(bucket);
}

/// A histogram as stored: `[[bucket, count, min, max], ...]`.
fn histogram_json(histogram: &Histogram) -> String {
    let list: Vec<(i64, u64, f64, f64)> = histogram
        .iter()
        .map(|(&b, l)| (b, l.count, l.min, l.max))
        .collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
}

/// [`histogram_json`] read back.
pub(crate) fn parse_histogram(text: &str) -> Result<Histogram, StoreError> {
    let list: Vec<(i64, u64, f64, f64)> =
        serde_json::from_str(text).map_err(|source| StoreError::Json {
            field: "rollup histogram",
            source,
        })?;
    Ok(list
        .into_iter()
        .map(|(b, count, min, max)| (b, Bucket { count, min, max }))
        .collect())
}

/// A group's sums and its latency and time-to-first-token histograms, from rows or
/// roll-ups.
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
    pub latencies: Histogram,
    pub ttfts: Histogram,
}

/// The sums a stats or roll-up query selects, in this order (PostgreSQL's `SUM` of a
/// BIGINT is NUMERIC: cast back).
pub(crate) const SUMS_SQL: &str = "COUNT(*), CAST(SUM(CASE WHEN error IS NULL THEN 0 ELSE 1 END) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cache_read_tokens) AS BIGINT), SUM(cost), CAST(SUM(CASE WHEN cost IS NULL THEN 1 ELSE 0 END) AS BIGINT), CAST(SUM(cache_hit) AS BIGINT)";

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
            merge_into(&mut self.latencies, b, bucket);
        }
        for (b, bucket) in other.ttfts {
            merge_into(&mut self.ttfts, b, bucket);
        }
    }

    /// The [`SUMS_SQL`] columns of a row, starting at column `first`; no histograms.
    pub(crate) fn from_row(r: &AnyRow, first: usize) -> Result<Sums, StoreError> {
        let count = |i: usize| -> Result<u64, sqlx::Error> {
            Ok(r.try_get::<Option<i64>, _>(first + i)?.unwrap_or(0).max(0) as u64)
        };
        Ok(Sums {
            requests: count(0)?,
            errors: count(1)?,
            input_tokens: count(2)?,
            output_tokens: count(3)?,
            cache_read_tokens: count(4)?,
            cost: r.try_get::<Option<f64>, _>(first + 5)?.unwrap_or(0.0),
            unpriced: count(6)?,
            cache_hits: count(7)?,
            ..Sums::default()
        })
    }

    /// One inference's sums.
    fn of_record(r: &crate::record::InferenceRecord) -> Sums {
        let mut sums = Sums {
            requests: 1,
            errors: u64::from(r.error.is_some()),
            input_tokens: r.usage.input_tokens,
            output_tokens: r.usage.output_tokens,
            cache_read_tokens: r.usage.cache_read_tokens,
            cost: r.cost.unwrap_or(0.0),
            unpriced: u64::from(r.cost.is_none()),
            cache_hits: u64::from(r.cache_hit),
            ..Sums::default()
        };
        sums.latencies.insert(bucket_of(r.latency_ms), Bucket::one(r.latency_ms));
        if let Some(ttft) = r.ttft_ms {
            sums.ttfts.insert(bucket_of(ttft), Bucket::one(ttft));
        }
        sums
    }
}

/// A histogram bucket from a row's `count, min, max, bucket` columns starting at `first`.
pub(crate) fn bucket_from_row(r: &AnyRow, first: usize) -> Result<(i64, Bucket), StoreError> {
    let count = r.try_get::<Option<i64>, _>(first)?.unwrap_or(0).max(0) as u64;
    let bucket = Bucket {
        count,
        min: r.try_get::<Option<f64>, _>(first + 1)?.unwrap_or(0.0),
        max: r.try_get::<Option<f64>, _>(first + 2)?.unwrap_or(0.0),
    };
    Ok((r.try_get::<Option<i64>, _>(first + 3)?.unwrap_or(0), bucket))
}

impl Store {
    /// Rolls up, in each tier, every whole unit (UTC day, hour) that ended at least
    /// [`SETTLE_MS`] before `now_ms` and is not rolled up yet (see the module docs). Safe to
    /// call from several processes at once.
    pub async fn roll_up(&self, now_ms: i64) -> Result<RollUp, StoreError> {
        let [days, hours] = &TIERS;
        let (watermark_ms, days) = self.roll_up_tier(days, now_ms).await?;
        let (hour_watermark_ms, hours) = self.roll_up_tier(hours, now_ms).await?;
        Ok(RollUp {
            watermark_ms,
            days,
            hour_watermark_ms,
            hours,
        })
    }

    /// [`Store::roll_up`] of one tier: its new watermark and the units rolled up.
    async fn roll_up_tier(&self, tier: &Tier, now_ms: i64) -> Result<(i64, i64), StoreError> {
        let unit = tier.unit_ms;
        let target = (now_ms - SETTLE_MS).div_euclid(unit) * unit;
        let mut units = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let watermark = lock_watermark(&mut tx, tier).await?;
            if watermark >= target {
                tx.rollback().await?;
                return Ok((watermark, units));
            }
            // Skip empty units at once (a first roll-up starts at 0).
            let first: Option<i64> =
                sqlx::query_scalar("SELECT MIN(time_ms) FROM inferences WHERE time_ms >= $1")
                    .bind(watermark)
                    .fetch_one(&mut *tx)
                    .await?;
            let start = match first {
                Some(t) if t < target => t.div_euclid(unit) * unit,
                _ => target,
            };
            let end = target.min(start + tier.per_transaction * unit);
            if start < end {
                for (dim, value) in DIMENSIONS {
                    let groups = self.aggregate(&mut tx, tier, value, start, end).await?;
                    for ((at, value), sums) in groups {
                        insert_rollup(&mut tx, tier, at, dim, value, &sums).await?;
                    }
                }
                units += (end - start) / unit;
            }
            sqlx::query("UPDATE rollup_state SET watermark_ms = $1 WHERE id = $2")
                .bind(end)
                .bind(tier.state_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
    }

    /// The sums and histograms of the inferences in `[start, end)` per tier unit and value
    /// of one dimension (`value`: its SQL).
    async fn aggregate(
        &self,
        tx: &mut Transaction<'_, Any>,
        tier: &Tier,
        value: &str,
        start: i64,
        end: i64,
    ) -> Result<BTreeMap<(i64, Option<String>), Sums>, StoreError> {
        let unit = tier.unit_ms;
        let join = if value.starts_with("inference_tags.") {
            " LEFT JOIN inference_tags ON inference_tags.inference_id = inferences.id"
        } else {
            ""
        };
        let mut groups: BTreeMap<(i64, Option<String>), Sums> = BTreeMap::new();
        // Latency over every row, time to first token over the rows that have one.
        for (column, only) in [("latency_ms", ""), ("ttft_ms", " AND ttft_ms IS NOT NULL")] {
            let bucket = bucket_sql(self.backend, column);
            // PostgreSQL refuses a constant (the `all` dimension's NULL) in GROUP BY.
            let group = if value == "NULL" {
                format!("time_ms / {unit}, {bucket}")
            } else {
                format!("time_ms / {unit}, {value}, {bucket}")
            };
            let sums = if column == "latency_ms" { SUMS_SQL } else { "COUNT(*)" };
            let sql = format!(
                "SELECT {value} AS k, time_ms / {unit} AS t, {sums}, MIN({column}), MAX({column}), {bucket} AS b FROM inferences{join} WHERE time_ms >= $1 AND time_ms < $2{only} GROUP BY {group}"
            );
            let rows = sqlx::query(&sql)
                .bind(start)
                .bind(end)
                .fetch_all(&mut **tx)
                .await?;
            for r in &rows {
                let at: i64 = r.try_get::<Option<i64>, _>(1)?.unwrap_or(0);
                let entry = groups
                    .entry((at, r.try_get::<Option<String>, _>(0)?))
                    .or_default();
                if column == "latency_ms" {
                    // Columns 2 to 9 the sums (COUNT(*) first), then MIN, MAX and bucket.
                    let mut sums = Sums::from_row(r, 2)?;
                    let bucket = Bucket {
                        count: sums.requests,
                        min: r.try_get::<Option<f64>, _>(10)?.unwrap_or(0.0),
                        max: r.try_get::<Option<f64>, _>(11)?.unwrap_or(0.0),
                    };
                    sums.latencies
                        .insert(r.try_get::<Option<i64>, _>(12)?.unwrap_or(0), bucket);
                    entry.add(sums);
                } else {
                    let (b, bucket) = bucket_from_row(r, 2)?;
                    merge_into(&mut entry.ttfts, b, bucket);
                }
            }
        }
        Ok(groups)
    }

    /// The time before which inferences are rolled up per day (Unix ms).
    pub async fn rollup_watermark(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT watermark_ms FROM rollup_state WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Each tier's watermark, in [`TIERS`]' order.
    pub(crate) async fn rollup_watermarks(&self) -> Result<[i64; 2], StoreError> {
        let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT id, watermark_ms FROM rollup_state")
            .fetch_all(&self.pool)
            .await?;
        Ok(TIERS.each_ref().map(|t| {
            rows.iter()
                .find(|(id, _)| *id == t.state_id)
                .map_or(0, |(_, w)| *w)
        }))
    }
}

async fn insert_rollup(
    tx: &mut Transaction<'_, Any>,
    tier: &Tier,
    at: i64,
    dim: &str,
    value: Option<String>,
    sums: &Sums,
) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT INTO {} ({}, dim, value, requests, errors, input_tokens, output_tokens, cache_read_tokens, cost, unpriced, cache_hits, latencies, ttfts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        tier.table, tier.column
    );
    sqlx::query(&sql)
        .bind(at)
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
        .bind(histogram_json(&sums.latencies))
        .bind(histogram_json(&sums.ttfts))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Locks a tier's watermark row for the rest of `tx` (a write lock on SQLite, a row lock on
/// PostgreSQL) and reads it.
async fn lock_watermark(tx: &mut Transaction<'_, Any>, tier: &Tier) -> Result<i64, StoreError> {
    sqlx::query("UPDATE rollup_state SET id = id WHERE id = $1")
        .bind(tier.state_id)
        .execute(&mut **tx)
        .await?;
    Ok(
        sqlx::query_scalar("SELECT watermark_ms FROM rollup_state WHERE id = $1")
            .bind(tier.state_id)
            .fetch_one(&mut **tx)
            .await?,
    )
}

/// In an insert's transaction, after its rows: roll-up rows for the `records` that belong to
/// units already rolled up (rare: see the module docs).
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
        Backend::Postgres => "SELECT id, watermark_ms FROM rollup_state FOR SHARE",
        Backend::Sqlite => "SELECT id, watermark_ms FROM rollup_state",
    };
    let watermarks: Vec<(i64, i64)> = sqlx::query_as(sql).fetch_all(&mut **tx).await?;
    for tier in &TIERS {
        let watermark = watermarks
            .iter()
            .find(|(id, _)| *id == tier.state_id)
            .map_or(0, |(_, w)| *w);
        if earliest >= watermark {
            continue;
        }
        for r in records().filter(|r| r.time_ms < watermark) {
            let sums = Sums::of_record(r);
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
            let at = r.time_ms.div_euclid(tier.unit_ms);
            for (dim, value) in values.into_iter().chain(tags) {
                insert_rollup(tx, tier, at, dim, value, &sums).await?;
            }
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
