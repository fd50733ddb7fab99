//! What stands before the handlers: API credentials, the origin and media type of
//! state-changing API calls, and the size of a request's head.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorCode};
use super::rejections::{API, Rejected, Rejections};
use crate::engine::Engine;
use crate::secrets::Secret;
use crate::trigger::{basic_credentials, bearer_token, equal};

/// The API's credentials, resolved once; `open` lets every caller in (the loopback admin
/// listener when no credentials are configured).
#[derive(Clone)]
pub(super) struct ApiGuard {
    open: bool,
    token: Option<Secret>,
    basic: Option<(String, Secret)>,
    /// The server's own origin from `server.public_url`, besides the request's Host.
    public_origin: Option<String>,
}

impl ApiGuard {
    /// `open` only applies when no credentials are configured. A credential whose secret is
    /// not set lets nobody in (fail closed) and says so in the log.
    pub(super) fn new(engine: &Engine, open: bool) -> Arc<ApiGuard> {
        let server = engine.server_config();
        let api = &server.api;
        let resolve = |name: &String| {
            let secret = engine.secrets().get(name);
            if secret.is_none() {
                tracing::error!(secret = %name, "The API's secret is not set, so every API call is refused; set it in the environment or [secrets].");
            }
            secret
        };
        let token = api.token_secret_name.as_ref().and_then(resolve);
        let basic = api.password_secret_name.as_ref().and_then(|name| {
            let user = api.basic_username.clone().unwrap_or_default();
            resolve(name).map(|password| (user, password))
        });
        Arc::new(ApiGuard {
            open: open && !api.is_configured(),
            token,
            basic,
            public_origin: server.public_url.as_deref().and_then(origin_of),
        })
    }

    /// Every configured credential is checked, so the time taken does not say which matched.
    fn allows(&self, headers: &HeaderMap) -> bool {
        if self.open {
            return true;
        }
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let token_ok = match (&self.token, bearer_token(value)) {
            (Some(token), Some(given)) => equal(given.as_bytes(), token.expose().as_bytes()),
            _ => false,
        };
        let basic_ok = match (&self.basic, basic_credentials(value)) {
            (Some((user, password)), Some(given)) => {
                equal(&given, format!("{user}:{}", password.expose()).as_bytes())
            }
            _ => false,
        };
        token_ok | basic_ok
    }

    fn same_origin(&self, origin: &str, headers: &HeaderMap) -> bool {
        let Some(given) = origin_of(origin) else {
            return false;
        };
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        host.is_some_and(|h| given.split_once("://").is_some_and(|(_, a)| a == h))
            || self.public_origin.as_deref() == Some(given.as_str())
    }
}

/// Refuses API calls without valid credentials (401), and state-changing calls from another
/// origin (403) or with a body that is not JSON (415): a web page can send neither a JSON
/// content type nor a matching Origin without the browser's consent.
pub(super) async fn require_api_auth(
    State(guard): State<Arc<ApiGuard>>,
    request: Request,
    next: Next,
) -> Response {
    match check_api_call(&guard, &request) {
        Ok(()) => next.run(request).await,
        Err(error) => {
            if let Some(rejections) = request.extensions().get::<Arc<Rejections>>() {
                let peer = request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(addr)| *addr);
                let detail = format!(
                    "{} {}: {}",
                    request.method(),
                    request.uri().path(),
                    error.message
                );
                rejections.count_and_log(&Rejected {
                    flow: API,
                    error: &error,
                    detail: &detail,
                    peer,
                    bytes: 0,
                    store: false,
                });
            }
            error.into_response()
        }
    }
}

fn check_api_call(guard: &ApiGuard, request: &Request) -> Result<(), ApiError> {
    if !guard.allows(request.headers()) {
        let mut error = ApiError::new(
            ErrorCode::InvalidAuth,
            "the API needs credentials: send Authorization: Bearer <token> or Basic credentials from [server.api]",
        );
        error.www_authenticate =
            Some("Bearer realm=\"haloflow-api\", Basic realm=\"haloflow-api\"");
        return Err(error);
    }
    if !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        let headers = request.headers();
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !guard.same_origin(origin, headers) {
                return Err(ApiError::new(
                    ErrorCode::ForbiddenOrigin,
                    "cross-origin API calls are refused; call the API from a client, not a web page of another site",
                ));
            }
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !super::trigger::is_json(content_type) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "state-changing API calls take Content-Type: application/json (send `{}` for no options)",
            ));
        }
    }
    Ok(())
}

/// `scheme://host[:port]` of a URL or Origin value, lowercased; None for `null` or garbage.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty() && !scheme.is_empty())
        .then(|| format!("{scheme}://{authority}").to_ascii_lowercase())
}

/// Answers an over-long URL 414 and over-long headers 431, as JSON, before any handler.
pub(super) async fn limit_head(
    State(max_bytes): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri > max_bytes {
        return ApiError::new(
            ErrorCode::UriTooLong,
            format!("the URL is longer than {max_bytes} bytes (server.max_header_bytes)"),
        )
        .into_response();
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if uri + headers > max_bytes {
        return ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request's headers are larger than {max_bytes} bytes (server.max_header_bytes)"
            ),
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            origin_of("https://Flows.example.com/x?y").as_deref(),
            Some("https://flows.example.com")
        );
        assert_eq!(origin_of("null"), None);
    }
}
