//! The providers' fine-tuning APIs: upload a file, create a job, read it and its events,
//! cancel it. Each provider's objects are turned into [`Remote`] here and nowhere else.
//!
//! - OpenAI: `POST /files` (multipart, purpose `fine-tune`), `POST /fine_tuning/jobs` with
//!   `method` (`supervised` or `dpo` and their hyperparameters), `GET /fine_tuning/jobs/{id}`,
//!   `GET .../events?after=`, `POST .../cancel`.
//! - Mistral: the same paths; `training_files: [{file_id, weight}]`, `hyperparameters`
//!   (`training_steps`, `learning_rate`, `epochs`), `auto_start`; statuses in capitals; the
//!   events come inside the job.
//! - Together: `POST /files/upload` (multipart with `file_name`), `POST /fine-tunes`
//!   (`training_file`, `n_epochs`, `learning_rate`, `training_method`), `GET /fine-tunes/{id}`,
//!   `GET .../events`, `POST .../cancel`; the model is `model_output_name`.
//! - Fireworks: resources under `/v1/accounts/{account}` (the account from `[tune]
//!   fireworks_account` or `FIREWORKS_ACCOUNT_ID`): a file is a dataset (`POST /datasets`,
//!   then `POST /datasets/{id}:upload`), a job a `supervisedFineTuningJobs` resource (`epochs`,
//!   `learningRate`, `loraRank`...), states `JOB_STATE_*`, `:cancel`; the model is
//!   `accounts/{account}/models/{outputModel}`.

use fungible_providers::Secret;
use serde_json::{Map, Value, json};

use crate::job::{Event, Method, Status};

/// Which API a provider speaks for fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Mistral,
    Together,
    /// Needs the account id its resources live under.
    Fireworks,
}

impl Api {
    /// The API of a configured provider: by its name (the presets), or OpenAI's for the
    /// OpenAI kind; `None` when fungible cannot tune through it.
    pub fn of(name: &str, kind: fungible_providers::ProviderKind) -> Option<Api> {
        match name {
            "openai" => Some(Api::OpenAi),
            "mistral" => Some(Api::Mistral),
            "together" => Some(Api::Together),
            "fireworks" => Some(Api::Fireworks),
            _ if kind == fungible_providers::ProviderKind::OpenAi => Some(Api::OpenAi),
            _ => None,
        }
    }

    /// The format the provider's training files are written in.
    pub fn format(self, method: Method) -> fungible_datasets::Format {
        use fungible_datasets::Format;
        match (self, method) {
            (Api::OpenAi, Method::Sft) => Format::OpenAi,
            (Api::OpenAi, Method::Dpo) => Format::OpenAiDpo,
            (Api::Mistral, _) => Format::Mistral,
            (Api::Together, Method::Sft) => Format::Together,
            (Api::Together, Method::Dpo) => Format::TogetherDpo,
            (Api::Fireworks, _) => Format::Fireworks,
        }
    }

    /// Preference tuning goes through OpenAI's and Together's job APIs here.
    pub fn supports(self, method: Method) -> bool {
        method == Method::Sft || matches!(self, Api::OpenAi | Api::Together)
    }
}

/// What went wrong talking to a provider.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{provider}: {message}")]
    Http { provider: String, status: Option<u16>, message: String },
    #[error("{provider}: unexpected answer: {message}")]
    Decode { provider: String, message: String },
}

/// A job as the provider reports it, in fungible's words.
#[derive(Debug, Clone, PartialEq)]
pub struct Remote {
    pub id: String,
    pub status: Status,
    pub provider_status: String,
    pub fine_tuned_model: Option<String>,
    pub trained_tokens: Option<u64>,
    pub error: Option<String>,
    /// Every event so far, for the providers whose job object carries them (Mistral,
    /// Together).
    pub events: Vec<Event>,
}

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateSpec<'a> {
    pub model: &'a str,
    pub method: Method,
    pub training_file: &'a str,
    pub validation_file: Option<&'a str>,
    pub suffix: Option<&'a str>,
    pub hyperparameters: &'a Map<String, Value>,
}

/// One provider's fine-tuning API.
#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    pub api: Api,
    /// Ends in `/v1` (as the providers' SDKs take it); Fireworks': its management API's
    /// `/v1/accounts/{account}`.
    base_url: String,
    key: Option<Secret>,
    http: reqwest::Client,
    /// Fireworks' account id.
    account: Option<String>,
}

impl Client {
    pub fn new(name: &str, api: Api, base_url: &str, key: Option<Secret>) -> Client {
        Client {
            name: name.to_owned(),
            api,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
            account: None,
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .timeout(std::time::Duration::from_secs(300))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Fireworks: the account its datasets and jobs live under. The management API is the
    /// inference base URL without `/inference` (`https://api.fireworks.ai/v1`).
    pub fn with_account(mut self, account: Option<String>) -> Client {
        if self.api == Api::Fireworks {
            if let Some(account) = &account {
                let root = self.base_url.strip_suffix("/inference/v1").or_else(|| self.base_url.strip_suffix("/v1")).unwrap_or(&self.base_url);
                self.base_url = format!("{root}/v1/accounts/{account}");
            }
            self.account = account;
        }
        self
    }

    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// What is missing before a job can be launched, if anything.
    pub fn missing(&self) -> Option<String> {
        if self.key.is_none() {
            return Some(format!(
                "{} has no API key: set {}_API_KEY (or api_key_env in [providers.{}])",
                self.name,
                self.name.to_ascii_uppercase().replace('-', "_"),
                self.name
            ));
        }
        (self.api == Api::Fireworks && self.account.is_none())
            .then(|| "Fireworks tunes under an account: set [tune] fireworks_account or FIREWORKS_ACCOUNT_ID".to_owned())
    }

    fn http_error(&self, status: Option<u16>, message: impl Into<String>) -> ClientError {
        ClientError::Http { provider: self.name.clone(), status, message: message.into() }
    }

    fn decode_error(&self, message: impl Into<String>) -> ClientError {
        ClientError::Decode { provider: self.name.clone(), message: message.into() }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let key = self.key.as_ref().ok_or_else(|| self.http_error(None, "no API key is configured"))?;
        let response = request
            .bearer_auth(key.expose())
            .send()
            .await
            .map_err(|e| self.http_error(None, format!("request failed: {}", without_url(&e))))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.http_error(Some(status.as_u16()), without_url(&e)))?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value
                .pointer("/error/message")
                .or_else(|| value.get("message"))
                .or_else(|| value.get("error").filter(|e| e.is_string()))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned());
            // The provider's words, but never the key, should it echo it.
            let message = message.replace(key.expose(), "[redacted]");
            return Err(self.http_error(Some(status.as_u16()), format!("HTTP {}: {message}", status.as_u16())));
        }
        if value.is_null() {
            return Err(self.decode_error("the body is not JSON"));
        }
        Ok(value)
    }

    /// Uploads a training file; returns its id.
    pub async fn upload(&self, filename: &str, jsonl: String) -> Result<String, ClientError> {
        let lines = jsonl.lines().filter(|l| !l.trim().is_empty()).count();
        let part = reqwest::multipart::Part::text(jsonl)
            .file_name(filename.to_owned())
            .mime_str("application/jsonl")
            .map_err(|e| self.decode_error(e.to_string()))?;
        if self.api == Api::Fireworks {
            return self.upload_dataset(filename, lines, part).await;
        }
        let mut form = reqwest::multipart::Form::new().text("purpose", "fine-tune");
        let path = match self.api {
            Api::Together => {
                form = form.text("file_name", filename.to_owned());
                "/files/upload"
            }
            _ => "/files",
        };
        let value = self.send(self.http.post(format!("{}{path}", self.base_url)).multipart(form.part("file", part))).await?;
        value.get("id").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| self.decode_error("the file has no id"))
    }

    /// Fireworks: a dataset resource, then its file; the dataset's name is the "file id".
    async fn upload_dataset(&self, filename: &str, lines: usize, part: reqwest::multipart::Part) -> Result<String, ClientError> {
        let stem: String = filename.trim_end_matches(".jsonl").chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let id = format!("{}-{}", stem.trim_matches('-'), &fungible_store::new_id()[..12]);
        let body = json!({"datasetId": id, "dataset": {"displayName": filename, "exampleCount": lines.to_string(), "userUploaded": {}, "format": "CHAT"}});
        let created = self.send(self.http.post(format!("{}/datasets", self.base_url)).json(&body)).await?;
        let name = created.get("name").and_then(Value::as_str).ok_or_else(|| self.decode_error("the dataset has no name"))?.to_owned();
        let form = reqwest::multipart::Form::new().part("file", part);
        self.send(self.http.post(format!("{}/datasets/{id}:upload", self.base_url)).multipart(form)).await?;
        Ok(name)
    }

    pub async fn create(&self, spec: &CreateSpec<'_>) -> Result<Remote, ClientError> {
        let (path, body) = match self.api {
            Api::OpenAi => {
                let (kind, hyper) = match spec.method {
                    Method::Sft => ("supervised", json!({"supervised": {"hyperparameters": spec.hyperparameters}})),
                    Method::Dpo => ("dpo", json!({"dpo": {"hyperparameters": spec.hyperparameters}})),
                };
                let mut method = hyper;
                method["type"] = json!(kind);
                let mut body = json!({"model": spec.model, "training_file": spec.training_file, "method": method});
                if let Some(v) = spec.validation_file {
                    body["validation_file"] = json!(v);
                }
                if let Some(s) = spec.suffix {
                    body["suffix"] = json!(s);
                }
                ("/fine_tuning/jobs", body)
            }
            Api::Mistral => {
                let mut body = json!({
                    "model": spec.model,
                    "training_files": [{"file_id": spec.training_file, "weight": 1}],
                    "hyperparameters": spec.hyperparameters,
                    "auto_start": true,
                });
                if let Some(v) = spec.validation_file {
                    body["validation_files"] = json!([v]);
                }
                if let Some(s) = spec.suffix {
                    body["suffix"] = json!(s);
                }
                ("/fine_tuning/jobs", body)
            }
            Api::Fireworks => {
                let mut body = Value::Object(spec.hyperparameters.clone());
                body["dataset"] = json!(spec.training_file);
                body["baseModel"] = json!(if spec.model.starts_with("accounts/") {
                    spec.model.to_owned()
                } else {
                    format!("accounts/fireworks/models/{}", spec.model)
                });
                if let Some(v) = spec.validation_file {
                    body["evaluationDataset"] = json!(v);
                }
                if let Some(s) = spec.suffix {
                    body["displayName"] = json!(s);
                }
                ("/supervisedFineTuningJobs", body)
            }
            Api::Together => {
                let mut body = Value::Object(spec.hyperparameters.clone());
                body["model"] = json!(spec.model);
                body["training_file"] = json!(spec.training_file);
                body["training_method"] = match spec.method {
                    Method::Sft => json!({"method": "sft"}),
                    Method::Dpo => json!({"method": "dpo"}),
                };
                if let Some(v) = spec.validation_file {
                    body["validation_file"] = json!(v);
                }
                if let Some(s) = spec.suffix {
                    body["suffix"] = json!(s);
                }
                ("/fine-tunes", body)
            }
        };
        let value = self.send(self.http.post(format!("{}{path}", self.base_url)).json(&body)).await?;
        self.remote(&value)
    }

    pub async fn get(&self, id: &str) -> Result<Remote, ClientError> {
        let value = self.send(self.http.get(format!("{}/{}/{id}", self.base_url, self.jobs_path()))).await?;
        self.remote(&value)
    }

    /// The last segment of a resource name (`accounts/a/supervisedFineTuningJobs/ID`).
    fn short_id(name: &str) -> &str {
        name.rsplit('/').next().unwrap_or(name)
    }

    /// OpenAI's newest events (up to 100; the list runs newest first, and its cursor goes
    /// back in time), oldest first. Mistral's and Together's come with the job
    /// ([`Remote::events`]). The caller keeps those it has not seen (by id).
    pub async fn events(&self, id: &str) -> Result<Vec<Event>, ClientError> {
        if self.api != Api::OpenAi {
            return Ok(Vec::new());
        }
        let request = self.http.get(format!("{}/{}/{id}/events", self.base_url, self.jobs_path())).query(&[("limit", "100")]);
        let value = self.send(request).await?;
        let data = value.get("data").and_then(Value::as_array).ok_or_else(|| self.decode_error("events have no data"))?;
        let mut events: Vec<Event> = data.iter().filter_map(|e| self.event(e)).collect();
        events.reverse();
        Ok(events)
    }

    pub async fn cancel(&self, id: &str) -> Result<Remote, ClientError> {
        if self.api == Api::Fireworks {
            // `:cancel` answers with nothing useful: the job is read back.
            self.send(self.http.post(format!("{}/{}/{id}:cancel", self.base_url, self.jobs_path())).json(&json!({}))).await?;
            return self.get(id).await;
        }
        let value = self.send(self.http.post(format!("{}/{}/{id}/cancel", self.base_url, self.jobs_path()))).await?;
        self.remote(&value)
    }

    fn jobs_path(&self) -> &'static str {
        match self.api {
            Api::OpenAi | Api::Mistral => "fine_tuning/jobs",
            Api::Together => "fine-tunes",
            Api::Fireworks => "supervisedFineTuningJobs",
        }
    }

    /// The provider's job object in fungible's words.
    pub fn remote(&self, v: &Value) -> Result<Remote, ClientError> {
        if self.api == Api::Fireworks {
            return self.fireworks_remote(v);
        }
        let id = v.get("id").and_then(Value::as_str).ok_or_else(|| self.decode_error("the job has no id"))?.to_owned();
        let provider_status = v.get("status").and_then(Value::as_str).ok_or_else(|| self.decode_error("the job has no status"))?.to_owned();
        let status = match (self.api, provider_status.as_str()) {
            (Api::OpenAi, "validating_files") => Status::Validating,
            (Api::OpenAi, "queued" | "paused") => Status::Queued,
            (Api::OpenAi, "running") => Status::Running,
            (Api::OpenAi, "succeeded") => Status::Succeeded,
            (Api::OpenAi, "failed") => Status::Failed,
            (Api::OpenAi, "cancelled") => Status::Cancelled,
            (Api::Mistral, "QUEUED" | "VALIDATED") => Status::Queued,
            (Api::Mistral, "VALIDATING") => Status::Validating,
            (Api::Mistral, "STARTED" | "RUNNING" | "CANCELLATION_REQUESTED") => Status::Running,
            (Api::Mistral, "SUCCESS") => Status::Succeeded,
            (Api::Mistral, "FAILED" | "FAILED_VALIDATION") => Status::Failed,
            (Api::Mistral, "CANCELLED") => Status::Cancelled,
            (Api::Together, "pending" | "queued") => Status::Queued,
            (Api::Together, "running" | "compressing" | "uploading" | "cancel_requested") => Status::Running,
            (Api::Together, "completed") => Status::Succeeded,
            (Api::Together, "error" | "user_error") => Status::Failed,
            (Api::Together, "cancelled") => Status::Cancelled,
            (_, other) => return Err(self.decode_error(format!("unknown job status {other:?}"))),
        };
        let model_field = if self.api == Api::Together { "model_output_name" } else { "fine_tuned_model" };
        let fine_tuned_model = v.get(model_field).and_then(Value::as_str).filter(|m| !m.is_empty()).map(str::to_owned);
        let trained_tokens = v.get(if self.api == Api::Together { "token_count" } else { "trained_tokens" }).and_then(Value::as_u64);
        let error = match v.get("error") {
            Some(Value::Object(e)) => e.get("message").and_then(Value::as_str).map(str::to_owned),
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let events = match self.api {
            Api::OpenAi => Vec::new(),
            _ => v.get("events").and_then(Value::as_array).map(|list| list.iter().filter_map(|e| self.event(e)).collect()).unwrap_or_default(),
        };
        let error = error.or_else(|| {
            (status == Status::Failed)
                .then(|| events.iter().rev().find(|e: &&Event| e.level == "error").map(|e| e.message.clone()))
                .flatten()
        });
        Ok(Remote { id, status, provider_status, fine_tuned_model, trained_tokens, error, events })
    }

    fn fireworks_remote(&self, v: &Value) -> Result<Remote, ClientError> {
        let name = v.get("name").and_then(Value::as_str).ok_or_else(|| self.decode_error("the job has no name"))?;
        let state = v.get("state").and_then(Value::as_str).ok_or_else(|| self.decode_error("the job has no state"))?.to_owned();
        let status = match state.as_str() {
            "JOB_STATE_VALIDATING" | "JOB_STATE_CREATING_INPUT_DATASET" => Status::Validating,
            "JOB_STATE_UNSPECIFIED" | "JOB_STATE_CREATING" | "JOB_STATE_PENDING" | "JOB_STATE_RE_QUEUEING" | "JOB_STATE_IDLE" | "JOB_STATE_PAUSED" => Status::Queued,
            "JOB_STATE_RUNNING" | "JOB_STATE_WRITING_RESULTS" | "JOB_STATE_CANCELLING" => Status::Running,
            "JOB_STATE_COMPLETED" | "JOB_STATE_EARLY_STOPPED" => Status::Succeeded,
            "JOB_STATE_FAILED" | "JOB_STATE_EXPIRED" => Status::Failed,
            "JOB_STATE_CANCELLED" | "JOB_STATE_DELETING" | "JOB_STATE_DELETING_CLEANING_UP" | "JOB_STATE_DELETED" | "JOB_STATE_ARCHIVED" => Status::Cancelled,
            other => return Err(self.decode_error(format!("unknown job state {other:?}"))),
        };
        let account = self.account.as_deref().unwrap_or_default();
        let fine_tuned_model = (status == Status::Succeeded)
            .then(|| v.get("outputModel").and_then(Value::as_str))
            .flatten()
            .filter(|m| !m.is_empty())
            .map(|m| if m.contains("/models/") { m.to_owned() } else { format!("accounts/{account}/models/{m}") });
        let progress = v.get("jobProgress");
        let tokens = progress.and_then(|p| p.get("inputTokens")).and_then(|t| t.as_u64().or_else(|| t.as_str()?.parse().ok()));
        let error = (status == Status::Failed)
            .then(|| v.pointer("/status/message").and_then(Value::as_str).map(str::to_owned))
            .flatten();
        Ok(Remote {
            id: Client::short_id(name).to_owned(),
            status,
            provider_status: state,
            fine_tuned_model,
            trained_tokens: tokens.filter(|_| status == Status::Succeeded),
            error,
            events: Vec::new(),
        })
    }

    fn event(&self, e: &Value) -> Option<Event> {
        let time_ms = match e.get("created_at")? {
            Value::Number(n) => n.as_i64()? * 1000,
            Value::String(s) => parse_rfc3339_ms(s)?,
            _ => return None,
        };
        let data = e.get("data").filter(|d| d.is_object());
        let number = |keys: &[&str]| keys.iter().find_map(|k| data.and_then(|d| d.get(*k)).or_else(|| e.get(*k)).and_then(Value::as_f64));
        Some(Event {
            id: e.get("id").and_then(Value::as_str).map(str::to_owned),
            time_ms,
            level: e.get("level").and_then(Value::as_str).unwrap_or("info").to_lowercase(),
            message: e.get("message").or_else(|| e.get("name")).and_then(Value::as_str).unwrap_or_default().to_owned(),
            step: number(&["step", "step_number"]).map(|s| s as u64),
            train_loss: number(&["train_loss"]),
            valid_loss: number(&["valid_loss", "full_valid_loss"]),
        })
    }
}

/// An error's text without the URL (which could carry a query-string key).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "(url)");
    }
    text
}

/// `2025-12-06T05:46:40.123Z` (or `+00:00`) as Unix milliseconds.
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = rest.trim_end_matches('Z');
    let time = time.split(['+']).next()?;
    let mut t = time.split(':');
    let (hh, mm) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?);
    let secs: f64 = t.next().unwrap_or("0").parse().ok()?;
    let days = fungible_types::date::days_from_civil(y, u32::try_from(m).ok()?, u32::try_from(day).ok()?);
    Some((days * 86_400 + hh * 3600 + mm * 60) * 1000 + (secs * 1000.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(api: Api) -> Client {
        Client::new("p", api, "http://127.0.0.1:9/v1", None)
    }

    /// The job objects as the providers' API references show them.
    #[test]
    fn documented_job_objects_parse() {
        let openai = json!({"object":"fine_tuning.job","id":"ftjob-abc123","model":"gpt-4o-mini-2024-07-18","created_at":1721764800,"finished_at":null,"fine_tuned_model":null,"organization_id":"org-123","result_files":[],"status":"queued","validation_file":null,"training_file":"file-abc123","hyperparameters":{"n_epochs":"auto","batch_size":"auto","learning_rate_multiplier":"auto"},"trained_tokens":null,"error":null,"seed":683058546,"estimated_finish":null,"integrations":[],"metadata":null,"user_provided_suffix":null,"method":{"type":"supervised","supervised":{"hyperparameters":{"n_epochs":"auto","batch_size":"auto","learning_rate_multiplier":"auto"}}}});
        let r = client(Api::OpenAi).remote(&openai).unwrap();
        assert_eq!((r.id.as_str(), r.status, r.fine_tuned_model), ("ftjob-abc123", Status::Queued, None));

        let together = json!({"id":"ft-01234567890123456789","status":"completed","created_at":"2023-05-17T17:35:45.123Z","updated_at":"2023-05-17T18:46:23.456Z","user_id":"user_1","owner_address":"user@example.com","total_price":1500,"token_count":850000,"events":[],"model":"meta-llama/Llama-2-7b-hf","model_output_name":"mynamespace/meta-llama/Llama-2-7b-hf-32162631","n_epochs":3,"training_file":"file-1","suffix":"x","learning_rate":1e-5});
        let r = client(Api::Together).remote(&together).unwrap();
        assert_eq!(r.status, Status::Succeeded);
        assert_eq!(r.fine_tuned_model.as_deref(), Some("mynamespace/meta-llama/Llama-2-7b-hf-32162631"));
        assert_eq!(r.trained_tokens, Some(850_000));

        let mistral = json!({"id":"a8f3c2b1-0000-4000-8000-000000000001","object":"job","auto_start":true,"model":"open-mistral-7b","status":"FAILED_VALIDATION","job_type":"completion","created_at":1717491627,"modified_at":1717491700,"training_files":["497f6eca-6276-4993-bfeb-53cbbbba6f08"],"validation_files":[],"hyperparameters":{"training_steps":10,"learning_rate":0.0001},"fine_tuned_model":null,"suffix":null,"integrations":[],"trained_tokens":null,"events":[{"name":"status-updated","data":{"status":"FAILED_VALIDATION"},"created_at":1717491700}],"checkpoints":[]});
        let r = client(Api::Mistral).remote(&mistral).unwrap();
        assert_eq!(r.status, Status::Failed);
        assert_eq!(r.events.len(), 1);
        assert!(client(Api::OpenAi).remote(&json!({"id": "x", "status": "melting"})).is_err());

        let fireworks = json!({"name":"accounts/acme/supervisedFineTuningJobs/abc123","dataset":"accounts/acme/datasets/support","baseModel":"accounts/fireworks/models/llama-v3p1-8b-instruct","outputModel":"accounts/acme/models/support-v1","state":"JOB_STATE_COMPLETED","status":{"code":"OK","message":""},"epochs":2,"learningRate":0.0001,"loraRank":8,"createTime":"2026-12-01T10:00:00Z","completedTime":"2026-12-01T10:30:00Z","jobProgress":{"percent":100,"epoch":2,"inputTokens":"120000"}});
        let r = client(Api::Fireworks).with_account(Some("acme".into())).remote(&fireworks).unwrap();
        assert_eq!((r.id.as_str(), r.status), ("abc123", Status::Succeeded));
        assert_eq!(r.fine_tuned_model.as_deref(), Some("accounts/acme/models/support-v1"));
        assert_eq!(r.trained_tokens, Some(120_000));
        assert_eq!(
            Client::new("fireworks", Api::Fireworks, "https://api.fireworks.ai/inference/v1", None).with_account(Some("acme".into())).base_url,
            "https://api.fireworks.ai/v1/accounts/acme"
        );
    }

    #[test]
    fn documented_events_parse() {
        let event = json!({"object":"fine_tuning.job.event","id":"ftevent-1","created_at":1721764800,"level":"info","message":"Step 100/500: training loss=0.54","data":{"step":100,"train_loss":0.54,"total_steps":500},"type":"metrics"});
        let e = client(Api::OpenAi).event(&event).unwrap();
        assert_eq!((e.step, e.train_loss, e.time_ms), (Some(100), Some(0.54), 1_721_764_800_000));
        assert_eq!(parse_rfc3339_ms("1970-01-02T00:00:01.500Z"), Some(86_401_500));
    }
}
