//! `POST /triggers/{flow_id}`: authenticate, check, store durably, answer 202 at once.

use axum::Json;
use axum::body::Body;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, ErrorCode};
use super::rejections::{Rejected, Rejections, UNKNOWN};
use crate::engine::{AcceptError, Engine, LoadedFlow, TriggerCounters};
use crate::trigger::{TriggerAuthenticator, TriggerQuery};

#[allow(clippy::too_many_arguments)]
pub(super) async fn receive(
    State(engine): State<Engine>,
    Extension(rejections): Extension<Arc<Rejections>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    flow_id: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let query_bytes = uri.query().map_or(0, str::len);
    let mut rejected = Rejection {
        engine: &engine,
        rejections: &rejections,
        peer,
        bytes: query_bytes + declared.unwrap_or(0),
    };
    let flow = match find_flow(&engine, flow_id) {
        Ok(flow) => flow,
        Err(shown) => return rejected.unknown_flow(&shown).await,
    };
    if let Err(error) = authenticate(&flow, &uri, &headers) {
        return rejected.reject(&flow, error).await;
    }
    // Over the trigger's rate limit: 429, counted but not stored, so a flood costs no writes.
    if let Err(error) = rate_limit(&flow) {
        return error.into_response();
    }
    let limit = engine.server_config().max_body_bytes;
    let bytes = match read_body(&headers, declared, body, limit).await {
        Ok(bytes) => bytes,
        Err(error) => return rejected.reject(&flow, error).await,
    };
    rejected.bytes = query_bytes + bytes.len();
    let (text, value) = match parse_json(&bytes) {
        Ok(parsed) => parsed,
        Err(error) => return rejected.reject(&flow, error).await,
    };
    let query = scrubbed_query(&engine, &flow, &uri);
    let result = engine.accept(&flow, &query, text, value).await;
    respond(result, &flow, &mut rejected).await
}

/// The flow the path names, or what to say about the id when there is none.
fn find_flow(
    engine: &Engine,
    flow_id: Result<Path<String>, PathRejection>,
) -> Result<Arc<LoadedFlow>, String> {
    match flow_id {
        Ok(Path(id)) => engine
            .flow(&id)
            .ok_or_else(|| format!("no flow with id `{id}`")),
        Err(_) => Err("the flow id is not valid UTF-8 once decoded".to_owned()),
    }
}

/// The trigger URL's query as stored: the URL key and any secret's value scrubbed.
fn scrubbed_query(engine: &Engine, flow: &LoadedFlow, uri: &Uri) -> TriggerQuery {
    let secrets = secret_values(engine);
    TriggerQuery::parse_scrubbed(
        uri.query(),
        flow.auth.secret_param(),
        &secrets.iter().map(|s| s.expose()).collect::<Vec<_>>(),
    )
}

fn authenticate(flow: &LoadedFlow, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiError> {
    let key_param = flow
        .auth
        .secret_param()
        .and_then(|p| query_value(uri.query(), p));
    let header_value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    flow.auth
        .check(key_param.as_deref(), header_value)
        .map_err(|failure| {
            let mut error = ApiError::new(ErrorCode::InvalidAuth, failure.0);
            if matches!(flow.auth, TriggerAuthenticator::Basic { .. }) {
                error.www_authenticate = Some("Basic realm=\"haloflow\"");
            }
            error
        })
}

pub(super) fn rate_limit(flow: &LoadedFlow) -> Result<(), ApiError> {
    flow.check_rate_limit().map_err(|wait| {
        TriggerCounters::count(&flow.counters.rate_limited);
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut error = ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "this trigger's rate limit is exceeded; retry in {seconds} s (trigger.rate_limit in the flow)"
            ),
        );
        error.retry_after = Some(seconds.max(1));
        error
    })
}

/// The body, once its content type says JSON and it fits in `limit` bytes.
async fn read_body(
    headers: &HeaderMap,
    declared: Option<usize>,
    body: Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
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
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("content type {shown} is not JSON; send the body as application/json"),
        ));
    }
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than the limit of {limit} bytes (server.max_body_bytes)"),
        )
    };
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    // to_bytes fails for an over-long body or a broken connection.
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_length_limit(&e) {
            too_large()
        } else {
            ApiError::new(
                ErrorCode::InvalidPayload,
                "the body could not be read completely",
            )
        }
    })
}

fn parse_json(bytes: &[u8]) -> Result<(&str, serde_json::Value), ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!(
                "the body is not UTF-8 text (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    let value = serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!(
                "the body is not valid JSON: {} at line {}, column {}",
                json_error_kind(&e),
                e.line(),
                e.column()
            ),
        )
    })?;
    Ok((text, value))
}

/// The answer to what `Engine::accept` did.
async fn respond(
    result: Result<crate::engine::Accepted, AcceptError>,
    flow: &LoadedFlow,
    rejected: &mut Rejection<'_>,
) -> Response {
    let flow_id = flow.flow.id();
    match result {
        Ok(accepted) => {
            tracing::info!(flow_id = %accepted.flow_id, request_id = %accepted.request_id, runs = accepted.run_ids.len(), suppressed = accepted.suppressed.len(), "Accepted a trigger request.");
            // 202 for suppressed requests too, so the sender does not send them again.
            // A delivery sent before started no run: 200 names the first request.
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
            let error = ApiError::new(ErrorCode::InvalidPayload, problem.message());
            rejected.reject(flow, error).await
        }
        Err(error) => accept_error(error, flow_id).into_response(),
    }
}

/// What a trigger request that could not be accepted is answered (the payload's problems are
/// the caller's to report).
pub(super) fn accept_error(error: AcceptError, flow_id: &str) -> ApiError {
    match error {
        AcceptError::Payload(problem) => {
            ApiError::new(ErrorCode::InvalidPayload, problem.message())
        }
        AcceptError::UnknownFlow(id) => {
            ApiError::new(ErrorCode::UnknownFlow, format!("no flow with id `{id}`"))
        }
        AcceptError::Overloaded(waiting) => {
            tracing::warn!(flow_id = %flow_id, waiting, "The database cannot keep up: a trigger request was turned away with 503 and Retry-After. Check the disk (or the database server) and the write load.");
            overloaded("request")
        }
        AcceptError::Storage(e) => {
            tracing::error!(flow_id = %flow_id, error = %e, "Could not store a trigger request, which was answered 503 (a sender that does not retry on its own, Halo among them, must send it again by hand); check the database (disk space, connection).");
            ApiError::new(
                ErrorCode::StorageUnavailable,
                "the request could not be stored and was not accepted; send it again",
            )
        }
    }
}

/// The 503 answer for a request (or webhook: `what`) refused because the database's write
/// queue is too full; nothing was stored.
pub fn overloaded(what: &str) -> ApiError {
    let mut error = ApiError::new(
        ErrorCode::Overloaded,
        format!(
            "the database cannot keep up at the moment; the {what} was not stored, send it again after Retry-After"
        ),
    );
    error.retry_after = Some(1);
    error
}

/// The 202 body: request and run ids; for a suppressed request, the request it is listed under
/// and how many are suppressed there. A ServiceNow webhook is answered with it too.
pub fn answer(accepted: &crate::engine::Accepted) -> serde_json::Value {
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

/// Answers a 4xx, counts it, and logs and stores its summary (within the budget).
struct Rejection<'a> {
    engine: &'a Engine,
    rejections: &'a Rejections,
    peer: Option<SocketAddr>,
    /// Query and body bytes, as declared until the body is read.
    bytes: usize,
}

impl Rejection<'_> {
    async fn reject(&mut self, flow: &LoadedFlow, error: ApiError) -> Response {
        TriggerCounters::count(&flow.counters.rejected);
        let rejected = Rejected {
            flow: flow.flow.id(),
            error: &error,
            detail: &error.message,
            peer: self.peer,
            bytes: self.bytes,
            store: true,
        };
        self.rejections.record(self.engine, rejected).await;
        error.into_response()
    }

    /// A flow that does not exist: counted and logged under `unknown`, never stored.
    async fn unknown_flow(&mut self, shown: &str) -> Response {
        let error = ApiError::new(
            ErrorCode::UnknownFlow,
            format!("{shown}; the trigger URL is /triggers/<flow id> of a loaded flow"),
        );
        let rejected = Rejected {
            flow: UNKNOWN,
            error: &error,
            detail: &error.message,
            peer: self.peer,
            bytes: self.bytes,
            store: false,
        };
        self.rejections.record(self.engine, rejected).await;
        error.into_response()
    }
}

/// Every secret value this server knows, so that none is stored even when it arrives in the
/// wrong query parameter: the configured ones and the flows' trigger keys.
fn secret_values(engine: &Engine) -> Vec<crate::secrets::Secret> {
    let mut values: Vec<_> = engine.secrets().known_values().cloned().collect();
    values.extend(engine.flows().iter().filter_map(|f| f.auth.secret()));
    values
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
