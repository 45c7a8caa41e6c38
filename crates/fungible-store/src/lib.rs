//! The inference store: every inference the gateway answered (or failed), its attempts, its
//! cost and the feedback on it, in an embedded SQLite file by default or in PostgreSQL when
//! several gateway instances share one store.
//!
//! - [`Store`] is the only code that knows SQL: it opens the database, applies the versioned
//!   migrations ([`migrations`]), writes batches and reads records, feedback and stats back.
//!   The same SQL runs on both backends (through sqlx's `any` driver): text ids, integer
//!   milliseconds, JSON as text.
//! - [`Recorder`] takes records off the request path: `record` is a `try_send` into a bounded
//!   queue (a full queue drops the record and counts it), and one writer task batches them
//!   into a transaction each. A store that is slow or down only fills the queue; `shutdown`
//!   drains it.
//! - [`Bodies::capped`] keeps a record within `[store] max_record_bytes`: long texts cut
//!   and marked, so one client's huge requests cannot fill the queue for everyone.
//! - Datasets (`datasets.rs`): versions of rows for fine-tuning and evals, immutable once a
//!   job or an eval used them; fine-tuning jobs (`tune_jobs.rs`), leased to one polling
//!   instance at a time.
//! - [`PriceTable`] turns usage into cost; an unknown price is an unknown cost (`None`),
//!   never zero.

mod cap;
mod config;
mod datasets;
mod inferences;
mod keys;
pub mod migrations;
mod prices;
mod record;
mod rollups;
mod routers;
mod recorder;
mod responses;
mod stats;
mod store;
mod tune_jobs;
#[doc(hidden)]
pub mod testing;

pub use cap::{DEFAULT_MAX_RECORD_BYTES, Truncation};
pub use config::{StoreConfig, StoreConfigError, sqlite_url};
pub use datasets::{DatasetRow, DatasetStoreError, DatasetVersion};
pub use keys::{BudgetPeriod, KeyBudget, KeyRecord, Scope};
pub use prices::{PRICES_AS_OF, Price, PriceTable};
pub use record::{
    AttemptRecord, AttemptStatus, Bodies, EncodedBodies, EncodedRecord, Feedback, FeedbackTarget, InferenceRecord, RawExchange, new_id,
    now_ms,
};
pub use responses::StoredResponseRow;
pub use rollups::{RollUp, SETTLE_MS};
pub use routers::{FeedbackLabel, RouterRow, ShadowLabel, VariantFeedback};
pub use recorder::{BatchSink, DEFAULT_QUEUE_BYTES, Recorder, RecorderCounters, RecorderOptions, WriterPriority};
pub use inferences::InferenceFilter;
pub use stats::{GroupBy, ShadowStatsRow, StatsQuery, StatsRow};
pub use store::{Store, StoreError};
pub use tune_jobs::{TERMINAL_STATUSES, TuneJobRow};
