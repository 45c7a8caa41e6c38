//! The memory budget of the requests in flight (`[server] max_inflight_body_bytes`).
//!
//! Each request with a body is charged, as its bytes arrive, for those bytes plus an
//! estimate of what parsing them as JSON into a `serde_json::Value` adds ([`JsonCost`]: a
//! B-tree node per object, a slot per value, a copy of each string). The estimate matters:
//! a 30 MB body of 900,000 one-character messages is about 1 GB as a `Value` tree, 35 times its
//! size, while a 30 MB body of text is about twice its size. A body whose `Content-Length` is
//! known is charged twice its length before a byte is read (its bytes, and the least parsing
//! them can take), and only what the estimate adds beyond that as it arrives.
//!
//! A charge that would take the whole budget's bytes is refused with 413 (the request can
//! never be served: retrying is useless); one that would take more than is free now with 503
//! and `Retry-After: 1`, at once. Waiting instead would hold the client's connection and the
//! part of the budget its body already took, and requests that each hold part and wait for
//! more can wait on each other for ever; the SDKs retry a 503 with backoff.
//!
//! The charge is a semaphore's permits (in KiB), held by [`layer`] for the request: the
//! parse estimate until the handler returns (the `Value` tree is gone by then), the body's
//! bytes until the response body has been sent or dropped (a stream keeps the request for a
//! continuation on another target).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::AppState;
use crate::error::ApiError;

/// Permits are KiB, so a budget past 4 GiB still fits tokio's `u32` permit counts.
const UNIT: usize = 1024;

/// The default `[server] max_inflight_body_bytes`.
pub const DEFAULT_MAX_INFLIGHT_BODY_BYTES: usize = 256 << 20;

/// The budget all requests in flight share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct InflightBudget {
    semaphore: Arc<Semaphore>,
    bytes: usize,
}

impl InflightBudget {
    pub fn new(bytes: usize) -> InflightBudget {
        let units = bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        InflightBudget { semaphore: Arc::new(Semaphore::new(units)), bytes }
    }

    /// The budget, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes not charged to any request now (to the KiB).
    pub fn available(&self) -> usize {
        self.semaphore.available_permits() * UNIT
    }
}

impl Default for InflightBudget {
    fn default() -> InflightBudget {
        InflightBudget::new(DEFAULT_MAX_INFLIGHT_BODY_BYTES)
    }
}

/// Why a request's charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// More than the whole budget: this request can never be served.
    #[error(
        "the request would take more than {needed} bytes of memory (its body and parsing it), more than the gateway's limit of {budget} bytes for request bodies in flight (server.max_inflight_body_bytes)"
    )]
    TooLarge { needed: usize, budget: usize },
    /// More than is free now: other requests hold the budget.
    #[error(
        "the gateway is at its memory limit for request bodies in flight (server.max_inflight_body_bytes); retry shortly"
    )]
    Busy,
}

impl From<BudgetError> for ApiError {
    fn from(error: BudgetError) -> ApiError {
        match error {
            BudgetError::TooLarge { .. } => ApiError {
                message: error.to_string(),
                ..ApiError::payload_too_large(0)
            },
            BudgetError::Busy => ApiError {
                status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                kind: "overloaded_error",
                code: Some("inflight_budget_exhausted"),
                retry_after: Some(1),
                ..ApiError::invalid_request(None, error.to_string())
            },
        }
    }
}

/// What one request holds of the budget: bytes charged and the permits that cover them.
struct Charge {
    body_bytes: usize,
    parse_bytes: usize,
    body: Option<OwnedSemaphorePermit>,
    parse: Option<OwnedSemaphorePermit>,
}

/// One request's share of the budget, shared by its body (which charges as bytes arrive)
/// and [`layer`] (which releases it).
pub(crate) struct Reservation {
    budget: InflightBudget,
    charge: Mutex<Charge>,
}

impl Reservation {
    fn new(budget: InflightBudget) -> Reservation {
        Reservation { budget, charge: Mutex::new(Charge { body_bytes: 0, parse_bytes: 0, body: None, parse: None }) }
    }

    /// Raises this request's charge to `body` bytes of body and `parse` bytes of parsing
    /// (each only ever grows), taking the permits that are missing, or nothing on refusal.
    fn charge_to(&self, body: usize, parse: usize) -> Result<(), BudgetError> {
        let mut guard = self.charge.lock().unwrap_or_else(PoisonError::into_inner);
        let charge = &mut *guard;
        let body = body.max(charge.body_bytes);
        let parse = parse.max(charge.parse_bytes);
        let needed = body.saturating_add(parse);
        if needed > self.budget.bytes {
            return Err(BudgetError::TooLarge { needed, budget: self.budget.bytes });
        }
        let missing = |bytes: usize, held: &Option<OwnedSemaphorePermit>| {
            bytes.div_ceil(UNIT).saturating_sub(held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits))
        };
        let (body_units, parse_units) = (missing(body, &charge.body), missing(parse, &charge.parse));
        if body_units + parse_units == 0 {
            charge.body_bytes = body;
            charge.parse_bytes = parse;
            return Ok(());
        }
        // Both or neither: one acquisition, split afterwards.
        let units = u32::try_from(body_units + parse_units).map_err(|_| BudgetError::Busy)?;
        let mut permit = self.budget.semaphore.clone().try_acquire_many_owned(units).map_err(|_| BudgetError::Busy)?;
        let parse_permit = permit.split(parse_units);
        let body_permit = (body_units > 0).then_some(permit);
        for (held, new) in [(&mut charge.body, body_permit), (&mut charge.parse, parse_permit)] {
            match (held.as_mut(), new) {
                (Some(held), Some(new)) => held.merge(new),
                (None, new) => *held = new,
                (Some(_), None) => {}
            }
        }
        charge.body_bytes = body;
        charge.parse_bytes = parse;
        Ok(())
    }

    /// The parse estimate's share back: the handler has returned, its `Value` tree is gone.
    fn release_parse(&self) {
        let mut charge = self.charge.lock().unwrap_or_else(PoisonError::into_inner);
        charge.parse = None;
        charge.parse_bytes = 0;
    }
}

/// Middleware: charges every request body to the budget and holds the charge until the
/// response is done (see the module docs).
pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let reservation = Arc::new(Reservation::new(state.budget.clone()));
    // A known length is charged before reading, twice (the body, and at least a copy of it
    // once parsed): a request that cannot fit is refused before its body costs anything, and
    // the requests let in can all be parsed (charging the body alone would let in more than
    // fit, each then refused as its parse estimate grows). A length over `max_body_bytes` is
    // the handler's 413.
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n <= state.max_body_bytes);
    if let Some(length) = length
        && let Err(e) = reservation.charge_to(length, length)
    {
        let format = crate::auth::format_of(request.uri().path());
        // Read to its end (and dropped chunk by chunk, costing nothing): a client still
        // sending its body when the connection closes would not see the refusal. One that
        // waits for `100 Continue` sends nothing and reads the refusal instead.
        let waits = request.headers().get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits {
            drain(request.into_body()).await;
        }
        return ApiError::from(e).into_response_for(format);
    }
    let request = request.map(|body| Body::new(BudgetedBody::new(body, reservation.clone())));
    let response = next.run(request).await;
    reservation.release_parse();
    response.map(|body| Body::new(Holding { body, _reservation: reservation }))
}

/// Reads `body` to its end, dropping each chunk; stops at an error (its read deadline).
pub(crate) async fn drain(mut body: Body) {
    use http_body_util::BodyExt;
    while let Some(Ok(_)) = body.frame().await {}
}

/// A request body that charges each chunk (its bytes and their [`JsonCost`]) before passing
/// it on, and fails with [`BudgetError`] when the charge is refused; after that it passes the
/// rest on uncharged, for [`drain`].
struct BudgetedBody {
    body: Body,
    reservation: Arc<Reservation>,
    cost: JsonCost,
    seen: usize,
    failed: bool,
}

impl BudgetedBody {
    fn new(body: Body, reservation: Arc<Reservation>) -> BudgetedBody {
        BudgetedBody { body, reservation, cost: JsonCost::default(), seen: 0, failed: false }
    }
}

impl hyper::body::Body for BudgetedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let frame = match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) if !this.failed => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            this.seen += data.len();
            let parse = this.cost.feed(data);
            if let Err(e) = this.reservation.charge_to(this.seen, parse) {
                this.failed = true;
                return Poll::Ready(Some(Err(axum::Error::new(e))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A response body that keeps its request's charge until it is sent or dropped.
struct Holding {
    body: Body,
    _reservation: Arc<Reservation>,
}

impl hyper::body::Body for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The heap a `serde_json::Value` holds beyond the body's own bytes, estimated from the JSON
/// text as it streams by (chunk boundaries anywhere). Sized on serde_json's `Value` (32
/// bytes) and `Map` (a `BTreeMap`: a 640-byte leaf per object, a share of a node per
/// member), with allocator rounding, erring high.
#[derive(Debug, Default)]
pub(crate) struct JsonCost {
    in_string: bool,
    escaped: bool,
    total: usize,
}

/// An object's first B-tree leaf (11 keys of 24 bytes, 11 values of 32, links).
const OBJECT: usize = 640;
/// A member's share of further nodes as an object grows.
const MEMBER: usize = 96;
/// A value's slot in its array (with the slack of a doubling `Vec`) or map.
const SLOT: usize = 64;
/// A string's allocation, besides its bytes (the smallest malloc chunk).
const STRING: usize = 32;

impl JsonCost {
    /// Feeds the next bytes of the body; returns the estimate for everything fed so far.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut total = self.total;
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.in_string {
                // The string's bytes are copied into its `String`.
                let end = rest.iter().position(|&b| self.escaped || b == b'"' || b == b'\\');
                let Some(i) = end else {
                    total += rest.len();
                    break;
                };
                total += i;
                let b = rest[i];
                rest = &rest[i + 1..];
                if self.escaped {
                    self.escaped = false;
                    total += 1;
                } else if b == b'\\' {
                    self.escaped = true;
                } else {
                    self.in_string = false;
                }
                continue;
            }
            match rest[0] {
                b'"' => {
                    self.in_string = true;
                    total += STRING + SLOT;
                }
                b'{' => total += OBJECT + SLOT,
                b'[' | b',' => total += SLOT,
                b':' => total += MEMBER,
                _ => {}
            }
            rest = &rest[1..];
        }
        self.total = total;
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_cost_is_the_same_in_any_chunks_and_follows_the_structure() {
        let body = br#"{"model":"a/b","messages":[{"role":"user","content":"h\"i"},{"role":"user","content":"x"}],"n":[1,2,3]}"#;
        let whole = JsonCost::default().feed(body);
        for split in 0..body.len() {
            let mut cost = JsonCost::default();
            cost.feed(&body[..split]);
            assert_eq!(cost.feed(&body[split..]), whole, "split at {split}");
        }
        // Text costs about its length; tiny objects cost tens of times theirs.
        let text = format!(r#"{{"content":"{}"}}"#, "a".repeat(100_000));
        let cost = JsonCost::default().feed(text.as_bytes());
        assert!((100_000..101_500).contains(&cost), "{cost}");
        let tiny = format!("[{}{{}}]", r#"{"role":"user","content":"a"},"#.repeat(1000));
        let cost = JsonCost::default().feed(tiny.as_bytes());
        assert!(cost > 30 * tiny.len(), "{cost} for {} bytes", tiny.len());
    }

    #[test]
    fn a_charge_takes_permits_all_or_nothing_and_gives_them_back() {
        let budget = InflightBudget::new(10 * UNIT);
        let a = Reservation::new(budget.clone());
        a.charge_to(4 * UNIT, 2 * UNIT).unwrap();
        assert_eq!(budget.available(), 4 * UNIT);
        let b = Reservation::new(budget.clone());
        assert_eq!(b.charge_to(3 * UNIT, 2 * UNIT), Err(BudgetError::Busy));
        assert_eq!(budget.available(), 4 * UNIT, "a refused charge takes nothing");
        assert_eq!(b.charge_to(11 * UNIT, 0), Err(BudgetError::TooLarge { needed: 11 * UNIT, budget: 10 * UNIT }));
        a.release_parse();
        assert_eq!(budget.available(), 6 * UNIT);
        // Charges only grow: a smaller one is already covered.
        a.charge_to(UNIT, 0).unwrap();
        assert_eq!(budget.available(), 6 * UNIT);
        a.charge_to(5 * UNIT, UNIT / 2).unwrap();
        assert_eq!(budget.available(), 4 * UNIT);
        drop(a);
        assert_eq!(budget.available(), 10 * UNIT);
    }
}
