//! The learned router (`strategy = "learned"`): for each request, a predicted quality per
//! target from the request's text embedding and its shape (length, tools, turns); the request
//! goes to the cheapest target whose prediction clears the route's threshold, and to the
//! best-predicted one when none does.
//!
//! Two kinds of model, both trained here from [`Sample`]s (labelled requests: eval results,
//! shadow scores, feedback; the binary gathers them): per-target logistic regression on the
//! embedding and shape ([`Kind::Logistic`]), and similarity-weighted nearest neighbours
//! ([`Kind::Knn`], in the spirit of RouteLLM's similarity-weighted ranking). [`train`] fits each on one split, calibrates its
//! threshold on a second to the route's [`Goal`], reports each on a third it never saw, and
//! keeps the kind with the better average performance gap recovered (APGR).
//!
//! This crate does no I/O and knows no embedding model: callers pass embeddings in, the same
//! way at training and serving time.

mod b64;
pub mod bandit;
mod calibrate;
mod model;
mod train;

use fungible_types::{Message, Role};
use serde::{Deserialize, Serialize};

pub use calibrate::{Goal, Point, apgr};
pub use model::Kind;
pub use train::{KindReport, Report, TrainError, TrainOptions, train};

/// The most characters of a request's text the router reads (what an eval result keeps of
/// its input, so eval labels and live requests are read alike).
pub const MAX_TEXT_CHARS: usize = 500;

/// The text the router embeds: the last user message (the last message when there is no
/// user message), cut to [`MAX_TEXT_CHARS`] characters.
pub fn request_text(messages: &[Message]) -> String {
    let text = messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .or(messages.last())
        .map(Message::joined_text)
        .unwrap_or_default();
    cut(&text)
}

/// `text` cut to [`MAX_TEXT_CHARS`] characters.
pub fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT_CHARS) {
        Some((i, _)) => text[..i].to_owned(),
        None => text.to_owned(),
    }
}

/// What the router reads of a request beside its text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    /// Characters in all messages.
    pub chars: usize,
    pub tools: bool,
    /// Messages in the conversation.
    pub turns: usize,
}

impl Shape {
    pub fn of(messages: &[Message], tools: bool) -> Shape {
        Shape { chars: messages.iter().map(|m| m.joined_text().chars().count()).sum(), tools, turns: messages.len() }
    }

    /// The shape as model inputs, each of order 1.
    pub(crate) fn features(self) -> [f32; 3] {
        [
            ((1 + self.chars) as f32).ln() / 8.0,
            if self.tools { 1.0 } else { 0.0 },
            ((1 + self.turns) as f32).ln() / 2.0,
        ]
    }
}

/// One labelled request: its embedding and shape, and the quality (0 to 1) of each target's
/// answer that is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// What decides the split: samples with the same key (an eval item, a request) always
    /// fall in the same one.
    pub key: String,
    pub embedding: Vec<f32>,
    pub shape: Shape,
    /// Target (`PROVIDER/MODEL`) → quality.
    pub labels: std::collections::BTreeMap<String, f64>,
}

/// A trained router: what a version in the store holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Router {
    /// The targets it predicts for, `PROVIDER/MODEL`.
    pub targets: Vec<String>,
    /// The cost of one request to each target, in `cost_unit`.
    pub costs: Vec<f64>,
    /// `usd` (recorded prices) or `ms` (compute time, where targets have no price).
    pub cost_unit: String,
    /// A target whose predicted quality clears this is good enough.
    pub threshold: f64,
    /// The embedding its inputs came from, e.g. `static:all-minilm-l6-v2`.
    pub embedding: String,
    pub dims: usize,
    model: model::Model,
}

/// What the router decided for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Predicted quality per target, in [`Router::targets`] order.
    pub scores: Vec<f64>,
    /// Target indices in the order to try them: the pick, then the rest by predicted quality.
    pub order: Vec<usize>,
}

impl Router {
    pub fn kind(&self) -> Kind {
        self.model.kind()
    }

    /// The labelled requests a nearest-neighbour router keeps (`None` for logistic).
    pub fn points(&self) -> Option<usize> {
        self.model.points()
    }

    /// Predicts each target's quality and orders the targets. `embedding` must have
    /// [`Router::dims`] values (a shorter or longer one is read as far as it goes).
    pub fn decide(&self, embedding: &[f32], shape: Shape) -> Decision {
        let scores = self.model.predict(embedding, shape);
        let order = calibrate::pick(&scores, &self.costs, self.threshold);
        Decision { scores, order }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Router, String> {
        let router: Router = serde_json::from_str(text).map_err(|e| format!("not a router: {e}"))?;
        router.model.check(router.targets.len(), router.dims)?;
        if router.costs.len() != router.targets.len() {
            return Err(format!("{} costs for {} targets", router.costs.len(), router.targets.len()));
        }
        Ok(router)
    }
}

#[cfg(test)]
mod tests;
