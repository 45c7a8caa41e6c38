//! The Redis backend: one string per answer (`PREFIX + key`, the answer as JSON), written with
//! `SET ... PX ttl` so Redis expires it; Redis's own `maxmemory` policy bounds the size.
//! Every gateway pointed at the same Redis and prefix shares the answers.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::{CacheError, CacheKey};

/// Longest a cache read or write may take; a slow Redis is a miss, never a slow request.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub(crate) struct RedisBackend {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
}

impl RedisBackend {
    pub(crate) async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
    ) -> Result<RedisBackend, CacheError> {
        let client = redis::Client::open(url).map_err(|e| CacheError::Redis(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(|e| CacheError::Redis(e.to_string()))?;
        Ok(RedisBackend {
            conn,
            prefix: prefix.to_owned(),
            ttl,
        })
    }

    pub(crate) async fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, CacheError> {
        let mut conn = self.conn.clone();
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(format!("{}{key}", self.prefix))
            .query_async(&mut conn)
            .await
            .map_err(|e| CacheError::Redis(e.to_string()))?;
        Ok(value)
    }

    pub(crate) async fn set(&self, key: &CacheKey, value: Vec<u8>) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        redis::cmd("SET")
            .arg(format!("{}{key}", self.prefix))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| CacheError::Redis(e.to_string()))
    }

    /// Pushes `entry` onto the list `name` (newest first), keeping its `keep` newest, and
    /// restarts its expiry: one round trip (a transaction).
    pub(crate) async fn push_bounded(&self, name: &str, entry: Vec<u8>, keep: usize) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let key = format!("{}{name}", self.prefix);
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::pipe()
            .atomic()
            .cmd("LPUSH")
            .arg(&key)
            .arg(entry)
            .ignore()
            .cmd("LTRIM")
            .arg(&key)
            .arg(0)
            .arg(keep.saturating_sub(1))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| CacheError::Redis(e.to_string()))
    }

    /// The list `name`, newest first.
    pub(crate) async fn list(&self, name: &str) -> Result<Vec<Vec<u8>>, CacheError> {
        let mut conn = self.conn.clone();
        redis::cmd("LRANGE")
            .arg(format!("{}{name}", self.prefix))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .map_err(|e| CacheError::Redis(e.to_string()))
    }
}
