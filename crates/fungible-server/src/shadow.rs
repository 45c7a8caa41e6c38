//! Shadow traffic: a route's `shadow` candidates (`[models.NAME] shadow = [...]`) get a
//! sample of its live requests, off the client's path, and their answers are scored against
//! the one the client got.
//!
//! `recording` asks [`Shadows::pick`] which candidates a request goes to when it records the
//! primary (a whole answer at once, a stream when the tap finishes it) and hands them to
//! [`send`] once the primary answered. Nothing here can change the client's answer, latency,
//! errors or bill: the candidates are called in spawned tasks after the answer is known, a
//! candidate that fails or is slow is only recorded, and its cost counts against the
//! candidate's own daily cap (`daily_usd`), never the client's key.
//!
//! A candidate's call is recorded as an inference of its own (inbound `shadow`, tagged
//! `fungible.shadow_of` = the primary's id and `fungible.shadow_route`), visible to the same
//! key as the primary; its score against the primary is stored as feedback on it (boolean:
//! agreed, score in [0, 1], the comparison in the comment). Per candidate, the tallies since
//! the process started (agreement with its 95% Wilson interval, latency and cost against the
//! primary's, skips) are in `/v1/routes` and on the UI's routes page.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fungible_eval::backend::GatewayBackend;
use fungible_eval::dataset::Item;
use fungible_eval::scorers::{CodeLimits, ScoreContext, Scorer};
use fungible_gateway::routing::config::{RouteConfig, ShadowConfig};
use fungible_gateway::{Gateway, RouteHints};
use fungible_store::{Feedback, FeedbackTarget, PriceTable};
use fungible_eval::scorers::Score;
use fungible_types::{AssistantMessage, ChatRequest};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::recording::RequestFacts;

/// The embedding model of the `similarity` scorer.
const EMBEDDING_MODEL: &str = fungible_gateway::routing::config::DEFAULT_EXAMPLES_EMBEDDING_MODEL;
/// A judge's answer, at most (a score and a sentence).
const JUDGE_MAX_TOKENS: u32 = 512;

/// Every route's shadow candidates.
#[derive(Default, Clone)]
pub struct Shadows {
    routes: BTreeMap<String, Vec<Arc<Candidate>>>,
    /// What the scorers call: embeddings for `similarity`, the judge's model.
    backend: Option<Arc<GatewayBackend>>,
}

impl std::fmt::Debug for Shadows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadows").field("routes", &self.routes.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

/// One route's candidate, and what it did since the process started.
pub(crate) struct Candidate {
    route: String,
    config: ShadowConfig,
    scorer: Scorer,
    /// `max_concurrent` calls in flight at most.
    slots: Arc<Semaphore>,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    sampled: u64,
    skipped_busy: u64,
    skipped_budget: u64,
    answered: u64,
    failed: u64,
    scored: u64,
    agreed: u64,
    score_sum: f64,
    latency_ms_sum: f64,
    primary_latency_ms_sum: f64,
    cost_usd: f64,
    primary_cost_usd: f64,
    /// Answers whose cost is unknown (no price for the model).
    unpriced: u64,
    /// The UTC day `spent_usd` is for.
    day: String,
    spent_usd: f64,
}

impl Tally {
    /// Today's spend, started afresh on a new UTC day.
    fn today(&mut self, now_ms: i64) -> &mut f64 {
        let day = fungible_types::date::utc_date(now_ms);
        if self.day != day {
            self.day = day;
            self.spent_usd = 0.0;
        }
        &mut self.spent_usd
    }
}

/// A candidate's tallies, as `/v1/routes` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowStatus {
    pub target: String,
    pub sample_rate: f64,
    pub score: String,
    /// Requests sampled for it (and selected by its `keys` and `tags`).
    pub sampled: u64,
    /// Sampled but not sent: `max_concurrent` calls were in flight.
    pub skipped_busy: u64,
    /// Sampled but not sent: today's `daily_usd` was spent.
    pub skipped_budget: u64,
    pub answered: u64,
    pub failed: u64,
    pub in_flight: usize,
    /// Answers compared with the primary's, and how many agreed.
    pub scored: u64,
    pub agreed: u64,
    /// `agreed / scored`, with its 95% Wilson interval.
    pub agreement: Option<f64>,
    pub agreement_low: Option<f64>,
    pub agreement_high: Option<f64>,
    pub mean_score: Option<f64>,
    /// Mean latency of its answers, and of the primaries they shadowed.
    pub mean_latency_ms: Option<f64>,
    pub primary_mean_latency_ms: Option<f64>,
    /// What its answers cost, and what the primaries they shadowed cost.
    pub cost_usd: f64,
    pub primary_cost_usd: f64,
    pub unpriced: u64,
    pub spent_today_usd: f64,
    pub daily_usd: f64,
}

/// A candidate's recorded calls (`Store::shadow_stats`) as `/v1/stats/shadows` and the UI
/// show them: with the agreement rate and its 95% Wilson interval.
pub(crate) fn recorded_row(r: &fungible_store::ShadowStatsRow) -> Value {
    let interval = fungible_eval::stats::wilson(r.agreed, r.scored, fungible_eval::stats::Z95);
    let mut row = serde_json::to_value(r).unwrap_or_default();
    row["agreement"] = Value::from((r.scored > 0).then(|| r.agreed as f64 / r.scored as f64));
    row["agreement_low"] = Value::from(interval.map(|i| i.low));
    row["agreement_high"] = Value::from(interval.map(|i| i.high));
    row
}

/// The answer the client got, which the candidates are compared with.
pub(crate) struct Primary {
    pub id: String,
    pub text: String,
    /// Its tool calls, as [`calls_of`] compares them.
    pub calls: Vec<(String, Value)>,
    pub latency_ms: f64,
    pub cost: Option<f64>,
}

impl Primary {
    pub(crate) fn of(id: &str, message: &AssistantMessage, latency_ms: f64, cost: Option<f64>) -> Primary {
        Primary {
            id: id.to_owned(),
            text: message.content.clone().unwrap_or_default(),
            calls: calls_of(message),
            latency_ms,
            cost,
        }
    }
}

/// An answer's tool calls as (name, arguments as JSON), sorted: two answers that call the
/// same tools with the same arguments agree, whatever the calls' ids and order.
fn calls_of(message: &AssistantMessage) -> Vec<(String, Value)> {
    let mut calls: Vec<(String, Value)> = message
        .tool_calls
        .iter()
        .map(|c| (c.name.clone(), serde_json::from_str(&c.arguments).unwrap_or_else(|_| Value::String(c.arguments.clone()))))
        .collect();
    calls.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.to_string().cmp(&b.1.to_string())));
    calls
}

impl Shadows {
    /// The candidates of `routes`, their scorers parsed. `gateway` and `prices` serve the
    /// scorers that call a model (embeddings, a judge).
    pub fn new(routes: &BTreeMap<String, RouteConfig>, gateway: &Gateway, prices: &PriceTable) -> Result<Shadows, String> {
        let mut out = Shadows::default();
        for (name, route) in routes {
            let mut list = Vec::new();
            for (i, config) in route.shadow.iter().enumerate() {
                let at = format!("models.{name}.shadow[{i}].score");
                let scorer = Scorer::parse(&config.score).map_err(|e| format!("{at}: {e}"))?;
                // The models a scorer calls must be served.
                let needs = match &scorer {
                    Scorer::Similarity { .. } => Some(EMBEDDING_MODEL),
                    Scorer::Judge { model, .. } => Some(model.as_str()),
                    _ => None,
                };
                if let Some(model) = needs {
                    gateway.resolve(model).map_err(|e| format!("{at}: {model}: {e}"))?;
                }
                let probe = fungible_types::Usage { input_tokens: 1, ..Default::default() };
                if prices.cost(&config.target.provider, &config.target.model, &probe).is_none() {
                    tracing::warn!(
                        "models.{name}.shadow[{i}]: {} has no price, so daily_usd cannot bound it; add [prices.\"{}\"]",
                        config.target,
                        config.target
                    );
                }
                list.push(Arc::new(Candidate {
                    route: name.clone(),
                    slots: Arc::new(Semaphore::new(config.max_concurrent)),
                    config: config.clone(),
                    scorer,
                    tally: Mutex::new(Tally::default()),
                }));
            }
            if !list.is_empty() {
                out.routes.insert(name.clone(), list);
            }
        }
        if !out.routes.is_empty() {
            out.backend = Some(Arc::new(GatewayBackend::new(gateway.clone(), prices.clone())));
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The candidates a request to `route` goes to: those whose `keys` and `tags` select it
    /// and whose sample it falls in. Never for a shadow call itself.
    pub(crate) fn pick(&self, route: Option<&str>, facts: &RequestFacts) -> Vec<Arc<Candidate>> {
        let Some(list) = route.and_then(|r| self.routes.get(r)) else {
            return Vec::new();
        };
        if facts.is_shadow() {
            return Vec::new();
        }
        list.iter()
            .filter(|c| {
                let keys = &c.config.keys;
                let tags = &c.config.tags;
                (keys.is_empty() || facts.key_id().is_some_and(|k| keys.iter().any(|x| x == k)))
                    && (tags.is_empty() || tags.iter().any(|t| facts.has_tag(t)))
                    && rand::random::<f64>() < c.config.sample_rate
            })
            .cloned()
            .collect()
    }

    /// Each candidate of `route` with its tallies.
    pub fn status(&self, route: &str) -> Vec<ShadowStatus> {
        let Some(list) = self.routes.get(route) else {
            return Vec::new();
        };
        let now = fungible_access::now_ms();
        list.iter()
            .map(|c| {
                let mut t = c.tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let spent_today_usd = *t.today(now);
                let interval = fungible_eval::stats::wilson(t.agreed, t.scored, fungible_eval::stats::Z95);
                let mean = |sum: f64, n: u64| (n > 0).then(|| sum / n as f64);
                ShadowStatus {
                    target: c.config.target.to_string(),
                    sample_rate: c.config.sample_rate,
                    score: c.config.score.clone(),
                    sampled: t.sampled,
                    skipped_busy: t.skipped_busy,
                    skipped_budget: t.skipped_budget,
                    answered: t.answered,
                    failed: t.failed,
                    in_flight: c.config.max_concurrent - c.slots.available_permits(),
                    scored: t.scored,
                    agreed: t.agreed,
                    agreement: mean(t.agreed as f64, t.scored),
                    agreement_low: interval.map(|i| i.low),
                    agreement_high: interval.map(|i| i.high),
                    mean_score: mean(t.score_sum, t.scored),
                    mean_latency_ms: mean(t.latency_ms_sum, t.answered),
                    primary_mean_latency_ms: mean(t.primary_latency_ms_sum, t.answered),
                    cost_usd: t.cost_usd,
                    primary_cost_usd: t.primary_cost_usd,
                    unpriced: t.unpriced,
                    spent_today_usd,
                    daily_usd: c.config.daily_usd,
                }
            })
            .collect()
    }
}

/// Sends `req` (the primary's request, as the primary's target got it) to each of `picked`
/// in the background, within its concurrency and daily spend, and scores each answer
/// against `primary`. Returns at once.
pub(crate) fn send(state: &crate::AppState, picked: Vec<Arc<Candidate>>, req: Arc<ChatRequest>, primary: Primary, facts: &RequestFacts) {
    if picked.is_empty() {
        return;
    }
    let primary = Arc::new(primary);
    let now = fungible_access::now_ms();
    for candidate in picked {
        let permit = {
            let mut t = candidate.tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            t.sampled += 1;
            if *t.today(now) >= candidate.config.daily_usd {
                t.skipped_budget += 1;
                continue;
            }
            match candidate.slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    t.skipped_busy += 1;
                    continue;
                }
            }
        };
        let facts = facts.for_shadow(&candidate.route, &primary.id);
        let (state, req, primary) = (state.clone(), req.clone(), primary.clone());
        tokio::spawn(async move {
            run(&state, &candidate, &req, &primary, &facts).await;
            drop(permit);
        });
    }
}

/// One candidate's call, its record, its score and its tallies.
async fn run(state: &crate::AppState, candidate: &Candidate, req: &ChatRequest, primary: &Primary, facts: &RequestFacts) {
    let mut creq = req.clone();
    creq.model = candidate.config.target.to_string();
    creq.stream = false;
    creq.stream_include_usage = false;
    let started = Instant::now();
    let result = state.gateway.chat_routed(&creq, &RouteHints::default()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    // Recorded as any inference is (its own record, linked by its tags).
    let result = crate::recording::observe_chat(state, Some(facts), &creq, result);
    let answer = match result {
        Ok(routed) => routed,
        Err(e) => {
            tracing::debug!(route = %candidate.route, target = %candidate.config.target, "shadow call failed: {}", e.error);
            candidate.tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner).failed += 1;
            return;
        }
    };
    let cost = answer
        .route
        .target
        .as_ref()
        .and_then(|t| state.recording.prices.cost(&t.provider, &t.model, &answer.value.usage));
    let text = answer.value.message.content.clone().unwrap_or_default();
    {
        let mut t = candidate.tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        t.answered += 1;
        t.latency_ms_sum += latency_ms;
        t.primary_latency_ms_sum += primary.latency_ms;
        t.cost_usd += cost.unwrap_or(0.0);
        t.primary_cost_usd += primary.cost.unwrap_or(0.0);
        t.unpriced += u64::from(cost.is_none());
        *t.today(fungible_access::now_ms()) += cost.unwrap_or(0.0);
    }
    let Some(backend) = state.shadows.backend.as_deref() else {
        return;
    };
    let item = Item {
        id: primary.id.clone(),
        messages: creq.messages.clone(),
        reference: Some(primary.text.clone()),
        schema: None,
        code: None,
        metadata: Default::default(),
    };
    let ctx = ScoreContext {
        backend,
        embedding_model: EMBEDDING_MODEL,
        code_limits: CodeLimits::default(),
        judge_max_tokens: JUDGE_MAX_TOKENS,
    };
    let calls = calls_of(&answer.value.message);
    let score = if !calls.is_empty() || !primary.calls.is_empty() {
        // Tool calls are compared as calls (names and arguments), not as text.
        let same = calls == primary.calls && text.trim() == primary.text.trim();
        Score::pass_fail(same, if same { "the same tool calls" } else { "different tool calls" })
    } else if text.trim().is_empty() && primary.text.trim().is_empty() {
        // Two empty answers say nothing about agreement.
        return;
    } else {
        match candidate.scorer.score(&item, &text, &ctx).await {
            Ok(Some(score)) => score,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(route = %candidate.route, target = %candidate.config.target, "shadow scoring failed: {e}");
                return;
            }
        }
    };
    if let Some(store) = &state.store {
        let feedback = Feedback {
            id: fungible_store::new_id(),
            time_ms: fungible_access::now_ms(),
            target: FeedbackTarget::Inference,
            target_id: facts.id.clone(),
            boolean: Some(score.passed),
            score: Some(score.value),
            comment: Some(format!("shadow of {} ({}): {}", primary.id, candidate.scorer.name(), score.detail)),
            demonstration: None,
        };
        if let Err(e) = store.insert_feedback(&feedback).await {
            tracing::warn!("shadow: could not store the score of {}: {e}", facts.id);
        }
    }
    // Counted once stored, so that a tally read after it finds the score in the store too.
    let mut t = candidate.tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    t.scored += 1;
    t.agreed += u64::from(score.passed);
    t.score_sum += score.value;
    // A judge's call is the candidate's spend too.
    *t.today(fungible_access::now_ms()) += score.cost_usd;
}
