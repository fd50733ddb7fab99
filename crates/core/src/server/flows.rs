//! `/api/flows`: the loaded flows as the console draws them (trigger, steps with their
//! branches, runs of the last 24 hours), reloading them, and each flow's trigger setup.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{ApiError, ErrorCode, Valid};
use super::trigger::{accept_error, rate_limit};
use crate::engine::Engine;
use crate::flow::{StepDef, TriggerAuth, ValidatedFlow};
use crate::flow::{trigger_url, with_recipients};
use crate::storage::RunStatus;
use crate::trigger::TriggerQuery;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// `GET /api/flows`.
pub(super) async fn flows(State(engine): State<Engine>) -> Response {
    let since = crate::storage::now_ms() - DAY_MS;
    let counts = match engine.storage().run_counts(Some(since)).await {
        Ok(counts) => counts,
        Err(e) => return ApiError::storage_read(e).into_response(),
    };
    let mut recent: HashMap<&str, Value> = HashMap::new();
    for count in &counts {
        let entry = recent.entry(count.flow_id.as_str()).or_insert_with(no_runs);
        entry[count.status.as_str()] = json!(count.count);
    }
    let base = public_base(&engine);
    let flows: Vec<Value> = engine
        .flows()
        .iter()
        .map(|loaded| {
            let flow = &loaded.flow;
            let runs = recent.get(flow.id()).cloned().unwrap_or_else(no_runs);
            flow_json(&base, flow, runs)
        })
        .collect();
    Json(json!({"flows": flows, "reload": engine.last_reload()})).into_response()
}

/// `POST /api/flows/reload`: as SIGHUP does; answers how it went (200 either way: a rejected
/// version is a result, not an error of the call).
pub(super) async fn reload(State(engine): State<Engine>) -> Response {
    let _ = engine.reload();
    Json(engine.last_reload()).into_response()
}

fn no_runs() -> Value {
    let statuses = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
    ];
    Value::Object(
        statuses
            .iter()
            .map(|s| (s.as_str().to_owned(), json!(0)))
            .collect(),
    )
}

/// Where Halo reaches this server: `server.public_url`, else the public listener's address.
pub(super) fn public_base(engine: &Engine) -> String {
    let server = engine.server_config();
    server
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", server.listen))
}

fn flow_json(base: &str, flow: &ValidatedFlow, runs_24h: Value) -> Value {
    let document = &flow.document;
    json!({
        "id": flow.id(),
        "name": document.name,
        "description": document.description,
        "trigger_url": format!("/triggers/{}", flow.id()),
        "trigger": trigger_json(base, flow),
        "steps": document.steps.iter().map(step_json).collect::<Vec<_>>(),
        "runs_24h": runs_24h,
    })
}

/// The trigger: its type, URL (a URL key shown as `<SECRET_NAME>`, never its value), how it
/// authenticates, and how recipients are appended to the URL.
pub(super) fn trigger_json(base: &str, flow: &ValidatedFlow) -> Value {
    let trigger = &flow.document.trigger;
    let auth = match &trigger.auth {
        TriggerAuth::UrlKey { param, .. } => json!({"type": "url_key", "param": param}),
        TriggerAuth::Basic { username, .. } => json!({"type": "basic", "username": username}),
        TriggerAuth::Header { header, .. } => json!({"type": "header", "header": header}),
        TriggerAuth::None => json!({"type": "none"}),
    };
    let url = trigger_url(base, flow, None);
    let separator = if url.contains('?') { "&" } else { "?" };
    json!({"type": trigger.type_name, "url": url, "auth": auth, "recipients_separator": separator})
}

/// A step as the document nests it: a branching step lists its paths' steps under `paths`.
fn step_json(step: &StepDef) -> Value {
    let paths = (!step.paths.is_empty()).then(|| {
        step.paths
            .iter()
            .map(|(path, steps)| (path.clone(), steps.iter().map(step_json).collect()))
            .collect::<serde_json::Map<String, Value>>()
    });
    json!({
        "id": step.id,
        "name": step.name,
        "type": step.step_type,
        "connection": step.connection,
        "paths": paths,
    })
}

/// `GET /api/flows/{flow_id}/setup?recipients=a,b`: the trigger URL with its recipients, how
/// it authenticates, and what the trigger's integration says to set up at the sender.
pub(super) async fn setup(
    State(engine): State<Engine>,
    Valid(Path(flow_id)): Valid<Path<String>>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(loaded) = engine.flow(&flow_id) else {
        return unknown_flow(&flow_id).into_response();
    };
    let flow = &loaded.flow;
    let recipients = TriggerQuery::parse(query.as_deref(), None).recipients;
    let recipients: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let url = with_recipients(&trigger_url(&public_base(&engine), flow, None), &recipients);
    let auth = &flow.document.trigger.auth;
    let mut auth_json = trigger_json("", flow)["auth"].take();
    auth_json["secret_name"] = json!(auth.secret_name());
    let mut answer =
        json!({"flow": flow.id(), "trigger_url": url, "auth": auth_json, "webhooks": []});
    if let Some(Value::Object(more)) = engine.integrations().trigger_setup(flow, &url) {
        merge(&mut answer, more);
    }
    Json(answer).into_response()
}

/// `more`'s fields into `answer`; an object into an object field by field.
fn merge(answer: &mut Value, more: serde_json::Map<String, Value>) {
    for (key, value) in more {
        match (answer.get_mut(&key), value) {
            (Some(Value::Object(mine)), Value::Object(theirs)) => mine.extend(theirs),
            (_, value) => answer[key.as_str()] = value,
        }
    }
}

fn unknown_flow(flow_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownFlow,
        format!("no flow with id `{flow_id}` is loaded; GET /api/flows lists them"),
    )
}

/// `POST /api/flows/{flow_id}/test` with an optional `{"payload": {...}, "recipients": [...]}`:
/// a trigger request through the engine's accept, as if the sender had posted it (rate limit,
/// stored with `"test": true` among its query's params, flood control, runs); without a
/// payload the trigger's integration provides a sample.
pub(super) async fn test(
    State(engine): State<Engine>,
    Valid(Path(flow_id)): Valid<Path<String>>,
    Valid(body): Valid<axum::body::Bytes>,
) -> Response {
    let Some(loaded) = engine.flow(&flow_id) else {
        return unknown_flow(&flow_id).into_response();
    };
    // A test costs what a request from the sender costs: the trigger's rate limit applies.
    if let Err(error) = rate_limit(&loaded) {
        return error.into_response();
    }
    let (payload, recipients) = match test_request(&body) {
        Ok(parts) => parts,
        Err(error) => return error.into_response(),
    };
    let Some(payload) = payload.or_else(|| engine.integrations().sample_payload(&loaded.flow))
    else {
        return ApiError::new(
            ErrorCode::InvalidPayload,
            "this trigger has no sample payload; send {\"payload\": {...}}",
        )
        .into_response();
    };
    // Marked in the stored query, so the history shows the request was a test.
    let query = TriggerQuery {
        recipients,
        params: [("test".to_owned(), json!(true))].into_iter().collect(),
    };
    let text = payload.to_string();
    match engine.accept(&loaded, &query, &text, payload).await {
        Ok(accepted) => {
            let body = json!({"request_id": accepted.request_id, "run_ids": accepted.run_ids,
                "suppressed": accepted.suppressed.len(), "duplicates": accepted.duplicates.len()});
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(error) => accept_error(error, &flow_id).into_response(),
    }
}

/// The test request's payload (None: the sample) and recipients.
fn test_request(body: &[u8]) -> Result<(Option<Value>, Vec<String>), ApiError> {
    let shape = "send {\"payload\": {...}, \"recipients\": [\"name\", ...]}, both optional";
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((None, Vec::new()));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("body: not JSON ({e}); {shape}"),
        )
    })?;
    let bad = || ApiError::new(ErrorCode::InvalidPayload, format!("body: {shape}"));
    let object = value.as_object().ok_or_else(bad)?;
    if object.keys().any(|k| k != "payload" && k != "recipients") {
        return Err(bad());
    }
    let recipients = match object.get("recipients") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| n.as_str().map(str::to_owned).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    let payload = object.get("payload").filter(|p| !p.is_null()).cloned();
    Ok((payload, recipients))
}
