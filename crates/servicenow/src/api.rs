//! What the ServiceNow integration adds to the API (behind its guard) and to `/metrics`: the
//! integrators' last scans.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use haloflow_core::engine::{Engine, Exposition};
use haloflow_core::server::ApiError;

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
