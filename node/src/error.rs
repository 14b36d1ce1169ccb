//! The API's one error type. Domain modules return their own error enums;
//! each converts into [`ApiError`], which renders the JSON error body of
//! API.md: `{"error": {"code", "message", "request_id"}}`.
//!
//! The request id is filled in by the `error_body` middleware in `api`, so
//! handlers never thread it through: `ApiError::into_response` stores an
//! [`ErrorInfo`] extension and the middleware writes the body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// A client-visible error: status, a snake_case code and a human message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after_s: Option<u64>,
}

/// What the error middleware needs to render the body.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }
    /// 400 for a named field.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("{field}: {message}"),
        )
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    pub fn rate_limited(retry_after_s: u64) -> Self {
        Self {
            retry_after_s: Some(retry_after_s.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry later",
            )
        }
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after_s: u64) -> Self {
        Self {
            retry_after_s: Some(retry_after_s.max(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
    /// A server-side fault. The message is logged, not shown.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see server logs",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = self.status.into_response();
        if let Some(s) = self.retry_after_s {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp.extensions_mut().insert(ErrorInfo {
            code: self.code,
            message: self.message,
        });
        resp
    }
}

impl From<meridian_replication::StoreError> for ApiError {
    fn from(e: meridian_replication::StoreError) -> Self {
        ApiError::internal(e)
    }
}

/// Default code and message for error statuses produced outside handlers
/// (axum's 404/405, tower-http's 413/408).
pub fn default_for_status(status: StatusCode) -> ErrorInfo {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", "method not allowed on this route")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body exceeds the limit"),
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "request took too long"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "temporarily unavailable"),
        s if s.is_client_error() => ("bad_request", "bad request"),
        _ => ("internal", "internal error; see server logs"),
    };
    ErrorInfo {
        code,
        message: message.to_string(),
    }
}
