//! The web UI through the whole app: signing in and out, the session cookie's flags, the
//! CSRF token on every state change a page makes, the security headers, and what a virtual
//! key may see (its own inferences only; no admin page). The pages' behaviour in a real
//! browser is tested by `tests/ui/` (Playwright driving Chromium).

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value, json};

use crate::TestResponse;
use crate::auth::{ADMIN, Gw, gateway};
use fungible_access::Limits;

/// A signed-in browser: its cookie, and the CSRF token its pages carry.
struct Browser {
    cookie: String,
    csrf: String,
}

fn csrf_of(page: &str) -> String {
    let re = regex::Regex::new(r#"<meta name="csrf-token" content="([^"]*)">"#).expect("regex");
    re.captures(page).map(|c| c[1].to_owned()).unwrap_or_default()
}

async fn sign_in(gw: &Gw, key: &str) -> TestResponse {
    let request = Request::post("/ui/login")
        .header("content-type", "application/json")
        .body(Body::from(json!({"key": key, "next": "/ui/inferences"}).to_string()))
        .expect("request");
    gw.send(request).await
}

async fn browser(gw: &Gw, key: &str) -> Browser {
    let r = sign_in(gw, key).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    let set = r.headers["set-cookie"].to_str().expect("ascii").to_owned();
    let cookie = set.split(';').next().unwrap_or_default().to_owned();
    let mut browser = Browser { cookie, csrf: String::new() };
    let page = get(gw, &browser, "/ui/inferences").await;
    assert_eq!(page.status.as_u16(), 200, "{}", page.text());
    browser.csrf = csrf_of(&page.text());
    assert!(!browser.csrf.is_empty(), "the page carries its CSRF token");
    browser
}

async fn get(gw: &Gw, browser: &Browser, path: &str) -> TestResponse {
    gw.send(Request::get(path).header("cookie", &browser.cookie).body(Body::empty()).expect("request")).await
}

async fn send(gw: &Gw, browser: &Browser, method: &str, path: &str, body: Value, csrf: Option<&str>) -> TestResponse {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("cookie", &browser.cookie)
        .header("content-type", "application/json");
    if let Some(token) = csrf {
        request = request.header("x-fungible-csrf", token);
    }
    gw.send(request.body(Body::from(body.to_string())).expect("request")).await
}

#[tokio::test]
async fn pages_need_a_sign_in_and_the_session_cookie_is_http_only_and_strict() {
    let gw = gateway("", Limits::memory()).await;
    let r = gw.send(Request::get("/ui/inferences?model=x").body(Body::empty()).expect("request")).await;
    assert_eq!(r.status.as_u16(), 303);
    assert_eq!(r.headers["location"], "/ui/login?next=%2Fui%2Finferences%3Fmodel%3Dx");
    let login = gw.send(Request::get("/ui/login").body(Body::empty()).expect("request")).await;
    assert_eq!(login.status.as_u16(), 200);
    let csp = login.headers["content-security-policy"].to_str().unwrap_or_default();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(login.headers["x-frame-options"], "DENY");
    assert!(!login.text().contains("<script>"), "no inline script");

    let wrong = sign_in(&gw, "fk-not-a-key").await;
    assert_eq!(wrong.status.as_u16(), 401, "{}", wrong.text());
    assert!(wrong.headers.get("set-cookie").is_none());
    let right = sign_in(&gw, ADMIN).await;
    assert_eq!(right.status.as_u16(), 200);
    assert_eq!(right.json()["next"], "/ui/inferences");
    let cookie = right.headers["set-cookie"].to_str().unwrap_or_default();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=3600"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains(ADMIN), "the cookie holds no key");
    // Behind a TLS proxy the cookie is Secure.
    let tls = gw
        .send(
            Request::post("/ui/login")
                .header("content-type", "application/json")
                .header("x-forwarded-proto", "https")
                .body(Body::from(json!({"key": ADMIN}).to_string()))
                .expect("request"),
        )
        .await;
    assert!(tls.headers["set-cookie"].to_str().unwrap_or_default().ends_with("; Secure"));
    // Somewhere else after signing in is refused: back to the UI.
    let elsewhere = gw
        .send(
            Request::post("/ui/login")
                .header("content-type", "application/json")
                .body(Body::from(json!({"key": ADMIN, "next": "https://evil.example/"}).to_string()))
                .expect("request"),
        )
        .await;
    assert_eq!(elsewhere.json()["next"], "/ui");
}

#[tokio::test]
async fn every_page_renders_for_the_admin_with_its_security_headers() {
    let gw = gateway("", Limits::memory()).await;
    let (_, key) = gw.key(json!({"name": "app"})).await;
    assert_eq!(gw.chat(&key, "openai/gpt-5").await.status.as_u16(), 200);
    gw.recorder.flush().await;
    let id = gw.store.list(&Default::default()).await.expect("list")[0].id.clone();
    let admin = browser(&gw, ADMIN).await;
    for path in ["/ui", "/ui?range=7d", "/ui/inferences", "/ui/inferences?status=ok&range=1h", &format!("/ui/inferences/{id}"), "/ui/playground", "/ui/routes", "/ui/datasets", "/ui/tuning", "/ui/keys"] {
        let r = get(&gw, &admin, path).await;
        assert_eq!(r.status.as_u16(), 200, "{path}: {}", r.text());
        assert!(r.headers["content-security-policy"].to_str().unwrap_or_default().starts_with("default-src 'none'"), "{path}");
        assert_eq!(r.headers["cache-control"], "no-store", "{path}");
        let html = r.text();
        assert!(!html.contains("<script>") && !html.contains(" style=\""), "{path}: inline script or style");
    }
    let detail = get(&gw, &admin, &format!("/ui/inferences/{id}")).await.text();
    // (minijinja escapes `/` too.)
    for shown in ["<pre class=\"text\">Hi</pre>", "<pre class=\"text\">Hello!</pre>", "openai&#x2f;gpt-5", "class=\"bar ok\""] {
        assert!(detail.contains(shown), "{shown} on the inference's page");
    }
    for asset in ["app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css"] {
        let r = get(&gw, &admin, &format!("/ui/assets/{asset}")).await;
        assert_eq!(r.status.as_u16(), 200, "{asset}");
        assert!(r.headers.contains_key("etag"), "{asset}");
    }
}

#[tokio::test]
async fn a_state_change_without_the_pages_csrf_token_is_refused() {
    let gw = gateway("", Limits::memory()).await;
    let admin = browser(&gw, ADMIN).await;
    let settings = json!({"name": "from-the-ui"});
    let without = send(&gw, &admin, "POST", "/admin/keys", settings.clone(), None).await;
    assert_eq!(without.status.as_u16(), 403, "{}", without.text());
    let forged = send(&gw, &admin, "POST", "/admin/keys", settings.clone(), Some("AAAA")).await;
    assert_eq!(forged.status.as_u16(), 403);
    let with = send(&gw, &admin, "POST", "/admin/keys", settings, Some(&admin.csrf)).await;
    assert_eq!(with.status.as_u16(), 201, "{}", with.text());
    // Another session's token does not do.
    let other = browser(&gw, ADMIN).await;
    let crossed = send(&gw, &admin, "POST", "/ui/logout", json!({}), Some(&other.csrf)).await;
    assert_eq!(crossed.status.as_u16(), 403);
    // Reading needs no token.
    assert_eq!(get(&gw, &admin, "/admin/keys").await.status.as_u16(), 200);
}

#[tokio::test]
async fn a_virtual_key_sees_only_its_own_inferences_and_no_admin_page() {
    let gw = gateway("", Limits::memory()).await;
    let (a_id, a) = gw.key(json!({"name": "tenant-a"})).await;
    let (b_id, b) = gw.key(json!({"name": "tenant-b"})).await;
    assert_eq!(gw.chat(&a, "openai/gpt-5").await.status.as_u16(), 200);
    let mine = gw.chat(&b, "openai/gpt-5").await;
    assert_eq!(mine.status.as_u16(), 200);
    let mine_id = mine.headers["x-fungible-inference-id"].to_str().expect("id").to_owned();
    gw.recorder.flush().await;
    let records = gw.store.list(&Default::default()).await.expect("list");
    let theirs = records.iter().find(|r| r.key_id.as_deref() == Some(a_id.as_str())).expect("tenant a's inference");
    let tenant_b = browser(&gw, &b).await;
    let list = get(&gw, &tenant_b, "/ui/inferences").await.text();
    assert!(list.contains(&mine_id) && !list.contains(&theirs.id), "only its own inferences are listed");
    // Asking for the other key's is answered with its own.
    let asked = get(&gw, &tenant_b, &format!("/ui/inferences?key_id={a_id}")).await.text();
    assert!(!asked.contains(&theirs.id));
    let other = get(&gw, &tenant_b, &format!("/ui/inferences/{}", theirs.id)).await;
    assert_eq!(other.status.as_u16(), 404, "another tenant's inference is not found");
    assert_eq!(get(&gw, &tenant_b, &format!("/ui/inferences/{mine_id}")).await.status.as_u16(), 200);
    for admin_page in ["/ui/keys", "/ui/tuning"] {
        assert_eq!(get(&gw, &tenant_b, admin_page).await.status.as_u16(), 403, "{admin_page}");
    }
    // Without read:all, the routes and datasets pages are closed too.
    assert_eq!(get(&gw, &tenant_b, "/ui/routes").await.status.as_u16(), 403);
    // The API through the session is the key's API.
    assert_eq!(get(&gw, &tenant_b, "/admin/keys").await.status.as_u16(), 401);
    let api = get(&gw, &tenant_b, "/v1/inferences").await.json();
    assert!(api["data"].as_array().is_some_and(|d| d.iter().all(|r| r["key_id"] == b_id.as_str())));
    let feedback = send(&gw, &tenant_b, "POST", "/v1/feedback", json!({"inference_id": theirs.id, "boolean": true}), Some(&tenant_b.csrf)).await;
    assert_eq!(feedback.status.as_u16(), 404, "no feedback on another tenant's inference");
    let own = send(&gw, &tenant_b, "POST", "/v1/feedback", json!({"inference_id": mine_id, "boolean": true}), Some(&tenant_b.csrf)).await;
    assert_eq!(own.status.as_u16(), 200, "{}", own.text());
}

#[tokio::test]
async fn signing_out_or_revoking_the_key_ends_the_session() {
    let gw = gateway("", Limits::memory()).await;
    let admin = browser(&gw, ADMIN).await;
    let out = send(&gw, &admin, "POST", "/ui/logout", json!({}), Some(&admin.csrf)).await;
    assert_eq!(out.status.as_u16(), 200);
    assert!(out.headers["set-cookie"].to_str().unwrap_or_default().contains("Max-Age=0"));
    assert_eq!(get(&gw, &admin, "/ui").await.status.as_u16(), 303, "the old cookie no longer works");
    assert_eq!(get(&gw, &admin, "/admin/keys").await.status.as_u16(), 401);

    let (id, key) = gw.key(json!({"name": "short-lived"})).await;
    let tenant = browser(&gw, &key).await;
    assert_eq!(gw.admin("DELETE", &format!("/admin/keys/{id}"), None).await.status.as_u16(), 200);
    // A revocation through this instance forgets its cached lookups at once.
    let r = get(&gw, &tenant, "/ui/inferences").await;
    assert_eq!(r.status.as_u16(), 303, "a revoked key's session has ended");
    assert_eq!(get(&gw, &tenant, "/v1/inferences").await.status.as_u16(), 401);
}

/// Writes an eval run directory as `fungible eval run` leaves it: two models, three items.
fn write_run(dir: &std::path::Path, name: &str, correct_b: usize) {
    let run = dir.join(name);
    std::fs::create_dir_all(&run).expect("run dir");
    let meta = json!({
        "version": 1, "run_id": name, "started_at": "2026-12-07T10:00:00Z", "finished_at": "2026-12-07T10:01:00Z",
        "dataset": "items.jsonl", "dataset_name": "items", "dataset_sha256": null, "items": 3,
        "models": ["openai/a", "openai/b"], "scorers": ["exact"], "concurrency": 1, "max_cost_usd": null, "stopped_by_budget": false
    });
    std::fs::write(run.join("run.json"), meta.to_string()).expect("run.json");
    let mut lines = String::new();
    for i in 0..3 {
        for (model, passed) in [("openai/a", true), ("openai/b", i < correct_b)] {
            let score = if passed { 1.0 } else { 0.0 };
            lines.push_str(&json!({
                "item_id": format!("item-{i}"), "model": model, "target": model, "input": format!("question {i}"),
                "reference": "yes", "output": if passed { "yes" } else { "no" }, "error": null,
                "scores": {"exact": score}, "passed": passed, "details": {}, "latency_ms": 100, "ttft_ms": 50,
                "input_tokens": 10, "output_tokens": 2, "cost_usd": 0.001
            }).to_string());
            lines.push('\n');
        }
    }
    std::fs::write(run.join("results.jsonl"), lines).expect("results.jsonl");
}

#[tokio::test]
async fn the_evals_pages_show_each_runs_report_and_a_comparison() {
    let gw = gateway("", Limits::memory()).await;
    write_run(&gw.eval_runs, "monday", 1);
    write_run(&gw.eval_runs, "tuesday", 3);
    let admin = browser(&gw, ADMIN).await;
    let list = get(&gw, &admin, "/ui/evals").await;
    assert_eq!(list.status.as_u16(), 200, "{}", list.text());
    assert!(list.text().contains("monday") && list.text().contains("tuesday"));
    let page = get(&gw, &admin, "/ui/evals/monday").await;
    assert_eq!(page.status.as_u16(), 200);
    assert!(page.text().contains(r#"<iframe class="report" src="&#x2f;ui&#x2f;evals&#x2f;monday&#x2f;report""#), "{}", page.text());
    let report = get(&gw, &admin, "/ui/evals/monday/report").await;
    assert_eq!(report.status.as_u16(), 200, "{}", report.text());
    assert!(report.text().contains("openai/b"), "the report names the models");
    let csp = report.headers["content-security-policy"].to_str().unwrap_or_default();
    assert!(csp.contains("frame-ancestors 'self'") && !csp.contains("script-src"), "{csp}");
    let compare = get(&gw, &admin, "/ui/evals/compare/report?a=monday&b=tuesday").await;
    assert_eq!(compare.status.as_u16(), 200, "{}", compare.text());
    // Only runs the listing has are read: no path reaches outside the folder.
    for bad in ["/ui/evals/..%2F..%2Fetc/report", "/ui/evals/compare/report?a=monday&b=..%2Fmonday", "/ui/evals/nope/report"] {
        assert_eq!(get(&gw, &admin, bad).await.status.as_u16(), 404, "{bad}");
    }
    // A key without read:all sees no eval.
    let (_, key) = gw.key(json!({"name": "app"})).await;
    let tenant = browser(&gw, &key).await;
    assert_eq!(get(&gw, &tenant, "/ui/evals").await.status.as_u16(), 403);
    assert_eq!(get(&gw, &tenant, "/ui/evals/monday/report").await.status.as_u16(), 403);
}

#[tokio::test]
async fn with_auth_off_the_pages_are_open_on_loopback_only_and_the_admin_pages_still_need_the_admin_key() {
    let h = crate::Harness::new(crate::OPENAI).await;
    let app = fungible_server::app(h.state.clone().with_ui(fungible_server::ui::Ui::new(fungible_server::ui::Sessions::default())));
    let send = |host: &'static str, path: &'static str| {
        let app = app.clone();
        async move {
            use tower::ServiceExt;
            app.oneshot(Request::get(path).header("host", host).body(Body::empty()).expect("request")).await.expect("infallible")
        }
    };
    // No store here: the pages say so (503), but they are served to loopback names.
    assert_eq!(send("localhost:4000", "/ui/routes").await.status().as_u16(), 200);
    assert_eq!(send("127.0.0.1:4000", "/ui/inferences").await.status().as_u16(), 503);
    // A rebinding page's name is refused before the UI is reached.
    assert_eq!(send("evil.example:4000", "/ui/routes").await.status().as_u16(), 403);
    assert_eq!(send("evil.example", "/ui/login").await.status().as_u16(), 403);
    // The keys page needs a sign-in with the admin key even with auth off.
    let keys = send("localhost", "/ui/keys").await;
    assert_eq!(keys.status().as_u16(), 303);
    assert_eq!(keys.headers()["location"], "/ui/login?next=%2Fui%2Fkeys");
}

#[tokio::test]
async fn an_admin_session_ends_with_the_admin_key_and_changes_from_another_site_are_refused() {
    let gw = gateway("", Limits::memory()).await;
    let admin = browser(&gw, ADMIN).await;
    for (site, status) in [("cross-site", 403), ("same-site", 403), ("same-origin", 201)] {
        let request = Request::post("/admin/keys")
            .header("cookie", &admin.cookie)
            .header("x-fungible-csrf", &admin.csrf)
            .header("sec-fetch-site", site)
            .header("content-type", "application/json")
            .body(Body::from(json!({"name": site}).to_string()))
            .expect("request");
        assert_eq!(gw.send(request).await.status.as_u16(), status, "{site}");
    }
    // Signing in takes JSON from this origin only.
    let untyped = gw.send(Request::post("/ui/login").body(Body::from(json!({"key": ADMIN}).to_string())).expect("request")).await;
    assert_eq!(untyped.status.as_u16(), 415);
    let foreign = gw
        .send(
            Request::post("/ui/login")
                .header("content-type", "application/json")
                .header("sec-fetch-site", "cross-site")
                .body(Body::from(json!({"key": ADMIN}).to_string()))
                .expect("request"),
        )
        .await;
    assert_eq!(foreign.status.as_u16(), 403);
    assert!(foreign.headers.get("set-cookie").is_none());

    // Another gateway with the same UI secret but another admin key (here: none) does not
    // take the admin's session, and clears it.
    let other = gateway("admin_key_env = \"NO_SUCH_ADMIN_KEY\"", Limits::memory()).await;
    let keys = get(&other, &admin, "/ui/keys").await;
    assert_eq!(keys.status.as_u16(), 303, "{}", keys.text());
    assert!(keys.headers["set-cookie"].to_str().unwrap_or_default().contains("Max-Age=0"));
    assert_eq!(get(&other, &admin, "/admin/keys").await.status.as_u16(), 401, "the session has ended there");
    // The same secret and admin key: the session is good on every instance.
    let twin = gateway("", Limits::memory()).await;
    assert_eq!(get(&twin, &admin, "/ui/keys").await.status.as_u16(), 200);
}

#[tokio::test]
async fn only_a_recorded_request_names_its_inference() {
    let gw = gateway("", Limits::memory()).await;
    let (_, key) = gw.key(json!({"name": "app"})).await;
    let answered = gw.chat(&key, "openai/gpt-5").await;
    let id = answered.headers["x-fungible-inference-id"].to_str().expect("id").to_owned();
    gw.recorder.flush().await;
    assert!(gw.store.get(&id).await.expect("get").is_some());
    let bad = gw
        .send(
            Request::post("/v1/chat/completions")
                .header("authorization", format!("Bearer {key}"))
                .header("content-type", "application/json")
                .body(Body::from("{not json"))
                .expect("request"),
        )
        .await;
    assert_eq!(bad.status.as_u16(), 400);
    assert!(bad.headers.get("x-fungible-inference-id").is_none(), "nothing is recorded for a request that does not parse");
}

#[tokio::test]
async fn an_ended_session_is_cleared_and_does_not_stand_in_the_way_of_signing_in() {
    let gw = gateway("", Limits::memory()).await;
    let (id, key) = gw.key(json!({"name": "short-lived"})).await;
    let tenant = browser(&gw, &key).await;
    assert_eq!(gw.admin("DELETE", &format!("/admin/keys/{id}"), None).await.status.as_u16(), 200);
    // A page visit clears both cookie names.
    let page = get(&gw, &tenant, "/ui/inferences").await;
    let cleared: Vec<&str> = page.headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).collect();
    assert!(cleared.iter().any(|c| c.starts_with("fungible_session=;")) && cleared.iter().any(|c| c.starts_with("__Host-fungible_session=;")), "{cleared:?}");
    // Signing in again with the old cookie still in the browser works, and is not undone.
    let again = gw
        .send(
            Request::post("/ui/login")
                .header("cookie", &tenant.cookie)
                .header("content-type", "application/json")
                .body(Body::from(json!({"key": ADMIN}).to_string()))
                .expect("request"),
        )
        .await;
    assert_eq!(again.status.as_u16(), 200, "{}", again.text());
    let set: Vec<&str> = again.headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).collect();
    assert_eq!(set.len(), 1, "{set:?}");
    assert!(!set[0].contains("Max-Age=0"));
}
