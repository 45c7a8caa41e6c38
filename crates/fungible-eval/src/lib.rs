//! `fungible eval`: measure, on the user's own data, which models are interchangeable.
//!
//! A run sends every dataset item to every model through the same gateway routing as live
//! traffic, scores each answer, and writes what happened as it happens into the run
//! directory (`results.jsonl`, see [`results`]), so an interrupted run resumes where it
//! stopped. The report (statistics, plots, recommendation) is computed from that directory
//! alone, so it can be regenerated or compared with another run at any time.
//!
//! - [`results`]: the run directory's files, the interface between runner and report.
//! - [`report`]: `report.json`, the self-contained `report.html`, the terminal summary, and
//!   the comparison of two runs.
//! - [`stats`]: confidence intervals, paired tests, non-inferiority, the Pareto frontier.
//!
//! The runner (datasets, scorers, the `fungible eval` command) has not landed yet.

pub mod report;
pub mod results;
pub mod stats;
