//! What stands before the handlers: API credentials, the origin and media type of
//! state-changing API calls, and the size of a request's head.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::console::session::{self, Invalid, Session, SessionKey};
use super::error::{ApiError, ErrorCode};
use super::guesses::Guesses;
use super::listener::LocalAddr;
use super::rejections::{API, Rejected, Rejections};
use crate::engine::Engine;
use crate::secrets::Secret;
use crate::trigger::{basic_credentials, bearer_token, equal};

/// The API's credentials, resolved once; `open` lets every caller in (the loopback admin
/// listener when no credentials are configured).
pub(super) struct ApiGuard {
    open: bool,
    token: Option<Secret>,
    basic: Option<(String, Secret)>,
    /// Signs console sessions; None when no credential's secret is set (nobody signs in).
    session_key: Option<SessionKey>,
    /// The server's own origin from `server.public_url`.
    public_origin: Option<String>,
    /// Where this listener is configured to listen (`server.listen` or `server.admin_listen`).
    listen: SocketAddr,
    /// Failed attempts by client address.
    guesses: Guesses,
}

/// How a request was let in; handlers find it in the request's extensions.
#[derive(Debug, Clone)]
pub(super) enum Authenticated {
    /// The listener asks for no credentials.
    Open,
    /// The `Authorization` header carried the API's credentials.
    Credentials,
    /// A console session cookie.
    Session(Session),
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No credentials, or only an expired session: not a guess.
    Anonymous,
    /// Wrong credentials or a forged cookie, counted against the client.
    Wrong,
    /// The client failed too often: seconds until it may try again.
    TooMany(u64),
}

impl Refusal {
    /// The API's answer: 401 (see [`needs_credentials`]) or 429 with `Retry-After`.
    pub(super) fn error(self, headers: &HeaderMap) -> ApiError {
        match self {
            Refusal::TooMany(seconds) => {
                let mut error = ApiError::new(
                    ErrorCode::RateLimited,
                    format!("too many failed sign-ins from this address; try again in {seconds} s"),
                );
                error.retry_after = Some(seconds);
                error
            }
            Refusal::Anonymous | Refusal::Wrong => needs_credentials(headers),
        }
    }
}

impl ApiGuard {
    /// The guard of the admin listener (`admin`) or the public one. The admin listener is open
    /// when no credentials are configured. A credential whose secret is not set lets nobody in
    /// (fail closed) and says so in the log.
    pub(super) fn new(engine: &Engine, admin: bool) -> Arc<ApiGuard> {
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
        let shared = api.session_secret_name.as_ref().and_then(|name| {
            let secret = engine.secrets().get(name);
            if secret.is_none() {
                tracing::error!(secret = %name, "The console's session secret ([server.api] session_secret_name) is not set, so nobody can sign in to the console; set it in the environment or [secrets].");
            }
            secret
        });
        let session_key = SessionKey::derive(
            shared.as_ref(),
            token.as_ref(),
            basic
                .as_ref()
                .map(|(user, password)| (user.as_str(), password)),
        );
        Arc::new(ApiGuard {
            open: admin && !api.is_configured(),
            token,
            basic,
            session_key,
            public_origin: server.public_url.as_deref().and_then(origin_of),
            listen: if admin {
                server.admin_listen
            } else {
                server.listen
            },
            guesses: Guesses::default(),
        })
    }

    pub(super) fn is_open(&self) -> bool {
        self.open
    }

    pub(super) fn session_key(&self) -> Option<&SessionKey> {
        self.session_key.as_ref()
    }

    /// The configured Basic user name, if any.
    pub(super) fn basic_username(&self) -> Option<&str> {
        self.basic.as_ref().map(|(user, _)| user.as_str())
    }

    /// How the request from `peer` gets in: the open listener, the `Authorization` header, or
    /// a console session cookie (any of several that verifies).
    pub(super) fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Authenticated, Refusal> {
        if self.open {
            return Ok(Authenticated::Open);
        }
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Some(value) = authorization {
            let basic = basic_credentials(value);
            return self.attempt(peer, || {
                (self.credentials_match(bearer_token(value), basic.as_deref()))
                    .then_some(Ok(Authenticated::Credentials))
            })?;
        }
        let mut cookies = session::cookies(headers, session::COOKIE).peekable();
        let (Some(key), Some(_)) = (self.session_key.as_ref(), cookies.peek()) else {
            return Err(Refusal::Anonymous);
        };
        let now_ms = crate::storage::now_ms();
        self.attempt(peer, || {
            let mut expired = false;
            for value in cookies {
                match key.verify(value, now_ms) {
                    Ok(session) => return Some(Ok(Authenticated::Session(session))),
                    Err(Invalid::Expired) => expired = true,
                    Err(Invalid::Forged) => {}
                }
            }
            expired.then_some(Err(Refusal::Anonymous))
        })?
    }

    /// Runs `check` of credentials `peer` presented, unless `peer` failed too often; None from
    /// it is a failure counted against `peer`.
    pub(super) fn attempt<T>(
        &self,
        peer: Option<IpAddr>,
        check: impl FnOnce() -> Option<T>,
    ) -> Result<T, Refusal> {
        if let Some(seconds) = self.guesses.wait(peer) {
            return Err(Refusal::TooMany(seconds));
        }
        check().ok_or_else(|| {
            self.guesses.failed(peer);
            Refusal::Wrong
        })
    }

    /// Whether a bearer token or a Basic `user:password` pair is one of the configured
    /// credentials. Every configured credential is checked, so the time taken does not say
    /// which matched.
    pub(super) fn credentials_match(&self, token: Option<&str>, basic: Option<&[u8]>) -> bool {
        let token_ok = match (&self.token, token) {
            (Some(token), Some(given)) => equal(given.as_bytes(), token.expose().as_bytes()),
            _ => false,
        };
        let basic_ok = match (&self.basic, basic) {
            (Some((user, password)), Some(given)) => {
                equal(given, format!("{user}:{}", password.expose()).as_bytes())
            }
            _ => false,
        };
        token_ok | basic_ok
    }

    /// Whether `origin` is one of this server's own: `server.public_url`, or plain http at the
    /// address this listener is configured on or bound to (`local`), or, on the open listener,
    /// a loopback name at that port. Never the request's own Host, which a page of another site
    /// whose name points here (DNS rebinding) chooses.
    pub(super) fn same_origin(&self, origin: &str, local: Option<SocketAddr>) -> bool {
        let Some(given) = origin_of(origin) else {
            return false;
        };
        if self.public_origin.as_deref() == Some(given.as_str()) {
            return true;
        }
        let Some(authority) = given.strip_prefix("http://").and_then(authority) else {
            return false;
        };
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host();
        [Some(self.listen), local]
            .into_iter()
            .flatten()
            .any(|ours| {
                port == ours.port()
                    && (ip_of(host) == Some(ours.ip()) || self.open && is_loopback(host))
            })
    }

    /// Whether a request's Host names this machine as the open listener expects: a loopback
    /// name or address, or the configured address. Any port, for SSH port forwards.
    fn host_allowed(&self, host: Option<&str>) -> bool {
        host.and_then(authority).is_some_and(|authority| {
            let host = authority.host();
            is_loopback(host) || ip_of(host) == Some(self.listen.ip())
        })
    }
}

/// `host[:port]` without user info.
fn authority(text: &str) -> Option<Authority> {
    (!text.contains('@')).then(|| text.parse().ok())?
}

/// The address of an IP literal host (`[::1]` included).
fn ip_of(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || ip_of(host).is_some_and(|ip| ip.is_loopback())
}

/// On the open listener, a request must name this machine in its Host: a page of another site
/// whose name was re-pointed to 127.0.0.1 (DNS rebinding) sends its own name and is refused
/// (421), so it can neither read nor change anything.
pub(super) async fn require_local_host(
    State(guard): State<Arc<ApiGuard>>,
    request: Request,
    next: Next,
) -> Response {
    let host = (request.headers().get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(Authority::as_str));
    if !guard.open || guard.host_allowed(host) {
        return next.run(request).await;
    }
    let error = ApiError::new(
        ErrorCode::ForbiddenHost,
        "this listener answers only to this machine's loopback names; open it as http://127.0.0.1:<port>/ or http://localhost:<port>/",
    );
    refuse(&request, error)
}

/// Refuses API calls without valid credentials (401), and state-changing calls from another
/// origin (403) or with a body that is not JSON (415): a web page can send neither a JSON
/// content type nor a matching Origin without the browser's consent.
pub(super) async fn require_api_auth(
    State(guard): State<Arc<ApiGuard>>,
    mut request: Request,
    next: Next,
) -> Response {
    match check_api_call(&guard, &request) {
        Ok(authenticated) => {
            request.extensions_mut().insert(authenticated);
            request.extensions_mut().insert(guard.clone());
            next.run(request).await
        }
        Err(error) => refuse(&request, error),
    }
}

/// Answers a refused API call, counted and logged (within budget) with the API's refusals.
fn refuse(request: &Request, error: ApiError) -> Response {
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

/// The address of the listener a request came in on, if it was served by ours.
pub(super) fn local_addr(request: &axum::http::Extensions) -> Option<SocketAddr> {
    request.get::<LocalAddr>().map(|LocalAddr(addr)| *addr)
}

/// The 401 of a request without valid credentials. The Basic challenge makes a browser ask
/// for a password in its own box, so it is left out for the console's own calls (a session
/// cookie, or a script's `fetch`): their page sends the user to sign in instead.
pub(super) fn needs_credentials(headers: &HeaderMap) -> ApiError {
    let mut error = ApiError::new(
        ErrorCode::InvalidAuth,
        "the API needs credentials: send Authorization: Bearer <token> or Basic credentials from [server.api], or sign in at /console/login",
    );
    let from_script = (headers.get("sec-fetch-mode"))
        .is_some_and(|mode| mode.as_bytes().eq_ignore_ascii_case(b"cors"));
    let with_cookie = session::cookies(headers, session::COOKIE).next().is_some();
    error.www_authenticate = Some(if from_script || with_cookie {
        "Bearer realm=\"haloflow-api\""
    } else {
        "Bearer realm=\"haloflow-api\", Basic realm=\"haloflow-api\""
    });
    error
}

/// The client's address, if the request was served by our listener.
pub(super) fn peer_ip(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    (extensions.get::<ConnectInfo<SocketAddr>>()).map(|ConnectInfo(addr)| addr.ip())
}

fn check_api_call(guard: &ApiGuard, request: &Request) -> Result<Authenticated, ApiError> {
    let headers = request.headers();
    let authenticated = guard
        .authenticate(headers, peer_ip(request.extensions()))
        .map_err(|refusal| refusal.error(headers))?;
    if !is_safe(request.method()) {
        check_csrf(guard, &authenticated, headers)?;
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("");
            if !guard.same_origin(origin, local_addr(request.extensions())) {
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
    Ok(authenticated)
}

/// Methods that change nothing, and so need no CSRF token.
pub(super) fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A change made with a session cookie must carry the session's `X-CSRF-Token`: the browser
/// sends the cookie with any request to this site, but only the console's own pages can read
/// the token (from `/api/session`).
pub(super) fn check_csrf(
    guard: &ApiGuard,
    authenticated: &Authenticated,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let Authenticated::Session(session) = authenticated else {
        return Ok(());
    };
    let given = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match guard.session_key() {
        Some(key) if key.csrf_ok(session, given) => Ok(()),
        _ => Err(csrf_failed()),
    }
}

/// The 403 of a change made with a session but without its CSRF token.
pub(super) fn csrf_failed() -> ApiError {
    ApiError::new(
        ErrorCode::CsrfFailed,
        "a change made with a console session needs the X-CSRF-Token header from GET /api/session; reload the console",
    )
}

/// The header a console page sends its CSRF token in.
pub(super) const CSRF_HEADER: &str = "x-csrf-token";

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
