//! TEMP: serves the console's static files on the admin listener so the front end can be
//! developed before the real module (login, session, CSRF) lands. Dropped at merge.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::engine::Engine;

const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript", include_str!("assets/app.js")),
    ("api.js", "text/javascript", include_str!("assets/api.js")),
    ("dom.js", "text/javascript", include_str!("assets/dom.js")),
    ("flows.js", "text/javascript", include_str!("assets/flows.js")),
    ("setup.js", "text/javascript", include_str!("assets/setup.js")),
    ("runs.js", "text/javascript", include_str!("assets/runs.js")),
    ("requests.js", "text/javascript", include_str!("assets/requests.js")),
    ("console.css", "text/css", include_str!("assets/console.css")),
];

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'";

pub(super) fn routes() -> Router<Engine> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(shell))
        .route("/console/login", get(login))
        .route("/console/assets/{file}", get(asset))
}

fn html(body: String) -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (headers, body).into_response()
}

async fn shell() -> Response {
    html(include_str!("assets/index.html").to_owned())
}

async fn login() -> Response {
    let page = include_str!("assets/login.html")
        .replace("{{error}}", "")
        .replace("{{next}}", "/console/");
    html(page)
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CONTENT_SECURITY_POLICY, CSP),
            ],
            *body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
