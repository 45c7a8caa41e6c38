//! Retrieved few-shot examples (`[models.NAME] examples`) end to end: a dataset in the store,
//! the real in-process MiniLM embedding questions, a mock OpenAI upstream that shows what was
//! sent, and the record that names the rows used.

use axum::body::Body;
use axum::http::Request;
use fungible_datasets::{Example, Source, Split};
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_mock::{Fallback, MockResponse, MockUpstream};
use fungible_datasets::Examples;
use fungible_server::{AppState, app};
use fungible_store::{Recorder, RecorderOptions, Store};
use fungible_types::{Message, Role};
use serde_json::{Value, json};

use crate::{Harness, fixtures};

fn row(id: &str, question: &str, answer: &str) -> (Example, Option<Split>) {
    let messages = vec![Message::text(Role::System, "You are a support agent."), Message::text(Role::User, question)];
    (Example::new(id.to_owned(), Source::Manual, messages, Vec::new(), Message::text(Role::Assistant, answer)), Some(Split::Train))
}

struct Setup {
    h: Harness,
    store: Store,
    recorder: Recorder,
    config: GatewayConfig,
}

/// A gateway whose route `support` (OpenAI on the mock) has `examples` (TOML inline table).
async fn setup(examples: &str) -> Setup {
    let store = crate::recording::sqlite_store().await;
    let rows = vec![
        row("refund", "How do I get a refund for my order?", "Refunds: Settings > Orders > Refund. Money is back in 5 days."),
        row("password", "I forgot my password, how can I reset it?", "Use 'Forgot password' on the login page."),
        row("invoice", "Where can I download my invoice?", "Invoices are under Settings > Billing."),
    ];
    fungible_datasets::versions::put_rows(&store, "support", rows).await.expect("dataset");
    let mock = MockUpstream::start(Fallback::Fail).await;
    let toml = format!(
        "[local]\nmodels_dir = {:?}\n[providers.openai]\nbase_url = \"{}/v1\"\n\
         [models.support]\ntarget = \"openai/gpt-4o-mini\"\nexamples = {examples}\n",
        crate::local::models_dir().display().to_string(),
        mock.url()
    );
    let file = ConfigFile::parse(&toml, "test.toml").expect("config parses");
    let config = GatewayConfig::resolve(file, &|k| (k == "OPENAI_API_KEY").then(|| "sk-test".to_owned())).expect("config");
    let gateway = Gateway::new(&config).expect("gateway");
    let recorder = Recorder::start(store.clone(), RecorderOptions::default());
    let state = AppState::new(gateway, config.max_body_bytes).with_recorder(store.clone(), recorder.clone());
    Setup { h: Harness { mock, app: app(state.clone()), state }, store, recorder, config }
}

impl Setup {
    async fn start(mut self) -> Setup {
        let examples = Examples::load(&self.store, &self.h.state.gateway, &self.config.routes).await.expect("examples load");
        self.h.state = self.h.state.clone().with_examples(examples);
        self.h.app = app(self.h.state.clone());
        self
    }

    async fn ask(&self, question: &str) -> crate::TestResponse {
        self.h.mock.push(MockResponse::fixture(200, fixtures().join("openai/plain.response.json")));
        let body = json!({"model": "support", "messages": [
            {"role": "system", "content": "Answer in one sentence."},
            {"role": "user", "content": question}
        ]});
        let res = self.h.post("/v1/chat/completions", body.to_string()).await;
        assert_eq!(res.status, 200, "{}", res.text());
        res
    }

    /// The (role, text) turns the upstream received last.
    fn sent(&self) -> Vec<(String, String)> {
        let received = self.h.mock.received();
        let body: Value = serde_json::from_slice(&received.last().expect("a request").body).expect("json");
        body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| (m["role"].as_str().unwrap_or_default().to_owned(), m["content"].as_str().unwrap_or_default().to_owned()))
            .collect()
    }
}

#[tokio::test]
async fn the_nearest_rows_are_sent_as_earlier_turns_and_recorded() {
    let s = setup("{ dataset = \"support\", k = 1 }").await.start().await;
    let res = s.ask("I want my money back for an order").await;
    assert_eq!(res.headers.get("x-fungible-examples").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(
        s.sent(),
        [
            ("system".to_owned(), "Answer in one sentence.".to_owned()),
            ("user".to_owned(), "How do I get a refund for my order?".to_owned()),
            ("assistant".to_owned(), "Refunds: Settings > Orders > Refund. Money is back in 5 days.".to_owned()),
            ("user".to_owned(), "I want my money back for an order".to_owned()),
        ],
        "the nearest row (refund), after the request's system prompt; the row's own system prompt is not copied"
    );

    // A question near no row: sent as it is.
    let res = s.ask("Translate 'good morning' into Italian.").await;
    assert_eq!(res.headers.get("x-fungible-examples"), None);
    assert_eq!(s.sent().len(), 2);

    // The record is the request as sent, tagged with the rows used.
    s.recorder.flush().await;
    let list = s.h.send(Request::get("/v1/inferences").body(Body::empty()).expect("request")).await.json();
    let tagged: Vec<&Value> = list["data"].as_array().expect("data").iter().filter(|r| r["tags"]["fungible.examples"].is_string()).collect();
    assert_eq!(tagged.len(), 1, "{list}");
    assert_eq!(tagged[0]["tags"]["fungible.examples"], "support@1:refund");

    // The version examples are served from never changes: an edit goes to a new version.
    let info = fungible_datasets::versions::info(&s.store, "support", Some(1)).await.expect("info");
    assert_eq!(info.used_by, ["route:support"]);
    let edited = fungible_datasets::versions::put_rows(&s.store, "support", vec![row("new", "Hi?", "Hello.")]).await.expect("edit");
    assert_eq!(edited.version, 2);
}

#[tokio::test]
async fn a_missing_dataset_fails_the_start_naming_the_route() {
    let s = setup("{ dataset = \"nowhere@3\" }").await;
    let err = Examples::load(&s.store, &s.h.state.gateway, &s.config.routes).await.expect_err("no such dataset");
    assert!(err.starts_with("models.support.examples: "), "{err}");
    assert!(err.contains("nowhere"), "{err}");
}
