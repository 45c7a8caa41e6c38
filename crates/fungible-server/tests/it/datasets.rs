//! `/v1/datasets` over recorded traffic: build a version from inferences and feedback, read
//! its rows, add rows by hand, export in providers' formats (and be refused where a format's
//! rules are broken), edits to a used version going to a new one, and bad input.

use axum::body::Body;
use axum::http::Request;
use fungible_mock::MockResponse;
use serde_json::{Value, json};

use crate::recording::{Recorded, postgres_store, sqlite_store};
use crate::{Harness, OPENAI};

async fn send(r: &Recorded, method: &str, path: &str, body: Option<Value>) -> crate::TestResponse {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    r.h.send(request).await
}

fn manual_row(i: usize) -> Value {
    json!({"id": format!("m{i}"), "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": format!("What is {i} + {i}?")},
        {"role": "assistant", "content": format!("{}", i + i)}
    ]})
}

async fn datasets_from_traffic_to_exports(r: Recorded) {
    // The same question twice: the second answer gets a demonstration, the first a thumbs down.
    for _ in 0..2 {
        r.h.mock.push(MockResponse::fixture(200, crate::fixtures().join("openai/plain.response.json")));
        let response = r.h.post("/v1/chat/completions", Harness::inbound(OPENAI, "plain")).await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let records = r.records().await;
    let (newest, oldest) = (records[0]["id"].as_str().unwrap().to_owned(), records[1]["id"].as_str().unwrap().to_owned());
    let fb = r.h.post("/v1/feedback", json!({"inference_id": oldest, "boolean": false}).to_string()).await;
    assert_eq!(fb.status, 200, "{}", fb.text());
    let fb = r.h.post("/v1/feedback", json!({"inference_id": newest, "demonstration": "Hello there, friend."}).to_string()).await;
    assert_eq!(fb.status, 200, "{}", fb.text());

    let built = send(&r, "POST", "/v1/datasets", Some(json!({"name": "greetings", "description": "hello traffic", "curation": {"near_duplicates": null, "validation_fraction": 0.0}}))).await;
    assert_eq!(built.status, 201, "{}", built.text());
    let built = built.json();
    assert_eq!((built["version"].as_i64(), built["rows"].as_i64()), (Some(1), Some(1)));
    assert_eq!(built["report"]["curation"]["exact_duplicates"], 1);
    assert_eq!(built["report"]["stats"]["sources"], json!({"demonstration": 1}));
    assert_eq!(built["report"]["stats"]["preference_pairs"], 1);

    let list = send(&r, "GET", "/v1/datasets", None).await.json();
    assert_eq!(list["data"][0]["name"], "greetings");

    let rows = send(&r, "GET", "/v1/datasets/greetings/rows", None).await;
    assert_eq!(rows.status, 200, "{}", rows.text());
    let row = rows.json()["data"][0].clone();
    assert_eq!(row["source"], "demonstration");
    assert_eq!(row["inference_id"], json!(newest));
    assert_eq!(row["messages"], json!([
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello there, friend."}
    ]));
    assert_eq!(row["rejected"], json!({"role": "assistant", "content": "Hello!"}));

    // Rows by hand: a bad one refuses the whole request and names it.
    let mut rows: Vec<Value> = (1..=9).map(manual_row).collect();
    rows.push(json!({"messages": [{"role": "user", "content": "no answer"}]}));
    let bad = send(&r, "POST", "/v1/datasets/greetings/rows", Some(json!({"rows": rows}))).await;
    let error = bad.openai_error(400);
    assert_eq!(error["param"], "rows[9]");
    assert!(error["message"].as_str().unwrap().contains("last message"), "{error}");
    rows.pop();
    let added = send(&r, "POST", "/v1/datasets/greetings/rows", Some(json!({"rows": rows}))).await;
    assert_eq!(added.status, 200, "{}", added.text());
    assert_eq!((added.json()["version"].as_i64(), added.json()["rows"].as_i64()), (Some(1), Some(10)));

    // Paging.
    let first = send(&r, "GET", "/v1/datasets/greetings/rows?limit=4", None).await.json();
    assert_eq!(first["data"].as_array().unwrap().len(), 4);
    let after = first["next_after"].as_i64().unwrap();
    let rest = send(&r, "GET", &format!("/v1/datasets/greetings/rows?limit=100&after={after}"), None).await.json();
    assert_eq!(rest["data"].as_array().unwrap().len(), 6);
    assert_eq!(rest["next_after"], Value::Null);

    // Exports.
    let openai = send(&r, "GET", "/v1/datasets/greetings/export?format=openai", None).await;
    assert_eq!(openai.status, 200, "{}", openai.text());
    assert_eq!(openai.headers["content-type"], "application/jsonl");
    let lines: Vec<Value> = openai.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[0]["messages"][2]["content"], "Hello there, friend.");
    let dpo = send(&r, "GET", "/v1/datasets/greetings/export?format=openai-dpo", None).await;
    let error = dpo.openai_error(400);
    assert!(error["message"].as_str().unwrap().contains("row m1: no rejected answer"), "{error}");
    let dpo = send(&r, "GET", "/v1/datasets/greetings/export?format=together-dpo&skip_invalid=true", None).await;
    assert_eq!(dpo.status, 200, "{}", dpo.text());
    assert_eq!(dpo.headers["x-fungible-skipped-rows"], "9");
    assert_eq!(dpo.text().lines().count(), 1);
    let too_few = send(&r, "GET", "/v1/datasets/greetings/export?format=openai-dpo&skip_invalid=true", None).await;
    assert!(too_few.openai_error(400)["message"].as_str().unwrap().contains("at least 10 rows"));
    send(&r, "GET", "/v1/datasets/greetings/export?format=word", None).await.openai_error(400);

    // Once used, edits go to a new version; delete keeps the used one.
    let store = r.h.state.store.clone().expect("store");
    fungible_datasets::versions::mark_used(&store, "greetings", 1, "ftjob_1").await.unwrap();
    let removed = send(&r, "DELETE", "/v1/datasets/greetings/rows/m1", None).await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    assert_eq!((removed.json()["version"].as_i64(), removed.json()["rows"].as_i64()), (Some(2), Some(9)));
    let shown = send(&r, "GET", "/v1/datasets/greetings", None).await.json();
    assert_eq!(shown["versions"][0]["used_by"], json!(["ftjob_1"]));
    assert_eq!(shown["versions"][0]["rows"], 10);
    send(&r, "DELETE", "/v1/datasets/greetings/rows/m1", None).await.openai_error(404);
    let deleted = send(&r, "DELETE", "/v1/datasets/greetings", None).await.json();
    assert_eq!(deleted["deleted_versions"], json!([2]));
    assert_eq!(deleted["kept_versions"][0]["version"], 1);

    // Bad input.
    send(&r, "GET", "/v1/datasets/nope", None).await.openai_error(404);
    send(&r, "GET", "/v1/datasets/greetings/rows?version=9", None).await.openai_error(404);
    send(&r, "GET", "/v1/datasets/greetings/rows?split=test", None).await.openai_error(400);
    send(&r, "POST", "/v1/datasets", Some(json!({"name": "../x"}))).await.openai_error(400);
    send(&r, "POST", "/v1/datasets", Some(json!({"name": "x", "selection": {"colour": "red"}}))).await.openai_error(400);
    let empty = send(&r, "POST", "/v1/datasets", Some(json!({"name": "x", "selection": {"route": "nothing-here"}}))).await;
    assert!(empty.openai_error(400)["message"].as_str().unwrap().contains("no recorded inference matches"));
}

#[tokio::test]
async fn datasets_from_traffic_to_exports_sqlite() {
    datasets_from_traffic_to_exports(Recorded::new(sqlite_store().await).await).await;
}

#[tokio::test]
async fn datasets_from_traffic_to_exports_postgres() {
    let Some((store, _schema)) = postgres_store().await else { return };
    datasets_from_traffic_to_exports(Recorded::new(store).await).await;
}

#[test]
fn datasets_need_read_all_from_a_virtual_key() {
    use fungible_store::Scope;
    for path in ["/v1/datasets", "/v1/datasets/x/rows", "/v1/datasets/x/export"] {
        assert_eq!(fungible_server::principal::needs(path), [Scope::ReadAll], "{path}");
    }
}

#[tokio::test]
async fn without_a_store_datasets_say_so() {
    let h = Harness::new(OPENAI).await;
    let response = h.send(Request::get("/v1/datasets").body(Body::empty()).expect("request")).await;
    response.openai_error(503);
}
