//! [`Store::stats`]: sums and latency percentiles per group (and per time bucket and
//! dimension), from the roll-ups where whole days and hours are rolled up and from the rows
//! for the rest.

use std::collections::{BTreeMap, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use fungible_types::date::utc_date;
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::rollups::{Bucket, DAY_MS, HOUR_MS, Histogram, SUMS_SQL, Sums, TIERS, bucket_from_row, bucket_sql, parse_histogram};
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
    /// UTC hour (`2026-12-07T13:00Z`).
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
    /// The value of [`StatsQuery::split`] this row is for (`-`: none), when split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
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
    /// Time to first token, over the requests that streamed a token (`None`: none did).
    pub p50_ttft_ms: Option<f64>,
    pub p95_ttft_ms: Option<f64>,
}

/// What [`Store::stats_of`] reads: the groups, optionally each time bucket split by a
/// dimension (a series per model, route, ...), over `[since_ms, until_ms)`, of every key or
/// of one virtual key.
#[derive(Debug, Clone, Copy)]
pub struct StatsQuery<'a> {
    pub group: GroupBy,
    /// Only with [`GroupBy::Day`] or [`GroupBy::Hour`]: a row per time bucket and value of
    /// this (non-time) dimension.
    pub split: Option<GroupBy>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// One virtual key's inferences only: read from the rows (the roll-ups are per
    /// dimension, not per key and dimension).
    pub key_id: Option<&'a str>,
}

impl<'a> StatsQuery<'a> {
    pub fn new(group: GroupBy) -> StatsQuery<'a> {
        StatsQuery {
            group,
            split: None,
            since_ms: None,
            until_ms: None,
            key_id: None,
        }
    }

    /// Why this query cannot be answered, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let time = |g: GroupBy| matches!(g, GroupBy::Day | GroupBy::Hour);
        match self.split {
            Some(_) if !time(self.group) => Err(format!(
                "a split needs a time grouping (day or hour), not {:?}",
                self.group
            )),
            Some(s) if time(s) => Err("split by model, provider, route, key, user, tag or inbound".into()),
            _ => Ok(()),
        }
    }
}

impl Store {
    /// Requests, errors, tokens, cost and latency percentiles per group, over the inferences
    /// in `[since_ms, until_ms)`. Sorted by requests, most first.
    pub async fn stats(
        &self,
        group: GroupBy,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<Vec<StatsRow>, StoreError> {
        self.stats_of(&StatsQuery {
            since_ms,
            until_ms,
            ..StatsQuery::new(group)
        })
        .await
    }

    /// The stats `q` asks for, sorted by requests, most first.
    ///
    /// Whole days come from the daily roll-ups, whole hours left from the hourly ones, the
    /// rest from the rows (see `rollups.rs`). The database aggregates: over rows alone,
    /// PostgreSQL computes exact nearest-rank percentiles (`percentile_disc`); otherwise
    /// (roll-ups, or SQLite, which has no percentile aggregate) they are read from
    /// histograms with buckets 1 ms wide below 1 s and 1% of the value above, each with its
    /// smallest and largest value: exact when the bucket holds one distinct value, else
    /// within the bucket's width.
    pub async fn stats_of(&self, q: &StatsQuery<'_>) -> Result<Vec<StatsRow>, StoreError> {
        q.check().map_err(StoreError::Invalid)?;
        let plan = self.plan(q).await?;
        let mut parts = Vec::new();
        for &(tier, from, to) in &plan.rolled {
            self.rolled_parts(q, tier, from, to, &mut parts).await?;
        }
        for &(since_ms, until_ms) in &plan.raw {
            self.raw_parts(q, since_ms, until_ms, plan.exact, &mut parts).await?;
        }
        Ok(finish(parts))
    }

    /// Which parts of a range come from which roll-up tier and which from the rows.
    async fn plan(&self, q: &StatsQuery<'_>) -> Result<Plan, StoreError> {
        let mut plan = Plan { rolled: Vec::new(), raw: Vec::new(), exact: false };
        let watermarks = if q.key_id.is_some() { [0; 2] } else { self.rollup_watermarks().await? };
        plan.take_apart(q, &watermarks, 0, q.since_ms, q.until_ms);
        // PostgreSQL's exact percentiles when the rows alone answer; histograms otherwise.
        plan.exact = plan.rolled.is_empty() && self.backend == Backend::Postgres;
        Ok(plan)
    }

    /// A tier's share of a query, units `[from, to)`, merged per label, into `parts`.
    ///
    /// Reading a month of roll-ups is mostly parsing their histograms, so the merged share of
    /// recent queries is kept ([`RolledCache`]), with the number of roll-up rows it was read
    /// from: rows are only ever added (a late record adds some), so an unchanged count is an
    /// unchanged share, on every instance sharing the store.
    async fn rolled_parts(&self, q: &StatsQuery<'_>, tier: usize, from: i64, to: i64, parts: &mut Vec<Part>) -> Result<(), StoreError> {
        let Some((dim, key, split)) = rolled_sql(q, tier) else {
            return Ok(());
        };
        let t = &TIERS[tier];
        let (table, column) = (t.table, t.column);
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE dim = $1 AND {column} >= $2 AND {column} < $3"))
            .bind(dim)
            .bind(from)
            .bind(to)
            .fetch_one(&self.pool)
            .await?;
        let cache_key = RolledKey { tier, dim, key, split, from, to };
        let merged = match self.rolled.get(&cache_key, count) {
            Some(merged) => merged,
            None => {
                let sql = format!(
                    "SELECT {key} AS k, {split} AS s, requests, errors, input_tokens, output_tokens, cache_read_tokens, cost, unpriced, cache_hits, latencies, ttfts FROM {table} WHERE dim = $1 AND {column} >= $2 AND {column} < $3"
                );
                let rows = sqlx::query(&sql).bind(dim).bind(from).bind(to).fetch_all(&self.pool).await?;
                let mut merged: BTreeMap<(String, Option<String>), Sums> = BTreeMap::new();
                for r in &rows {
                    let mut sums = Sums::from_row(r, 2)?;
                    sums.latencies = parse_histogram(&r.try_get::<String, _>(10)?)?;
                    sums.ttfts = parse_histogram(&r.try_get::<String, _>(11)?)?;
                    merged.entry(labels(q, r)?).or_default().add(sums);
                }
                let merged = Arc::new(merged.into_iter().collect::<Vec<_>>());
                self.rolled.put(cache_key, count, merged.clone());
                merged
            }
        };
        parts.extend(merged.iter().map(|(labels, sums)| (labels.clone(), sums.clone(), None)));
        Ok(())
    }

    /// The rows' share of a query in `[since_ms, until_ms)`, labelled, into `parts`: with
    /// `exact` (PostgreSQL), one row per group with its percentiles; on SQLite one row per
    /// group with its latency histogram as JSON; else one row per group and latency
    /// bucket. Time to first token: one row per group and bucket, but for `exact`.
    async fn raw_parts(
        &self,
        q: &StatsQuery<'_>,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        exact: bool,
        parts: &mut Vec<Part>,
    ) -> Result<(), StoreError> {
        let (key, join) = group_sql(q.group);
        let (split, split_join) = q.split.map_or(("CAST(NULL AS TEXT)", ""), group_sql);
        let join = if join.is_empty() { split_join } else { join };
        // Group by `s` only when split: PostgreSQL refuses a constant in GROUP BY.
        let by = if q.split.is_some() { "k, s" } else { "k" };
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
        if q.key_id.is_some() {
            range.push(format!("key_id = ${}", binds.len() + 1));
        }
        let filter = |more: &str| {
            let mut all = range.clone();
            if !more.is_empty() {
                all.push(more.to_owned());
            }
            if all.is_empty() { String::new() } else { format!(" WHERE {}", all.join(" AND ")) }
        };
        // On SQLite a bare column is grouped as `+column`, so that SQLite does not walk that
        // column's index (`inferences_key` for `key_id`) over every row instead of the time
        // range.
        let unindexed = |c: &str| {
            let bare = c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
            if bare && self.backend == Backend::Sqlite { format!("+{c}") } else { c.to_owned() }
        };
        let (key, split) = (unindexed(key), unindexed(split));
        let latency = bucket_sql(self.backend, "latency_ms");
        let sql = if exact {
            format!(
                "SELECT {key} AS k, {split} AS s, {SUMS_SQL}, percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_ms), percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms), percentile_disc(0.5) WITHIN GROUP (ORDER BY ttft_ms), percentile_disc(0.95) WITHIN GROUP (ORDER BY ttft_ms) FROM inferences{join}{} GROUP BY {by}",
                filter("")
            )
        } else if self.backend == Backend::Sqlite {
            // One row per group with its histogram as JSON (the roll-ups' format), not one per
            // group and bucket: a key's 400 buckets were 400 rows to decode.
            format!(
                "SELECT k, s, SUM(n), SUM(e), SUM(i), SUM(o), SUM(cr), SUM(c), SUM(u), SUM(h), json_group_array(json_array(b, n, mn, mx)) FROM (SELECT {key} AS k, {split} AS s, {latency} AS b, COUNT(*) AS n, SUM(CASE WHEN error IS NULL THEN 0 ELSE 1 END) AS e, SUM(input_tokens) AS i, SUM(output_tokens) AS o, SUM(cache_read_tokens) AS cr, SUM(cost) AS c, SUM(CASE WHEN cost IS NULL THEN 1 ELSE 0 END) AS u, SUM(cache_hit) AS h, MIN(latency_ms) AS mn, MAX(latency_ms) AS mx FROM inferences{join}{} GROUP BY k, s, b) GROUP BY k, s",
                filter("")
            )
        } else {
            format!(
                "SELECT {key} AS k, {split} AS s, {SUMS_SQL}, MIN(latency_ms), MAX(latency_ms), {latency} AS b FROM inferences{join}{} GROUP BY {by}, b",
                filter("")
            )
        };
        for r in bound(&sql, &binds, q.key_id).fetch_all(&self.pool).await? {
            // Columns 0 and 1 the labels, 2 to 9 the sums.
            let mut sums = Sums::from_row(&r, 2)?;
            let mut exact_part = None;
            if exact {
                let p = |i: usize| r.try_get::<Option<f64>, _>(i);
                exact_part = Some(Exact {
                    latency: (p(10)?.unwrap_or(0.0), p(11)?.unwrap_or(0.0)),
                    ttft: p(12)?.zip(p(13)?),
                });
            } else if self.backend == Backend::Sqlite {
                sums.latencies = parse_histogram(&r.try_get::<String, _>(10)?)?;
            } else {
                let bucket = Bucket {
                    count: sums.requests,
                    min: r.try_get::<Option<f64>, _>(10)?.unwrap_or(0.0),
                    max: r.try_get::<Option<f64>, _>(11)?.unwrap_or(0.0),
                };
                sums.latencies.insert(r.try_get::<Option<i64>, _>(12)?.unwrap_or(0), bucket);
            }
            parts.push((labels(q, &r)?, sums, exact_part));
        }
        if !exact {
            let ttft = bucket_sql(self.backend, "ttft_ms");
            let sql = format!(
                "SELECT {key} AS k, {split} AS s, COUNT(*), MIN(ttft_ms), MAX(ttft_ms), {ttft} AS b FROM inferences{join}{} GROUP BY {by}, b",
                filter("ttft_ms IS NOT NULL")
            );
            for r in bound(&sql, &binds, q.key_id).fetch_all(&self.pool).await? {
                let (b, bucket) = bucket_from_row(&r, 2)?;
                let mut sums = Sums::default();
                sums.ttfts.insert(b, bucket);
                parts.push((labels(q, &r)?, sums, None));
            }
        }
        Ok(())
    }
}

/// What a route's shadow candidate did, from its records (`fungible-server`'s `shadow`:
/// inbound `shadow`, tagged `fungible.shadow_route` and `fungible.shadow_of`, scored by
/// feedback on them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowStatsRow {
    pub route: String,
    /// `PROVIDER/MODEL`.
    pub candidate: String,
    pub calls: u64,
    pub failed: u64,
    /// Answers with a score, and how many agreed with the primary.
    pub scored: u64,
    pub agreed: u64,
    pub mean_score: Option<f64>,
    /// Over the answered calls: the candidate's, and the primaries they shadowed.
    pub mean_latency_ms: Option<f64>,
    pub primary_mean_latency_ms: Option<f64>,
    pub cost: f64,
    pub primary_cost: f64,
}

impl Store {
    /// Each route's shadow candidates over the shadow calls recorded in
    /// `[since_ms, until_ms)`, of one virtual key's requests (`Some(key_id)`) or of all.
    /// Read through the tag index: as many rows as shadow calls, however many inferences.
    pub async fn shadow_stats(&self, since_ms: Option<i64>, until_ms: Option<i64>, key_id: Option<&str>) -> Result<Vec<ShadowStatsRow>, StoreError> {
        let mut filter = String::new();
        let mut binds = Vec::new();
        for (bound, op) in [(since_ms, ">="), (until_ms, "<")] {
            if let Some(ms) = bound {
                binds.push(ms);
                filter.push_str(&format!(" AND s.time_ms {op} ${}", binds.len()));
            }
        }
        if key_id.is_some() {
            filter.push_str(&format!(" AND s.key_id = ${}", binds.len() + 1));
        }
        // `fungible.shadow_route=` and `fungible.shadow_of=` are 22 and 19 characters; the
        // range `[prefix=, prefix>)` holds exactly the tags that start with `prefix=`.
        let sql = format!(
            "SELECT SUBSTR(rt.tag, 23) AS route, s.provider || '/' || s.model AS candidate,              COUNT(*),              CAST(SUM(CASE WHEN s.error IS NULL THEN 0 ELSE 1 END) AS BIGINT),              COUNT(f.id),              CAST(SUM(CASE WHEN f.boolean = 1 THEN 1 ELSE 0 END) AS BIGINT),              AVG(f.score),              AVG(CASE WHEN s.error IS NULL THEN s.latency_ms END),              AVG(CASE WHEN s.error IS NULL THEN p.latency_ms END),              SUM(s.cost),              SUM(CASE WHEN s.error IS NULL THEN p.cost END)              FROM inference_tags rt              JOIN inferences s ON s.id = rt.inference_id              LEFT JOIN inference_tags po ON po.inference_id = s.id AND po.tag >= 'fungible.shadow_of=' AND po.tag < 'fungible.shadow_of>'              LEFT JOIN inferences p ON p.id = SUBSTR(po.tag, 20)              LEFT JOIN feedback f ON f.target = 'inference' AND f.target_id = s.id              WHERE rt.tag >= 'fungible.shadow_route=' AND rt.tag < 'fungible.shadow_route>' AND s.inbound = 'shadow'{filter}              GROUP BY SUBSTR(rt.tag, 23), s.provider || '/' || s.model              ORDER BY 1, 2"
        );
        let rows = bound(&sql, &binds, key_id).fetch_all(&self.pool).await?;
        let count = |r: &AnyRow, i: usize| -> Result<u64, sqlx::Error> { Ok(r.try_get::<Option<i64>, _>(i)?.unwrap_or(0).max(0) as u64) };
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(ShadowStatsRow {
                route: r.try_get::<Option<String>, _>(0)?.unwrap_or_default(),
                candidate: r.try_get::<Option<String>, _>(1)?.unwrap_or_else(|| "-".into()),
                calls: count(r, 2)?,
                failed: count(r, 3)?,
                scored: count(r, 4)?,
                agreed: count(r, 5)?,
                mean_score: r.try_get(6)?,
                mean_latency_ms: r.try_get(7)?,
                primary_mean_latency_ms: r.try_get(8)?,
                cost: r.try_get::<Option<f64>, _>(9)?.unwrap_or(0.0),
                primary_cost: r.try_get::<Option<f64>, _>(10)?.unwrap_or(0.0),
            });
        }
        Ok(out)
    }
}

/// `sql` with the range's bounds and the key bound, in the order [`Store::raw_parts`]
/// numbers them.
fn bound<'q>(sql: &'q str, bounds: &[i64], key_id: Option<&str>) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut query = sqlx::query(sql);
    for &ms in bounds {
        query = query.bind(ms);
    }
    if let Some(key_id) = key_id {
        query = query.bind(key_id.to_owned());
    }
    query
}

/// Which parts of a stats range which roll-up tier answers (units `[from, to)` of
/// [`TIERS`]`[tier]`), which ranges of rows the rest is read from, and whether PostgreSQL
/// gives exact percentiles.
struct Plan {
    rolled: Vec<(usize, i64, i64)>,
    raw: Vec<(Option<i64>, Option<i64>)>,
    exact: bool,
}

impl Plan {
    /// Takes `[since, until)` apart from tier `tier` down: its whole units up to its
    /// watermark from it, the edges from the finer tiers, and what no tier holds from the
    /// rows.
    fn take_apart(&mut self, q: &StatsQuery<'_>, watermarks: &[i64; 2], tier: usize, since: Option<i64>, until: Option<i64>) {
        if matches!((since, until), (Some(a), Some(b)) if a >= b) {
            return;
        }
        let Some(t) = TIERS.get(tier) else {
            self.raw.push((since, until));
            return;
        };
        let watermark = watermarks[tier];
        let unit = t.unit_ms;
        let from = since.map_or(i64::MIN / unit, |s| s.div_euclid(unit) + i64::from(s.rem_euclid(unit) != 0));
        let to = until.map_or(watermark / unit, |u| u.div_euclid(unit).min(watermark / unit));
        // Watermark 0: nothing is rolled up yet.
        if watermark == 0 || from >= to || rolled_sql(q, tier).is_none() {
            return self.take_apart(q, watermarks, tier + 1, since, until);
        }
        self.rolled.push((tier, from, to));
        if from > i64::MIN / unit {
            self.take_apart(q, watermarks, tier + 1, since, Some(from * unit));
        }
        self.take_apart(q, watermarks, tier + 1, Some(to * unit), until);
    }
}

/// What a tier's share of a stats query is cached under: the tier, the dimension and the
/// key and split SQL read, and the units.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RolledKey {
    tier: usize,
    dim: &'static str,
    key: &'static str,
    split: &'static str,
    from: i64,
    to: i64,
}

/// A roll-up share, merged per label.
type Merged = Arc<Vec<((String, Option<String>), Sums)>>;

/// The merged roll-up shares of the most recent distinct stats queries, each with the count
/// of roll-up rows it was read from: at most [`RolledCache::ENTRIES`] of them and
/// [`RolledCache::BYTES`] (estimated) in all; a share over half of that is not kept.
pub(crate) struct RolledCache {
    entries: Mutex<VecDeque<(RolledKey, i64, Merged, usize)>>,
    bytes: usize,
}

impl Default for RolledCache {
    fn default() -> RolledCache {
        RolledCache::with_bytes(RolledCache::BYTES)
    }
}

impl std::fmt::Debug for RolledCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolledCache").finish_non_exhaustive()
    }
}

impl RolledCache {
    /// A dashboard's worth: five groupings and a few series, for a few ranges.
    const ENTRIES: usize = 64;
    /// The overview's three ranges of five groupings on 1M inferences take about 25 MB; a
    /// month split by 50 keys would take some 140 MB, and is read each time instead.
    const BYTES: usize = 32 << 20;

    fn with_bytes(bytes: usize) -> RolledCache {
        RolledCache { entries: Mutex::default(), bytes }
    }

    /// An estimate of a share's memory: a histogram bucket in a `BTreeMap` takes about 48
    /// bytes.
    fn size(merged: &[((String, Option<String>), Sums)]) -> usize {
        merged
            .iter()
            .map(|((key, split), sums)| 128 + key.len() + split.as_ref().map_or(0, String::len) + 48 * (sums.latencies.len() + sums.ttfts.len()))
            .sum()
    }

    fn get(&self, key: &RolledKey, rows: i64) -> Option<Merged> {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = entries.iter().position(|(k, n, _, _)| k == key && *n == rows)?;
        // Most recently used last.
        let entry = entries.remove(at)?;
        let merged = entry.2.clone();
        entries.push_back(entry);
        Some(merged)
    }

    fn put(&self, key: RolledKey, rows: i64, merged: Merged) {
        let size = RolledCache::size(&merged);
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.retain(|(k, _, _, _)| *k != key);
        if size > self.bytes / 2 {
            return;
        }
        let mut total: usize = entries.iter().map(|e| e.3).sum::<usize>() + size;
        while entries.len() >= Self::ENTRIES || total > self.bytes {
            let Some(oldest) = entries.pop_front() else { break };
            total -= oldest.3;
        }
        entries.push_back((key, rows, merged, size));
    }
}

/// Exact percentiles the database computed: latency (p50, p95), and time to first token.
#[derive(Debug, Clone, Copy)]
struct Exact {
    latency: (f64, f64),
    ttft: Option<(f64, f64)>,
}

/// A group's labels (key, split), its sums, and its exact percentiles when the database
/// computed them.
type Part = ((String, Option<String>), Sums, Option<Exact>);

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

/// The roll-up dimension of a non-time grouping.
fn dimension(group: GroupBy) -> Option<&'static str> {
    Some(match group {
        GroupBy::Model => "model",
        GroupBy::Provider => "provider",
        GroupBy::Route => "route",
        GroupBy::User => "user",
        GroupBy::Key => "key",
        GroupBy::Inbound => "inbound",
        GroupBy::Tag => "tag",
        GroupBy::Day | GroupBy::Hour => return None,
    })
}

/// How tier `tier` answers `q`: the dimension to read, and the SQL of the key and of the
/// split over its table; `None` when it cannot (hours from the daily tier).
fn rolled_sql(q: &StatsQuery<'_>, tier: usize) -> Option<(&'static str, &'static str, &'static str)> {
    const NONE: &str = "CAST(NULL AS TEXT)";
    let time = |group: GroupBy| match (group, TIERS[tier].column) {
        (GroupBy::Day, "day") => Some("day"),
        (GroupBy::Day, _) => Some("hour / 24"),
        (GroupBy::Hour, "hour") => Some("hour"),
        _ => None,
    };
    match (q.group, q.split) {
        (GroupBy::Day | GroupBy::Hour, Some(split)) => Some((dimension(split)?, time(q.group)?, "value")),
        (GroupBy::Day | GroupBy::Hour, None) => Some(("all", time(q.group)?, NONE)),
        (group, _) => Some((dimension(group)?, "value", NONE)),
    }
}

/// A stats row's labels from its first two columns: the group (a UTC date, a UTC hour, or
/// the value, `-` for none) and, when split, the split's value.
fn labels(q: &StatsQuery<'_>, r: &AnyRow) -> Result<(String, Option<String>), StoreError> {
    let key = match q.group {
        GroupBy::Day => r.try_get::<Option<i64>, _>(0)?.map_or_else(|| "-".into(), |d| utc_date(d * DAY_MS)),
        GroupBy::Hour => r
            .try_get::<Option<i64>, _>(0)?
            .map_or_else(|| "-".into(), |h| format!("{}T{:02}:00Z", utc_date(h * HOUR_MS), h.rem_euclid(24))),
        _ => r.try_get::<Option<String>, _>(0)?.unwrap_or_else(|| "-".into()),
    };
    let split = match q.split {
        Some(_) => Some(r.try_get::<Option<String>, _>(1)?.unwrap_or_else(|| "-".into())),
        None => None,
    };
    Ok((key, split))
}

/// The parts of each group merged into its row; sorted by requests, most first.
fn finish(parts: Vec<Part>) -> Vec<StatsRow> {
    let mut groups: BTreeMap<(String, Option<String>), (Sums, Option<Exact>)> = BTreeMap::new();
    for (labels, sums, exact) in parts {
        let entry = groups.entry(labels).or_default();
        entry.0.add(sums);
        if exact.is_some() {
            entry.1 = exact;
        }
    }
    let mut out: Vec<StatsRow> = groups
        .into_iter()
        .map(|((key, split), (sums, exact))| {
            let percentiles = |h: &Histogram| {
                let buckets: Vec<Bucket> = h.values().copied().collect();
                (bucket_percentile(&buckets, 0.50), bucket_percentile(&buckets, 0.95))
            };
            let (latency, ttft) = match exact {
                Some(e) => (e.latency, e.ttft),
                None => (percentiles(&sums.latencies), (!sums.ttfts.is_empty()).then(|| percentiles(&sums.ttfts))),
            };
            StatsRow {
                key,
                split,
                requests: sums.requests,
                errors: sums.errors,
                input_tokens: sums.input_tokens,
                output_tokens: sums.output_tokens,
                cache_read_tokens: sums.cache_read_tokens,
                cost: sums.cost,
                unpriced: sums.unpriced,
                cache_hits: sums.cache_hits,
                p50_latency_ms: latency.0,
                p95_latency_ms: latency.1,
                p50_ttft_ms: ttft.map(|t| t.0),
                p95_ttft_ms: ttft.map(|t| t.1),
            }
        })
        .collect();
    out.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.key.cmp(&b.key)).then_with(|| a.split.cmp(&b.split)));
    out
}

/// The nearest-rank percentile `q` of the values summarised by `buckets` (sorted, and
/// not overlapping): the bucket holding the rank, and within it, the smallest value for
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
    fn the_rolled_cache_keeps_the_newest_within_its_bytes() {
        let key = |from| RolledKey { tier: 0, dim: "model", key: "value", split: "NULL", from, to: from + 1 };
        // One label with `n` latency buckets.
        let share = |n: i64| -> Merged {
            let mut sums = Sums::default();
            for b in 0..n {
                sums.latencies.insert(b, Bucket { count: 1, min: b as f64, max: b as f64 });
            }
            Arc::new(vec![(("m".to_owned(), None), sums)])
        };
        let one = RolledCache::size(&share(100));
        let cache = RolledCache::with_bytes(3 * one);
        for from in 0..3 {
            cache.put(key(from), 7, share(100));
        }
        assert!(cache.get(&key(0), 7).is_some());
        // A fourth evicts the least recently used: 1 (0 was just read).
        cache.put(key(3), 7, share(100));
        assert!(cache.get(&key(1), 7).is_none());
        assert!(cache.get(&key(0), 7).is_some() && cache.get(&key(3), 7).is_some());
        // Another row count is another share; one over half the bytes is not kept.
        assert!(cache.get(&key(0), 8).is_none());
        cache.put(key(9), 7, share(200));
        assert!(cache.get(&key(9), 7).is_none());
        assert!(cache.get(&key(0), 7).is_some());
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
