//! A ServiceNow emulator (`../shared/reference/servicenow-api.md`): Basic and OAuth client
//! credentials (§6), the Table API with encoded queries and paging (§1), journal fields (§4),
//! and the Attachment API (§5). Values are stored and returned as strings, as ServiceNow does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::{
    Fault, InjectedFailure, RecordedRequest, RunningEmulator, ScheduledFault, dispatch, form_pairs,
    next_fault,
};

#[derive(Debug, Clone)]
pub struct ServiceNowEmulatorConfig {
    pub username: String,
    pub password: String,
    pub oauth_client_id: Option<String>,
    pub oauth_client_secret: Option<String>,
    pub token_lifetime_secs: u64,
}

/// An in-memory ServiceNow instance. Clones share the same state.
#[derive(Debug, Clone)]
pub struct ServiceNowEmulator {
    state: Arc<Mutex<SnState>>,
}

#[derive(Debug)]
struct SnState {
    config: ServiceNowEmulatorConfig,
    tokens: HashMap<String, Instant>,
    tokens_issued: usize,
    /// Records by table, in insertion order. `sys_journal_field` is a table like the others.
    tables: BTreeMap<String, Vec<Map<String, Value>>>,
    attachments: Vec<(Map<String, Value>, Vec<u8>)>,
    numbers: HashMap<String, u64>,
    sequence: u64,
    requests: Vec<RecordedRequest>,
    failures: Vec<InjectedFailure>,
    faults: Vec<ScheduledFault>,
}

/// Reference fields answered as `{"link", "value"}` (§1.2 `sysparm_exclude_reference_link`).
const REFERENCE_FIELDS: &[&str] = &[
    "caller_id",
    "assignment_group",
    "assigned_to",
    "parent",
    "parent_incident",
    "problem_id",
    "rfc",
    "opened_by",
    "request",
    "request_item",
    "change_request",
    "problem",
    "company",
    "location",
    "cmdb_ci",
    "business_service",
    "element_id",
    "table_sys_id",
];

/// Number prefix and initial state of task tables (§2.1, §2.3, §2.4).
fn task_table(table: &str) -> Option<(&'static str, &'static str)> {
    Some(match table {
        "incident" => ("INC", "1"),
        "problem" => ("PRB", "101"),
        "change_request" => ("CHG", "-5"),
        "sc_task" => ("SCTASK", "1"),
        "sc_req_item" => ("RITM", "1"),
        "sc_request" => ("REQ", "1"),
        "incident_task" => ("TASK", "1"),
        "problem_task" => ("PTASK", "151"),
        "change_task" => ("CTASK", "-5"),
        _ => return None,
    })
}

enum Answer {
    Json {
        status: u16,
        body: Value,
        location: Option<String>,
        total: Option<usize>,
    },
    Bytes {
        content_type: String,
        body: Vec<u8>,
    },
}

fn ok(status: u16, body: Value) -> Answer {
    Answer::Json {
        status,
        body,
        location: None,
        total: None,
    }
}

/// ServiceNow's error envelope (§1.3).
fn sn_error(status: u16, message: &str, detail: &str) -> Answer {
    ok(
        status,
        json!({"error": {"message": message, "detail": detail}, "status": "failure"}),
    )
}

fn now_text() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Object(map) => map.get("value").map(as_text).unwrap_or_default(),
        other => other.to_string(),
    }
}

impl ServiceNowEmulator {
    pub fn new(config: ServiceNowEmulatorConfig) -> Self {
        ServiceNowEmulator {
            state: Arc::new(Mutex::new(SnState {
                config,
                tokens: HashMap::new(),
                tokens_issued: 0,
                tables: BTreeMap::new(),
                attachments: Vec::new(),
                numbers: HashMap::new(),
                sequence: 0,
                requests: Vec::new(),
                failures: Vec::new(),
                faults: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SnState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    pub async fn start(&self) -> std::io::Result<RunningEmulator> {
        RunningEmulator::serve(self.router()).await
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    pub fn records(&self, table: &str) -> Vec<Value> {
        self.lock()
            .tables
            .get(table)
            .into_iter()
            .flatten()
            .map(|r| Value::Object(r.clone()))
            .collect()
    }

    pub fn record(&self, table: &str, sys_id: &str) -> Option<Value> {
        let state = self.lock();
        state
            .find(table, sys_id)
            .map(|i| Value::Object(state.tables[table][i].clone()))
    }

    /// Seeds a record (e.g. `sys_user` with an email) and returns its sys_id.
    pub fn insert_record(&self, table: &str, fields: Value) -> String {
        let fields = fields.as_object().cloned().unwrap_or_default();
        self.lock().create(table, fields, "admin")
    }

    /// Creates a record as `user` would in the instance's UI (journal fields become entries).
    pub fn insert_as(&self, user: &str, table: &str, fields: Value) -> String {
        let fields = fields.as_object().cloned().unwrap_or_default();
        self.lock().create(table, fields, user)
    }

    /// Changes a record as `user` would: fields set, `work_notes`/`comments` appended, the
    /// update stamp and count moved. False when there is no such record.
    pub fn update_as(&self, user: &str, table: &str, sys_id: &str, fields: Value) -> bool {
        let fields = fields.as_object().cloned().unwrap_or_default();
        let mut state = self.lock();
        match state.find(table, sys_id) {
            Some(index) => {
                state.update(table, index, fields, user);
                true
            }
            None => false,
        }
    }

    /// The `sys_journal_field` rows of a record, oldest first.
    pub fn journal(&self, sys_id: &str) -> Vec<Value> {
        self.records("sys_journal_field")
            .into_iter()
            .filter(|r| r["element_id"] == sys_id)
            .collect()
    }

    /// Every issued OAuth token answers 401 from now on (as if it expired).
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// OAuth tokens issued so far.
    pub fn tokens_issued(&self) -> usize {
        self.lock().tokens_issued
    }

    pub fn attachments(&self) -> Vec<Value> {
        self.lock()
            .attachments
            .iter()
            .map(|(meta, _)| Value::Object(meta.clone()))
            .collect()
    }

    pub fn fail_next(
        &self,
        method: &str,
        path_prefix: &str,
        status: u16,
        times: usize,
        retry_after: Option<u64>,
    ) {
        self.lock().failures.push(InjectedFailure {
            method: method.to_owned(),
            path_prefix: path_prefix.to_owned(),
            status,
            remaining: times,
            retry_after,
        });
    }
}

impl ServiceNowEmulator {
    /// The next `times` requests matching method and path prefix meet `fault`.
    pub fn inject(&self, method: &str, path_prefix: &str, fault: Fault, times: usize) {
        self.lock().faults.push(ScheduledFault {
            method: method.to_owned(),
            path_prefix: path_prefix.to_owned(),
            fault,
            remaining: times,
        });
    }
}

async fn handle(State(emulator): State<ServiceNowEmulator>, request: Request<Body>) -> Response {
    let recorded = RecordedRequest::read(request).await;
    let fault = {
        let mut state = emulator.lock();
        let state = &mut *state;
        next_fault(&state.failures, &mut state.faults, &recorded)
    };
    dispatch(fault, move || answer(&emulator, recorded)).await
}

/// Handles a request normally (or with an injected error status) and records it.
fn answer(emulator: &ServiceNowEmulator, mut recorded: RecordedRequest) -> Response {
    let mut state = emulator.lock();
    let (answer, retry_after) =
        match InjectedFailure::take(&mut state.failures, &recorded.method, &recorded.path) {
            Some((status, retry_after)) => (sn_error(status, "injected failure", ""), retry_after),
            None => (state.answer(&recorded), None),
        };
    let mut response = match answer {
        Answer::Json {
            status,
            body,
            location,
            total,
        } => {
            recorded.status = status;
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                axum::Json(body),
            )
                .into_response();
            if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            if let Some(total) = total {
                response.headers_mut().insert("x-total-count", total.into());
            }
            response
        }
        Answer::Bytes { content_type, body } => {
            recorded.status = 200;
            let mut response = body.into_response();
            if let Ok(value) = HeaderValue::from_str(&content_type) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
    };
    state.requests.push(recorded);
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, seconds.into());
    }
    response
}

impl SnState {
    /// Newest first: the record just created or last touched is found at once, however many
    /// a long load test has created.
    fn find(&self, table: &str, sys_id: &str) -> Option<usize> {
        self.tables
            .get(table)?
            .iter()
            .rposition(|r| r.get("sys_id").and_then(Value::as_str) == Some(sys_id))
    }

    fn answer(&mut self, request: &RecordedRequest) -> Answer {
        let path = request.path.clone();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        if request.method == "POST" && segments == ["oauth_token.do"] {
            return self.issue_token(request);
        }
        let user = match self.authenticate(request) {
            Ok(user) => user,
            Err(answer) => return answer,
        };
        // `/api/now/v1/table/...` and `/api/now/v2/table/...` are the same API here (§1.1).
        let rest: Vec<&str> = match segments.as_slice() {
            ["api", "now", "v1" | "v2", rest @ ..] | ["api", "now", rest @ ..] => rest.to_vec(),
            _ => {
                return sn_error(
                    400,
                    "Requested URI does not represent any resource",
                    &request.path,
                );
            }
        };
        let writes = matches!(request.method.as_str(), "POST" | "PUT" | "PATCH");
        match (request.method.as_str(), rest.as_slice()) {
            ("POST", ["attachment", "file"]) => self.upload(request, &user),
            ("GET", ["attachment"]) => {
                let metas: Vec<Map<String, Value>> =
                    self.attachments.iter().map(|(m, _)| m.clone()).collect();
                self.list(request, metas, 1000)
            }
            ("GET", ["attachment", id, "file"]) => {
                match self.attachments.iter().find(|(m, _)| m["sys_id"] == *id) {
                    Some((meta, bytes)) => Answer::Bytes {
                        content_type: as_text(&meta["content_type"]),
                        body: bytes.clone(),
                    },
                    None => sn_error(
                        404,
                        "Record doesn't exist or ACL restricts the record retrieval",
                        "",
                    ),
                }
            }
            (_, ["table", ..])
                if writes
                    && !request
                        .header("content-type")
                        .is_some_and(|c| c.contains("json")) =>
            {
                sn_error(400, "Content-Type must be application/json", "")
            }
            ("GET", ["table", table]) => {
                let records = self.tables.get(*table).cloned().unwrap_or_default();
                self.list(request, records, 10000)
            }
            ("POST", ["table", table]) => match body_object(request) {
                Ok(fields) => {
                    if fields
                        .get("correlation_id")
                        .map(as_text)
                        .is_some_and(|c| c.chars().count() > 100)
                    {
                        return sn_error(
                            400,
                            "Invalid value for correlation_id",
                            "correlation_id is at most 100 characters",
                        );
                    }
                    let sys_id = self.create(table, fields, &user);
                    let record = self.tables[*table]
                        [self.find(table, &sys_id).expect("just created")]
                    .clone();
                    Answer::Json {
                        status: 201,
                        body: json!({"result": present(&record, request)}),
                        location: Some(format!("/api/now/table/{table}/{sys_id}")),
                        total: None,
                    }
                }
                Err(answer) => answer,
            },
            ("GET", ["table", table, sys_id]) => match self.find(table, sys_id) {
                Some(i) => ok(
                    200,
                    json!({"result": present(&self.tables[*table][i], request)}),
                ),
                None => sn_error(
                    404,
                    "No Record found",
                    "Record doesn't exist or ACL restricts the record retrieval",
                ),
            },
            ("PATCH" | "PUT", ["table", table, sys_id]) => {
                match (self.find(table, sys_id), body_object(request)) {
                    (None, _) => sn_error(
                        404,
                        "No Record found",
                        "Record doesn't exist or ACL restricts the record retrieval",
                    ),
                    (_, Err(answer)) => answer,
                    (Some(i), Ok(fields)) => {
                        self.update(table, i, fields, &user);
                        ok(
                            200,
                            json!({"result": present(&self.tables[*table][i], request)}),
                        )
                    }
                }
            }
            ("DELETE", ["table", table, sys_id]) => match self.find(table, sys_id) {
                Some(i) => {
                    self.tables.get_mut(*table).expect("found").remove(i);
                    ok(204, Value::Null)
                }
                None => sn_error(404, "No Record found", ""),
            },
            _ => sn_error(
                400,
                "Requested URI does not represent any resource",
                &request.path,
            ),
        }
    }

    /// `POST /oauth_token.do`, form-encoded client credentials (§6.2).
    fn issue_token(&mut self, request: &RecordedRequest) -> Answer {
        if !request
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/x-www-form-urlencoded")
        {
            return ok(
                400,
                json!({"error": "server_error", "error_description": "access_denied"}),
            );
        }
        let form: HashMap<String, String> = form_pairs(&request.body).into_iter().collect();
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return ok(400, json!({"error": "unsupported_grant_type"}));
        }
        let valid = self.config.oauth_client_id.is_some()
            && form.get("client_id") == self.config.oauth_client_id.as_ref()
            && form.get("client_secret") == self.config.oauth_client_secret.as_ref();
        if !valid {
            return ok(
                401,
                json!({"error": "access_denied", "error_description": "access_denied"}),
            );
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        self.tokens_issued += 1;
        self.tokens.insert(
            token.clone(),
            Instant::now() + Duration::from_secs(self.config.token_lifetime_secs),
        );
        ok(
            200,
            json!({"access_token": token, "token_type": "Bearer", "expires_in": self.config.token_lifetime_secs, "scope": ""}),
        )
    }

    /// Basic or Bearer; returns the user name records are written by.
    fn authenticate(&self, request: &RecordedRequest) -> Result<String, Answer> {
        let denied = || {
            sn_error(
                401,
                "User Not Authenticated",
                "Required to provide Auth information",
            )
        };
        let value = request.header("authorization").ok_or_else(denied)?;
        if let Some(token) = value.strip_prefix("Bearer ") {
            return match self.tokens.get(token) {
                Some(expiry) if Instant::now() < *expiry => Ok(self.config.username.clone()),
                _ => Err(denied()),
            };
        }
        let decoded = value
            .strip_prefix("Basic ")
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(denied)?;
        if decoded == format!("{}:{}", self.config.username, self.config.password) {
            Ok(self.config.username.clone())
        } else {
            Err(sn_error(
                401,
                "User Not Authenticated",
                "Required to provide Auth information",
            ))
        }
    }

    fn next_sys_id(&mut self) -> String {
        self.sequence += 1;
        format!(
            "{:032x}",
            (uuid::Uuid::new_v4().as_u128() & !0xffff_ffff) | u128::from(self.sequence as u32)
        )
    }

    fn create(&mut self, table: &str, fields: Map<String, Value>, user: &str) -> String {
        let sys_id = self.next_sys_id();
        let now = now_text();
        let mut record = Map::new();
        record.insert("sys_id".into(), json!(sys_id));
        if let Some((prefix, state)) = task_table(table) {
            let n = self.numbers.entry(table.to_owned()).or_insert(10000);
            *n += 1;
            record.insert("number".into(), json!(format!("{prefix}{:07}", n)));
            record.insert("state".into(), json!(state));
            record.insert("correlation_id".into(), json!(""));
        }
        for (k, v) in [("sys_created_on", &now), ("sys_updated_on", &now)] {
            record.insert(k.into(), json!(v));
        }
        record.insert("sys_created_by".into(), json!(user));
        record.insert("sys_updated_by".into(), json!(user));
        record.insert("sys_mod_count".into(), json!("0"));
        record.insert("sys_class_name".into(), json!(table));
        let journal = self.apply_fields(&mut record, fields);
        self.tables
            .entry(table.to_owned())
            .or_default()
            .push(record);
        self.write_journal(table, &sys_id, journal, user);
        sys_id
    }

    fn update(&mut self, table: &str, index: usize, fields: Map<String, Value>, user: &str) {
        let mut record = self.tables[table][index].clone();
        let journal = self.apply_fields(&mut record, fields);
        let count = as_text(&record["sys_mod_count"])
            .parse::<u64>()
            .unwrap_or(0)
            + 1;
        record.insert("sys_mod_count".into(), json!(count.to_string()));
        record.insert("sys_updated_on".into(), json!(now_text()));
        record.insert("sys_updated_by".into(), json!(user));
        let sys_id = as_text(&record["sys_id"]);
        self.tables.get_mut(table).expect("exists")[index] = record;
        self.write_journal(table, &sys_id, journal, user);
    }

    /// Writes fields as strings; `work_notes` and `comments` are journal entries, not fields (§4.1).
    fn apply_fields(
        &self,
        record: &mut Map<String, Value>,
        fields: Map<String, Value>,
    ) -> Vec<(String, String)> {
        let mut journal = Vec::new();
        for (key, value) in fields {
            match key.as_str() {
                "work_notes" | "comments" => journal.push((key, as_text(&value))),
                k if k.starts_with("sys_") => {} // not writable (§1.1)
                _ => {
                    record.insert(key, Value::String(as_text(&value)));
                }
            }
        }
        journal
    }

    fn write_journal(
        &mut self,
        table: &str,
        sys_id: &str,
        entries: Vec<(String, String)>,
        user: &str,
    ) {
        for (element, value) in entries.into_iter().filter(|(_, v)| !v.is_empty()) {
            let fields =
                json!({"element": element, "element_id": sys_id, "name": table, "value": value});
            self.create(
                "sys_journal_field",
                fields.as_object().cloned().unwrap_or_default(),
                user,
            );
        }
    }

    fn upload(&mut self, request: &RecordedRequest, user: &str) -> Answer {
        let params: HashMap<String, String> = request.query_pairs().into_iter().collect();
        let (Some(table), Some(table_sys_id), Some(file_name)) = (
            params.get("table_name"),
            params.get("table_sys_id"),
            params.get("file_name"),
        ) else {
            return sn_error(
                400,
                "Missing parameters: table_name, table_sys_id and file_name are required",
                "",
            );
        };
        let Some(content_type) = request.header("content-type") else {
            return sn_error(400, "Content-Type header is required", "");
        };
        if self.find(table, table_sys_id).is_none() {
            return sn_error(
                404,
                "Record doesn't exist or ACL restricts the record retrieval",
                "",
            );
        }
        let sys_id = self.next_sys_id();
        let now = now_text();
        let meta = json!({
            "sys_id": sys_id, "file_name": file_name, "content_type": content_type,
            "size_bytes": request.body.len().to_string(), "table_name": table, "table_sys_id": table_sys_id,
            "download_link": format!("/api/now/attachment/{sys_id}/file"),
            "sys_created_on": now, "sys_updated_on": now, "sys_created_by": user, "sys_mod_count": "0",
        });
        let meta = meta.as_object().cloned().unwrap_or_default();
        self.attachments
            .push((meta.clone(), request.body.clone().into_bytes()));
        Answer::Json {
            status: 201,
            body: json!({"result": meta}),
            location: Some(format!("/api/now/attachment/{sys_id}")),
            total: None,
        }
    }

    /// A list answer: filter by `sysparm_query` or `name=value` pairs, sort, page (§1.2).
    fn list(
        &self,
        request: &RecordedRequest,
        mut records: Vec<Map<String, Value>>,
        default_limit: usize,
    ) -> Answer {
        let params = request.query_pairs();
        let param = |name: &str| request.query_param(name);
        let mut query = param("sysparm_query").unwrap_or_default();
        for (k, v) in &params {
            if !k.starts_with("sysparm_") {
                query.push_str(&format!("^{k}={v}"));
            }
        }
        let parsed = parse_query(&query);
        records.retain(|r| parsed.matches(r));
        for (field, descending) in parsed.order.iter().rev() {
            records.sort_by(|a, b| {
                let ordering = as_text(a.get(field).unwrap_or(&Value::Null))
                    .cmp(&as_text(b.get(field).unwrap_or(&Value::Null)));
                if *descending {
                    ordering.reverse()
                } else {
                    ordering
                }
            });
        }
        let total = records.len();
        let offset = param("sysparm_offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let limit = param("sysparm_limit")
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_limit);
        let result: Vec<Value> = records
            .iter()
            .skip(offset)
            .take(limit)
            .map(|r| present(r, request))
            .collect();
        Answer::Json {
            status: 200,
            body: json!({"result": result}),
            location: None,
            total: Some(total),
        }
    }
}

fn body_object(request: &RecordedRequest) -> Result<Map<String, Value>, Answer> {
    match serde_json::from_str::<Value>(&request.body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(sn_error(400, "Request body must be a JSON object", "")),
        Err(e) => Err(sn_error(
            400,
            "Exception while reading request",
            &e.to_string(),
        )),
    }
}

/// A record as answered: `sysparm_fields` applied, references as `{link, value}` by default.
fn present(record: &Map<String, Value>, request: &RecordedRequest) -> Value {
    let param = |name: &str| request.query_param(name);
    let fields: Option<Vec<String>> =
        param("sysparm_fields").map(|f| f.split(',').map(|s| s.trim().to_owned()).collect());
    let links = param("sysparm_exclude_reference_link").as_deref() != Some("true");
    let host = request.header("host").unwrap_or("localhost").to_owned();
    let mut out = Map::new();
    for (key, value) in record {
        if fields.as_ref().is_some_and(|f| !f.contains(key)) {
            continue;
        }
        let text = as_text(value);
        let shown = if links && REFERENCE_FIELDS.contains(&key.as_str()) && !text.is_empty() {
            json!({"link": format!("http://{host}/api/now/table/{key}/{text}"), "value": text})
        } else {
            Value::String(text)
        };
        out.insert(key.clone(), shown);
    }
    Value::Object(out)
}

/// An encoded query: `a=b^c>=d^ORe=f^NQg=h^ORDERBYx` (§1.2).
struct Query {
    /// Clauses joined by `^NQ` (a record matches when one clause does); each clause is groups
    /// of alternatives, and matches when every group has one matching condition.
    clauses: Vec<Vec<Vec<(String, String, String)>>>,
    order: Vec<(String, bool)>,
}

const OPERATORS: &[&str] = &[
    "ISNOTEMPTY",
    "ISEMPTY",
    ">=",
    "<=",
    "!=",
    ">",
    "<",
    "STARTSWITH",
    "ENDSWITH",
    "LIKE",
    "IN",
    "=",
];

fn parse_query(text: &str) -> Query {
    let mut query = Query {
        clauses: vec![Vec::new()],
        order: Vec::new(),
    };
    for term in text.split('^').filter(|t| !t.is_empty()) {
        // `^NQ` starts a new clause with the condition that follows it.
        let term = match term.strip_prefix("NQ") {
            Some(rest) => {
                query.clauses.push(Vec::new());
                if rest.is_empty() {
                    continue;
                }
                rest
            }
            None => term,
        };
        let groups = query.clauses.last_mut().expect("one clause at least");
        if let Some(field) = term.strip_prefix("ORDERBYDESC") {
            query.order.push((field.to_owned(), true));
            continue;
        }
        if let Some(field) = term.strip_prefix("ORDERBY") {
            query.order.push((field.to_owned(), false));
            continue;
        }
        let (alternative, term) = match term.strip_prefix("OR") {
            Some(rest) if !groups.is_empty() => (true, rest),
            _ => (false, term),
        };
        // Field names are lower case; operators are symbols or upper-case words (LIKE, IN...).
        let field_end = term
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.'))
            .unwrap_or(term.len());
        let (field, rest) = term.split_at(field_end);
        let op = OPERATORS
            .iter()
            .find(|op| rest.starts_with(*op))
            .copied()
            .unwrap_or("?");
        let value = rest.get(op.len()..).unwrap_or("").to_owned();
        let condition = (field.to_owned(), op.to_owned(), value);
        match (alternative, groups.last_mut()) {
            (true, Some(group)) => group.push(condition),
            _ => groups.push(vec![condition]),
        }
    }
    query
}

impl Query {
    fn matches(&self, record: &Map<String, Value>) -> bool {
        self.clauses
            .iter()
            .any(|groups| Self::clause_matches(groups, record))
    }

    fn clause_matches(
        groups: &[Vec<(String, String, String)>],
        record: &Map<String, Value>,
    ) -> bool {
        groups.iter().all(|group| {
            group.iter().any(|(field, op, value)| {
                let actual = record.get(field).map(as_text).unwrap_or_default();
                match op.as_str() {
                    "=" => actual == *value,
                    "!=" => actual != *value,
                    ">=" => actual >= *value,
                    "<=" => actual <= *value,
                    ">" => actual > *value,
                    "<" => actual < *value,
                    "LIKE" => actual.contains(value.as_str()),
                    "STARTSWITH" => actual.starts_with(value.as_str()),
                    "ENDSWITH" => actual.ends_with(value.as_str()),
                    "IN" => value.split(',').any(|v| v == actual),
                    "ISEMPTY" => actual.is_empty(),
                    "ISNOTEMPTY" => !actual.is_empty(),
                    _ => false,
                }
            })
        })
    }
}
