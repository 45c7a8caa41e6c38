//! Turns an upstream SSE body into canonical events, one vendor event at a time.
//!
//! Each vendor module supplies an [`SseDecoder`]; this module owns the plumbing they share:
//! reading the body incrementally, classifying transport and parse failures, and refusing a
//! stream that ends before the vendor's own end marker (a silent truncation would look like a
//! normal finish to the client).

use std::collections::VecDeque;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::StreamExt;
use fungible_types::{ErrorKind, ProviderError, StreamEvent};

use crate::http::{Sent, scrub_key, transport_error};
use crate::{EventStream, ProviderSettings};

pub(crate) trait SseDecoder: Send + 'static {
    /// Handles one SSE event, appending the canonical events it means to `out`.
    fn on_event(&mut self, event: &Event, out: &mut Vec<StreamEvent>) -> Result<(), ProviderError>;

    /// Whether the vendor's end-of-stream marker has been seen; reading stops there.
    fn is_done(&self) -> bool;
}

pub(crate) fn event_stream<D: SseDecoder>(
    settings: &ProviderSettings,
    sent: Sent,
    decoder: D,
) -> EventStream {
    struct State<D> {
        settings: ProviderSettings,
        inner: futures::stream::BoxStream<'static, Result<Event, EventStreamError<reqwest::Error>>>,
        decoder: D,
        pending: VecDeque<StreamEvent>,
        scratch: Vec<StreamEvent>,
        finished: bool,
    }

    let state = State {
        settings: settings.clone(),
        inner: match sent.tap {
            // The raw SSE as it is read, for `[store] raw_bodies`.
            Some(tap) => sent
                .response
                .bytes_stream()
                .inspect(move |chunk| {
                    if let Ok(bytes) = chunk {
                        tap.answer(bytes);
                    }
                })
                .eventsource()
                .boxed(),
            None => sent.response.bytes_stream().eventsource().boxed(),
        },
        decoder,
        pending: VecDeque::new(),
        scratch: Vec::new(),
        finished: false,
    };

    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.pending.pop_front() {
                return Some((Ok(event), st));
            }
            if st.finished || st.decoder.is_done() {
                return None;
            }
            match st.inner.next().await {
                Some(Ok(event)) => {
                    st.scratch.clear();
                    if let Err(mut e) = st.decoder.on_event(&event, &mut st.scratch) {
                        st.finished = true;
                        // Mid-stream error events carry the vendor's words, like error bodies.
                        e.message = scrub_key(&st.settings, e.message);
                        return Some((Err(e), st));
                    }
                    st.pending.extend(st.scratch.drain(..));
                }
                Some(Err(EventStreamError::Transport(e))) => {
                    st.finished = true;
                    let err = transport_error(&st.settings, e);
                    return Some((Err(err), st));
                }
                Some(Err(e)) => {
                    st.finished = true;
                    let err = ProviderError::malformed(&st.settings.name, format!("malformed event stream: {e}"));
                    return Some((Err(err), st));
                }
                None => {
                    st.finished = true;
                    let err = ProviderError::new(
                        ErrorKind::Connection,
                        &st.settings.name,
                        "the stream ended before the provider finished its response",
                    );
                    return Some((Err(err), st));
                }
            }
        }
    })
    .boxed()
}

/// Parses one event's JSON data, classifying a failure as a malformed response.
pub(crate) fn parse_data<T: serde::de::DeserializeOwned>(provider: &str, data: &str) -> Result<T, ProviderError> {
    serde_json::from_str(data)
        .map_err(|e| ProviderError::malformed(provider, format!("could not parse a stream event: {e}")))
}
