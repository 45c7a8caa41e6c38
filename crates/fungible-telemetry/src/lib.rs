//! OpenTelemetry for fungible: every finished inference (the [`InferenceRecord`] the
//! recording hooks build) becomes one span, with a child span per attempt, exported over
//! OTLP/HTTP (protobuf) with the GenAI semantic-convention attributes (`spans.rs`).
//!
//! Exporting never touches the request path: [`Telemetry::record`] samples, builds the spans
//! and does a `try_send` into a bounded queue; one task batches them and calls the OTLP
//! exporter, each call bounded by a timeout. A slow or down collector fills the queue, and
//! then spans are dropped and counted ([`TelemetryCounters`]), never waited for.
//! [`Telemetry::shutdown`] exports what is queued (bounded by the export timeout).
//!
//! An incoming W3C `traceparent` (and `tracestate`) makes the inference span a child of the
//! caller's span ([`Parent::from_headers`]); the caller's sampled flag is followed, new
//! traces are sampled by `[telemetry] sample_ratio`.

mod config;
mod spans;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fungible_store::{Bodies, InferenceRecord};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SamplingDecision, SpanContext, TraceContextExt, TraceFlags};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, ShouldSample, SpanData, SpanExporter,
};
use tokio::sync::{mpsc, oneshot};

pub use config::{
    DEFAULT_BATCH_SIZE, DEFAULT_ENDPOINT, DEFAULT_EXPORT_TIMEOUT_SECS, DEFAULT_FLUSH_INTERVAL_MS,
    DEFAULT_QUEUE_CAPACITY, DEFAULT_SERVICE_NAME, TelemetryConfig, TelemetryConfigError,
};
pub use spans::provider_name;

/// The caller's span, from the W3C trace-context headers of the request (if valid).
#[derive(Debug, Clone, Default)]
pub struct Parent(Option<SpanContext>);

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

impl Parent {
    /// Reads `traceparent` / `tracestate`; no (or an invalid) `traceparent` is no parent.
    pub fn from_headers(headers: &http::HeaderMap) -> Parent {
        if !headers.contains_key("traceparent") {
            return Parent(None);
        }
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let span = cx.span().span_context().clone();
        Parent(span.is_valid().then_some(span))
    }

    pub fn span_context(&self) -> Option<&SpanContext> {
        self.0.as_ref()
    }
}

/// What the exporter did, for logs and metrics. Counts are of spans.
#[derive(Debug, Default)]
pub struct TelemetryCounters {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped: the queue was full, the export failed or timed out, or shut down.
    pub dropped: AtomicU64,
    /// Export requests that failed or timed out.
    pub export_errors: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("could not build the OTLP exporter: {0}")]
    Exporter(String),
}

enum Message {
    Spans(Vec<SpanData>),
    Flush(oneshot::Sender<()>),
}

struct Inner {
    tx: mpsc::Sender<Message>,
    capture_content: bool,
    sampler: Sampler,
    ids: RandomIdGenerator,
    scope: InstrumentationScope,
    counters: Arc<TelemetryCounters>,
    closed: AtomicBool,
    export_timeout: Duration,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The handle the request path holds. Cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("counters", &self.inner.counters)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Builds the OTLP/HTTP exporter and starts the export task on the current runtime.
    pub fn start(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
        let client = reqwest::Client::builder()
            .timeout(config.export_timeout)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.endpoint.clone())
            .with_timeout(config.export_timeout)
            .with_headers(config.headers.clone().into_iter().collect())
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        exporter.set_resource(
            &Resource::builder()
                .with_service_name(config.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        );
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let counters = Arc::new(TelemetryCounters::default());
        let task = tokio::spawn(export_loop(
            exporter,
            rx,
            config.batch_size.max(1),
            config.flush_interval,
            config.export_timeout,
            counters.clone(),
        ));
        Ok(Telemetry {
            inner: Arc::new(Inner {
                tx,
                capture_content: config.capture_content,
                sampler: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    config.sample_ratio,
                ))),
                ids: RandomIdGenerator::default(),
                scope: InstrumentationScope::builder("fungible")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build(),
                counters,
                closed: AtomicBool::new(false),
                export_timeout: config.export_timeout,
                task: std::sync::Mutex::new(Some(task)),
            }),
        })
    }

    /// Queues the spans of `record`, with its canonical request and response (a child of
    /// `parent` when there is one); never waits. A full queue drops them.
    pub fn record(&self, record: &InferenceRecord, bodies: &Bodies, parent: &Parent) {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Relaxed) {
            self.count_drop(1 + record.attempts.len(), "telemetry is shut down");
            return;
        }
        let parent = parent.span_context();
        let trace_id = parent.map_or_else(|| inner.ids.new_trace_id(), SpanContext::trace_id);
        let parent_cx = parent.map(|p| Context::new().with_remote_span_context(p.clone()));
        let sampling = inner.sampler.should_sample(
            parent_cx.as_ref(),
            trace_id,
            &spans::inference_name(record),
            &spans::INFERENCE_KIND,
            &[],
            &[],
        );
        if sampling.decision != SamplingDecision::RecordAndSample {
            return;
        }
        let context = SpanContext::new(
            trace_id,
            inner.ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            sampling.trace_state,
        );
        let batch = spans::spans(
            record,
            bodies,
            context,
            parent,
            inner.capture_content,
            &inner.ids,
            &inner.scope,
        );
        let n = batch.len();
        if inner.tx.try_send(Message::Spans(batch)).is_err() {
            self.count_drop(n, "the queue is full (the collector is slow or down)");
        }
    }

    fn count_drop(&self, spans: usize, why: &str) {
        let before = self
            .inner
            .counters
            .dropped
            .fetch_add(spans as u64, Ordering::Relaxed);
        // The first drop, then about one line per 1,000 spans.
        if before == 0 || before / 1000 != (before + spans as u64) / 1000 {
            tracing::warn!(
                dropped = before + spans as u64,
                "telemetry spans dropped: {why}"
            );
        }
    }

    pub fn counters(&self) -> &TelemetryCounters {
        &self.inner.counters
    }

    /// Waits until every span queued before this call is exported (or dropped).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops taking spans and exports what is queued, waiting at most about twice the export
    /// timeout (a collector that is down is not waited for longer).
    pub async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(2 * self.inner.export_timeout, self.flush()).await;
        let task = self.inner.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        let c = &self.inner.counters;
        tracing::info!(
            exported = c.exported.load(Ordering::Relaxed),
            dropped = c.dropped.load(Ordering::Relaxed),
            "telemetry stopped"
        );
    }
}

async fn export_loop(
    mut exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<Message>,
    batch_size: usize,
    flush_interval: Duration,
    export_timeout: Duration,
    counters: Arc<TelemetryCounters>,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(batch_size);
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        // Block for the first message, then take what comes within `flush_interval`.
        let deadline = tokio::time::Instant::now() + flush_interval;
        let mut next = Some(first);
        loop {
            match next.take() {
                Some(Message::Spans(spans)) => batch.extend(spans),
                Some(Message::Flush(done)) => {
                    waiting.push(done);
                    break;
                }
                None => {}
            }
            if batch.len() >= batch_size {
                break;
            }
            next = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(m)) => Some(m),
                        _ => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
        }
        export(&exporter, &mut batch, export_timeout, &counters).await;
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
    export(&exporter, &mut batch, export_timeout, &counters).await;
    let _ = exporter.shutdown();
}

/// Exports `batch` once (a failed batch is dropped: spans are not worth holding up the
/// next ones for).
async fn export(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: &mut Vec<SpanData>,
    timeout: Duration,
    counters: &TelemetryCounters,
) {
    if batch.is_empty() {
        return;
    }
    let spans = std::mem::take(batch);
    let n = spans.len() as u64;
    let error = match tokio::time::timeout(timeout, exporter.export(spans)).await {
        Ok(Ok(())) => {
            counters.exported.fetch_add(n, Ordering::Relaxed);
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {timeout:?}"),
    };
    counters.dropped.fetch_add(n, Ordering::Relaxed);
    let failures = counters.export_errors.fetch_add(1, Ordering::Relaxed) + 1;
    if failures == 1 || failures.is_multiple_of(100) {
        tracing::warn!(failures, spans = n, "telemetry export failed: {error}");
    }
}
