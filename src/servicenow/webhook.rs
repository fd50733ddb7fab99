//! `POST /servicenow/{customers|suppliers}/{id}/webhook`: ServiceNow's webhook into haloflow.
//! Authenticated per connection (a shared secret header or Basic, optionally an HMAC-SHA256 of
//! the raw body, compared in constant time); the body only names the record, which is read
//! again before anything is done; the request and what it led to are stored like a trigger
//! request. A body that is a `sys_journal_field` row (Halo's own ServiceNow design posts one
//! per note: `element_id`, `name`, `element`, `value`, `sys_created_on`, `sys_created_by`)
//! names its record by `name` and `element_id`, and its note is synced as it is: no
//! `audit_viewer` role needed to read it.

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
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::engine::{Engine, new_id};
use crate::secrets::SecretStore;
use crate::server::{ApiError, ErrorCode, Rejected, Rejections, UNKNOWN};
use crate::servicenow::notes::JournalEntry;
use crate::servicenow::{
    ServiceNowConnection, ServiceNowConnections, ServiceNowEngine, Side, WebhookConfig,
};
use crate::storage::{NewRequest, now_ms};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

pub(crate) async fn receive(
    State(engine): State<Engine>,
    Extension(rejections): Extension<Arc<Rejections>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path((side, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let side = match side.as_str() {
        "customers" => Side::Customer,
        "suppliers" => Side::Supplier,
        other => {
            return ApiError::new(
                ErrorCode::NotFound,
                format!("`{other}`: the URL is /servicenow/customers/<client id>/webhook or /servicenow/suppliers/<supplier id>/webhook"),
            )
            .into_response();
        }
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
    reject.flow = format!("servicenow:{}", sn.key());
    let flow_id = reject.flow.clone();
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
    let (status, outcome) = process(&engine, &sn, named).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    let request_id = store(&engine, flow_id, text, status, &outcome).await;
    let mut answer = outcome;
    answer["request_id"] = json!(request_id);
    (status, Json(answer)).into_response()
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

/// Records an authenticated webhook and what it led to; the request's id.
async fn store(
    engine: &Engine,
    flow_id: String,
    text: String,
    status: StatusCode,
    outcome: &Value,
) -> String {
    let request = NewRequest {
        id: new_id(),
        flow_id,
        received_at_ms: now_ms(),
        http_status: status.as_u16(),
        error: (!status.is_success()).then(|| {
            (
                "sync_failed".to_owned(),
                outcome["error"].as_str().unwrap_or_default().to_owned(),
            )
        }),
        query: None,
        body: Some(text),
        event_count: 1,
        outcome: Some(outcome.clone()),
    };
    let stored = if status.is_success() {
        engine.storage().accept_request(&request, &[], &[]).await
    } else {
        engine.storage().record_rejected(&request).await
    };
    if let Err(e) = stored {
        tracing::error!(error = %e, "Could not store a ServiceNow webhook; check the database (disk space, connection). The integrator catches the record up.");
    }
    request.id
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

/// What a webhook body names: its record, and the note it carried.
struct Named<'a> {
    table: Option<&'a str>,
    sys_id: Option<&'a str>,
    number: Option<&'a str>,
    note: Option<JournalEntry>,
}

/// The record a body names: `table` and `sys_id` or `number` (the settings' field names), or
/// for a journal row `name` and `element_id`. The values go into an encoded query: anything
/// but the characters ServiceNow names have is refused.
fn named_record<'a>(webhook: &'a WebhookConfig, payload: &'a Value) -> Result<Named<'a>, String> {
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
    let named = Named {
        table: field(table_name),
        sys_id: field(sys_id_name),
        number: field(&webhook.number_field),
        note: journal_row
            .then(|| JournalEntry::from_row(payload))
            .flatten(),
    };
    let plain = |v: &str, hex: bool| {
        !v.is_empty()
            && v.len() <= 100
            && v.chars().all(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_alphanumeric() || c == '_' || c == '-'
                }
            })
    };
    for (name, value, hex) in [
        (table_name, named.table, false),
        (sys_id_name, named.sys_id, true),
        (webhook.number_field.as_str(), named.number, false),
    ] {
        if let Some(value) = value
            && !plain(value, hex)
        {
            return Err(format!(
                "`{name}`: `{}` is not a ServiceNow {}",
                value.chars().take(40).collect::<String>(),
                if hex {
                    "sys_id (32 hex digits)"
                } else {
                    "name (letters, digits, _ and -)"
                }
            ));
        }
    }
    if !(named.table.is_some() && named.sys_id.is_some()) && named.number.is_none() {
        return Err(format!(
            "the body names no record: send `{table_name}` and `{sys_id_name}`, or `{}`",
            webhook.number_field
        ));
    }
    Ok(named)
}

/// Reads the named record again and syncs it, with the note the webhook carried; the status
/// and the outcome (or the error) as JSON.
async fn process(
    engine: &Engine,
    sn: &ServiceNowConnection,
    named: Named<'_>,
) -> (StatusCode, Value) {
    let Named {
        table,
        sys_id,
        number,
        note,
    } = named;
    let sync = engine.sync_back();
    let record = match sync.read_record(sn, table, sys_id, number).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return (
                StatusCode::OK,
                json!({"action": "ignored", "reason": "the record was not found (deleted, or hidden from the integration user)"}),
            );
        }
        Err(e) => return failed(e),
    };
    let given: Vec<JournalEntry> = note.into_iter().collect();
    match sync
        .sync_record_with_notes(sn, &record.0, &record.1, &given)
        .await
    {
        Ok(outcome) => (
            StatusCode::OK,
            serde_json::to_value(outcome).unwrap_or(Value::Null),
        ),
        Err(e) => failed(e),
    }
}

/// A failure to act: 502 so ServiceNow may send it again; the integrator catches up otherwise.
fn failed(e: crate::step::StepError) -> (StatusCode, Value) {
    tracing::warn!(error = %e, "A ServiceNow webhook could not be synced; ServiceNow may send it again and the integrator catches up. Check the connection if this repeats.");
    (
        StatusCode::BAD_GATEWAY,
        json!({"error": format!("the webhook could not be synced: {e}; it can be sent again, and the integrator catches up")}),
    )
}

/// Checks the shared secret (header or Basic) and the HMAC, in constant time.
fn authenticate(
    webhook: &WebhookConfig,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &SecretStore,
) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(name) = &webhook.secret_name {
        let expected = secrets
            .get(name)
            .ok_or_else(|| format!("the webhook secret `{name}` is not set on this server"))?;
        let given = match &webhook.basic_username {
            Some(user) => header("authorization")
                .and_then(crate::trigger::basic_credentials)
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|pair| {
                    pair.split_once(':')
                        .filter(|(u, _)| u == user)
                        .map(|(_, p)| p.to_owned())
                }),
            None => header(&webhook.header).map(str::to_owned),
        };
        let ok =
            given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(expected.expose().as_bytes())));
        if !ok {
            return Err(match &webhook.basic_username {
                Some(_) => "wrong or missing Basic credentials".to_owned(),
                None => format!("wrong or missing `{}` header", webhook.header),
            });
        }
    }
    if let Some(name) = &webhook.hmac_secret_name {
        let key = secrets
            .get(name)
            .ok_or_else(|| format!("the webhook HMAC secret `{name}` is not set on this server"))?;
        let signature = header(&webhook.hmac_header)
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
        })?;
    }
    Ok(())
}
