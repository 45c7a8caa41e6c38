//! Adaptive A/B tests (`strategy = "adaptive"`): each route's bandit (`fungible-router`'s
//! `bandit`), assessed from the feedback on its variants' answers in the store at every
//! refresh (`crate::learned::refresh`), so every instance sharing the store splits alike; its
//! decider draws each request's variant by the shares (a sticky key always draws the same
//! point), and once the test stops, sends every request to the winner.

use std::collections::BTreeMap;
use std::sync::Arc;

use fungible_gateway::routing::balance::{Strategy, sticky_seed};
use fungible_gateway::routing::config::{AdaptiveMetric, RouteConfig};
use fungible_gateway::routing::{Decide, RouteDecision};
use fungible_router::bandit::{self, Arm, Assessment, Metric, Settings};
use fungible_store::{Store, VariantFeedback};
use fungible_types::ChatRequest;
use rand::RngExt;
use serde_json::{Value, json};

/// The adaptive routes' current assessments, and the winners already announced.
#[derive(Debug, Default)]
pub struct Tests {
    deciders: BTreeMap<String, Arc<Bandit>>,
}

impl Tests {
    /// Reassesses every adaptive route of `routes` from the store; whether any decider
    /// changed.
    pub async fn refresh(&mut self, routes: &BTreeMap<String, RouteConfig>, store: &Store) -> bool {
        let mut changed = false;
        for (name, route) in routes {
            let (Strategy::Adaptive, Some(settings)) = (route.strategy, &route.adaptive) else { continue };
            let feedback = match store.variant_feedback(name).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(route = %name, "adaptive test not reassessed: {e}");
                    continue;
                }
            };
            let settings = Settings {
                metric: match settings.metric {
                    AdaptiveMetric::Boolean => Metric::Boolean,
                    AdaptiveMetric::Score => Metric::Score,
                },
                min_share: settings.min_share,
                confidence: settings.confidence,
                min_samples: settings.min_samples,
            };
            let variants: Vec<(String, String)> =
                route.targets.iter().map(|t| (t.name.clone(), t.target.to_string())).collect();
            let arms: Vec<Arm> = variants.iter().map(|(v, _)| arm(feedback.iter().find(|f| &f.variant == v), settings.metric)).collect();
            // Seeded by the route and its counts: the same feedback gives every instance the
            // same shares.
            let before = self.deciders.get(name);
            if before.is_some_and(|b| b.arms == arms) {
                continue;
            }
            // A stopped test stays stopped in this process: after the stop only the winner
            // gets traffic, and its later feedback must not reopen the test.
            if let Some(b) = before
                && b.assessment.winner.is_some()
            {
                let decider = Bandit { arms, ..b.as_ref().clone() };
                self.deciders.insert(name.clone(), Arc::new(decider));
                changed = true;
                continue;
            }
            let seed = sticky_seed(name, &format!("{arms:?}"));
            let assessment = bandit::assess(&arms, &settings, seed);
            if let Some(w) = assessment.winner {
                tracing::info!(
                    route = %name,
                    winner = %variants[w].0,
                    p_best = assessment.p_best[w],
                    "adaptive test stopped: every request now goes to its winner"
                );
            }
            self.deciders.insert(name.clone(), Arc::new(Bandit { route: name.clone(), variants, settings, arms, assessment }));
            changed = true;
        }
        changed
    }

    pub fn deciders(&self) -> impl Iterator<Item = (String, Arc<dyn Decide>)> + '_ {
        self.deciders.iter().map(|(route, d)| (route.clone(), d.clone() as Arc<dyn Decide>))
    }
}

fn arm(feedback: Option<&VariantFeedback>, metric: Metric) -> Arm {
    match (feedback, metric) {
        (None, _) => Arm::default(),
        (Some(f), Metric::Boolean) => Arm { rated: f.booleans, sum: f.positives as f64, sum_sq: f.positives as f64 },
        (Some(f), Metric::Score) => Arm { rated: f.scores, sum: f.score_sum, sum_sq: f.score_sq_sum },
    }
}

/// One adaptive route's test, as last assessed.
#[derive(Debug, Clone)]
pub struct Bandit {
    route: String,
    /// Variant name and `PROVIDER/MODEL`, in the route's order.
    variants: Vec<(String, String)>,
    settings: Settings,
    arms: Vec<Arm>,
    assessment: Assessment,
}

impl Decide for Bandit {
    fn decide(&self, _req: &ChatRequest, targets: &[fungible_gateway::Target], sticky: Option<&str>) -> Result<(Vec<usize>, RouteDecision), String> {
        if targets.len() != self.variants.len() || targets.iter().zip(&self.variants).any(|(t, (_, v))| &t.to_string() != v) {
            return Err("the route's targets differ from the test's".to_owned());
        }
        // A sticky key's point in [0, 1) is fixed by the route and the key.
        let u = match sticky {
            Some(key) => (sticky_seed(&self.route, key) >> 11) as f64 / (1u64 << 53) as f64,
            None => rand::rng().random::<f64>(),
        };
        let first = bandit::pick(&self.assessment.shares, u);
        let mut rest: Vec<usize> = (0..targets.len()).filter(|&i| i != first).collect();
        rest.sort_by(|&a, &b| self.assessment.p_best[b].total_cmp(&self.assessment.p_best[a]));
        let by = if self.assessment.winner.is_some() { "adaptive:winner" } else { "adaptive" };
        let detail = json!({ "share": (self.assessment.shares[first] * 1e4).round() / 1e4 });
        Ok((std::iter::once(first).chain(rest).collect(), RouteDecision { by: by.to_owned(), detail }))
    }

    fn status(&self) -> Value {
        let variants: Vec<Value> = self
            .variants
            .iter()
            .enumerate()
            .map(|(i, (name, target))| {
                json!({
                    "name": name,
                    "target": target,
                    "rated": self.arms[i].rated,
                    "mean": self.arms[i].mean(),
                    "p_best": self.assessment.p_best[i],
                    "share": self.assessment.shares[i],
                })
            })
            .collect();
        json!({
            "kind": "adaptive",
            "metric": match self.settings.metric { Metric::Boolean => "boolean", Metric::Score => "score" },
            "min_share": self.settings.min_share,
            "confidence": self.settings.confidence,
            "min_samples": self.settings.min_samples,
            "state": if self.assessment.winner.is_some() { "stopped" } else { "running" },
            "winner": self.assessment.winner.map(|w| self.variants[w].0.clone()),
            "variants": variants,
        })
    }
}
