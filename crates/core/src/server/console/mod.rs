//! The console: static pages embedded in the binary, served under `/console/`, and the
//! sign-in that gives a browser a session cookie for the API. The pages are clients of the
//! JSON API; nothing here reads run history.

pub(super) mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Form, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, ErrorCode, Valid};
use super::guard::{ApiGuard, Authenticated, Refusal, check_csrf, csrf_failed, peer_ip};
use super::rejections::{API, Rejected, Rejections};
use crate::engine::Engine;

/// Every file of `assets/`, as (name, content type, content). A new file takes one line.
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", HTML, include_str!("assets/index.html")),
    ("login.html", HTML, include_str!("assets/login.html")),
    ("console.css", CSS, include_str!("assets/console.css")),
    ("app.js", JS, include_str!("assets/app.js")),
    ("api.js", JS, include_str!("assets/api.js")),
    ("dom.js", JS, include_str!("assets/dom.js")),
    ("flows.js", JS, include_str!("assets/flows.js")),
    ("setup.js", JS, include_str!("assets/setup.js")),
    ("runs.js", JS, include_str!("assets/runs.js")),
    ("requests.js", JS, include_str!("assets/requests.js")),
    ("login.js", JS, include_str!("assets/login.js")),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'";

const WRONG_CREDENTIALS: &str = "Wrong user name, password or token.";

struct Console {
    guard: Arc<ApiGuard>,
    /// `Secure` cookies when the server's public URL is https.
    secure: bool,
}

/// The console's routes on a listener that serves the API, guarded as the API is by `guard`.
pub(super) fn routes(engine: &Engine, guard: Arc<ApiGuard>) -> Router<Engine> {
    let secure = (engine.server_config().public_url.as_deref())
        .is_some_and(|url| url.trim().to_ascii_lowercase().starts_with("https://"));
    let console = Arc::new(Console { guard, secure });
    Router::new()
        .route("/console", get(to_shell))
        .route("/console/", get(shell))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", axum::routing::post(logout))
        .route("/console/assets/{*file}", get(asset))
        .route("/console/{*rest}", get(elsewhere))
        .layer(middleware::from_fn(security_headers))
        .with_state(console)
}

/// The file of `assets/` called `name`.
fn find_asset(name: &str) -> Option<(&'static str, &'static str)> {
    ASSETS
        .iter()
        .find(|(file, _, _)| *file == name)
        .map(|(_, content_type, body)| (*content_type, *body))
}

async fn asset(Valid(axum::extract::Path(file)): Valid<axum::extract::Path<String>>) -> Response {
    match find_asset(&file) {
        Some((content_type, body)) => (
            [
                (header::CONTENT_TYPE, content_type),
                // Revalidated on each load, so a new binary's files are picked up at once.
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => {
            ApiError::new(ErrorCode::NotFound, format!("no console file `{file}`")).into_response()
        }
    }
}

async fn to_shell() -> Response {
    see_other("/console/")
}

async fn shell(State(console): State<Arc<Console>>, request: Request) -> Response {
    match authenticate(&console, &request) {
        Ok(_) => html(
            StatusCode::OK,
            find_asset("index.html").map_or("", |(_, body)| body),
        ),
        Err(refusal) => sign_in_first(&request, refusal),
    }
}

/// Any other path under `/console/`: a stranger is sent to sign in, as for the shell.
async fn elsewhere(State(console): State<Arc<Console>>, request: Request) -> Response {
    match authenticate(&console, &request) {
        Ok(_) => ApiError::new(
            ErrorCode::NotFound,
            "no such console page; the console is at /console/",
        )
        .into_response(),
        Err(refusal) => sign_in_first(&request, refusal),
    }
}

fn authenticate(console: &Console, request: &Request) -> Result<Authenticated, Refusal> {
    (console.guard).authenticate(request.headers(), peer_ip(request.extensions()))
}

/// A browser goes to the sign-in page and comes back after; other clients get the API's 401
/// (or 429 after too many failures).
fn sign_in_first(request: &Request, refusal: Refusal) -> Response {
    let wants_html = (request.headers().get(header::ACCEPT))
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if !wants_html || matches!(refusal, Refusal::TooMany(_)) {
        return refusal.error(request.headers()).into_response();
    }
    let here = request
        .uri()
        .path_and_query()
        .map_or("/console/", |p| p.as_str());
    see_other(&format!(
        "/console/login?next={}",
        crate::outbound::encode_component(here)
    ))
}

#[derive(Deserialize)]
struct NextParam {
    next: Option<String>,
}

async fn login_page(
    State(console): State<Arc<Console>>,
    caller: Caller,
    headers: HeaderMap,
    Valid(Query(params)): Valid<Query<NextParam>>,
) -> Response {
    let next = safe_next(params.next.as_deref());
    if console.guard.authenticate(&headers, caller.ip()).is_ok() {
        return see_other(next);
    }
    login_form(StatusCode::OK, None, next)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
    next: Option<String>,
}

async fn login(
    State(console): State<Arc<Console>>,
    caller: Caller,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let next = form
        .as_ref()
        .ok()
        .and_then(|Form(f)| f.next.as_deref())
        .map_or("/console/", |n| safe_next(Some(n)))
        .to_owned();
    if console.guard.is_open() {
        return see_other(&next);
    }
    let origin = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or(""));
    if origin.is_some_and(|origin| !console.guard.same_origin(origin, caller.local)) {
        return ApiError::new(
            ErrorCode::ForbiddenOrigin,
            "sign in from the console's own page",
        )
        .into_response();
    }
    let form = form.ok();
    let signed_in = console.guard.attempt(caller.ip(), || {
        let Form(form) = form.as_ref()?;
        credentials_ok(&console.guard, form).then_some(())?;
        console.guard.session_key()
    });
    match signed_in {
        Ok(key) => {
            let expires_at_ms = crate::storage::now_ms() + session::LIFETIME_SECS * 1000;
            let value = key.issue(expires_at_ms);
            with_cookie(
                see_other(&next),
                &value,
                session::LIFETIME_SECS,
                console.secure,
            )
        }
        Err(Refusal::TooMany(seconds)) => {
            let message = format!("Too many sign-in attempts; try again in {seconds} seconds.");
            caller.count(
                ErrorCode::RateLimited,
                "console sign-in over the attempt limit",
            );
            let mut response = login_form(StatusCode::TOO_MANY_REQUESTS, Some(&message), &next);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            response
        }
        Err(_) => {
            caller.count(
                ErrorCode::InvalidAuth,
                "console sign-in with wrong credentials",
            );
            login_form(StatusCode::UNAUTHORIZED, Some(WRONG_CREDENTIALS), &next)
        }
    }
}

/// Who is calling: the client's and the listener's addresses; counts a refused sign-in with
/// the API's refusals (`/metrics`, `flow="api"`) and logs it within their budget.
struct Caller {
    rejections: Option<Arc<Rejections>>,
    peer: Option<SocketAddr>,
    /// The listener's address, for the Origin check.
    local: Option<SocketAddr>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            rejections: parts.extensions.get::<Arc<Rejections>>().cloned(),
            peer: (parts.extensions.get::<ConnectInfo<SocketAddr>>()).map(|ConnectInfo(a)| *a),
            local: super::guard::local_addr(&parts.extensions),
        })
    }
}

impl Caller {
    fn ip(&self) -> Option<std::net::IpAddr> {
        self.peer.map(|peer| peer.ip())
    }

    fn count(&self, code: ErrorCode, detail: &str) {
        let Some(rejections) = &self.rejections else {
            return;
        };
        let error = ApiError::new(code, detail);
        rejections.count_and_log(&Rejected {
            flow: API,
            error: &error,
            detail,
            peer: self.peer,
            bytes: 0,
            store: false,
        });
    }
}

/// A token if one was entered, else the user name and password.
fn credentials_ok(guard: &ApiGuard, form: &LoginForm) -> bool {
    if form.token.is_empty() {
        let pair = format!("{}:{}", form.username, form.password);
        guard.credentials_match(None, Some(pair.as_bytes()))
    } else {
        guard.credentials_match(Some(&form.token), None)
    }
}

/// Clears the cookie, for the console's own page only, so no other site can sign a user out:
/// the request carries the session's CSRF token, or the browser says it comes from this
/// server's own origin (`Origin`, or `Sec-Fetch-Site: same-origin` once the session expired).
async fn logout(
    State(console): State<Arc<Console>>,
    caller: Caller,
    headers: HeaderMap,
) -> Response {
    let guard = &console.guard;
    let with_token = guard.authenticate(&headers, caller.ip()).is_ok_and(|a| {
        matches!(a, Authenticated::Session(_)) && check_csrf(guard, &a, &headers).is_ok()
    });
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let own_origin =
        text(header::ORIGIN.as_str()).is_some_and(|origin| guard.same_origin(origin, caller.local));
    let same_site = text("sec-fetch-site") == Some("same-origin");
    if !(with_token || own_origin || same_site) {
        return csrf_failed().into_response();
    }
    with_cookie(see_other("/console/login"), "", 0, console.secure)
}

/// `GET /api/session`: how this caller is signed in, and the CSRF token a session's changes
/// carry.
pub(super) async fn session(
    Extension(authenticated): Extension<Authenticated>,
    Extension(guard): Extension<Arc<ApiGuard>>,
) -> Response {
    let user = guard.basic_username();
    let body = match &authenticated {
        Authenticated::Open => json!({"authenticated": true, "via": "open", "user": null,
            "csrf_token": null, "expires_at_ms": null}),
        Authenticated::Credentials => json!({"authenticated": true, "via": "credentials",
            "user": user, "csrf_token": null, "expires_at_ms": null}),
        Authenticated::Session(session) => json!({"authenticated": true, "via": "session",
            "user": user,
            "csrf_token": guard.session_key().map(|key| key.csrf_token(session)),
            "expires_at_ms": session.expires_at_ms}),
    };
    Json(body).into_response()
}

/// `response` setting (or, with `max_age_secs` 0, clearing) the session cookie.
fn with_cookie(mut response: Response, value: &str, max_age_secs: i64, secure: bool) -> Response {
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!(
        "{}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_secs}{secure}",
        session::COOKIE
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Where to go after signing in: a path of the console, never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(path)
            if path.starts_with("/console/")
                && !path.contains(['\\', '\r', '\n'])
                && !path.starts_with("/console/login") =>
        {
            path
        }
        _ => "/console/",
    }
}

/// The sign-in page with `error` (if any) and the `next` path filled in, HTML-escaped.
fn login_form(status: StatusCode, error: Option<&str>, next: &str) -> Response {
    html(status, render_login(error, next))
}

fn render_login(error: Option<&str>, next: &str) -> String {
    let template = find_asset("login.html").map_or("", |(_, body)| body);
    let error = error.map_or(String::new(), |message| {
        format!(
            "<p class=\"error\" role=\"alert\">{}</p>",
            handlebars::html_escape(message)
        )
    });
    template
        .replace("{{next}}", &handlebars::html_escape(next))
        .replace("{{error}}", &error)
}

fn html(status: StatusCode, body: impl Into<String>) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HTML),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (status, headers, body.into()).into_response()
}

fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response(),
        Err(_) => (StatusCode::SEE_OTHER, [(header::LOCATION, "/console/")]).into_response(),
    }
}

/// The console's pages may load only their own files, and no other site may frame them.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_in_the_console() {
        assert_eq!(safe_next(Some("/console/#/runs")), "/console/#/runs");
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/api/runs",
            "/console/login?next=x",
            "/console/\\evil",
        ] {
            assert_eq!(safe_next(Some(bad)), "/console/", "{bad}");
        }
        assert_eq!(safe_next(None), "/console/");
    }

    #[test]
    fn the_login_page_escapes_what_it_shows() {
        let page = render_login(Some("<b>"), "/console/\"><script>");
        assert!(page.contains("&lt;b&gt;"), "{page}");
        assert!(page.contains("/console/&quot;&gt;&lt;script&gt;"), "{page}");
        assert!(!page.contains("<script>") && !page.contains("{{"), "{page}");
    }

    #[test]
    fn every_asset_has_a_content_type() {
        for (name, content_type, _) in ASSETS {
            let extension = name.rsplit('.').next().unwrap_or("");
            let expected = match extension {
                "html" => HTML,
                "css" => CSS,
                "js" => JS,
                _ => "",
            };
            assert_eq!(*content_type, expected, "{name}");
        }
    }
}
