//! The JSON API over run history, and health.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{ApiError, ErrorCode, Valid};
use crate::engine::{Engine, Exposition, ReplayError, ReplayFrom};
use crate::storage::{Cursor, RequestFilter, RequestRecord, RunFilter, RunStatus, Verdict};

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

/// The `limit` query parameter of a listing: 1 to 1000, 50 when not given.
pub fn limit(params: &HashMap<String, String>) -> Result<u32, ApiError> {
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

pub(super) async fn runs(
    State(engine): State<Engine>,
    Valid(Query(params)): Valid<Query<HashMap<String, String>>>,
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
        let limit = limit(&params)?;
        let filter = RunFilter {
            flow_id: params.get("flow").cloned(),
            status,
            since_ms: time_param(&params, "since")?,
            until_ms: time_param(&params, "until")?,
            limit: Some(limit + 1),
            request_id: params.get("request").cloned(),
            flow_prefix: params.get("flow_prefix").cloned(),
            before: cursor(&params)?,
        };
        let mut runs = engine
            .storage()
            .list_runs(&filter)
            .await
            .map_err(ApiError::storage_read)?;
        let next = next_cursor(&mut runs, limit, |r| (r.created_at_ms, &r.id));
        Ok::<_, ApiError>(Json(json!({"runs": runs, "next_cursor": next})))
    }
    .await;
    result.into_response()
}

/// The `before` cursor of a page after the first.
fn cursor(params: &HashMap<String, String>) -> Result<Option<Cursor>, ApiError> {
    let Some(text) = params.get("before") else {
        return Ok(None);
    };
    Cursor::parse(text).map(Some).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidQuery,
            format!("before: `{text}` is not a cursor; pass the `next_cursor` of the page before"),
        )
    })
}

/// Keeps the page's `limit` rows (one more was read to learn whether more follow) and returns
/// the cursor of the next page, if there is one.
fn next_cursor<T>(
    rows: &mut Vec<T>,
    limit: u32,
    key: impl Fn(&T) -> (i64, &String),
) -> Option<String> {
    if rows.len() <= limit as usize {
        return None;
    }
    rows.truncate(limit as usize);
    rows.last().map(|row| {
        let (at_ms, id) = key(row);
        Cursor {
            at_ms,
            id: id.clone(),
        }
        .to_string()
    })
}

pub(super) async fn run(
    State(engine): State<Engine>,
    Valid(Path(run_id)): Valid<Path<String>>,
) -> Response {
    match engine.storage().get_run(&run_id).await {
        Ok(Some(run)) => Json(run).into_response(),
        Ok(None) => {
            ApiError::new(ErrorCode::NotFound, format!("no run with id `{run_id}`")).into_response()
        }
        Err(e) => ApiError::storage_read(e).into_response(),
    }
}

/// `POST /api/runs/{id}/replay` with an optional body `{"from_step": "<id>"}` or
/// `{"from": "trigger"}`; without one, a failed run replays from its failed step.
pub(super) async fn replay(
    State(engine): State<Engine>,
    Valid(Path(run_id)): Valid<Path<String>>,
    Valid(body): Valid<axum::body::Bytes>,
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
        Err(ReplayError::Storage(e)) => ApiError::storage_read(e).into_response(),
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

pub(super) async fn requests(
    State(engine): State<Engine>,
    Valid(Query(params)): Valid<Query<HashMap<String, String>>>,
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
        let verdict = match params.get("verdict") {
            None => None,
            Some(text) => Some(Verdict::parse(text).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidQuery,
                    format!("verdict: `{text}` is not one of run, suppressed, duplicate, rejected"),
                )
            })?),
        };
        let limit = limit(&params)?;
        let filter = RequestFilter {
            flow_id: params.get("flow").cloned(),
            suppressed_only,
            limit: Some(limit + 1),
            flow_prefix: params.get("flow_prefix").cloned(),
            verdict,
            since_ms: time_param(&params, "since")?,
            until_ms: time_param(&params, "until")?,
            before: cursor(&params)?,
        };
        let mut requests = engine
            .storage()
            .list_requests(&filter)
            .await
            .map_err(ApiError::storage_read)?;
        let next = next_cursor(&mut requests, limit, |r| (r.received_at_ms, &r.id));
        let requests: Vec<Value> = requests.iter().map(with_verdict).collect();
        Ok::<_, ApiError>(Json(json!({"requests": requests, "next_cursor": next})))
    }
    .await;
    result.into_response()
}

/// A listed request with the verdict the console shows it with.
fn with_verdict(request: &RequestRecord) -> Value {
    let mut value = json!(request);
    value["verdict"] = json!(Verdict::of(request).as_str());
    value
}

/// Prometheus text (format 0.0.4): trigger requests by outcome, runs by status, step latency,
/// retries, flood-control keys (the README lists every metric).
pub(super) async fn metrics(
    State(engine): State<Engine>,
    axum::Extension(rejections): axum::Extension<std::sync::Arc<super::Rejections>>,
) -> Response {
    let mut exposition = Exposition::default();
    trigger_requests(&engine, &mut exposition);
    exposition.counter(
        "haloflow_rejected_requests",
        "Rejected trigger and integration webhook requests by flow (or connection) and reason, since start; `unknown` for ids that do not exist.",
        (rejections.counts().into_iter())
            .map(|(flow, reason, n)| {
                (Exposition::labels([("flow", &flow), ("reason", reason)]), n)
            }),
    );
    run_counts(&engine, &mut exposition).await;
    storage_writes(&engine, &mut exposition);
    engine.metrics().expose(&mut exposition);
    engine
        .integrations()
        .expose_metrics(&engine, &mut exposition)
        .await;
    exposition.gauge(
        "haloflow_flood_control_keys",
        "Correlation keys held by flood control.",
        (engine.flood_control().tracked_keys().into_iter())
            .map(|(flow, keys)| (Exposition::labels([("flow", &flow)]), keys as i64)),
    );
    let content_type = [(axum::http::header::CONTENT_TYPE, Exposition::CONTENT_TYPE)];
    (content_type, exposition.encode()).into_response()
}

/// Trigger requests of each flow by outcome, counted since start.
fn trigger_requests(engine: &Engine, exposition: &mut Exposition) {
    use std::sync::atomic::Ordering;
    let mut samples = Vec::new();
    for loaded in engine.flows() {
        let c = &loaded.counters;
        for (outcome, counter) in [
            ("accepted", &c.accepted),
            ("suppressed", &c.suppressed),
            ("rate_limited", &c.rate_limited),
            ("rejected", &c.rejected),
            ("duplicate", &c.duplicate),
        ] {
            let labels = [("flow", loaded.flow.id()), ("outcome", outcome)];
            let n = counter.load(Ordering::Relaxed);
            samples.push((Exposition::labels(labels), n));
        }
    }
    exposition.counter(
        "haloflow_trigger_requests",
        "Trigger requests by outcome since start.",
        samples,
    );
}

/// Runs in the database by flow and status (none when the database does not answer).
async fn run_counts(engine: &Engine, exposition: &mut Exposition) {
    let counts = engine.storage().run_counts(None).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "Metrics: could not count runs; check the database (server.database_url).");
        Vec::new()
    });
    exposition.gauge(
        "haloflow_runs",
        "Runs in the database by flow and status.",
        counts.iter().map(|c| {
            let labels = [("flow", c.flow_id.as_str()), ("status", c.status.as_str())];
            (Exposition::labels(labels), c.count)
        }),
    );
}

/// Writes and group commits, for a database that counts them; runs executing and writes
/// waiting, the two bounds on load.
fn storage_writes(engine: &Engine, exposition: &mut Exposition) {
    exposition.gauge(
        "haloflow_active_runs",
        "Runs executing in this process (at most server.max_active_runs; the rest wait in the database as queued runs).",
        [(Vec::new(), engine.active_runs() as i64)],
    );
    exposition.gauge(
        "haloflow_paced_runs",
        "Runs waiting without their execution slot, lent to other runs while they wait out an API's pacing (at most server.max_paced_runs).",
        [(Vec::new(), engine.paced_runs() as i64)],
    );
    if let Some(queue) = engine.storage().write_queue() {
        exposition.gauge(
            "haloflow_storage_write_queue",
            "Writes waiting for the database writer; at three quarters of its capacity trigger requests are answered 503 with Retry-After.",
            [(Vec::new(), queue.waiting as i64)],
        );
    }
    let Some(stats) = engine.storage().write_stats() else {
        return;
    };
    exposition.counter(
        "haloflow_storage_writes",
        "Database writes since start.",
        [(Vec::new(), stats.writes)],
    );
    exposition.counter(
        "haloflow_storage_commits",
        "Database transactions the writes were committed in (group commit), since start.",
        [(Vec::new(), stats.commits)],
    );
}

pub(super) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> Response {
    let hint = if uri.path().starts_with("/triggers/") {
        "trigger URLs take POST with a JSON body; set the webhook's method to POST"
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
