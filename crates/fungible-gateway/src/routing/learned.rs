//! `strategy = "learned"` and `"adaptive"`: the route's order comes, per request, from a
//! decider the binary sets at run time ([`Gateway::set_deciders`]): the router trained for
//! the route, or the A/B test's bandit, both from the store (`fungible-router`). The gateway
//! knows neither the store nor the model: it asks the decider for an order and records what
//! it said.

use std::collections::BTreeMap;
use std::sync::Arc;

use fungible_types::ChatRequest;
use serde_json::Value;

use crate::Gateway;
use crate::target::Target;

/// Orders a learned or adaptive route's targets for one request.
pub trait Decide: Send + Sync + std::fmt::Debug {
    /// The order to try `targets` in for `req` (indices into `targets`, each once; any left
    /// out are tried after, in their configured order), with what to record. `sticky` is the
    /// request's sticky key (its user, or its session header), for a route that has one.
    /// `Err` says why this decider cannot decide for these targets (a router trained for
    /// others): the route then keeps its own order, and the reason is recorded.
    fn decide(&self, req: &ChatRequest, targets: &[Target], sticky: Option<&str>) -> Result<(Vec<usize>, RouteDecision), String>;

    /// Where the decider stands, for `GET /v1/routes` (the router version, the test's shares
    /// and winner).
    fn status(&self) -> Value;
}

/// What a learned route's decision was, recorded with the inference.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteDecision {
    /// What decided: the router version (`v3`), or `none` when the configured order was kept.
    pub by: String,
    /// The detail: the scores, the threshold, the time taken; or why nothing decided.
    pub detail: Value,
}

impl RouteDecision {
    pub(crate) fn none(reason: impl Into<String>) -> RouteDecision {
        RouteDecision { by: "none".to_owned(), detail: serde_json::json!({ "reason": reason.into() }) }
    }
}

/// The learned order of `targets` for `req`: the decider's, completed with any target it
/// left out, or the configured order and why.
pub(crate) fn decide(
    decider: &Arc<dyn Decide>,
    req: &ChatRequest,
    targets: &[Target],
    sticky: Option<&str>,
) -> (Vec<usize>, RouteDecision) {
    let configured = || (0..targets.len()).collect::<Vec<usize>>();
    match decider.decide(req, targets, sticky) {
        Ok((order, decision)) => {
            let mut seen = vec![false; targets.len()];
            let mut out = Vec::with_capacity(targets.len());
            for i in order {
                if i < targets.len() && !seen[i] {
                    seen[i] = true;
                    out.push(i);
                }
            }
            out.extend((0..targets.len()).filter(|&i| !seen[i]));
            (out, decision)
        }
        Err(reason) => (configured(), RouteDecision::none(reason)),
    }
}

impl Gateway {
    /// Sets the deciders of learned routes, by route name, in place of the ones set before:
    /// a learned route without one keeps its configured order. Requests already routed keep
    /// their order.
    pub fn set_deciders(&self, deciders: BTreeMap<String, Arc<dyn Decide>>) {
        self.inner.routing.deciders.store(Arc::new(deciders));
    }

    /// The routes with `strategy` and their targets: what the binary loads deciders for.
    pub fn routes_with(&self, strategy: super::Strategy) -> Vec<(String, Vec<Target>)> {
        self.inner
            .routing
            .routes
            .load()
            .iter()
            .filter(|(_, r)| r.strategy == strategy)
            .map(|(name, r)| (name.clone(), r.targets.iter().filter(|t| t.config.share.is_none()).map(|t| t.config.target.clone()).collect()))
            .collect()
    }

    /// What the decider of route `name` says of itself, if it has one.
    pub fn decider_status(&self, name: &str) -> Option<Value> {
        self.inner.routing.deciders.load().get(name).map(|d| d.status())
    }
}
