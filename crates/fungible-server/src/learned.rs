//! Learned routes (`strategy = "learned"`): the decider each one routes with, built from the
//! route's active router version in the store and refreshed as versions are trained or
//! rolled back (`fungible route`), and the one way a request becomes router inputs, which
//! training (`fungible route train`) uses too. The poller here also refreshes the adaptive
//! A/B tests' deciders (`crate::adaptive`): the gateway holds one map of deciders.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fungible_gateway::Gateway;
use fungible_gateway::routing::balance::Strategy;
use fungible_gateway::routing::config::RouteConfig;
use fungible_gateway::routing::{Decide, RouteDecision};
use fungible_router::{Router, Shape};
use fungible_store::Store;
use fungible_types::{ChatRequest, Message};
use serde_json::{Value, json};

/// How often a server looks for a new or rolled-back router version.
pub const POLL_INTERVAL: Duration = Duration::from_secs(10);

/// A text embedding fast enough to run on the request path.
pub trait TextEmbed: Send + Sync + std::fmt::Debug {
    /// What a router records as its embedding, e.g. `static:all-minilm-l6-v2`.
    fn name(&self) -> String;
    fn embed(&self, text: &str) -> Result<Vec<f32>, String>;
}

#[cfg(feature = "local")]
impl TextEmbed for fungible_providers::local::StaticEmbedding {
    fn name(&self) -> String {
        fungible_providers::local::StaticEmbedding::name(self)
    }

    fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        fungible_providers::local::StaticEmbedding::embed(self, text).map_err(|e| e.message)
    }
}

/// The embedding learned routes use: the static embedding of the local MiniLM.
pub async fn embedder(gateway: &Gateway) -> Result<Arc<dyn TextEmbed>, String> {
    #[cfg(feature = "local")]
    {
        let local = gateway.local().ok_or("learned routes embed requests with the local MiniLM, and no local models are set up (scripts/setup-models.sh)")?;
        let embedding = local
            .engine()
            .static_embedding(fungible_providers::local::DEFAULT_EMBEDDING_MODEL)
            .await
            .map_err(|e| e.message)?;
        Ok(embedding as Arc<dyn TextEmbed>)
    }
    #[cfg(not(feature = "local"))]
    {
        let _ = gateway;
        Err("this build has no local inference, with which learned routes embed requests: rebuild with --features local".to_owned())
    }
}

/// A request (its messages, and whether it offers tools) as router inputs: its text's
/// embedding and its shape.
pub fn features(messages: &[Message], tools: bool, embed: &dyn TextEmbed) -> Result<(Vec<f32>, Shape), String> {
    let embedding = embed.embed(&fungible_router::request_text(messages))?;
    Ok((embedding, Shape::of(messages, tools)))
}

/// One route's router version, deciding its requests.
#[derive(Debug)]
pub struct Decider {
    /// `ROUTE@vN`: what the inferences it routes are tagged with.
    label: String,
    version: i64,
    router: Router,
    embed: Arc<dyn TextEmbed>,
    /// The router's targets, sorted: what the route's must be.
    sorted_targets: Vec<String>,
}

impl Decider {
    pub fn new(route: &str, version: i64, router: Router, embed: Arc<dyn TextEmbed>) -> Decider {
        let mut sorted_targets = router.targets.clone();
        sorted_targets.sort();
        Decider { label: format!("{route}@v{version}"), version, router, embed, sorted_targets }
    }
}

/// A version this server cannot route with (unreadable, another embedding, no embedding at
/// all): the route keeps its configured order, and each request records why.
#[derive(Debug)]
struct Unusable {
    version: i64,
    reason: String,
}

impl Decide for Unusable {
    fn decide(&self, _: &ChatRequest, _: &[fungible_gateway::Target], _: Option<&str>) -> Result<(Vec<usize>, RouteDecision), String> {
        Err(format!("router v{} is not used: {}", self.version, self.reason))
    }

    fn status(&self) -> Value {
        json!({ "kind": "learned", "version": self.version, "unusable": self.reason })
    }
}

impl Decide for Decider {
    fn status(&self) -> Value {
        json!({
            "kind": "learned",
            "version": self.version,
            "router": self.router.kind().as_str(),
            "threshold": self.router.threshold,
            "targets": self.router.targets,
            "costs": self.router.costs,
            "cost_unit": self.router.cost_unit,
        })
    }

    fn decide(&self, req: &ChatRequest, targets: &[fungible_gateway::Target], _sticky: Option<&str>) -> Result<(Vec<usize>, RouteDecision), String> {
        let started = Instant::now();
        let names: Vec<String> = targets.iter().map(ToString::to_string).collect();
        let mut ours = names.clone();
        ours.sort();
        if self.sorted_targets != ours {
            return Err(format!(
                "router v{} was trained for {}, and the route's targets are now {}: train it again (fungible route train)",
                self.version,
                self.router.targets.join(", "),
                names.join(", ")
            ));
        }
        let (embedding, shape) = features(&req.messages, !req.tools.is_empty(), self.embed.as_ref())?;
        let decision = self.router.decide(&embedding, shape);
        // The router's indices are into its own target list; the route's may be in another order.
        let order: Vec<usize> =
            decision.order.iter().filter_map(|&i| names.iter().position(|n| *n == self.router.targets[i])).collect();
        let scores: serde_json::Map<String, Value> =
            self.router.targets.iter().zip(&decision.scores).map(|(t, s)| (t.clone(), json!((s * 1e4).round() / 1e4))).collect();
        let detail = json!({
            "version": self.version,
            "kind": self.router.kind().as_str(),
            "scores": scores,
            "threshold": (self.router.threshold * 1e4).round() / 1e4,
            "pick": order.first().map(|&i| names[i].clone()),
            "micros": started.elapsed().as_micros() as u64,
        });
        Ok((order, RouteDecision { by: self.label.clone(), detail }))
    }
}

/// The deciders a server has set, kept between refreshes.
#[derive(Debug, Default)]
pub struct Served {
    /// Learned routes: the version served and its decider.
    pub learned: BTreeMap<String, (i64, Arc<dyn Decide>)>,
    /// Adaptive routes' bandits, and the winners already announced.
    pub adaptive: crate::adaptive::Tests,
}

/// Sets the deciders of the gateway's learned routes from the store's active versions, and
/// of its adaptive routes (`routes`) from their feedback. A learned route whose version
/// cannot be read or used keeps its configured order, and the reason is logged.
pub async fn refresh(
    gateway: &Gateway,
    routes: &BTreeMap<String, RouteConfig>,
    store: &Store,
    embed: &Result<Arc<dyn TextEmbed>, String>,
    served: &mut Served,
) {
    let learned = refresh_learned(gateway, store, embed, &mut served.learned).await;
    let adaptive = served.adaptive.refresh(routes, store).await;
    if learned || adaptive {
        let mut all: BTreeMap<String, Arc<dyn Decide>> = served.learned.iter().map(|(route, (_, d))| (route.clone(), d.clone())).collect();
        all.extend(served.adaptive.deciders());
        gateway.set_deciders(all);
    }
}

/// Refreshes the learned routes' deciders; whether any changed.
async fn refresh_learned(
    gateway: &Gateway,
    store: &Store,
    embed: &Result<Arc<dyn TextEmbed>, String>,
    served: &mut BTreeMap<String, (i64, Arc<dyn Decide>)>,
) -> bool {
    let learned = gateway.routes_with(Strategy::Learned);
    if learned.is_empty() {
        return false;
    }
    let active: BTreeMap<String, i64> = match store.active_router_versions().await {
        Ok(rows) => rows.into_iter().collect(),
        Err(e) => {
            tracing::warn!("learned routers not refreshed: {e}");
            return false;
        }
    };
    let mut changed = false;
    for (route, _) in &learned {
        let Some(&version) = active.get(route) else {
            if served.remove(route).is_some() {
                tracing::info!(route = %route, "no router version is active: the configured order until one is trained");
                changed = true;
            }
            continue;
        };
        if served.get(route).is_some_and(|(v, _)| *v == version) {
            continue;
        }
        let decider: Result<Decider, String> = match (embed, store.router(route, Some(version)).await) {
            (Err(e), _) => Err(e.clone()),
            (_, Err(e)) => {
                // The store may be back at the next refresh: nothing changes meanwhile.
                tracing::warn!(route = %route, version, "router version not read: {e}");
                continue;
            }
            (_, Ok(None)) => Err("the version is gone".to_owned()),
            (Ok(embed), Ok(Some(row))) => match Router::from_json(&row.model) {
                Ok(router) if router.embedding != embed.name() => {
                    Err(format!("it embeds with {}, this server with {}: train it again", router.embedding, embed.name()))
                }
                Ok(router) => Ok(Decider::new(route, version, router, embed.clone())),
                Err(e) => Err(e),
            },
        };
        let decider: Arc<dyn Decide> = match decider {
            Ok(d) => {
                tracing::info!(route = %route, version, kind = d.router.kind().as_str(), threshold = d.router.threshold, "learned route: serving router v{version}");
                Arc::new(d)
            }
            Err(reason) => {
                tracing::warn!(route = %route, version, "learned route keeps its configured order: router v{version} is not used: {reason}");
                Arc::new(Unusable { version, reason })
            }
        };
        served.insert(route.clone(), (version, decider));
        changed = true;
    }
    changed
}

/// Serves the active routers and the adaptive tests' shares now, then refreshes them every
/// [`POLL_INTERVAL`]; `None` when no route needs it.
pub fn spawn_poller(gateway: Gateway, routes: BTreeMap<String, RouteConfig>, store: Store) -> Option<tokio::task::JoinHandle<()>> {
    let needed = routes.values().any(|r| matches!(r.strategy, Strategy::Learned | Strategy::Adaptive));
    if !needed {
        return None;
    }
    Some(tokio::spawn(async move {
        let embed = if gateway.routes_with(Strategy::Learned).is_empty() {
            Err("no learned route".to_owned())
        } else {
            embedder(&gateway).await
        };
        let mut served = Served::default();
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            refresh(&gateway, &routes, &store, &embed, &mut served).await;
        }
    }))
}
