//! Adaptive A/B tests (`strategy = "adaptive"`): an even split until feedback is read, then
//! shares that follow it, a sticky user keeping its variant, and, once one variant is better
//! with the configured confidence, every request to it; `/v1/routes` shows where the test
//! stands.

use std::collections::BTreeMap;

use fungible_server::learned::Served;
use serde_json::{Value, json};

use crate::learned::TwoUpstreams;

/// Asks as `user`; returns the variant that answered and the inference id.
async fn ask(t: &TwoUpstreams, user: &str) -> (String, String) {
    let body = json!({"model": "ab", "user": user, "messages": [{"role": "user", "content": "Hi"}]});
    let res = t.post("/v1/chat/completions", &body).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let variant = res.headers["x-fungible-variant"].to_str().expect("variant").to_owned();
    let id = res.headers["x-fungible-inference-id"].to_str().expect("id").to_owned();
    (variant, id)
}

async fn decider_of(t: &TwoUpstreams) -> Value {
    let routes = t.get("/v1/routes").await.json();
    routes["data"][0]["decider"].clone()
}

#[tokio::test]
async fn an_adaptive_test_follows_its_feedback_and_stops_with_the_better_variant() {
    let t = TwoUpstreams::new(
        "[models.ab]\nstrategy = \"adaptive\"\nsticky = \"user\"\n\
         adaptive = { metric = \"boolean\", min_share = 0.1, confidence = 0.95, min_samples = 40 }\n\
         targets = [{ target = \"a/m\", name = \"A\" }, { target = \"b/m\", name = \"B\" }]\n",
    )
    .await;
    let mut served = Served::default();

    // Nothing read yet: an even split, no decider.
    assert_eq!(decider_of(&t).await, Value::Null);
    let mut asked: Vec<(String, String)> = Vec::new();
    for i in 0..200 {
        asked.push(ask(&t, &format!("user-{i}")).await);
    }
    let to_b = asked.iter().filter(|(v, _)| v == "B").count();
    assert!((60..=140).contains(&to_b), "an even split: {to_b} of 200 to B");

    // Feedback read, but not yet enough: running, each variant above its floor, and a sticky
    // user keeps its variant.
    t.refresh(&mut served).await;
    let status = decider_of(&t).await;
    assert_eq!((status["kind"].as_str(), status["state"].as_str()), (Some("adaptive"), Some("running")), "{status}");
    let (first, _) = ask(&t, "sticky-user").await;
    for _ in 0..5 {
        assert_eq!(ask(&t, "sticky-user").await.0, first, "a sticky user keeps its variant");
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
    let status = decider_of(&t).await;
    assert_eq!((status["state"].as_str(), status["winner"].as_str()), (Some("stopped"), Some("B")), "{status}");
    assert!(status["variants"][1]["p_best"].as_f64() > Some(0.95), "{status}");
    assert_eq!(status["variants"][0]["rated"].as_u64(), rated.get("A").map(|&n| u64::from(n)), "{status}");
    // The routes page shows it.
    let page = t.get("/ui/routes").await;
    assert_eq!(page.status, 200, "{}", page.text());
    let html = page.text();
    assert!(html.contains("Adaptive test") && html.contains("stopped: every request goes to B") && html.contains("winner</span>"), "{html}");
    // Stopped: every request to the winner, the sticky user's too, recorded as such.
    for i in 0..20 {
        assert_eq!(ask(&t, &format!("late-{i}")).await.0, "B");
    }
    let (variant, id) = ask(&t, "sticky-user").await;
    assert_eq!(variant, "B");
    t.recorder.flush().await;
    let record = t.store.get(&id).await.expect("get").expect("recorded");
    assert_eq!(record.tags["fungible.router"], "adaptive:winner");
}
