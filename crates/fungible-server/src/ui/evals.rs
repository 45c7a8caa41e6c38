//! The evals pages: the runs `fungible eval run` wrote under `[ui] eval_runs_dir`, each with
//! its report (the same HTML report `fungible eval report` writes, computed now, so a run
//! still going shows what it has), and the comparison of two runs (`fungible eval compare`).
//! A run is named by its directory under that folder, and only a name the listing has is
//! read: a request cannot reach another path.

use std::path::{Path as FsPath, PathBuf};

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use fungible_eval::report::ReportOptions;
use fungible_eval::results::RunMeta;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Viewer;
use super::pages::{Need, gate, message, render};
use crate::AppState;

/// The policy of a framed report: its own inline styles and `data:` images, no script, no
/// request anywhere, framed by the UI's pages only.
const REPORT_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'";

#[derive(Serialize)]
struct Run {
    name: String,
    dataset: String,
    models: Vec<String>,
    items: u64,
    started_at: String,
    finished: bool,
}

fn runs_dir(state: &AppState) -> PathBuf {
    state.ui.as_deref().map(|ui| ui.eval_runs.clone()).unwrap_or_default()
}

/// The runs under `dir`, newest first: every directory holding a readable `run.json`.
fn list_runs(dir: &FsPath) -> Vec<Run> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut runs: Vec<Run> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let text = std::fs::read_to_string(entry.path().join("run.json")).ok()?;
            let meta: RunMeta = serde_json::from_str(&text).ok()?;
            Some(Run {
                name,
                dataset: meta.dataset_name,
                models: meta.models,
                items: meta.items,
                started_at: meta.started_at,
                finished: meta.finished_at.is_some(),
            })
        })
        .collect();
    runs.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.name.cmp(&b.name)));
    runs
}

/// The directory of the run named `name`, when the listing has it.
fn run_dir(dir: &FsPath, name: &str) -> Option<PathBuf> {
    list_runs(dir).into_iter().any(|r| r.name == name).then(|| dir.join(name))
}

/// `GET /ui/evals`.
pub(super) async fn list(State(state): State<AppState>, Extension(viewer): Extension<Viewer>, uri: Uri) -> Response {
    if let Some(r) = gate(&state, &viewer, Need::ReadAll, &uri) {
        return r;
    }
    let dir = runs_dir(&state);
    let shown = dir.display().to_string();
    let runs = tokio::task::spawn_blocking(move || list_runs(&dir)).await.unwrap_or_default();
    render(&state, &viewer, StatusCode::OK, "evals.html", minijinja::Value::from_serialize(json!({"runs": runs, "dir": shown})))
}

/// `GET /ui/evals/{run}`: the run's page, framing its report.
pub(super) async fn run_page(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    uri: Uri,
    Path(run): Path<String>,
) -> Response {
    if let Some(r) = gate(&state, &viewer, Need::ReadAll, &uri) {
        return r;
    }
    let dir = runs_dir(&state);
    let name = run.clone();
    let found = tokio::task::spawn_blocking(move || list_runs(&dir).into_iter().find(|r| r.name == name)).await.ok().flatten();
    let Some(found) = found else {
        return message(&state, &viewer, StatusCode::NOT_FOUND, "Not found", &format!("No eval run is named {run:?}."));
    };
    let src = format!("/ui/evals/{}/report", super::view::percent_encode(&run));
    render(&state, &viewer, StatusCode::OK, "eval.html", minijinja::Value::from_serialize(json!({"title": format!("Eval {run}"), "run": found, "src": src})))
}

/// `GET /ui/evals/{run}/report`: the run's HTML report.
pub(super) async fn run_report(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    uri: Uri,
    Path(run): Path<String>,
) -> Response {
    if let Some(r) = gate(&state, &viewer, Need::ReadAll, &uri) {
        return r;
    }
    let dir = runs_dir(&state);
    let html = tokio::task::spawn_blocking(move || {
        let run_dir = run_dir(&dir, &run).ok_or_else(|| format!("no eval run is named {run:?}"))?;
        fungible_eval::report::render_html(&run_dir, &ReportOptions::default()).map_err(|e| e.to_string())
    })
    .await;
    report_response(html.unwrap_or_else(|e| Err(e.to_string())))
}

#[derive(Deserialize, Default)]
pub(super) struct CompareQuery {
    #[serde(default)]
    a: String,
    #[serde(default)]
    b: String,
}

/// `GET /ui/evals/compare?a=RUN&b=RUN`: the comparison's page, framing it.
pub(super) async fn compare_page(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    uri: Uri,
    query: Result<Query<CompareQuery>, QueryRejection>,
) -> Response {
    if let Some(r) = gate(&state, &viewer, Need::ReadAll, &uri) {
        return r;
    }
    let Ok(Query(q)) = query else {
        return message(&state, &viewer, StatusCode::BAD_REQUEST, "Compare", "Pick two runs to compare.");
    };
    let src = format!(
        "/ui/evals/compare/report?{}",
        form_urlencoded::Serializer::new(String::new()).append_pair("a", &q.a).append_pair("b", &q.b).finish()
    );
    render(
        &state,
        &viewer,
        StatusCode::OK,
        "eval.html",
        minijinja::Value::from_serialize(json!({"title": format!("{} against {}", q.a, q.b), "run": null, "src": src})),
    )
}

/// `GET /ui/evals/compare/report?a=RUN&b=RUN`: `fungible eval compare`'s HTML.
pub(super) async fn compare_report(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    uri: Uri,
    query: Result<Query<CompareQuery>, QueryRejection>,
) -> Response {
    if let Some(r) = gate(&state, &viewer, Need::ReadAll, &uri) {
        return r;
    }
    let Ok(Query(q)) = query else {
        return report_response(Err("pick two runs to compare".into()));
    };
    let dir = runs_dir(&state);
    let html = tokio::task::spawn_blocking(move || {
        let a = run_dir(&dir, &q.a).ok_or_else(|| format!("no eval run is named {:?}", q.a))?;
        let b = run_dir(&dir, &q.b).ok_or_else(|| format!("no eval run is named {:?}", q.b))?;
        fungible_eval::report::compare(&a, &b).map(|c| c.to_html()).map_err(|e| e.to_string())
    })
    .await;
    report_response(html.unwrap_or_else(|e| Err(e.to_string())))
}

/// A report (or why there is none), with the policy a framed report gets.
fn report_response(html: Result<String, String>) -> Response {
    let mut response = match html {
        Ok(html) => Html(html).into_response(),
        Err(why) => {
            let escaped = why.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            (StatusCode::NOT_FOUND, Html(format!("<!doctype html><meta charset=utf-8><p>{escaped}</p>"))).into_response()
        }
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(REPORT_CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN"));
    response
}
