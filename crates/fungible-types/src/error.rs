//! The one error type providers return, classified so every front end can map it to its
//! own API's status code and error shape.

use std::fmt;

/// What went wrong, independent of vendor and of inbound API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request cannot be sent as it is (bad field, unsupported combination). Upstream 400.
    InvalidRequest,
    /// The vendor rejected the gateway's credentials. Upstream 401.
    Authentication,
    /// Upstream 403.
    PermissionDenied,
    /// Unknown model or endpoint at the vendor. Upstream 404.
    NotFound,
    /// Upstream 409.
    Conflict,
    /// Upstream 413.
    PayloadTooLarge,
    /// The prompt (plus the requested output) does not fit the model's context window
    /// (an upstream 400 that says so). Not retried on the same target; a route falls back to
    /// a target with a larger window.
    ContextLengthExceeded,
    /// Upstream 422.
    Unprocessable,
    /// Upstream 429.
    RateLimited,
    /// The vendor is overloaded (Anthropic 529).
    Overloaded,
    /// Upstream 503.
    Unavailable,
    /// Upstream 500, 502 or another 5xx.
    UpstreamServer,
    /// The vendor or the gateway timed out (upstream 408/504, or a deadline here).
    Timeout,
    /// The connection failed or was reset before a complete answer.
    Connection,
    /// The vendor answered with a body or stream fungible cannot parse.
    MalformedResponse,
}

impl ErrorKind {
    /// Every kind, in the order declared.
    pub const ALL: [ErrorKind; 15] = [
        ErrorKind::InvalidRequest,
        ErrorKind::Authentication,
        ErrorKind::PermissionDenied,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::PayloadTooLarge,
        ErrorKind::ContextLengthExceeded,
        ErrorKind::Unprocessable,
        ErrorKind::RateLimited,
        ErrorKind::Overloaded,
        ErrorKind::Unavailable,
        ErrorKind::UpstreamServer,
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::MalformedResponse,
    ];

    /// The kind as recorded and reported (metrics, stored records, eval reports): the
    /// `snake_case` of its name. These names are stored: a kind's name never changes.
    pub fn class(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Authentication => "authentication",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::ContextLengthExceeded => "context_length_exceeded",
            ErrorKind::Unprocessable => "unprocessable",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::UpstreamServer => "upstream_server",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::MalformedResponse => "malformed_response",
        }
    }

    /// Classify an upstream HTTP status.
    pub fn from_upstream_status(status: u16) -> ErrorKind {
        match status {
            400 => ErrorKind::InvalidRequest,
            401 => ErrorKind::Authentication,
            403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            408 | 504 => ErrorKind::Timeout,
            409 => ErrorKind::Conflict,
            413 => ErrorKind::PayloadTooLarge,
            422 => ErrorKind::Unprocessable,
            429 => ErrorKind::RateLimited,
            503 => ErrorKind::Unavailable,
            529 => ErrorKind::Overloaded,
            s if s >= 500 => ErrorKind::UpstreamServer,
            _ => ErrorKind::InvalidRequest,
        }
    }

    /// Whether trying again (here or elsewhere) may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited
                | ErrorKind::Overloaded
                | ErrorKind::Unavailable
                | ErrorKind::UpstreamServer
                | ErrorKind::Timeout
                | ErrorKind::Connection
                | ErrorKind::MalformedResponse
        )
    }
}

/// An error from a provider (or from converting a request for it).
///
/// `message` never contains a secret: providers build it from the vendor's error message and
/// their own words, never from request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    pub kind: ErrorKind,
    /// The provider's configured name (`openai`, `groq`, ...).
    pub provider: String,
    pub message: String,
    /// The upstream HTTP status, when there was one.
    pub upstream_status: Option<u16>,
    /// Seconds to wait before retrying, from the vendor's `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, provider: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError {
            kind,
            provider: provider.into(),
            message: message.into(),
            upstream_status: None,
            retry_after: None,
        }
    }

    pub fn invalid_request(provider: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError::new(ErrorKind::InvalidRequest, provider, message)
    }

    pub fn malformed(provider: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError::new(ErrorKind::MalformedResponse, provider, message)
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.upstream_status {
            Some(status) => write!(f, "{} (upstream status {}): {}", self.provider, status, self.message),
            None => write!(f, "{}: {}", self.provider, self.message),
        }
    }
}

impl std::error::Error for ProviderError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names records already hold: the `snake_case` of each kind's name, as they were
    /// derived from `Debug` before they were written out.
    #[test]
    fn classes_are_snake_case_names() {
        use ErrorKind::*;
        let all = [
            InvalidRequest, Authentication, PermissionDenied, NotFound, Conflict, PayloadTooLarge, ContextLengthExceeded,
            Unprocessable, RateLimited, Overloaded, Unavailable, UpstreamServer, Timeout, Connection, MalformedResponse,
        ];
        for kind in all {
            let mut snake = String::new();
            for (i, c) in format!("{kind:?}").chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    snake.push('_');
                }
                snake.push(c.to_ascii_lowercase());
            }
            assert_eq!(kind.class(), snake);
        }
        assert_eq!(ContextLengthExceeded.class(), "context_length_exceeded");
    }
}
