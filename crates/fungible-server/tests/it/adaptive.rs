//! Adaptive A/B tests (`strategy = "adaptive"`): an even split until feedback is read, then
//! shares that follow it, a sticky user keeping its variant, and, once one variant is better
//! with the configured confidence, every request to it; `/v1/routes` shows where the test
//! stands.

use std::collections::BTreeMap;
use std::sync::Arc;

use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_mock::{Fallback, MockUpstream};
use fungible_server::learned::{Served, TextEmbed, refresh};
use fungible_server::{AppState, app};
use fungible_store::{Recorder, RecorderOptions, Store};
use serde_json::{Value, json};

use crate::{Harness, TestResponse};

fn answers(text: &str) -> Fallback {
    let json = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    });
    Fallback::Fixed { json: json.to_string().into(), sse: bytes::Bytes::new() }
}

struct Test {
    h: Harness,
    _b: MockUpstream,
    store: Store,
    recorder: Recorder,
    gateway: Gateway,
    config: GatewayConfig,
}

impl Test {
    async fn new() -> Test {
        let a = MockUpstream::start(answers("from a")).await;
        let b = MockUpstream::start(answers("from b")).await;
        let toml = format!(
            "[providers.a]\nbase_url = \"{}/v1\"\n[providers.b]\nbase_url = \"{}/v1\"\n\
             [models.ab]\nstrategy = \"adaptive\"\nsticky = \"user\"\n\
             adaptive = {{ metric = \"boolean\", min_share = 0.1, confidence = 0.95, min_samples = 40 }}\n\
             targets = [{{ target = \"a/m\", name = \"A\" }}, {{ target = \"b/m\", name = \"B\" }}]\n",
            a.url(),
            b.url()
        );
        let config = GatewayConfig::resolve(ConfigFile::parse(&toml, "ab.toml").expect("parses"), &|_: &str| None).expect("valid");
        let gateway = Gateway::new(&config).expect("gateway");
        let store = crate::recording::sqlite_store().await;
        let recorder = Recorder::start(store.clone(), RecorderOptions::default());
        let state = AppState::new(gateway.clone(), config.max_body_bytes)
            .with_recorder(store.clone(), recorder.clone())
            .with_ui(fungible_server::ui::Ui::new(fungible_server::ui::Sessions::default()));
        Test { h: Harness { mock: a, app: app(state.clone()), state }, _b: b, store, recorder, gateway, config }
    }

    /// Asks as `user`; returns the variant that answered and the inference id.
    async fn ask(&self, user: &str) -> (String, String) {
        let body = json!({"model": "ab", "user": user, "messages": [{"role": "user", "content": "Hi"}]});
        let res = self.post("/v1/chat/completions", &body).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let variant = res.headers["x-fungible-variant"].to_str().expect("variant").to_owned();
        let id = res.headers["x-fungible-inference-id"].to_str().expect("id").to_owned();
        (variant, id)
    }

    async fn post(&self, path: &str, body: &Value) -> TestResponse {
        self.h
            .send(
                axum::http::Request::post(path)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body.to_string()))
                    .expect("request"),
            )
            .await
    }

    async fn refresh(&self, served: &mut Served) {
        let embed: Result<Arc<dyn TextEmbed>, String> = Err("no learned route".into());
        refresh(&self.gateway, &self.config.routes, &self.store, &embed, served).await;
    }

    async fn status(&self) -> Value {
        let routes = self.h.send(axum::http::Request::get("/v1/routes").body(axum::body::Body::empty()).expect("request")).await.json();
        routes["data"][0]["decider"].clone()
    }
}

#[tokio::test]
async fn an_adaptive_test_follows_its_feedback_and_stops_with_the_better_variant() {
    let t = Test::new().await;
    let mut served = Served::default();

    // Nothing read yet: an even split, no decider.
    assert_eq!(t.status().await, Value::Null);
    let mut asked: Vec<(String, String)> = Vec::new();
    for i in 0..200 {
        asked.push(t.ask(&format!("user-{i}")).await);
    }
    let to_b = asked.iter().filter(|(v, _)| v == "B").count();
    assert!((60..=140).contains(&to_b), "an even split: {to_b} of 200 to B");

    // Feedback read, but not yet enough: running, each variant above its floor, and a sticky
    // user keeps its variant.
    t.refresh(&mut served).await;
    let status = t.status().await;
    assert_eq!((status["kind"].as_str(), status["state"].as_str()), (Some("adaptive"), Some("running")), "{status}");
    let (first, _) = t.ask("sticky-user").await;
    for _ in 0..5 {
        assert_eq!(t.ask("sticky-user").await.0, first, "a sticky user keeps its variant");
    }

    // B's answers are rated good 80% of the time, A's 30%.
    t.recorder.flush().await;
    let mut rated = BTreeMap::<String, u32>::new();
    for (i, (variant, id)) in asked.iter().enumerate() {
        let good = if variant == "B" { i % 10 < 8 } else { i % 10 < 3 };
        let res = t.post("/v1/feedback", &json!({"inference_id": id, "boolean": good})).await;
        assert!(res.status.is_success(), "{}", res.text());
        *rated.entry(variant.clone()).or_default() += 1;
    }
    t.refresh(&mut served).await;
    let status = t.status().await;
    assert_eq!((status["state"].as_str(), status["winner"].as_str()), (Some("stopped"), Some("B")), "{status}");
    assert!(status["variants"][1]["p_best"].as_f64() > Some(0.95), "{status}");
    assert_eq!(status["variants"][0]["rated"].as_u64(), rated.get("A").map(|&n| u64::from(n)), "{status}");
    // The routes page shows it.
    let page = t
        .h
        .send(axum::http::Request::get("/ui/routes").header("host", "localhost").body(axum::body::Body::empty()).expect("request"))
        .await;
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    assert!(html.contains("Adaptive test") && html.contains("stopped: every request goes to B") && html.contains("winner</span>"), "{html}");
    // Stopped: every request to the winner, the sticky user's too, recorded as such.
    for i in 0..20 {
        assert_eq!(t.ask(&format!("late-{i}")).await.0, "B");
    }
    let (variant, id) = t.ask("sticky-user").await;
    assert_eq!(variant, "B");
    t.recorder.flush().await;
    let record = t.store.get(&id).await.expect("get").expect("recorded");
    assert_eq!(record.tags["fungible.router"], "adaptive:winner");
}
