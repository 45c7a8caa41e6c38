//! `GET /v1/routes`: the live state of every configured route, from
//! `Gateway::route_status`: each target's circuit breaker, requests in flight, moving
//! average of time to first token, and its A/B and attempt counts; and each shadow
//! candidate's tallies (`crate::shadow`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use crate::AppState;

#[derive(Serialize)]
struct List {
    object: &'static str,
    data: Vec<Route>,
}

#[derive(Serialize)]
pub(crate) struct Route {
    route: String,
    strategy: &'static str,
    targets: Vec<Target>,
    /// The route's shadow candidates and how they compare (since the process started).
    shadows: Vec<crate::shadow::ShadowStatus>,
    /// A learned route's router (version, kind, threshold) or an adaptive test's state
    /// (each variant's rated answers, mean, probability of being best and share; the
    /// winner once it stopped); `null` for other routes, and until one is read.
    decider: Option<serde_json::Value>,
}

#[derive(Serialize)]
pub(crate) struct Target {
    /// The variant name.
    name: String,
    /// `PROVIDER/MODEL`.
    target: String,
    /// The `weighted` strategy's weight.
    weight: u32,
    /// A promoted tuned model's percent of the route's first picks; `null` for configured
    /// targets.
    share_percent: Option<u32>,
    /// `closed`, `open` or `half_open`.
    breaker: &'static str,
    /// Seconds the upstream still asked (`Retry-After`) to be left alone; `null` when it did
    /// not (requests skip it meanwhile).
    retry_after_s: Option<f64>,
    in_flight: u64,
    /// Milliseconds; `null` until a call was measured.
    ewma_ttft_ms: Option<f64>,
    /// Requests whose first pick this target was (the A/B split).
    first_picks: u64,
    attempts: u64,
    failures: u64,
}

/// Every route's state now, in configuration order: what `GET /v1/routes` and the UI's
/// routes page show.
pub(crate) fn snapshot(state: &AppState) -> Vec<Route> {
    let mut data: Vec<Route> = Vec::new();
    for t in state.gateway.route_status() {
        let target = Target {
            name: t.name,
            target: t.target.to_string(),
            weight: t.weight,
            share_percent: t.share,
            breaker: t.breaker.as_str(),
            retry_after_s: t.held_off.map(|d| d.as_secs_f64()),
            in_flight: t.in_flight,
            ewma_ttft_ms: t.ewma_ttft.map(|d| d.as_secs_f64() * 1000.0),
            first_picks: t.first_picks,
            attempts: t.attempts,
            failures: t.failures,
        };
        match data.last_mut() {
            Some(route) if route.route == t.route => route.targets.push(target),
            _ => data.push(Route {
                shadows: state.shadows.status(&t.route),
                decider: state.gateway.decider_status(&t.route),
                route: t.route,
                strategy: t.strategy.as_str(),
                targets: vec![target],
            }),
        }
    }
    data
}

pub async fn list(State(state): State<AppState>) -> Response {
    let data = snapshot(&state);
    crate::json_response(StatusCode::OK, serde_json::to_vec(&List { object: "list", data }).unwrap_or_default())
}
