//! Integration tests of the Redis backend, against the Redis at `FUNGIBLE_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`); each test writes under its own key prefix.

use std::time::Duration;

use fungible_cache::{BackendConfig, CacheConfig, CacheKey, CachedAnswer, ResponseCache};
use fungible_types::{
    AssistantMessage, ChatRequest, ChatResponse, FinishReason, Message, Role, Usage,
};

fn redis_url() -> String {
    std::env::var("FUNGIBLE_TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into())
}

fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("fungible-test:{test}:{}:{nanos}:", std::process::id())
}

async fn redis_cache(test: &str, ttl: Duration) -> ResponseCache {
    let backend = BackendConfig::Redis {
        url: redis_url(),
        key_prefix: unique_prefix(test),
    };
    ResponseCache::open(CacheConfig {
        backend,
        ttl,
        ..CacheConfig::default()
    })
    .await
    .expect("redis (set FUNGIBLE_TEST_REDIS_URL)")
}

fn answer(text: &str) -> CachedAnswer {
    CachedAnswer {
        response: ChatResponse {
            id: "resp-1".into(),
            model: "m".into(),
            created: 7,
            message: AssistantMessage {
                content: Some(text.into()),
                ..Default::default()
            },
            finish_reason: FinishReason::Stop,
            usage: Usage {
                input_tokens: 3,
                output_tokens: 2,
                ..Default::default()
            },
        },
        target: Some("mock/m".into()),
        route: None,
    }
}

fn key(text: &str) -> CacheKey {
    CacheKey::exact(
        &ChatRequest {
            model: "mock/m".into(),
            messages: vec![Message::text(Role::User, text)],
            ..Default::default()
        },
        None,
    )
}

#[tokio::test]
async fn redis_round_trips_an_answer() {
    let cache = redis_cache("round_trip", Duration::from_secs(60)).await;
    assert_eq!(cache.get(&key("q")).await, None);
    cache.put(&key("q"), &answer("A")).await;
    assert_eq!(cache.get(&key("q")).await, Some(answer("A")));
    assert_eq!(cache.memory_entries(), None);
}

#[tokio::test]
async fn two_caches_on_one_redis_and_prefix_share_answers() {
    let prefix = unique_prefix("shared");
    let open = || async {
        let backend = BackendConfig::Redis {
            url: redis_url(),
            key_prefix: prefix.clone(),
        };
        ResponseCache::open(CacheConfig {
            backend,
            ..CacheConfig::default()
        })
        .await
        .unwrap()
    };
    let (a, b) = (open().await, open().await);
    a.put(&key("q"), &answer("shared")).await;
    assert_eq!(b.get(&key("q")).await, Some(answer("shared")));
}

#[tokio::test]
async fn redis_expires_entries_with_the_ttl() {
    // Redis's clock, not ours: check the TTL it was given rather than waiting for it.
    let prefix = unique_prefix("ttl");
    let backend = BackendConfig::Redis {
        url: redis_url(),
        key_prefix: prefix.clone(),
    };
    let cache = ResponseCache::open(CacheConfig {
        backend,
        ttl: Duration::from_secs(90),
        ..CacheConfig::default()
    })
    .await
    .unwrap();
    cache.put(&key("q"), &answer("A")).await;
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}{}", key("q")))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 80_000 && pttl <= 90_000, "{pttl}");
}

#[tokio::test]
async fn an_unreachable_redis_fails_at_open() {
    let backend = BackendConfig::Redis {
        url: "redis://127.0.0.1:1".into(),
        key_prefix: "x:".into(),
    };
    let err = ResponseCache::open(CacheConfig {
        backend,
        ..CacheConfig::default()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().starts_with("redis: "), "{err}");
}

#[tokio::test]
async fn an_undecodable_entry_is_a_miss() {
    let prefix = unique_prefix("garbage");
    let backend = BackendConfig::Redis {
        url: redis_url(),
        key_prefix: prefix.clone(),
    };
    let cache = ResponseCache::open(CacheConfig {
        backend,
        ..CacheConfig::default()
    })
    .await
    .unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}{}", key("q")))
        .arg("not json")
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(cache.get(&key("q")).await, None);
}
