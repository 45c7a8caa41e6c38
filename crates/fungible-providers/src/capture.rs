//! Raw provider bodies, for the inference store when `[store] raw_bodies` is on (off by
//! default). The request's context holds a [`Capture`], which the gateway hands to every
//! upstream call it makes for the request (fallbacks and a stream's continuation included);
//! the HTTP helpers note the body fungible sent and the bytes the vendor answered (a stream's
//! raw SSE as it is read), each cut at the capture's byte cap. With no capture, nothing is
//! noted and nothing is spent.
//!
//! Bodies never hold credentials (keys travel in headers), and what is handed out is
//! scrubbed of the provider's key all the same, as error messages are: once, when the
//! exchanges are read, not on every chunk of a stream.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::Secret;

/// One upstream call: what was sent and what came back, as text (lossy UTF-8).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Exchange {
    pub provider: String,
    pub request: String,
    pub response: String,
    /// A body was longer than the cap and was cut.
    pub truncated: bool,
}

#[derive(Debug, Default)]
struct State {
    cap: usize,
    /// Each call, with the key its text is scrubbed of when read.
    exchanges: Vec<(Exchange, Option<Secret>)>,
}

/// The raw bodies of one client request's upstream calls. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Capture(Arc<Mutex<State>>);

impl Capture {
    /// Keeps at most `cap` bytes of each body.
    pub fn new(cap: usize) -> Capture {
        Capture(Arc::new(Mutex::new(State {
            cap,
            exchanges: Vec::new(),
        })))
    }

    /// The calls noted so far, scrubbed of their provider's key.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.lock()
            .exchanges
            .iter()
            .map(|(e, key)| match key {
                Some(key) => Exchange {
                    provider: e.provider.clone(),
                    request: key.scrub(&e.request),
                    response: key.scrub(&e.response),
                    truncated: e.truncated,
                },
                None => e.clone(),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a new call to `provider` (whose key is `key`) with the `body` sent; its answer
    /// is noted through the [`Tap`].
    pub(crate) fn start(&self, provider: &str, key: Option<&Secret>, body: &[u8]) -> Tap {
        let mut state = self.lock();
        let cap = state.cap;
        let mut exchange = Exchange {
            provider: provider.to_owned(),
            ..Exchange::default()
        };
        exchange.truncated = append(&mut exchange.request, body, cap);
        state.exchanges.push((exchange, key.cloned()));
        Tap {
            capture: self.clone(),
            index: state.exchanges.len() - 1,
        }
    }
}

/// Where one upstream call's answer is noted.
#[derive(Debug, Clone)]
pub(crate) struct Tap {
    capture: Capture,
    index: usize,
}

impl Tap {
    /// Appends `bytes` to the call's answer, up to the cap.
    pub(crate) fn answer(&self, bytes: &[u8]) {
        let mut state = self.capture.lock();
        let cap = state.cap;
        if let Some((exchange, _)) = state.exchanges.get_mut(self.index) {
            exchange.truncated |= append(&mut exchange.response, bytes, cap);
        }
    }
}

/// Appends `bytes` (lossy UTF-8) to `text` without growing it past `cap` bytes; whether
/// anything was cut.
fn append(text: &mut String, bytes: &[u8], cap: usize) -> bool {
    let room = cap.saturating_sub(text.len());
    let take = bytes.len().min(room);
    let chunk = String::from_utf8_lossy(&bytes[..take]);
    // A cut inside a multi-byte character becomes U+FFFD, which may be longer: trim to fit.
    let mut end = chunk.len().min(room);
    while !chunk.is_char_boundary(end) {
        end -= 1;
    }
    text.push_str(&chunk[..end]);
    take < bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_capped_and_scrubbed() {
        let capture = Capture::new(10);
        let key = Secret::new("sk-secret");
        let tap = capture.start("openai", Some(&key), b"{\"a\":\"0123456789\"}");
        tap.answer(b"sk-secret ok");
        let e = &capture.exchanges()[0];
        assert_eq!(e.request, "{\"a\":\"0123");
        assert!(e.truncated);
        // Cut at the cap, then scrubbed when read (the redaction may be longer).
        assert_eq!(e.response, "[redacted] ");
        // Multi-byte text cut at the cap stays valid UTF-8 within the cap.
        let capture = Capture::new(3);
        let tap = capture.start("x", None, "héllo".as_bytes());
        tap.answer("✓✓".as_bytes());
        let e = &capture.exchanges()[0];
        assert!(e.request.len() <= 3 && e.response.len() <= 3, "{e:?}");
    }
}
