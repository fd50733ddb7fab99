//! The JSON API over run history, and health.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::{ApiError, ErrorCode};
use crate::engine::Engine;
use crate::storage::{RequestFilter, RunFilter, RunStatus};

pub(super) async fn health(State(engine): State<Engine>) -> Response {
    match engine
        .storage()
        .list_runs(&RunFilter {
            limit: Some(1),
            ..RunFilter::default()
        })
        .await
    {
        Ok(_) => Json(json!({"status": "ok", "database": "ok", "flows": engine.flows().len()}))
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "Health check: the database is not answering.");
            ApiError::new(
                ErrorCode::StorageUnavailable,
                "the database is not answering",
            )
            .into_response()
        }
    }
}

pub(super) async fn flows(State(engine): State<Engine>) -> Response {
    let flows: Vec<_> = engine
        .flows()
        .iter()
        .map(|loaded| {
            let flow = &loaded.flow;
            json!({
                "id": flow.id(),
                "name": flow.document.name,
                "trigger_url": format!("/triggers/{}", flow.id()),
                "steps": flow.steps.iter().map(|s| json!({"id": s.id, "type": s.step.step.type_name()})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({"flows": flows})).into_response()
}

fn limit(params: &HashMap<String, String>) -> Result<u32, ApiError> {
    match params.get("limit") {
        None => Ok(50),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("limit: `{text}` is not a number from 1 to 1000"),
                )
            }),
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "Run history query failed.");
    ApiError::new(
        ErrorCode::StorageUnavailable,
        "the run history could not be read; try again",
    )
}

pub(super) async fn runs(
    State(engine): State<Engine>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let result = async {
        let status = match params.get("status") {
            None => None,
            Some(text) => Some(RunStatus::parse(text).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("status: `{text}` is not one of queued, running, succeeded, failed"),
                )
            })?),
        };
        let filter = RunFilter {
            flow_id: params.get("flow").cloned(),
            status,
            limit: Some(limit(&params)?),
        };
        let runs = engine
            .storage()
            .list_runs(&filter)
            .await
            .map_err(internal)?;
        Ok::<_, ApiError>(Json(json!({"runs": runs})))
    }
    .await;
    result.into_response()
}

pub(super) async fn run(State(engine): State<Engine>, Path(run_id): Path<String>) -> Response {
    match engine.storage().get_run(&run_id).await {
        Ok(Some(run)) => Json(run).into_response(),
        Ok(None) => {
            ApiError::new(ErrorCode::NotFound, format!("no run with id `{run_id}`")).into_response()
        }
        Err(e) => internal(e).into_response(),
    }
}

pub(super) async fn requests(
    State(engine): State<Engine>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let result = async {
        let suppressed_only = match params.get("suppressed").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("suppressed: `{other}` is not true or false"),
                ));
            }
        };
        let filter = RequestFilter {
            flow_id: params.get("flow").cloned(),
            suppressed_only,
            limit: Some(limit(&params)?),
        };
        let requests = engine
            .storage()
            .list_requests(&filter)
            .await
            .map_err(internal)?;
        Ok::<_, ApiError>(Json(json!({"requests": requests})))
    }
    .await;
    result.into_response()
}

/// Prometheus text: trigger requests by outcome, and flood-control keys held, per flow.
pub(super) async fn metrics(State(engine): State<Engine>) -> Response {
    use std::fmt::Write;
    use std::sync::atomic::Ordering;
    let mut text = String::from(
        "# HELP haloflow_trigger_requests_total Trigger requests by outcome since start.\n\
         # TYPE haloflow_trigger_requests_total counter\n",
    );
    for loaded in engine.flows() {
        let c = &loaded.counters;
        for (outcome, counter) in [
            ("accepted", &c.accepted),
            ("suppressed", &c.suppressed),
            ("rate_limited", &c.rate_limited),
            ("rejected", &c.rejected),
        ] {
            let _ = writeln!(
                text,
                "haloflow_trigger_requests_total{{flow=\"{}\",outcome=\"{outcome}\"}} {}",
                loaded.flow.id(),
                counter.load(Ordering::Relaxed)
            );
        }
    }
    text.push_str("# HELP haloflow_flood_control_keys Correlation keys held by flood control.\n# TYPE haloflow_flood_control_keys gauge\n");
    for (flow, keys) in engine.flood_control().tracked_keys() {
        let _ = writeln!(
            text,
            "haloflow_flood_control_keys{{flow=\"{flow}\"}} {keys}"
        );
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

pub(super) async fn not_found() -> Response {
    ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint; see the README for the HTTP API",
    )
    .into_response()
}
