//! The web UI on a big store: `cargo run --release -p fungible-server --example ui_bench -- [N]`
//! fills a fresh SQLite store with N synthetic inferences (default 1,000,000) over the 30
//! days up to now, feedback on 1% of them, rolls the days up as the gateway does each
//! minute, then asks for every page (and the API call the overview's charts make) 20 times
//! through the whole app in-process and prints the server time per page: the first request,
//! then p50, p95 and max of the rest. Before the pages it warms the overview's stats as
//! `serve` does after each roll-up (`fungible_server::ui::warm`), and times that.
//!
//! `UI_BENCH_SQLITE_PATH=FILE` keeps the store, and reuses it when it exists (no fill).

use std::time::Instant;

use axum::body::Body;
use axum::http::Request;
use fungible_gateway::{ConfigFile, Gateway, GatewayConfig};
use fungible_server::{AppState, app};
use fungible_store::{Feedback, FeedbackTarget, GroupBy, InferenceFilter, StatsQuery, Store, new_id};
use http_body_util::BodyExt;
use tower::ServiceExt;

const RUNS: usize = 20;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.replace('_', "").parse().ok()).unwrap_or(1_000_000);
    let keep = std::env::var_os("UI_BENCH_SQLITE_PATH").map(std::path::PathBuf::from);
    let path = keep.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("fungible-ui-bench-{}.db", new_id())));
    let existed = path.exists();
    let store = Store::open(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("sqlite");
    if existed {
        println!("reusing {}", path.display());
    } else {
        let started = Instant::now();
        let (written, dropped) = fungible_store::testing::fill_synthetic(&store, n, now_ms()).await;
        println!("filled {written} inferences ({dropped} dropped) in {:.1} s", started.elapsed().as_secs_f64());
        // Feedback on every 100th inference, as a reviewed share of traffic.
        let started = Instant::now();
        let mut before = None;
        let mut given = 0;
        loop {
            let page = store
                .list(&InferenceFilter { before: before.clone(), limit: Some(1000), ..InferenceFilter::default() })
                .await
                .expect("list");
            let Some(last) = page.last() else { break };
            before = Some(last.id.clone());
            for r in page.iter().step_by(100) {
                let feedback = Feedback {
                    id: new_id(),
                    time_ms: r.time_ms,
                    target: FeedbackTarget::Inference,
                    target_id: r.id.clone(),
                    boolean: Some(given % 3 != 0),
                    score: None,
                    comment: None,
                    demonstration: None,
                };
                store.insert_feedback(&feedback).await.expect("feedback");
                given += 1;
            }
        }
        println!("feedback on {given} inferences in {:.1} s", started.elapsed().as_secs_f64());
    }
    // As the gateway does each minute (a kept store catches up on the days and hours since).
    let started = Instant::now();
    let done = store.roll_up(now_ms()).await.expect("roll-up");
    println!("rolled up {} days and {} hours in {:.1} s", done.days, done.hours, started.elapsed().as_secs_f64());

    // Where the overview's time goes: each grouping alone.
    let since = Some(now_ms() - 86_400_000);
    for group in [GroupBy::Model, GroupBy::Provider, GroupBy::Route, GroupBy::Key, GroupBy::Tag] {
        let started = Instant::now();
        store.stats_of(&StatsQuery { since_ms: since, ..StatsQuery::new(group) }).await.expect("stats");
        println!("stats_of {group:?}, 24 h: {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);
    }

    // What `serve` does at start and after each roll-up that moved: the first views below
    // then find the roll-up share of the overview's queries cached.
    let started = Instant::now();
    fungible_server::ui::warm(&store).await;
    println!("warmed the overview's stats (as serve does after a roll-up) in {:.1} ms", started.elapsed().as_secs_f64() * 1000.0);

    let toml = "[providers.openai]\nbase_url = \"http://127.0.0.1:9/v1\"\n[models.smart]\ntargets = [{ target = \"openai/gpt-5\" }, { target = \"openai/gpt-5-mini\" }]\n";
    let file = ConfigFile::parse(toml, "bench.toml").expect("config");
    let config = GatewayConfig::resolve(file, &|k| (k == "OPENAI_API_KEY").then(|| "sk-bench".to_owned())).expect("config");
    let gateway = Gateway::new(&config).expect("gateway");
    let recorder = fungible_store::Recorder::start(store.clone(), fungible_store::RecorderOptions::default());
    let state = AppState::new(gateway, config.max_body_bytes)
        .with_recorder(store.clone(), recorder)
        .with_ui(fungible_server::ui::Ui::new(fungible_server::ui::Sessions::default()));
    let router = app(state);

    let mid = store
        .list(&InferenceFilter { since_ms: Some(now_ms() - 15 * 86_400_000), limit: Some(1), ..InferenceFilter::default() })
        .await
        .expect("list")
        .pop()
        .map(|r| r.id)
        .unwrap_or_default();
    let day_ago = now_ms() - 86_400_000;
    // The 7-day view starts at a UTC midnight.
    let week_start = (now_ms().div_euclid(86_400_000) - 6) * 86_400_000;
    let month_start = (now_ms().div_euclid(86_400_000) - 29) * 86_400_000;
    let pages: Vec<(String, String)> = vec![
        ("overview, 24 h".into(), "/ui?range=24h".into()),
        ("overview, 7 days".into(), "/ui?range=7d".into()),
        ("overview, 30 days".into(), "/ui?range=30d".into()),
        ("overview chart API, 24 h".into(), format!("/v1/stats?by=hour&since_ms={day_ago}")),
        ("overview chart API, 7 days".into(), format!("/v1/stats?by=day&since_ms={week_start}")),
        ("chart API, 24 h split by model".into(), format!("/v1/stats?by=hour&split=model&since_ms={day_ago}")),
        ("chart API, 30 days split by key".into(), format!("/v1/stats?by=day&split=key&since_ms={month_start}")),
        ("inferences".into(), "/ui/inferences".into()),
        ("inferences, one model".into(), "/ui/inferences?model=openai%2Fgpt-5".into()),
        ("inferences, errors".into(), "/ui/inferences?status=error".into()),
        ("inferences, with feedback".into(), "/ui/inferences?feedback=yes".into()),
        ("inferences, one tag".into(), "/ui/inferences?tag=team%3Dteam-1".into()),
        ("inferences, one user, 7 days".into(), "/ui/inferences?user=user-7&range=7d".into()),
        ("one inference".into(), format!("/ui/inferences/{mid}")),
        ("routes".into(), "/ui/routes".into()),
        ("playground".into(), "/ui/playground".into()),
        ("datasets".into(), "/ui/datasets".into()),
        ("evals".into(), "/ui/evals".into()),
    ];
    println!("{:<32} {:>9} {:>9} {:>9} {:>9}  (server time, ms: the first request, then p50/p95/max over {RUNS} more)", "page", "first", "p50", "p95", "max");
    for (name, path) in pages {
        let mut times = Vec::with_capacity(RUNS);
        let mut first = 0.0;
        for i in 0..=RUNS {
            let started = Instant::now();
            let response = router
                .clone()
                .oneshot(Request::get(&path).header("host", "localhost").body(Body::empty()).expect("request"))
                .await
                .expect("infallible");
            let status = response.status();
            let body = response.into_body().collect().await.expect("body").to_bytes();
            let took = started.elapsed().as_secs_f64() * 1000.0;
            assert!(status.is_success(), "{path}: {status}: {}", String::from_utf8_lossy(&body));
            // The first warms the page cache and the store's roll-up cache: shown apart.
            if i > 0 {
                times.push(took);
            } else {
                first = took;
            }
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
        println!("{name:<32} {first:>9.1} {:>9.1} {:>9.1} {:>9.1}", at(0.5), at(0.95), times[times.len() - 1]);
    }
    if keep.is_none() {
        let _ = std::fs::remove_file(&path);
    }
}
