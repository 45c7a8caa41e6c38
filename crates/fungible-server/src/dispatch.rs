//! The one way front ends call the gateway for a chat, so every inbound API routes alike.
//!
//! A middleware ([`layer`]) builds each request's [`RequestContext`] and puts it in the
//! request's extensions, where a front end takes it ([`Context`]) and hands it to [`chat`] or
//! [`chat_stream`]: the virtual key it authenticated with, the routing hints from the request headers (sticky A/B variants), its
//! cache directive and scope, and on chat routes the facts recording needs
//! (`recording::RequestFacts`). Once the handler returned, the middleware writes how the
//! request was routed into the response headers — `x-fungible-target` (the `PROVIDER/MODEL`
//! that answered), `x-fungible-attempts`, and `x-fungible-route` / `x-fungible-variant` for
//! aliases — the cache outcome, and `x-fungible-examples` (how many retrieved examples the
//! request got). [`chat`] and [`chat_stream`] run the stages in one order: the route's
//! guardrails (refuse, or flag the request), admit the virtual
//! key (`auth::admit`: model allowance, rate limits, budget), insert the route's retrieved
//! examples (`examples`), ask the cache, route, and settle the real usage and cost when the
//! answer is known.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use fungible_gateway::routing::Verdict;
use fungible_gateway::{GatewayError, RouteHints, RouteInfo};
use fungible_providers::EventStream;
use fungible_types::{ChatRequest, ChatResponse, ErrorKind, ProviderError};

use crate::AppState;

/// What one request carries through the pipeline, built by [`layer`].
pub struct RequestContext {
    /// The virtual key the request authenticated with (none: auth off, or the admin key).
    key: Option<Arc<fungible_store::KeyRecord>>,
    hints: RouteHints,
    /// The cache directive and scope of this request.
    cache: crate::cache::CacheRequest,
    /// On the chat routes: who the request is for and when it arrived, for its record.
    facts: Option<crate::recording::RequestFacts>,
    /// How the request was routed, for the response headers.
    route: Mutex<Option<RouteInfo>>,
    /// Whether the cache answered, for the response headers.
    cache_outcome: Mutex<Option<crate::cache::Outcome>>,
    /// How many retrieved examples the request got, for the response headers.
    examples: Mutex<Option<usize>>,
}

/// The extractor a front end takes its request's context with.
pub type Context = axum::Extension<Arc<RequestContext>>;

impl RequestContext {
    fn remember(&self, route: RouteInfo) {
        if let Ok(mut slot) = self.route.lock() {
            *slot = Some(route);
        }
    }

    pub(crate) fn facts(&self) -> Option<&crate::recording::RequestFacts> {
        self.facts.as_ref()
    }

    /// The virtual key the request authenticated with, if any.
    pub(crate) fn key(&self) -> Option<&Arc<fungible_store::KeyRecord>> {
        self.key.as_ref()
    }
}

/// Middleware: builds the request's context (see the module docs); a chat request whose
/// `x-fungible-tags` are over the limits is a 400 here.
pub async fn layer(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let principal = request.extensions().get::<crate::principal::Principal>();
    let cache = crate::cache::CacheRequest::new(request.headers(), principal);
    let facts = match crate::recording::facts(&state, request.uri().path(), request.headers(), principal) {
        Ok(facts) => facts,
        Err(error) => return error.into_response_for(crate::auth::format_of(request.uri().path())),
    };
    // `[store] raw_bodies`: every upstream call made for the request notes its bodies here.
    let hints = state
        .gateway
        .route_hints(request.headers().iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))))
        .with_capture(facts.as_ref().and_then(|f| f.capture.clone()));
    let key = request.extensions().get::<crate::auth::CallerKey>().map(|k| k.0.clone());
    let context = Arc::new(RequestContext {
        key,
        hints,
        cache,
        facts,
        route: Mutex::new(None),
        cache_outcome: Mutex::new(None),
        examples: Mutex::new(None),
    });
    request.extensions_mut().insert(context.clone());
    let mut response = next.run(request).await;
    // A record is made for what was routed (answered or failed) and for cache hits.
    let mut recorded = false;
    if let Some(route) = context.route.lock().ok().and_then(|mut r| r.take()) {
        mark(&mut response, &route);
        recorded = true;
    }
    if let Some(outcome) = context.cache_outcome.lock().ok().and_then(|o| *o) {
        crate::cache::mark(&mut response, outcome);
        recorded |= !matches!(outcome, crate::cache::Outcome::Miss);
    }
    if let Some(n) = context.examples.lock().ok().and_then(|n| *n) {
        response.headers_mut().insert("x-fungible-examples", HeaderValue::from(n));
    }
    // The record's id, when one is written (a recorder, and a chat that was routed or
    // answered from the cache).
    if recorded
        && state.recording.recorder.is_some()
        && let Some(id) = context.facts().and_then(|f| HeaderValue::from_str(&f.id).ok())
    {
        response.headers_mut().insert("x-fungible-inference-id", id);
    }
    response
}

/// The request as the pipeline sends it, and the facts its record gets.
struct Prepared<'a> {
    req: Cow<'a, ChatRequest>,
    facts: Option<Cow<'a, crate::recording::RequestFacts>>,
}

/// Inserts the route's retrieved examples, if it has any (`[models.NAME] examples`, built at
/// start by `fungible-datasets`' `Examples::load`); the record names the rows used in its
/// `fungible.examples` tag and the response says how many in `x-fungible-examples`.
/// A guardrail that flagged the request names its rule in the `fungible.guardrail` tag.
async fn prepare<'a>(state: &AppState, context: &'a RequestContext, req: &'a ChatRequest, flagged: Option<String>) -> Prepared<'a> {
    let facts: Option<Cow<'a, crate::recording::RequestFacts>> = match (context.facts(), flagged) {
        (Some(f), Some(rule)) => Some(Cow::Owned(f.with_tag("fungible.guardrail", rule))),
        (f, _) => f.map(Cow::Borrowed),
    };
    let Some((augmented, used)) = state.examples.augment(req, &state.gateway).await else {
        return Prepared { req: Cow::Borrowed(req), facts };
    };
    if let Ok(mut slot) = context.examples.lock() {
        *slot = Some(used.rows.len());
    }
    let facts = facts.map(|f| Cow::Owned(f.with_tag("fungible.examples", used.tag())));
    Prepared { req: Cow::Owned(augmented), facts }
}

/// The route's guardrails first of all (`[models.NAME] guardrails`): a refused request is a
/// 400 in the client's API shape naming the rule, before it counts against the key's limits;
/// a flagged one goes on with its rule.
fn guard(state: &AppState, req: &ChatRequest) -> Result<Option<String>, GatewayError> {
    match state.gateway.check_input(req) {
        Verdict::Pass => Ok(None),
        Verdict::Flag(rule) => Ok(Some(rule)),
        Verdict::Block(why) => Err(GatewayError::Provider(ProviderError::new(ErrorKind::InvalidRequest, "guardrails", why))),
    }
}

fn mark(response: &mut Response, route: &RouteInfo) {
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    if let Some(target) = &route.target {
        set("x-fungible-target", target.to_string());
    }
    if !route.attempts.is_empty() {
        set("x-fungible-attempts", route.attempts.len().to_string());
    }
    if let Some(alias) = &route.route {
        set("x-fungible-route", alias.clone());
    }
    if let Some(variant) = &route.variant {
        set("x-fungible-variant", variant.clone());
    }
}

/// Looks the request up in the response cache and notes the outcome for the headers.
async fn cache_lookup(state: &AppState, context: &RequestContext, req: &ChatRequest) -> crate::cache::Lookup {
    let lookup = crate::cache::lookup(state, req, &context.cache).await;
    let outcome = match &lookup {
        crate::cache::Lookup::Off => None,
        crate::cache::Lookup::Hit { outcome, .. } => Some(*outcome),
        crate::cache::Lookup::Miss { .. } => Some(crate::cache::Outcome::Miss),
    };
    if let Ok(mut slot) = context.cache_outcome.lock() {
        *slot = outcome;
    }
    lookup
}

/// A whole response, routed.
pub async fn chat(state: &AppState, context: &RequestContext, req: &ChatRequest) -> Result<ChatResponse, GatewayError> {
    let flagged = guard(state, req)?;
    // The key's allowance, rate limits and budget come next: a cached answer is no way
    // around them (it costs nothing, so its ticket settles nothing but the request).
    let ticket = crate::auth::admit(state, context.key(), req).await?;
    let prepared = prepare(state, context, req, flagged).await;
    let (req, facts) = (prepared.req.as_ref(), prepared.facts.as_deref());
    let plan = match cache_lookup(state, context, req).await {
        crate::cache::Lookup::Hit { answer, .. } => {
            let route = crate::cache::hit_route(&answer);
            crate::recording::observe_cache_hit(state, facts, req, &answer.response, &route, false);
            context.remember(route);
            ticket.finish(None, &fungible_types::Usage::default());
            if let Some(settled) = state.recording.settled() {
                settled.await;
            }
            return Ok(answer.response);
        }
        crate::cache::Lookup::Miss { plan } => plan,
        crate::cache::Lookup::Off => None,
    };
    match crate::recording::observe_chat(state, facts, req, state.gateway.chat_routed(req, &context.hints).await) {
        Ok(routed) => {
            ticket.finish(routed.route.target.as_ref(), &routed.value.usage);
            if let Some(plan) = plan {
                plan.store(&routed.value, &routed.route).await;
            }
            context.remember(routed.route);
            // Durable recording: the answer goes out once its record is committed.
            if let Some(settled) = state.recording.settled() {
                settled.await;
            }
            Ok(routed.value)
        }
        Err(e) => {
            context.remember(e.route);
            Err(e.error)
        }
    }
}

/// A stream, routed; resolves once a target's stream is under way.
pub async fn chat_stream(state: &AppState, context: &RequestContext, req: &ChatRequest) -> Result<EventStream, GatewayError> {
    let flagged = guard(state, req)?;
    let ticket = crate::auth::admit(state, context.key(), req).await?;
    let prepared = prepare(state, context, req, flagged).await;
    let (req, facts) = (prepared.req.as_ref(), prepared.facts.as_deref());
    let plan = match cache_lookup(state, context, req).await {
        crate::cache::Lookup::Hit { answer, .. } => {
            let route = crate::cache::hit_route(&answer);
            crate::recording::observe_cache_hit(state, facts, req, &answer.response, &route, true);
            context.remember(route);
            ticket.finish(None, &fungible_types::Usage::default());
            return Ok(crate::cache::replay(answer.response));
        }
        crate::cache::Lookup::Miss { plan } => plan,
        crate::cache::Lookup::Off => None,
    };
    let routed = state.gateway.chat_stream_routed(req, &context.hints).await;
    let record = crate::recording::observe_stream(state, facts, req, &routed);
    match routed {
        Ok(routed) => {
            // One tap puts the answer together as it passes, for the record, the cache and
            // the key's settlement.
            let sinks = crate::tap::Sinks {
                record,
                cache: plan.map(|plan| plan.for_stream(&routed.route)),
                ticket: (ticket, routed.route.target.clone()),
            };
            let stream = crate::tap::tap(routed.value, sinks);
            context.remember(routed.route);
            Ok(stream)
        }
        Err(e) => {
            context.remember(e.route);
            Err(e.error)
        }
    }
}
