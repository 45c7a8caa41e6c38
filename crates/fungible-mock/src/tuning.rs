//! Fine-tuning on the mock: the files and jobs APIs of OpenAI (`/v1/files`,
//! `/v1/fine_tuning/jobs`), Mistral (the same paths under `/mistral/v1`), Together
//! (`/v1/files/upload`, `/v1/fine-tunes`) and Fireworks (`/fireworks/v1/accounts/{account}/`
//! `datasets`, `datasets/{id}:upload`, `supervisedFineTuningJobs`), with the objects in the
//! shapes their API references document (see `docs/tuning-providers.md`).
//!
//! A job moves one step each time it is read: OpenAI `validating_files` → `queued` →
//! `running` (a metrics event per read) → `succeeded`; Mistral `QUEUED` → `VALIDATING` →
//! `RUNNING` → `SUCCESS`; Together `pending` → `queued` → `running` → `completed`;
//! Fireworks `JOB_STATE_VALIDATING` → `PENDING` → `RUNNING` → `COMPLETED`. A job whose
//! suffix (Fireworks: display name) contains `fail` fails instead of succeeding. Cancelling
//! an unfinished job ends it `cancelled`. Every request needs a bearer key (else 401), an upload must be
//! JSONL whose lines are JSON objects (else 400), and a job must name an uploaded file.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Value, json};

use crate::MockResponse;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    OpenAi,
    Mistral,
    Together,
    Fireworks,
}

#[derive(Debug)]
struct File {
    bytes: usize,
    lines: usize,
}

#[derive(Debug)]
struct Job {
    flavor: Flavor,
    id: String,
    /// Fireworks: the account it runs under.
    account: String,
    model: String,
    suffix: String,
    training_file: String,
    validation_file: Option<String>,
    epochs: u64,
    created: u64,
    /// How far the lifecycle went: 0 first state, 1, 2 running, 3 finished.
    step: u32,
    cancelled: bool,
    /// Training tokens (a quarter of the file's bytes, per epoch).
    tokens: u64,
    events: Vec<Value>,
}

/// The files and jobs the mock holds.
#[derive(Debug, Default)]
pub(crate) struct Tuning {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<String, File>,
    jobs: HashMap<String, Job>,
    next: u64,
    /// The Fireworks account of the job being created.
    account: String,
}

const CREATED: u64 = 1_765_000_000;

/// Whether the request is for the tuning APIs.
pub(crate) fn handles(path: &str) -> bool {
    if path.starts_with("/fireworks/v1/accounts/") {
        return true;
    }
    let path = path.strip_prefix("/mistral").unwrap_or(path);
    path == "/v1/files" || path == "/v1/files/upload" || path.starts_with("/v1/fine_tuning/jobs") || path.starts_with("/v1/fine-tunes")
}

impl Tuning {
    pub(crate) async fn respond(&self, method: &str, uri: &str, headers: &HeaderMap, body: Bytes) -> MockResponse {
        let path = uri.split('?').next().unwrap_or(uri);
        if let Some(rest) = path.strip_prefix("/fireworks/v1/accounts/") {
            return self.fireworks(method, rest, headers, body).await;
        }
        let (flavor, path) = match path.strip_prefix("/mistral") {
            Some(rest) => (Flavor::Mistral, rest),
            None if path.starts_with("/v1/fine-tunes") || path == "/v1/files/upload" => (Flavor::Together, path),
            None => (Flavor::OpenAi, path),
        };
        if !authorized(headers) {
            return error(flavor, 401, "invalid_api_key", "Incorrect API key provided.");
        }
        if method == "POST" && (path == "/v1/files" || path == "/v1/files/upload") {
            return self.upload(flavor, headers, body).await;
        }
        let query = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let rest = path.strip_prefix("/v1/fine_tuning/jobs").or_else(|| path.strip_prefix("/v1/fine-tunes")).unwrap_or("");
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        match (method, segments.as_slice()) {
            ("POST", []) => state.create(flavor, &body),
            ("GET", [id]) => state.read(flavor, id),
            ("GET", [id, "events"]) => state.events(flavor, id, query),
            ("POST", [id, "cancel"]) => state.cancel(flavor, id),
            _ => error(flavor, 404, "not_found", &format!("mock: no tuning endpoint {method} {path}")),
        }
    }

    /// Fireworks: `{account}/datasets`, `{account}/datasets/{id}:upload`,
    /// `{account}/supervisedFineTuningJobs[/{id}[:cancel]]`.
    async fn fireworks(&self, method: &str, rest: &str, headers: &HeaderMap, body: Bytes) -> MockResponse {
        let flavor = Flavor::Fireworks;
        if !authorized(headers) {
            return error(flavor, 401, "UNAUTHENTICATED", "invalid API key");
        }
        let Some((account, resource)) = rest.split_once('/') else {
            return error(flavor, 404, "NOT_FOUND", "no such resource");
        };
        match (method, resource.split_once('/')) {
            ("POST", None) if resource == "datasets" => {
                let Ok(req) = serde_json::from_slice::<Value>(&body) else {
                    return error(flavor, 400, "INVALID_ARGUMENT", "the body must be JSON");
                };
                let Some(id) = req.get("datasetId").and_then(Value::as_str) else {
                    return error(flavor, 400, "INVALID_ARGUMENT", "datasetId is required");
                };
                let name = format!("accounts/{account}/datasets/{id}");
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.files.contains_key(&name) {
                    return error(flavor, 409, "ALREADY_EXISTS", "the dataset exists");
                }
                state.files.insert(name.clone(), File { bytes: 0, lines: 0 });
                MockResponse::json(200, json!({"name": name, "state": "UPLOADING", "status": {"code": "OK", "message": ""}, "exampleCount": req.pointer("/dataset/exampleCount").cloned().unwrap_or(json!("0")), "userUploaded": {}, "format": "CHAT", "createTime": iso(CREATED)}).to_string())
            }
            ("POST", Some(("datasets", id_upload))) => {
                let Some(id) = id_upload.strip_suffix(":upload") else {
                    return error(flavor, 404, "NOT_FOUND", "no such resource");
                };
                let name = format!("accounts/{account}/datasets/{id}");
                if !self.state.lock().unwrap_or_else(|e| e.into_inner()).files.contains_key(&name) {
                    return error(flavor, 404, "NOT_FOUND", &format!("dataset {name} does not exist"));
                }
                let (content, filename) = match read_upload(headers, body).await {
                    Ok((_, filename, content)) => (content, filename),
                    Err(message) => return error(flavor, 400, "INVALID_ARGUMENT", &message),
                };
                let lines = match count_lines(&content) {
                    Ok(lines) => lines,
                    Err(message) => return error(flavor, 400, "INVALID_ARGUMENT", &message),
                };
                self.state.lock().unwrap_or_else(|e| e.into_inner()).files.insert(name, File { bytes: content.len(), lines });
                MockResponse::json(200, json!({"filenameToSignedUrls": {}, "bytes": content.len(), "filename": filename.unwrap_or_default()}).to_string())
            }
            ("POST", None) if resource == "supervisedFineTuningJobs" => {
                let Ok(Value::Object(mut req)) = serde_json::from_slice::<Value>(&body) else {
                    return error(flavor, 400, "INVALID_ARGUMENT", "the body must be a JSON object");
                };
                // The same lifecycle as the others, read through OpenAI-style fields.
                let mut translated = json!({
                    "model": req.remove("baseModel").unwrap_or(Value::Null),
                    "training_file": req.remove("dataset").unwrap_or(Value::Null),
                    "suffix": req.get("displayName").cloned().unwrap_or(json!("")),
                    "n_epochs": req.get("epochs").cloned().unwrap_or(json!(1)),
                });
                if let Some(v) = req.remove("evaluationDataset") {
                    translated["validation_file"] = v;
                }
                let bytes = serde_json::to_vec(&translated).unwrap_or_default();
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                state.account = account.to_owned();
                state.create(flavor, &bytes)
            }
            ("GET", Some(("supervisedFineTuningJobs", id))) => self.state.lock().unwrap_or_else(|e| e.into_inner()).read(flavor, id),
            ("POST", Some(("supervisedFineTuningJobs", id_cancel))) => match id_cancel.strip_suffix(":cancel") {
                Some(id) => {
                    let response = self.state.lock().unwrap_or_else(|e| e.into_inner()).cancel(flavor, id);
                    if response.status == 200 { MockResponse::json(200, "{}") } else { response }
                }
                None => error(flavor, 404, "NOT_FOUND", "no such resource"),
            },
            _ => error(flavor, 404, "NOT_FOUND", &format!("mock: no Fireworks endpoint {method} {rest}")),
        }
    }

    async fn upload(&self, flavor: Flavor, headers: &HeaderMap, body: Bytes) -> MockResponse {
        let (purpose, filename, content) = match read_upload(headers, body).await {
            Ok(parts) => parts,
            Err(message) => return error(flavor, 400, "invalid_request_error", &message),
        };
        if purpose.as_deref() != Some("fine-tune") {
            return error(flavor, 400, "invalid_request_error", "purpose must be fine-tune");
        }
        let lines = match count_lines(&content) {
            Ok(lines) => lines,
            Err(message) => return error(flavor, 400, "invalid_file_format", &message),
        };
        let filename = filename.unwrap_or_else(|| "file.jsonl".into());
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.next += 1;
        let id = match flavor {
            Flavor::Mistral => uuid_like(state.next),
            _ => format!("file-mock{:016}", state.next),
        };
        state.files.insert(id.clone(), File { bytes: content.len(), lines });
        let object = match flavor {
            Flavor::OpenAi => json!({"id": id, "object": "file", "bytes": content.len(), "created_at": CREATED, "filename": filename, "purpose": "fine-tune", "status": "processed", "expires_at": null, "status_details": null}),
            Flavor::Mistral => json!({"id": id, "object": "file", "bytes": content.len(), "created_at": CREATED, "filename": filename, "purpose": "fine-tune", "sample_type": "instruct", "num_lines": lines, "source": "upload"}),
            // Fireworks uploads go to a dataset (`fireworks`), not here.
            Flavor::Together | Flavor::Fireworks => json!({"id": id, "object": "file", "created_at": CREATED, "filename": filename, "bytes": content.len(), "purpose": "fine-tune", "Processed": true, "FileType": "jsonl", "LineCount": lines}),
        };
        MockResponse::json(200, object.to_string())
    }
}

impl State {
    fn create(&mut self, flavor: Flavor, body: &[u8]) -> MockResponse {
        let Ok(req @ Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
            return error(flavor, 400, "invalid_request_error", "the body must be a JSON object");
        };
        let Some(model) = req.get("model").and_then(Value::as_str).map(str::to_owned) else {
            return error(flavor, 400, "invalid_request_error", "model is required");
        };
        let (training_file, validation_file) = match flavor {
            Flavor::Mistral => (
                req.get("training_files")
                    .and_then(Value::as_array)
                    .and_then(|f| f.first())
                    .and_then(|f| f.get("file_id").or(Some(f)))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                req.get("validation_files").and_then(Value::as_array).and_then(|f| f.first()).and_then(Value::as_str).map(str::to_owned),
            ),
            _ => (
                req.get("training_file").and_then(Value::as_str).map(str::to_owned),
                req.get("validation_file").and_then(Value::as_str).map(str::to_owned),
            ),
        };
        let Some(training_file) = training_file else {
            return error(flavor, 400, "invalid_request_error", "a training file is required");
        };
        let Some(file) = self.files.get(&training_file) else {
            return error(flavor, 400, "invalid_request_error", &format!("file {training_file} does not exist"));
        };
        if let Some(v) = &validation_file
            && !self.files.contains_key(v)
        {
            return error(flavor, 400, "invalid_request_error", &format!("file {v} does not exist"));
        }
        if file.lines < 1 {
            return error(flavor, 400, "invalid_training_file", "the training file has no examples");
        }
        let epochs = match flavor {
            Flavor::OpenAi => req
                .pointer("/method/supervised/hyperparameters/n_epochs")
                .or_else(|| req.pointer("/method/dpo/hyperparameters/n_epochs"))
                .and_then(Value::as_u64),
            Flavor::Mistral => req.pointer("/hyperparameters/epochs").and_then(Value::as_f64).map(|e| e.ceil() as u64),
            Flavor::Together | Flavor::Fireworks => req.get("n_epochs").and_then(Value::as_u64),
        }
        .unwrap_or(if matches!(flavor, Flavor::Together | Flavor::Fireworks) { 1 } else { 3 });
        self.next += 1;
        let id = match flavor {
            Flavor::OpenAi => format!("ftjob-mock{:014}", self.next),
            Flavor::Mistral => uuid_like(self.next),
            Flavor::Together => format!("ft-mock{:016}", self.next),
            Flavor::Fireworks => format!("mock{:012}", self.next),
        };
        let job = Job {
            flavor,
            id: id.clone(),
            account: self.account.clone(),
            model,
            suffix: req.get("suffix").and_then(Value::as_str).unwrap_or_default().to_owned(),
            training_file,
            validation_file,
            epochs,
            created: CREATED + self.next,
            step: 0,
            cancelled: false,
            tokens: (file.bytes as u64 / 4) * epochs,
            events: Vec::new(),
        };
        let object = job.object();
        self.jobs.insert(id, job);
        MockResponse::json(200, object.to_string())
    }

    fn read(&mut self, flavor: Flavor, id: &str) -> MockResponse {
        let Some(job) = self.jobs.get_mut(id).filter(|j| j.flavor == flavor) else {
            return error(flavor, 404, "not_found", &format!("no job {id}"));
        };
        job.advance();
        MockResponse::json(200, job.object().to_string())
    }

    fn events(&mut self, flavor: Flavor, id: &str, query: &str) -> MockResponse {
        let Some(job) = self.jobs.get(id).filter(|j| j.flavor == flavor) else {
            return error(flavor, 404, "not_found", &format!("no job {id}"));
        };
        // Newest first; `after` pages back in time (OpenAI's cursor), `limit` caps a page.
        let mut data: Vec<Value> = job.events.iter().rev().cloned().collect();
        if let Some(after) = query.split('&').find_map(|p| p.strip_prefix("after="))
            && let Some(i) = data.iter().position(|e| e["id"] == after)
        {
            data.drain(..=i);
        }
        let limit = query.split('&').find_map(|p| p.strip_prefix("limit=")).and_then(|l| l.parse().ok()).unwrap_or(20);
        let has_more = data.len() > limit;
        data.truncate(limit);
        match flavor {
            Flavor::Together => MockResponse::json(200, json!({"object": "list", "data": data}).to_string()),
            _ => MockResponse::json(200, json!({"object": "list", "data": data, "has_more": has_more}).to_string()),
        }
    }

    fn cancel(&mut self, flavor: Flavor, id: &str) -> MockResponse {
        let Some(job) = self.jobs.get_mut(id).filter(|j| j.flavor == flavor) else {
            return error(flavor, 404, "not_found", &format!("no job {id}"));
        };
        if job.finished() {
            return error(flavor, 400, "invalid_request_error", "the job has already finished and cannot be cancelled");
        }
        job.cancelled = true;
        job.event("info", "Fine-tuning job cancelled", None);
        MockResponse::json(200, job.object().to_string())
    }
}

impl Job {
    fn failing(&self) -> bool {
        self.suffix.contains("fail")
    }

    fn finished(&self) -> bool {
        self.cancelled || self.step >= 3
    }

    fn advance(&mut self) {
        if self.finished() {
            return;
        }
        self.step += 1;
        match self.step {
            1 => self.event("info", "Validated training file", None),
            2 => {
                self.event("info", "Fine-tuning job started", None);
                self.event("info", "Step 1/2: training loss=1.2500", Some((1, 1.25, Some(1.5))));
            }
            _ if self.failing() => self.event("error", "Training failed: the training file has too few usable examples.", None),
            _ => {
                self.event("info", "Step 2/2: training loss=0.6250", Some((2, 0.625, Some(0.9))));
                self.event("info", "The job has successfully completed", None);
            }
        }
    }

    fn event(&mut self, level: &str, message: &str, metrics: Option<(u64, f64, Option<f64>)>) {
        let n = self.events.len() + 1;
        let created = self.created + n as u64;
        let event = match self.flavor {
            Flavor::OpenAi => {
                let data = metrics.map(|(step, train, valid)| json!({"step": step, "train_loss": train, "valid_loss": valid, "total_steps": 2}));
                json!({"object": "fine_tuning.job.event", "id": format!("ftevent-{}-{n}", self.id), "created_at": created, "level": level, "message": message, "data": data, "type": if metrics.is_some() { "metrics" } else { "message" }})
            }
            Flavor::Mistral => json!({"name": message, "data": metrics.map(|(step, train, valid)| json!({"step_number": step, "train_loss": train, "valid_loss": valid})), "created_at": created}),
            Flavor::Fireworks => json!({"message": message}),
            Flavor::Together => {
                let mut e = json!({"object": "fine-tune-event", "created_at": iso(created), "level": level, "message": message, "type": if metrics.is_some() { "checkpoint_save" } else { "job_start" }});
                if let Some((step, _, _)) = metrics {
                    e["step"] = json!(step);
                }
                e
            }
        };
        self.events.push(event);
    }

    fn status(&self) -> &'static str {
        let failed = self.step >= 3 && self.failing();
        match (self.flavor, self.cancelled, failed, self.step) {
            (Flavor::OpenAi, true, _, _) => "cancelled",
            (Flavor::OpenAi, _, true, _) => "failed",
            (Flavor::OpenAi, _, _, 0) => "validating_files",
            (Flavor::OpenAi, _, _, 1) => "queued",
            (Flavor::OpenAi, _, _, 2) => "running",
            (Flavor::OpenAi, _, _, _) => "succeeded",
            (Flavor::Mistral, true, _, _) => "CANCELLED",
            (Flavor::Mistral, _, true, _) => "FAILED",
            (Flavor::Mistral, _, _, 0) => "QUEUED",
            (Flavor::Mistral, _, _, 1) => "VALIDATING",
            (Flavor::Mistral, _, _, 2) => "RUNNING",
            (Flavor::Mistral, _, _, _) => "SUCCESS",
            (Flavor::Together, true, _, _) => "cancelled",
            (Flavor::Together, _, true, _) => "error",
            (Flavor::Together, _, _, 0) => "pending",
            (Flavor::Together, _, _, 1) => "queued",
            (Flavor::Together, _, _, 2) => "running",
            (Flavor::Together, _, _, _) => "completed",
            (Flavor::Fireworks, true, _, _) => "JOB_STATE_CANCELLED",
            (Flavor::Fireworks, _, true, _) => "JOB_STATE_FAILED",
            (Flavor::Fireworks, _, _, 0) => "JOB_STATE_VALIDATING",
            (Flavor::Fireworks, _, _, 1) => "JOB_STATE_PENDING",
            (Flavor::Fireworks, _, _, 2) => "JOB_STATE_RUNNING",
            (Flavor::Fireworks, _, _, _) => "JOB_STATE_COMPLETED",
        }
    }

    /// The tuned model's id, in each provider's format, once the job succeeded.
    fn tuned_model(&self) -> Option<String> {
        if self.step < 3 || self.cancelled || self.failing() {
            return None;
        }
        let short = &self.id[self.id.len().saturating_sub(8)..];
        Some(match self.flavor {
            Flavor::OpenAi => format!("ft:{}:fungible-mock:{}:{short}", self.model, self.suffix),
            Flavor::Mistral => format!("ft:{}:0a1b2c3d:20261207:{short}", self.model),
            Flavor::Together => format!("fungible-mock/{}-{}-{short}", self.model.rsplit('/').next().unwrap_or(&self.model), self.suffix),
            Flavor::Fireworks => format!("accounts/{}/models/{}-{short}", self.account, self.model.rsplit('/').next().unwrap_or(&self.model)),
        })
    }

    fn object(&self) -> Value {
        let status = self.status();
        let done = self.finished();
        let tuned = self.tuned_model();
        let trained = tuned.as_ref().map(|_| self.tokens);
        let failed = matches!(status, "failed" | "FAILED" | "error" | "JOB_STATE_FAILED");
        match self.flavor {
            Flavor::OpenAi => json!({
                "object": "fine_tuning.job", "id": self.id, "model": self.model, "created_at": self.created,
                "finished_at": if done { Some(self.created + 100) } else { None }, "fine_tuned_model": tuned,
                "organization_id": "org-fungiblemock", "result_files": [], "status": status,
                "validation_file": self.validation_file, "training_file": self.training_file,
                "hyperparameters": {"n_epochs": self.epochs, "batch_size": 1, "learning_rate_multiplier": 1.8},
                "trained_tokens": trained,
                "error": if failed { json!({"code": "invalid_training_file", "message": "The training file has too few usable examples.", "param": "training_file"}) } else { Value::Null },
                "seed": 42, "estimated_finish": null, "integrations": [], "metadata": null,
                "user_provided_suffix": if self.suffix.is_empty() { None } else { Some(&self.suffix) },
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": self.epochs, "batch_size": 1, "learning_rate_multiplier": 1.8}}}
            }),
            Flavor::Mistral => json!({
                "id": self.id, "object": "job", "auto_start": true, "model": self.model, "status": status,
                "job_type": "completion", "created_at": self.created, "modified_at": self.created + u64::from(self.step),
                "training_files": [self.training_file], "validation_files": self.validation_file.iter().collect::<Vec<_>>(),
                "hyperparameters": {"training_steps": 2, "learning_rate": 0.0001, "epochs": self.epochs},
                "fine_tuned_model": tuned, "suffix": self.suffix, "integrations": [], "trained_tokens": trained,
                "metadata": {"expected_duration_seconds": 60, "cost": 4.0, "cost_currency": "USD", "train_tokens_per_step": 1000, "train_tokens": self.tokens, "data_tokens": self.tokens / self.epochs.max(1)},
                "events": self.events, "checkpoints": []
            }),
            Flavor::Fireworks => json!({
                "name": format!("accounts/{}/supervisedFineTuningJobs/{}", self.account, self.id),
                "displayName": self.suffix, "dataset": self.training_file, "evaluationDataset": self.validation_file,
                "baseModel": self.model, "outputModel": tuned, "state": status,
                "status": if failed { json!({"code": "INVALID_ARGUMENT", "message": "The training file has too few usable examples."}) } else { json!({"code": "OK", "message": ""}) },
                "epochs": self.epochs, "learningRate": 0.0001, "loraRank": 8, "createTime": iso(self.created),
                "jobProgress": {"percent": u32::min(self.step, 3) * 33, "epoch": self.epochs, "inputTokens": trained.map(|t| t.to_string())}
            }),
            Flavor::Together => json!({
                "id": self.id, "status": status, "created_at": iso(self.created), "updated_at": iso(self.created + u64::from(self.step)),
                "user_id": "user_fungiblemock", "owner_address": "mock@example.com", "total_price": 0, "token_count": trained,
                "events": self.events, "model": self.model, "model_output_name": tuned, "n_epochs": self.epochs,
                "training_file": self.training_file, "validation_file": self.validation_file, "suffix": self.suffix,
                "training_type": {"type": "Lora", "lora_r": 8, "lora_alpha": 8}, "training_method": {"method": "sft"},
                "learning_rate": 0.00001
            }),
        }
    }
}

fn error(flavor: Flavor, status: u16, code: &str, message: &str) -> MockResponse {
    let body = match flavor {
        Flavor::Mistral => json!({"object": "error", "message": message, "type": code, "param": null, "code": null}),
        Flavor::Fireworks => json!({"code": code, "message": message}),
        _ => json!({"error": {"message": message, "type": code, "param": null, "code": code}}),
    };
    MockResponse::json(status, body.to_string())
}

/// A request's bearer key is there and not blank.
fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| !k.trim().is_empty())
}

/// A multipart upload's `purpose`, file name (`file_name`, else the file part's) and file.
async fn read_upload(headers: &HeaderMap, body: Bytes) -> Result<(Option<String>, Option<String>, Bytes), String> {
    let boundary = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or("expected a multipart/form-data upload")?;
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let (mut purpose, mut filename, mut content) = (None, None, None);
    while let Ok(Some(field)) = form.next_field().await {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let data = field.bytes().await.map_err(|_| "the upload could not be read")?;
        match name.as_str() {
            "purpose" => purpose = Some(String::from_utf8_lossy(&data).into_owned()),
            "file_name" => filename = Some(String::from_utf8_lossy(&data).into_owned()),
            "file" => {
                filename = filename.or(file_name);
                content = Some(data);
            }
            _ => {}
        }
    }
    Ok((purpose, filename, content.ok_or("no file part")?))
}

/// The examples of a JSONL file, each a JSON object.
fn count_lines(content: &[u8]) -> Result<usize, String> {
    let text = String::from_utf8_lossy(content);
    let mut lines = 0;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if !matches!(serde_json::from_str::<Value>(line), Ok(Value::Object(_))) {
            return Err(format!("line {} is not a JSON object", i + 1));
        }
        lines += 1;
    }
    Ok(lines)
}

fn uuid_like(n: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", n, n)
}

/// Unix seconds as an RFC 3339 UTC time (`2025-12-06T05:46:40.000Z`), as Together writes them.
fn iso(secs: u64) -> String {
    format!("{}.000Z", fungible_types::date::utc_datetime(secs as i64 * 1000, 'T'))
}
