//! A ServiceNow emulator (`../shared/reference/servicenow-api.md`): Basic and OAuth client
//! credentials (§6), the Table API with encoded queries and paging (§1), journal fields (§4),
//! and the Attachment API (§5). Values are stored and returned as strings, as ServiceNow does.
//!
//! It acts like an instance, never more leniently (`servicenow_model`): fields outside a
//! table's dictionary are dropped silently with 201/200 and noted in [`ServiceNowEmulator::warnings`]
//! (§7.2); an invalid part of an encoded query is ignored and the rest applied (§1.2);
//! calculatePriority sets `priority` from impact and urgency (§2.2); `task` reads return the
//! records of its child tables (§2.1); an OAuth token acts as the OAuth application user (§6.2).
//!
//! Roles: the integration user (Basic `username` and the OAuth application user) has `itil`
//! only, unless a test grants more ([`ServiceNowEmulator::grant_role`]). A table read guarded by
//! a role the user lacks (`sys_journal_field` needs `audit_viewer`, §4.2) is filtered by
//! row-level read ACLs, as an instance does: a list answers 200 with `{"result": []}` (the
//! limit is applied before ACL evaluation, §1.2, so rows vanish rather than the call
//! failing), and a GET by sys_id answers 404 "No Record found" (§7.2: missing and hidden look
//! the same).

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

use super::servicenow_model::{self, TASK_TABLES};
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
    /// The OAuth application user (§6.2): the `user_name` writes made with a token are
    /// stamped with (`sys_created_by`, `sys_updated_by`, journal entries).
    pub oauth_user: String,
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
    /// Roles by user name, beyond `itil` (which the integration users have).
    roles: HashMap<String, Vec<String>>,
    /// Fields a request sent that the instance dropped (§7.2).
    warnings: Vec<String>,
    /// Dictionary entries a test added (a customer's `u_` fields), by table.
    extra_fields: HashMap<String, Vec<String>>,
    /// The integration user's time zone, minutes east of UTC, for display values (§2.7).
    time_zone_minutes: i32,
}

/// How many dropped fields [`ServiceNowEmulator::warnings`] keeps.
const MAX_WARNINGS: usize = 1000;

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

/// ServiceNow's answer to a path that names no API.
fn unknown_resource(request: &RecordedRequest) -> Answer {
    sn_error(
        400,
        "Requested URI does not represent any resource",
        &request.path,
    )
}

/// A GET, PATCH or DELETE of a record that is missing or hidden by an ACL (§7.2).
fn no_record() -> Answer {
    sn_error(
        404,
        "No Record found",
        "Record doesn't exist or ACL restricts the record retrieval",
    )
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
                roles: HashMap::new(),
                warnings: Vec::new(),
                extra_fields: HashMap::new(),
                time_zone_minutes: 0,
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

    /// Gives `user` a role beyond `itil` (e.g. `audit_viewer`, §4.2).
    pub fn grant_role(&self, user: &str, role: &str) {
        self.lock()
            .roles
            .entry(user.to_owned())
            .or_default()
            .push(role.to_owned());
    }

    /// What the instance dropped silently from creates and updates (unknown or system
    /// fields, §7.2): a request that sends a field the instance ignores shows up here.
    pub fn warnings(&self) -> Vec<String> {
        self.lock().warnings.clone()
    }

    /// Adds a field to a table's dictionary, as a customer's `u_` field (on `task`, every
    /// task table has it; a table the emulator does not model becomes known with it).
    pub fn add_field(&self, table: &str, field: &str) {
        self.lock()
            .extra_fields
            .entry(table.to_owned())
            .or_default()
            .push(field.to_owned());
    }

    /// The integration user's time zone (minutes east of UTC): display values of date-times
    /// and journal entries are shown in it (§2.7, §4.2).
    pub fn set_time_zone_offset(&self, minutes: i32) {
        self.lock().time_zone_minutes = minutes;
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
            _ => return unknown_resource(request),
        };
        match rest.as_slice() {
            ["attachment", ..] => self.attachment_api(request, &rest, &user),
            ["table", ..] => self.table_api(request, &rest, &user),
            _ => unknown_resource(request),
        }
    }

    /// `/api/now/attachment/...` (§5).
    fn attachment_api(&mut self, request: &RecordedRequest, rest: &[&str], user: &str) -> Answer {
        match (request.method.as_str(), rest) {
            ("POST", ["attachment", "file"]) => self.upload(request, user),
            ("GET", ["attachment"]) => {
                let metas: Vec<Map<String, Value>> =
                    self.attachments.iter().map(|(m, _)| m.clone()).collect();
                self.list(request, None, metas, 1000, true)
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
            _ => unknown_resource(request),
        }
    }

    /// `/api/now/table/...`: writes need a JSON body, and the table must be in the dictionary.
    fn table_api(&mut self, request: &RecordedRequest, rest: &[&str], user: &str) -> Answer {
        let writes = matches!(request.method.as_str(), "POST" | "PUT" | "PATCH");
        match (request.method.as_str(), rest) {
            (_, ["table", ..])
                if writes
                    && !request
                        .header("content-type")
                        .is_some_and(|c| c.contains("json")) =>
            {
                sn_error(400, "Content-Type must be application/json", "")
            }
            (_, ["table", table, ..]) if !self.known_table(table) => sn_error(
                400,
                &format!("Invalid table {table}"),
                "The table is not in this instance's dictionary",
            ),
            ("GET", ["table", table]) => self.list_table(request, table, user),
            ("POST", ["table", table]) => self.insert(request, table, user),
            (method, ["table", table, sys_id]) => {
                self.record_api(request, method, table, sys_id, user)
            }
            _ => unknown_resource(request),
        }
    }

    /// `GET`, `PATCH` (or `PUT`) and `DELETE` of `/api/now/table/{table}/{sys_id}`.
    fn record_api(
        &mut self,
        request: &RecordedRequest,
        method: &str,
        table: &str,
        sys_id: &str,
        user: &str,
    ) -> Answer {
        match method {
            "GET" => match self.locate(table, sys_id) {
                Some((concrete, i)) if self.may_read(user, table) => ok(
                    200,
                    json!({"result": self.present(Some(table), &self.tables[&concrete][i], request)}),
                ),
                _ => no_record(),
            },
            "PATCH" | "PUT" => match (self.locate(table, sys_id), body_object(request)) {
                (None, _) => no_record(),
                (_, Err(answer)) => answer,
                (Some((concrete, i)), Ok(fields)) => {
                    self.update(&concrete, i, fields, user);
                    ok(
                        200,
                        json!({"result": self.present(Some(table), &self.tables[&concrete][i], request)}),
                    )
                }
            },
            "DELETE" => match self.locate(table, sys_id) {
                Some((concrete, i)) => {
                    self.tables.get_mut(&concrete).expect("found").remove(i);
                    ok(204, Value::Null)
                }
                None => no_record(),
            },
            _ => unknown_resource(request),
        }
    }

    /// `POST /api/now/table/{table}`: 201 with the record and its `Location` (§1.1).
    fn insert(&mut self, request: &RecordedRequest, table: &str, user: &str) -> Answer {
        let fields = match body_object(request) {
            Ok(fields) => fields,
            Err(answer) => return answer,
        };
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
        let sys_id = self.create(table, fields, user);
        let Some(index) = self.find(table, &sys_id) else {
            return sn_error(500, "The record just created was not found", "");
        };
        Answer::Json {
            status: 201,
            body: json!({"result": self.present(Some(table), &self.tables[table][index], request)}),
            location: Some(format!("/api/now/table/{table}/{sys_id}")),
            total: None,
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
                Some(expiry) if Instant::now() < *expiry => Ok(self.config.oauth_user.clone()),
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
        let journal = self.apply_fields(table, &mut record, fields, user);
        priority_rule(table, &mut record, true);
        self.tables
            .entry(table.to_owned())
            .or_default()
            .push(record);
        self.write_journal(table, &sys_id, journal, user);
        sys_id
    }

    fn update(&mut self, table: &str, index: usize, fields: Map<String, Value>, user: &str) {
        let mut record = self.tables[table][index].clone();
        let rates = fields.contains_key("impact") || fields.contains_key("urgency");
        let journal = self.apply_fields(table, &mut record, fields, user);
        priority_rule(table, &mut record, rates);
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

    /// Writes fields as strings; `work_notes` and `comments` are journal entries, not fields
    /// (§4.1). System fields and fields outside the table's dictionary are dropped silently,
    /// as an instance does (§1.1, §7.2), and noted in the warnings.
    fn apply_fields(
        &mut self,
        table: &str,
        record: &mut Map<String, Value>,
        fields: Map<String, Value>,
        user: &str,
    ) -> Vec<(String, String)> {
        let extra = self.extra_fields(table);
        let mut journal = Vec::new();
        for (key, value) in fields {
            let known = servicenow_model::has_field(table, &key, &extra);
            if key.starts_with("sys_") || known == Some(false) {
                let why = if key.starts_with("sys_") {
                    "is a system field, not writable"
                } else {
                    "is not a field of the table"
                };
                // The first ones are enough to fail a test; a long load test keeps its memory.
                if self.warnings.len() < MAX_WARNINGS {
                    self.warnings
                        .push(format!("{table}.{key} {why}: dropped (sent by {user})"));
                }
                continue;
            }
            match key.as_str() {
                "work_notes" | "comments" => journal.push((key, as_text(&value))),
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
    /// Query parts naming a field `table` does not have are ignored (§1.2). Rows the user may
    /// not read are filtered out after paging, as read ACLs are (§1.2).
    fn list(
        &self,
        request: &RecordedRequest,
        table: Option<&str>,
        mut records: Vec<Map<String, Value>>,
        default_limit: usize,
        readable: bool,
    ) -> Answer {
        let params = request.query_pairs();
        let param = |name: &str| request.query_param(name);
        let mut query = param("sysparm_query").unwrap_or_default();
        for (k, v) in &params {
            if !k.starts_with("sysparm_") {
                query.push_str(&format!("^{k}={v}"));
            }
        }
        let mut parsed = parse_query(&query);
        if let Some(table) = table {
            let extra = self.extra_fields(table);
            parsed.drop_invalid(|field| {
                let base = field.split('.').next().unwrap_or(field);
                servicenow_model::has_field(table, base, &extra) != Some(false)
            });
        }
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
            .filter(|_| readable)
            .map(|r| self.present(table, r, request))
            .collect();
        Answer::Json {
            status: 200,
            body: json!({"result": result}),
            location: None,
            total: Some(total),
        }
    }

    /// Whether the API may address `table`: one the emulator models, `task`, or one a test
    /// added fields to. Anything else is "Invalid table" (§7.2).
    fn known_table(&self, table: &str) -> bool {
        table == "task"
            || servicenow_model::has_field(table, "sys_id", &self.extra_fields(table)).is_some()
    }

    /// The fields a test added to `table`, and to `task` for its child tables.
    fn extra_fields(&self, table: &str) -> Vec<String> {
        let inherited = servicenow_model::is_task_table(table)
            .then(|| self.extra_fields.get("task"))
            .flatten();
        self.extra_fields
            .get(table)
            .into_iter()
            .chain(inherited)
            .flatten()
            .cloned()
            .collect()
    }

    /// `GET /api/now/table/{table}`; `task` lists the records of its child tables (§2.1).
    fn list_table(&self, request: &RecordedRequest, table: &str, user: &str) -> Answer {
        let records: Vec<Map<String, Value>> = if table == "task" {
            TASK_TABLES
                .iter()
                .filter_map(|t| self.tables.get(*t))
                .flatten()
                .cloned()
                .collect()
        } else {
            self.tables.get(table).cloned().unwrap_or_default()
        };
        self.list(
            request,
            Some(table),
            records,
            10000,
            self.may_read(user, table),
        )
    }

    /// The table a record is in and its index; through `task`, any child table's record.
    fn locate(&self, table: &str, sys_id: &str) -> Option<(String, usize)> {
        if table == "task" {
            return TASK_TABLES
                .iter()
                .find_map(|t| self.find(t, sys_id).map(|i| ((*t).to_owned(), i)));
        }
        self.find(table, sys_id).map(|i| (table.to_owned(), i))
    }

    /// Whether `user` holds the role that guards reading `table` (`admin` holds every role).
    fn may_read(&self, user: &str, table: &str) -> bool {
        let Some(role) = servicenow_model::read_role(table) else {
            return true;
        };
        user == "admin"
            || self
                .roles
                .get(user)
                .is_some_and(|r| r.iter().any(|r| r == role || r == "admin"))
    }

    /// A record as answered: `sysparm_fields` applied; references as `{link, value}` unless
    /// excluded; with `sysparm_display_value` `true` or `all`, display values (date-times in
    /// the user's time zone, journal fields as their entries, §1.2, §4.2).
    fn present(
        &self,
        table: Option<&str>,
        record: &Map<String, Value>,
        request: &RecordedRequest,
    ) -> Value {
        let param = |name: &str| request.query_param(name);
        let fields: Option<Vec<String>> =
            param("sysparm_fields").map(|f| f.split(',').map(|s| s.trim().to_owned()).collect());
        let links = param("sysparm_exclude_reference_link").as_deref() != Some("true");
        let display = param("sysparm_display_value").unwrap_or_default();
        let host = request.header("host").unwrap_or("localhost").to_owned();
        let sys_id = record.get("sys_id").map(as_text).unwrap_or_default();
        let mut out = Map::new();
        for (key, text) in self.field_values(table, record) {
            if fields.as_ref().is_some_and(|f| !f.contains(&key)) {
                continue;
            }
            let link = (links && REFERENCE_FIELDS.contains(&key.as_str()) && !text.is_empty())
                .then(|| format!("http://{host}/api/now/table/{key}/{text}"));
            let shown = self.shown(&display, link, &sys_id, &key, text);
            out.insert(key, shown);
        }
        Value::Object(out)
    }

    /// The record's fields as text. From a table, every field of the record's table comes
    /// back, "" when never set (§1.1: unset fields hold their type's null value); journal
    /// fields too, their entries being display values only (§4.2).
    fn field_values(
        &self,
        table: Option<&str>,
        record: &Map<String, Value>,
    ) -> Vec<(String, String)> {
        let mut values: Vec<(String, String)> = record
            .iter()
            .map(|(k, v)| (k.clone(), as_text(v)))
            .collect();
        if table.is_none() {
            return values;
        }
        let class = record
            .get("sys_class_name")
            .map(as_text)
            .unwrap_or_default();
        let dictionary = servicenow_model::fields_of(&class).unwrap_or_default();
        let extra = self.extra_fields(&class);
        for field in dictionary
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
        {
            if !record.contains_key(field) {
                values.push((field.to_owned(), String::new()));
            }
        }
        values
    }

    /// One field as `sysparm_display_value` (`display`) asks: the value, the display value
    /// or both, with the reference `link` if any.
    fn shown(
        &self,
        display: &str,
        link: Option<String>,
        sys_id: &str,
        key: &str,
        text: String,
    ) -> Value {
        match display {
            "true" | "all" => {
                let mut shown = json!({"display_value": self.display_value(sys_id, key, &text)});
                if display == "all" {
                    shown["value"] = json!(text);
                }
                match link {
                    Some(link) => {
                        shown["link"] = json!(link);
                        shown
                    }
                    None if display == "true" => shown["display_value"].take(),
                    None => shown,
                }
            }
            _ => match link {
                Some(link) => json!({"link": link, "value": text}),
                None => Value::String(text),
            },
        }
    }

    /// The display value of one field: a journal field's entries, newest first; a date-time
    /// in the user's time zone; anything else as stored.
    fn display_value(&self, sys_id: &str, field: &str, raw: &str) -> String {
        if field == "work_notes" || field == "comments" {
            return self.journal_display(sys_id, field);
        }
        if field.ends_with("_on") || field.ends_with("_at") {
            return servicenow_model::display_time(raw, self.time_zone_minutes);
        }
        raw.to_owned()
    }

    /// `<date> <time> - <Full Name> (Work notes)\n<text>`, each entry followed by a blank line,
    /// newest first (§4.2 Option B; `getJournalEntry(-1)`).
    fn journal_display(&self, sys_id: &str, element: &str) -> String {
        let rows = self.tables.get("sys_journal_field");
        let entries = rows.into_iter().flatten().rev().filter(|r| {
            r.get("element_id").map(as_text).as_deref() == Some(sys_id)
                && r.get("element").map(as_text).as_deref() == Some(element)
        });
        entries
            .map(|entry| {
                let text = |f: &str| entry.get(f).map(as_text).unwrap_or_default();
                format!(
                    "{} - {} ({})\n{}\n\n",
                    servicenow_model::display_time(&text("sys_created_on"), self.time_zone_minutes),
                    self.full_name(&text("sys_created_by")),
                    servicenow_model::journal_label(element),
                    text("value")
                )
            })
            .collect()
    }

    /// A user's display name (`sys_user.name`), else the user name.
    fn full_name(&self, user_name: &str) -> String {
        self.tables
            .get("sys_user")
            .into_iter()
            .flatten()
            .find(|u| u.get("user_name").map(as_text).as_deref() == Some(user_name))
            .and_then(|u| u.get("name").map(as_text))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| user_name.to_owned())
    }
}

/// calculatePriority (§2.2): on insert, and on an update that writes impact or urgency, a
/// task's priority follows the matrix; impact and urgency default to 3 (Low). A priority
/// written directly is overwritten then.
fn priority_rule(table: &str, record: &mut Map<String, Value>, run: bool) {
    if !run || !servicenow_model::is_task_table(table) {
        return;
    }
    for field in ["impact", "urgency"] {
        if record
            .get(field)
            .map(as_text)
            .unwrap_or_default()
            .is_empty()
        {
            record.insert(field.into(), json!("3"));
        }
    }
    let impact = as_text(&record["impact"]);
    let urgency = as_text(&record["urgency"]);
    if let Some(priority) = servicenow_model::calculate_priority(&impact, &urgency) {
        record.insert("priority".into(), json!(priority));
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
    /// Drops the conditions and orderings on fields `valid` rejects, and conditions with an
    /// unknown operator: an instance ignores invalid parts and applies the rest (§1.2).
    fn drop_invalid(&mut self, valid: impl Fn(&str) -> bool) {
        for groups in &mut self.clauses {
            for group in groups.iter_mut() {
                group.retain(|(field, op, _)| op != "?" && valid(field));
            }
            groups.retain(|group| !group.is_empty());
        }
        self.order.retain(|(field, _)| valid(field));
    }

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
