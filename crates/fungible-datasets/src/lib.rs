//! Datasets for post-training and evals: recorded traffic and its feedback turned into rows
//! (a conversation and the answer to learn), curated, versioned in the store, and exported to
//! each provider's fine-tuning format.
//!
//! A value flows one way: the store's inferences and feedback → [`select`] (filters; each
//! row's answer from the best source: a demonstration, else the recorded answer) →
//! [`curate`] (PII scrub, length limits, exact and near duplicates, preference pairs, the
//! split, statistics) → a stored version ([`versions`]) → [`export`] (a provider's JSONL,
//! checked against its limits) or an eval run.
//!
//! - [`Example`] is a row; its JSON (canonical messages) is what the store keeps.
//! - [`fewshot`] retrieves a version's nearest rows as few-shot turns of a request (a route's
//!   `examples`): adaptation with no training, and the baseline tuning is compared with.
//! - [`versions`] is the only code that reads and writes datasets in the store; a version a
//!   job or an eval used never changes, and edits go to a copy.

pub mod curate;
mod example;
pub mod export;
pub mod fewshot;
pub mod pii;
pub mod select;
pub mod versions;

pub use curate::{Curation, Embed, Report, Stats};
pub use example::{Example, Source, Split, assistant, message_text, stable_id};
pub use export::{ExportError, Exported, Format, row_json};
pub use fewshot::{Examples, FewShotIndex, Retrieved};
pub use select::{FeedbackFilter, Selection};
pub use versions::{DatasetError, Spec, VersionInfo, VersionReport};
