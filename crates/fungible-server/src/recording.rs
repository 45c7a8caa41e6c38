//! Recording every inference: what the request path hands to the store (and to the
//! Prometheus metrics, `crate::metrics`).
//!
//! [`facts`] notes, for the request's context (`dispatch::RequestContext`), when a chat
//! request arrived, through which inbound API, and who it is for (`x-fungible-user`,
//! `x-fungible-episode-id`, `x-fungible-tags: k=v,...`, bounded by `crate::tags`; the body's
//! `user` and `metadata` too). `dispatch` hands every routed result, with those facts, to
//! [`observe_chat`] / [`observe_stream`]: a whole answer is recorded at once; a stream's
//! record ([`StreamRecord`]) is made by the stream's one tap (`crate::tap`), which collects
//! its events as they pass (nothing is held back), at its end, its error, or when the client
//! goes away. Recording is a
//! `try_send` into the recorder's queue: the request path never waits on the store.

use std::sync::Arc;
use std::time::Instant;

use fungible_gateway::{AttemptOutcome, RouteError, RouteInfo, Routed};
use fungible_providers::EventStream;
pub use crate::metrics::Metrics;
use fungible_store::{AttemptRecord, AttemptStatus, Bodies, InferenceRecord, PriceTable, Recorder};
use fungible_types::{ChatRequest, ChatResponse};
use serde_json::{Map, Value};

/// Recording settings and sinks, shared by every request (cheap to clone).
#[derive(Clone)]
pub struct Recording {
    pub recorder: Option<Recorder>,
    pub prices: Arc<PriceTable>,
    pub metrics: Arc<Metrics>,
    /// `[store] raw_bodies`: keep each upstream call's raw bodies, at most this many bytes
    /// each; `None` (the default): off.
    pub raw_bodies: Option<usize>,
    /// `[store] durable`: an answer ends only once its record is committed ([`Recording::settled`]).
    pub durable: bool,
}

impl Default for Recording {
    fn default() -> Recording {
        Recording {
            recorder: None,
            prices: Arc::new(PriceTable::builtin()),
            metrics: Arc::new(Metrics::new()),
            raw_bodies: None,
            durable: false,
        }
    }
}

/// How long an answer waits for its record in durable mode when the store is down: the answer
/// then goes out anyway (its record stays queued, and the log says so).
const DURABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Recording {
    /// With `durable`, waits until every record submitted so far (this answer's included) is
    /// committed to the store; otherwise nothing to wait for. Bounded by [`DURABLE_WAIT`].
    pub(crate) fn settled(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static + use<>> {
        let recorder = self.recorder.clone().filter(|_| self.durable)?;
        Some(async move {
            if tokio::time::timeout(DURABLE_WAIT, recorder.flush()).await.is_err() {
                tracing::warn!("durable recording: the store did not commit within {DURABLE_WAIT:?}; answering anyway");
            }
        })
    }

    /// What one record's bodies may hold: the recorder's `max_record_bytes`.
    fn record_cap(&self) -> usize {
        self.recorder.as_ref().map_or(fungible_store::DEFAULT_MAX_RECORD_BYTES, Recorder::max_record_bytes)
    }
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("recorder", &self.recorder)
            .finish_non_exhaustive()
    }
}

/// What the request's context knows about one chat request, for its record.
#[derive(Clone)]
pub(crate) struct RequestFacts {
    /// The id its record will have, told to the client in `x-fungible-inference-id` (for
    /// `/v1/feedback` and `/v1/inferences/{id}`).
    pub(crate) id: String,
    /// The caller's trace (W3C `traceparent`), for the OpenTelemetry spans.
    trace: fungible_telemetry::Parent,
    inbound: &'static str,
    started: Instant,
    time_ms: i64,
    user: Option<String>,
    episode_id: Option<String>,
    tags: Map<String, Value>,
    /// The virtual key's id and tags ([`crate::principal::Principal`]), when auth is on.
    key_id: Option<String>,
    key_tags: Map<String, Value>,
    /// The raw upstream bodies, with `[store] raw_bodies` on.
    pub(crate) capture: Option<fungible_providers::capture::Capture>,
}

/// The inbound API of a shadow candidate's call (`crate::shadow`).
const SHADOW_INBOUND: &str = "shadow";

impl RequestFacts {
    /// These facts with one more tag (one fungible sets, such as `fungible.examples`).
    pub(crate) fn with_tag(&self, key: &str, value: String) -> RequestFacts {
        let mut facts = self.clone();
        facts.tags.insert(key.to_owned(), Value::String(value));
        facts
    }

    /// The facts of a shadow call for the request these facts are of (`crate::shadow`): a
    /// record of its own, starting now, for the same key and user, tagged with the route and
    /// the primary's id.
    pub(crate) fn for_shadow(&self, route: &str, primary_id: &str) -> RequestFacts {
        let mut facts = self.clone();
        facts.id = fungible_store::new_id();
        facts.inbound = SHADOW_INBOUND;
        facts.started = Instant::now();
        facts.time_ms = fungible_store_now_ms();
        facts.capture = None;
        // Not a turn of the client's episode, nor a span of the client's trace.
        facts.episode_id = None;
        facts.trace = fungible_telemetry::Parent::default();
        facts.tags.insert("fungible.shadow_of".into(), Value::String(primary_id.to_owned()));
        facts.tags.insert("fungible.shadow_route".into(), Value::String(route.to_owned()));
        facts
    }

    /// Whether these are a shadow call's facts.
    pub(crate) fn is_shadow(&self) -> bool {
        self.inbound == SHADOW_INBOUND
    }

    pub(crate) fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// Whether the request has `tag` (`k=v`, or a bare `k` for any value), from its headers
    /// or its key.
    pub(crate) fn has_tag(&self, tag: &str) -> bool {
        let (key, value) = match tag.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (tag.trim(), None),
        };
        [&self.tags, &self.key_tags].into_iter().any(|tags| match (tags.get(key), value) {
            (Some(_), None) => true,
            (Some(Value::String(s)), Some(v)) => s == v,
            (Some(Value::Bool(b)), Some(v)) => v.parse::<bool>() == Ok(*b),
            (Some(_), Some(_)) => false,
            (None, _) => false,
        })
    }
}

fn inbound_of(path: &str) -> Option<&'static str> {
    Some(match path {
        "/v1/chat/completions" | "/chat/completions" => "openai_chat",
        "/v1/messages" => "anthropic_messages",
        "/v1/responses" => "openai_responses",
        p if p.starts_with("/v1beta/models/") || p.starts_with("/v1/models/") => "gemini",
        _ => return None,
    })
}

/// The facts of a request to `path` when it is a chat request (else `None`), or a 400 when
/// its `x-fungible-tags` are over the limits (`crate::tags`).
pub(crate) fn facts(
    state: &crate::AppState,
    path: &str,
    headers: &axum::http::HeaderMap,
    principal: Option<&crate::principal::Principal>,
) -> Result<Option<RequestFacts>, crate::error::ApiError> {
    let Some(inbound) = inbound_of(path) else {
        return Ok(None);
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let tags = match header("x-fungible-tags") {
        Some(list) => crate::tags::parse_header(&list)?,
        None => Map::new(),
    };
    Ok(Some(RequestFacts {
        id: fungible_store::new_id(),
        trace: fungible_telemetry::Parent::from_headers(headers),
        inbound,
        started: Instant::now(),
        time_ms: fungible_store_now_ms(),
        user: header("x-fungible-user"),
        episode_id: header("x-fungible-episode-id"),
        tags,
        key_id: principal.map(|p| p.key_id.clone()),
        key_tags: principal.map(|p| tag_map(&p.tags)).unwrap_or_default(),
        capture: state.recording.raw_bodies.map(fungible_providers::capture::Capture::new),
    }))
}

/// A key's tags as recorded tags: `k=v` becomes `"k": "v"`, a bare `t` becomes `"t": true`
/// (stats show both as they were written).
fn tag_map(tags: &[String]) -> Map<String, Value> {
    tags.iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), Value::String(v.trim().to_owned())),
            None => (t.trim().to_owned(), Value::Bool(true)),
        })
        .collect()
}

fn fungible_store_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}


fn gateway_error_class(e: &fungible_gateway::GatewayError) -> String {
    match e {
        fungible_gateway::GatewayError::UnknownModel(_) => "unknown_model".into(),
        fungible_gateway::GatewayError::Provider(p) => p.kind.class().into(),
    }
}

/// Builds the record of one inference.
#[allow(clippy::too_many_arguments)]
fn build(
    state: &crate::AppState,
    req: &ChatRequest,
    route: &RouteInfo,
    response: Option<&ChatResponse>,
    error: Option<String>,
    ttft_ms: Option<f64>,
    stream: bool,
    facts: &RequestFacts,
) -> InferenceRecord {
    let prices = &state.recording.prices;
    let usage = response.map(|r| r.usage).unwrap_or_default();
    // Unknown (`None`) only when tokens were used and their price is unknown: a failure with
    // no answer billed no tokens, so it cost nothing.
    let cost = match &route.target {
        Some(t) => prices.cost(&t.provider, &t.model, &usage),
        None => None,
    }
    .or((error.is_some() && response.is_none()).then_some(0.0));
    // Continuations of a stream that failed after content included (read at its end).
    let all_attempts = route.all_attempts();
    // The usage (and so the cost) is that of the last call that answered; a failed call or
    // a skipped target billed nothing, and an answering call a continuation replaced billed
    // an unknown amount.
    let last_ok = all_attempts
        .iter()
        .rposition(|a| a.outcome == AttemptOutcome::Ok);
    let attempts = all_attempts
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let (status, error) = match a.outcome {
                AttemptOutcome::Ok => (AttemptStatus::Ok, None),
                AttemptOutcome::Failed(kind) => (AttemptStatus::Failed, Some(kind.class().into())),
                AttemptOutcome::CircuitOpen => (AttemptStatus::CircuitOpen, None),
                AttemptOutcome::Backoff => (AttemptStatus::Backoff, None),
            };
            AttemptRecord {
                provider: a.target.provider.clone(),
                model: a.target.model.clone(),
                status,
                error,
                latency_ms: a.latency.as_secs_f64() * 1000.0,
                cost: match a.outcome {
                    AttemptOutcome::Ok if Some(i) == last_ok => cost,
                    AttemptOutcome::Ok => None,
                    AttemptOutcome::Failed(_) | AttemptOutcome::CircuitOpen | AttemptOutcome::Backoff => Some(0.0),
                },
            }
        })
        .collect();
    // The target that answered, or else the last one tried.
    let last_target = route
        .target
        .as_ref()
        .or_else(|| route.attempts.last().map(|a| &a.target));
    let mut tags = req.metadata.clone().unwrap_or_default();
    tags.extend(facts.tags.clone());
    // The key's tags are the operator's, so they win over the client's.
    tags.extend(facts.key_tags.clone());
    // Why a learned route picked its target: the version (a label stats can group by) and the
    // scores (an object, kept with the record but not indexed).
    if let Some(decision) = &route.decision {
        tags.insert("fungible.router".into(), Value::String(decision.by.clone()));
        tags.insert("fungible.router_decision".into(), decision.detail.clone());
    }
    let episode_id = facts.episode_id.clone().or_else(|| {
        if facts.is_shadow() {
            return None;
        }
        tags.get("episode_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    InferenceRecord {
        id: facts.id.clone(),
        time_ms: facts.time_ms,
        inbound: facts.inbound.into(),
        requested_model: req.model.clone(),
        route: route.route.clone(),
        variant: route.variant.clone(),
        provider: last_target.map(|t| t.provider.clone()),
        model: last_target.map(|t| t.model.clone()),
        stream,
        error,
        // Filled by the recorder's writer from the canonical bodies (see `submit`).
        request: Value::Null,
        response: None,
        usage,
        cost,
        ttft_ms,
        latency_ms: facts.started.elapsed().as_secs_f64() * 1000.0,
        user: facts.user.clone().or_else(|| req.user.clone()),
        tags: Value::Object(tags),
        episode_id,
        attempts,
        key_id: facts.key_id.clone(),
        cache_hit: false,
        truncated: false,
        raw: facts.capture.as_ref().map_or_else(Vec::new, |c| {
            c.exchanges()
                .into_iter()
                .map(|e| fungible_store::RawExchange {
                    provider: e.provider,
                    request: e.request,
                    response: e.response,
                    truncated: e.truncated,
                })
                .collect()
        }),
    }
}

/// Hands a record to the metrics, telemetry and the recorder, with the canonical request and
/// response it answered (borrowed: the recorder encodes them as JSON text within
/// `max_record_bytes`; `earlier` is what capping the request before left out).
fn submit(
    state: &crate::AppState,
    record: InferenceRecord,
    trace: &fungible_telemetry::Parent,
    request: &ChatRequest,
    response: Option<&ChatResponse>,
    earlier: Option<fungible_store::Truncation>,
) {
    state.recording.metrics.observe(&record);
    if let Some(telemetry) = &state.telemetry {
        let bodies = Bodies::capped(request, response, state.recording.record_cap());
        let bodies = Bodies { truncation: fungible_store::Truncation::merge(earlier, bodies.truncation), ..bodies };
        telemetry.record(&record, &bodies, trace);
    }
    if let Some(recorder) = &state.recording.recorder {
        recorder.record_with(record, request, response, earlier);
    }
}

/// Records a whole (non-streamed) answer or failure, and hands the result back.
#[allow(clippy::result_large_err)] // The gateway's own result, passed through.
pub(crate) fn observe_chat(
    state: &crate::AppState,
    facts: Option<&RequestFacts>,
    req: &ChatRequest,
    result: Result<Routed<ChatResponse>, RouteError>,
) -> Result<Routed<ChatResponse>, RouteError> {
    let Some(facts) = facts else {
        return result;
    };
    let record = match &result {
        Ok(r) => build(
            state,
            req,
            &r.route,
            Some(&r.value),
            None,
            None,
            false,
            facts,
        ),
        Err(e) => build(
            state,
            req,
            &e.route,
            None,
            Some(gateway_error_class(&e.error)),
            None,
            false,
            facts,
        ),
    };
    let (latency_ms, cost) = (record.latency_ms, record.cost);
    // At most `max_record_bytes` of the request is encoded, however large it is.
    submit(state, record, &facts.trace, req, result.as_ref().ok().map(|r| &r.value), None);
    if let Ok(r) = &result {
        let picked = state.shadows.pick(r.route.route.as_deref(), facts);
        if !picked.is_empty() {
            let primary = crate::shadow::Primary::of(&facts.id, &r.value.message, latency_ms, cost);
            crate::shadow::send(state, picked, Arc::new(req.clone()), primary, facts);
        }
    }
    result
}

/// Records a stream that failed before it started; or, when it started, what its tap
/// (`crate::tap`) needs to record it at its end ([`StreamRecord`]). `None`: not a recorded
/// route.
pub(crate) fn observe_stream(
    state: &crate::AppState,
    facts: Option<&RequestFacts>,
    req: &ChatRequest,
    result: &Result<Routed<EventStream>, RouteError>,
) -> Option<StreamRecord> {
    let facts = facts?;
    match result {
        Err(e) => {
            let record = build(state, req, &e.route, None, Some(gateway_error_class(&e.error)), None, true, facts);
            submit(state, record, &facts.trace, req, None, None);
            None
        }
        Ok(routed) => {
            // The stream outlives the handler's request: it keeps what the record will hold,
            // and the whole request when shadow candidates will get it too.
            let kept = Bodies::capped(req, None, state.recording.record_cap());
            let picked = state.shadows.pick(routed.route.route.as_deref(), facts);
            Some(StreamRecord {
                state: state.clone(),
                req: kept.request,
                truncation: kept.truncation,
                route: routed.route.clone(),
                facts: facts.clone(),
                shadow: (!picked.is_empty()).then(|| (picked, Arc::new(req.clone()))),
            })
        }
    }
}

/// A streamed answer's record, made by its tap once the stream ends, fails or is dropped.
pub(crate) struct StreamRecord {
    state: crate::AppState,
    /// The request as the record keeps it (capped at `max_record_bytes`).
    req: ChatRequest,
    truncation: Option<fungible_store::Truncation>,
    route: RouteInfo,
    facts: RequestFacts,
    /// The shadow candidates sampled for it, and the whole request they get.
    shadow: Option<(Vec<Arc<crate::shadow::Candidate>>, Arc<ChatRequest>)>,
}

impl StreamRecord {
    /// When the request arrived (time to first token is measured from it).
    pub(crate) fn started(&self) -> Instant {
        self.facts.started
    }

    /// Records the answer (`error`: how the stream failed; an answer with text is kept all
    /// the same; `finished`: the stream's finish event passed). Durable mode: the commit,
    /// which the stream's end waits for.
    pub(crate) fn finish(
        self,
        response: &ChatResponse,
        error: Option<String>,
        finished: bool,
        ttft_ms: Option<f64>,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static + use<>> {
        let settled = self.state.recording.settled();
        let answered = error.is_none() || !response.message.content.as_deref().unwrap_or("").is_empty();
        let complete = error.is_none() && finished;
        let record = build(&self.state, &self.req, &self.route, answered.then_some(response), error, ttft_ms, true, &self.facts);
        let (latency_ms, cost) = (record.latency_ms, record.cost);
        submit(&self.state, record, &self.facts.trace, &self.req, answered.then_some(response), self.truncation);
        // Shadows compare with complete answers only.
        if let Some((picked, req)) = self.shadow.filter(|_| complete) {
            let primary = crate::shadow::Primary::of(&self.facts.id, &response.message, latency_ms, cost);
            crate::shadow::send(&self.state, picked, req, primary, &self.facts);
        }
        settled
    }
}

/// Records an answer the response cache served (`crate::cache`): no provider was called, so
/// it has no attempts, costs 0 and is marked `cache_hit`.
pub(crate) fn observe_cache_hit(
    state: &crate::AppState,
    facts: Option<&RequestFacts>,
    req: &ChatRequest,
    response: &ChatResponse,
    route: &RouteInfo,
    stream: bool,
) {
    let Some(facts) = facts else {
        return;
    };
    let mut record = build(state, req, route, Some(response), None, None, stream, facts);
    record.cache_hit = true;
    record.cost = Some(0.0);
    submit(state, record, &facts.trace, req, Some(response), None);
}
