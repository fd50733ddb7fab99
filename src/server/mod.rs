//! The HTTP surface: trigger URLs, the run history API and health. [`router`] returns an axum
//! `Router` that tests drive directly and embedders mount under their own prefix.

mod api;
mod error;
mod servicenow;
mod trigger;

use std::future::Future;

use axum::Router;
use axum::routing::{get, post};

pub use error::{ApiError, ErrorCode};

use crate::engine::Engine;

pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/triggers/{flow_id}", post(trigger::receive))
        .route("/servicenow/{side}/{id}/webhook", post(servicenow::receive))
        .route("/api/integrator", get(api::integrator))
        .route("/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .route("/api/flows", get(api::flows))
        .route("/api/runs", get(api::runs))
        .route("/api/runs/{run_id}", get(api::run))
        .route("/api/runs/{run_id}/replay", post(api::replay))
        .route("/api/requests", get(api::requests))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(engine)
}

/// Serves the router on `listener` until `shutdown` completes, then finishes open requests.
pub async fn serve(
    engine: Engine,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(engine))
        .with_graceful_shutdown(shutdown)
        .await
}
