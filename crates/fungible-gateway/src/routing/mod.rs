//! Routing: how a request for a model name becomes calls to provider targets, so that one
//! slow, rate-limited or failing provider does not fail the request.
//!
//! A `[models.NAME]` alias is a **route**: one or more targets, ordered per request by its
//! strategy ([`balance`]), each retried on retryable errors with jittered exponential
//! backoff that never undercuts the upstream's `Retry-After` ([`policy`]), skipped without a
//! call while its circuit breaker is open ([`breaker`]), and followed by the next target when
//! its retries are spent. A non-retryable error (400, 401, 403, 404, 422, ...) ends the
//! request at once and is not sent to the next target: the request, not the target, is at
//! fault. A request naming `PROVIDER/MODEL` directly is one call, not retried (the client
//! chose that exact target; SDKs retry on their own). A request may add an ad-hoc fallback
//! list, OpenRouter's `models` or LiteLLM's `fallbacks` (model names or aliases), tried in
//! order after the model it names; those keys are removed before the request goes upstream.
//! Calls are bounded per request (`[routing] max_attempts_per_request`) and retries over
//! all requests by a token bucket (`[routing] retry_budget`).
//!
//! **Streams** fail over transparently until their first content event (text, reasoning, a
//! tool call, a refusal): the gateway holds the response back until then, so a failure to
//! open or an error before any content is retried or falls back like a non-streamed call.
//! Once content has flowed, a failure is not retried from scratch (the client has output it
//! cannot take back): the stream is **continued** on the next target that can prefill, with
//! the text so far as the start of its answer ([`continuation`]); where none can (or a tool
//! call was under way) the failure reaches the client as the stream's error event, never as
//! a normal finish. The last possible call of a request is handed over at once, without
//! waiting for content. A stream's first content must come within `ttft_timeout_ms` (else it
//! fails over like any retryable error) and, once content flows, no gap between events may
//! exceed `idle_timeout_ms` (a stall is a failure after content).
//!
//! A **context-length error** (the prompt does not fit the model) is not retried on the same
//! target: the route moves on to the next target whose `context_window` is larger, or
//! unknown. The `cheapest` strategy orders targets by the price the binary injects with
//! [`Gateway::with_prices`] (the gateway does not read the price table itself).

pub mod balance;
pub mod breaker;
pub mod config;
mod continuation;
mod execute;
mod guardrails;
mod holdoff;
mod learned;
pub mod policy;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::Duration;

use fungible_providers::capture::Capture;
use fungible_providers::{EventStream, Provider, ProviderKind};
use fungible_types::{ChatRequest, ChatResponse, ErrorKind, ProviderError};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde_json::Value;
use tokio::time::Instant;

use self::balance::{Ewma, Load, Strategy};
use self::breaker::{BreakerState, CircuitBreaker};
use self::config::{RouteConfig, RouteTargetConfig, RoutingConfig, Sticky, StreamTimeouts};
use self::continuation::Continuation;
use self::execute::{AttemptCtx, Limits, Plan, TrackedStream, Watchdog};
use self::policy::{RetryBudget, RetryPolicy};
use crate::target::Target;
use crate::{Gateway, GatewayError};

pub use self::guardrails::Verdict;
pub use self::learned::{Decide, RouteDecision};

/// How a request was routed: returned with every answer (and every failure), so a front end
/// can report the target (`x-fungible-target`) and a log can record the attempts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteInfo {
    /// The alias the client named, or `None` for `PROVIDER/MODEL`.
    pub route: Option<String>,
    /// The target that answered; `None` when none did.
    pub target: Option<Target>,
    /// The A/B variant: the name of the first target the balancer picked, for routes with
    /// several targets (the answer may still come from a fallback: see `target`).
    pub variant: Option<String>,
    /// A learned or adaptive route's decision: what decided the order (a router version, the
    /// A/B test), and its detail.
    pub decision: Option<RouteDecision>,
    /// Every call made, and every target skipped for an open breaker, in order.
    pub attempts: Vec<Attempt>,
    /// Calls made after the answer was handed over: a stream that failed after content and
    /// was continued elsewhere. Filled while the stream runs; read it once it has ended.
    pub continuations: LateAttempts,
}

impl RouteInfo {
    /// `attempts`, then the continuations made so far.
    pub fn all_attempts(&self) -> Vec<Attempt> {
        let mut all = self.attempts.clone();
        all.extend(self.continuations.get());
        all
    }
}

/// Attempts recorded after a routed stream was handed over, shared with the stream.
#[derive(Debug, Clone, Default)]
pub struct LateAttempts(Arc<Mutex<Vec<Attempt>>>);

impl LateAttempts {
    pub fn get(&self) -> Vec<Attempt> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn push(&self, attempt: Attempt) {
        if let Ok(mut v) = self.0.lock() {
            v.push(attempt);
        }
    }
}

impl PartialEq for LateAttempts {
    fn eq(&self, other: &LateAttempts) -> bool {
        self.get() == other.get()
    }
}

/// The blended price of `(provider, model)` in USD per million tokens, `None` when unknown:
/// what the `cheapest` strategy orders by. The binary builds it from the price table.
pub type PriceLookup = Arc<dyn Fn(&str, &str) -> Option<f64> + Send + Sync>;

#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub target: Target,
    pub outcome: AttemptOutcome,
    /// Until the answer (a stream: until its first content, or until it opened when it was
    /// the last chance); zero for a skipped target.
    pub latency: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Ok,
    Failed(ErrorKind),
    /// Not called: its circuit breaker was open.
    CircuitOpen,
    /// Not called: the upstream had asked (`Retry-After`) to be left alone until later.
    Backoff,
}

/// An answer and how it was routed.
#[derive(Debug)]
pub struct Routed<T> {
    pub value: T,
    pub route: RouteInfo,
}

/// A failure and how the request was routed before it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct RouteError {
    pub error: GatewayError,
    pub route: RouteInfo,
}

impl From<RouteError> for GatewayError {
    fn from(e: RouteError) -> GatewayError {
        e.error
    }
}

/// What the front end knows of the request beyond the canonical body: the headers routes
/// are sticky on, and where upstream bodies are noted. Build it with [`Gateway::route_hints`].
#[derive(Debug, Clone, Default)]
pub struct RouteHints {
    /// Lowercase name and value.
    headers: Vec<(String, String)>,
    /// `[store] raw_bodies`: every upstream call made for the request notes its bodies here,
    /// fallbacks and a stream's continuation included.
    capture: Option<Capture>,
}

impl RouteHints {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Notes the raw bodies of the request's upstream calls in `capture`.
    pub fn with_capture(mut self, capture: Option<Capture>) -> RouteHints {
        self.capture = capture;
        self
    }
}

/// One target of one route, as a status report shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetStatus {
    pub route: String,
    /// The variant name.
    pub name: String,
    pub target: Target,
    pub strategy: Strategy,
    /// The balancer's weight (used by the `weighted` strategy).
    pub weight: u32,
    /// A run-time variant's percent of the route's first picks (a promoted tuned model).
    pub share: Option<u32>,
    pub breaker: BreakerState,
    /// How long the upstream still asked (`Retry-After`) to be left alone, if it did.
    pub held_off: Option<Duration>,
    pub in_flight: u64,
    /// Moving average of time to first token (or to the whole answer, non-streamed).
    pub ewma_ttft: Option<Duration>,
    /// Requests whose first pick this target was (the A/B split).
    pub first_picks: u64,
    pub attempts: u64,
    pub failures: u64,
}

/// The live state of one route target: what the breaker and the balancers read.
#[derive(Debug)]
pub(crate) struct TargetHealth {
    /// `None` for a `PROVIDER/MODEL` request (nothing to route around).
    breaker: Option<CircuitBreaker>,
    ttft: Ewma,
    in_flight: AtomicU64,
    first_picks: AtomicU64,
    attempts: AtomicU64,
    failures: AtomicU64,
}

impl TargetHealth {
    fn new(breaker: Option<CircuitBreaker>) -> TargetHealth {
        TargetHealth {
            breaker,
            ttft: Ewma::default(),
            in_flight: AtomicU64::new(0),
            first_picks: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    fn record_success(&self, latency: Duration) {
        self.ttft.observe(latency);
        if let Some(b) = &self.breaker {
            b.record_success();
        }
    }

    fn record_failure(&self, now: Instant) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = &self.breaker {
            b.record_failure(now);
        }
    }
}

#[derive(Debug)]
pub(crate) struct RouteTarget {
    config: RouteTargetConfig,
    health: TargetHealth,
}

/// A route with its live state.
#[derive(Debug)]
pub(crate) struct Route {
    /// The alias; `None` for a `PROVIDER/MODEL` request.
    name: Option<String>,
    targets: Vec<RouteTarget>,
    strategy: Strategy,
    retries: RetryPolicy,
    sticky: Option<Sticky>,
    attempt_timeout: Option<Duration>,
    continue_on_stream_failure: bool,
}

impl Route {
    fn configured(name: &str, config: &RouteConfig) -> Route {
        Route {
            name: Some(name.to_owned()),
            targets: config
                .targets
                .iter()
                .map(|t| RouteTarget {
                    config: t.clone(),
                    health: TargetHealth::new(Some(CircuitBreaker::new(config.breaker))),
                })
                .collect(),
            strategy: config.strategy,
            retries: config.retries,
            sticky: config.sticky.clone(),
            attempt_timeout: config.attempt_timeout,
            continue_on_stream_failure: config.continue_on_stream_failure,
        }
    }

    /// A `PROVIDER/MODEL` request: one call, no retries, no breaker.
    fn direct(target: Target, stream_timeouts: StreamTimeouts) -> Route {
        Route {
            name: None,
            targets: vec![RouteTarget {
                config: RouteTargetConfig::plain(target, stream_timeouts),
                health: TargetHealth::new(None),
            }],
            strategy: Strategy::Fallback,
            retries: RetryPolicy::NONE,
            sticky: None,
            attempt_timeout: None,
            continue_on_stream_failure: true,
        }
    }

    /// The order to try the targets in for one request: the configured targets in their
    /// strategy's order, with a run-time variant (a tuned model) drawn first for its share of
    /// the requests ([`balance::with_shares`]).
    fn order(
        &self,
        req: &ChatRequest,
        hints: &RouteHints,
        prices: Option<&PriceLookup>,
        decider: Option<&Arc<dyn Decide>>,
    ) -> (Vec<usize>, Option<RouteDecision>) {
        let own: Vec<usize> = (0..self.targets.len()).filter(|&i| self.targets[i].config.share.is_none()).collect();
        let shares: Vec<(usize, u32)> =
            self.targets.iter().enumerate().filter_map(|(i, t)| Some((i, t.config.share?))).collect();
        let key = match &self.sticky {
            Some(Sticky::User) => req.user.as_deref(),
            Some(Sticky::Header(name)) => hints.header(name),
            None => None,
        };
        if matches!(self.strategy, Strategy::Learned | Strategy::Adaptive) {
            let decided = match decider {
                Some(decider) => {
                    let targets: Vec<Target> = own.iter().map(|&i| self.targets[i].config.target.clone()).collect();
                    Some(learned::decide(decider, req, &targets, key))
                }
                None if self.strategy == Strategy::Learned => Some((
                    (0..own.len()).collect(),
                    RouteDecision::none("no router is trained for this route yet (fungible route train)"),
                )),
                // An adaptive test with no feedback read yet: an even draw, below.
                None => None,
            };
            if let Some((order, decision)) = decided {
                let own_order = order.into_iter().map(|j| own[j]).collect();
                return (balance::with_shares(own_order, &shares, &mut rand::rng()), Some(decision));
            }
        }
        let loads: Vec<Load> = own
            .iter()
            .map(|&i| &self.targets[i])
            .map(|t| Load {
                weight: t.config.weight,
                ewma_ttft: t.health.ttft.get(),
                in_flight: t.health.in_flight.load(Ordering::Relaxed),
                price: match (self.strategy, prices) {
                    (Strategy::Cheapest, Some(prices)) => prices(&t.config.target.provider, &t.config.target.model),
                    _ => None,
                },
            })
            .collect();
        let order = match key {
            // A sticky key keeps its variant too.
            Some(key) => {
                let mut rng = SmallRng::seed_from_u64(balance::sticky_seed(self.name.as_deref().unwrap_or_default(), key));
                self.ordered(&own, &loads, &shares, &mut rng)
            }
            None => self.ordered(&own, &loads, &shares, &mut rand::rng()),
        };
        (order, None)
    }

    fn ordered(&self, own: &[usize], loads: &[Load], shares: &[(usize, u32)], rng: &mut impl rand::Rng) -> Vec<usize> {
        let own_order = balance::order(self.strategy, loads, rng).into_iter().map(|j| own[j]).collect();
        balance::with_shares(own_order, shares, rng)
    }
}

/// Every configured route with its live state, and the limits over all of them.
#[derive(Debug)]
pub(crate) struct Routing {
    /// The routes requests resolve through: the configured ones with the overlays applied
    /// ([`Gateway::set_overlays`]). Swapped whole, so a request sees one consistent map.
    routes: ArcSwap<BTreeMap<String, Arc<Route>>>,
    /// The configured routes as built at start, kept so that a route no overlay touches keeps
    /// its breakers and load figures across swaps.
    configured: BTreeMap<String, (RouteConfig, Arc<Route>)>,
    /// The overlays applied now.
    overlays: Mutex<Vec<RouteOverlay>>,
    budget: RetryBudget,
    max_attempts: u32,
    /// Upstreams that asked (`Retry-After`) not to be called before a time.
    holds: holdoff::HoldOffs,
    /// The headers some route is sticky on, lowercase.
    sticky_headers: Vec<String>,
    /// Stream timeouts of `PROVIDER/MODEL` requests.
    direct_timeouts: StreamTimeouts,
    /// Set once at start (`Gateway::with_prices`).
    prices: Prices,
    /// Learned and adaptive routes' deciders by route name (`Gateway::set_deciders`), apart
    /// from the routes so that overlays leave them be.
    deciders: ArcSwap<BTreeMap<String, Arc<dyn Decide>>>,
}

#[derive(Default)]
struct Prices(std::sync::OnceLock<PriceLookup>);

impl std::fmt::Debug for Prices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "Prices(set)" } else { "Prices(unset)" })
    }
}

impl Routing {
    pub(crate) fn new(routes: &BTreeMap<String, RouteConfig>, limits: &RoutingConfig) -> Routing {
        let mut sticky_headers: Vec<String> = routes
            .values()
            .filter_map(|r| match &r.sticky {
                Some(Sticky::Header(name)) => Some(name.clone()),
                _ => None,
            })
            .collect();
        sticky_headers.sort();
        sticky_headers.dedup();
        let configured: BTreeMap<String, (RouteConfig, Arc<Route>)> = routes
            .iter()
            .map(|(name, r)| (name.clone(), (r.clone(), Arc::new(Route::configured(name, r)))))
            .collect();
        Routing {
            routes: ArcSwap::from_pointee(configured.iter().map(|(name, (_, route))| (name.clone(), route.clone())).collect()),
            configured,
            overlays: Mutex::new(Vec::new()),
            budget: RetryBudget::new(limits.retry_budget),
            max_attempts: limits.max_attempts_per_request,
            holds: holdoff::HoldOffs::default(),
            sticky_headers,
            direct_timeouts: limits.stream_timeouts,
            prices: Prices::default(),
            deciders: ArcSwap::from_pointee(BTreeMap::new()),
        }
    }
}

/// A model that appeared while the gateway runs (a fine-tuned model): served as a route of
/// its own under `route`, or, when `route` names a configured route, added to it as a
/// variant that gets `percent` of the route's first picks (the route's own targets share the
/// rest in their configured proportions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOverlay {
    pub route: String,
    pub target: Target,
    /// The variant's share of a configured route's first picks, 1 to 99 (ignored for a
    /// route of its own).
    pub percent: u32,
}

/// One model name a request may be answered under, and the targets behind it
/// ([`Gateway::reachable`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Leg {
    /// The name as the client wrote it: an alias or `PROVIDER/MODEL`.
    pub name: String,
    /// Whether `name` is a configured route (alias).
    pub is_route: bool,
    pub targets: Vec<Target>,
}

/// The keys of a per-request fallback list, OpenRouter's and LiteLLM's spelling.
const FALLBACK_KEYS: [&str; 2] = ["models", "fallbacks"];

fn bad_request(message: String) -> GatewayError {
    GatewayError::Provider(ProviderError::invalid_request("fungible", message))
}

/// The request without the fallback-list keys, and the model names in them, each with the
/// path it came from (`models[1]`) for errors.
type Fallbacks = Vec<(String, String)>;

fn split_fallbacks(req: &ChatRequest) -> Result<(Cow<'_, ChatRequest>, Fallbacks), GatewayError> {
    if !FALLBACK_KEYS.iter().any(|k| req.extra_body.contains_key(*k)) {
        return Ok((Cow::Borrowed(req), Vec::new()));
    }
    let mut owned = req.clone();
    let mut names = Vec::new();
    for key in FALLBACK_KEYS {
        let Some(value) = owned.extra_body.remove(key) else { continue };
        let Value::Array(items) = value else {
            return Err(bad_request(format!("{key}: expected an array of model names")));
        };
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Value::String(name) if !name.is_empty() => names.push((format!("{key}[{i}]"), name)),
                _ => return Err(bad_request(format!("{key}[{i}]: expected a model name"))),
            }
        }
    }
    Ok((Cow::Owned(owned), names))
}

/// `req` as `target` gets it: with the target's params and extra body over the client's, and
/// without the client's fields of another vendor family (`extra_body_vendor`).
pub(crate) fn request_for<'r>(req: &'r ChatRequest, target: &RouteTarget, kind: ProviderKind) -> Cow<'r, ChatRequest> {
    let c = &target.config;
    let foreign = !req.extra_body.is_empty() && req.extra_body_vendor.is_some_and(|v| kind.family() != Some(v));
    if c.params.is_empty() && c.extra_body.is_empty() && !foreign {
        return Cow::Borrowed(req);
    }
    let mut owned = req.clone();
    if foreign {
        tracing::debug!(
            fields = ?owned.extra_body.keys().collect::<Vec<_>>(),
            target = %c.target,
            "dropping another vendor's fields for this target"
        );
        owned.extra_body.clear();
    }
    c.params.apply(&mut owned);
    for (key, value) in &c.extra_body {
        owned.extra_body.insert(key.clone(), value.clone());
    }
    Cow::Owned(owned)
}

impl Gateway {
    /// Keeps, of a request's headers, the ones some route is sticky on (none, unless a
    /// route says `sticky = "header:NAME"`), for [`Gateway::chat_routed`].
    pub fn route_hints<'a>(&self, headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> RouteHints {
        let wanted = &self.inner.routing.sticky_headers;
        if wanted.is_empty() {
            return RouteHints::default();
        }
        let headers = headers
            .into_iter()
            .filter_map(|(name, value)| {
                let name = name.to_ascii_lowercase();
                wanted.contains(&name).then(|| (name, value.to_owned()))
            })
            .collect();
        RouteHints { headers, capture: None }
    }

    /// One whole response, routed: retries, fallbacks and breakers as the model's route says.
    pub async fn chat_routed(&self, req: &ChatRequest, hints: &RouteHints) -> Result<Routed<ChatResponse>, RouteError> {
        let (req, plan) = self.plan(req, hints).map_err(|error| RouteError { error, route: RouteInfo::default() })?;
        let req: &ChatRequest = &req;
        let capture = hints.capture.as_ref();
        let (route, result) = execute::execute(self.limits(), plan, self.inner.request_timeout, |ctx: AttemptCtx| async move {
            let target = &ctx.route.targets[ctx.index];
            let provider = self.provider_of(&target.config.target)?;
            provider.chat(&request_for(req, target, provider.kind()), &target.config.target.model, capture).await
        })
        .await;
        match result {
            Ok(value) => Ok(Routed { value, route }),
            Err(error) => Err(RouteError { error: error.into(), route }),
        }
    }

    /// A stream, routed. It resolves once a target's stream produced its first content (or,
    /// for the last target left to try, once it opened); see the module docs.
    pub async fn chat_stream_routed(&self, req: &ChatRequest, hints: &RouteHints) -> Result<Routed<EventStream>, RouteError> {
        let (req, plan) = self.plan(req, hints).map_err(|error| RouteError { error, route: RouteInfo::default() })?;
        let candidates: Vec<(Arc<Route>, usize)> =
            plan.legs.iter().flat_map(|(route, order)| order.iter().map(move |&i| (route.clone(), i))).collect();
        let request: &ChatRequest = &req;
        let capture = hints.capture.as_ref();
        let (route, result) = execute::execute(self.limits(), plan, self.inner.request_timeout, |ctx: AttemptCtx| async move {
            let target = &ctx.route.targets[ctx.index];
            let provider = self.provider_of(&target.config.target)?;
            let timeouts = target.config.stream_timeouts;
            let started = Instant::now();
            let upstream_request = request_for(request, target, provider.kind());
            let open = provider.chat_stream(&upstream_request, &target.config.target.model, capture);
            let stream = match timeouts.ttft {
                Some(ttft) => tokio::time::timeout(ttft, open).await.map_err(|_| {
                    ProviderError::new(
                        ErrorKind::Timeout,
                        &target.config.target.provider,
                        format!("no first token within {} ms (ttft_timeout_ms)", ttft.as_millis()),
                    )
                })??,
                None => open.await?,
            };
            let stream: EventStream = if Watchdog::needed(timeouts.ttft, timeouts.idle) {
                Box::pin(Watchdog::new(stream, &target.config.target.provider, started, timeouts.ttft, timeouts.idle))
            } else {
                stream
            };
            let stream = if ctx.last_chance { stream } else { execute::until_first_content(stream).await? };
            let answered = (ctx.route.clone(), ctx.index);
            Ok::<_, ProviderError>((Box::pin(TrackedStream::new(stream, ctx.in_flight)) as EventStream, answered))
        })
        .await;
        match result {
            Ok((stream, (answered, index))) => {
                if !answered.continue_on_stream_failure {
                    return Ok(Routed { value: stream, route });
                }
                let position = candidates.iter().position(|(r, i)| Arc::ptr_eq(r, &answered) && *i == index);
                // The target that answered first (a cut stream is most often a dropped connection, not
                // a sick upstream), then the ones after it.
                let rest = position.map(|p| candidates[p..].to_vec()).unwrap_or_default();
                let used = u32::try_from(route.attempts.iter().filter(|a| !matches!(a.outcome, AttemptOutcome::CircuitOpen | AttemptOutcome::Backoff)).count())
                    .unwrap_or(u32::MAX);
                let continuation = Continuation {
                    gateway: self.clone(),
                    req: req.into_owned(),
                    rest,
                    calls_left: self.inner.routing.max_attempts.saturating_sub(used),
                    log: route.continuations.clone(),
                    capture: hints.capture.clone(),
                };
                Ok(Routed { value: continuation::continuing(stream, continuation), route })
            }
            Err(error) => Err(RouteError { error: error.into(), route }),
        }
    }

    /// Gives the `cheapest` strategy its prices: `lookup(provider, model)` is the blended USD
    /// per million tokens of a target, `None` when unknown (such targets are tried last). Set
    /// once, at start; a later call is ignored.
    pub fn with_prices(self, lookup: PriceLookup) -> Gateway {
        for (name, route) in self.inner.routing.routes.load().iter() {
            if route.strategy != Strategy::Cheapest {
                continue;
            }
            for t in &route.targets {
                if lookup(&t.config.target.provider, &t.config.target.model).is_none() {
                    tracing::warn!(route = %name, target = %t.config.target, "no price known: tried after the priced targets of this cheapest route (add it under [prices])");
                }
            }
        }
        if self.inner.routing.prices.0.set(lookup).is_err() {
            tracing::warn!("prices were already set; keeping the first");
        }
        self
    }

    /// Every target of every configured route: breaker state, load and the A/B counts.
    pub fn route_status(&self) -> Vec<TargetStatus> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (name, route) in self.inner.routing.routes.load().iter() {
            for t in &route.targets {
                out.push(TargetStatus {
                    route: name.clone(),
                    name: t.config.name.clone(),
                    target: t.config.target.clone(),
                    strategy: route.strategy,
                    weight: t.config.weight,
                    share: t.config.share,
                    breaker: t.health.breaker.as_ref().map_or(BreakerState::Closed, |b| b.state(now)),
                    held_off: self.inner.routing.holds.remaining(&t.config.target, now),
                    in_flight: t.health.in_flight.load(Ordering::Relaxed),
                    ewma_ttft: t.health.ttft.get(),
                    first_picks: t.health.first_picks.load(Ordering::Relaxed),
                    attempts: t.health.attempts.load(Ordering::Relaxed),
                    failures: t.health.failures.load(Ordering::Relaxed),
                });
            }
        }
        out
    }

    /// Serves `overlays` from now on, in place of the ones set before: each becomes a route of
    /// its own or a variant of a configured route (see [`RouteOverlay`]). Requests already
    /// routed keep the routes they started with; a configured route no overlay touches
    /// keeps its breakers and load figures. An overlay whose provider is not enabled is
    /// skipped (and logged): it could not answer.
    pub fn set_overlays(&self, overlays: Vec<RouteOverlay>) {
        let routing = &self.inner.routing;
        let mut applied = routing.overlays.lock().unwrap_or_else(|e| e.into_inner());
        if *applied == overlays {
            return;
        }
        let usable: Vec<&RouteOverlay> = overlays
            .iter()
            .filter(|o| {
                let enabled = self.inner.providers.contains_key(&o.target.provider);
                if !enabled {
                    tracing::warn!(route = %o.route, target = %o.target, "not served: its provider is not enabled");
                }
                enabled
            })
            .collect();
        let mut routes: BTreeMap<String, Arc<Route>> = BTreeMap::new();
        for (name, (config, built)) in &routing.configured {
            let extra: Vec<&&RouteOverlay> = usable.iter().filter(|o| &o.route == name).collect();
            if extra.is_empty() {
                routes.insert(name.clone(), built.clone());
                continue;
            }
            let mut config = config.clone();
            let timeouts = config.targets.first().map_or(routing.direct_timeouts, |t| t.stream_timeouts);
            // Each variant its percent of the first picks, whatever the route's strategy (the
            // route's own targets keep theirs for the rest); together at most 99.
            let mut left = 99u32;
            for o in extra {
                if config.targets.iter().any(|t| t.target == o.target) || left == 0 {
                    continue;
                }
                let percent = o.percent.clamp(1, left);
                left -= percent;
                let mut target = RouteTargetConfig::plain(o.target.clone(), timeouts);
                target.share = Some(percent);
                config.targets.push(target);
            }
            routes.insert(name.clone(), Arc::new(Route::configured(name, &config)));
        }
        let mut own: BTreeMap<String, RouteConfig> = BTreeMap::new();
        for o in usable.iter().filter(|o| !routing.configured.contains_key(&o.route)) {
            let config = own.entry(o.route.clone()).or_insert_with(|| RouteConfig {
                targets: Vec::new(),
                strategy: Strategy::Fallback,
                retries: RetryPolicy::DEFAULT,
                breaker: self::breaker::BreakerConfig::DEFAULT,
                sticky: None,
                attempt_timeout: None,
                continue_on_stream_failure: true,
                examples: None,
                shadow: Vec::new(),
                adaptive: None,
                guardrails: None,
            });
            config.targets.push(RouteTargetConfig::plain(o.target.clone(), routing.direct_timeouts));
        }
        for (name, config) in &own {
            routes.insert(name.clone(), Arc::new(Route::configured(name, config)));
        }
        routing.routes.store(Arc::new(routes));
        *applied = overlays;
    }

    /// The first target of a route (configured or overlaid), if `name` is one.
    pub(crate) fn route_target(&self, name: &str) -> Option<Target> {
        self.inner.routing.routes.load().get(name).and_then(|r| r.targets.first()).map(|t| t.config.target.clone())
    }

    /// The names of the routes served now (configured and overlaid), sorted.
    pub(crate) fn route_names(&self) -> Vec<String> {
        self.inner.routing.routes.load().keys().cloned().collect()
    }

    fn limits(&self) -> Limits<'_> {
        Limits { budget: &self.inner.routing.budget, max_attempts: self.inner.routing.max_attempts, holds: &self.inner.routing.holds }
    }

    fn provider_of(&self, target: &Target) -> Result<&Provider, ProviderError> {
        self.inner.providers.get(&target.provider).map(|entry| &entry.provider).ok_or_else(|| {
            ProviderError::new(ErrorKind::NotFound, &target.provider, "provider is not enabled")
        })
    }

    /// Every target `req` can reach, leg by leg: the model it names, then each of its
    /// per-request fallbacks (`models` / `fallbacks`), each with all of its route's targets
    /// (the balancer's pick, its fallbacks, a context-length fallback and a stream's
    /// continuation all come from these). What admission checks a key's allowance and budget
    /// against; an unknown model is the same error routing would give.
    pub fn reachable(&self, req: &ChatRequest) -> Result<Vec<Leg>, GatewayError> {
        let (req, fallbacks) = split_fallbacks(req)?;
        let names = std::iter::once((None, req.model.as_str()))
            .chain(fallbacks.iter().map(|(path, name)| (Some(path.as_str()), name.as_str())));
        let mut legs: Vec<Leg> = Vec::new();
        let routes = self.inner.routing.routes.load();
        for (path, name) in names {
            if legs.iter().any(|leg| leg.name == name) {
                continue;
            }
            let targets = match routes.get(name) {
                Some(route) => route.targets.iter().map(|t| t.config.target.clone()).collect(),
                None => match (self.resolve(name), path) {
                    (Ok((_, target)), _) => vec![target],
                    (Err(GatewayError::UnknownModel(message)), Some(path)) => {
                        return Err(GatewayError::UnknownModel(format!("{path}: {message}")));
                    }
                    (Err(error), _) => return Err(error),
                },
            };
            legs.push(Leg { name: name.to_owned(), is_route: routes.contains_key(name), targets });
        }
        Ok(legs)
    }

    /// The legs of a request (its model, then its per-request fallbacks) with each leg's
    /// target order, and the request as it goes upstream.
    fn plan<'r>(&self, req: &'r ChatRequest, hints: &RouteHints) -> Result<(Cow<'r, ChatRequest>, Plan), GatewayError> {
        let (req, fallbacks) = split_fallbacks(req)?;
        // A pass-through field may not set what fungible decides: refused before any call.
        fungible_providers::body::check_extra_body(&req.extra_body).map_err(bad_request)?;
        let mut legs: Vec<(Arc<Route>, Vec<usize>)> = Vec::with_capacity(1 + fallbacks.len());
        let mut seen: Vec<&str> = Vec::with_capacity(1 + fallbacks.len());
        let names = std::iter::once((None, req.model.as_str()))
            .chain(fallbacks.iter().map(|(path, name)| (Some(path.as_str()), name.as_str())));
        let routes = self.inner.routing.routes.load();
        let deciders = self.inner.routing.deciders.load();
        let mut decision = None;
        for (path, name) in names {
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            let route = match routes.get(name) {
                Some(route) => route.clone(),
                None => match (self.resolve(name), path) {
                    (Ok((_, target)), _) => Arc::new(Route::direct(target, self.inner.routing.direct_timeouts)),
                    (Err(GatewayError::UnknownModel(message)), Some(path)) => {
                        return Err(GatewayError::UnknownModel(format!("{path}: {message}")));
                    }
                    (Err(error), _) => return Err(error),
                },
            };
            let (order, decided) = route.order(&req, hints, self.inner.routing.prices.0.get(), deciders.get(name));
            if legs.is_empty() {
                decision = decided;
            }
            legs.push((route, order));
        }
        let mut info = RouteInfo { decision, ..RouteInfo::default() };
        if let Some((route, order)) = legs.first() {
            info.route = route.name.clone();
            if let Some(&first) = order.first() {
                let target = &route.targets[first];
                target.health.first_picks.fetch_add(1, Ordering::Relaxed);
                if route.targets.len() > 1 {
                    info.variant = Some(target.config.name.clone());
                }
            }
        }
        Ok((req, Plan { legs, info }))
    }
}

#[cfg(test)]
mod tests;
