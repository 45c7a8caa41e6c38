//! `fungible bench --router`: the learned router on a real task. From an eval run where two
//! models answered the same items (`--eval-run`, `--models CHEAP,STRONG`), each kind of router
//! is trained on 60% of the items, calibrated on 20% and measured on the last 20% it never
//! saw, with the static embedding the server routes with and with the full MiniLM sentence
//! embedding beside it; reports APGR, the quality and cost at the calibrated threshold, the
//! share of requests the cheaper model serves at 95% of the stronger's quality (and what
//! random mixing manages), and the router's own time per request. Writes the cost–quality
//! curves as an SVG beside the run.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use fungible_local::{DEFAULT_EMBEDDING_MODEL, LocalConfig, LocalEngine};
use fungible_router::{Kind, Point, Report, Router, Sample, Shape, TrainOptions};
use fungible_server::learned::{TextEmbed, features};

use super::BenchArgs;
use crate::route::{Labelled, Spend, eval_labels};

pub async fn router(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let dir = args.eval_run.clone().context("--router needs --eval-run DIR")?;
    anyhow::ensure!(args.models.len() == 2, "--router needs --models CHEAP,STRONG: the two models of the eval run to route between");
    let models_dir = std::env::var_os("FUNGIBLE_MODELS_DIR").map_or_else(|| "models".into(), std::path::PathBuf::from);
    let mut config = LocalConfig::discover(&models_dir);
    config.chat_models.clear();
    let engine = LocalEngine::new(&config);
    let embed: Arc<dyn TextEmbed> = engine.static_embedding(DEFAULT_EMBEDDING_MODEL).await.map_err(|e| anyhow::anyhow!(e.message))?;

    let mut labelled: BTreeMap<String, Labelled> = BTreeMap::new();
    let mut spend: BTreeMap<String, Spend> = args.models.iter().map(|m| (m.clone(), Spend::default())).collect();
    let used = eval_labels(&dir, &args.models, None, None, true, &mut labelled, &mut spend).await?;
    // Only items both models answered: the comparison is paired.
    labelled.retain(|_, l| args.models.iter().all(|m| l.labels.contains_key(m)));
    anyhow::ensure!(!labelled.is_empty(), "no item of {} was answered by both {}", dir.display(), args.models.join(" and "));
    // Cost: each model's mean time per answer in the run (compute time, for local models).
    let costs: Vec<f64> = args.models.iter().map(|m| spend[m].ms / spend[m].answers.max(1) as f64).collect();
    println!(
        "eval run {}: {used} results, {} items answered by both; cost = mean ms per answer: {}",
        dir.display(),
        labelled.len(),
        args.models.iter().zip(&costs).map(|(m, c)| format!("{m} {c:.0} ms")).collect::<Vec<_>>().join(", ")
    );

    let items: Vec<&Labelled> = labelled.values().collect();
    let texts: Vec<String> = items.iter().map(|l| fungible_router::request_text(&l.messages)).collect();
    let shapes: Vec<Shape> = items.iter().map(|l| Shape::of(&l.messages, l.tools)).collect();
    let statics: Vec<Vec<f32>> = items
        .iter()
        .map(|l| features(&l.messages, l.tools, embed.as_ref()).map(|(e, _)| e))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let contextual = engine
        .embed(DEFAULT_EMBEDDING_MODEL, texts.iter().map(|t| if t.is_empty() { " ".to_owned() } else { t.clone() }).collect())
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?
        .vectors;
    let contextual_ms = started.elapsed().as_secs_f64() * 1000.0 / items.len() as f64;
    let samples = |embeddings: &[Vec<f32>]| -> Vec<Sample> {
        items
            .iter()
            .zip(embeddings)
            .zip(&shapes)
            .map(|((l, e), s)| Sample { key: l.key.clone(), embedding: e.clone(), shape: *s, labels: l.labels.clone() })
            .collect()
    };
    let options = TrainOptions { min_labels: 20, min_held_out: 20, cost_unit: "ms".into(), ..TrainOptions::default() };
    let mut runs: Vec<(&str, Router, Report)> = Vec::new();
    for (name, embeddings) in [("static MiniLM tokens", &statics), ("MiniLM sentence", &contextual)] {
        let (router, report) = fungible_router::train(&args.models, &costs, &samples(embeddings), &options).map_err(|e| anyhow::anyhow!("{e}"))?;
        runs.push((name, router, report));
    }
    let first = &runs[0].2;
    println!(
        "split: {} train / {} validation / {} test items; on the test items alone: {}",
        first.train,
        first.validation,
        first.test,
        first.test_quality.iter().map(|(m, q)| format!("{m} {:.1}%", q * 100.0)).collect::<Vec<_>>().join(", ")
    );
    println!();
    println!("| embedding | router | APGR (test) | quality at threshold | ms per request | to {} | {} share at 95% of {} |", args.models[0], args.models[0], args.models[1]);
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (name, _, report) in &runs {
        for k in &report.kinds {
            println!(
                "| {name} | {}{} | {} | {:.1}% | {:.0} | {:.1}% | {} |",
                k.kind.as_str(),
                k.k.map_or(String::new(), |k| format!(" (k = {k})")),
                k.test_apgr.map_or("-".into(), |a| format!("{a:.3}")),
                k.test.quality * 100.0,
                k.test.cost,
                k.test.cheapest_share * 100.0,
                k.cheapest_share_at_95.map_or("-".into(), |s| format!("{:.1}%", s * 100.0)),
            );
        }
    }
    println!(
        "| – | random mixing | 0.500 | – | – | – | {} |",
        first.random_cheapest_share_at_95.map_or("-".into(), |s| format!("{:.1}%", s * 100.0))
    );

    // The router's own time per request: the static embedding and the prediction, as the
    // server runs them, over the test items; and a nearest-neighbour router at its largest.
    println!();
    println!("| router (static embedding) | points | µs per request p50 | p99 |");
    println!("|---|---:|---:|---:|");
    let static_samples = samples(&statics);
    for kind in Kind::ALL {
        let trained = fungible_router::train(&args.models, &costs, &static_samples, &TrainOptions { kinds: vec![kind], ..options.clone() })
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .0;
        let (p50, p99) = time_decisions(&trained, items.as_slice(), embed.as_ref())?;
        println!("| {} | {} | {p50:.0} | {p99:.0} |", kind.as_str(), trained.points().map_or("–".into(), |n| n.to_string()));
    }
    // The most points a router keeps (8,000; its training split is 60% of the samples): the
    // items repeated under other keys.
    let big: Vec<Sample> = (0..14_000 / static_samples.len().max(1) + 1)
        .flat_map(|round| static_samples.iter().map(move |s| Sample { key: format!("{round}:{}", s.key), ..s.clone() }))
        .take(14_000)
        .collect();
    let knn = fungible_router::train(&args.models, &costs, &big, &TrainOptions { kinds: vec![Kind::Knn], ..options.clone() })
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .0;
    let (p50, p99) = time_decisions(&knn, items.as_slice(), embed.as_ref())?;
    println!("| knn | {} | {p50:.0} | {p99:.0} |", knn.points().unwrap_or(0));
    println!("(the MiniLM sentence embedding alone took {contextual_ms:.1} ms per request, batched)");

    let svg = dir.join("router-curves.svg");
    std::fs::write(&svg, plot(&runs, &args.models)).with_context(|| format!("writing {}", svg.display()))?;
    println!("\ncost–quality curves on the test items: {}", svg.display());
    Ok(ExitCode::SUCCESS)
}

/// p50 and p99 in microseconds of embedding and deciding each item, 20 times over.
fn time_decisions(router: &Router, items: &[&Labelled], embed: &dyn TextEmbed) -> anyhow::Result<(f64, f64)> {
    let mut times = Vec::with_capacity(items.len() * 20);
    for _ in 0..20 {
        for l in items {
            let started = Instant::now();
            let (embedding, shape) = features(&l.messages, l.tools, embed).map_err(anyhow::Error::msg)?;
            std::hint::black_box(router.decide(&embedding, shape));
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    times.sort_by(f64::total_cmp);
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    Ok((at(0.5), at(0.99)))
}

/// The test split's cost–quality curves of each router, with random mixing as the diagonal.
fn plot(runs: &[(&str, Router, Report)], models: &[String]) -> String {
    let (w, h, pad) = (640.0, 420.0, 56.0);
    let curves: Vec<(String, &[Point])> =
        runs.iter().flat_map(|(name, _, r)| r.kinds.iter().map(move |k| (format!("{} · {name}", k.kind.as_str()), k.curve.as_slice()))).collect();
    // Random mixing: the straight line from the cheap model alone to the strong one alone.
    let report = &runs[0].2;
    let alone = |m: &String| (report.costs.get(m).copied().unwrap_or(0.0), report.test_quality.get(m).copied().unwrap_or(0.0));
    let (cheap, strong) = (alone(&models[0]), alone(&models[1]));
    let all = curves.iter().flat_map(|(_, c)| c.iter().map(|p| (p.cost, p.quality))).chain([cheap, strong]);
    let (c0, c1) = all.clone().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (q0, q1) = all.fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let x = |c: f64| pad + (c - c0) / (c1 - c0).max(1e-9) * (w - 2.0 * pad);
    let y = |q: f64| h - pad - (q - q0) / (q1 - q0).max(1e-9) * (h - 2.0 * pad);
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{pad}\" y=\"20\" font-size=\"14\">Learned router on held-out items: {} vs {}</text>\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"#333\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">mean ms per request ({c0:.0} – {c1:.0})</text>\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">quality ({:.1}% – {:.1}%)</text>",
        escape(&models[0]),
        escape(&models[1]),
        h - pad,
        w - pad,
        h - pad,
        h - pad,
        w / 2.0,
        h - 16.0,
        h / 2.0,
        h / 2.0,
        q0 * 100.0,
        q1 * 100.0
    );
    out.push_str(&format!(
        "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"5,4\"/>",
        x(cheap.0),
        y(cheap.1),
        x(strong.0),
        y(strong.1)
    ));
    for (i, (name, curve)) in curves.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let points: Vec<String> = curve.iter().map(|p| format!("{:.1},{:.1}", x(p.cost), y(p.quality))).collect();
        out.push_str(&format!("<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>", points.join(" ")));
        out.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>",
            w - pad - 200.0,
            h - pad - 20.0 - 16.0 * (curves.len() - i) as f64,
            escape(name)
        ));
    }
    out.push_str(&format!("<text x=\"{}\" y=\"{}\" fill=\"#999\">random mixing</text></svg>\n", w - pad - 200.0, h - pad - 20.0));
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
