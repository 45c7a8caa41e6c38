//! The one error every handler returns, and how each inbound API shows it.
//!
//! Handlers build an [`ApiError`] (a status, a class and a message that is safe to show);
//! each front end renders it in its own API's error shape. The mapping from canonical error
//! kinds to HTTP status codes lives here and nowhere else.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fungible_gateway::GatewayError;
use fungible_types::{ErrorKind, ProviderError};
use serde::Serialize;

/// The inbound API whose error shape a response uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFormat {
    OpenAi,
    Anthropic,
    Gemini,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `error.type`.
    pub kind: &'static str,
    pub message: String,
    /// The request field at fault, when there is one (OpenAI's `error.param`).
    pub param: Option<String>,
    /// OpenAI's `error.code`.
    pub code: Option<&'static str>,
    /// Seconds, passed on as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn invalid_request(param: Option<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param,
            code: None,
            retry_after: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::NOT_FOUND, kind: "not_found_error", ..ApiError::invalid_request(None, message) }
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: Some("request_too_large"),
            ..ApiError::invalid_request(None, format!("request body is larger than the limit of {limit} bytes"))
        }
    }

    /// The request body did not arrive in time (`[server] body_read_timeout_ms`).
    pub fn request_timeout(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            code: Some("request_timeout"),
            ..ApiError::invalid_request(None, message)
        }
    }

    /// A request this gateway will not serve to this caller (a foreign `Host` or `Origin`).
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::FORBIDDEN, kind: "permission_error", ..ApiError::invalid_request(None, message) }
    }

    /// A body in a media type no route accepts.
    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: Some("unsupported_media_type"),
            ..ApiError::invalid_request(None, message)
        }
    }

    /// An upstream (or gateway-side) failure, classified.
    pub fn from_provider(error: &ProviderError) -> ApiError {
        let (status, kind) = status_for(error.kind);
        let message = match error.upstream_status {
            Some(upstream) => format!("{} returned {upstream}: {}", error.provider, error.message),
            None => format!("{}: {}", error.provider, error.message),
        };
        // OpenAI's code for a prompt that does not fit, which SDKs and agents look for.
        let code = (error.kind == ErrorKind::ContextLengthExceeded).then_some("context_length_exceeded");
        ApiError { status, kind, message, param: None, code, retry_after: error.retry_after }
    }

    /// The body in `format`'s own error shape.
    pub fn body(&self, format: ApiFormat) -> Vec<u8> {
        match format {
            ApiFormat::OpenAi => self.openai_body(),
            ApiFormat::Anthropic => self.anthropic_body(),
            ApiFormat::Gemini => self.gemini_body(),
        }
    }

    /// The response in `format`'s own error shape, with `Retry-After` when known.
    pub fn into_response_for(self, format: ApiFormat) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), "{}", self.message);
        } else {
            tracing::debug!(status = self.status.as_u16(), "{}", self.message);
        }
        let mut response = (self.status, self.body(format)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }

    /// Anthropic's `{"type":"error","error":{"type":..,"message":..}}`. The type follows the
    /// error's class, not only its status: an overloaded upstream (or gateway) is
    /// `overloaded_error`, an unavailable one is an `api_error`, though both answer 503.
    pub fn anthropic_body(&self) -> Vec<u8> {
        let kind = match (self.kind, self.status.as_u16()) {
            ("overloaded_error", _) | (_, 529) => "overloaded_error",
            (_, 400 | 408 | 415 | 422) => "invalid_request_error",
            (_, 401) => "authentication_error",
            (_, 403) => "permission_error",
            (_, 404) => "not_found_error",
            (_, 413) => "request_too_large",
            (_, 429) => "rate_limit_error",
            (_, 504) => "timeout_error",
            _ => "api_error",
        };
        serde_json::to_vec(&serde_json::json!({
            "type": "error",
            "error": {"type": kind, "message": self.message},
        }))
        .unwrap_or_default()
    }

    /// Google's `{"error":{"code":..,"message":..,"status":..}}`.
    pub fn gemini_body(&self) -> Vec<u8> {
        let status = match self.status.as_u16() {
            400 | 413 | 415 | 422 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            405 | 501 => "UNIMPLEMENTED",
            409 => "ABORTED",
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            408 | 504 => "DEADLINE_EXCEEDED",
            _ => "INTERNAL",
        };
        serde_json::to_vec(&serde_json::json!({
            "error": {"code": self.status.as_u16(), "message": self.message, "status": status},
        }))
        .unwrap_or_default()
    }

    /// OpenAI's `{"error": {"message","type","param","code"}}`.
    pub fn openai_body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
        }
        serde_json::to_vec(&Body {
            error: Inner { message: &self.message, kind: self.kind, param: self.param.as_deref(), code: self.code },
        })
        .unwrap_or_default()
    }
}

impl From<GatewayError> for ApiError {
    fn from(error: GatewayError) -> ApiError {
        match error {
            GatewayError::UnknownModel(message) => ApiError {
                param: Some("model".into()),
                code: Some("model_not_found"),
                ..ApiError::not_found(message)
            },
            GatewayError::Provider(e) => ApiError::from_provider(&e),
        }
    }
}

/// Status and OpenAI error type for each kind. Upstream 5xx become 502 (the gateway got a
/// bad answer), except 503/529 which stay "unavailable" so clients back off, and timeouts
/// which are 504.
fn status_for(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        ErrorKind::Authentication => (StatusCode::UNAUTHORIZED, "authentication_error"),
        ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "permission_error"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found_error"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict_error"),
        ErrorKind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error"),
        ErrorKind::ContextLengthExceeded => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        ErrorKind::Unprocessable => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error"),
        ErrorKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded_error"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable_error"),
        ErrorKind::UpstreamServer => (StatusCode::BAD_GATEWAY, "api_error"),
        ErrorKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout_error"),
        ErrorKind::Connection => (StatusCode::BAD_GATEWAY, "api_error"),
        ErrorKind::MalformedResponse => (StatusCode::BAD_GATEWAY, "api_error"),
    }
}

/// Rendered in OpenAI's shape: the default for routes that belong to no other API.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.into_response_for(ApiFormat::OpenAi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_upstream_status_maps_to_a_client_status() {
        let cases = [
            (400, 400),
            (401, 401),
            (403, 403),
            (404, 404),
            (408, 504),
            (409, 409),
            (413, 413),
            (422, 422),
            (429, 429),
            (500, 502),
            (502, 502),
            (503, 503),
            (504, 504),
            (529, 503),
        ];
        for (upstream, expected) in cases {
            let (status, _) = status_for(ErrorKind::from_upstream_status(upstream));
            assert_eq!(status.as_u16(), expected, "upstream {upstream}");
        }
    }

    #[test]
    fn provider_is_named_in_the_message() {
        let mut e = ProviderError::new(ErrorKind::RateLimited, "anthropic", "slow down");
        e.upstream_status = Some(429);
        e.retry_after = Some(2);
        let api = ApiError::from_provider(&e);
        assert_eq!(api.message, "anthropic returned 429: slow down");
        assert_eq!(api.retry_after, Some(2));
        let body: serde_json::Value = serde_json::from_slice(&api.openai_body()).unwrap();
        assert_eq!(body["error"]["type"], "rate_limit_error");
        let body: serde_json::Value = serde_json::from_slice(&api.anthropic_body()).unwrap();
        assert_eq!(body, serde_json::json!({"type": "error", "error": {"type": "rate_limit_error", "message": api.message}}));
        let body: serde_json::Value = serde_json::from_slice(&api.gemini_body()).unwrap();
        assert_eq!(body, serde_json::json!({"error": {"code": 429, "message": api.message, "status": "RESOURCE_EXHAUSTED"}}));
    }
}
