//! The load the modes drive: one request, a closed loop at fixed concurrency, an open loop
//! at a fixed rate, and the latencies they collect.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::HttpClient;

#[derive(Default)]
pub(super) struct Measurement {
    pub(super) ok: u64,
    pub(super) errors: u64,
    pub(super) elapsed: Duration,
    /// Microseconds, sorted.
    pub(super) latencies: Vec<u64>,
}

impl Measurement {
    pub(super) fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let idx = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[idx] as f64 / 1000.0
    }

    pub(super) fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// One request with `key` as its bearer token, read to the last byte; the latency in microseconds, or `None` on failure.
pub(super) async fn one(client: &HttpClient, url: &str, key: &str, body: &Bytes) -> Option<u64> {
    let (us, bytes) = send(client, url, key, body).await.ok()?;
    (!bytes.is_empty()).then_some(us)
}

/// Why a request was not answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// The gateway answered with a status other than 2xx.
    Status,
    /// No answer, or the connection broke before the last byte.
    Transport,
}

/// One request with `key` as its bearer token, read to the last byte: the latency in
/// microseconds and the body, or why it failed.
pub(super) async fn send(client: &HttpClient, url: &str, key: &str, body: &Bytes) -> Result<(u64, Bytes), Failure> {
    let start = Instant::now();
    let request = hyper::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(Full::new(body.clone()))
        .map_err(|_| Failure::Transport)?;
    let response = client.request(request).await.map_err(|_| Failure::Transport)?;
    let ok = response.status().is_success();
    let bytes = response.into_body().collect().await.map_err(|_| Failure::Transport)?.to_bytes();
    if !ok {
        return Err(Failure::Status);
    }
    Ok((start.elapsed().as_micros() as u64, bytes))
}

/// `concurrency` workers, each sending its next request when the last one finished.
pub(super) async fn closed_loop(client: &HttpClient, url: &str, key: &str, body: &Bytes, concurrency: usize, duration: Duration) -> Measurement {
    let start = Instant::now();
    let deadline = start + duration;
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, key, body, errors) = (client.clone(), url.to_owned(), key.to_owned(), body.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                match one(&client, &url, &key, &body).await {
                    Some(us) => latencies.push(us),
                    None => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap_or_default());
    }
    finish(latencies, errors.load(Ordering::Relaxed), start.elapsed())
}

/// Requests started on a fixed schedule whatever the responses do (an open loop: a slow
/// response cannot slow the offered load down). Latency counts from the moment each request
/// was sent: tokio's timer has millisecond granularity, so counting from the scheduled
/// instant would add up to 1 ms of timer slack to every sample. Queueing, if the target
/// cannot keep up, shows as a lower achieved rate.
pub(super) async fn open_loop(client: &HttpClient, url: &str, key: &str, body: &Bytes, rate: u64, duration: Duration) -> Measurement {
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let total = (duration.as_secs_f64() * rate as f64) as u64;
    let mut tasks = Vec::with_capacity(total as usize);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..total {
        ticker.tick().await;
        let (client, url, key, body) = (client.clone(), url.to_owned(), key.to_owned(), body.clone());
        tasks.push(tokio::spawn(async move { one(&client, &url, &key, &body).await }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await.ok().flatten() {
            Some(us) => latencies.push(us),
            None => errors += 1,
        }
    }
    finish(latencies, errors, start.elapsed())
}

pub(super) fn finish(mut latencies: Vec<u64>, errors: u64, elapsed: Duration) -> Measurement {
    latencies.sort_unstable();
    Measurement { ok: latencies.len() as u64, errors, elapsed, latencies }
}
