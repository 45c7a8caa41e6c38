//! The HTTP plumbing every provider shares: one pooled client, sending a request, turning an
//! upstream error status or a transport failure into a classified [`ProviderError`].

use std::time::Duration;

use fungible_types::{ErrorKind, ProviderError};
use serde::de::DeserializeOwned;

use crate::ProviderSettings;
use crate::capture::{Capture, Tap};

/// Most of an upstream error body that is read to find its message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Most of an unparseable upstream error body that is quoted back to the client.
const MAX_QUOTED_BODY: usize = 512;

/// One connection pool shared by every provider.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

impl HttpClient {
    /// `connect_timeout` bounds connection set-up; request deadlines are the caller's.
    pub fn new(connect_timeout: Duration) -> Result<HttpClient, String> {
        let inner = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("could not build the HTTP client: {e}"))?;
        Ok(HttpClient { inner })
    }

    pub(crate) fn post(&self, url: &str) -> reqwest::RequestBuilder {
        self.inner.post(url)
    }
}

/// A 2xx upstream response, and where its body is noted when the request keeps raw bodies.
pub(crate) struct Sent {
    pub(crate) response: reqwest::Response,
    pub(crate) tap: Option<Tap>,
}

/// Sends `body` as JSON and returns the response if its status is 2xx; any other status
/// becomes a [`ProviderError`] whose message `vendor_message` digs out of the vendor's error
/// body.
pub(crate) async fn send_json(
    settings: &ProviderSettings,
    request: reqwest::RequestBuilder,
    body: Vec<u8>,
    vendor_message: fn(&[u8]) -> Option<String>,
    capture: Option<&Capture>,
) -> Result<Sent, ProviderError> {
    let mut request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
    for (name, value) in &settings.headers {
        // Marked sensitive like the API key: a configured header may carry a credential.
        match reqwest::header::HeaderValue::from_str(value.expose()) {
            Ok(mut value) => {
                value.set_sensitive(true);
                request = request.header(name, value);
            }
            // reqwest reports the invalid value when the request is sent.
            Err(_) => request = request.header(name, value.expose()),
        }
    }
    let tap = capture.map(|c| c.start(&settings.name, settings.api_key.as_ref(), &body));
    let response = request.body(body).send().await.map_err(|e| transport_error(settings, e))?;
    let status = response.status();
    if status.is_success() {
        return Ok(Sent { response, tap });
    }
    let retry_after = retry_after(response.headers());
    let bytes = read_capped(response, MAX_ERROR_BODY).await;
    if let Some(tap) = &tap {
        tap.answer(&bytes);
    }
    let message = scrub_key(settings, error_body_message(&bytes, vendor_message));
    let mut kind = ErrorKind::from_upstream_status(status.as_u16());
    if matches!(kind, ErrorKind::InvalidRequest | ErrorKind::PayloadTooLarge | ErrorKind::Unprocessable)
        && is_context_length_error(&bytes, &message)
    {
        kind = ErrorKind::ContextLengthExceeded;
    }
    Err(ProviderError {
        kind,
        provider: settings.name.clone(),
        message,
        upstream_status: Some(status.as_u16()),
        retry_after,
    })
}

/// The message of an error body: the vendor's own words, else the body quoted (cut).
pub(crate) fn error_body_message(bytes: &[u8], vendor_message: fn(&[u8]) -> Option<String>) -> String {
    vendor_message(bytes).unwrap_or_else(|| quote_body(bytes))
}

/// Whether a 4xx error body says the prompt does not fit the model's context window, in the
/// words of the vendors and servers fungible talks to:
///
/// - OpenAI: `"code": "context_length_exceeded"` ("This model's maximum context length is
///   128000 tokens..." / "Your input exceeds the context window of this model"), which Groq,
///   DeepSeek and other compatible APIs copy;
/// - Anthropic: "prompt is too long: 208310 tokens > 200000 maximum";
/// - Gemini: "The input token count (1200000) exceeds the maximum number of tokens allowed
///   (1048576)";
/// - vLLM, Mistral, DeepSeek: "This model's maximum context length is 4096 tokens" / "...too
///   large for model with 32768 maximum context length";
/// - llama.cpp server: `exceed_context_size_error`, "exceeds the available context size".
pub(crate) fn is_context_length_error(body: &[u8], message: &str) -> bool {
    const PATTERNS: [&str; 8] = [
        "context_length_exceeded",
        "maximum context length",
        "exceeds the context window",
        "prompt is too long",
        "exceeds the maximum number of tokens",
        "exceed_context_size",
        "exceeds the available context size",
        "context length exceeded",
    ];
    let body = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]).to_ascii_lowercase();
    let message = message.to_ascii_lowercase();
    PATTERNS.iter().any(|p| body.contains(p) || message.contains(p))
}

/// `message` with the provider's API key replaced, for vendor text that may echo it back.
pub(crate) fn scrub_key(settings: &ProviderSettings, message: String) -> String {
    match &settings.api_key {
        Some(key) => key.scrub(&message),
        None => message,
    }
}

/// Reads a whole 2xx body and parses it.
pub(crate) async fn read_json<T: DeserializeOwned>(
    settings: &ProviderSettings,
    sent: Sent,
) -> Result<T, ProviderError> {
    let bytes = sent.response.bytes().await.map_err(|e| transport_error(settings, e))?;
    if let Some(tap) = &sent.tap {
        tap.answer(&bytes);
    }
    parse_json(&settings.name, &bytes)
}

/// Parses a whole 2xx body, classifying a failure as a malformed response.
pub(crate) fn parse_json<T: DeserializeOwned>(provider: &str, bytes: &[u8]) -> Result<T, ProviderError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ProviderError::malformed(provider, format!("could not parse the response body: {e}")))
}

/// Classifies a reqwest failure. The URL is dropped from the message: it is ours, not the
/// client's business, and some vendors put credentials in query strings.
pub(crate) fn transport_error(settings: &ProviderSettings, error: reqwest::Error) -> ProviderError {
    let (kind, what) = if error.is_timeout() {
        (ErrorKind::Timeout, "the request timed out")
    } else if error.is_connect() {
        (ErrorKind::Connection, "could not connect")
    } else if error.is_body() || error.is_decode() {
        (ErrorKind::Connection, "the connection failed while reading the response")
    } else {
        (ErrorKind::Connection, "the request failed")
    };
    let detail = error.without_url();
    let mut source = std::error::Error::source(&detail);
    let mut message = format!("{what}: {detail}");
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    ProviderError::new(kind, &settings.name, message)
}

async fn read_capped(mut response: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= cap {
            break;
        }
    }
    out
}

fn quote_body(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "the upstream returned an empty error body".to_owned();
    }
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTED_BODY) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `Retry-After` in seconds (delta form), or `retry-after-ms` rounded up.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    if let Some(ms) = headers.get("retry-after-ms").and_then(|v| v.to_str().ok())
        && let Ok(ms) = ms.trim().parse::<f64>()
    {
        return Some((ms / 1000.0).ceil().max(0.0) as u64);
    }
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok()
}

/// The `error.message` of a body shaped `{"error": {"message": ...}}` (OpenAI, Anthropic and
/// Gemini all use this shape) or `{"error": "..."}` (some OpenAI-compatible servers).
pub(crate) fn error_message_field(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let error = value.get("error")?;
    if let Some(text) = error.as_str() {
        return Some(text.to_owned());
    }
    error.get("message")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(7));
        headers.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(2));
    }

    #[test]
    fn long_bodies_are_cut_when_quoted() {
        let body = "x".repeat(2000);
        let quoted = quote_body(body.as_bytes());
        assert_eq!(quoted.chars().count(), MAX_QUOTED_BODY + 1);
    }

    #[test]
    fn error_message_is_found_in_both_shapes() {
        assert_eq!(error_message_field(br#"{"error":{"message":"bad"}}"#).as_deref(), Some("bad"));
        assert_eq!(error_message_field(br#"{"error":"worse"}"#).as_deref(), Some("worse"));
        assert_eq!(error_message_field(b"<html>"), None);
    }
}
