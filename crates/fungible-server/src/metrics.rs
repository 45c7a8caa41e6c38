//! The Prometheus metrics: counters and histograms of every recorded inference (by provider,
//! model and route), and the store's own counters, rendered on `/metrics`.

use fungible_store::{InferenceRecord, Recorder};
use prometheus::{CounterVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The Prometheus metrics, in their own registry (so each app, and each test, has its own).
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    errors: IntCounterVec,
    tokens: IntCounterVec,
    cost: CounterVec,
    latency: HistogramVec,
    ttft: HistogramVec,
}

impl Metrics {
    #[allow(clippy::expect_used)] // The names and labels below are constant and valid.
    pub(crate) fn new() -> Metrics {
        let registry = Registry::new();
        let labels = &["provider", "model", "route"];
        let requests = IntCounterVec::new(
            Opts::new("fungible_requests_total", "Inferences answered or failed."),
            labels,
        )
        .expect("metric");
        let errors = IntCounterVec::new(
            Opts::new("fungible_errors_total", "Failed inferences by error class."),
            &["provider", "model", "route", "class"],
        )
        .expect("metric");
        let tokens = IntCounterVec::new(
            Opts::new(
                "fungible_tokens_total",
                "Tokens by kind (input, output, cache_read, cache_write, reasoning).",
            ),
            &["provider", "model", "route", "kind"],
        )
        .expect("metric");
        let cost = CounterVec::new(
            Opts::new(
                "fungible_cost_usd_total",
                "Cost of the inferences whose price is known, in USD.",
            ),
            labels,
        )
        .expect("metric");
        let buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        ];
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "fungible_request_duration_seconds",
                "Whole inference latency.",
            )
            .buckets(buckets.clone()),
            labels,
        )
        .expect("metric");
        let ttft = HistogramVec::new(
            HistogramOpts::new(
                "fungible_time_to_first_token_seconds",
                "Time to the first content of a stream.",
            )
            .buckets(buckets),
            labels,
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(tokens.clone()),
            Box::new(cost.clone()),
            Box::new(latency.clone()),
            Box::new(ttft.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Metrics {
            registry,
            requests,
            errors,
            tokens,
            cost,
            latency,
            ttft,
        }
    }

    pub(crate) fn observe(&self, r: &InferenceRecord) {
        let provider = r.provider.as_deref().unwrap_or("");
        let model = r.model.as_deref().unwrap_or("");
        let route = r.route.as_deref().unwrap_or("");
        let labels = [provider, model, route];
        self.requests.with_label_values(&labels).inc();
        if let Some(class) = &r.error {
            self.errors
                .with_label_values(&[provider, model, route, class])
                .inc();
        }
        for (kind, n) in [
            ("input", r.usage.input_tokens),
            ("output", r.usage.output_tokens),
            ("cache_read", r.usage.cache_read_tokens),
            ("cache_write", r.usage.cache_write_tokens),
            ("reasoning", r.usage.reasoning_tokens),
        ] {
            if n > 0 {
                self.tokens
                    .with_label_values(&[provider, model, route, kind])
                    .inc_by(n);
            }
        }
        if let Some(cost) = r.cost {
            self.cost.with_label_values(&labels).inc_by(cost);
        }
        self.latency
            .with_label_values(&labels)
            .observe(r.latency_ms / 1000.0);
        if let Some(ttft) = r.ttft_ms {
            self.ttft.with_label_values(&labels).observe(ttft / 1000.0);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, recorder: Option<&Recorder>) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8(out).unwrap_or_default();
        if let Some(r) = recorder {
            use std::sync::atomic::Ordering::Relaxed;
            let c = r.counters();
            text.push_str(&format!(
                "# HELP fungible_store_written_total Inference records written to the store.\n# TYPE fungible_store_written_total counter\nfungible_store_written_total {}\n\
                 # HELP fungible_store_dropped_total Inference records dropped (queue full, or lost at shutdown).\n# TYPE fungible_store_dropped_total counter\nfungible_store_dropped_total {}\n\
                 # HELP fungible_store_write_errors_total Failed batch writes (retried).\n# TYPE fungible_store_write_errors_total counter\nfungible_store_write_errors_total {}\n\
                 # HELP fungible_store_queued Inference records waiting to be written.\n# TYPE fungible_store_queued gauge\nfungible_store_queued {}\n\
                 # HELP fungible_store_queued_bytes Bytes (estimated) of the records queued or being written.\n# TYPE fungible_store_queued_bytes gauge\nfungible_store_queued_bytes {}\n",
                c.written.load(Relaxed),
                c.dropped.load(Relaxed),
                c.write_errors.load(Relaxed),
                r.queued(),
                c.queued_bytes.load(Relaxed)
            ));
        }
        text
    }
}
