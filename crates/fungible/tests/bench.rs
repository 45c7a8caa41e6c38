//! `fungible bench --soak` as a release gate would run it, shortened to a few seconds: it
//! must pass on a healthy gateway, report the gateway's memory at the start, middle and end,
//! and find every answer in the store.

mod common;

use common::free_port;

use std::process::Command;

/// The number after `prefix` on the line that starts with it.
fn number_after(text: &str, prefix: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix:?} in:\n{text}"));
    line[prefix.len()..].split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no number in {line:?}"))
}

#[test]
fn a_short_soak_passes_reports_memory_and_finds_every_answer_recorded() {
    let output = Command::new(env!("CARGO_BIN_EXE_fungible"))
        .args(["bench", "--soak", "--duration", "3", "--rate", "50", "--workers", "2", "--port", &free_port().to_string()])
        .env("FUNGIBLE_LOG", "warn")
        .output()
        .expect("fungible bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}\n{stdout}\n{stderr}", output.status);
    assert!(stderr.contains("fungible bench --soak: passed"), "{stderr}");
    for line in ["rss start: ", "rss middle: ", "rss end: ", "rss peak: "] {
        assert!(number_after(&stdout, line) > 0.0, "{line} in:\n{stdout}");
    }
    assert!(stdout.contains("rss flat: yes"), "{stdout}");
    assert_eq!(number_after(&stdout, "errors: "), 0.0, "{stdout}");
    // 1 s of warm-up and 3 s measured at 50/s, every one answered and recorded.
    let recorded = number_after(&stdout, "recorded: ");
    let answered: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("recorded: ")?.split(" of ").nth(1)?.split_whitespace().next()?.parse().ok())
        .expect("answered count");
    assert_eq!(answered, 200.0, "{stdout}");
    assert_eq!(recorded, answered, "{stdout}");
}
