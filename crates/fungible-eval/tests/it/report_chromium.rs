//! The HTML report renders in headless Chromium with its plots: the rendered DOM has both
//! SVG plots with a point per priced model, and a screenshot shows the plot colours.
//!
//! Needs `chromium` (or `$FUNGIBLE_CHROMIUM`). With `FUNGIBLE_TEST_CHROMIUM=required` (CI
//! sets it) a missing browser fails the test; otherwise the test prints a notice and passes.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fungible_eval::report;
use fungible_eval::results::{ItemResult, RunMeta};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Four models on 80 items, as a real run looks: different accuracies, prices (one free
/// local model), latencies, and one model that fails now and then.
fn realistic_run(dir: &Path) {
    let models = [
        ("openai/gpt-4.1", 0.88, 0.0120, 900),
        ("anthropic/claude-haiku-4-5", 0.85, 0.0040, 700),
        ("groq/llama-3.3-70b", 0.80, 0.0009, 300),
        ("local/qwen3-4b", 0.62, 0.0, 1500),
    ];
    let meta = RunMeta {
        version: 1,
        run_id: "20260102-030405-gsm8k".into(),
        started_at: "2026-01-02T03:04:05Z".into(),
        finished_at: Some("2026-01-02T03:19:41Z".into()),
        dataset: "datasets/gsm8k-test.jsonl".into(),
        dataset_name: "gsm8k-test".into(),
        dataset_sha256: Some("5f".repeat(32)),
        items: 80,
        models: models.iter().map(|m| m.0.to_owned()).collect(),
        scorers: vec!["numeric".into()],
        concurrency: 8,
        max_cost_usd: Some(5.0),
        stopped_by_budget: false,
    };
    let mut lines = String::new();
    for i in 0..80u64 {
        for (k, (model, acc, cost, latency)) in models.iter().enumerate() {
            // A fixed pseudo-random draw per (item, model), so verdicts overlap partly.
            let draw = ((i * 37 + k as u64 * 11) % 100) as f64 / 100.0;
            let failed = k == 2 && i % 13 == 5;
            let passed = draw < *acc;
            let r = ItemResult {
                item_id: format!("gsm8k-{i}"),
                model: (*model).to_owned(),
                target: Some((*model).to_owned()),
                input: format!(
                    "Natalia sold clips to {i} of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?"
                ),
                reference: Some(format!("{}", i + i / 2)),
                output: (!failed).then(|| {
                    format!(
                        "Natalia sold {i} clips in April and {} in May.\n#### {}",
                        i / 2,
                        if passed { i + i / 2 } else { i }
                    )
                }),
                error: failed.then(|| "rate_limited: 429 Too Many Requests".to_owned()),
                scores: if failed {
                    BTreeMap::new()
                } else {
                    BTreeMap::from([("numeric".to_owned(), if passed { 1.0 } else { 0.0 })])
                },
                passed: (!failed).then_some(passed),
                details: BTreeMap::new(),
                latency_ms: latency + (i * 17 % 400),
                ttft_ms: Some(latency / 3),
                input_tokens: Some(120),
                output_tokens: Some(60 + i % 40),
                cost_usd: Some(*cost),
            };
            lines.push_str(&serde_json::to_string(&r).expect("json"));
            lines.push('\n');
        }
    }
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(
        dir.join("run.json"),
        serde_json::to_vec(&meta).expect("json"),
    )
    .expect("run.json");
    std::fs::write(dir.join("results.jsonl"), lines).expect("results");
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FUNGIBLE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ]
    .iter()
    .find_map(|name| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Runs Chromium headless with a deadline (a hung browser fails the test, never hangs it).
fn run_chromium(bin: &Path, profile: &Path, args: &[String]) -> Output {
    let child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(out) => out.expect("chromium output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("chromium did not finish within {TIMEOUT:?}");
        }
    }
}

#[test]
fn report_renders_with_its_plots_in_headless_chromium() {
    let Some(bin) = chromium() else {
        if std::env::var("FUNGIBLE_TEST_CHROMIUM").as_deref() == Ok("required") {
            panic!(
                "chromium not found and FUNGIBLE_TEST_CHROMIUM=required (apt-get install chromium)"
            );
        }
        eprintln!(
            "skipping: chromium not found (set FUNGIBLE_TEST_CHROMIUM=required to fail instead)"
        );
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    realistic_run(&run);
    let summary = report::write_report(&run).expect("report");
    let url = format!("file://{}", summary.html_path.display());

    // The DOM after rendering: both plots, a point per priced model, a bar per model.
    let dom = run_chromium(
        &bin,
        &tmp.path().join("profile-dom"),
        &["--dump-dom".into(), url.clone()],
    );
    let dom_text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    assert!(
        dom_text.contains("id=\"plot-cost-accuracy\""),
        "no scatter in the DOM"
    );
    assert!(
        dom_text.contains("id=\"plot-accuracy-latency\""),
        "no bar chart in the DOM"
    );
    assert_eq!(dom_text.matches("<circle class=\"point\"").count(), 4);
    assert_eq!(dom_text.matches("<rect class=\"bar\"").count(), 8);
    assert!(dom_text.contains("<polyline"), "no Pareto frontier");

    // The screenshot: the page is drawn and the plots' colours are on it.
    let png_path = tmp.path().join("report.png");
    let shot = run_chromium(
        &bin,
        &tmp.path().join("profile-shot"),
        &[
            format!("--screenshot={}", png_path.display()),
            "--window-size=1280,2000".into(),
            url,
        ],
    );
    assert!(
        shot.status.success(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    if let Some(keep) = std::env::var_os("FUNGIBLE_TEST_SCREENSHOT_OUT") {
        std::fs::copy(&png_path, keep).expect("keep screenshot");
    }
    let file = std::fs::File::open(&png_path).expect("screenshot written");
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!((info.width, info.height), (1280, 2000));
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();

    let distinct: HashSet<[u8; 3]> = pixels.iter().copied().collect();
    assert!(
        distinct.len() > 50,
        "only {} colours: a blank page?",
        distinct.len()
    );
    // Each model's colour (Tableau 10) covers a bar-sized area, not just a table swatch.
    for (name, rgb) in [
        ("blue", [0x4e, 0x79, 0xa7]),
        ("orange", [0xf2, 0x8e, 0x2b]),
        ("red", [0xe1, 0x57, 0x59]),
        ("teal", [0x76, 0xb7, 0xb2]),
    ] {
        let n = pixels
            .iter()
            .filter(|p| p.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 6))
            .count();
        assert!(
            n > 800,
            "{name} covers only {n} pixels: the plots did not render"
        );
    }
}
