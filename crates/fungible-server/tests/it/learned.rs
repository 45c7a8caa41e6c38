//! Learned routes (`strategy = "learned"`): a router version in the store decides each
//! request's target once a server has read it, the decision is recorded with the inference,
//! and a router that no longer fits the route, or none at all, leaves the configured order.

use std::collections::BTreeMap;
use std::sync::Arc;

use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_mock::{Fallback, MockUpstream};
use fungible_router::{Sample, TrainOptions};
use fungible_gateway::routing::config::RouteConfig;
use fungible_server::learned::{Served, TextEmbed, features, refresh};
use fungible_server::{AppState, app};
use fungible_store::{InferenceFilter, Recorder, RecorderOptions, Store};
use fungible_types::{Message, Role};
use serde_json::{Value, json};

use crate::{Harness, TestResponse};

/// An upstream that answers every request with `text`.
pub(crate) fn answers(text: &str) -> Fallback {
    let json = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    });
    Fallback::Fixed { json: json.to_string().into(), sse: bytes::Bytes::new() }
}

/// An embedding that tells hard requests (they say "hard") from the rest.
#[derive(Debug)]
struct Words;

impl TextEmbed for Words {
    fn name(&self) -> String {
        "test:words".into()
    }

    fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        Ok(if text.contains("hard") { vec![1.0, 0.0, 0.1] } else { vec![0.0, 1.0, 0.1] })
    }
}

/// A router for `targets` (cheap first) where only the second answers hard requests well.
fn router(targets: [&str; 2]) -> String {
    let embed = Words;
    let samples: Vec<Sample> = (0..300)
        .map(|i| {
            let hard = i % 3 == 0;
            let text = if hard { format!("a hard question #{i}") } else { format!("an easy question #{i}") };
            let (embedding, shape) = features(&[Message::text(Role::User, text)], false, &embed).expect("embeds");
            let labels = BTreeMap::from([(targets[0].to_owned(), if hard { 0.0 } else { 1.0 }), (targets[1].to_owned(), 1.0)]);
            Sample { key: format!("item-{i}"), embedding, shape, labels }
        })
        .collect();
    let names: Vec<String> = targets.iter().map(|t| (*t).to_owned()).collect();
    let options = TrainOptions { embedding: embed.name(), ..TrainOptions::default() };
    let (router, report) = fungible_router::train(&names, &[1.0, 10.0], &samples, &options).expect("trains");
    assert!(report.chosen().and_then(|k| k.test_apgr).is_some_and(|a| a > 0.8), "{report:?}");
    router.to_json()
}

/// A gateway over two upstreams, `a/m` answering "from a" and `b/m` "from b", with `route`
/// (a `[models.NAME]` section over them), recording to SQLite, the UI on.
pub(crate) struct TwoUpstreams {
    pub(crate) h: Harness,
    _b: MockUpstream,
    pub(crate) store: Store,
    pub(crate) recorder: Recorder,
    gateway: Gateway,
    routes: BTreeMap<String, RouteConfig>,
}

impl TwoUpstreams {
    pub(crate) async fn new(route: &str) -> TwoUpstreams {
        let a = MockUpstream::start(answers("from a")).await;
        let b = MockUpstream::start(answers("from b")).await;
        let toml = format!("[providers.a]\nbase_url = \"{}/v1\"\n[providers.b]\nbase_url = \"{}/v1\"\n{route}", a.url(), b.url());
        let config = GatewayConfig::resolve(ConfigFile::parse(&toml, "routes.toml").expect("parses"), &|_: &str| None).expect("valid");
        let gateway = Gateway::new(&config).expect("gateway");
        let store = crate::recording::sqlite_store().await;
        let recorder = Recorder::start(store.clone(), RecorderOptions::default());
        let state = AppState::new(gateway.clone(), config.max_body_bytes)
            .with_recorder(store.clone(), recorder.clone())
            .with_ui(fungible_server::ui::Ui::new(fungible_server::ui::Sessions::default()));
        TwoUpstreams { h: Harness { mock: a, app: app(state.clone()), state }, _b: b, store, recorder, gateway, routes: config.routes }
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> TestResponse {
        self.h
            .send(
                axum::http::Request::post(path)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(body.to_string()))
                    .expect("request"),
            )
            .await
    }

    pub(crate) async fn get(&self, path: &str) -> TestResponse {
        self.h.send(axum::http::Request::get(path).header("host", "localhost").body(axum::body::Body::empty()).expect("request")).await
    }

    /// What a server's poller does every 10 s, with [`Words`] as the embedding.
    pub(crate) async fn refresh(&self, served: &mut Served) {
        let embed: Result<Arc<dyn TextEmbed>, String> = Ok(Arc::new(Words));
        refresh(&self.gateway, &self.routes, &self.store, &embed, served).await;
    }

    /// Asks `text`; returns which upstream answered and the recorded tags.
    async fn ask(&self, text: &str) -> (String, Value) {
        let body = json!({"model": "smart", "messages": [{"role": "user", "content": text}]});
        let res = self.post("/v1/chat/completions", &body).await;
        assert_eq!(res.status, 200, "{}", res.text());
        let answer = res.json()["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
        let id = res.headers["x-fungible-inference-id"].to_str().expect("id").to_owned();
        self.recorder.flush().await;
        let record = self.store.get(&id).await.expect("get").expect("recorded");
        (answer, record.tags)
    }

}

#[tokio::test]
async fn a_learned_route_sends_each_request_where_its_router_says_and_records_why() {
    let l = TwoUpstreams::new("[models.smart]\nstrategy = \"learned\"\ntargets = [{ target = \"a/m\" }, { target = \"b/m\" }]\n").await;
    let mut served = Served::default();

    // No router yet: the configured order, and the reason recorded.
    l.refresh(&mut served).await;
    let (answer, tags) = l.ask("a hard one").await;
    assert_eq!(answer, "from a");
    assert_eq!(tags["fungible.router"], "none");
    assert!(tags["fungible.router_decision"]["reason"].as_str().is_some_and(|r| r.contains("fungible route train")), "{tags}");

    // v1 is trained: hard requests go to b, the rest to the cheaper a.
    assert_eq!(l.store.create_router("smart", "logistic", "{}", &router(["a/m", "b/m"])).await.expect("stored"), 1);
    l.refresh(&mut served).await;
    let (answer, tags) = l.ask("a hard one").await;
    assert_eq!(answer, "from b");
    let decision = &tags["fungible.router_decision"];
    assert_eq!(tags["fungible.router"], "smart@v1");
    assert_eq!((decision["version"].as_i64(), decision["pick"].as_str()), (Some(1), Some("b/m")), "{tags}");
    assert!(decision["scores"]["b/m"].as_f64() > decision["scores"]["a/m"].as_f64(), "{tags}");
    assert!(decision["micros"].as_u64().is_some());
    let page = l.get("/ui/routes").await;
    assert!(page.text().contains("Routed by router"), "{}", page.text());
    let (answer, tags) = l.ask("an easy one").await;
    assert_eq!(answer, "from a");
    assert_eq!(tags["fungible.router_decision"]["pick"], "a/m");
    // The version is a label stats and filters read; the scores are not indexed.
    let tagged = l.store.list(&InferenceFilter { tags: vec!["fungible.router=smart@v1".into()], ..InferenceFilter::default() }).await.expect("list");
    assert_eq!(tagged.len(), 2);
    let by_tag = l
        .store
        .stats(fungible_store::GroupBy::Tag, None, None)
        .await
        .expect("stats");
    assert!(by_tag.iter().all(|r| !r.key.starts_with("fungible.router_decision")), "{by_tag:?}");

    // v2 was trained for other targets: stale, so the configured order, and why.
    assert_eq!(l.store.create_router("smart", "logistic", "{}", &router(["a/m", "c/m"])).await.expect("stored"), 2);
    l.refresh(&mut served).await;
    let (answer, tags) = l.ask("a hard one").await;
    assert_eq!(answer, "from a");
    assert_eq!(tags["fungible.router"], "none");
    assert!(tags["fungible.router_decision"]["reason"].as_str().is_some_and(|r| r.contains("train it again")), "{tags}");

    // A corrupt v3 is not used: the configured order, and why, here and on the routes page.
    assert_eq!(l.store.create_router("smart", "knn", "{}", "{\"targets\": 1}").await.expect("stored"), 3);
    l.refresh(&mut served).await;
    assert_eq!(served.learned["smart"].0, 3);
    let (answer, tags) = l.ask("a hard one").await;
    assert_eq!((answer.as_str(), tags["fungible.router"].as_str()), ("from a", Some("none")));
    assert!(tags["fungible.router_decision"]["reason"].as_str().is_some_and(|r| r.starts_with("router v3 is not used: not a router")), "{tags}");
    assert!(l.get("/ui/routes").await.text().contains("Router v3 is not used"));

    // Rolled back to v1: routed by it again.
    assert_eq!(l.store.roll_back_router("smart", Some(1)).await.expect("rolled back"), 1);
    l.refresh(&mut served).await;
    let (answer, tags) = l.ask("a hard one").await;
    assert_eq!((answer.as_str(), tags["fungible.router"].as_str()), ("from b", Some("smart@v1")));
}
