//! `fungible eval`: measure, on the user's own data, which models are interchangeable.
//!
//! A run sends every dataset item to every model through the same gateway routing as live
//! traffic, scores each answer, and writes what happened as it happens into the run
//! directory (`results.jsonl`, see [`results`]), so an interrupted run resumes where it
//! stopped. The report (statistics, plots, recommendation) is computed from that directory
//! alone, so it can be regenerated or compared with another run at any time.
//!
//! - [`dataset`]: JSONL datasets (ours, GSM8K, HumanEval); [`traces`]: a dataset made of
//!   recorded inferences.
//! - [`backend`]: what the runner asks for answers, the in-process gateway in production.
//! - [`scorers`]: exact, normalised, contains, regex, numeric, JSON (schema), embedding
//!   similarity, sandboxed code, LLM judge (rubric and pairwise).
//! - [`runner`]: every item to every model, concurrently, appended to the run directory.
//! - [`results`]: the run directory's files, the interface between runner and report.
//! - [`report`]: `report.json`, the self-contained `report.html`, the terminal summary, and
//!   the comparison of two runs.
//! - [`stats`]: confidence intervals, paired tests, non-inferiority, the Pareto frontier.
//!
//! The `fungible eval run|report|compare` command is in the `fungible` binary.

pub mod backend;
pub mod dataset;
pub mod report;
pub mod results;
pub mod runner;
pub mod scorers;
pub mod stats;
pub mod traces;

/// `s` cut to its first `max` characters, with `…` when anything was cut: for the short
/// renderings of inputs, answers and scorer details in results and reports.
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
