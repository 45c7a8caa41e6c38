//! The routing part of the config: `[models.NAME]` routes (one target or several, a
//! strategy, retries, a circuit breaker, sticky A/B variants) and the global `[routing]`
//! limits. Sections as written (serde, `deny_unknown_fields`) are validated here into
//! [`RouteConfig`] and [`RoutingConfig`]; every error names the config path at fault.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fungible_types::ChatRequest;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::balance::Strategy;
use super::breaker::BreakerConfig;
use super::policy::{RetryBudgetConfig, RetryPolicy};
use crate::config::error::{ConfigError, invalid};
use crate::target::Target;

/// `[models.NAME]`: what a client's `model = "NAME"` stands for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// `PROVIDER/MODEL`: a route with one target.
    pub target: Option<String>,
    /// Several targets, tried in the order `strategy` picks.
    pub targets: Option<Vec<TargetSection>>,
    /// `fallback` (default), `weighted`, `least_latency`, `least_busy`, `cheapest`, `learned`
    /// or `adaptive`.
    pub strategy: Option<Strategy>,
    pub retries: Option<RetriesSection>,
    pub breaker: Option<BreakerSection>,
    /// `weighted` and `adaptive`: `"user"` or `"header:NAME"` keeps each user or session on
    /// one variant.
    pub sticky: Option<String>,
    /// `adaptive` only: the feedback metric and when the test stops.
    pub adaptive: Option<AdaptiveSection>,
    /// Checks on each request before it leaves the gateway.
    pub guardrails: Option<GuardrailsSection>,
    /// Deadline of one try of one target (for a stream: until its first token), so a hung
    /// target falls back in time. Default: whatever is left of `server.request_timeout_secs`.
    pub attempt_timeout_ms: Option<u64>,
    /// Streams: the longest wait for the first content, from the call (default: `[routing]`).
    pub ttft_timeout_ms: Option<u64>,
    /// Streams: the longest silence between events once content flowed (default: `[routing]`).
    pub idle_timeout_ms: Option<u64>,
    /// Whether a stream that fails after content is continued on the next target that can
    /// prefill (default: `[routing]`, which defaults to true).
    pub continue_on_stream_failure: Option<bool>,
    /// Few-shot examples retrieved from a dataset for each request.
    pub examples: Option<ExamplesSection>,
    /// Candidates each sampled request is also sent to, off the client's path, and scored
    /// against the answer the client got.
    pub shadow: Option<Vec<ShadowSection>>,
}

/// `[models.NAME] shadow = [{ target = ..., sample_rate = ... }, ...]`: a candidate model
/// tried on a sample of the route's live traffic (applied by `fungible-server`'s `shadow`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSection {
    /// `PROVIDER/MODEL`.
    pub target: String,
    /// The share of the route's requests also sent to it, in [0, 1].
    pub sample_rate: f64,
    /// How its answer is compared with the client's: `exact`, `normalized`, `numeric`,
    /// `json-equal`, `similarity[:THRESHOLD]` (default, `similarity:0.8`) or `judge:MODEL`.
    pub score: Option<String>,
    /// Calls in flight at most; a sampled request finding none free is skipped (default 4).
    pub max_concurrent: Option<usize>,
    /// USD per UTC day at most; once spent, it is skipped until the next day (default 1).
    pub daily_usd: Option<f64>,
    /// Only requests made with these virtual key ids (default: every key).
    pub keys: Option<Vec<String>>,
    /// Only requests with one of these tags (`k=v` or a bare `k`; default: every request).
    pub tags: Option<Vec<String>>,
}

/// A route's validated shadow candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    pub target: Target,
    pub sample_rate: f64,
    /// The scorer's spec (parsed by `fungible-server`, which has the scorers).
    pub score: String,
    pub max_concurrent: usize,
    pub daily_usd: f64,
    pub keys: Vec<String>,
    pub tags: Vec<String>,
}

pub const DEFAULT_SHADOW_SCORE: &str = "similarity";
pub const DEFAULT_SHADOW_MAX_CONCURRENT: usize = 4;
pub const DEFAULT_SHADOW_DAILY_USD: f64 = 1.0;
/// The scorers a shadow comparison may use (those that compare two answers).
pub const SHADOW_SCORERS: &[&str] = &["exact", "normalized", "numeric", "json-equal", "similarity", "judge"];

fn shadow(section: ShadowSection, at: &str, enabled: &dyn Fn(&str) -> bool) -> Result<ShadowConfig, ConfigError> {
    let target = target_of(&format!("{at}.target"), &section.target, enabled)?;
    if !(0.0..=1.0).contains(&section.sample_rate) {
        return Err(invalid(format!("{at}.sample_rate"), "must be between 0 and 1"));
    }
    let score = section.score.unwrap_or_else(|| DEFAULT_SHADOW_SCORE.to_owned());
    let name = score.split(':').next().unwrap_or_default();
    if !SHADOW_SCORERS.contains(&name) {
        return Err(invalid(format!("{at}.score"), format!("{score:?}: expected one of {}", SHADOW_SCORERS.join(", "))));
    }
    let max_concurrent = section.max_concurrent.unwrap_or(DEFAULT_SHADOW_MAX_CONCURRENT);
    if !(1..=1024).contains(&max_concurrent) {
        return Err(invalid(format!("{at}.max_concurrent"), "must be between 1 and 1024"));
    }
    let daily_usd = section.daily_usd.unwrap_or(DEFAULT_SHADOW_DAILY_USD);
    if !daily_usd.is_finite() || daily_usd < 0.0 {
        return Err(invalid(format!("{at}.daily_usd"), "must be a number of USD, 0 or more"));
    }
    let tags = section.tags.unwrap_or_default();
    if let Some(bad) = tags.iter().find(|t| t.trim().is_empty() || t.split_once('=').is_some_and(|(k, _)| k.trim().is_empty())) {
        return Err(invalid(format!("{at}.tags"), format!("{bad:?}: expected \"key=value\" or \"key\"")));
    }
    Ok(ShadowConfig { target, sample_rate: section.sample_rate, score, max_concurrent, daily_usd, keys: section.keys.unwrap_or_default(), tags })
}

/// `[models.NAME] examples`: the rows of a dataset version nearest to each request's
/// question, inserted as earlier turns (`fungible-datasets`' `fewshot`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExamplesSection {
    /// `NAME@VERSION`, or `NAME` for its latest version when the gateway starts.
    pub dataset: String,
    /// Examples per request at most (default 4).
    pub k: Option<usize>,
    /// Cosine distance (1 − similarity) above which a row is not an example (default 0.5).
    pub max_distance: Option<f32>,
    /// Which rows may be examples: "train" (default), "validation" or "all".
    pub split: Option<String>,
    /// Default: the in-process `local/all-minilm-l6-v2`.
    pub embedding_model: Option<String>,
}

/// `[models.NAME] adaptive = { ... }`: an adaptive A/B test's settings (applied by
/// `fungible-server`'s `adaptive` deciders, with `fungible-router`'s bandit).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveSection {
    /// `boolean` (default: the share of answers rated true) or `score` (the mean score).
    pub metric: Option<String>,
    /// Each variant's least share of requests while the test runs (default 0.1).
    pub min_share: Option<f64>,
    /// How sure the winner must be the best to stop the test (default 0.95).
    pub confidence: Option<f64>,
    /// Rated answers each variant needs before the test may stop (default 100).
    pub min_samples: Option<u64>,
}

/// A route's validated `adaptive` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConfig {
    /// `boolean` or `score`.
    pub metric: AdaptiveMetric,
    pub min_share: f64,
    pub confidence: f64,
    pub min_samples: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdaptiveMetric {
    Boolean,
    Score,
}

fn adaptive(section: AdaptiveSection, at: &str, variants: usize) -> Result<AdaptiveConfig, ConfigError> {
    let metric = match section.metric.as_deref() {
        None | Some("boolean") => AdaptiveMetric::Boolean,
        Some("score") => AdaptiveMetric::Score,
        Some(other) => return Err(invalid(format!("{at}.metric"), format!("{other:?}: expected \"boolean\" or \"score\""))),
    };
    let min_share = section.min_share.unwrap_or(0.1);
    if !(0.0..=1.0 / variants as f64).contains(&min_share) {
        return Err(invalid(format!("{at}.min_share"), format!("must be between 0 and 1/{variants} (one share per variant)")));
    }
    let confidence = section.confidence.unwrap_or(0.95);
    if !(0.5..1.0).contains(&confidence) {
        return Err(invalid(format!("{at}.confidence"), "must be at least 0.5 and below 1"));
    }
    Ok(AdaptiveConfig { metric, min_share, confidence, min_samples: section.min_samples.unwrap_or(100) })
}

/// `[models.NAME] guardrails = { ... }`: input checks each request to the route passes
/// before anything else (`fungible-server`'s dispatch asks [`crate::Gateway::check_input`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardrailsSection {
    /// Regular expressions (Rust syntax); a request whose text matches one is refused (or
    /// flagged).
    pub deny: Option<Vec<String>>,
    /// Words or phrases, matched as whole words, ignoring case.
    pub deny_words: Option<Vec<String>>,
    /// Regular expressions of which a request's user text must match at least one (a topic
    /// the route is for); none: any text.
    pub allow: Option<Vec<String>>,
    /// Words or phrases of which a request's user text must hold at least one (whole words,
    /// any case).
    pub allow_words: Option<Vec<String>>,
    /// The most input tokens (estimated) a request may have.
    pub max_input_tokens: Option<u64>,
    /// `block` (default: refused with an error naming the rule) or `flag` (sent on, and
    /// recorded with the tag `fungible.guardrail`).
    pub action: Option<String>,
}

/// A route's validated `guardrails`.
#[derive(Debug, Clone)]
pub struct GuardrailsConfig {
    /// Each deny rule by its config path (`deny[0]`, `deny_words[2]`) and its pattern.
    pub rules: Vec<(String, regex::Regex)>,
    /// The allow rules, likewise; the user text must match one of them when there are any.
    pub allow: Vec<(String, regex::Regex)>,
    pub max_input_tokens: Option<u64>,
    pub action: GuardAction,
}

impl PartialEq for GuardrailsConfig {
    fn eq(&self, other: &GuardrailsConfig) -> bool {
        self.max_input_tokens == other.max_input_tokens
            && self.action == other.action
            && self.rules.len() == other.rules.len()
            && self.rules.iter().zip(&other.rules).all(|(a, b)| a.0 == b.0 && a.1.as_str() == b.1.as_str())
            && self.allow.len() == other.allow.len()
            && self.allow.iter().zip(&other.allow).all(|(a, b)| a.0 == b.0 && a.1.as_str() == b.1.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardAction {
    Block,
    Flag,
}

fn guardrails(section: GuardrailsSection, at: &str) -> Result<GuardrailsConfig, ConfigError> {
    let action = match section.action.as_deref() {
        None | Some("block") => GuardAction::Block,
        Some("flag") => GuardAction::Flag,
        Some(other) => return Err(invalid(format!("{at}.action"), format!("{other:?}: expected \"block\" or \"flag\""))),
    };
    let rules = patterns(at, "deny", section.deny, "deny_words", section.deny_words)?;
    let allow = patterns(at, "allow", section.allow, "allow_words", section.allow_words)?;
    if section.max_input_tokens == Some(0) {
        return Err(invalid(format!("{at}.max_input_tokens"), "must be greater than 0"));
    }
    Ok(GuardrailsConfig { rules, allow, max_input_tokens: section.max_input_tokens, action })
}

/// Regular expressions (`name`) and whole words (`words_name`), compiled, each named by its
/// config path.
fn patterns(
    at: &str,
    name: &str,
    regexes: Option<Vec<String>>,
    words_name: &str,
    words: Option<Vec<String>>,
) -> Result<Vec<(String, regex::Regex)>, ConfigError> {
    let mut out = Vec::new();
    for (i, pattern) in regexes.unwrap_or_default().into_iter().enumerate() {
        let regex = regex::RegexBuilder::new(&pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| invalid(format!("{at}.{name}[{i}]"), format!("not a regular expression: {e}")))?;
        out.push((format!("{name}[{i}]"), regex));
    }
    for (i, word) in words.unwrap_or_default().into_iter().enumerate() {
        if word.trim().is_empty() {
            return Err(invalid(format!("{at}.{words_name}[{i}]"), "must not be empty"));
        }
        let regex = regex::RegexBuilder::new(&format!(r"\b{}\b", regex::escape(word.trim())))
            .case_insensitive(true)
            .build()
            .map_err(|e| invalid(format!("{at}.{words_name}[{i}]"), e.to_string()))?;
        out.push((format!("{words_name}[{i}]"), regex));
    }
    Ok(out)
}

/// A route's validated `examples`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExamplesConfig {
    pub dataset: String,
    pub k: usize,
    pub max_distance: f32,
    /// "train" or "validation"; `None`: every row.
    pub split: Option<String>,
    pub embedding_model: String,
}

pub const DEFAULT_EXAMPLES_K: usize = 4;
pub const DEFAULT_EXAMPLES_MAX_DISTANCE: f32 = 0.5;
pub const DEFAULT_EXAMPLES_EMBEDDING_MODEL: &str = "local/all-minilm-l6-v2";

fn examples(section: ExamplesSection, at: &str) -> Result<ExamplesConfig, ConfigError> {
    let (name, version) = section.dataset.rsplit_once('@').unwrap_or((section.dataset.as_str(), ""));
    if name.trim().is_empty() || name.contains(char::is_whitespace) || (section.dataset.contains('@') && version.parse::<u64>().is_err())
    {
        return Err(invalid(format!("{at}.dataset"), "must be NAME or NAME@VERSION"));
    }
    let k = section.k.unwrap_or(DEFAULT_EXAMPLES_K);
    if !(1..=32).contains(&k) {
        return Err(invalid(format!("{at}.k"), "must be between 1 and 32"));
    }
    let max_distance = section.max_distance.unwrap_or(DEFAULT_EXAMPLES_MAX_DISTANCE);
    if !(0.0..=2.0).contains(&max_distance) {
        return Err(invalid(format!("{at}.max_distance"), "must be between 0 and 2 (cosine distance)"));
    }
    let split = match section.split.as_deref() {
        None | Some("train") => Some("train".to_owned()),
        Some("validation") => Some("validation".to_owned()),
        Some("all") => None,
        Some(other) => return Err(invalid(format!("{at}.split"), format!("{other:?}: expected \"train\", \"validation\" or \"all\""))),
    };
    let embedding_model = section.embedding_model.unwrap_or_else(|| DEFAULT_EXAMPLES_EMBEDDING_MODEL.to_owned());
    Ok(ExamplesConfig { dataset: section.dataset, k, max_distance, split, embedding_model })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// `PROVIDER/MODEL`.
    pub target: String,
    /// `weighted` only: relative share of first picks (default 1; 0 = fallback only).
    pub weight: Option<u32>,
    /// The variant's name in reports and `RouteInfo` (default: the target).
    pub name: Option<String>,
    /// Sampling parameters that override the client's for this target.
    pub params: Option<TargetParams>,
    /// Fields merged into the provider request body for this target (over the client's).
    pub extra_body: Option<Map<String, Value>>,
    /// This target's `ttft_timeout_ms`, over the route's.
    pub ttft_timeout_ms: Option<u64>,
    /// This target's `idle_timeout_ms`, over the route's.
    pub idle_timeout_ms: Option<u64>,
    /// The model's context window in tokens: after a context-length error, only targets with a
    /// larger window (or an unknown one) are tried.
    pub context_window: Option<u64>,
}

/// Sampling parameters a target sets whatever the client sent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetParams {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub max_tokens: Option<u32>,
    pub stop: Option<Vec<String>>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
}

impl TargetParams {
    pub fn is_empty(&self) -> bool {
        *self == TargetParams::default()
    }

    /// Overrides `req`'s sampling parameters with the ones set here.
    pub fn apply(&self, req: &mut ChatRequest) {
        let p = &mut req.params;
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { p.$field = Some(v.clone()); } )* };
        }
        set!(temperature, top_p, top_k, max_tokens, seed, presence_penalty, frequency_penalty);
        if let Some(stop) = &self.stop {
            p.stop = stop.clone();
        }
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetriesSection {
    /// Retries of a target after its first try (0: no retries).
    pub attempts: Option<u32>,
    pub initial_backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    pub failures: Option<u32>,
    pub window_secs: Option<u64>,
    pub cooldown_secs: Option<u64>,
}

/// `[routing]`: limits over all routes, and the defaults of every route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    /// Upstream calls one client request may cause, retries and fallbacks together.
    pub max_attempts_per_request: Option<u32>,
    pub retry_budget: Option<RetryBudgetSection>,
    /// Default `retries` of every route.
    pub retries: Option<RetriesSection>,
    /// Default `breaker` of every route.
    pub breaker: Option<BreakerSection>,
    /// Default `ttft_timeout_ms` of every route (and of `PROVIDER/MODEL` requests).
    pub ttft_timeout_ms: Option<u64>,
    /// Default `idle_timeout_ms` of every route (and of `PROVIDER/MODEL` requests).
    pub idle_timeout_ms: Option<u64>,
    /// Default `continue_on_stream_failure` of every route (default true).
    pub continue_on_stream_failure: Option<bool>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSection {
    /// Retries per request on average, 0 to 1.
    pub ratio: Option<f64>,
    /// Retries allowed at once before the ratio applies.
    pub burst: Option<u32>,
}

/// Validated `[routing]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingConfig {
    pub max_attempts_per_request: u32,
    pub retry_budget: RetryBudgetConfig,
    /// The stream timeouts of a `PROVIDER/MODEL` request (routes have their own, resolved).
    pub stream_timeouts: StreamTimeouts,
}

/// How long a stream may take to its first content, and stay silent after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamTimeouts {
    /// From the call to the first content event; a miss fails over like any retryable error.
    pub ttft: Option<Duration>,
    /// Between two events once content flowed; a miss is a stream failure after content.
    pub idle: Option<Duration>,
}

pub const DEFAULT_MAX_ATTEMPTS_PER_REQUEST: u32 = 6;

impl Default for RoutingConfig {
    fn default() -> RoutingConfig {
        RoutingConfig {
            max_attempts_per_request: DEFAULT_MAX_ATTEMPTS_PER_REQUEST,
            retry_budget: RetryBudgetConfig::DEFAULT,
            stream_timeouts: StreamTimeouts::default(),
        }
    }
}

/// A validated route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// At least one.
    pub targets: Vec<RouteTargetConfig>,
    pub strategy: Strategy,
    pub retries: RetryPolicy,
    pub breaker: BreakerConfig,
    pub sticky: Option<Sticky>,
    pub attempt_timeout: Option<Duration>,
    /// Continue a stream that failed after content on the next target that can prefill.
    pub continue_on_stream_failure: bool,
    /// Few-shot examples retrieved for each request (applied by `fungible-server`).
    pub examples: Option<ExamplesConfig>,
    /// Shadow candidates (applied by `fungible-server`).
    pub shadow: Vec<ShadowConfig>,
    /// `strategy = "adaptive"`: the test's settings (defaults when the section is left out).
    pub adaptive: Option<AdaptiveConfig>,
    /// Input checks (applied by `fungible-server`'s dispatch).
    pub guardrails: Option<GuardrailsConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteTargetConfig {
    pub target: Target,
    /// The variant name (default: the target as `PROVIDER/MODEL`).
    pub name: String,
    pub weight: u32,
    pub params: TargetParams,
    pub extra_body: Map<String, Value>,
    /// Resolved: the target's, else the route's, else `[routing]`'s.
    pub stream_timeouts: StreamTimeouts,
    /// Tokens; `None` when unknown.
    pub context_window: Option<u64>,
    /// A variant added at run time (a tuned model, `Gateway::set_overlays`): the percent of the
    /// route's first picks it gets, whatever the route's strategy; `None` for configured
    /// targets, which the strategy orders among themselves.
    pub share: Option<u32>,
}

impl RouteTargetConfig {
    /// A target with no settings of its own.
    pub fn plain(target: Target, stream_timeouts: StreamTimeouts) -> RouteTargetConfig {
        RouteTargetConfig {
            name: target.to_string(),
            target,
            weight: 1,
            params: TargetParams::default(),
            extra_body: Map::new(),
            stream_timeouts,
            context_window: None,
            share: None,
        }
    }
}

/// What keeps a client on one variant of a weighted route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// The request's `user`.
    User,
    /// A request header (lowercase name).
    Header(String),
}

/// Validates `[routing]` and every `[models.NAME]`; `enabled` says whether a provider name
/// is enabled.
pub(crate) fn resolve(
    models: BTreeMap<String, ModelSection>,
    routing: RoutingSection,
    enabled: &dyn Fn(&str) -> bool,
) -> Result<(RoutingConfig, BTreeMap<String, RouteConfig>), ConfigError> {
    let max_attempts_per_request = routing.max_attempts_per_request.unwrap_or(DEFAULT_MAX_ATTEMPTS_PER_REQUEST);
    if max_attempts_per_request == 0 {
        return Err(invalid("routing.max_attempts_per_request", "must be at least 1"));
    }
    let budget = routing.retry_budget.unwrap_or_default();
    let ratio = budget.ratio.unwrap_or(RetryBudgetConfig::DEFAULT.ratio);
    if !(0.0..=1.0).contains(&ratio) {
        return Err(invalid("routing.retry_budget.ratio", format!("must be between 0 and 1, got {ratio}")));
    }
    let retry_budget = RetryBudgetConfig { ratio, burst: budget.burst.unwrap_or(RetryBudgetConfig::DEFAULT.burst) };
    let default_retries = retries(routing.retries.unwrap_or_default(), RetryPolicy::DEFAULT, "routing.retries")?;
    let default_breaker = breaker(routing.breaker.unwrap_or_default(), BreakerConfig::DEFAULT, "routing.breaker")?;
    let stream_timeouts = StreamTimeouts {
        ttft: millis(routing.ttft_timeout_ms, "routing.ttft_timeout_ms")?,
        idle: millis(routing.idle_timeout_ms, "routing.idle_timeout_ms")?,
    };
    let defaults = RouteDefaults {
        retries: default_retries,
        breaker: default_breaker,
        stream_timeouts,
        continue_on_stream_failure: routing.continue_on_stream_failure.unwrap_or(true),
    };

    let mut routes = BTreeMap::new();
    for (alias, section) in models {
        let at = format!("models.{alias}");
        let route = route(&at, section, &defaults, enabled)?;
        routes.insert(alias, route);
    }
    Ok((RoutingConfig { max_attempts_per_request, retry_budget, stream_timeouts }, routes))
}

/// What `[routing]` sets for every route.
struct RouteDefaults {
    retries: RetryPolicy,
    breaker: BreakerConfig,
    stream_timeouts: StreamTimeouts,
    continue_on_stream_failure: bool,
}

/// An optional positive number of milliseconds.
fn millis(value: Option<u64>, at: &str) -> Result<Option<Duration>, ConfigError> {
    match value {
        Some(0) => Err(invalid(at, "must be greater than 0")),
        Some(ms) => Ok(Some(Duration::from_millis(ms))),
        None => Ok(None),
    }
}

fn route(
    at: &str,
    section: ModelSection,
    defaults: &RouteDefaults,
    enabled: &dyn Fn(&str) -> bool,
) -> Result<RouteConfig, ConfigError> {
    let strategy = section.strategy.unwrap_or_default();
    let route_timeouts = StreamTimeouts {
        ttft: millis(section.ttft_timeout_ms, &format!("{at}.ttft_timeout_ms"))?.or(defaults.stream_timeouts.ttft),
        idle: millis(section.idle_timeout_ms, &format!("{at}.idle_timeout_ms"))?.or(defaults.stream_timeouts.idle),
    };
    let targets = match (section.target, section.targets) {
        (Some(target), None) => vec![RouteTargetConfig {
            name: target.clone(),
            ..RouteTargetConfig::plain(target_of(&format!("{at}.target"), &target, enabled)?, route_timeouts)
        }],
        (None, Some(list)) => {
            if list.is_empty() {
                return Err(invalid(format!("{at}.targets"), "must list at least one target"));
            }
            let mut names = BTreeSet::new();
            let mut out = Vec::with_capacity(list.len());
            for (i, t) in list.into_iter().enumerate() {
                let here = format!("{at}.targets[{i}]");
                let target = target_of(&format!("{here}.target"), &t.target, enabled)?;
                if t.weight.is_some() && strategy != Strategy::Weighted {
                    return Err(invalid(format!("{here}.weight"), "only used with strategy = \"weighted\""));
                }
                let name = t.name.unwrap_or(t.target);
                if !names.insert(name.clone()) {
                    return Err(invalid(
                        format!("{here}.name"),
                        format!("{name:?} names two targets; give each a distinct `name`"),
                    ));
                }
                if t.context_window == Some(0) {
                    return Err(invalid(format!("{here}.context_window"), "must be greater than 0"));
                }
                if let Some(extra) = &t.extra_body {
                    fungible_providers::body::check_extra_body(extra)
                        .map_err(|e| invalid(format!("{here}.extra_body"), e))?;
                }
                out.push(RouteTargetConfig {
                    target,
                    name,
                    weight: t.weight.unwrap_or(1),
                    params: t.params.unwrap_or_default(),
                    extra_body: t.extra_body.unwrap_or_default(),
                    stream_timeouts: StreamTimeouts {
                        ttft: millis(t.ttft_timeout_ms, &format!("{here}.ttft_timeout_ms"))?.or(route_timeouts.ttft),
                        idle: millis(t.idle_timeout_ms, &format!("{here}.idle_timeout_ms"))?.or(route_timeouts.idle),
                    },
                    context_window: t.context_window,
                    share: None,
                });
            }
            out
        }
        _ => {
            return Err(invalid(at, "set exactly one of target = \"PROVIDER/MODEL\" or targets = [{ target = ... }, ...]"));
        }
    };
    if matches!(strategy, Strategy::Learned | Strategy::Adaptive) && targets.len() < 2 {
        return Err(invalid(
            format!("{at}.targets"),
            format!("strategy \"{}\" chooses between targets: list at least two", strategy.as_str()),
        ));
    }
    let adaptive = match (strategy, section.adaptive) {
        (Strategy::Adaptive, section) => Some(adaptive(
            section.unwrap_or(AdaptiveSection { metric: None, min_share: None, confidence: None, min_samples: None }),
            &format!("{at}.adaptive"),
            targets.len(),
        )?),
        (_, Some(_)) => return Err(invalid(format!("{at}.adaptive"), "only used with strategy = \"adaptive\"")),
        (_, None) => None,
    };
    if strategy == Strategy::Weighted && targets.iter().all(|t| t.weight == 0) {
        return Err(invalid(format!("{at}.targets"), "strategy \"weighted\" needs a target with weight > 0"));
    }
    let sticky = match section.sticky {
        None => None,
        Some(_) if !matches!(strategy, Strategy::Weighted | Strategy::Adaptive) => {
            return Err(invalid(format!("{at}.sticky"), "only used with strategy = \"weighted\" or \"adaptive\""));
        }
        Some(text) => Some(sticky(&format!("{at}.sticky"), &text)?),
    };
    let attempt_timeout = match section.attempt_timeout_ms {
        Some(0) => return Err(invalid(format!("{at}.attempt_timeout_ms"), "must be greater than 0")),
        Some(ms) => Some(Duration::from_millis(ms)),
        None => None,
    };
    Ok(RouteConfig {
        targets,
        strategy,
        retries: retries(section.retries.unwrap_or_default(), defaults.retries, &format!("{at}.retries"))?,
        breaker: breaker(section.breaker.unwrap_or_default(), defaults.breaker, &format!("{at}.breaker"))?,
        sticky,
        attempt_timeout,
        continue_on_stream_failure: section.continue_on_stream_failure.unwrap_or(defaults.continue_on_stream_failure),
        examples: section.examples.map(|e| examples(e, &format!("{at}.examples"))).transpose()?,
        shadow: {
            let mut out: Vec<ShadowConfig> = Vec::new();
            for (i, c) in section.shadow.unwrap_or_default().into_iter().enumerate() {
                let here = format!("{at}.shadow[{i}]");
                let c = shadow(c, &here, enabled)?;
                if out.iter().any(|o| o.target == c.target) {
                    return Err(invalid(format!("{here}.target"), format!("{} is a shadow twice", c.target)));
                }
                out.push(c);
            }
            out
        },
        adaptive,
        guardrails: section.guardrails.map(|g| guardrails(g, &format!("{at}.guardrails"))).transpose()?,
    })
}

fn target_of(at: &str, text: &str, enabled: &dyn Fn(&str) -> bool) -> Result<Target, ConfigError> {
    let target = Target::parse(text).ok_or_else(|| invalid(at, format!("expected PROVIDER/MODEL, got {text:?}")))?;
    if !enabled(&target.provider) {
        return Err(invalid(
            at,
            format!(
                "provider {:?} is not enabled (configure [providers.{}] or set its API key)",
                target.provider, target.provider
            ),
        ));
    }
    Ok(target)
}

fn sticky(at: &str, text: &str) -> Result<Sticky, ConfigError> {
    if text == "user" {
        return Ok(Sticky::User);
    }
    match text.strip_prefix("header:") {
        Some(name)
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) =>
        {
            Ok(Sticky::Header(name.to_ascii_lowercase()))
        }
        _ => Err(invalid(at, format!("expected \"user\" or \"header:NAME\", got {text:?}"))),
    }
}

/// Maximum retries of one target: more only multiplies load on a failing upstream.
const MAX_RETRIES: u32 = 10;

fn retries(section: RetriesSection, default: RetryPolicy, at: &str) -> Result<RetryPolicy, ConfigError> {
    let policy = RetryPolicy {
        attempts: section.attempts.unwrap_or(default.attempts),
        initial_backoff: section.initial_backoff_ms.map(Duration::from_millis).unwrap_or(default.initial_backoff),
        max_backoff: section.max_backoff_ms.map(Duration::from_millis).unwrap_or(default.max_backoff),
    };
    if policy.attempts > MAX_RETRIES {
        return Err(invalid(format!("{at}.attempts"), format!("must be at most {MAX_RETRIES}")));
    }
    if policy.max_backoff < policy.initial_backoff {
        return Err(invalid(format!("{at}.max_backoff_ms"), "must not be less than initial_backoff_ms"));
    }
    Ok(policy)
}

fn breaker(section: BreakerSection, default: BreakerConfig, at: &str) -> Result<BreakerConfig, ConfigError> {
    let failures = section.failures.unwrap_or(default.failures);
    if failures == 0 {
        return Err(invalid(format!("{at}.failures"), "must be at least 1"));
    }
    let secs = |value: Option<u64>, default: Duration, field: &str| match value {
        Some(0) => Err(invalid(format!("{at}.{field}"), "must be greater than 0")),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(default),
    };
    Ok(BreakerConfig {
        failures,
        window: secs(section.window_secs, default.window, "window_secs")?,
        cooldown: secs(section.cooldown_secs, default.cooldown, "cooldown_secs")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_toml(toml: &str) -> Result<(RoutingConfig, BTreeMap<String, RouteConfig>), ConfigError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            models: BTreeMap<String, ModelSection>,
            #[serde(default)]
            routing: RoutingSection,
        }
        let file: File = toml::from_str(toml).map_err(|e| invalid("toml", e.to_string()))?;
        resolve(file.models, file.routing, &|p| p == "a" || p == "b")
    }

    fn error(toml: &str) -> String {
        match resolve_toml(toml) {
            Ok(_) => panic!("expected an error for {toml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_single_target_is_a_route_with_the_defaults() {
        let (routing, routes) = resolve_toml("[models.fast]\ntarget = \"a/m\"\n").unwrap();
        assert_eq!(routing, RoutingConfig::default());
        let r = &routes["fast"];
        assert_eq!(r.targets.len(), 1);
        assert_eq!(r.targets[0].name, "a/m");
        assert_eq!(r.strategy, Strategy::Fallback);
        assert_eq!(r.retries, RetryPolicy::DEFAULT);
        assert_eq!(r.breaker, BreakerConfig::DEFAULT);
    }

    #[test]
    fn a_full_route_is_read_field_by_field() {
        let toml = r#"
            [routing]
            max_attempts_per_request = 4
            retry_budget = { ratio = 0.1, burst = 3 }
            retries = { attempts = 1 }
            [models.ab]
            strategy = "weighted"
            sticky = "header:X-Session-Id"
            breaker = { failures = 2, cooldown_secs = 5 }
            retries = { initial_backoff_ms = 50 }
            attempt_timeout_ms = 1500
            targets = [
                { target = "a/m1", weight = 3, name = "control", params = { temperature = 0.2, max_tokens = 100, stop = ["x"] } },
                { target = "b/m2", weight = 1, extra_body = { top_k = 5 } },
            ]
        "#;
        let (routing, routes) = resolve_toml(toml).unwrap();
        assert_eq!(routing.max_attempts_per_request, 4);
        assert_eq!(routing.retry_budget, RetryBudgetConfig { ratio: 0.1, burst: 3 });
        let r = &routes["ab"];
        assert_eq!(r.strategy, Strategy::Weighted);
        assert_eq!(r.sticky, Some(Sticky::Header("x-session-id".into())));
        assert_eq!(r.breaker, BreakerConfig { failures: 2, cooldown: Duration::from_secs(5), ..BreakerConfig::DEFAULT });
        // Route settings override [routing], which overrides the built-in defaults.
        assert_eq!(r.retries.attempts, 1);
        assert_eq!(r.retries.initial_backoff, Duration::from_millis(50));
        assert_eq!(r.attempt_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(r.targets[0].name, "control");
        assert_eq!(r.targets[0].weight, 3);
        assert_eq!(r.targets[0].params.temperature, Some(0.2));
        assert_eq!(r.targets[1].name, "b/m2");
        assert_eq!(r.targets[1].extra_body["top_k"], 5);
    }

    #[test]
    fn stream_timeouts_resolve_target_over_route_over_routing() {
        let toml = r#"
            [routing]
            ttft_timeout_ms = 10000
            idle_timeout_ms = 20000
            continue_on_stream_failure = false
            [models.r]
            ttft_timeout_ms = 5000
            continue_on_stream_failure = true
            targets = [
                { target = "a/m", ttft_timeout_ms = 1000, context_window = 8192 },
                { target = "b/m" },
            ]
            [models.plain]
            strategy = "cheapest"
            target = "a/m"
        "#;
        let (routing, routes) = resolve_toml(toml).unwrap();
        let ms = |m: u64| Some(Duration::from_millis(m));
        assert_eq!(routing.stream_timeouts, StreamTimeouts { ttft: ms(10000), idle: ms(20000) }, "PROVIDER/MODEL requests");
        let r = &routes["r"];
        assert_eq!(r.targets[0].stream_timeouts, StreamTimeouts { ttft: ms(1000), idle: ms(20000) });
        assert_eq!(r.targets[1].stream_timeouts, StreamTimeouts { ttft: ms(5000), idle: ms(20000) });
        assert_eq!((r.targets[0].context_window, r.targets[1].context_window), (Some(8192), None));
        assert!(r.continue_on_stream_failure);
        let plain = &routes["plain"];
        assert_eq!(plain.targets[0].stream_timeouts, StreamTimeouts { ttft: ms(10000), idle: ms(20000) });
        assert!(!plain.continue_on_stream_failure, "[routing] sets the default");
        assert_eq!(plain.strategy, Strategy::Cheapest);
    }

    #[test]
    fn target_params_override_the_clients() {
        let mut req = ChatRequest::default();
        req.params.temperature = Some(1.0);
        req.params.top_p = Some(0.5);
        let params = TargetParams { temperature: Some(0.2), stop: Some(vec!["x".into()]), ..TargetParams::default() };
        params.apply(&mut req);
        assert_eq!(req.params.temperature, Some(0.2));
        assert_eq!(req.params.top_p, Some(0.5), "what the target does not set stays the client's");
        assert_eq!(req.params.stop, ["x"]);
    }

    #[test]
    fn errors_name_the_path_at_fault() {
        let cases = [
            ("[models.x]\n", "models.x: set exactly one of target"),
            ("[models.x]\ntarget = \"a/m\"\ntargets = [{ target = \"a/m\" }]\n", "models.x: set exactly one of target"),
            ("[models.x]\ntargets = []\n", "models.x.targets: must list at least one target"),
            ("[models.x]\ntargets = [{ target = \"a/m\" }, { target = \"c/m\" }]\n", "models.x.targets[1].target: provider \"c\" is not enabled"),
            ("[models.x]\ntargets = [{ target = \"nope\" }]\n", "models.x.targets[0].target: expected PROVIDER/MODEL"),
            ("[models.x]\ntargets = [{ target = \"a/m\", weight = 2 }]\n", "models.x.targets[0].weight: only used with strategy = \"weighted\""),
            ("[models.x]\nstrategy = \"weighted\"\ntargets = [{ target = \"a/m\", weight = 0 }]\n", "models.x.targets: strategy \"weighted\" needs a target with weight > 0"),
            ("[models.x]\ntargets = [{ target = \"a/m\" }, { target = \"a/m\" }]\n", "models.x.targets[1].name: \"a/m\" names two targets"),
            ("[models.x]\ntarget = \"a/m\"\nsticky = \"user\"\n", "models.x.sticky: only used with strategy = \"weighted\""),
            ("[models.x]\nstrategy = \"weighted\"\ntargets = [{ target = \"a/m\" }]\nsticky = \"cookie\"\n", "models.x.sticky: expected \"user\" or \"header:NAME\""),
            ("[models.x]\ntarget = \"a/m\"\nretries = { attempts = 11 }\n", "models.x.retries.attempts: must be at most 10"),
            ("[models.x]\ntarget = \"a/m\"\nretries = { initial_backoff_ms = 500, max_backoff_ms = 100 }\n", "models.x.retries.max_backoff_ms: must not be less"),
            ("[models.x]\ntarget = \"a/m\"\nbreaker = { failures = 0 }\n", "models.x.breaker.failures: must be at least 1"),
            ("[models.x]\ntarget = \"a/m\"\nbreaker = { cooldown_secs = 0 }\n", "models.x.breaker.cooldown_secs: must be greater than 0"),
            ("[models.x]\ntarget = \"a/m\"\nattempt_timeout_ms = 0\n", "models.x.attempt_timeout_ms: must be greater than 0"),
            ("[routing]\nmax_attempts_per_request = 0\n", "routing.max_attempts_per_request: must be at least 1"),
            ("[routing]\nttft_timeout_ms = 0\n", "routing.ttft_timeout_ms: must be greater than 0"),
            ("[models.x]\ntarget = \"a/m\"\nidle_timeout_ms = 0\n", "models.x.idle_timeout_ms: must be greater than 0"),
            ("[models.x]\ntargets = [{ target = \"a/m\", ttft_timeout_ms = 0 }]\n", "models.x.targets[0].ttft_timeout_ms: must be greater than 0"),
            ("[models.x]\ntargets = [{ target = \"a/m\", context_window = 0 }]\n", "models.x.targets[0].context_window: must be greater than 0"),
            ("[routing]\nretry_budget = { ratio = 1.5 }\n", "routing.retry_budget.ratio: must be between 0 and 1"),
        ];
        for (toml, expected) in cases {
            let err = error(toml);
            assert!(err.starts_with(expected), "{toml}\n  got: {err}\n  expected: {expected}");
        }
    }

    #[test]
    fn unknown_keys_and_strategies_are_rejected() {
        let err = error("[models.x]\ntarget = \"a/m\"\nretry = 3\n");
        assert!(err.contains("unknown field `retry`"), "{err}");
        let err = error("[models.x]\ntargets = [{ target = \"a/m\", params = { temprature = 1 } }]\n");
        assert!(err.contains("unknown field `temprature`"), "{err}");
        let err = error("[models.x]\ntarget = \"a/m\"\nstrategy = \"fastest\"\n");
        assert!(err.contains("unknown variant `fastest`"), "{err}");
    }
}
