//! What the ServiceNow integration adds to the API (behind its guard) and to `/metrics`: the
//! integrators' last scans, and the links between tickets and records.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use haloflow_core::engine::{Engine, Exposition};
use haloflow_core::server::{ApiError, ErrorCode, limit_param};
use haloflow_core::storage::{LinkCursor, LinkFilter};

/// `GET /api/servicenow/links?remote=&ticket=&limit=&before=`: links newest first, a page at a
/// time (`{"links": [...], "next_cursor": "..." | null}`).
pub(crate) async fn links(
    State(engine): State<Engine>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let filter = match link_filter(&params) {
        Ok(filter) => filter,
        Err(error) => return error.into_response(),
    };
    match engine.storage().list_links(&filter).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => ApiError::storage_read(e).into_response(),
    }
}

/// The listing's filter from its query parameters; a parameter that does not parse is the
/// request's fault (400), named with the fix.
fn link_filter(params: &HashMap<String, String>) -> Result<LinkFilter, ApiError> {
    let invalid = |message: String| ApiError::new(ErrorCode::InvalidQuery, message);
    let ticket_id = (params.get("ticket"))
        .map(|text| {
            (text.parse::<i64>()).map_err(|_| {
                invalid(format!(
                    "ticket: `{text}` is not a ticket id (a whole number)"
                ))
            })
        })
        .transpose()?;
    let before = (params.get("before"))
        .map(|text| {
            LinkCursor::parse(text).ok_or_else(|| {
                invalid(format!(
                    "before: `{text}` is not a cursor; pass the next_cursor of the page before as it was given"
                ))
            })
        })
        .transpose()?;
    Ok(LinkFilter {
        remote: params.get("remote").cloned(),
        ticket_id,
        limit: Some(limit_param(params)?),
        before,
    })
}

/// `GET /api/integrator`: the last scan of each ServiceNow instance.
pub(crate) async fn integrator(State(engine): State<Engine>) -> Response {
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
        Err(e) => ApiError::storage_read(e).into_response(),
    }
}

/// When each ServiceNow instance's last integrator scan finished, and what it read (both
/// families empty when the database does not answer).
pub(crate) async fn expose_scans(engine: &Engine, exposition: &mut Exposition) {
    let scans = engine.storage().scans().await.unwrap_or_default();
    exposition.float_gauge(
        "haloflow_integrator_last_scan_timestamp_seconds",
        "When each ServiceNow instance's last integrator scan finished (unix seconds).",
        (scans.iter()).map(|(connection, _, finished, _)| {
            (
                Exposition::labels([("connection", connection)]),
                *finished as f64 / 1000.0,
            )
        }),
    );
    let mut samples = Vec::new();
    for (connection, _, _, result) in &scans {
        for (kind, value) in scan_counts(result) {
            let labels = [("connection", connection.as_str()), ("kind", kind)];
            samples.push((Exposition::labels(labels), value as i64));
        }
    }
    exposition.gauge(
        "haloflow_integrator_last_scan_records",
        "Records the last integrator scan of each instance read, and its errors.",
        samples,
    );
}

/// A scan result's counts by kind, and its errors.
fn scan_counts(result: &Value) -> [(&'static str, u64); 5] {
    let count = |name: &str| result[name].as_u64().unwrap_or(0);
    [
        ("records", count("records")),
        ("created", count("created")),
        ("updated", count("updated")),
        ("notes", count("notes")),
        (
            "errors",
            result["errors"].as_array().map_or(0, Vec::len) as u64,
        ),
    ]
}
