//! The response cache on the request path (the cache itself is `fungible-cache`).
//!
//! `dispatch` asks [`lookup`] before it routes a chat: a hit is answered from the cache (a
//! whole response, or replayed as a stream by [`replay`]) with `x-fungible-cache: hit` and
//! the target that first answered in `x-fungible-target`; a miss goes to the gateway and its
//! answer is stored — a whole response at once ([`Plan::store`]), a stream only at its clean
//! end, accumulated as it passes ([`Plan::wrap`]). Errors, failed or cut streams and
//! content-filtered answers are never stored.
//!
//! Which requests: by default only deterministic ones (temperature 0 or a seed;
//! `[cache] deterministic_only`). A request steers the cache with the `x-fungible-cache`
//! header, or `Cache-Control`:
//! - `x-fungible-cache: off` — neither read nor store;
//! - `no-cache` (or `Cache-Control: no-cache`) — skip the lookup, store the fresh answer;
//! - `no-store` (or `Cache-Control: no-store`) — may be served from the cache, is not stored;
//! - `force` — cache this request even if it is not deterministic.
//!
//! Every dispatched chat answers `x-fungible-cache: hit` or `miss` while the cache is on,
//! and `x-fungible-cache-match: exact|semantic` on a hit.
//!
//! The scope of an entry is the virtual key (the [`Principal`] auth put on the request) and
//! the model as requested. Semantic matching applies to the models `[cache.semantic]` names:
//! the last user message is embedded and an answer within the same scope and conversation
//! is served at or above the similarity threshold.


use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use fungible_cache::key::is_deterministic;
use fungible_cache::{CacheKey, CachedAnswer, ResponseCache};
use fungible_gateway::{RouteInfo, Target};
use fungible_providers::EventStream;
use fungible_types::{ChatRequest, ChatResponse, FinishReason, ReasoningBlock, StreamEvent};

use crate::AppState;
use crate::principal::Principal;

/// What a client asked of the cache for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Directive {
    #[default]
    Default,
    Off,
    NoCache,
    NoStore,
    Force,
}

/// The cache side of one request, read by the dispatch middleware.
#[derive(Debug, Clone, Default)]
pub(crate) struct CacheRequest {
    directive: Directive,
    key_id: Option<String>,
}

impl CacheRequest {
    pub(crate) fn new(headers: &HeaderMap, principal: Option<&Principal>) -> CacheRequest {
        CacheRequest {
            directive: directive(headers),
            key_id: principal.map(|p| p.key_id.clone()),
        }
    }
}

fn directive(headers: &HeaderMap) -> Directive {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_ascii_lowercase())
            .collect()
    };
    let ours = values("x-fungible-cache");
    let has = |v: &str| ours.iter().any(|o| o == v);
    if has("off") {
        return Directive::Off;
    }
    let control = values("cache-control");
    let control_has = |v: &str| control.iter().any(|c| c == v);
    let no_cache = has("no-cache") || control_has("no-cache");
    let no_store = has("no-store") || control_has("no-store");
    match (no_cache, no_store) {
        (true, true) => Directive::Off,
        (true, false) => Directive::NoCache,
        (false, true) => Directive::NoStore,
        (false, false) if has("force") => Directive::Force,
        (false, false) => Directive::Default,
    }
}

/// How a request was answered, for the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Hit,
    SemanticHit,
    Miss,
}

/// Writes `x-fungible-cache` (and `x-fungible-cache-match` on a hit).
pub(crate) fn mark(response: &mut Response, outcome: Outcome) {
    let (status, kind) = match outcome {
        Outcome::Hit => ("hit", Some("exact")),
        Outcome::SemanticHit => ("hit", Some("semantic")),
        Outcome::Miss => ("miss", None),
    };
    let headers = response.headers_mut();
    headers.insert("x-fungible-cache", HeaderValue::from_static(status));
    if let Some(kind) = kind {
        headers.insert("x-fungible-cache-match", HeaderValue::from_static(kind));
    }
}

/// The result of a lookup.
pub(crate) enum Lookup {
    /// The cache is off for this request (no header is written).
    Off,
    /// Answered from the cache.
    Hit {
        answer: CachedAnswer,
        outcome: Outcome,
    },
    /// Not in the cache; `plan` says where to store the answer (`None`: do not).
    Miss { plan: Option<Plan> },
}

/// Where a missed request's answer goes.
pub(crate) struct Plan {
    cache: ResponseCache,
    key: CacheKey,
    /// The semantic scope and the embedding of the question.
    semantic: Option<(CacheKey, Vec<f32>)>,
}

/// Looks `req` up (see the module docs).
pub(crate) async fn lookup(state: &AppState, req: &ChatRequest, request: &CacheRequest) -> Lookup {
    let Some(cache) = state.cache.as_ref().filter(|c| c.config().enabled) else {
        return Lookup::Off;
    };
    let config = cache.config();
    let eligible = match request.directive {
        Directive::Off => false,
        Directive::Force => true,
        _ => !config.deterministic_only || is_deterministic(req),
    };
    if !eligible {
        return Lookup::Miss { plan: None };
    }
    let read = request.directive != Directive::NoCache;
    let store = request.directive != Directive::NoStore;
    let key_id = request.key_id.as_deref();
    let key = CacheKey::exact(req, key_id);
    if read && let Some(answer) = cache.get(&key).await {
        return Lookup::Hit {
            answer,
            outcome: Outcome::Hit,
        };
    }
    let mut semantic = None;
    if let (Some(_), Some(settings)) = (cache.semantic(), config.semantic_for(&req.model))
        && let (Some(scope), Some(text)) =
            (CacheKey::semantic_scope(req, key_id), fungible_types::last_user_text(&req.messages))
    {
        match state
            .gateway
            .embed(&settings.embedding_model, vec![text])
            .await
        {
            Ok((embeddings, _)) => {
                if let Some(embedding) = embeddings.vectors.into_iter().next() {
                    if read && let Some((answer, similarity)) = cache.semantic_find(&scope, &embedding).await {
                        tracing::debug!(similarity, "semantic cache hit");
                        return Lookup::Hit {
                            answer,
                            outcome: Outcome::SemanticHit,
                        };
                    }
                    semantic = Some((scope, embedding));
                }
            }
            Err(e) => {
                tracing::warn!(model = %settings.embedding_model, "semantic cache: could not embed the question: {e}")
            }
        }
    }
    Lookup::Miss {
        plan: store.then(|| Plan {
            cache: cache.clone(),
            key,
            semantic,
        }),
    }
}

/// The route a hit reports: the alias and the target that first answered, no attempts.
pub(crate) fn hit_route(answer: &CachedAnswer) -> RouteInfo {
    RouteInfo {
        route: answer.route.clone(),
        target: answer.target.as_deref().and_then(Target::parse),
        ..RouteInfo::default()
    }
}

/// Whether an answer may be kept: a clean, non-empty, unfiltered answer.
fn cacheable(response: &ChatResponse) -> bool {
    response.finish_reason != FinishReason::ContentFilter
        && (response.message.content.is_some() || !response.message.tool_calls.is_empty())
}

impl Plan {
    /// Stores a whole answer.
    pub(crate) async fn store(self, response: &ChatResponse, route: &RouteInfo) {
        if !cacheable(response) {
            return;
        }
        let answer = CachedAnswer {
            response: response.clone(),
            target: route.target.as_ref().map(ToString::to_string),
            route: route.route.clone(),
        };
        if let Some((scope, embedding)) = self.semantic {
            self.cache.semantic_insert(scope, embedding, answer.clone()).await;
        }
        self.cache.put(&self.key, &answer).await;
    }

    /// What a stream's tap (`crate::tap`) stores its answer with, when (and only when) the
    /// stream ends cleanly.
    pub(crate) fn for_stream(self, route: &RouteInfo) -> StreamStore {
        StreamStore { plan: self, target: route.target.as_ref().map(ToString::to_string), route: route.route.clone() }
    }
}

/// Where a streamed answer goes once it finished cleanly.
pub(crate) struct StreamStore {
    plan: Plan,
    target: Option<String>,
    route: Option<String>,
}

impl StreamStore {
    /// Keeps `response` if it may be kept (in the background: the stream's end waits for
    /// nothing).
    pub(crate) fn store(self, response: &ChatResponse) {
        if !cacheable(response) {
            return;
        }
        let answer = CachedAnswer { response: response.clone(), target: self.target, route: self.route };
        let plan = self.plan;
        if let Some((scope, embedding)) = plan.semantic {
            let (cache, answer) = (plan.cache.clone(), answer.clone());
            tokio::spawn(async move { cache.semantic_insert(scope, embedding, answer).await });
        }
        plan.cache.store(plan.key, answer);
    }
}

/// A cached answer as the events of a stream: start, reasoning, text, refusal, tool calls,
/// usage, finish.
pub(crate) fn replay(response: ChatResponse) -> EventStream {
    let mut events = vec![StreamEvent::Start {
        id: response.id,
        model: response.model,
        created: response.created,
    }];
    for block in response.message.reasoning {
        match block {
            ReasoningBlock::Thinking { text, signature } => {
                if !text.is_empty() {
                    events.push(StreamEvent::ReasoningDelta { text });
                }
                if let Some(signature) = signature {
                    events.push(StreamEvent::ReasoningSignature { signature });
                }
            }
            ReasoningBlock::Redacted { data } => {
                events.push(StreamEvent::RedactedReasoning { data })
            }
        }
    }
    if let Some(text) = response.message.content {
        events.push(StreamEvent::TextDelta { text });
    }
    if let Some(text) = response.message.refusal {
        events.push(StreamEvent::Refusal { text });
    }
    for (index, call) in response.message.tool_calls.into_iter().enumerate() {
        let index = index as u32;
        events.push(StreamEvent::ToolCallStart {
            index,
            id: call.id,
            name: call.name,
        });
        if !call.arguments.is_empty() {
            events.push(StreamEvent::ToolCallArgs {
                index,
                arguments: call.arguments,
            });
        }
    }
    events.push(StreamEvent::Usage(response.usage));
    events.push(StreamEvent::Finish {
        reason: response.finish_reason,
    });
    Box::pin(futures::stream::iter(events.into_iter().map(Ok)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn directives_from_headers() {
        let cases: Vec<(Vec<(&str, &str)>, Directive)> = vec![
            (vec![], Directive::Default),
            (vec![("x-fungible-cache", "off")], Directive::Off),
            (vec![("x-fungible-cache", "No-Cache")], Directive::NoCache),
            (
                vec![("cache-control", "max-age=0, no-cache")],
                Directive::NoCache,
            ),
            (vec![("x-fungible-cache", "no-store")], Directive::NoStore),
            (vec![("cache-control", "no-store")], Directive::NoStore),
            (
                vec![("cache-control", "no-cache, no-store")],
                Directive::Off,
            ),
            (vec![("x-fungible-cache", "force")], Directive::Force),
            (
                vec![("x-fungible-cache", "force"), ("cache-control", "no-store")],
                Directive::NoStore,
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(directive(&headers(&pairs)), expected, "{pairs:?}");
        }
    }
}
