//! Fine-tuning jobs on the providers' APIs, from a stored dataset version to a model that
//! serves the moment it is ready.
//!
//! - [`Tuner::plan`] checks a launch and works out its files and cost without sending
//!   anything (`--dry-run`); [`Tuner::launch`] uploads the files, creates the job, keeps it in
//!   the store and marks the dataset version used (it never changes again).
//! - [`Tuner::poll_due`] polls the unfinished jobs, each held by one instance at a time (a
//!   lease in the store), so polling resumes after a restart and several instances do not
//!   poll one job twice; [`Tuner::poll_job`] polls one job alone.
//! - [`Tuner::overlays`] turns the succeeded jobs into routes the gateway serves at once
//!   (`Gateway::set_overlays`): each model under its alias, and a share of a configured route
//!   after [`Tuner::promote`].
//! - [`Tuner::evaluate_finished`] runs the eval a job asked for once it succeeded (the tuned
//!   model against its base model, `eval.rs`) and keeps the report with the job.
//! - `client.rs` is the only code that knows the providers' fine-tuning APIs (OpenAI,
//!   Mistral, Together); `prices.rs` the training prices.

pub mod client;
pub mod eval;
mod job;
#[cfg(feature = "local")]
mod local;
pub mod prices;
mod tuner;

pub use client::{Api, Client, ClientError};
pub use eval::{EvalResult, EvalSpec, EvalState};
pub use job::{Event, Job, Method, Promotion, Status};
pub use tuner::{DEFAULT_LEASE_MS, LaunchRequest, Plan, TuneError, Tuner};

/// The provider of local jobs: LoRA adapters trained in process on `[local]` chat models
/// (`local.rs`), served as `local/BASE+JOB_ID`.
pub const LOCAL: &str = "local";
