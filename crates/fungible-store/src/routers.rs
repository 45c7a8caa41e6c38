//! Learned routers kept in the store (migration 13): each trained version of a route's
//! router, its report and its model as JSON text (what `fungible-router` writes; the store
//! knows nothing of it). The active version is the newest one not retired, so every instance
//! sharing the store serves the same one, and a rollback is retiring the versions after it.
//! Beside them, the labels a router trains from that the store holds: feedback on a route's
//! answers, and shadow candidates' scores against the primary.

use sqlx::Row;

use crate::datasets::{RACE_TRIES, lost_race};
use crate::store::{Store, StoreError};

/// One version of a route's router.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterRow {
    pub route: String,
    pub version: i64,
    pub created_ms: i64,
    pub kind: String,
    /// The training report, JSON text.
    pub report: String,
    /// The model, JSON text; empty where a listing left it out.
    pub model: String,
    /// When a rollback retired it; `None` while it may serve.
    pub retired_ms: Option<i64>,
}

/// Feedback on one answer of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackLabel {
    pub inference_id: String,
    /// The canonical request, JSON text.
    pub request: String,
    /// `PROVIDER/MODEL` that answered.
    pub target: String,
    pub boolean: Option<bool>,
    pub score: Option<f64>,
    pub cost: Option<f64>,
    pub latency_ms: f64,
}

/// A shadow candidate's score against the primary answer it shadowed.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowLabel {
    pub primary_id: String,
    /// The primary's canonical request, JSON text.
    pub request: String,
    pub primary: String,
    pub candidate: String,
    pub boolean: Option<bool>,
    pub score: Option<f64>,
    pub primary_cost: Option<f64>,
    pub primary_latency_ms: f64,
    pub candidate_cost: Option<f64>,
    pub candidate_latency_ms: f64,
}

const ROUTER_COLUMNS: &str = "route, version, created_ms, kind, report, model, retired_ms";

impl Store {
    /// Adds a new version of `route`'s router (the first is 1), active from now on; returns
    /// its number. Concurrent writers each get their own version.
    pub async fn create_router(&self, route: &str, kind: &str, report: &str, model: &str) -> Result<i64, StoreError> {
        let mut tries = 0;
        loop {
            match self.try_create_router(route, kind, report, model).await {
                Err(StoreError::Database(e)) if lost_race(&e) && tries + 1 < RACE_TRIES => tries += 1,
                other => return other,
            }
        }
    }

    async fn try_create_router(&self, route: &str, kind: &str, report: &str, model: &str) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM routers WHERE route = $1").bind(route).fetch_one(&mut *tx).await?;
        let version = latest.unwrap_or(0) + 1;
        sqlx::query("INSERT INTO routers (route, version, created_ms, kind, report, model, retired_ms) VALUES ($1, $2, $3, $4, $5, $6, NULL)")
            .bind(route)
            .bind(version)
            .bind(crate::now_ms())
            .bind(kind)
            .bind(report)
            .bind(model)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// The active version of each route's router: `(route, version)`, by route. What a
    /// server polls to see a new version or a rollback.
    pub async fn active_router_versions(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT route, MAX(version) FROM routers WHERE retired_ms IS NULL GROUP BY route ORDER BY route")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// One version of `route`'s router, model included; the active one when `version` is
    /// `None`.
    pub async fn router(&self, route: &str, version: Option<i64>) -> Result<Option<RouterRow>, StoreError> {
        let row = match version {
            Some(v) => {
                sqlx::query(&format!("SELECT {ROUTER_COLUMNS} FROM routers WHERE route = $1 AND version = $2"))
                    .bind(route)
                    .bind(v)
                    .fetch_optional(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {ROUTER_COLUMNS} FROM routers WHERE route = $1 AND retired_ms IS NULL ORDER BY version DESC LIMIT 1"
                ))
                .bind(route)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.as_ref().map(router_of).transpose()
    }

    /// Every version of `route`'s router, newest first, without the models.
    pub async fn router_versions(&self, route: &str) -> Result<Vec<RouterRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT route, version, created_ms, kind, report, '' AS model, retired_ms FROM routers WHERE route = $1 ORDER BY version DESC",
        )
        .bind(route)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(router_of).collect()
    }

    /// Makes `to` (by default, the latest version before the active one that was not rolled
    /// back itself) `route`'s active router:
    /// retires every later version and brings `to` back if it was retired. Returns the
    /// version now active.
    pub async fn roll_back_router(&self, route: &str, to: Option<i64>) -> Result<i64, StoreError> {
        let mut tries = 0;
        loop {
            match self.try_roll_back_router(route, to).await {
                Err(StoreError::Database(e)) if lost_race(&e) && tries + 1 < RACE_TRIES => tries += 1,
                other => return other,
            }
        }
    }

    async fn try_roll_back_router(&self, route: &str, to: Option<i64>) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let active: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM routers WHERE route = $1 AND retired_ms IS NULL")
            .bind(route)
            .fetch_one(&mut *tx)
            .await?;
        let to = match (to, active) {
            (Some(v), _) => v,
            (None, Some(a)) => {
                // The version before that was not itself rolled back.
                let before: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(version) FROM routers WHERE route = $1 AND version < $2 AND retired_ms IS NULL",
                )
                    .bind(route)
                    .bind(a)
                    .fetch_one(&mut *tx)
                    .await?;
                before.ok_or_else(|| {
                    StoreError::Invalid(format!("{route}: no version before {a} is left to roll back to (name one with --to)"))
                })?
            }
            (None, None) => return Err(StoreError::Invalid(format!("{route}: no router version is active"))),
        };
        let exists: Option<i64> = sqlx::query_scalar("SELECT version FROM routers WHERE route = $1 AND version = $2")
            .bind(route)
            .bind(to)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::Invalid(format!("{route} has no router version {to}")));
        }
        sqlx::query("UPDATE routers SET retired_ms = $1 WHERE route = $2 AND version > $3 AND retired_ms IS NULL")
            .bind(crate::now_ms())
            .bind(route)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE routers SET retired_ms = NULL WHERE route = $1 AND version = $2")
            .bind(route)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(to)
    }

    /// Feedback on `route`'s answers (successful, whole records of client requests, not
    /// shadow calls; an answer rated more than once counts with its latest), newest first,
    /// at most `limit`.
    pub async fn feedback_labels(&self, route: &str, since_ms: Option<i64>, limit: i64) -> Result<Vec<FeedbackLabel>, StoreError> {
        let rows = sqlx::query(
            "SELECT i.id, i.request, i.provider || '/' || i.model, f.boolean, f.score, i.cost, i.latency_ms FROM inferences i \
             JOIN feedback f ON f.id = (SELECT l.id FROM feedback l WHERE l.target = 'inference' AND l.target_id = i.id ORDER BY l.time_ms DESC, l.id DESC LIMIT 1) \
             WHERE i.route = $1 AND i.inbound <> 'shadow' AND i.error IS NULL AND i.truncated = 0 AND i.provider IS NOT NULL AND i.time_ms >= $2 \
             ORDER BY i.time_ms DESC LIMIT $3",
        )
        .persistent(self.cache_statements())
        .bind(route)
        .bind(since_ms.unwrap_or(i64::MIN))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FeedbackLabel {
                    inference_id: r.try_get(0)?,
                    request: r.try_get(1)?,
                    target: r.try_get(2)?,
                    boolean: r.try_get::<Option<i64>, _>(3)?.map(|b| b != 0),
                    score: r.try_get(4)?,
                    cost: r.try_get(5)?,
                    latency_ms: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// The scores of `route`'s shadow candidates against the primaries they shadowed (both
    /// answered), newest first, at most `limit`.
    pub async fn shadow_labels(&self, route: &str, since_ms: Option<i64>, limit: i64) -> Result<Vec<ShadowLabel>, StoreError> {
        // `fungible.shadow_of=` is 19 characters: the primary's id starts at 20.
        let rows = sqlx::query(
            "SELECT p.id, p.request, p.provider || '/' || p.model, s.provider || '/' || s.model, f.boolean, f.score, \
             p.cost, p.latency_ms, s.cost, s.latency_ms \
             FROM inference_tags rt \
             JOIN inferences s ON s.id = rt.inference_id \
             JOIN inference_tags po ON po.inference_id = s.id AND po.tag >= 'fungible.shadow_of=' AND po.tag < 'fungible.shadow_of>' \
             JOIN inferences p ON p.id = SUBSTR(po.tag, 20) \
             JOIN feedback f ON f.target = 'inference' AND f.target_id = s.id \
             WHERE rt.tag = $1 AND s.inbound = 'shadow' AND s.error IS NULL AND p.error IS NULL AND p.truncated = 0 \
             AND p.provider IS NOT NULL AND s.provider IS NOT NULL AND s.time_ms >= $2 \
             ORDER BY s.time_ms DESC LIMIT $3",
        )
        .persistent(self.cache_statements())
        .bind(format!("fungible.shadow_route={route}"))
        .bind(since_ms.unwrap_or(i64::MIN))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ShadowLabel {
                    primary_id: r.try_get(0)?,
                    request: r.try_get(1)?,
                    primary: r.try_get(2)?,
                    candidate: r.try_get(3)?,
                    boolean: r.try_get::<Option<i64>, _>(4)?.map(|b| b != 0),
                    score: r.try_get(5)?,
                    primary_cost: r.try_get(6)?,
                    primary_latency_ms: r.try_get(7)?,
                    candidate_cost: r.try_get(8)?,
                    candidate_latency_ms: r.try_get(9)?,
                })
            })
            .collect()
    }
}

fn router_of(r: &sqlx::any::AnyRow) -> Result<RouterRow, StoreError> {
    Ok(RouterRow {
        route: r.try_get(0)?,
        version: r.try_get(1)?,
        created_ms: r.try_get(2)?,
        kind: r.try_get(3)?,
        report: r.try_get(4)?,
        model: r.try_get(5)?,
        retired_ms: r.try_get(6)?,
    })
}

/// The feedback on one variant of an A/B route's answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VariantFeedback {
    pub variant: String,
    /// Feedback rows with a boolean, and how many said true.
    pub booleans: u64,
    pub positives: u64,
    /// Feedback rows with a score, their sum and the sum of their squares.
    pub scores: u64,
    pub score_sum: f64,
    pub score_sq_sum: f64,
}

impl Store {
    /// The feedback on `route`'s answers by the variant each request was assigned (its
    /// first pick, whoever answered), client requests only; an answer rated more than once
    /// counts once, with its latest rating.
    pub async fn variant_feedback(&self, route: &str) -> Result<Vec<VariantFeedback>, StoreError> {
        let rows = sqlx::query(
            "SELECT i.variant, COUNT(f.boolean), CAST(SUM(CASE WHEN f.boolean = 1 THEN 1 ELSE 0 END) AS BIGINT), \
             COUNT(f.score), SUM(f.score), SUM(f.score * f.score) \
             FROM inferences i JOIN feedback f ON f.id = (SELECT l.id FROM feedback l WHERE l.target = 'inference' AND l.target_id = i.id ORDER BY l.time_ms DESC, l.id DESC LIMIT 1) \
             WHERE i.route = $1 AND i.inbound <> 'shadow' AND i.variant IS NOT NULL \
             GROUP BY i.variant ORDER BY i.variant",
        )
        .persistent(self.cache_statements())
        .bind(route)
        .fetch_all(&self.pool)
        .await?;
        let count = |r: &sqlx::any::AnyRow, i: usize| -> Result<u64, sqlx::Error> { Ok(r.try_get::<Option<i64>, _>(i)?.unwrap_or(0).max(0) as u64) };
        rows.iter()
            .map(|r| {
                Ok(VariantFeedback {
                    variant: r.try_get(0)?,
                    booleans: count(r, 1)?,
                    positives: count(r, 2)?,
                    scores: count(r, 3)?,
                    score_sum: r.try_get::<Option<f64>, _>(4)?.unwrap_or(0.0),
                    score_sq_sum: r.try_get::<Option<f64>, _>(5)?.unwrap_or(0.0),
                })
            })
            .collect()
    }
}
