//! Fine-tuning jobs kept in the store (migration 10): each job's JSON (what `fungible-tune`
//! knows of it), its status, and a lease, so that of several gateway instances exactly one
//! polls a job at a time and polling resumes after a restart. The store knows nothing of what
//! is in the JSON.

use sqlx::Row;

use crate::store::{Store, StoreError};

/// One job as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneJobRow {
    pub id: String,
    /// `queued`, `running`, `succeeded`, ... (terminal ones are never leased).
    pub status: String,
    /// The job as JSON text.
    pub body: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// The statuses after which a job never changes.
pub const TERMINAL_STATUSES: [&str; 3] = ["succeeded", "failed", "cancelled"];

impl Store {
    pub async fn insert_tune_job(&self, row: &TuneJobRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO tune_jobs (id, status, body, created_ms, updated_ms, lease_owner, lease_until_ms) VALUES ($1, $2, $3, $4, $5, NULL, 0)")
            .bind(&row.id)
            .bind(&row.status)
            .bind(&row.body)
            .bind(row.created_ms)
            .bind(row.updated_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Replaces a job's status and JSON if nothing changed it since it was read
    /// (`updated_ms` is what was read, `now_ms` the new value, greater); whether it did.
    /// A writer that loses re-reads and tries again, so a poll never undoes a promotion or a
    /// cancel made meanwhile.
    pub async fn update_tune_job(&self, id: &str, status: &str, body: &str, updated_ms: i64, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE tune_jobs SET status = $1, body = $2, updated_ms = $3 WHERE id = $4 AND updated_ms = $5")
            .bind(status)
            .bind(body)
            .bind(now_ms)
            .bind(id)
            .bind(updated_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn tune_job(&self, id: &str) -> Result<Option<TuneJobRow>, StoreError> {
        let row = sqlx::query("SELECT id, status, body, created_ms, updated_ms FROM tune_jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_of).transpose()
    }

    /// Jobs, newest first.
    pub async fn tune_jobs(&self, limit: i64) -> Result<Vec<TuneJobRow>, StoreError> {
        let rows = sqlx::query("SELECT id, status, body, created_ms, updated_ms FROM tune_jobs ORDER BY created_ms DESC, id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_of).collect()
    }

    /// Claims the unfinished jobs no live instance holds for `owner` until `now_ms +
    /// lease_ms`. A job is claimed by one instance at a time: the claim is a compare-and-set
    /// on the lease's expiry.
    pub async fn lease_tune_jobs(&self, owner: &str, now_ms: i64, lease_ms: i64) -> Result<Vec<TuneJobRow>, StoreError> {
        let candidates: Vec<(String, i64)> = sqlx::query(
            "SELECT id, lease_until_ms FROM tune_jobs WHERE status NOT IN ('succeeded', 'failed', 'cancelled') AND (lease_until_ms < $1 OR lease_owner = $2)",
        )
        .bind(now_ms)
        .bind(owner)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()?;
        let mut claimed = Vec::new();
        for (id, seen_until) in candidates {
            let done = sqlx::query("UPDATE tune_jobs SET lease_owner = $1, lease_until_ms = $2 WHERE id = $3 AND lease_until_ms = $4")
                .bind(owner)
                .bind(now_ms + lease_ms)
                .bind(&id)
                .bind(seen_until)
                .execute(&self.pool)
                .await?;
            if done.rows_affected() == 1
                && let Some(job) = self.tune_job(&id).await?
            {
                claimed.push(job);
            }
        }
        Ok(claimed)
    }

    /// Claims (or, for its holder, renews) the lease of job `id` alone, as
    /// [`Store::lease_tune_jobs`] claims each; the job if `owner` holds it now, `None` when
    /// it is finished, unknown or held by another live instance.
    pub async fn lease_tune_job(&self, id: &str, owner: &str, now_ms: i64, lease_ms: i64) -> Result<Option<TuneJobRow>, StoreError> {
        let done = sqlx::query(
            "UPDATE tune_jobs SET lease_owner = $1, lease_until_ms = $2 WHERE id = $3 AND status NOT IN ('succeeded', 'failed', 'cancelled') AND (lease_until_ms < $4 OR lease_owner = $1)",
        )
        .bind(owner)
        .bind(now_ms + lease_ms)
        .bind(id)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.tune_job(id).await
    }

    /// Gives a job's lease back (another instance may claim it at once).
    pub async fn release_tune_job(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE tune_jobs SET lease_owner = NULL, lease_until_ms = 0 WHERE id = $1 AND lease_owner = $2")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn job_of(r: &sqlx::any::AnyRow) -> Result<TuneJobRow, StoreError> {
    Ok(TuneJobRow {
        id: r.try_get(0)?,
        status: r.try_get(1)?,
        body: r.try_get(2)?,
        created_ms: r.try_get(3)?,
        updated_ms: r.try_get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_instance_holds_a_job_until_its_lease_ends() {
        let dir = std::env::temp_dir().join("fungible-store-tune-tests");
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = Store::open(&crate::sqlite_url(&dir.join(format!("{}.db", crate::new_id())))).await.unwrap();
        for (id, status) in [("a", "running"), ("b", "queued"), ("c", "succeeded")] {
            let row = TuneJobRow { id: id.into(), status: status.into(), body: "{}".into(), created_ms: 1, updated_ms: 1 };
            store.insert_tune_job(&row).await.unwrap();
        }
        let first = store.lease_tune_jobs("one", 1_000, 60_000).await.unwrap();
        let mut ids: Vec<&str> = first.iter().map(|j| j.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"], "finished jobs are never polled");
        assert!(store.lease_tune_jobs("two", 2_000, 60_000).await.unwrap().is_empty(), "held by one");
        assert_eq!(store.lease_tune_jobs("one", 2_000, 60_000).await.unwrap().len(), 2, "the holder renews");
        store.release_tune_job("a", "one").await.unwrap();
        assert_eq!(store.lease_tune_jobs("two", 3_000, 60_000).await.unwrap().len(), 1, "a released job");
        assert_eq!(store.lease_tune_jobs("two", 70_000, 60_000).await.unwrap().len(), 2, "an expired lease");
        assert!(!store.update_tune_job("b", "succeeded", "{}", 0, 5).await.unwrap(), "changed since it was read");
        assert!(store.update_tune_job("b", "succeeded", "{\"done\":true}", 1, 5).await.unwrap());
        assert_eq!(store.lease_tune_jobs("two", 200_000, 60_000).await.unwrap().len(), 1);
        assert_eq!(store.tune_job("b").await.unwrap().unwrap().body, "{\"done\":true}");
        assert_eq!(store.tune_jobs(10).await.unwrap().len(), 3);

        // One job alone: claimed when free, renewed by its holder, refused to another.
        assert_eq!(store.lease_tune_job("a", "three", 300_000, 60_000).await.unwrap().unwrap().id, "a");
        assert!(store.lease_tune_job("a", "four", 310_000, 60_000).await.unwrap().is_none(), "held by three");
        assert!(store.lease_tune_job("a", "three", 350_000, 60_000).await.unwrap().is_some(), "renewed");
        assert!(store.lease_tune_job("a", "four", 380_000, 60_000).await.unwrap().is_none(), "the renewal counts");
        assert!(store.lease_tune_job("b", "three", 400_000, 60_000).await.unwrap().is_none(), "finished");
        assert!(store.lease_tune_job("nope", "three", 400_000, 60_000).await.unwrap().is_none(), "unknown");
    }
}
