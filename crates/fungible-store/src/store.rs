//! [`Store`]: the database behind the recorder and the read-back API, opened and migrated
//! here. What it reads and writes is in the files of each kind of data: `inferences.rs`
//! (records, attempts, feedback), `stats.rs`, `rollups.rs`, `keys.rs`, `datasets.rs`,
//! `tune_jobs.rs`, `responses.rs`. The only SQL in the workspace is in this crate.

use std::str::FromStr;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions};

use crate::migrations::MIGRATIONS;
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
    /// A query the store cannot answer as asked (the caller's mistake).
    #[error("{0}")]
    Invalid(String),
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
    /// The merged roll-up share of recent stats queries (`stats.rs`).
    pub(crate) rolled: std::sync::Arc<crate::stats::RolledCache>,
}

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
        let store = Store { pool, backend, rolled: Default::default() };
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
    pub(crate) fn cache_statements(&self) -> bool {
        self.backend == Backend::Sqlite
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Runs `f`, CPU work of the writer's, without holding up the async workers that serve
/// requests: on a multi-threaded runtime the worker hands its other tasks over first
/// (`block_in_place`); elsewhere (tests' current-thread runtimes) it just runs.
pub(crate) fn off_the_workers<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
