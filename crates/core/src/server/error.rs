//! The one table of HTTP errors: code, status, and a message that names the problem and the
//! fix. Bodies are `{"error": {"code", "message"}}`; internal error text is logged, never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    UnknownFlow,
    InvalidAuth,
    /// A state-changing API call from a web page of another origin.
    ForbiddenOrigin,
    /// A request to the open (loopback) listener naming another host (DNS rebinding).
    ForbiddenHost,
    /// A change made with a console session cookie without its CSRF token.
    CsrfFailed,
    UnsupportedMediaType,
    UriTooLong,
    HeadersTooLarge,
    /// A connection closed because no whole request arrived in time (logged, never sent).
    RequestTimeout,
    PayloadTooLarge,
    InvalidJson,
    InvalidPayload,
    InvalidQuery,
    /// A path segment that does not decode (not UTF-8, or not the expected type).
    InvalidPath,
    /// A replay that cannot start (run not finished, step not in the run, flow not loaded).
    InvalidReplay,
    RateLimited,
    NotFound,
    MethodNotAllowed,
    StorageUnavailable,
    /// Too many runs executing; 503 with Retry-After.
    Overloaded,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        self.row().0
    }

    pub fn status(self) -> StatusCode {
        self.row().1
    }

    fn row(self) -> (&'static str, StatusCode) {
        match self {
            ErrorCode::UnknownFlow => ("unknown_flow", StatusCode::NOT_FOUND),
            ErrorCode::InvalidAuth => ("invalid_auth", StatusCode::UNAUTHORIZED),
            ErrorCode::ForbiddenOrigin => ("forbidden_origin", StatusCode::FORBIDDEN),
            ErrorCode::ForbiddenHost => ("forbidden_host", StatusCode::MISDIRECTED_REQUEST),
            ErrorCode::CsrfFailed => ("csrf_failed", StatusCode::FORBIDDEN),
            ErrorCode::UriTooLong => ("uri_too_long", StatusCode::URI_TOO_LONG),
            ErrorCode::RequestTimeout => ("request_timeout", StatusCode::REQUEST_TIMEOUT),
            ErrorCode::HeadersTooLarge => (
                "headers_too_large",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ),
            ErrorCode::UnsupportedMediaType => {
                ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE)
            }
            ErrorCode::PayloadTooLarge => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            ErrorCode::InvalidJson => ("invalid_json", StatusCode::BAD_REQUEST),
            ErrorCode::InvalidPayload => ("invalid_payload", StatusCode::BAD_REQUEST),
            ErrorCode::InvalidQuery => ("invalid_query", StatusCode::BAD_REQUEST),
            ErrorCode::InvalidPath => ("invalid_path", StatusCode::BAD_REQUEST),
            ErrorCode::InvalidReplay => ("invalid_replay", StatusCode::CONFLICT),
            ErrorCode::RateLimited => ("rate_limited", StatusCode::TOO_MANY_REQUESTS),
            ErrorCode::NotFound => ("not_found", StatusCode::NOT_FOUND),
            ErrorCode::MethodNotAllowed => ("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED),
            ErrorCode::StorageUnavailable => {
                ("storage_unavailable", StatusCode::SERVICE_UNAVAILABLE)
            }
            ErrorCode::Overloaded => ("overloaded", StatusCode::SERVICE_UNAVAILABLE),
            ErrorCode::Internal => ("internal", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Extra header, e.g. `WWW-Authenticate` on a 401 for Basic.
    pub www_authenticate: Option<&'static str>,
    /// Seconds for `Retry-After` on a 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            www_authenticate: None,
            retry_after: None,
        }
    }

    /// A read of stored state failed: the cause is logged, the client gets 503 and no detail.
    pub fn storage_read(error: impl std::fmt::Display) -> Self {
        tracing::error!(error = %error, "Run history query failed; check the database (server.database_url).");
        ApiError::new(
            ErrorCode::StorageUnavailable,
            "the run history could not be read; try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code.as_str(), "message": self.message}});
        let mut response = (self.code.status(), Json(body)).into_response();
        if let Some(challenge) = self.www_authenticate {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// An extractor whose refusal is answered as the API answers errors (JSON of the table above)
/// instead of axum's plain text: `Valid<Path<String>>`, `Valid<Query<...>>`, `Valid<Bytes>`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Valid<T>(pub T);

impl<S: Send + Sync, T> axum::extract::FromRequestParts<S> for Valid<T>
where
    T: axum::extract::FromRequestParts<S>,
    T::Rejection: Into<ApiError>,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        T::from_request_parts(parts, state)
            .await
            .map(Valid)
            .map_err(Into::into)
    }
}

impl<S: Send + Sync, T> axum::extract::FromRequest<S> for Valid<T>
where
    T: axum::extract::FromRequest<S>,
    T::Rejection: Into<ApiError>,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        T::from_request(request, state)
            .await
            .map(Valid)
            .map_err(Into::into)
    }
}

/// axum's refusal as an error of the table: a body over the limit is 413, a fault of ours
/// (5xx) is logged and told as `internal`, the rest is the request's fault as `code`.
fn rejected(status: StatusCode, text: String, code: ErrorCode) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            "the body is larger than the limit (server.max_body_bytes)",
        )
    } else if status.is_server_error() {
        tracing::error!(error = %text, "A request could not be read.");
        ApiError::new(ErrorCode::Internal, "the request could not be read")
    } else {
        ApiError::new(code, text)
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::PathRejection) -> Self {
        let text = rejection.body_text();
        rejected(rejection.status(), text, ErrorCode::InvalidPath)
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        let text = rejection.body_text();
        rejected(rejection.status(), text, ErrorCode::InvalidQuery)
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        let text = rejection.body_text();
        rejected(rejection.status(), text, ErrorCode::InvalidPayload)
    }
}
