//! Test support (for this crate's tests and the server's): a fresh PostgreSQL schema per
//! test, dropped when the test ends, also when it panics.

use std::str::FromStr;

use sqlx::ConnectOptions;
use sqlx::any::AnyConnectOptions;

use crate::record::new_id;
use crate::store::StoreError;

/// A schema of its own on the PostgreSQL server at `FUNGIBLE_TEST_POSTGRES_URL`; [`url`]
/// opens a [`crate::Store`] in it. Dropping the guard ends the connections still in it (a
/// test that panicked may leave a pool behind) and drops the schema with everything in it.
///
/// [`url`]: PgSchema::url
#[derive(Debug)]
pub struct PgSchema {
    base: String,
    name: String,
    url: String,
}

impl PgSchema {
    /// A new schema, or `None` (with a note on stderr) when `FUNGIBLE_TEST_POSTGRES_URL` is
    /// not set.
    pub async fn from_env() -> Result<Option<PgSchema>, StoreError> {
        let Ok(base) = std::env::var("FUNGIBLE_TEST_POSTGRES_URL") else {
            eprintln!(
                "FUNGIBLE_TEST_POSTGRES_URL is not set: PostgreSQL case not run (scripts/test.sh sets it)"
            );
            return Ok(None);
        };
        PgSchema::create(&base).await.map(Some)
    }

    /// A new schema on the server at `base` (a `postgres://` URL).
    pub async fn create(base: &str) -> Result<PgSchema, StoreError> {
        sqlx::any::install_default_drivers();
        let name = format!("t_{}", new_id());
        let mut conn = AnyConnectOptions::from_str(base)?
            .disable_statement_logging()
            .connect()
            .await?;
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut conn)
            .await?;
        let sep = if base.contains('?') { '&' } else { '?' };
        // The application name marks this schema's connections, to end them at drop.
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}&application_name={name}");
        Ok(PgSchema {
            base: base.to_owned(),
            name,
            url,
        })
    }

    /// The URL to open a store in this schema with.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn drop_schema(base: &str, name: &str) -> Result<(), StoreError> {
        let mut conn = AnyConnectOptions::from_str(base)?
            .disable_statement_logging()
            .connect()
            .await?;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name.to_owned())
        .fetch_all(&mut conn)
        .await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
            .execute(&mut conn)
            .await?;
        Ok(())
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop may run inside a runtime (or while a test unwinds): use a thread of its own.
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime
                .block_on(PgSchema::drop_schema(&base, &name))
                .map_err(|e| e.to_string())
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop the test schema {}: {e}", self.name),
            Err(_) => eprintln!("could not drop the test schema {}", self.name),
        }
    }
}

/// A recorded chat inference for tests: `messages` asked of `route`, and `answer` given (a
/// failed one when `None`), with the canonical request and response as the recorder stores
/// them.
pub fn chat_record(id: &str, route: &str, messages: Vec<fungible_types::Message>, answer: Option<&str>) -> crate::InferenceRecord {
    let request = fungible_types::ChatRequest { model: route.into(), messages, ..fungible_types::ChatRequest::default() };
    let response = answer.map(|a| fungible_types::ChatResponse {
        id: "resp-test".into(),
        model: "gpt-4.1-mini".into(),
        created: 0,
        message: fungible_types::AssistantMessage { content: Some(a.to_owned()), tool_calls: Vec::new(), reasoning: Vec::new(), refusal: None },
        finish_reason: fungible_types::FinishReason::Stop,
        usage: fungible_types::Usage::default(),
    });
    crate::InferenceRecord {
        id: id.into(),
        time_ms: 1_000,
        inbound: "openai_chat".into(),
        requested_model: route.into(),
        route: Some(route.into()),
        variant: None,
        provider: Some("openai".into()),
        model: Some("gpt-4.1-mini".into()),
        stream: false,
        error: answer.is_none().then(|| "timeout".into()),
        request: serde_json::to_value(&request).unwrap_or_default(),
        response: response.map(|r| serde_json::to_value(&r).unwrap_or_default()),
        usage: fungible_types::Usage::default(),
        cost: None,
        ttft_ms: None,
        latency_ms: 5.0,
        user: None,
        tags: serde_json::json!({}),
        episode_id: None,
        attempts: vec![],
        key_id: None,
        cache_hit: false,
        truncated: false,
        raw: Vec::new(),
    }
}
