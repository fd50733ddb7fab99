//! The JSON API over run history, and health.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::{ApiError, ErrorCode};
use crate::engine::{Engine, LATENCY_BUCKETS, ReplayError, ReplayFrom};
use crate::storage::{RequestFilter, RunFilter, RunStatus};

pub(super) async fn health(State(engine): State<Engine>) -> Response {
    match engine.storage().ping().await {
        Ok(_) => Json(json!({"status": "ok", "database": "ok", "flows": engine.flows().len()}))
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "Health check: the database is not answering; check that it is running and reachable (server.database_url).");
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
                "steps": flow.steps.iter().map(|s| json!({"id": s.id, "type": s.implementation().type_name()})).collect::<Vec<_>>(),
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

/// A time filter: RFC 3339 (`2026-11-23T10:00:00Z`) or unix milliseconds.
fn time_param(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(text) = params.get(name) else {
        return Ok(None);
    };
    crate::storage::parse_time(text).map(Some).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidQuery,
            format!("{name}: `{text}` is not a time; use RFC 3339 (2026-11-23T10:00:00Z) or unix milliseconds"),
        )
    })
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "Run history query failed; check the database (server.database_url).");
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
            since_ms: time_param(&params, "since")?,
            until_ms: time_param(&params, "until")?,
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

/// `POST /api/runs/{id}/replay` with an optional body `{"from_step": "<id>"}` or
/// `{"from": "trigger"}`; without one, a failed run replays from its failed step.
pub(super) async fn replay(
    State(engine): State<Engine>,
    Path(run_id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let from = match replay_from(&body) {
        Ok(from) => from,
        Err(error) => return error.into_response(),
    };
    match engine.replay(&run_id, from).await {
        Ok(new_run_id) => (
            axum::http::StatusCode::ACCEPTED,
            Json(json!({"run_id": new_run_id, "replay_of": run_id})),
        )
            .into_response(),
        Err(ReplayError::NotFound(_)) => {
            ApiError::new(ErrorCode::NotFound, format!("no run with id `{run_id}`")).into_response()
        }
        Err(ReplayError::Storage(e)) => internal(e).into_response(),
        Err(e) => ApiError::new(ErrorCode::InvalidReplay, e.to_string()).into_response(),
    }
}

fn replay_from(body: &[u8]) -> Result<ReplayFrom, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ReplayFrom::Failure);
    }
    // A body that is not one of the documented shapes is the request's fault: 400, not the
    // 409 of a run that cannot be replayed.
    let bad = |message: String| ApiError::new(ErrorCode::InvalidPayload, message);
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(ErrorCode::InvalidJson, format!(
            "body: not JSON ({e}); send {{\"from_step\": \"<id>\"}} or {{\"from\": \"trigger\"}}"
        ))
    })?;
    let fields = value.as_object().map(|o| {
        let text = |key| o.get(key).map(serde_json::Value::as_str);
        (o.len(), text("from_step"), text("from"))
    });
    match fields {
        Some((1, Some(Some(step)), None)) => Ok(ReplayFrom::Step(step.to_owned())),
        Some((1, None, Some(Some("trigger")))) => Ok(ReplayFrom::Trigger),
        Some((1, None, Some(Some("failure")))) | Some((0, None, None)) => Ok(ReplayFrom::Failure),
        _ => Err(bad(
            "body: send {\"from_step\": \"<id>\"}, {\"from\": \"trigger\"} or nothing (from the failed step)".to_owned(),
        )),
    }
}

/// `GET /api/integrator`: the last scan of each ServiceNow instance.
pub(super) async fn integrator(State(engine): State<Engine>) -> Response {
    match engine.storage().scans().await {
        Ok(scans) => {
            let scans: Vec<_> = scans
                .into_iter()
                .map(|(connection, started, finished, result)| {
                    json!({"connection": connection, "started_at_ms": started,
                           "finished_at_ms": finished, "result": result})
                })
                .collect();
            Json(json!({"scans": scans})).into_response()
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

/// Prometheus text (format 0.0.4): trigger requests by outcome, runs by status, step latency,
/// retries, flood-control keys.
pub(super) async fn metrics(
    State(engine): State<Engine>,
    axum::Extension(rejections): axum::Extension<std::sync::Arc<super::Rejections>>,
) -> Response {
    use std::fmt::Write;
    use std::sync::atomic::Ordering;
    let mut text = String::new();
    let family = |text: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut text,
        "haloflow_trigger_requests_total",
        "counter",
        "Trigger requests by outcome since start.",
    );
    for loaded in engine.flows() {
        let c = &loaded.counters;
        for (outcome, counter) in [
            ("accepted", &c.accepted),
            ("suppressed", &c.suppressed),
            ("rate_limited", &c.rate_limited),
            ("rejected", &c.rejected),
            ("duplicate", &c.duplicate),
        ] {
            let _ = writeln!(
                text,
                "haloflow_trigger_requests_total{{flow=\"{}\",outcome=\"{outcome}\"}} {}",
                label(loaded.flow.id()),
                counter.load(Ordering::Relaxed)
            );
        }
    }
    family(
        &mut text,
        "haloflow_rejected_requests_total",
        "counter",
        "Rejected trigger and ServiceNow webhook requests by flow (or connection) and reason, since start; `unknown` for ids that do not exist.",
    );
    for (flow, reason, n) in rejections.counts() {
        let _ = writeln!(
            text,
            "haloflow_rejected_requests_total{{flow=\"{}\",reason=\"{reason}\"}} {n}",
            label(&flow)
        );
    }
    family(
        &mut text,
        "haloflow_runs",
        "gauge",
        "Runs in the database by flow and status.",
    );
    match engine.storage().run_counts().await {
        Ok(counts) => {
            for c in counts {
                let _ = writeln!(
                    text,
                    "haloflow_runs{{flow=\"{}\",status=\"{}\"}} {}",
                    label(&c.flow_id),
                    c.status.as_str(),
                    c.count
                );
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "Metrics: could not count runs; check the database (server.database_url).")
        }
    }
    if let Some(stats) = engine.storage().write_stats() {
        family(
            &mut text,
            "haloflow_storage_writes_total",
            "counter",
            "Database writes since start.",
        );
        let _ = writeln!(text, "haloflow_storage_writes_total {}", stats.writes);
        family(
            &mut text,
            "haloflow_storage_commits_total",
            "counter",
            "Database transactions the writes were committed in (group commit), since start.",
        );
        let _ = writeln!(text, "haloflow_storage_commits_total {}", stats.commits);
    }
    let state = engine.metrics();
    family(
        &mut text,
        "haloflow_step_attempt_duration_seconds",
        "histogram",
        "Duration of step attempts by step type and outcome, since start.",
    );
    for ((step_type, outcome), h) in &state.step_latency {
        let labels = format!("step_type=\"{}\",outcome=\"{outcome}\"", label(step_type));
        for (count, bound) in h.buckets.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(
                text,
                "haloflow_step_attempt_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            text,
            "haloflow_step_attempt_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n\
             haloflow_step_attempt_duration_seconds_sum{{{labels}}} {}\n\
             haloflow_step_attempt_duration_seconds_count{{{labels}}} {}",
            h.count, h.sum_secs, h.count
        );
    }
    family(
        &mut text,
        "haloflow_step_retries_total",
        "counter",
        "Step attempts after the first, by step type, since start.",
    );
    for (step_type, n) in &state.retries {
        let _ = writeln!(
            text,
            "haloflow_step_retries_total{{step_type=\"{}\"}} {n}",
            label(step_type)
        );
    }
    family(
        &mut text,
        "haloflow_step_adopted_total",
        "counter",
        "Creates whose earlier attempt was found and adopted instead of sent again, since start.",
    );
    for (step_type, n) in &state.adopted {
        let _ = writeln!(
            text,
            "haloflow_step_adopted_total{{step_type=\"{}\"}} {n}",
            label(step_type)
        );
    }
    family(
        &mut text,
        "haloflow_runs_interrupted_total",
        "counter",
        "Runs stopped by a shutdown and left to resume, since start.",
    );
    let _ = writeln!(
        text,
        "haloflow_runs_interrupted_total {}",
        state.interrupted_runs
    );
    family(
        &mut text,
        "haloflow_runs_pruned_total",
        "counter",
        "Finished runs deleted by retention, since start.",
    );
    let _ = writeln!(text, "haloflow_runs_pruned_total {}", state.pruned_runs);
    family(
        &mut text,
        "haloflow_integrator_last_scan_timestamp_seconds",
        "gauge",
        "When each ServiceNow instance's last integrator scan finished (unix seconds).",
    );
    let scans = engine.storage().scans().await.unwrap_or_default();
    for (connection, _, finished, _) in &scans {
        let _ = writeln!(
            text,
            "haloflow_integrator_last_scan_timestamp_seconds{{connection=\"{}\"}} {}",
            label(connection),
            *finished as f64 / 1000.0
        );
    }
    family(
        &mut text,
        "haloflow_integrator_last_scan_records",
        "gauge",
        "Records the last integrator scan of each instance read, and its errors.",
    );
    for (connection, _, _, result) in &scans {
        for (kind, value) in [
            ("records", result["records"].as_u64().unwrap_or(0)),
            ("created", result["created"].as_u64().unwrap_or(0)),
            ("updated", result["updated"].as_u64().unwrap_or(0)),
            ("notes", result["notes"].as_u64().unwrap_or(0)),
            (
                "errors",
                result["errors"].as_array().map_or(0, |e| e.len() as u64),
            ),
        ] {
            let _ = writeln!(
                text,
                "haloflow_integrator_last_scan_records{{connection=\"{}\",kind=\"{kind}\"}} {value}",
                label(connection)
            );
        }
    }
    family(
        &mut text,
        "haloflow_flood_control_keys",
        "gauge",
        "Correlation keys held by flood control.",
    );
    for (flow, keys) in engine.flood_control().tracked_keys() {
        let _ = writeln!(
            text,
            "haloflow_flood_control_keys{{flow=\"{}\"}} {keys}",
            label(&flow)
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

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(super) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    let hint = if uri.path().starts_with("/triggers/") {
        "trigger URLs take POST with a JSON body; in Halo, set the webhook's method to POST"
    } else {
        "see schemas/openapi.json for the methods each endpoint takes"
    };
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} {}: method not allowed; {hint}", uri.path()),
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
