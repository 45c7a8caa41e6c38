//! The jobs: planning one (validate, export, estimate the cost: nothing leaves the machine),
//! launching it (upload, create, keep it in the store, mark the dataset version used),
//! polling the unfinished ones (one instance at a time, by lease), cancelling, promoting, and
//! the routes the finished ones are served as.

use std::collections::BTreeMap;

use fungible_datasets::versions;
use fungible_gateway::{RouteOverlay, Target};
use fungible_store::{Store, TuneJobRow};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::client::{Api, Client, ClientError, CreateSpec};
use crate::LOCAL;
use crate::job::{Job, Method, Promotion, Status};
use crate::prices;

#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// The request cannot be run as asked: nothing was uploaded.
    #[error("{0}")]
    BadInput(String),
    #[error("no tuning job {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Provider(#[from] ClientError),
    #[error(transparent)]
    Dataset(#[from] fungible_datasets::DatasetError),
    #[error(transparent)]
    Store(#[from] fungible_store::StoreError),
    #[error("a stored job is not valid JSON: {0}")]
    Corrupt(String),
}

/// What to launch.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    /// A configured provider (`openai`, `together`, `mistral`, ...).
    pub provider: String,
    /// The base model, as the provider names it.
    pub model: String,
    /// `NAME` or `NAME@VERSION` of a stored dataset.
    pub dataset: String,
    #[serde(default = "sft")]
    pub method: Method,
    /// Passed through with the provider's names (`n_epochs`, `learning_rate_multiplier`,
    /// `batch_size`, `beta` for OpenAI; `n_epochs`, `learning_rate`, `lora_r`... for Together;
    /// `epochs`, `training_steps`, `learning_rate` for Mistral).
    #[serde(default)]
    pub hyperparameters: Map<String, Value>,
    #[serde(default)]
    pub suffix: Option<String>,
    /// The name to serve the tuned model under [default: `DATASET@ft-YYYYMMDD`].
    #[serde(default)]
    pub alias: Option<String>,
    /// An eval to run once the job succeeds: the tuned model against the base model.
    #[serde(default)]
    pub eval: Option<crate::eval::EvalSpec>,
}

fn sft() -> Method {
    Method::Sft
}

/// A launch worked out, before anything is uploaded: what `--dry-run` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub request: LaunchRequest,
    pub dataset: String,
    pub dataset_version: i64,
    pub format: &'static str,
    pub train_rows: usize,
    pub validation_rows: usize,
    /// Training tokens of the training rows (the `o200k_base` estimate), before epochs.
    pub dataset_tokens: u64,
    pub epochs: u64,
    /// USD per million training tokens; `None` when unknown.
    pub price_per_million: Option<f64>,
    /// `dataset_tokens × epochs × price`; `None` when the price is unknown.
    pub estimated_cost: Option<f64>,
    pub prices_as_of: &'static str,
    pub alias: String,
    #[serde(skip)]
    train_jsonl: String,
    #[serde(skip)]
    validation_jsonl: Option<String>,
}

impl Plan {
    /// A local job's plan: no files to upload, no price.
    #[cfg(feature = "local")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn local(
        request: LaunchRequest,
        dataset: String,
        dataset_version: i64,
        train_rows: usize,
        validation_rows: usize,
        dataset_tokens: u64,
        epochs: u64,
        alias: String,
    ) -> Plan {
        Plan {
            request,
            dataset,
            dataset_version,
            format: "local",
            train_rows,
            validation_rows,
            dataset_tokens,
            epochs,
            price_per_million: Some(0.0),
            estimated_cost: Some(0.0),
            prices_as_of: prices::TRAINING_PRICES_AS_OF,
            alias,
            train_jsonl: String::new(),
            validation_jsonl: None,
        }
    }

    /// The job this plan launches as `id`, the provider's `provider_job_id`, now.
    pub(crate) fn into_job(self, id: String, provider_job_id: String, status: Status, provider_status: String) -> Job {
        let now = fungible_store::now_ms();
        Job {
            id,
            provider: self.request.provider,
            provider_job_id,
            base_model: self.request.model,
            method: self.request.method,
            training_file: format!("{}@{}", self.dataset, self.dataset_version),
            dataset: self.dataset,
            dataset_version: self.dataset_version,
            validation_file: None,
            hyperparameters: self.request.hyperparameters,
            suffix: self.request.suffix,
            alias: self.alias,
            promotion: None,
            eval: self.request.eval,
            eval_result: None,
            finished_ms: status.is_terminal().then_some(now),
            status,
            provider_status,
            fine_tuned_model: None,
            dataset_tokens: self.dataset_tokens,
            trained_tokens: None,
            estimated_cost: self.estimated_cost,
            cost: None,
            events: Vec::new(),
            error: None,
            created_ms: now,
            updated_ms: now,
        }
    }
}

/// Jobs on the providers of a config, kept in one store.
#[derive(Debug, Clone)]
pub struct Tuner {
    clients: BTreeMap<String, Client>,
    /// Configured providers that cannot be tuned through, with why.
    unsupported: BTreeMap<String, String>,
    /// The configured routes (an alias may not take one's name).
    routes: Vec<String>,
    pub(crate) store: Store,
    /// Local LoRA jobs, trained in this process (`with_local`).
    #[cfg(feature = "local")]
    pub(crate) local: Option<crate::local::Local>,
    /// This instance, as the holder of job leases.
    pub(crate) owner: String,
    pub(crate) lease_ms: i64,
    /// Where the evals of finished jobs write their runs.
    eval_dir: std::path::PathBuf,
}

/// How long a poller holds a job before another instance may take it over.
pub const DEFAULT_LEASE_MS: i64 = 5 * 60_000;

impl Tuner {
    /// A client for each configured provider whose fine-tuning API fungible speaks.
    pub fn new(config: &fungible_gateway::GatewayConfig, store: Store) -> Tuner {
        let mut clients = BTreeMap::new();
        let mut unsupported = BTreeMap::new();
        for p in &config.providers {
            match Api::of(&p.name, p.kind) {
                Some(api) => {
                    let client = Client::new(&p.name, api, &p.base_url, p.api_key.clone()).with_account(config.tune_fireworks_account.clone());
                    clients.insert(p.name.clone(), client);
                }
                None => {
                    unsupported.insert(
                        p.name.clone(),
                        format!("fungible cannot fine-tune through {:?} (it tunes on openai, together, mistral and fireworks)", p.name),
                    );
                }
            }
        }
        Tuner {
            clients,
            unsupported,
            routes: config.routes.keys().cloned().collect(),
            store,
            #[cfg(feature = "local")]
            local: None,
            owner: format!("tuner-{}", fungible_store::new_id()),
            lease_ms: DEFAULT_LEASE_MS,
            eval_dir: std::path::PathBuf::from("eval-runs"),
        }
    }

    /// Writes the evals of finished jobs under `dir` (default `eval-runs`), one directory
    /// per job.
    pub fn with_eval_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Tuner {
        self.eval_dir = dir.into();
        self
    }

    /// Uses `lease_ms` for job leases (tests shorten it).
    pub fn with_lease_ms(mut self, lease_ms: i64) -> Tuner {
        self.lease_ms = lease_ms;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn client(&self, provider: &str) -> Result<&Client, TuneError> {
        self.clients.get(provider).ok_or_else(|| {
            TuneError::BadInput(self.unsupported.get(provider).cloned().unwrap_or_else(|| {
                let known: Vec<&str> = self.clients.keys().map(String::as_str).collect();
                format!(
                    "provider {provider:?} is not configured (set its API key, e.g. {}_API_KEY); tunable here: {}",
                    provider.to_ascii_uppercase(),
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                )
            }))
        })
    }

    /// Checks everything and works out the files and the cost; uploads nothing.
    pub async fn plan(&self, request: LaunchRequest) -> Result<Plan, TuneError> {
        if request.provider == LOCAL {
            #[cfg(feature = "local")]
            return self.plan_local(request).await;
            #[cfg(not(feature = "local"))]
            return Err(no_local());
        }
        let client = self.client(&request.provider)?;
        if let Some(missing) = client.missing() {
            return Err(TuneError::BadInput(missing));
        }
        if !client.api.supports(request.method) {
            return Err(TuneError::BadInput(format!("preference (DPO) tuning on {} is not offered here; use --method sft", request.provider)));
        }
        if request.model.trim().is_empty() {
            return Err(TuneError::BadInput("the base model is required".into()));
        }
        if let Some(suffix) = &request.suffix
            && (suffix.len() > 40 || !suffix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(TuneError::BadInput(format!("suffix {suffix:?}: up to 40 letters, digits, '-' or '_'")));
        }
        let (name, version) = versions::parse_reference(&request.dataset)?;
        let info = versions::info(&self.store, &name, version).await?;
        let rows = versions::rows(&self.store, &name, info.version).await?;
        if rows.is_empty() {
            return Err(TuneError::BadInput(format!("dataset {name}@{} has no rows", info.version)));
        }
        let format = client.api.format(request.method);
        let export = |split| {
            fungible_datasets::export::export(&rows, Some(split), format, false).map_err(|e| {
                TuneError::BadInput(format!("{name}@{} cannot be tuned on as {} ({} rows): {e}", info.version, format.as_str(), split.as_str()))
            })
        };
        let train = export(fungible_datasets::Split::Train)?;
        let has_validation = rows.iter().any(|r| r.split == fungible_datasets::Split::Validation);
        let validation = if has_validation { Some(export(fungible_datasets::Split::Validation)?) } else { None };
        let dataset_tokens: u64 = rows.iter().filter(|r| r.split == fungible_datasets::Split::Train).map(|r| r.tokens).sum();
        let epochs = ["n_epochs", "epochs"]
            .iter()
            .find_map(|k| request.hyperparameters.get(*k).and_then(Value::as_f64))
            .map(|e| e.ceil() as u64)
            .unwrap_or_else(|| prices::default_epochs(client.api));
        let price = prices::training_price(&request.provider, &request.model);
        let alias = self.alias_for(&request, &name).await?;
        Ok(Plan {
            dataset: name,
            dataset_version: info.version,
            format: format.as_str(),
            train_rows: train.rows,
            validation_rows: validation.as_ref().map_or(0, |v| v.rows),
            dataset_tokens,
            epochs,
            price_per_million: price,
            estimated_cost: price.map(|p| dataset_tokens as f64 * epochs as f64 * p / 1e6),
            prices_as_of: prices::TRAINING_PRICES_AS_OF,
            alias,
            train_jsonl: train.jsonl,
            validation_jsonl: validation.map(|v| v.jsonl),
            request,
        })
    }

    /// The name the job's model will be served under: the one asked for, checked, else
    /// `DATASET@ft-YYYYMMDD` (with `-2`, `-3`... when taken).
    pub(crate) async fn alias_for(&self, request: &LaunchRequest, dataset: &str) -> Result<String, TuneError> {
        Ok(match &request.alias {
            Some(alias) => {
                fungible_datasets::versions::check_name(alias.split('@').next().unwrap_or(alias))?;
                if alias.contains('/') || alias.contains('+') || self.routes.contains(alias) {
                    return Err(TuneError::BadInput(format!("alias {alias:?} is a route or a PROVIDER/MODEL name: pick another")));
                }
                if self.jobs(10_000).await?.iter().any(|j| &j.alias == alias) {
                    return Err(TuneError::BadInput(format!("alias {alias:?} is another job's: pick another")));
                }
                alias.clone()
            }
            None => self.free_alias(&format!("{dataset}@ft-{}", fungible_types::date::utc_date(fungible_store::now_ms()).replace('-', ""))).await?,
        })
    }

    /// `base`, or `base-2`, `base-3`... whichever no job serves yet.
    async fn free_alias(&self, base: &str) -> Result<String, TuneError> {
        let mut taken: Vec<String> = self.jobs(10_000).await?.into_iter().map(|j| j.alias).collect();
        taken.extend(self.routes.iter().cloned());
        let mut alias = base.to_owned();
        let mut n = 2;
        while taken.contains(&alias) {
            alias = format!("{base}-{n}");
            n += 1;
        }
        Ok(alias)
    }

    /// Marks the dataset version used (so it cannot change under the job), checks it still
    /// holds what was planned, uploads the files, creates the job and keeps it. A launch
    /// that fails before the provider has a job takes the mark back.
    pub async fn launch(&self, plan: Plan) -> Result<Job, TuneError> {
        if plan.request.provider == LOCAL {
            #[cfg(feature = "local")]
            return self.launch_local(plan).await;
            #[cfg(not(feature = "local"))]
            return Err(no_local());
        }
        let client = self.client(&plan.request.provider)?;
        let id = format!("tune_{}", fungible_store::new_id());
        versions::mark_used(&self.store, &plan.dataset, plan.dataset_version, &id).await?;
        let (training_file, validation_file, remote) = match self.create_remote(client, &plan).await {
            Ok(created) => created,
            Err(e) => {
                if let Err(undo) = self.store.unuse_dataset_version(&plan.dataset, plan.dataset_version, &id).await {
                    tracing::warn!(job = %id, "the dataset version stays marked used: {undo}");
                }
                return Err(e);
            }
        };
        let mut job = plan.into_job(id, remote.id.clone(), remote.status, remote.provider_status.clone());
        job.training_file = training_file;
        job.validation_file = validation_file;
        job.fine_tuned_model = remote.fine_tuned_model.clone();
        job.trained_tokens = remote.trained_tokens;
        job.events = remote.events.clone();
        job.error = remote.error.clone();
        if let Err(e) = self.insert_job(&job).await {
            // The provider runs a job fungible could not keep: say which, so it can be found.
            tracing::error!(provider = %job.provider, provider_job = %job.provider_job_id, "a launched job could not be stored: {e}");
            return Err(e);
        }
        tracing::info!(job = %job.id, provider = %job.provider, provider_job = %job.provider_job_id, "tuning job launched");
        Ok(job)
    }

    pub(crate) async fn insert_job(&self, job: &Job) -> Result<(), TuneError> {
        let row = TuneJobRow {
            id: job.id.clone(),
            status: job.status.as_str().into(),
            body: encode(job)?,
            created_ms: job.created_ms,
            updated_ms: job.updated_ms,
        };
        Ok(self.store.insert_tune_job(&row).await?)
    }

    /// Checks the version still exports to the planned file, uploads the files and creates
    /// the provider's job.
    async fn create_remote(&self, client: &Client, plan: &Plan) -> Result<(String, Option<String>, crate::client::Remote), TuneError> {
        let rows = versions::rows(&self.store, &plan.dataset, plan.dataset_version).await?;
        let format = client.api.format(plan.request.method);
        let now_train = fungible_datasets::export::export(&rows, Some(fungible_datasets::Split::Train), format, false)
            .map(|e| e.jsonl)
            .unwrap_or_default();
        if now_train != plan.train_jsonl {
            return Err(TuneError::BadInput(format!("{}@{} changed since it was planned: plan the job again", plan.dataset, plan.dataset_version)));
        }
        let stem = format!("{}-v{}", plan.dataset, plan.dataset_version);
        let training_file = client.upload(&format!("{stem}-train.jsonl"), plan.train_jsonl.clone()).await?;
        let validation_file = match &plan.validation_jsonl {
            Some(v) => Some(client.upload(&format!("{stem}-validation.jsonl"), v.clone()).await?),
            None => None,
        };
        let remote = client
            .create(&CreateSpec {
                model: &plan.request.model,
                method: plan.request.method,
                training_file: &training_file,
                validation_file: validation_file.as_deref(),
                suffix: plan.request.suffix.as_deref(),
                hyperparameters: &plan.request.hyperparameters,
            })
            .await?;
        Ok((training_file, validation_file, remote))
    }

    /// Reads the job from its provider once, and keeps what changed.
    pub async fn refresh(&self, job: Job) -> Result<Job, TuneError> {
        if job.status.is_terminal() {
            return Ok(job);
        }
        if job.provider == LOCAL {
            // Its trainer writes its progress into the store.
            return self.job(&job.id).await;
        }
        let client = self.client(&job.provider)?;
        let remote = client.get(&job.provider_job_id).await?;
        let fresh = client.events(&job.provider_job_id).await?;
        self.modify(&job.id, |job| apply(job, remote.clone(), fresh.clone())).await
    }

    /// Changes the stored job with `change`, re-reading it and trying again when something
    /// else changed it meanwhile (a poll, a promotion and a cancel may race).
    pub(crate) async fn modify(&self, id: &str, change: impl Fn(&mut Job)) -> Result<Job, TuneError> {
        for _ in 0..8 {
            let row = self.store.tune_job(id).await?.ok_or_else(|| TuneError::NotFound(id.to_owned()))?;
            let mut job = decode(&row.body)?;
            change(&mut job);
            job.updated_ms = fungible_store::now_ms().max(row.updated_ms + 1);
            if self.store.update_tune_job(id, job.status.as_str(), &encode(&job)?, row.updated_ms, job.updated_ms).await? {
                return Ok(job);
            }
        }
        Err(TuneError::BadInput(format!("job {id} keeps changing under this update: try again")))
    }

    /// Polls every unfinished job no other instance holds (taking a lease on it), and
    /// returns them as they are now. A provider's error on one job is logged and the job
    /// is tried again next time.
    pub async fn poll_due(&self) -> Result<Vec<Job>, TuneError> {
        self.poll_due_at(fungible_store::now_ms()).await
    }

    /// [`Tuner::poll_due`] as if it were `now_ms` (tests move the clock).
    pub async fn poll_due_at(&self, now_ms: i64) -> Result<Vec<Job>, TuneError> {
        let mut polled = Vec::new();
        for row in self.store.lease_tune_jobs(&self.owner, now_ms, self.lease_ms).await? {
            match self.poll_leased(decode(&row.body)?).await {
                Ok(job) => polled.push(job),
                Err(e) => tracing::warn!(job = %row.id, "tuning job not polled: {e}"),
            }
        }
        Ok(polled)
    }

    /// Stops the local jobs training in this process at their next step and puts them back
    /// in the queue (each resumes from its checkpoint wherever it is polled next); returns
    /// once they have stopped. Call it before the process exits.
    pub async fn hand_back(&self) {
        #[cfg(feature = "local")]
        self.hand_back_local().await;
    }

    /// Polls job `id` alone when no other instance holds it (taking its lease; a local job
    /// starts training here), and returns it as it is now; what `fungible tune watch` does
    /// for the job it follows, leaving every other job to the instances that hold them.
    pub async fn poll_job(&self, id: &str) -> Result<Job, TuneError> {
        match self.store.lease_tune_job(id, &self.owner, fungible_store::now_ms(), self.lease_ms).await? {
            Some(row) => self.poll_leased(decode(&row.body)?).await,
            None => self.job(id).await,
        }
    }

    /// Polls a job this instance holds the lease of.
    async fn poll_leased(&self, job: Job) -> Result<Job, TuneError> {
        if job.provider == LOCAL {
            #[cfg(feature = "local")]
            return self.poll_local(job).await;
            #[cfg(not(feature = "local"))]
            return Err(no_local());
        }
        self.refresh(job).await
    }

    pub async fn job(&self, id: &str) -> Result<Job, TuneError> {
        match self.store.tune_job(id).await? {
            Some(row) => decode(&row.body),
            None => Err(TuneError::NotFound(id.to_owned())),
        }
    }

    /// Jobs, newest first.
    pub async fn jobs(&self, limit: i64) -> Result<Vec<Job>, TuneError> {
        self.store.tune_jobs(limit).await?.iter().map(|r| decode(&r.body)).collect()
    }

    pub async fn cancel(&self, id: &str) -> Result<Job, TuneError> {
        let job = self.job(id).await?;
        if job.status.is_terminal() {
            return Err(TuneError::BadInput(format!("job {id} already {}", job.status.as_str())));
        }
        if job.provider == LOCAL {
            #[cfg(feature = "local")]
            return self.cancel_local(id).await;
            #[cfg(not(feature = "local"))]
            return Err(no_local());
        }
        let client = self.client(&job.provider)?;
        let remote = client.cancel(&job.provider_job_id).await?;
        self.modify(id, |job| apply(job, remote.clone(), Vec::new())).await
    }

    /// Gives the tuned model `percent` of `route`'s first picks (a configured route; the
    /// gateway applies it with the next [`Tuner::overlays`]). `percent` 0 takes it back.
    pub async fn promote(&self, id: &str, route: &str, percent: u32) -> Result<Job, TuneError> {
        let job = self.job(id).await?;
        if job.status != Status::Succeeded || job.fine_tuned_model.is_none() {
            return Err(TuneError::BadInput(format!("job {id} is {}: only a succeeded job's model can serve a route", job.status.as_str())));
        }
        if percent > 99 {
            return Err(TuneError::BadInput("percent: 1 to 99 (the route's own targets keep the rest), or 0 to take it back".into()));
        }
        if !self.routes.iter().any(|r| r == route) {
            return Err(TuneError::BadInput(format!("no route {route:?} in [models] (configured: {})", self.routes.join(", "))));
        }
        self.modify(id, |job| job.promotion = (percent > 0).then(|| Promotion { route: route.to_owned(), percent })).await
    }

    /// Runs the eval of each succeeded job that asked for one and has none yet (one
    /// instance runs each: the first to mark it running), through `gateway` (which must
    /// serve the jobs' aliases already: apply [`Tuner::overlays`] first). Returns the jobs
    /// evaluated.
    pub async fn evaluate_finished(&self, gateway: &fungible_gateway::Gateway, prices: &fungible_store::PriceTable) -> Result<Vec<Job>, TuneError> {
        let mut done = Vec::new();
        for job in self.jobs(10_000).await? {
            let (Some(spec), None, Status::Succeeded) = (job.eval.clone(), &job.eval_result, job.status) else { continue };
            let run_dir = self.eval_dir.join(&job.id);
            let claim = crate::eval::EvalResult {
                state: crate::eval::EvalState::Running,
                by: self.owner.clone(),
                run_dir: run_dir.display().to_string(),
                started_ms: fungible_store::now_ms(),
                models: Vec::new(),
                recommendation: Vec::new(),
                error: None,
            };
            let claimed = self.modify(&job.id, |j| if j.eval_result.is_none() { j.eval_result = Some(claim.clone()) }).await?;
            if claimed.eval_result.as_ref().is_none_or(|r| r.by != self.owner) {
                continue; // another instance runs it
            }
            let outcome = self.run_eval(&claimed, &spec, gateway, prices, run_dir).await;
            let finished = self
                .modify(&job.id, |j| {
                    if let Some(r) = &mut j.eval_result {
                        match &outcome {
                            Ok((models, recommendation)) => {
                                r.state = crate::eval::EvalState::Done;
                                r.models = models.clone();
                                r.recommendation = recommendation.clone();
                            }
                            Err(e) => {
                                r.state = crate::eval::EvalState::Failed;
                                r.error = Some(e.clone());
                            }
                        }
                    }
                })
                .await?;
            tracing::info!(job = %job.id, ok = outcome.is_ok(), "tuning job evaluated");
            done.push(finished);
        }
        Ok(done)
    }

    async fn run_eval(
        &self,
        job: &Job,
        spec: &crate::eval::EvalSpec,
        gateway: &fungible_gateway::Gateway,
        prices: &fungible_store::PriceTable,
        run_dir: std::path::PathBuf,
    ) -> Result<(Vec<crate::eval::EvalModel>, Vec<String>), String> {
        let (name, version) = match &spec.dataset {
            Some(reference) => versions::parse_reference(reference).map_err(|e| e.to_string())?,
            None => (job.dataset.clone(), Some(job.dataset_version)),
        };
        let split = spec.split.unwrap_or(fungible_datasets::Split::Validation);
        let (dataset, version) = fungible_eval::traces::dataset_from_store(&self.store, &name, version, Some(split))
            .await
            .map_err(|e| format!("{e} (no {} rows to evaluate on)", split.as_str()))?;
        versions::mark_used(&self.store, &name, version, &format!("eval:{}", job.id)).await.map_err(|e| e.to_string())?;
        let base = format!("{}/{}", job.provider, job.base_model);
        let mut models = vec![base.clone(), job.alias.clone()];
        let mut examples = fungible_datasets::Examples::default();
        // The rows the model was tuned on, as retrieved examples for the base model: unless
        // the items are those very rows (each would find its own answer).
        let items_are_training_rows = name == job.dataset && version == job.dataset_version && split == fungible_datasets::Split::Train;
        if !items_are_training_rows {
            let config = fungible_gateway::routing::config::ExamplesConfig {
                dataset: format!("{}@{}", job.dataset, job.dataset_version),
                k: fungible_gateway::routing::config::DEFAULT_EXAMPLES_K,
                max_distance: fungible_gateway::routing::config::DEFAULT_EXAMPLES_MAX_DISTANCE,
                split: Some("train".to_owned()),
                embedding_model: spec
                    .embedding_model
                    .clone()
                    .unwrap_or_else(|| fungible_gateway::routing::config::DEFAULT_EXAMPLES_EMBEDDING_MODEL.to_owned()),
            };
            match fungible_datasets::FewShotIndex::load(&self.store, &config, gateway, &format!("eval:{}", job.id)).await {
                Ok(index) if !index.is_empty() => {
                    let arm = format!("{base}+examples");
                    examples = examples.with_arm(arm.clone(), base.clone(), index);
                    models.insert(1, arm);
                }
                Ok(_) => tracing::info!(job = %job.id, "no train row can be a few-shot example: the eval has no base + examples arm"),
                Err(e) => tracing::warn!(job = %job.id, "the eval has no base + examples arm: {e}"),
            }
        }
        crate::eval::run(&dataset, models, spec, gateway.clone(), prices.clone(), examples, run_dir).await
    }

    /// The routes the succeeded jobs are served as: each model under its alias, and in the
    /// route it was promoted into.
    ///
    /// Local jobs' adapters are loaded into this instance's engine first; a local job whose
    /// adapter this instance cannot read gets no route here.
    pub async fn overlays(&self) -> Result<Vec<RouteOverlay>, TuneError> {
        let mut out = Vec::new();
        let jobs = self.jobs(10_000).await?;
        #[cfg(feature = "local")]
        let served = self.load_local_adapters(&jobs).await;
        #[cfg(not(feature = "local"))]
        let served: Vec<String> = Vec::new();
        for job in jobs {
            let Some(target) = job.target().filter(|_| job.status == Status::Succeeded) else { continue };
            if job.provider == LOCAL && !served.contains(&target.model) {
                continue;
            }
            out.push(RouteOverlay { route: job.alias.clone(), target: target.clone(), percent: 0 });
            if let Some(p) = &job.promotion {
                out.push(RouteOverlay { route: p.route.clone(), target: Target { ..target }, percent: p.percent });
            }
        }
        out.sort_by(|a, b| (&a.route, a.target.to_string()).cmp(&(&b.route, b.target.to_string())));
        Ok(out)
    }
}

/// What the provider reported, onto the job.
fn apply(job: &mut Job, remote: crate::client::Remote, fresh: Vec<crate::job::Event>) {
    let was = job.status;
    if !remote.events.is_empty() {
        job.events = remote.events;
    }
    for event in fresh {
        if event.id.is_none() || !job.events.iter().any(|e| e.id == event.id) {
            job.events.push(event);
        }
    }
    job.status = remote.status;
    job.provider_status = remote.provider_status;
    job.fine_tuned_model = remote.fine_tuned_model.or(job.fine_tuned_model.take());
    job.trained_tokens = remote.trained_tokens.or(job.trained_tokens);
    job.error = remote.error.or(job.error.take());
    if job.status.is_terminal() && job.finished_ms.is_none() {
        job.finished_ms = Some(fungible_store::now_ms());
    }
    if let (Some(tokens), Some(price)) = (job.trained_tokens, prices::training_price(&job.provider, &job.base_model)) {
        job.cost = Some(tokens as f64 * price / 1e6);
    }
    if job.status != was {
        tracing::info!(job = %job.id, from = was.as_str(), to = job.status.as_str(), model = ?job.fine_tuned_model, "tuning job moved");
    }
}

#[cfg(not(feature = "local"))]
fn no_local() -> TuneError {
    TuneError::BadInput("local tuning needs a build with the `local` feature (in-process models)".into())
}

fn encode(job: &Job) -> Result<String, TuneError> {
    serde_json::to_string(job).map_err(|e| TuneError::Corrupt(e.to_string()))
}

fn decode(body: &str) -> Result<Job, TuneError> {
    serde_json::from_str(body).map_err(|e| TuneError::Corrupt(e.to_string()))
}
