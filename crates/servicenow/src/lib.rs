//! A customer's or supplier's ServiceNow instance reached through the Table and Attachment APIs
//! (`../shared/reference/servicenow-api.md`): Basic or OAuth client credentials (token cached by
//! `expires_in`, refreshed once on 401), the `{"result": ...}` envelope and its error shape.

mod api;
mod callers;
pub mod config;
mod integration;
pub mod integrator;
pub mod mapping;
pub mod notes;
pub mod steps;
pub mod sync;
pub mod webhook;

pub use config::{
    JournalSource, ServiceNowAuthKind, ServiceNowConfig, ServiceNowConnectionConfig, WebhookConfig,
};
pub use integration::{CUSTOMERS, SUPPLIERS, ServiceNow, ServiceNowConnections, ServiceNowEngine};
pub mod sync_step;

use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use serde_json::Value;

use haloflow_core::outbound::{
    Field, Outbound, OutboundBody, OutboundRequest, OutboundResponse, TransportError,
    encode_component,
};
use haloflow_core::secrets::Secret;
use haloflow_core::step::StepError;

/// The seed: "a minimum of 1800 seconds should be set for the Access Token Lifespan".
pub const MIN_TOKEN_LIFESPAN_SECS: u64 = 1800;

/// FNV-1a: a short, stable digest for keys (no extra dependency).
pub fn digest(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Whose instance it is: the connection is picked by the ticket's client or supplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Customer,
    Supplier,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Customer => "customers",
            Side::Supplier => "suppliers",
        }
    }

    /// `customers` or `suppliers`, as in a connection's key and its webhook URL.
    pub fn parse(text: &str) -> Option<Side> {
        [Side::Customer, Side::Supplier]
            .into_iter()
            .find(|side| side.as_str() == text)
    }
}

#[derive(Debug)]
pub struct ServiceNowConnection {
    side: Side,
    /// The Halo client or supplier id the connection is keyed by.
    id: String,
    pub config: ServiceNowConnectionConfig,
    secret: Secret,
    /// The global `[servicenow]` settings this connection falls back to.
    global_sync_attachments: bool,
    note_marker: String,
    token: haloflow_core::outbound::TokenCache,
    /// The integration user's display name (`sys_user.name`), read once when needed.
    display_name: tokio::sync::OnceCell<Option<String>>,
    callers: callers::CallerCache,
}

/// What `haloflow connections check` reports for one connection.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// The token lifespan the instance granted (OAuth only).
    pub token_lifespan_secs: Option<u64>,
    /// The path sync back reads notes by (`journal`).
    pub notes: &'static str,
    pub warnings: Vec<String>,
}

impl ServiceNowConnection {
    pub fn new(
        side: Side,
        id: String,
        config: ServiceNowConnectionConfig,
        secret: Secret,
        global: &ServiceNowConfig,
    ) -> Self {
        ServiceNowConnection {
            side,
            id,
            secret,
            global_sync_attachments: global.sync_attachments,
            note_marker: global.note_marker.clone(),
            token: Default::default(),
            display_name: tokio::sync::OnceCell::new(),
            callers: callers::CallerCache::new(config.caller_cache_secs),
            config,
        }
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// The Halo client or supplier id this connection is keyed by.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The instance user haloflow writes as: `integration_user`, else the Basic username.
    pub fn integration_user(&self) -> Option<String> {
        self.config.integration_user.clone().or_else(|| {
            (self.config.auth == ServiceNowAuthKind::Basic)
                .then(|| self.config.username.clone())
                .flatten()
        })
    }

    /// Whether a journal entry's author is the integration user: its user name (journal
    /// rows) or its display name (display values show `sys_user.name`, §4.2).
    pub async fn is_integration_user(
        &self,
        http: &Outbound,
        author: &str,
    ) -> Result<bool, StepError> {
        let Some(user) = self.integration_user() else {
            return Ok(false);
        };
        if author == user {
            return Ok(true);
        }
        let name = self
            .display_name
            .get_or_try_init(|| async {
                let query = format!("user_name={user}");
                let found = self
                    .query(http, "sys_user", &query, Some("name"), 1)
                    .await?;
                Ok::<_, StepError>(
                    found
                        .first()
                        .and_then(|u| u.get("name"))
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned),
                )
            })
            .await?;
        Ok(name.as_deref() == Some(author))
    }

    /// `customers/12` or `suppliers/7`: how links name their instance.
    pub fn key(&self) -> String {
        format!("{}/{}", self.side.as_str(), self.id)
    }

    /// `[servicenow.customers."12"]`, for messages.
    pub fn config_table(&self) -> String {
        format!("[servicenow.{}.\"{}\"]", self.side.as_str(), self.id)
    }

    pub fn sync_attachments(&self) -> bool {
        self.config
            .sync_attachments
            .unwrap_or(self.global_sync_attachments)
    }

    pub fn note_marker(&self) -> &str {
        &self.note_marker
    }

    fn base(&self) -> &str {
        self.config.instance_url.trim_end_matches('/')
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.timeout_secs)
    }

    /// The sys_id of the active user with this email (trimmed, lower case, no `^`), if any:
    /// remembered for `caller_cache_secs`, so the tickets of one end user look it up once.
    pub async fn caller_for_email(
        &self,
        http: &Outbound,
        email: &str,
    ) -> Result<Option<String>, StepError> {
        if let Some(known) = self.callers.get(email) {
            return Ok(known);
        }
        let query = format!("active=true^email={email}");
        let users = self
            .query(http, "sys_user", &query, Some("sys_id,email"), 2)
            .await?;
        let caller = users
            .into_iter()
            .find_map(|u| u.get("sys_id").and_then(Value::as_str).map(str::to_owned));
        self.callers.put(email, caller.clone());
        Ok(caller)
    }

    /// `GET /api/now/table/{table}?sysparm_query=...` with raw values and plain sys_ids.
    pub async fn query(
        &self,
        http: &Outbound,
        table: &str,
        query: &str,
        fields: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Value>, StepError> {
        self.list(http, table, query, fields, limit, 0).await
    }

    /// One page of a query, from `offset` (all fields).
    pub async fn query_page(
        &self,
        http: &Outbound,
        table: &str,
        query: &str,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Value>, StepError> {
        self.list(http, table, query, None, limit, offset).await
    }

    async fn list(
        &self,
        http: &Outbound,
        table: &str,
        query: &str,
        fields: Option<&str>,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Value>, StepError> {
        let mut path = format!(
            "api/now/table/{}?sysparm_query={}&sysparm_limit={limit}&sysparm_offset={offset}&sysparm_exclude_reference_link=true",
            encode_component(table),
            encode_component(query)
        );
        if let Some(fields) = fields {
            path.push_str(&format!("&sysparm_fields={}", encode_component(fields)));
        }
        let answer = self.call(http, Method::GET, &path, None).await?;
        Ok(answer
            .get("result")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// `GET /api/now/table/{table}/{sys_id}?sysparm_display_value=all`: each field as
    /// `{display_value, value}` (§1.2); `None` when the record is missing or hidden (404).
    pub async fn display_values(
        &self,
        http: &Outbound,
        table: &str,
        sys_id: &str,
        fields: &str,
    ) -> Result<Option<Value>, StepError> {
        let path = format!(
            "api/now/table/{}/{}?sysparm_display_value=all&sysparm_exclude_reference_link=true&sysparm_fields={}",
            encode_component(table),
            encode_component(sys_id),
            encode_component(fields)
        );
        match self.call(http, Method::GET, &path, None).await {
            Ok(answer) => result(answer, "read").map(Some),
            Err(StepError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /api/now/table/{table}`: creates one record and returns it.
    pub async fn create(
        &self,
        http: &Outbound,
        table: &str,
        fields: Value,
    ) -> Result<Value, StepError> {
        let path = format!(
            "api/now/table/{}?sysparm_exclude_reference_link=true",
            encode_component(table)
        );
        let answer = self
            .call(http, Method::POST, &path, Some(OutboundBody::Json(fields)))
            .await?;
        result(answer, "create")
    }

    /// `PATCH /api/now/table/{table}/{sys_id}`: changes only the given fields (journal fields
    /// append an entry).
    pub async fn patch(
        &self,
        http: &Outbound,
        table: &str,
        sys_id: &str,
        fields: Value,
    ) -> Result<Value, StepError> {
        let path = format!(
            "api/now/table/{}/{}?sysparm_exclude_reference_link=true",
            encode_component(table),
            encode_component(sys_id)
        );
        let answer = self
            .call(http, Method::PATCH, &path, Some(OutboundBody::Json(fields)))
            .await?;
        result(answer, "update")
    }

    /// `POST /api/now/attachment/file`: the file's bytes as the body (§5.1).
    pub async fn upload(
        &self,
        http: &Outbound,
        table: &str,
        sys_id: &str,
        file_name: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Result<Value, StepError> {
        let path = format!(
            "api/now/attachment/file?table_name={}&table_sys_id={}&file_name={}",
            encode_component(table),
            encode_component(sys_id),
            encode_component(file_name)
        );
        let body = OutboundBody::Bytes {
            content_type: content_type.to_owned(),
            bytes,
        };
        let answer = self.call(http, Method::POST, &path, Some(body)).await?;
        result(answer, "attachment upload")
    }

    /// The attachments of a record (`GET /api/now/attachment`, §5.4).
    pub async fn attachments(
        &self,
        http: &Outbound,
        table: &str,
        sys_id: &str,
    ) -> Result<Vec<Value>, StepError> {
        let query = format!("table_name={table}^table_sys_id={sys_id}");
        let path = format!(
            "api/now/attachment?sysparm_query={}",
            encode_component(&query)
        );
        let answer = self.call(http, Method::GET, &path, None).await?;
        Ok(answer
            .get("result")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Checks the credentials with a cheap authenticated read, and the token lifespan.
    pub async fn check(&self, http: &Outbound) -> Result<CheckReport, StepError> {
        let mut report = CheckReport {
            token_lifespan_secs: None,
            notes: self.config.journal.describe(),
            warnings: Vec::new(),
        };
        if self.config.auth == ServiceNowAuthKind::Oauth {
            let (_, lifespan) = self.fetch_token(http).await?;
            report.token_lifespan_secs = Some(lifespan);
            if let Some(warning) = self.lifespan_warning(lifespan) {
                report.warnings.push(warning);
            }
        }
        self.query(http, "sys_user", "", Some("sys_id"), 1).await?;
        if self.config.journal == JournalSource::SysJournalField
            && self
                .query(http, "sys_journal_field", "", Some("sys_id"), 1)
                .await?
                .is_empty()
        {
            // Read ACLs hide rows rather than failing the call (§1.2, §4.2).
            report.warnings.push(format!(
                "{}: sys_journal_field answered no rows; without the audit_viewer role the instance hides them all. Grant the role or set journal = \"display_values\"",
                self.config_table()
            ));
        }
        self.check_filters(http, &mut report.warnings).await?;
        Ok(report)
    }

    /// Warns of fields in `integrator.filter` that a sample record of the table lacks: the
    /// instance ignores such a part of the query and selects more than meant (§1.2).
    async fn check_filters(
        &self,
        http: &Outbound,
        warnings: &mut Vec<String>,
    ) -> Result<(), StepError> {
        for (table, filter) in &self.config.integrator.filter {
            let sample = self.query(http, table, "", None, 1).await?;
            let Some(Value::Object(record)) = sample.first() else {
                continue;
            };
            for field in query_fields(filter) {
                if !record.contains_key(&field) {
                    warnings.push(format!(
                        "{}: integrator.filter.{table}: `{field}` is not a field of {table}; the instance ignores that part of the query and selects more records than meant",
                        self.config_table()
                    ));
                }
            }
        }
        Ok(())
    }

    fn lifespan_warning(&self, lifespan: u64) -> Option<String> {
        (lifespan < MIN_TOKEN_LIFESPAN_SECS).then(|| {
            format!(
                "{}: the instance grants tokens for {lifespan} s; set the application registry's Access Token Lifespan to at least {MIN_TOKEN_LIFESPAN_SECS} s",
                self.config_table()
            )
        })
    }

    async fn call(
        &self,
        http: &Outbound,
        method: Method,
        path: &str,
        body: Option<OutboundBody>,
    ) -> Result<Value, StepError> {
        let url = format!("{}/{path}", self.base());
        let mut refreshed = false;
        loop {
            let mut request = OutboundRequest::new(method.clone(), url.clone())
                .header(self.authorization(http, refreshed).await?)
                .header(Field::plain("Accept", "application/json"))
                .timeout(self.timeout());
            if let Some(body) = &body {
                request.body = body.clone();
            }
            let response = http.send(request).await?;
            // One refresh on 401: an OAuth token may be revoked before its expiry (§6.2).
            if response.status == 401 && !refreshed && self.config.auth == ServiceNowAuthKind::Oauth
            {
                refreshed = true;
                continue;
            }
            return parse_answer(&method, &url, response);
        }
    }

    async fn authorization(&self, http: &Outbound, refresh: bool) -> Result<Field, StepError> {
        match self.config.auth {
            ServiceNowAuthKind::Basic => {
                let user = self.config.username.as_deref().unwrap_or_default();
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", self.secret.expose()));
                Ok(Field::secret("Authorization", format!("Basic {encoded}")))
            }
            ServiceNowAuthKind::Oauth => {
                let token = self.token(http, refresh).await?;
                Ok(Field::secret(
                    "Authorization",
                    format!("Bearer {}", token.expose()),
                ))
            }
        }
    }

    async fn token(&self, http: &Outbound, force_refresh: bool) -> Result<Secret, StepError> {
        if http.dry_run_recorder().is_some() {
            http.preview_only(&self.token_request());
            return Ok(Secret::new("dry-run"));
        }
        let (token, _) = self
            .token
            .get(force_refresh, || async {
                let (token, lifespan) = self.fetch_token(http).await?;
                if let Some(warning) = self.lifespan_warning(lifespan) {
                    tracing::warn!("{warning}");
                }
                Ok::<_, StepError>((token, lifespan))
            })
            .await?;
        Ok(token)
    }

    fn token_request(&self) -> OutboundRequest {
        OutboundRequest::new(Method::POST, format!("{}/oauth_token.do", self.base()))
            .header(Field::plain("Accept", "application/json"))
            .form(vec![
                Field::plain("grant_type", "client_credentials"),
                Field::plain(
                    "client_id",
                    self.config.client_id.as_deref().unwrap_or_default(),
                ),
                Field::secret("client_secret", self.secret.expose()),
            ])
            .timeout(self.timeout())
    }

    /// A new token and its lifespan in seconds.
    async fn fetch_token(&self, http: &Outbound) -> Result<(Secret, u64), StepError> {
        let request = self.token_request();
        let url = request.url.clone();
        let response = http.send(request).await?;
        let body = parse_answer(&Method::POST, &url, response).map_err(|e| {
            e.with_credentials_hint(|| {
                format!(
                    "Check client_id and the secret `{}` of {}, and that the client credentials grant is enabled on the instance",
                    self.config.client_secret_name.as_deref().unwrap_or_default(),
                    self.config_table()
                )
            })
        })?;
        let (token, lifespan) = haloflow_core::outbound::granted_token(&body).ok_or_else(|| {
            StepError::Response(format!("token answer from {url} has no access_token"))
        })?;
        Ok((token, lifespan.unwrap_or(MIN_TOKEN_LIFESPAN_SECS)))
    }
}

/// The fields an encoded query names (`a=1^ORb.c=2^ORDERBYd`: a, b, d), dot-walks cut at the
/// record's own field.
fn query_fields(query: &str) -> Vec<String> {
    query
        .split('^')
        .filter_map(|term| {
            let term = term
                .strip_prefix("ORDERBYDESC")
                .or_else(|| term.strip_prefix("ORDERBY"))
                .or_else(|| term.strip_prefix("NQ"))
                .or_else(|| term.strip_prefix("OR"))
                .unwrap_or(term);
            let end = term
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(term.len());
            (end > 0).then(|| term[..end].to_owned())
        })
        .collect()
}

/// The record inside `{"result": {...}}`.
fn result(answer: Value, what: &str) -> Result<Value, StepError> {
    match answer.get("result") {
        Some(record @ Value::Object(_)) => Ok(record.clone()),
        _ => Err(StepError::Response(format!(
            "ServiceNow answered the {what} without a record in `result`"
        ))),
    }
}

/// 2xx with JSON is success; anything else becomes [`StepError::Status`] with ServiceNow's
/// `error.message` and `error.detail` (§1.3, §7.2).
fn parse_answer(
    method: &Method,
    url: &str,
    response: OutboundResponse,
) -> Result<Value, StepError> {
    if response.is_success() {
        if response.body.is_empty() {
            return Ok(Value::Null);
        }
        return response.json().ok_or_else(|| {
            // A hibernating developer instance answers an HTML page (§7.2).
            StepError::Transport(TransportError {
                method: method.to_string(),
                url: url.to_owned(),
                message: format!(
                    "answered {} with a body that is not JSON (is the instance hibernating?)",
                    response.status
                ),
                retryable: true,
                sent: true,
            })
        });
    }
    let message = match response.json() {
        Some(body) => {
            let text = |key: &str| {
                body.pointer(key)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            };
            match (text("/error/message"), text("/error/detail")) {
                (Some(m), Some(d)) => format!("{m}: {d}"),
                (Some(m), None) => m.to_owned(),
                _ => text("/error_description")
                    .or(text("/error"))
                    .map(str::to_owned)
                    .unwrap_or_else(|| body.to_string()),
            }
        }
        None => response.text().chars().take(300).collect(),
    };
    Err(StepError::Status {
        method: method.to_string(),
        url: url.to_owned(),
        status: response.status,
        message,
        retry_after: response.retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_a_query_names() {
        assert_eq!(
            query_fields("active=true^ORassignment_group.name=SD^priorityIN1,2^ORDERBYDESCnumber"),
            ["active", "assignment_group", "priority", "number"]
        );
    }
}
