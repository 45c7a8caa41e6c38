//! The one way front ends call the gateway for a chat, so every inbound API routes alike.
//!
//! A middleware ([`layer`]) opens a per-request context: it reads the routing hints from the
//! request headers (sticky A/B variants), and once the handler returned it writes how the
//! request was routed into the response headers — `x-fungible-target` (the `PROVIDER/MODEL`
//! that answered), `x-fungible-attempts`, and `x-fungible-route` / `x-fungible-variant` for
//! aliases. Front ends call [`chat`] and [`chat_stream`] instead of the gateway's methods;
//! they admit the request's virtual key first (`auth::admit`: model allowance, rate limits,
//! budget) and settle its real usage and cost when the answer is known.

use std::cell::RefCell;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use fungible_gateway::{GatewayError, RouteHints, RouteInfo};
use fungible_providers::EventStream;
use fungible_types::{ChatRequest, ChatResponse};

use crate::AppState;

struct RequestContext {
    hints: RouteHints,
    route: RefCell<Option<RouteInfo>>,
    /// The cache directive and scope of this request, and whether it was a hit.
    cache: crate::cache::CacheRequest,
    cache_outcome: std::cell::Cell<Option<crate::cache::Outcome>>,
}

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// Middleware: the routing context of one request (see the module docs).
pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let hints = state
        .gateway
        .route_hints(request.headers().iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))));
    let cache = crate::cache::CacheRequest::new(request.headers(), request.extensions().get::<crate::principal::Principal>());
    let context = RequestContext { hints, route: RefCell::new(None), cache, cache_outcome: std::cell::Cell::new(None) };
    CONTEXT
        .scope(context, async move {
            let mut response = next.run(request).await;
            let route = CONTEXT.with(|c| c.route.borrow_mut().take());
            if let Some(route) = route {
                mark(&mut response, &route);
            }
            if let Some(outcome) = CONTEXT.with(|c| c.cache_outcome.get()) {
                crate::cache::mark(&mut response, outcome);
            }
            response
        })
        .await
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

fn hints() -> RouteHints {
    CONTEXT.try_with(|c| c.hints.clone()).unwrap_or_default()
}

fn remember(route: RouteInfo) {
    let _ = CONTEXT.try_with(|c| *c.route.borrow_mut() = Some(route));
}

/// Looks the request up in the response cache and notes the outcome for the headers.
async fn cache_lookup(state: &AppState, req: &ChatRequest) -> crate::cache::Lookup {
    let request = CONTEXT.try_with(|c| c.cache.clone()).unwrap_or_default();
    let lookup = crate::cache::lookup(state, req, &request).await;
    let outcome = match &lookup {
        crate::cache::Lookup::Off => None,
        crate::cache::Lookup::Hit { outcome, .. } => Some(*outcome),
        crate::cache::Lookup::Miss { .. } => Some(crate::cache::Outcome::Miss),
    };
    let _ = CONTEXT.try_with(|c| c.cache_outcome.set(outcome));
    lookup
}

/// A whole response, routed.
pub async fn chat(state: &AppState, req: &ChatRequest) -> Result<ChatResponse, GatewayError> {
    // The key's allowance, rate limits and budget come first: a cached answer is no way
    // around them (it costs nothing, so its ticket settles nothing but the request).
    let ticket = crate::auth::admit(state, req).await?;
    let plan = match cache_lookup(state, req).await {
        crate::cache::Lookup::Hit { answer, .. } => {
            let route = crate::cache::hit_route(&answer);
            crate::recording::observe_cache_hit(state, req, &answer.response, &route, false);
            remember(route);
            ticket.finish(None, &fungible_types::Usage::default());
            if let Some(settled) = state.recording.settled() {
                settled.await;
            }
            return Ok(answer.response);
        }
        crate::cache::Lookup::Miss { plan } => plan,
        crate::cache::Lookup::Off => None,
    };
    match crate::recording::observe_chat(state, req, state.gateway.chat_routed(req, &hints()).await) {
        Ok(routed) => {
            ticket.finish(routed.route.target.as_ref(), &routed.value.usage);
            if let Some(plan) = plan {
                plan.store(&routed.value, &routed.route).await;
            }
            remember(routed.route);
            // Durable recording: the answer goes out once its record is committed.
            if let Some(settled) = state.recording.settled() {
                settled.await;
            }
            Ok(routed.value)
        }
        Err(e) => {
            remember(e.route);
            Err(e.error)
        }
    }
}

/// A stream, routed; resolves once a target's stream is under way.
pub async fn chat_stream(state: &AppState, req: &ChatRequest) -> Result<EventStream, GatewayError> {
    let ticket = crate::auth::admit(state, req).await?;
    let plan = match cache_lookup(state, req).await {
        crate::cache::Lookup::Hit { answer, .. } => {
            let route = crate::cache::hit_route(&answer);
            crate::recording::observe_cache_hit(state, req, &answer.response, &route, true);
            remember(route);
            ticket.finish(None, &fungible_types::Usage::default());
            return Ok(crate::cache::replay(answer.response));
        }
        crate::cache::Lookup::Miss { plan } => plan,
        crate::cache::Lookup::Off => None,
    };
    match crate::recording::observe_stream(state, req, state.gateway.chat_stream_routed(req, &hints()).await) {
        Ok(routed) => {
            let stream = match plan {
                Some(plan) => plan.wrap(routed.value, &routed.route),
                None => routed.value,
            };
            // Settled with the stream's reported usage at its end (or when the client leaves).
            let stream = ticket.wrap(stream, routed.route.target.clone());
            remember(routed.route);
            Ok(stream)
        }
        Err(e) => {
            remember(e.route);
            Err(e.error)
        }
    }
}
