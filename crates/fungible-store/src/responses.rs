//! Stored OpenAI Responses (`previous_response_id`) kept in the store, so several gateways on
//! one PostgreSQL continue each other's conversations (the server's `ResponseStore` uses this
//! when the store is PostgreSQL and no Redis is configured). Table `responses`, migration 8:
//! the response object and the conversation as JSON text, the owner key's id, and when the
//! row expires; expired rows are never returned and are deleted as new ones arrive.

use sqlx::Row;

use crate::store::{Store, StoreError};

/// One stored response as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponseRow {
    pub owner: Option<String>,
    /// The response object's JSON text.
    pub body: String,
    /// The canonical conversation's JSON text.
    pub conversation: String,
}

impl Store {
    /// Keeps a response until `expires_ms`; deletes the rows that expired before `now_ms`.
    pub async fn put_response(
        &self,
        id: &str,
        row: &StoredResponseRow,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM responses WHERE expires_ms < $1").bind(now_ms).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO responses (id, owner, body, conversation, expires_ms) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(row.owner.as_deref())
            .bind(&row.body)
            .bind(&row.conversation)
            .bind(expires_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The response `id`, unless it expired before `now_ms`.
    pub async fn response(&self, id: &str, now_ms: i64) -> Result<Option<StoredResponseRow>, StoreError> {
        let row = sqlx::query("SELECT owner, body, conversation FROM responses WHERE id = $1 AND expires_ms >= $2")
            .bind(id)
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(StoredResponseRow { owner: r.try_get("owner")?, body: r.try_get("body")?, conversation: r.try_get("conversation")? })
        })
        .transpose()
    }

    /// Deletes the response `id`; whether it was there.
    pub async fn delete_response(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM responses WHERE id = $1").bind(id).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_response_round_trips_expires_and_is_deleted() {
        let dir = std::env::temp_dir().join("fungible-store-response-tests");
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(format!("{}.db", crate::new_id()));
        let store = Store::open(&crate::sqlite_url(&path)).await.expect("store opens");
        let row = StoredResponseRow { owner: Some("key_a".into()), body: "{\"id\":\"resp_1\"}".into(), conversation: "[]".into() };
        store.put_response("resp_1", &row, 1_000, 2_000).await.unwrap();
        assert_eq!(store.response("resp_1", 1_500).await.unwrap(), Some(row.clone()));
        assert_eq!(store.response("resp_1", 2_001).await.unwrap(), None, "expired");
        // A later insert purges it.
        store.put_response("resp_2", &row, 3_000, 4_000).await.unwrap();
        assert!(!store.delete_response("resp_1").await.unwrap());
        assert!(store.delete_response("resp_2").await.unwrap());
        assert_eq!(store.response("resp_2", 3_000).await.unwrap(), None);
    }
}
