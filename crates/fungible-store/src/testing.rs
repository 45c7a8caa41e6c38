//! Test support (for this crate's tests and the server's): a fresh PostgreSQL schema per
//! test, dropped when the test ends, also when it panics.

use std::str::FromStr;

use sqlx::ConnectOptions;
use sqlx::any::AnyConnectOptions;

use std::sync::atomic::Ordering;
use std::time::Duration;

use fungible_types::Usage;
use serde_json::json;

use crate::record::new_id;
use crate::store::StoreError;
use crate::{AttemptRecord, AttemptStatus, InferenceRecord, Recorder, RecorderOptions, Store};

const DAY_MS: i64 = 86_400_000;

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

/// A well-mixed 64-bit hash of `i` (splitmix64), for deterministic variety.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Synthetic record `i` of `n`, spread evenly over the 30 days up to `end_ms`: nine targets
/// of four providers, 2% failures, a 5% latency tail, routes, users, keys and tags, as
/// deterministic variety for the stats and UI benchmarks.
pub fn synthetic_record(i: u64, n: u64, end_ms: i64) -> InferenceRecord {
    const TARGETS: [(&str, &str); 9] = [
        ("openai", "gpt-5"),
        ("openai", "gpt-5-mini"),
        ("openai", "gpt-4.1"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-haiku-4-5"),
        ("anthropic", "claude-opus-4-1"),
        ("gemini", "gemini-2.5-pro"),
        ("gemini", "gemini-2.5-flash"),
        ("local-vllm", "Qwen/Qwen3-8B"),
    ];
    const INBOUND: [&str; 4] = [
        "openai_chat",
        "anthropic_messages",
        "gemini",
        "openai_responses",
    ];
    let h = mix(i);
    let (provider, model) = TARGETS[(h % 9) as usize];
    let failed = (h >> 8).is_multiple_of(50);
    // Mostly 50..550 ms, a 5% tail up to 30 s.
    let latency_ms = if (h >> 16).is_multiple_of(20) {
        500.0 + ((h >> 24) % 29_500_000) as f64 / 1000.0
    } else {
        50.0 + ((h >> 24) % 500_000) as f64 / 1000.0
    };
    let input = 20 + (h >> 40) % 2000;
    let output = if failed { 0 } else { 1 + (h >> 20) % 500 };
    let usage = Usage {
        input_tokens: if failed { 0 } else { input },
        output_tokens: output,
        cache_read_tokens: if (h >> 12).is_multiple_of(4) { input / 2 } else { 0 },
        ..Usage::default()
    };
    let priced = provider != "local-vllm" && !(h >> 32).is_multiple_of(20);
    let cost = if failed {
        Some(0.0)
    } else {
        priced.then_some((usage.input_tokens as f64 * 1.25 + output as f64 * 10.0) / 1e6)
    };
    let route = match i % 3 {
        0 => Some("smart"),
        1 => Some("fast"),
        _ => None,
    };
    InferenceRecord {
        id: new_id(),
        // Spread evenly over the 30 days up to END_MS.
        time_ms: end_ms - 30 * DAY_MS + (i as i64) * (30 * DAY_MS) / (n.max(1) as i64),
        inbound: INBOUND[(h >> 4) as usize % 4].into(),
        requested_model: route.map_or_else(|| format!("{provider}/{model}"), str::to_owned),
        route: route.map(str::to_owned),
        variant: route.map(|_| "a".to_owned()),
        provider: Some(provider.into()),
        model: Some(model.into()),
        stream: h.is_multiple_of(2),
        error: failed.then(|| "rate_limited".to_owned()),
        request: json!({"model": route.unwrap_or(model), "messages": [{"role": "system", "content": "You are a terse assistant. Answer in one sentence."}, {"role": "user", "content": format!("Question number {i}: what is the capital of France, and why is it that city?")}], "params": {"temperature": 0.2, "max_tokens": 512}}),
        response: (!failed).then(|| json!({"id": format!("chatcmpl-{i}"), "model": model, "created": 1_764_460_800, "message": {"content": "Paris, because it has been the seat of the French state for centuries."}, "finish_reason": "stop", "usage": {"input_tokens": usage.input_tokens, "output_tokens": output}})),
        usage,
        cost,
        ttft_ms: (h.is_multiple_of(2)).then_some(latency_ms / 4.0),
        latency_ms,
        user: Some(format!("user-{}", (h >> 28) % 1000)),
        tags: json!({"team": format!("team-{}", (h >> 36) % 5), "env": if (h >> 44).is_multiple_of(4) { "dev" } else { "prod" }}),
        episode_id: None,
        key_id: Some(format!("key_{:02}", (h >> 48) % 50)),
        cache_hit: false,
        truncated: false,
        raw: Vec::new(),
        attempts: vec![AttemptRecord {
            provider: provider.into(),
            model: model.into(),
            status: if failed { AttemptStatus::Failed } else { AttemptStatus::Ok },
            error: failed.then(|| "rate_limited".to_owned()),
            latency_ms,
            cost,
        }],
    }
}

/// Writes `n` [`synthetic_record`]s through the recorder (the gateway's write path), keeping
/// its queue below its bound rather than dropping; answers (written, dropped).
pub async fn fill_synthetic(store: &Store, n: u64, end_ms: i64) -> (u64, u64) {
    let options = RecorderOptions::default();
    let recorder = Recorder::start(store.clone(), options);
    for i in 0..n {
        while recorder.queued() + 1 >= options.queue_capacity
            || recorder.counters().queued_bytes.load(Ordering::Relaxed) + (64 << 10) > options.queue_bytes
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        recorder.record(synthetic_record(i, n, end_ms));
    }
    recorder.shutdown().await;
    let c = recorder.counters();
    (c.written.load(Ordering::Relaxed), c.dropped.load(Ordering::Relaxed))
}
