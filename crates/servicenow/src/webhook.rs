//! `POST /servicenow/{customers|suppliers}/{id}/webhook`: ServiceNow's webhook into haloflow.
//! Authenticated per connection (a shared secret header or Basic, optionally an HMAC-SHA256 of
//! the raw body, compared in constant time); the body only names the record. Then the path of
//! a trigger request: the request is stored durably with one run of the connection's sync-back
//! flow (`servicenow:customers/12`, one `servicenow.sync_record` step), answered 202 with the
//! run's id, and the run reads the record again and syncs it through the engine (retries,
//! history, replay, crash recovery). A body that is a `sys_journal_field` row (Halo's own
//! ServiceNow design posts one per note: `element_id`, `name`, `element`, `value`,
//! `sys_created_on`, `sys_created_by`) names its record by `name` and `element_id`, and its
//! note is synced as it is: no `audit_viewer` role needed to read it.

use axum::Json;
use axum::body::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::notes::JournalEntry;
use crate::sync::NamedRecord;
use crate::sync_step::{check_name, flow_id};
use crate::{ServiceNowConnections, Side, WebhookConfig};
use haloflow_core::engine::{AcceptError, Engine};
use haloflow_core::secrets::SecretStore;
use haloflow_core::server::{
    ApiError, ErrorCode, Rejected, Rejections, UNKNOWN, accepted_answer, overloaded,
};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

pub(crate) async fn receive(
    State(engine): State<Engine>,
    Extension(rejections): Extension<Arc<Rejections>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path((side, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(side) = Side::parse(&side) else {
        return ApiError::new(
            ErrorCode::NotFound,
            format!("`{side}`: the URL is /servicenow/customers/<client id>/webhook or /servicenow/suppliers/<supplier id>/webhook"),
        )
        .into_response();
    };
    let mut reject = Reject {
        engine: &engine,
        rejections: &rejections,
        flow: UNKNOWN.to_owned(),
        peer: peer.map(|Extension(ConnectInfo(addr))| addr),
        bytes: body.len(),
    };
    let connection = engine
        .connections()
        .servicenow(side, &id)
        .and_then(|sn| sn.config.webhook.clone().map(|webhook| (sn, webhook)));
    // An unknown id answers exactly as a known one with wrong credentials, after a comparison
    // of the same cost, so the answers do not tell which customers and suppliers exist.
    let Some((sn, webhook)) = connection else {
        authenticate_nobody(&headers, &body);
        let detail = format!(
            "no ServiceNow connection {}/{:?} with [webhook] settings",
            side.as_str(),
            id.chars().take(40).collect::<String>()
        );
        return reject.refuse(not_accepted(), &detail).await;
    };
    reject.flow = flow_id(&sn);
    if let Err(message) = authenticate(&webhook, &headers, &body, engine.secrets()) {
        return reject.refuse(not_accepted(), &message).await;
    }
    let payload = match parse_payload(&body) {
        Ok(payload) => payload,
        Err(error) => return reject.refuse_with(error).await,
    };
    let named = match named_record(&webhook, &payload) {
        Ok(named) => named,
        Err(message) => {
            return reject
                .refuse_with(ApiError::new(ErrorCode::InvalidPayload, message))
                .await;
        }
    };
    accept(&engine, &reject.flow, &body, &named).await
}

/// Stores the webhook with one run of its connection's sync-back flow, durably, and answers
/// as a trigger request is answered: 202 with the request's and the run's ids.
async fn accept(engine: &Engine, flow_id: &str, body: &[u8], named: &NamedRecord) -> Response {
    let Some(flow) = engine.integration_flow(flow_id) else {
        tracing::error!(%flow_id, "A ServiceNow connection has no sync-back flow; this is a bug.");
        return ApiError::new(ErrorCode::Internal, "the webhook could not be accepted")
            .into_response();
    };
    let text = String::from_utf8_lossy(body);
    match engine.accept_event(&flow, &text, named.to_event()).await {
        Ok(accepted) => {
            tracing::info!(%flow_id, request_id = %accepted.request_id, "Accepted a ServiceNow webhook.");
            let answer = accepted_answer(&accepted);
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
        Err(AcceptError::Overloaded(waiting)) => {
            tracing::warn!(%flow_id, waiting, "The database cannot keep up: a ServiceNow webhook was turned away with 503 and Retry-After; ServiceNow may send it again and the integrator catches up. Check the disk (or the database server) and the write load.");
            overloaded("webhook").into_response()
        }
        Err(e) => {
            tracing::error!(%flow_id, error = %e, "Could not store a ServiceNow webhook, which was answered 503; check the database (disk space, connection). The integrator catches the record up.");
            ApiError::new(
                ErrorCode::StorageUnavailable,
                "the webhook could not be stored and was not accepted; send it again",
            )
            .into_response()
        }
    }
}

fn parse_payload(body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ApiError::new(
            ErrorCode::InvalidPayload,
            "the body must be a JSON object naming the record",
        )),
        Err(e) => Err(ApiError::new(
            ErrorCode::InvalidJson,
            format!(
                "the body is not JSON: {e} (line {}, column {})",
                e.line(),
                e.column()
            ),
        )),
    }
}

/// The one answer to an unknown connection and to wrong credentials.
fn not_accepted() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidAuth,
        "the webhook was not accepted: check its URL (/servicenow/customers|suppliers/<id>/webhook) and the credentials set in ServiceNow",
    )
}

/// Does the work of a failed [`authenticate`] against a made-up secret.
fn authenticate_nobody(headers: &HeaderMap, body: &[u8]) {
    const NOBODY: &[u8] = b"haloflow-no-such-connection-0000";
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .map_or(&b""[..], |v| v.as_bytes());
    let _ = std::hint::black_box(given.ct_eq(NOBODY));
    if let Ok(mut mac) = HmacSha256::new_from_slice(NOBODY) {
        mac.update(body);
        let _ = std::hint::black_box(mac.verify_slice(NOBODY));
    }
}

/// Answers a 4xx, counting it, and logging and storing its summary within the budget.
struct Reject<'a> {
    engine: &'a Engine,
    rejections: &'a Rejections,
    flow: String,
    peer: Option<SocketAddr>,
    bytes: usize,
}

impl Reject<'_> {
    /// `detail` is logged, never sent.
    async fn refuse(&mut self, error: ApiError, detail: &str) -> Response {
        let rejected = Rejected {
            flow: &self.flow,
            error: &error,
            detail,
            peer: self.peer,
            bytes: self.bytes,
            store: true,
        };
        self.rejections.record(self.engine, rejected).await;
        error.into_response()
    }

    async fn refuse_with(&mut self, error: ApiError) -> Response {
        let detail = error.message.clone();
        self.refuse(error, &detail).await
    }
}

/// The record a body names: `table` and `sys_id` or `number` (the settings' field names), or
/// for a journal row `name` and `element_id`, and the note a journal row carries. The values
/// go into an encoded query: anything but the characters ServiceNow names have is refused.
fn named_record(webhook: &WebhookConfig, payload: &Value) -> Result<NamedRecord, String> {
    let field = |name: &str| {
        payload
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let journal_row = payload.get("element_id").is_some() && payload.get("element").is_some();
    let (table_name, sys_id_name) = if journal_row {
        ("name", "element_id")
    } else {
        (webhook.table_field.as_str(), webhook.sys_id_field.as_str())
    };
    let (table, sys_id, number) = (
        field(table_name),
        field(sys_id_name),
        field(&webhook.number_field),
    );
    for (name, value, hex) in [
        (table_name, table, false),
        (sys_id_name, sys_id, true),
        (webhook.number_field.as_str(), number, false),
    ] {
        if let Some(value) = value {
            check_name(name, value, hex)?;
        }
    }
    if !(table.is_some() && sys_id.is_some()) && number.is_none() {
        return Err(format!(
            "the body names no record: send `{table_name}` and `{sys_id_name}`, or `{}`",
            webhook.number_field
        ));
    }
    Ok(NamedRecord {
        table: table.map(str::to_owned),
        sys_id: sys_id.map(str::to_owned),
        number: number.map(str::to_owned),
        note: journal_row
            .then(|| JournalEntry::from_row(payload))
            .flatten(),
    })
}

/// Checks the shared secret (header or Basic) and the HMAC, in constant time.
fn authenticate(
    webhook: &WebhookConfig,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &SecretStore,
) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    check_shared_secret(webhook, header, secrets)?;
    check_signature(webhook, header(&webhook.hmac_header), body, secrets)
}

/// The shared secret, in a header or as the password of Basic credentials, checked as a
/// trigger's is.
fn check_shared_secret<'a>(
    webhook: &WebhookConfig,
    header: impl Fn(&str) -> Option<&'a str>,
    secrets: &SecretStore,
) -> Result<(), String> {
    let Some(name) = &webhook.secret_name else {
        return Ok(());
    };
    let secret = secrets
        .get(name)
        .ok_or_else(|| format!("the webhook secret `{name}` is not set on this server"))?;
    let (authenticator, refusal) = match &webhook.basic_username {
        Some(user) => (
            haloflow_core::trigger::TriggerAuthenticator::Basic {
                username: user.clone(),
                password: secret,
            },
            "wrong or missing Basic credentials".to_owned(),
        ),
        None => (
            haloflow_core::trigger::TriggerAuthenticator::Header {
                header: webhook.header.clone(),
                key: secret,
            },
            format!("wrong or missing `{}` header", webhook.header),
        ),
    };
    authenticator.check(None, header).map_err(|_| refusal)
}

/// The HMAC-SHA256 of the body, base64 in `hmac_header` (`signature`), when an HMAC secret is
/// set.
fn check_signature(
    webhook: &WebhookConfig,
    signature: Option<&str>,
    body: &[u8],
    secrets: &SecretStore,
) -> Result<(), String> {
    let Some(name) = &webhook.hmac_secret_name else {
        return Ok(());
    };
    let key = secrets
        .get(name)
        .ok_or_else(|| format!("the webhook HMAC secret `{name}` is not set on this server"))?;
    let signature = signature
        .and_then(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s.trim())
                .ok()
        })
        .ok_or_else(|| {
            format!(
                "missing or malformed `{}` header (base64 HMAC-SHA256 of the body)",
                webhook.hmac_header
            )
        })?;
    let mut mac = HmacSha256::new_from_slice(key.expose().as_bytes())
        .map_err(|_| "the HMAC key is not usable".to_owned())?;
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| {
        format!(
            "the `{}` signature does not match the body",
            webhook.hmac_header
        )
    })
}
