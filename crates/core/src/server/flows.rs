//! `/api/flows`: the loaded flows as the console draws them (trigger, steps with their
//! branches, runs of the last 24 hours), reloading them, and each flow's trigger setup.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::api::internal;
use crate::engine::Engine;
use crate::flow::{StepDef, TriggerAuth, ValidatedFlow};
use crate::storage::RunStatus;
use crate::trigger::trigger_url;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// `GET /api/flows`.
pub(super) async fn flows(State(engine): State<Engine>) -> Response {
    let since = crate::storage::now_ms() - DAY_MS;
    let counts = match engine.storage().run_counts(Some(since)).await {
        Ok(counts) => counts,
        Err(e) => return internal(e).into_response(),
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
    json!({"type": trigger.kind, "url": url, "auth": auth, "recipients_separator": separator})
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
