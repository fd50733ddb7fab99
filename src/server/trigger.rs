//! `POST /triggers/{flow_id}`: authenticate, check, store durably, answer 202 at once.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorCode};
use crate::engine::{AcceptError, Engine, LoadedFlow, TriggerCounters, new_id};
use crate::storage::{NewRequest, now_ms};
use crate::trigger::{TriggerAuthenticator, TriggerQuery};

/// How much of a rejected body is kept for diagnosis.
const REJECTED_BODY_PREVIEW: usize = 4096;

pub(super) async fn receive(
    State(engine): State<Engine>,
    flow_id: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(Path(flow_id)) = flow_id else {
        return ApiError::new(
            ErrorCode::UnknownFlow,
            "the flow id in the trigger URL is not valid UTF-8 once decoded; use /triggers/<flow id>",
        )
        .into_response();
    };
    let Some(flow) = engine.flow(&flow_id) else {
        return ApiError::new(
            ErrorCode::UnknownFlow,
            format!("no flow with id `{flow_id}`; the trigger URL is /triggers/<flow id> of a loaded flow"),
        )
        .into_response();
    };
    let query = TriggerQuery::parse(uri.query(), flow.auth.secret_param());
    let mut rejection = Rejection {
        engine: &engine,
        flow: &flow,
        query: &query,
    };

    let key_param = flow
        .auth
        .secret_param()
        .and_then(|p| query_value(uri.query(), p));
    let header_value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(failure) = flow.auth.check(key_param.as_deref(), header_value) {
        let mut error = ApiError::new(ErrorCode::InvalidAuth, failure.0);
        if matches!(flow.auth, TriggerAuthenticator::Basic { .. }) {
            error.www_authenticate = Some("Basic realm=\"haloflow\"");
        }
        return rejection.reject(error, None).await;
    }

    // Over the trigger's rate limit: 429, counted but not stored, so a flood costs no writes.
    if let Err(wait) = flow.check_rate_limit() {
        TriggerCounters::count(&flow.counters.rate_limited);
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut error = ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "this trigger's rate limit is exceeded; retry in {seconds} s (trigger.rate_limit in the flow)"
            ),
        );
        error.retry_after = Some(seconds.max(1));
        return error.into_response();
    }

    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_json(content_type) {
        let shown = if content_type.is_empty() {
            "none".to_owned()
        } else {
            format!("`{content_type}`")
        };
        return rejection
            .reject(
                ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("content type {shown} is not JSON; send the body as application/json"),
                ),
                None,
            )
            .await;
    }

    let limit = engine.server_config().max_body_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than the limit of {limit} bytes (server.max_body_bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return rejection.reject(too_large(), None).await;
    }
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(e) => {
            // to_bytes fails for an over-long body or a broken connection.
            let error = if is_length_limit(&e) {
                too_large()
            } else {
                ApiError::new(
                    ErrorCode::InvalidPayload,
                    "the body could not be read completely",
                )
            };
            return rejection.reject(error, None).await;
        }
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => {
            let error = ApiError::new(
                ErrorCode::InvalidJson,
                format!(
                    "the body is not UTF-8 text (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            );
            return rejection
                .reject(error, Some(&String::from_utf8_lossy(&bytes)))
                .await;
        }
    };
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            let error = ApiError::new(
                ErrorCode::InvalidJson,
                format!(
                    "the body is not valid JSON: {} at line {}, column {}",
                    json_error_kind(&e),
                    e.line(),
                    e.column()
                ),
            );
            return rejection.reject(error, Some(text)).await;
        }
    };

    match engine.accept(&flow, &query, text, value).await {
        Ok(accepted) => {
            tracing::info!(flow_id = %accepted.flow_id, request_id = %accepted.request_id, runs = accepted.run_ids.len(), suppressed = accepted.suppressed.len(), "Accepted a trigger request.");
            // 202 for suppressed requests too, so Halo does not send them again.
            // A delivery Halo sent before started no run: 200 names the first request.
            let status = if accepted.run_ids.is_empty()
                && accepted.suppressed.is_empty()
                && !accepted.duplicates.is_empty()
            {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            (status, Json(answer(&accepted))).into_response()
        }
        Err(AcceptError::Payload(problem)) => {
            rejection
                .reject(
                    ApiError::new(ErrorCode::InvalidPayload, problem.message()),
                    Some(text),
                )
                .await
        }
        Err(AcceptError::UnknownFlow(id)) => {
            ApiError::new(ErrorCode::UnknownFlow, format!("no flow with id `{id}`")).into_response()
        }
        Err(AcceptError::Overloaded(active)) => {
            tracing::warn!(flow_id = %flow_id, active, "Overloaded: a trigger request was turned away.");
            let mut error = ApiError::new(
                ErrorCode::Overloaded,
                "this server is running as many flows as it takes at once (server.max_active_runs); the request was not accepted, send it again",
            );
            error.retry_after = Some(1);
            error.into_response()
        }
        Err(AcceptError::Storage(e)) => {
            tracing::error!(flow_id = %flow_id, error = %e, "Could not store a trigger request.");
            ApiError::new(
                ErrorCode::StorageUnavailable,
                "the request could not be stored and was not accepted; send it again",
            )
            .into_response()
        }
    }
}

/// The 202 body: request and run ids; for a suppressed request, the request it is listed under
/// and how many are suppressed there.
fn answer(accepted: &crate::engine::Accepted) -> serde_json::Value {
    let mut body = serde_json::json!({
        "request_id": accepted.request_id,
        "flow_id": accepted.flow_id,
        "run_ids": accepted.run_ids,
        "suppressed": accepted.run_ids.is_empty() && !accepted.suppressed.is_empty(),
    });
    match accepted.suppressed.as_slice() {
        [] => {}
        [only] if accepted.run_ids.is_empty() => {
            body["parent_request_id"] = only.parent_request_id.clone().into();
            body["suppressed_count"] = only.suppressed_count.into();
        }
        events => {
            body["suppressed_events"] = serde_json::to_value(events).expect("events serialize")
        }
    }
    match accepted.duplicates.as_slice() {
        [] => {}
        [only] if accepted.run_ids.is_empty() && accepted.suppressed.is_empty() => {
            body["duplicate"] = true.into();
            body["first_request_id"] = only.first_request_id.clone().into();
            body["delivery_id"] = only.delivery_id.clone().into();
        }
        events => {
            body["duplicate"] =
                (accepted.run_ids.is_empty() && accepted.suppressed.is_empty()).into();
            body["duplicate_events"] = serde_json::to_value(events).expect("events serialize")
        }
    }
    body
}

/// Answers a 4xx and records it with the request.
struct Rejection<'a> {
    engine: &'a Engine,
    flow: &'a LoadedFlow,
    query: &'a TriggerQuery,
}

impl Rejection<'_> {
    async fn reject(&mut self, error: ApiError, body: Option<&str>) -> Response {
        tracing::info!(flow_id = %self.flow.flow.id(), code = error.code.as_str(), "Rejected a trigger request.");
        TriggerCounters::count(&self.flow.counters.rejected);
        self.engine
            .record_rejected(NewRequest {
                id: new_id(),
                flow_id: self.flow.flow.id().to_owned(),
                received_at_ms: now_ms(),
                http_status: error.code.status().as_u16(),
                error: Some((error.code.as_str().to_owned(), error.message.clone())),
                query: Some(self.query.to_json()),
                body: body.map(|b| preview(b).to_owned()),
                event_count: 0,
                outcome: None,
            })
            .await;
        error.into_response()
    }
}

fn preview(text: &str) -> &str {
    if text.len() <= REJECTED_BODY_PREVIEW {
        return text;
    }
    let mut end = REJECTED_BODY_PREVIEW;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// True when reading stopped at the size limit (http-body-util's LengthLimitError).
fn is_length_limit(error: &axum::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.to_string().contains("length limit exceeded") {
            return true;
        }
        current = e.source();
    }
    false
}

/// `application/json` or any `+json` type, parameters ignored.
pub(super) fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The decoded value of query parameter `name`.
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (decode(k) == name).then(|| decode(v))
    })
}

fn json_error_kind(e: &serde_json::Error) -> String {
    // serde_json's text ends with " at line L column C"; the position is added by the caller.
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}
