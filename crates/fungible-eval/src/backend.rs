//! What the runner calls to get an answer: [`ChatBackend`]. [`GatewayBackend`] is the real one,
//! an in-process [`Gateway`] with the same config as `fungible serve`, so routes, aliases,
//! A/B variants, retries and the local models all behave as they do for live traffic.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use fungible_gateway::{Gateway, GatewayError, RouteHints};
use fungible_store::PriceTable;
use fungible_types::{ChatRequest, StreamEvent, Usage};
use futures::StreamExt;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One answer and what it cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    pub text: String,
    /// `PROVIDER/MODEL` that answered.
    pub target: Option<String>,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub usage: Option<Usage>,
    pub cost_usd: Option<f64>,
}

/// A failed call: a snake_case class (`rate_limited`, `timeout`, `unknown_model`, ...) and a
/// message (upstream messages are already scrubbed of keys by the providers).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{class}: {message}")]
pub struct CallError {
    pub class: String,
    pub message: String,
}

impl CallError {
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> CallError {
        CallError {
            class: class.into(),
            message: message.into(),
        }
    }
}

/// Sends chat requests and embeds texts. Object-safe so the runner holds an `Arc<dyn _>`.
pub trait ChatBackend: Send + Sync + 'static {
    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<Answer, CallError>>;
    fn embed(
        &self,
        model: &str,
        inputs: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, CallError>>;
}

/// The gateway, streaming (so time to first token is measured), priced with the config's
/// price table; a route with retrieved examples gets them as it does when it serves.
pub struct GatewayBackend {
    gateway: Gateway,
    prices: PriceTable,
    examples: fungible_datasets::Examples,
}

impl GatewayBackend {
    pub fn new(gateway: Gateway, prices: PriceTable) -> GatewayBackend {
        GatewayBackend { gateway, prices, examples: fungible_datasets::Examples::default() }
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Inserts the retrieved examples of the routes `examples` has (`[models.NAME] examples`).
    pub fn with_examples(mut self, examples: fungible_datasets::Examples) -> GatewayBackend {
        self.examples = examples;
        self
    }

    async fn answer(&self, mut req: ChatRequest) -> Result<Answer, CallError> {
        if let Some((augmented, _)) = self.examples.augment(&req, &self.gateway).await {
            req = augmented;
        }
        if let Some(model) = self.examples.arm_model(&req.model) {
            req.model = model.to_owned();
        }
        req.stream = true;
        req.stream_include_usage = true;
        let start = Instant::now();
        let routed = self
            .gateway
            .chat_stream_routed(&req, &RouteHints::default())
            .await
            .map_err(|e| gateway_error(&e.error))?;
        let target = routed
            .route
            .target
            .as_ref()
            .map(|t| (t.provider.clone(), t.model.clone()));
        let mut stream = routed.value;
        let mut text = String::new();
        let mut usage = None;
        let mut ttft_ms = None;
        while let Some(event) = stream.next().await {
            match event.map_err(|e| CallError::new(e.kind.class(), e.message))? {
                StreamEvent::TextDelta { text: t } | StreamEvent::Refusal { text: t } => {
                    ttft_ms.get_or_insert_with(|| start.elapsed().as_millis() as u64);
                    text.push_str(&t);
                }
                StreamEvent::ReasoningDelta { .. }
                | StreamEvent::ToolCallStart { .. }
                | StreamEvent::ToolCallArgs { .. } => {
                    ttft_ms.get_or_insert_with(|| start.elapsed().as_millis() as u64);
                }
                StreamEvent::Usage(u) => usage = Some(u),
                _ => {}
            }
        }
        let cost_usd = match (&target, &usage) {
            (Some((provider, model)), Some(u)) => self.prices.cost(provider, model, u),
            // A local model answered without usage: it costs nothing all the same.
            (Some((provider, model)), None) => self.prices.get(provider, model).filter(|p| *p == fungible_store::Price::FREE).map(|_| 0.0),
            _ => None,
        };
        Ok(Answer {
            text,
            target: target.map(|(p, m)| format!("{p}/{m}")),
            latency_ms: start.elapsed().as_millis() as u64,
            ttft_ms,
            usage,
            cost_usd,
        })
    }
}

impl ChatBackend for GatewayBackend {
    fn chat(&self, req: ChatRequest) -> BoxFuture<'_, Result<Answer, CallError>> {
        Box::pin(self.answer(req))
    }

    fn embed(
        &self,
        model: &str,
        inputs: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, CallError>> {
        let model = model.to_owned();
        Box::pin(async move {
            self.gateway
                .embed(&model, inputs)
                .await
                .map(|(e, _)| e.vectors)
                .map_err(|e| gateway_error(&e))
        })
    }
}

fn gateway_error(e: &GatewayError) -> CallError {
    match e {
        GatewayError::UnknownModel(message) => CallError::new("unknown_model", message.clone()),
        GatewayError::Provider(p) => CallError::new(p.kind.class(), p.message.clone()),
    }
}

