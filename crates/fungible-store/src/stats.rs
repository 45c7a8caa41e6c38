//! [`Store::stats`]: sums and latency percentiles per group, from the daily roll-ups where
//! whole days are rolled up and from the rows for the rest.

use std::collections::BTreeMap;
use std::str::FromStr;

use fungible_types::date::utc_date;
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::rollups::{Bucket, DAY_MS, Sums, latency_bucket};
use crate::store::{Backend, Store, StoreError};

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
    /// UTC hour (`2026-12-07T13:00Z`), from the rows only (the roll-ups are per day).
    Hour,
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
            "hour" => GroupBy::Hour,
            "inbound" => GroupBy::Inbound,
            _ => {
                return Err(format!(
                    "unknown group {s:?}: expected model, provider, route, key, user, tag, day, hour or inbound"
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

impl Store {
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
        let plan = self.plan(group, since_ms, until_ms, key_id).await?;
        let mut parts = self.rolled_parts(group, &plan).await?;
        let (key, join) = group_sql(group);
        for &(since_ms, until_ms) in &plan.raw {
            for r in self.raw_stats(key, join, since_ms, until_ms, key_id, plan.exact).await? {
                let k = label(group_key(group, &r)?);
                if plan.exact {
                    // Same layout without the bucket: the percentiles in columns 9 and 10.
                    let mut sums = Sums::from_bucket_row_exact(&r)?;
                    sums.latencies.clear();
                    let p = (r.try_get::<Option<f64>, _>(9)?.unwrap_or(0.0), r.try_get::<Option<f64>, _>(10)?.unwrap_or(0.0));
                    parts.push((k, sums, Some(p)));
                } else if self.backend == Backend::Sqlite {
                    let mut sums = Sums::from_bucket_row_exact(&r)?;
                    sums.latencies = Sums::parse_latencies(&r.try_get::<String, _>(9)?)?;
                    parts.push((k, sums, None));
                } else {
                    parts.push((k, Sums::from_bucket_row(&r)?, None));
                }
            }
        }
        Ok(finish(parts))
    }

    /// Which part of a range comes from the roll-ups and which from the rows.
    async fn plan(&self, group: GroupBy, since_ms: Option<i64>, until_ms: Option<i64>, key_id: Option<&str>) -> Result<Plan, StoreError> {
        // Whole days up to the roll-up watermark come from the roll-ups; the rest (a range's
        // edges off the day, what is newer than the watermark, tags) from the rows.
        let day = DAY_MS;
        let rolled = match dimension(group) {
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
        let mut raw = Vec::new();
        match rolled {
            Some((from, to)) => {
                if from > i64::MIN / day {
                    raw.push((since_ms, Some(from * day)));
                }
                raw.push((Some(to * day), until_ms));
            }
            None => raw.push((since_ms, until_ms)),
        }
        raw.retain(|r| !matches!(r, (Some(a), Some(b)) if a >= b));
        // PostgreSQL's exact percentiles when the rows alone answer; histograms otherwise.
        let exact = rolled.is_none() && self.backend == Backend::Postgres;
        Ok(Plan { rolled, raw, exact })
    }

    /// The roll-ups' share of a plan, labelled.
    async fn rolled_parts(&self, group: GroupBy, plan: &Plan) -> Result<Vec<Part>, StoreError> {
        let mut parts = Vec::new();
        if let Some((from, to)) = plan.rolled {
            for (k, sums) in self.rolled_up_stats(group, from, to).await? {
                parts.push((label(k), sums, None));
            }
        }
        Ok(parts)
    }

    /// Stats rows straight from `inferences` in `[since_ms, until_ms)`: with `exact`
    /// (PostgreSQL), one row per key with its percentiles; on SQLite one row per key with
    /// its latency histogram as JSON; else one row per key and latency bucket with the
    /// bucket's min and max.
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
        } else if self.backend == Backend::Sqlite {
            // One row per group with its histogram as JSON (the roll-ups' format), not one per
            // group and bucket: a key's 400 buckets were 400 rows to decode. A bare column is
            // grouped as `+column`, so that SQLite does not walk that column's index over
            // every row (`inferences_key` for `key_id`) instead of the time range.
            let bare = key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
            let key = if bare { format!("+{key}") } else { key.to_owned() };
            let bucket = latency_bucket(self.backend);
            format!(
                "SELECT k, SUM(n), SUM(e), SUM(i), SUM(o), SUM(cr), SUM(c), SUM(u), SUM(h), json_group_array(json_array(b, n, mn, mx)) FROM (SELECT {key} AS k, {bucket} AS b, COUNT(*) AS n, SUM(CASE WHEN error IS NULL THEN 0 ELSE 1 END) AS e, SUM(input_tokens) AS i, SUM(output_tokens) AS o, SUM(cache_read_tokens) AS cr, SUM(cost) AS c, SUM(CASE WHEN cost IS NULL THEN 1 ELSE 0 END) AS u, SUM(cache_hit) AS h, MIN(latency_ms) AS mn, MAX(latency_ms) AS mx FROM inferences{join}{filter} GROUP BY k, b) GROUP BY k"
            )
        } else {
            let bucket = latency_bucket(self.backend);
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


/// Which part of a stats range the roll-ups answer (whole days `[from, to)`), which ranges
/// of rows the rest is read from, and whether PostgreSQL gives exact percentiles.
struct Plan {
    rolled: Option<(i64, i64)>,
    raw: Vec<(Option<i64>, Option<i64>)>,
    exact: bool,
}

/// A group's label, its sums, and its exact (p50, p95) when the database computed them.
type Part = (String, Sums, Option<(f64, f64)>);

/// The SQL of a grouping's key over `inferences`, and the join it needs.
fn group_sql(group: GroupBy) -> (&'static str, &'static str) {
    let key = match group {
        GroupBy::Model => "provider || '/' || model",
        GroupBy::Provider => "provider",
        GroupBy::Route => "route",
        GroupBy::User => "user_id",
        GroupBy::Key => "key_id",
        GroupBy::Tag => "inference_tags.tag",
        GroupBy::Day => "time_ms / 86400000",
        GroupBy::Hour => "time_ms / 3600000",
        GroupBy::Inbound => "inbound",
    };
    let join = if group == GroupBy::Tag { " LEFT JOIN inference_tags ON inference_tags.inference_id = inferences.id" } else { "" };
    (key, join)
}

/// How a group is named in stats: a UTC date, a UTC hour, or the value (`-` for none).
fn label(key: GroupKey) -> String {
    match key {
        GroupKey::Day(d) => d.map_or_else(|| "-".into(), |d| utc_date(d * 86_400_000)),
        GroupKey::Hour(h) => h.map_or_else(|| "-".into(), |h| format!("{}T{:02}:00Z", utc_date(h * 3_600_000), h.rem_euclid(24))),
        GroupKey::Text(t) => t.unwrap_or_else(|| "-".into()),
    }
}

/// The parts of each group merged into its row; sorted by requests, most first.
fn finish(parts: Vec<Part>) -> Vec<StatsRow> {
    let mut groups: BTreeMap<String, (Sums, Option<(f64, f64)>)> = BTreeMap::new();
    for (key, sums, exact) in parts {
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
    out
}

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

/// The roll-up dimension of `group`, and the SQL of its key over `inference_rollups`.
fn dimension(group: GroupBy) -> Option<(&'static str, &'static str)> {
    Some(match group {
        GroupBy::Model => ("model", "value"),
        GroupBy::Provider => ("provider", "value"),
        GroupBy::Route => ("route", "value"),
        GroupBy::User => ("user", "value"),
        GroupBy::Key => ("key", "value"),
        GroupBy::Inbound => ("inbound", "value"),
        GroupBy::Day => ("all", "day"),
        GroupBy::Hour => return None,
        GroupBy::Tag => ("tag", "value"),
    })
}

/// The group key of a stats row's first column: a day number for [`GroupBy::Day`], else
/// text (`None` for NULL).
enum GroupKey {
    Day(Option<i64>),
    Hour(Option<i64>),
    Text(Option<String>),
}

fn group_key(group: GroupBy, r: &AnyRow) -> Result<GroupKey, StoreError> {
    Ok(if group == GroupBy::Day {
        GroupKey::Day(r.try_get::<Option<i64>, _>(0)?)
    } else if group == GroupBy::Hour {
        GroupKey::Hour(r.try_get::<Option<i64>, _>(0)?)
    } else {
        GroupKey::Text(r.try_get::<Option<String>, _>(0)?)
    })
}

impl Store {
    /// Rolled-up sums of `group` over the days `[from_day, to_day)`, by group key.
    async fn rolled_up_stats(
        &self,
        group: GroupBy,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<(GroupKey, Sums)>, StoreError> {
        let Some((dim, key)) = dimension(group) else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT {key} AS k, requests, errors, input_tokens, output_tokens, cache_read_tokens, cost, unpriced, cache_hits, latencies FROM inference_rollups WHERE dim = $1 AND day >= $2 AND day < $3"
        );
        let rows = sqlx::query(&sql)
            .bind(dim)
            .bind(from_day)
            .bind(to_day)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let count = |i: usize| -> Result<u64, sqlx::Error> {
                Ok(r.try_get::<i64, _>(i)?.max(0) as u64)
            };
            let sums = Sums {
                requests: count(1)?,
                errors: count(2)?,
                input_tokens: count(3)?,
                output_tokens: count(4)?,
                cache_read_tokens: count(5)?,
                cost: r.try_get::<f64, _>(6)?,
                unpriced: count(7)?,
                cache_hits: count(8)?,
                latencies: Sums::parse_latencies(&r.try_get::<String, _>(9)?)?,
            };
            out.push((group_key(group, r)?, sums));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
