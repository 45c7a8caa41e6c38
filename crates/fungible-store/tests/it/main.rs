//! The store and the recorder on both backends: every test runs on a fresh SQLite file and,
//! when `FUNGIBLE_TEST_POSTGRES_URL` is set (scripts/test.sh sets it), in a fresh PostgreSQL
//! schema, so tests run in parallel.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fungible_store::testing::PgSchema;
use fungible_store::{
    AttemptRecord, AttemptStatus, BatchSink, EncodedRecord, Feedback, FeedbackTarget, GroupBy, InferenceFilter, InferenceRecord,
    Recorder, RecorderOptions, Store, StoreError, WriterPriority, new_id,
};
use fungible_types::Usage;
use serde_json::json;

/// A fresh SQLite store in a new file.
async fn sqlite() -> Store {
    let dir = std::env::temp_dir().join("fungible-store-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.db", new_id()));
    Store::open(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap()
}

/// A fresh PostgreSQL store in a new schema (dropped with the guard), or `None` when no
/// server is configured.
async fn postgres() -> Option<(Store, PgSchema)> {
    let schema = PgSchema::from_env().await.unwrap()?;
    Some((Store::open(schema.url()).await.unwrap(), schema))
}

/// Runs `$body` (an async fn taking a `Store`) on SQLite and on PostgreSQL.
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$body(super::sqlite().await).await;
            }
            #[tokio::test]
            async fn postgres() {
                if let Some((store, _schema)) = super::postgres().await {
                    super::$body(store).await;
                }
            }
        }
    };
}

fn record(i: u64) -> InferenceRecord {
    InferenceRecord {
        id: new_id(),
        time_ms: 1_764_460_800_000 + i as i64,
        inbound: "anthropic_messages".into(),
        requested_model: "smart".into(),
        route: Some("smart".into()),
        variant: Some("a".into()),
        provider: Some("anthropic".into()),
        model: Some("claude-sonnet-4-5".into()),
        stream: i.is_multiple_of(2),
        error: None,
        request: json!({"model": "smart", "messages": [{"role": "user", "content": "héllo ✓ \"quoted\""}], "params": {"temperature": 0.5}}),
        response: Some(
            json!({"id": "msg_1", "message": {"content": "hi", "tool_calls": [{"id": "c1", "name": "f", "arguments": "{\"a\":1}"}]}}),
        ),
        usage: Usage {
            input_tokens: 100 + i,
            output_tokens: 20,
            cache_read_tokens: 30,
            cache_write_tokens: 10,
            reasoning_tokens: 5,
        },
        cost: Some(0.001_234_5),
        ttft_ms: Some(12.5),
        latency_ms: 100.0 + i as f64,
        user: Some("alice".into()),
        tags: json!({"team": "search", "n": 3}),
        episode_id: Some("ep-1".into()),
        key_id: Some("key_1".into()),
        cache_hit: i.is_multiple_of(3),
        truncated: false,
        raw: Vec::new(),
        attempts: vec![
            AttemptRecord {
                provider: "openai".into(),
                model: "gpt-5".into(),
                status: AttemptStatus::Failed,
                error: Some("rate_limited".into()),
                latency_ms: 3.25,
                cost: None,
            },
            AttemptRecord {
                provider: "anthropic".into(),
                model: "claude-sonnet-4-5".into(),
                status: AttemptStatus::Ok,
                error: None,
                latency_ms: 90.0,
                cost: Some(0.001_234_5),
            },
        ],
    }
}

async fn round_trip_every_field(store: Store) {
    let full = InferenceRecord {
        cache_hit: true,
        truncated: true,
        // What `[store] raw_bodies` keeps of each upstream call.
        raw: vec![
            fungible_store::RawExchange {
                provider: "anthropic".into(),
                request: "{\"model\":\"claude-sonnet-4-5\",\"stream\":true}".into(),
                response: "event: message_start\ndata: {\"type\":\"message_start\"} ✓".into(),
                truncated: true,
            },
            fungible_store::RawExchange::default(),
        ],
        ..record(1)
    };
    let bare = InferenceRecord {
        id: new_id(),
        route: None,
        variant: None,
        provider: None,
        model: None,
        error: Some("unknown_model".into()),
        response: None,
        usage: Usage::default(),
        cost: None,
        ttft_ms: None,
        user: None,
        tags: json!({}),
        episode_id: None,
        attempts: vec![],
        key_id: None,
        ..record(2)
    };
    store.insert(&[full.clone(), bare.clone()]).await.unwrap();
    assert_eq!(store.get(&full.id).await.unwrap().unwrap(), full);
    assert_eq!(store.get(&bare.id).await.unwrap().unwrap(), bare);
    assert_eq!(store.get("nope").await.unwrap(), None);
}
both!(round_trip, round_trip_every_field);

/// Costs and latencies come back bit for bit, whatever their digits (SQLite receives a batch
/// as JSON text, so this checks its number parsing too), and text with every kind of
/// character survives.
async fn floats_and_text_are_exact(store: Store) {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut records = Vec::new();
    for i in 0..500 {
        let mut r = record(i);
        // Random mantissas over a wide range of exponents, and awkward decimals.
        let scale = 10f64.powi((next() % 30) as i32 - 20);
        r.cost = Some((next() >> 11) as f64 / (1u64 << 53) as f64 * scale);
        r.latency_ms = match i % 4 {
            0 => 0.1 + 0.2,
            1 => f64::from_bits(next() >> 2) % 1e9,
            2 => 1.0 / 3.0,
            _ => (next() % 100_000) as f64 / 7.0,
        };
        r.attempts[1].cost = r.cost;
        r.attempts[0].latency_ms = f64::MIN_POSITIVE * (i + 1) as f64;
        r.user = Some(format!("u\u{0}\\\"'\u{7f}\u{2028}é😀 {i}"));
        records.push(r);
    }
    store.insert(&records).await.unwrap();
    for r in &records {
        let back = store.get(&r.id).await.unwrap().unwrap();
        assert_eq!(back.cost.map(f64::to_bits), r.cost.map(f64::to_bits), "cost of {}", r.id);
        assert_eq!(back.latency_ms.to_bits(), r.latency_ms.to_bits());
        assert_eq!(back.attempts, r.attempts);
        // PostgreSQL's text cannot hold NUL: it comes back as U+FFFD there.
        let mut expected = r.clone();
        if store.is_postgres() {
            expected.user = r.user.as_ref().map(|u| u.replace('\0', "\u{FFFD}"));
        }
        assert_eq!(back, expected);
    }
}
both!(exact_values, floats_and_text_are_exact);

async fn migrations_from_empty_and_rerun(store: Store) {
    let all: Vec<i64> = fungible_store::migrations::MIGRATIONS
        .iter()
        .map(|(v, _)| *v)
        .collect();
    assert_eq!(&all[..2], [1, 2]);
    assert_eq!(store.applied_migrations().await.unwrap(), all);
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.applied_migrations().await.unwrap(), all);
    store.insert(&[record(1)]).await.unwrap();
}
both!(migrations, migrations_from_empty_and_rerun);

async fn list_filters_and_pages(store: Store) {
    let mut records: Vec<_> = (0..5).map(record).collect();
    records[4].user = Some("bob".into());
    records[3].error = Some("timeout".into());
    store.insert(&records).await.unwrap();
    let page1 = store
        .list(&InferenceFilter {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page1.iter().map(|r| &r.id).collect::<Vec<_>>(),
        [&records[4].id, &records[3].id]
    );
    let page2 = store
        .list(&InferenceFilter {
            limit: Some(2),
            before: Some(page1[1].id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page2.iter().map(|r| &r.id).collect::<Vec<_>>(),
        [&records[2].id, &records[1].id]
    );
    let bob = store
        .list(&InferenceFilter {
            user: Some("bob".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(bob.len(), 1);
    let errors = store
        .list(&InferenceFilter {
            errors: Some(true),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].error.as_deref(), Some("timeout"));
    for (class, found) in [("timeout", 1), ("rate_limited", 0)] {
        let filter = InferenceFilter { error_class: Some(class.into()), ..Default::default() };
        assert_eq!(store.list(&filter).await.unwrap().len(), found, "{class}");
    }
    let since = store
        .list(&InferenceFilter {
            since_ms: Some(records[3].time_ms),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(since.len(), 2);
}
both!(list, list_filters_and_pages);

async fn list_filters_by_feedback(store: Store) {
    let mut records: Vec<_> = (0..3).map(record).collect();
    for (i, r) in records.iter_mut().enumerate() {
        r.episode_id = Some(format!("episode-{i}"));
    }
    store.insert(&records).await.unwrap();
    let feedback = |target, target_id: &str| Feedback {
        id: new_id(),
        time_ms: 5,
        target,
        target_id: target_id.to_owned(),
        boolean: Some(true),
        score: None,
        comment: None,
        demonstration: None,
    };
    // One on an inference, one on another's episode.
    store.insert_feedback(&feedback(FeedbackTarget::Inference, &records[0].id)).await.unwrap();
    store.insert_feedback(&feedback(FeedbackTarget::Episode, "episode-2")).await.unwrap();
    let ids = |list: Vec<fungible_store::InferenceRecord>| {
        let mut ids: Vec<String> = list.into_iter().map(|r| r.id).collect();
        ids.sort();
        ids
    };
    let with = store.list(&InferenceFilter { has_feedback: Some(true), ..Default::default() }).await.unwrap();
    let mut expected = vec![records[0].id.clone(), records[2].id.clone()];
    expected.sort();
    assert_eq!(ids(with), expected);
    let without = store.list(&InferenceFilter { has_feedback: Some(false), ..Default::default() }).await.unwrap();
    assert_eq!(ids(without), vec![records[1].id.clone()]);
}
both!(list_feedback, list_filters_by_feedback);

async fn feedback_round_trip(store: Store) {
    let r = record(1);
    store.insert(std::slice::from_ref(&r)).await.unwrap();
    assert!(
        store
            .exists(FeedbackTarget::Inference, &r.id)
            .await
            .unwrap()
    );
    assert!(store.exists(FeedbackTarget::Episode, "ep-1").await.unwrap());
    assert!(
        !store
            .exists(FeedbackTarget::Inference, "nope")
            .await
            .unwrap()
    );
    let f = Feedback {
        id: new_id(),
        time_ms: 5,
        target: FeedbackTarget::Inference,
        target_id: r.id.clone(),
        boolean: Some(true),
        score: Some(0.75),
        comment: Some("good".into()),
        demonstration: Some(json!({"content": "the ideal answer"})),
    };
    let g = Feedback {
        id: new_id(),
        boolean: None,
        score: None,
        comment: None,
        demonstration: None,
        ..f.clone()
    };
    store.insert_feedback(&f).await.unwrap();
    store.insert_feedback(&g).await.unwrap();
    assert_eq!(store.feedback(&r.id).await.unwrap(), vec![f, g]);
}
both!(feedback, feedback_round_trip);

async fn stats_group_and_percentiles(store: Store) {
    let mut records: Vec<_> = (0..20).map(record).collect();
    records[0].provider = Some("openai".into());
    records[0].model = Some("gpt-5".into());
    records[0].cost = None;
    records[1].error = Some("timeout".into());
    store.insert(&records).await.unwrap();
    let rows = store.stats(GroupBy::Model, None, None).await.unwrap();
    assert_eq!(rows.len(), 2);
    let a = &rows[0];
    assert_eq!(
        (a.key.as_str(), a.requests, a.errors),
        ("anthropic/claude-sonnet-4-5", 19, 1)
    );
    assert!((a.cost - 19.0 * 0.001_234_5).abs() < 1e-9);
    assert_eq!(a.p50_latency_ms, 110.0);
    assert_eq!(a.p95_latency_ms, 119.0);
    assert_eq!((rows[1].unpriced, rows[1].cost), (1, 0.0));
    let days = store.stats(GroupBy::Day, None, None).await.unwrap();
    assert_eq!(days[0].key, "2025-11-30");
    assert_eq!(
        store.stats(GroupBy::User, Some(0), Some(1)).await.unwrap(),
        vec![]
    );
}
both!(stats, stats_group_and_percentiles);

/// The store, failing every write while `down` is set.
struct Flaky {
    store: Store,
    down: Arc<AtomicBool>,
}

impl BatchSink for Flaky {
    fn write<'a>(
        &'a self,
        batch: &'a [EncodedRecord],
    ) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("down for the test".into()));
            }
            self.store.insert_encoded(batch).await
        })
    }
}

fn options(capacity: usize) -> RecorderOptions {
    RecorderOptions {
        queue_capacity: capacity,
        queue_bytes: 64 << 20,
        batch_size: 7,
        flush_interval: Duration::from_millis(5),
        retry_delay: Duration::from_millis(5),
        shutdown_timeout: Duration::from_secs(30),
        writer_priority: WriterPriority::Idle,
        max_record_bytes: 256 << 10,
    }
}

async fn count(store: &Store) -> usize {
    store
        .list(&InferenceFilter {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap()
        .len()
}

async fn outage_loses_nothing_that_fits(store: Store) {
    let down = Arc::new(AtomicBool::new(false));
    let recorder = Recorder::start(
        Flaky {
            store: store.clone(),
            down: down.clone(),
        },
        options(50),
    );
    for i in 0..10 {
        recorder.record(record(i));
    }
    recorder.flush().await;
    assert_eq!(count(&store).await, 10);

    // The store goes down mid-load: the queue (50) and the batch in hand (7) hold 57.
    down.store(true, Ordering::SeqCst);
    for i in 0..100 {
        recorder.record(record(100 + i));
        tokio::task::yield_now().await;
    }
    let dropped = recorder.counters().dropped.load(Ordering::SeqCst);
    assert!(
        (100 - 57..=100 - 50).contains(&dropped),
        "dropped {dropped}"
    );
    assert!(recorder.counters().write_errors.load(Ordering::SeqCst) >= 1);
    down.store(false, Ordering::SeqCst);
    recorder.shutdown().await;
    assert_eq!(count(&store).await as u64, 10 + 100 - dropped);
    assert_eq!(
        recorder.counters().written.load(Ordering::SeqCst),
        110 - dropped
    );
}
both!(outage, outage_loses_nothing_that_fits);

/// A record the store refuses (here: an id already written) is dropped and reported alone;
/// the records batched with it and every record after it are written.
async fn a_refused_record_does_not_block_the_rest(store: Store) {
    let recorder = Recorder::start(store.clone(), options(100));
    let first = record(0);
    recorder.record(first.clone());
    recorder.flush().await;
    for i in 1..=20 {
        let mut r = record(i);
        if i == 10 {
            r.id = first.id.clone();
        }
        recorder.record(r);
    }
    recorder.shutdown().await;
    let c = recorder.counters();
    assert_eq!(c.dropped.load(Ordering::SeqCst), 1);
    assert_eq!(c.written.load(Ordering::SeqCst), 20);
    assert!(c.write_errors.load(Ordering::SeqCst) >= 1);
    assert_eq!(count(&store).await, 20);
}
both!(refused_record, a_refused_record_does_not_block_the_rest);

/// The threads of this process named `name` (as /proc shows it: 15 bytes at most): their
/// scheduling policy (5: `SCHED_IDLE`) and nice value.
#[cfg(target_os = "linux")]
fn scheduling_of_threads(name: &str) -> Vec<(i64, i64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            // After the ")" that ends the name: state is field 3, nice field 19, policy 41.
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            found.push((fields[38].parse().unwrap(), fields[16].parse().unwrap()));
        }
    }
    found
}

/// `Recorder::start_in_background`: the writer opens its own store on a thread of its own,
/// `SCHED_IDLE` by default or at a nice value (SQLite's connection thread inherits either),
/// writes everything, and drains on shutdown; a store it cannot open is an error at start.
#[tokio::test]
async fn a_background_recorder_writes_at_low_priority_and_drains() {
    const SCHED_IDLE: i64 = 5;
    const SCHED_OTHER: i64 = 0;
    let dir = std::env::temp_dir().join("fungible-store-tests");
    std::fs::create_dir_all(&dir).unwrap();
    for (priority, scheduling) in [(WriterPriority::Idle, (SCHED_IDLE, 0)), (WriterPriority::Nice(10), (SCHED_OTHER, 10))] {
        let url = format!("sqlite://{}?mode=rwc", dir.join(format!("{}.db", new_id())).display());
        let store = Store::open(&url).await.unwrap();
        let writer_url = url.clone();
        let options = RecorderOptions { writer_priority: priority, ..options(1000) };
        let recorder = Recorder::start_in_background(move || async move { Store::open(&writer_url).await }, options)
            .await
            .unwrap();
        for i in 0..100 {
            recorder.record(record(i));
        }
        recorder.flush().await;
        #[cfg(target_os = "linux")]
        {
            assert_eq!(scheduling_of_threads("fungible-record"), [scheduling], "{priority:?}");
            // Other tests' stores have connection threads too, at nice 0: this one's is as its
            // writer.
            let sqlite = scheduling_of_threads("sqlx-sqlite-wor");
            assert!(sqlite.contains(&scheduling), "{priority:?}: {sqlite:?}");
        }
        for i in 100..150 {
            recorder.record(record(i));
        }
        recorder.shutdown().await;
        assert_eq!(recorder.counters().written.load(Ordering::SeqCst), 150);
        assert_eq!(count(&store).await, 150);
    }

    let err = Recorder::start_in_background(
        || async { Store::open("sqlite:///nonexistent-dir/fungible/x.db?mode=rwc").await },
        options(10),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("store"), "{err}");
}

async fn shutdown_drains(store: Store) {
    let recorder = Recorder::start(
        store.clone(),
        RecorderOptions {
            flush_interval: Duration::from_secs(3600),
            ..options(10_000)
        },
    );
    for i in 0..500 {
        recorder.record(record(i));
    }
    recorder.shutdown().await;
    assert_eq!(count(&store).await, 500);
    // After shutdown, records are refused and counted.
    recorder.record(record(1));
    assert_eq!(recorder.counters().dropped.load(Ordering::SeqCst), 1);
}
both!(shutdown, shutdown_drains);

/// Whether the schema `name` exists on the test server.
async fn schema_exists(name: &str) -> bool {
    use sqlx::Connection;
    let url = std::env::var("FUNGIBLE_TEST_POSTGRES_URL").unwrap();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let found: Option<String> = sqlx::query_scalar(
        "SELECT CAST(schema_name AS TEXT) FROM information_schema.schemata WHERE schema_name = $1",
    )
    .bind(name)
    .fetch_optional(&mut conn)
    .await
    .unwrap();
    found.is_some()
}

#[tokio::test]
async fn postgres_test_schemas_are_dropped_even_on_panic() {
    let Some(schema) = PgSchema::from_env().await.unwrap() else {
        return;
    };
    let name = schema.name().to_owned();
    let store = Store::open(schema.url()).await.unwrap();
    store.insert(&[record(1)]).await.unwrap();
    assert!(schema_exists(&name).await);
    // Dropped while the store's pool is still open.
    drop(schema);
    assert!(!schema_exists(&name).await);
    drop(store);

    // A test that panics mid-way, holding a store.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let schema = PgSchema::from_env().await.unwrap().unwrap();
        let _ = tx.send(schema.name().to_owned());
        let store = Store::open(schema.url()).await.unwrap();
        store.insert(&[record(2)]).await.unwrap();
        panic!("the test fails");
    });
    assert!(task.await.unwrap_err().is_panic());
    assert!(!schema_exists(&rx.await.unwrap()).await);
}

async fn canonical_bodies_are_stored_as_they_serialise(store: Store) {
    use fungible_types::{
        AssistantMessage, ChatRequest, ChatResponse, ContentPart, FinishReason, Message, Role,
    };
    let request = ChatRequest {
        model: "smart".into(),
        messages: vec![Message::new(
            Role::User,
            vec![ContentPart::Text {
                text: "héllo".into(),
            }],
        )],
        ..ChatRequest::default()
    };
    let response = ChatResponse {
        id: "r1".into(),
        model: "m".into(),
        created: 1,
        message: AssistantMessage {
            content: Some("hi".into()),
            tool_calls: vec![],
            reasoning: vec![],
            refusal: None,
        },
        finish_reason: FinishReason::Stop,
        usage: Usage::default(),
    };
    let recorder = Recorder::start(store.clone(), options(100));
    let bare = InferenceRecord {
        request: serde_json::Value::Null,
        response: None,
        ..record(1)
    };
    recorder.record_with(bare.clone(), &request, Some(&response), None);
    recorder.shutdown().await;
    let got = store.get(&bare.id).await.unwrap().unwrap();
    assert_eq!(got.request, serde_json::to_value(&request).unwrap());
    assert_eq!(got.response, Some(serde_json::to_value(&response).unwrap()));
    assert_eq!(recorder.counters().queued_bytes.load(Ordering::SeqCst), 0);
}
both!(
    canonical_bodies,
    canonical_bodies_are_stored_as_they_serialise
);

async fn the_queue_is_bounded_in_bytes(store: Store) {
    let down = Arc::new(AtomicBool::new(true));
    let limit = 64 << 10;
    let recorder = Recorder::start(
        Flaky {
            store: store.clone(),
            down: down.clone(),
        },
        RecorderOptions {
            queue_bytes: limit,
            ..options(10_000)
        },
    );
    // What one record counts in the queue: its JSON buffers and ~512 bytes for the rest.
    let each = EncodedRecord::from(record(0)).bytes();
    for i in 0..500 {
        recorder.record(record(i));
        tokio::task::yield_now().await;
        assert!(
            recorder.counters().queued_bytes.load(Ordering::SeqCst) <= limit,
            "over the byte bound"
        );
    }
    // Far fewer than the 10,000 the count bound allows.
    let dropped = recorder.counters().dropped.load(Ordering::SeqCst);
    assert!(dropped >= 500 - (limit / each) as u64, "dropped {dropped}");
    down.store(false, Ordering::SeqCst);
    recorder.shutdown().await;
    assert_eq!(count(&store).await as u64, 500 - dropped);
    assert_eq!(recorder.counters().queued_bytes.load(Ordering::SeqCst), 0);
}
both!(queue_bytes, the_queue_is_bounded_in_bytes);

async fn stats_by_key_tag_and_day(store: Store) {
    let mut records: Vec<_> = (0..6).map(record).collect();
    records[0].key_id = Some("key_2".into());
    records[1].key_id = None;
    records[2].tags = json!({"team": "ads", "beta": true});
    records[3].tags = json!({});
    records[4].time_ms += 86_400_000;
    store.insert(&records).await.unwrap();
    let keys = store.stats(GroupBy::Key, None, None).await.unwrap();
    let keys: Vec<_> = keys.iter().map(|r| (r.key.as_str(), r.requests)).collect();
    assert_eq!(keys, [("key_1", 4), ("-", 1), ("key_2", 1)]);
    let tags = store.stats(GroupBy::Tag, None, None).await.unwrap();
    let tags: Vec<_> = tags.iter().map(|r| (r.key.as_str(), r.requests)).collect();
    // An inference counts once per tag; one without tags counts under "-".
    assert_eq!(
        tags,
        [
            ("n=3", 4),
            ("team=search", 4),
            ("-", 1),
            ("beta", 1),
            ("team=ads", 1)
        ]
    );
    let days = store.stats(GroupBy::Day, None, None).await.unwrap();
    let days: Vec<_> = days.iter().map(|r| (r.key.as_str(), r.requests)).collect();
    assert_eq!(days, [("2025-11-30", 5), ("2025-12-01", 1)]);
    let hits = store.stats(GroupBy::Inbound, None, None).await.unwrap();
    // record(i) is a cache hit when i is a multiple of 3: 0 and 3.
    assert_eq!((hits[0].requests, hits[0].cache_hits), (6, 2));
}
both!(stats_more_groups, stats_by_key_tag_and_day);

async fn stats_percentiles_match_a_sort(store: Store) {
    // Latencies with many per millisecond bucket, and a long tail: the SQL percentiles
    // (exact on PostgreSQL; from 1 ms / 1% buckets on SQLite) against a sort here.
    let mut records = Vec::new();
    let mut latencies = Vec::new();
    for i in 0..1000u64 {
        let l = if i % 10 == 0 {
            1000.0 + (i * 37 % 997) as f64 * 13.7
        } else {
            40.0 + (i * 7919 % 1000) as f64 / 100.0
        };
        latencies.push(l);
        records.push(InferenceRecord {
            latency_ms: l,
            ..record(i)
        });
    }
    store.insert(&records).await.unwrap();
    latencies.sort_by(f64::total_cmp);
    let rows = store.stats(GroupBy::Model, None, None).await.unwrap();
    let nearest = |q: f64| latencies[((q * 1000.0_f64).ceil() as usize).clamp(1, 1000) - 1];
    let (p50, p95) = (nearest(0.5), nearest(0.95));
    assert!(
        (rows[0].p50_latency_ms - p50).abs() <= 1.0,
        "{} vs {p50}",
        rows[0].p50_latency_ms
    );
    assert!(
        (rows[0].p95_latency_ms - p95).abs() <= p95 * 0.01,
        "{} vs {p95}",
        rows[0].p95_latency_ms
    );
    if store.is_postgres() {
        assert_eq!((rows[0].p50_latency_ms, rows[0].p95_latency_ms), (p50, p95));
    }
}
both!(stats_percentiles, stats_percentiles_match_a_sort);

/// Records spread over five days from 2025-11-30, with varied models, users, keys, errors,
/// unknown costs, cache hits and latencies.
fn spread_records() -> Vec<InferenceRecord> {
    (0..300u64)
        .map(|i| {
            let mut r = record(i);
            r.time_ms = 1_764_460_800_000 + (i as i64 * 1_441_000) % (5 * 86_400_000);
            r.latency_ms = 20.0 + (i * 7919 % 3000) as f64 / 3.0;
            r.ttft_ms = (i % 3 != 0).then(|| r.latency_ms / 4.0 + (i % 13) as f64);
            r.user = Some(format!("user-{}", i % 7));
            r.key_id = (i % 5 != 0).then(|| format!("key_{}", i % 3));
            if i % 11 == 0 {
                r.provider = Some("openai".into());
                r.model = Some("gpt-5".into());
                r.route = None;
            }
            if i % 13 == 0 {
                r.error = Some("timeout".into());
            }
            if i % 17 == 0 {
                r.cost = None;
            }
            r.tags = match i % 4 {
                0 => json!({}),
                1 => json!({"team": "ads"}),
                _ => json!({"team": "search", "beta": true}),
            };
            r
        })
        .collect()
}

const GROUPS: [GroupBy; 9] = [
    GroupBy::Model,
    GroupBy::Tag,
    GroupBy::Provider,
    GroupBy::Route,
    GroupBy::User,
    GroupBy::Key,
    GroupBy::Day,
    GroupBy::Hour,
    GroupBy::Inbound,
];

/// Every grouping, and the time groupings split by every other dimension.
fn stats_queries() -> Vec<fungible_store::StatsQuery<'static>> {
    let mut out: Vec<_> = GROUPS.iter().map(|&g| fungible_store::StatsQuery::new(g)).collect();
    for time in [GroupBy::Day, GroupBy::Hour] {
        for split in GROUPS.into_iter().filter(|g| !matches!(g, GroupBy::Day | GroupBy::Hour)) {
            out.push(fungible_store::StatsQuery { split: Some(split), ..fungible_store::StatsQuery::new(time) });
        }
    }
    out
}

/// Stats rows with percentiles rounded away (roll-ups give bucketed ones).
#[allow(clippy::type_complexity)]
fn sums(rows: &[fungible_store::StatsRow]) -> Vec<(String, Option<String>, u64, u64, u64, u64, u64, i64, u64, u64)> {
    rows.iter()
        .map(|r| {
            (
                r.key.clone(),
                r.split.clone(),
                r.requests,
                r.errors,
                r.input_tokens,
                r.output_tokens,
                r.cache_read_tokens,
                (r.cost * 1e9).round() as i64,
                r.unpriced,
                r.cache_hits,
            )
        })
        .collect()
}

async fn stats_from_rollups_match_the_rows(store: Store) {
    store.insert(&spread_records()).await.unwrap();
    const DAY: i64 = 86_400_000;
    const START: i64 = 1_764_460_800_000;
    let ranges = [
        (None, None),
        // Off the day and the hour at both ends: edges from the rows, whole hours from the
        // hourly roll-ups, whole days from the daily ones.
        (Some(START + 43_200_000 + 1_234), Some(START + 4 * DAY + 5_400_000 + 123)),
        (Some(START + DAY), None),
        (None, Some(START + 2 * DAY)),
        // Within one day: hours and rows only.
        (Some(START + DAY + 3_600_000 + 17), Some(START + DAY + 9 * 3_600_000)),
    ];
    let read = |store: Store| async move {
        let mut out = Vec::new();
        for q in stats_queries() {
            for (since_ms, until_ms) in ranges {
                let q = fungible_store::StatsQuery { since_ms, until_ms, ..q };
                out.push((q, store.stats_of(&q).await.unwrap()));
            }
        }
        out
    };
    let before = read(store.clone()).await;
    assert_eq!(store.rollup_watermark().await.unwrap(), 0);
    let now = START + 6 * DAY;
    let done = store.roll_up(now).await.unwrap();
    assert_eq!(done.watermark_ms, START + 5 * DAY);
    assert_eq!(done.days, 5);
    assert_eq!(done.hour_watermark_ms, START + 6 * DAY - 3_600_000);
    // The hours of the days that have inferences (the empty ones after are skipped at once).
    assert_eq!(done.hours, 5 * 24);
    // Again: nothing left to do.
    let again = store.roll_up(now).await.unwrap();
    assert_eq!((again.days, again.hours), (0, 0));
    let after = read(store.clone()).await;
    for ((q, b), (_, a)) in before.iter().zip(&after) {
        assert_eq!(sums(b), sums(a), "{q:?}");
        assert!(!b.is_empty() || q.since_ms.is_some(), "{q:?}");
        for (b, a) in b.iter().zip(a) {
            // Bucketed percentiles: within a 1 ms bucket below 1 s.
            assert!((b.p50_latency_ms - a.p50_latency_ms).abs() <= 1.0, "{q:?} {b:?} {a:?}");
            assert!((b.p95_latency_ms - a.p95_latency_ms).abs() <= 1.0, "{q:?} {b:?} {a:?}");
            assert_eq!(b.p50_ttft_ms.is_some(), a.p50_ttft_ms.is_some(), "{q:?} {b:?} {a:?}");
            assert!((b.p50_ttft_ms.unwrap_or(0.0) - a.p50_ttft_ms.unwrap_or(0.0)).abs() <= 1.0, "{q:?} {b:?} {a:?}");
            assert!((b.p95_ttft_ms.unwrap_or(0.0) - a.p95_ttft_ms.unwrap_or(0.0)).abs() <= 1.0, "{q:?} {b:?} {a:?}");
        }
    }
    // Time to first token is over the streamed requests only: record 0 of 300 has none.
    let all = store.stats(GroupBy::Inbound, None, None).await.unwrap();
    assert!(all[0].p50_ttft_ms.is_some());
    // A split's rows add up to the time bucket's.
    let by_day = store.stats(GroupBy::Day, None, None).await.unwrap();
    let split = store.stats_of(&fungible_store::StatsQuery { split: Some(GroupBy::Model), ..fungible_store::StatsQuery::new(GroupBy::Day) }).await.unwrap();
    for day in &by_day {
        let parts: u64 = split.iter().filter(|r| r.key == day.key).map(|r| r.requests).sum();
        assert_eq!(parts, day.requests, "{}", day.key);
    }
    // A record for a day and an hour already rolled up is counted once, by its insert.
    let mut late = record(7);
    late.time_ms = START + 60_000;
    late.latency_ms = 5.0;
    late.ttft_ms = Some(2.0);
    store.insert(&[late]).await.unwrap();
    let again = store.roll_up(now).await.unwrap();
    assert_eq!((again.days, again.hours), (0, 0));
    let all = store.stats(GroupBy::Day, None, None).await.unwrap();
    assert_eq!(all.iter().map(|r| r.requests).sum::<u64>(), 301);
    assert_eq!(all.iter().find(|r| r.key == "2025-11-30").unwrap().requests, 61);
    // The hourly tier counts it too: a range of whole hours within the day.
    let hours = store.stats(GroupBy::Hour, Some(START), Some(START + 3_600_000)).await.unwrap();
    assert_eq!(hours.len(), 1);
    let first_hour = before.iter().find(|(q, _)| q.group == GroupBy::Hour && q.split.is_none() && q.since_ms.is_none() && q.until_ms.is_none()).unwrap();
    let was = first_hour.1.iter().find(|r| r.key == "2025-11-30T00:00Z").unwrap();
    assert_eq!(hours[0].requests, was.requests + 1);
    assert!(hours[0].p50_latency_ms <= was.p50_latency_ms);
    let by_model = store.stats(GroupBy::Model, None, None).await.unwrap();
    assert_eq!(by_model.iter().map(|r| r.requests).sum::<u64>(), 301);
    // record(7) has two tags: it counts under each.
    let by_tag = store.stats(GroupBy::Tag, None, None).await.unwrap();
    let tagged: u64 = by_tag.iter().map(|r| r.requests).sum();
    let tag_before = &before.iter().find(|(q, _)| q.group == GroupBy::Tag && q.since_ms.is_none() && q.until_ms.is_none()).unwrap().1;
    assert_eq!(tagged, tag_before.iter().map(|r| r.requests).sum::<u64>() + 2);
}
both!(rollups, stats_from_rollups_match_the_rows);


async fn concurrent_roll_ups_count_each_hour_once(store: Store) {
    store.insert(&spread_records()).await.unwrap();
    let now = 1_764_460_800_000 + 6 * 86_400_000;
    let (a, b) = tokio::join!(store.roll_up(now), store.roll_up(now));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.days + b.days, 5);
    assert_eq!(a.hours + b.hours, 5 * 24);
    for group in [GroupBy::Day, GroupBy::Hour] {
        let all = store.stats(group, None, None).await.unwrap();
        assert_eq!(all.iter().map(|r| r.requests).sum::<u64>(), 300);
    }
    // Hours alone (a range within a day): each counted once.
    let (lo, hi) = (1_764_460_800_000 + 3_600_000, 1_764_460_800_000 + 86_400_000);
    let hours = store.stats(GroupBy::Hour, Some(lo), Some(hi)).await.unwrap();
    let expected = spread_records().iter().filter(|r| (lo..hi).contains(&r.time_ms)).count() as u64;
    assert_eq!(hours.iter().map(|r| r.requests).sum::<u64>(), expected);
}
both!(rollups_concurrent, concurrent_roll_ups_count_each_hour_once);

async fn shadow_stats_read_the_shadow_records(store: Store) {
    let primary = record(1);
    let mut shadows = Vec::new();
    for (i, agreed) in [(2, Some(true)), (3, Some(false)), (4, None)] {
        let mut r = record(i);
        r.inbound = "shadow".into();
        r.provider = Some("b".into());
        r.model = Some("m".into());
        r.cost = Some(0.5);
        r.error = agreed.is_none().then(|| "timeout".into());
        r.tags = json!({"fungible.shadow_of": primary.id, "fungible.shadow_route": "smart", "team": "ads"});
        shadows.push((r, agreed));
    }
    let mut all = vec![primary.clone()];
    all.extend(shadows.iter().map(|(r, _)| r.clone()));
    store.insert(&all).await.unwrap();
    for (r, agreed) in &shadows {
        if let Some(agreed) = agreed {
            let f = Feedback {
                id: new_id(),
                time_ms: r.time_ms,
                target: FeedbackTarget::Inference,
                target_id: r.id.clone(),
                boolean: Some(*agreed),
                score: Some(if *agreed { 1.0 } else { 0.0 }),
                comment: None,
                demonstration: None,
            };
            store.insert_feedback(&f).await.unwrap();
        }
    }
    let rows = store.shadow_stats(None, None, None).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!((r.route.as_str(), r.candidate.as_str()), ("smart", "b/m"));
    assert_eq!((r.calls, r.failed, r.scored, r.agreed), (3, 1, 2, 1));
    assert_eq!(r.mean_score, Some(0.5));
    assert_eq!(r.primary_mean_latency_ms, Some(primary.latency_ms));
    assert!((r.cost - 1.5).abs() < 1e-9);
    // Another key's, or a range without them: nothing.
    assert!(store.shadow_stats(None, None, Some("key_other")).await.unwrap().is_empty());
    assert!(store.shadow_stats(Some(primary.time_ms + 1_000_000), None, None).await.unwrap().is_empty());
}
both!(shadow_stats, shadow_stats_read_the_shadow_records);

async fn router_versions_roll_back_and_labels_read(store: Store) {
    assert_eq!(store.router("smart", None).await.unwrap(), None);
    assert_eq!(store.create_router("smart", "logistic", "{\"r\":1}", "{\"m\":1}").await.unwrap(), 1);
    assert_eq!(store.create_router("smart", "knn", "{\"r\":2}", "{\"m\":2}").await.unwrap(), 2);
    assert_eq!(store.create_router("other", "knn", "{}", "{}").await.unwrap(), 1);
    assert_eq!(store.active_router_versions().await.unwrap(), [("other".to_owned(), 1), ("smart".to_owned(), 2)]);
    let active = store.router("smart", None).await.unwrap().unwrap();
    assert_eq!((active.version, active.kind.as_str(), active.model.as_str()), (2, "knn", "{\"m\":2}"));
    let listed = store.router_versions("smart").await.unwrap();
    assert_eq!(listed.iter().map(|v| v.version).collect::<Vec<_>>(), [2, 1]);
    assert!(listed.iter().all(|v| v.model.is_empty() && v.retired_ms.is_none()), "a listing leaves the models out");
    // Back to v1: v2 retired, kept.
    assert_eq!(store.roll_back_router("smart", None).await.unwrap(), 1);
    assert_eq!(store.router("smart", None).await.unwrap().unwrap().version, 1);
    assert!(store.router("smart", Some(2)).await.unwrap().unwrap().retired_ms.is_some());
    let error = store.roll_back_router("smart", None).await.unwrap_err();
    assert!(error.to_string().contains("no version before 1 is left"), "{error}");
    assert!(store.roll_back_router("smart", Some(9)).await.unwrap_err().to_string().contains("no router version 9"));
    // Forward again to v2; a new version after a rollback is the next number.
    assert_eq!(store.roll_back_router("smart", Some(2)).await.unwrap(), 2);
    assert_eq!(store.router("smart", None).await.unwrap().unwrap().version, 2);
    assert_eq!(store.create_router("smart", "knn", "{}", "{}").await.unwrap(), 3);
    // A version rolled back is not what the next default rollback returns to.
    assert_eq!(store.roll_back_router("smart", None).await.unwrap(), 2);
    assert_eq!(store.create_router("smart", "knn", "{}", "{}").await.unwrap(), 4);
    assert_eq!(store.roll_back_router("smart", None).await.unwrap(), 2, "v3 was rolled back: skipped");

    // Labels: feedback on the route's answers, and a shadow's score against its primary.
    let primary = record(1);
    let mut shadow = record(2);
    shadow.inbound = "shadow".into();
    shadow.route = None;
    shadow.provider = Some("b".into());
    shadow.model = Some("m".into());
    shadow.tags = json!({"fungible.shadow_of": primary.id, "fungible.shadow_route": "smart"});
    let mut failed = record(3);
    failed.error = Some("timeout".into());
    let unrated = record(4);
    store.insert(&[primary.clone(), shadow.clone(), failed.clone(), unrated]).await.unwrap();
    let feedback = |id: &str, boolean: Option<bool>, score: Option<f64>| Feedback {
        id: new_id(),
        time_ms: 1,
        target: FeedbackTarget::Inference,
        target_id: id.to_owned(),
        boolean,
        score,
        comment: None,
        demonstration: None,
    };
    for f in [feedback(&primary.id, Some(false), None), feedback(&shadow.id, Some(true), Some(0.8)), feedback(&failed.id, Some(true), None)] {
        store.insert_feedback(&f).await.unwrap();
    }
    let labels = store.feedback_labels("smart", None, 100).await.unwrap();
    assert_eq!(labels.len(), 1, "the failed answer, the unrated one and the shadow call are not labels: {labels:?}");
    assert_eq!((labels[0].inference_id.as_str(), labels[0].target.as_str(), labels[0].boolean), (primary.id.as_str(), "anthropic/claude-sonnet-4-5", Some(false)));
    let request: serde_json::Value = serde_json::from_str(&labels[0].request).unwrap();
    assert_eq!(request["model"], "smart");
    let shadows = store.shadow_labels("smart", None, 100).await.unwrap();
    assert_eq!(shadows.len(), 1, "{shadows:?}");
    assert_eq!((shadows[0].primary.as_str(), shadows[0].candidate.as_str(), shadows[0].score), ("anthropic/claude-sonnet-4-5", "b/m", Some(0.8)));
    assert_eq!(shadows[0].primary_id, primary.id);
    assert!(store.shadow_labels("other", None, 100).await.unwrap().is_empty());
    assert!(store.feedback_labels("smart", Some(primary.time_ms + 1), 100).await.unwrap().is_empty());
}
both!(routers, router_versions_roll_back_and_labels_read);

async fn variant_feedback_counts_each_variants_ratings(store: Store) {
    let mut records = Vec::new();
    for (i, variant) in ["A", "A", "B", "B", "B"].into_iter().enumerate() {
        let mut r = record(i as u64);
        r.variant = Some(variant.into());
        records.push(r);
    }
    let mut shadow = record(9);
    shadow.inbound = "shadow".into();
    records.push(shadow.clone());
    store.insert(&records).await.unwrap();
    let rate = |r: &InferenceRecord, boolean: Option<bool>, score: Option<f64>| Feedback {
        id: new_id(),
        time_ms: 1,
        target: FeedbackTarget::Inference,
        target_id: r.id.clone(),
        boolean,
        score,
        comment: None,
        demonstration: None,
    };
    for f in [
        rate(&records[0], Some(true), None),
        rate(&records[1], Some(false), Some(0.5)),
        rate(&records[2], Some(true), Some(1.0)),
        rate(&records[3], None, Some(0.25)),
        rate(&shadow, Some(true), None),
    ] {
        store.insert_feedback(&f).await.unwrap();
    }
    // Rated again, later: only the latest rating counts.
    store.insert_feedback(&Feedback { time_ms: 2, ..rate(&records[0], Some(false), None) }).await.unwrap();
    let rows = store.variant_feedback("smart").await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].variant.as_str(), rows[0].booleans, rows[0].positives, rows[0].scores), ("A", 2, 0, 1));
    assert_eq!((rows[1].variant.as_str(), rows[1].booleans, rows[1].positives, rows[1].scores), ("B", 1, 1, 2));
    assert!((rows[1].score_sum - 1.25).abs() < 1e-9 && (rows[1].score_sq_sum - 1.0625).abs() < 1e-9, "{rows:?}");
    assert!(store.variant_feedback("other").await.unwrap().is_empty());
}
both!(variant_feedback, variant_feedback_counts_each_variants_ratings);
