//! The HTTP surface: trigger URLs, the run history API and health. [`router`] returns an axum
//! `Router` that tests drive directly and embedders mount under their own prefix.

mod api;
mod console;
mod error;
mod flows;
mod guard;
mod guesses;
mod listener;
mod rejections;
mod trigger;

use std::future::Future;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Router, middleware};

pub use api::limit as limit_param;
pub use error::{ApiError, ErrorCode};
pub use rejections::{Rejected, Rejections, UNKNOWN};
pub use trigger::answer as accepted_answer;
pub use trigger::overloaded;

use crate::engine::Engine;

/// The public listener's router: trigger URLs, the integrations' routes (the ServiceNow
/// webhook) and health, plus the API
/// (behind its credentials) when `[server.api]` configures some, and `/metrics` when public.
pub fn router(engine: Engine) -> Router {
    let rejections = rejections_of(&engine);
    public_router(engine, rejections)
}

/// The admin listener's router: health, the API and `/metrics`, open to anyone who reaches it
/// unless `[server.api]` configures credentials (then it asks for them as the public one does).
pub fn admin_router(engine: Engine) -> Router {
    let rejections = rejections_of(&engine);
    private_router(engine, rejections)
}

fn rejections_of(engine: &Engine) -> Arc<Rejections> {
    Arc::new(Rejections::new(
        engine.server_config().rejections_logged_per_sec,
    ))
}

fn public_router(engine: Engine, rejections: Arc<Rejections>) -> Router {
    let server = engine.server_config();
    let mut app = public_routes().merge(engine.integrations().routes());
    if server.api.is_configured() {
        app = app.merge(api_routes(&engine, false));
    } else if server.metrics_public {
        app = app.merge(metrics_routes());
    }
    finish(app, engine, rejections)
}

fn private_router(engine: Engine, rejections: Arc<Rejections>) -> Router {
    let app = Router::new()
        .route("/health", get(api::health))
        .merge(api_routes(&engine, true));
    finish(app, engine, rejections)
}

fn public_routes() -> Router<Engine> {
    Router::new()
        .route("/triggers/{flow_id}", post(trigger::receive))
        .route("/health", get(api::health))
}

// One `.route(` per line: tests/it/openapi.rs reads the routes from this file.
#[rustfmt::skip]
fn metrics_routes() -> Router<Engine> {
    Router::new()
        .route("/metrics", get(api::metrics))
}

/// The API behind its guard (the integrations' API routes too), and the console signing in
/// to it; `/metrics` too unless `server.metrics_public`. On the open admin listener all of it
/// answers only to a loopback Host (health, routed apart, answers any).
fn api_routes(engine: &Engine, admin: bool) -> Router<Engine> {
    let guarded = Router::new()
        .route("/api/session", get(console::session))
        .route("/api/flows", get(flows::flows))
        .route("/api/flows/reload", post(flows::reload))
        .route("/api/flows/{flow_id}/setup", get(flows::setup))
        .route("/api/flows/{flow_id}/test", post(flows::test))
        .route("/api/runs", get(api::runs))
        .route("/api/runs/{run_id}", get(api::run))
        .route("/api/runs/{run_id}/replay", post(api::replay))
        .route("/api/requests", get(api::requests))
        .merge(engine.integrations().api_routes());
    let public_metrics = engine.server_config().metrics_public;
    let guarded = if public_metrics {
        guarded
    } else {
        guarded.merge(metrics_routes())
    };
    let guard = guard::ApiGuard::new(engine, admin);
    let guarded = guarded.route_layer(middleware::from_fn_with_state(
        guard.clone(),
        guard::require_api_auth,
    ));
    let guarded = if public_metrics {
        guarded.merge(metrics_routes())
    } else {
        guarded
    };
    guarded
        .merge(console::routes(engine, guard.clone()))
        .route_layer(middleware::from_fn_with_state(
            guard,
            guard::require_local_host,
        ))
}

fn finish(app: Router<Engine>, engine: Engine, rejections: Arc<Rejections>) -> Router {
    let max_header_bytes = engine.server_config().max_header_bytes;
    // Integrations' webhooks and replay read their bodies whole: no more than a trigger's.
    let max_body_bytes = engine.server_config().max_body_bytes;
    app.fallback(api::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::Extension(rejections))
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            max_header_bytes,
            guard::limit_head,
        ))
        .with_state(engine)
}

/// Where the server listens: the public listener (trigger URLs, webhooks) and the admin
/// listener (the API for this machine), if any.
pub struct Listeners {
    pub public: tokio::net::TcpListener,
    pub admin: Option<tokio::net::TcpListener>,
}

/// Serves the public router on `listener` until `shutdown` completes, then finishes open
/// requests. The API is served here only when `[server.api]` configures credentials; see
/// [`serve_listeners`] for the admin listener.
pub async fn serve(
    engine: Engine,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listeners = Listeners {
        public: listener,
        admin: None,
    };
    serve_listeners(engine, listeners, shutdown).await
}

/// Serves the public router and, if given, the admin router, with the listener limits of
/// `[server]`, until `shutdown` completes; then finishes open requests.
pub async fn serve_listeners(
    engine: Engine,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = listener::Limits::from_config(engine.server_config());
    let stop = listener::shutdown_watch(shutdown);
    let rejections = rejections_of(&engine);
    let public = public_router(engine.clone(), rejections.clone());
    let public = listener::run(
        listeners.public,
        public,
        limits,
        rejections.clone(),
        stop.clone(),
    );
    match listeners.admin {
        Some(admin) => {
            let app = private_router(engine, rejections.clone());
            let admin = listener::run(admin, app, limits, rejections, stop);
            tokio::try_join!(public, admin).map(|_| ())
        }
        None => public.await,
    }
}
