//! A Halo API emulator (`../shared/reference/halo-api.md`): the OAuth token endpoint (§1),
//! tickets (§2) and actions (§3), with Halo's array bodies and error shapes (§6).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{
    Fault, InjectedFailure, RecordedRequest, RunningEmulator, ScheduledFault, dispatch, form_pairs,
    next_fault,
};

#[derive(Debug, Clone)]
pub struct HaloEmulatorConfig {
    pub client_id: String,
    pub client_secret: String,
    /// When set, token requests must carry `?tenant=<this>`.
    pub tenant: Option<String>,
    pub token_lifetime_secs: u64,
}

/// An in-memory Halo. Clones share the same state.
#[derive(Debug, Clone)]
pub struct HaloEmulator {
    state: Arc<Mutex<HaloState>>,
}

#[derive(Debug)]
struct HaloState {
    config: HaloEmulatorConfig,
    tokens: HashMap<String, Instant>,
    tokens_issued: usize,
    tickets: BTreeMap<i64, Value>,
    next_ticket_id: i64,
    actions: Vec<Value>,
    suppliers: BTreeMap<i64, Value>,
    /// Attachment metadata (with `ticket_id`) and file bytes.
    attachments: Vec<(Value, Vec<u8>)>,
    requests: Vec<RecordedRequest>,
    failures: Vec<InjectedFailure>,
    faults: Vec<ScheduledFault>,
    /// Halo's rolling-window rate limit (§6), when set: (requests, window, recent arrivals).
    rate_limit: Option<(usize, Duration, std::collections::VecDeque<Instant>)>,
}

/// An answer: status and JSON body.
type Answer = (u16, Value);

fn halo_error(status: u16, message: impl Into<String>) -> Answer {
    // One of the shapes Halo answers with (§6): `{"Message": ...}`.
    (status, json!({ "Message": message.into() }))
}

impl HaloEmulator {
    pub fn new(config: HaloEmulatorConfig) -> Self {
        HaloEmulator {
            state: Arc::new(Mutex::new(HaloState {
                config,
                tokens: HashMap::new(),
                tokens_issued: 0,
                tickets: BTreeMap::new(),
                next_ticket_id: 1000,
                actions: Vec::new(),
                suppliers: BTreeMap::new(),
                attachments: Vec::new(),
                requests: Vec::new(),
                failures: Vec::new(),
                faults: Vec::new(),
                rate_limit: None,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HaloState> {
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

    pub fn tickets(&self) -> Vec<Value> {
        self.lock().tickets.values().cloned().collect()
    }

    pub fn ticket(&self, id: i64) -> Option<Value> {
        self.lock().tickets.get(&id).cloned()
    }

    pub fn actions(&self) -> Vec<Value> {
        self.lock().actions.clone()
    }

    pub fn tokens_issued(&self) -> usize {
        self.lock().tokens_issued
    }

    /// Every issued token answers 401 from now on.
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// Seeds a ticket (its own `id` if it has one) and returns its id.
    pub fn insert_ticket(&self, ticket: Value) -> i64 {
        let mut state = self.lock();
        let mut ticket = match ticket {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let id = match ticket.get("id").and_then(as_id).filter(|id| *id > 0) {
            Some(id) => id,
            None => state.next_ticket_id,
        };
        state.next_ticket_id = state.next_ticket_id.max(id + 1);
        ticket.insert("id".into(), json!(id));
        state.tickets.insert(id, Value::Object(ticket));
        id
    }

    /// Seeds a supplier (`GET /api/Supplier/{id}`).
    pub fn insert_supplier(&self, supplier: Value) {
        if let Some(id) = supplier.get("id").and_then(as_id) {
            self.lock().suppliers.insert(id, supplier);
        }
    }

    /// Seeds an attachment of a ticket; `showforusers` says whether users see it (public).
    pub fn insert_attachment(
        &self,
        ticket_id: i64,
        filename: &str,
        public: bool,
        bytes: &[u8],
    ) -> i64 {
        let mut state = self.lock();
        let id = state.attachments.len() as i64 + 1;
        let meta = json!({"id": id, "ticket_id": ticket_id, "filename": filename,
                          "filesize": bytes.len(), "showforusers": public});
        state.attachments.push((meta, bytes.to_vec()));
        id
    }

    /// The next `times` requests matching method and path prefix answer `status`.
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

impl HaloEmulator {
    /// Answers 429 like Halo once more than `requests` arrive within any rolling `window`.
    pub fn limit_rate(&self, requests: usize, window: Duration) {
        self.lock().rate_limit = Some((requests, window, Default::default()));
    }

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

async fn handle(State(emulator): State<HaloEmulator>, request: Request<Body>) -> Response {
    let recorded = RecordedRequest::read(request).await;
    let fault = {
        let mut state = emulator.lock();
        let state = &mut *state;
        next_fault(&state.failures, &mut state.faults, &recorded)
    };
    dispatch(fault, move || answer(&emulator, recorded)).await
}

/// Handles a request normally (or with an injected error status) and records it.
fn answer(emulator: &HaloEmulator, mut recorded: RecordedRequest) -> Response {
    let mut state = emulator.lock();
    if let Some(bytes) = state.attachment_file(&recorded) {
        recorded.status = 200;
        state.requests.push(recorded);
        return ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response();
    }
    let injected = InjectedFailure::take(&mut state.failures, &recorded.method, &recorded.path);
    let (status, body, retry_after) = match injected {
        Some((status, retry_after)) => {
            let (status, body) = halo_error(status, "injected failure");
            (status, body, retry_after)
        }
        None => match state.over_rate_limit() {
            Some(message) => (429, json!({ "Message": message }), None),
            None => {
                let (status, body) = state.answer(&recorded);
                (status, body, None)
            }
        },
    };
    recorded.status = status;
    state.requests.push(recorded);
    drop(state);
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response();
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, seconds.into());
    }
    response
}

impl HaloState {
    /// `GET /api/Attachment/{id}` answers the raw file (§4), for a valid token.
    fn attachment_file(&self, request: &RecordedRequest) -> Option<Vec<u8>> {
        let path = request.path.to_ascii_lowercase();
        let id = path.strip_prefix("/api/attachment/")?.parse::<i64>().ok()?;
        if request.method != "GET" || self.check_bearer(request).is_err() {
            return None;
        }
        self.attachments
            .iter()
            .find(|(meta, _)| meta["id"].as_i64() == Some(id))
            .map(|(_, bytes)| bytes.clone())
    }

    /// Counts a request against the rate limit; the 429 message when it is over.
    fn over_rate_limit(&mut self) -> Option<String> {
        let (limit, window, recent) = self.rate_limit.as_mut()?;
        let now = Instant::now();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= *window)
        {
            recent.pop_front();
        }
        if recent.len() >= *limit {
            return Some(format!(
                "Rate Limit Reached - {limit} Requests per rolling {} second window",
                window.as_secs_f64()
            ));
        }
        recent.push_back(now);
        None
    }

    fn answer(&mut self, request: &RecordedRequest) -> Answer {
        let path = request.path.to_ascii_lowercase();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("POST", ["auth", "token"]) => self.issue_token(request),
            ("GET", ["api", "authinfo"]) => {
                let host = request.header("host").unwrap_or("localhost");
                (
                    200,
                    json!({"auth_url": format!("http://{host}/auth"), "tenant_id": self.config.tenant}),
                )
            }
            (_, ["api", ..]) => {
                if let Err(answer) = self.check_bearer(request) {
                    return answer;
                }
                if request.method == "POST" && !is_json(request.header("content-type")) {
                    return halo_error(415, "Content-Type must be application/json");
                }
                match (request.method.as_str(), &segments[1..]) {
                    ("POST", ["tickets"]) => self.post_tickets(request),
                    ("GET", ["tickets"]) => {
                        // `search` matches text fields and custom field values; `count` caps.
                        let search = request.query_param("search").map(|s| s.to_lowercase());
                        let parent = request
                            .query_param("parent_id")
                            .and_then(|p| p.parse::<i64>().ok());
                        let count = request
                            .query_param("count")
                            .and_then(|c| c.parse::<usize>().ok())
                            .unwrap_or(usize::MAX);
                        let tickets: Vec<Value> = self
                            .tickets
                            .values()
                            .filter(|t| search.as_deref().is_none_or(|s| ticket_matches(t, s)))
                            .filter(|t| {
                                parent.is_none_or(|p| t.get("parent_id").and_then(as_id) == Some(p))
                            })
                            .take(count)
                            .cloned()
                            .collect();
                        (
                            200,
                            json!({"record_count": tickets.len(), "tickets": tickets}),
                        )
                    }
                    ("GET", ["supplier", id]) => {
                        match id
                            .parse::<i64>()
                            .ok()
                            .and_then(|id| self.suppliers.get(&id))
                        {
                            Some(supplier) => (200, supplier.clone()),
                            None => halo_error(404, format!("Supplier {id} not found")),
                        }
                    }
                    ("GET", ["attachment"]) => {
                        let ticket_id = request
                            .query_param("ticket_id")
                            .and_then(|v| v.parse::<i64>().ok());
                        let listed: Vec<Value> = self
                            .attachments
                            .iter()
                            .filter(|(meta, _)| {
                                ticket_id.is_some() && meta["ticket_id"].as_i64() == ticket_id
                            })
                            .map(|(meta, _)| meta.clone())
                            .collect();
                        (
                            200,
                            json!({"record_count": listed.len(), "attachments": listed}),
                        )
                    }
                    ("GET", ["actions", id]) => {
                        let id = id.parse::<i64>().ok();
                        match self.actions.iter().find(|a| a["id"].as_i64() == id) {
                            Some(action) => (200, action.clone()),
                            None => halo_error(404, "Action not found"),
                        }
                    }
                    ("GET", ["tickets", id]) => {
                        match id.parse::<i64>().ok().and_then(|id| self.tickets.get(&id)) {
                            Some(ticket) => (200, ticket.clone()),
                            None => halo_error(404, format!("Ticket {id} not found")),
                        }
                    }
                    ("DELETE", ["tickets", id]) => match id
                        .parse::<i64>()
                        .ok()
                        .and_then(|id| self.tickets.remove(&id))
                    {
                        Some(_) => (200, Value::Null),
                        None => halo_error(404, format!("Ticket {id} not found")),
                    },
                    ("POST", ["actions"]) => self.post_actions(request),
                    ("GET", ["actions"]) => {
                        // Without ticket_id Halo lists nothing (§3).
                        let ticket_id = request
                            .query_param("ticket_id")
                            .and_then(|v| v.parse::<i64>().ok());
                        let actions: Vec<Value> = self
                            .actions
                            .iter()
                            .filter(|a| ticket_id.is_some() && a["ticket_id"].as_i64() == ticket_id)
                            .cloned()
                            .collect();
                        (
                            200,
                            json!({"record_count": actions.len(), "actions": actions}),
                        )
                    }
                    _ => halo_error(
                        404,
                        format!(
                            "No HTTP resource was found that matches {} {}",
                            request.method, request.path
                        ),
                    ),
                }
            }
            _ => halo_error(
                404,
                format!(
                    "No HTTP resource was found that matches {} {}",
                    request.method, request.path
                ),
            ),
        }
    }

    /// `POST /auth/token` with client credentials (§1).
    fn issue_token(&mut self, request: &RecordedRequest) -> Answer {
        if !request
            .header("content-type")
            .unwrap_or("")
            .starts_with("application/x-www-form-urlencoded")
        {
            return (
                400,
                json!({"error": "invalid_request", "error_description": "the token request must be form encoded"}),
            );
        }
        let form: HashMap<String, String> = form_pairs(&request.body).into_iter().collect();
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return (400, json!({"error": "unsupported_grant_type"}));
        }
        if let Some(tenant) = &self.config.tenant {
            let given = request.query_param("tenant");
            if given.as_deref() != Some(tenant.as_str()) {
                return (
                    400,
                    json!({"error": "invalid_request", "error_description": "unknown tenant"}),
                );
            }
        }
        if form.get("client_id") != Some(&self.config.client_id)
            || form.get("client_secret") != Some(&self.config.client_secret)
        {
            return (
                401,
                json!({"error": "invalid_client", "error_description": "The client credentials are invalid"}),
            );
        }
        let scope = form.get("scope").cloned().unwrap_or_default();
        let allowed = [
            "all",
            "all:standard",
            "admin",
            "edit:tickets",
            "read:tickets",
        ];
        if !scope.split(' ').any(|s| allowed.contains(&s)) {
            return (400, json!({"error": "invalid_scope"}));
        }
        let token = uuid::Uuid::new_v4().simple().to_string();
        let lifetime = Duration::from_secs(self.config.token_lifetime_secs);
        self.tokens.insert(token.clone(), Instant::now() + lifetime);
        self.tokens_issued += 1;
        (
            200,
            json!({"access_token": token, "token_type": "Bearer", "expires_in": self.config.token_lifetime_secs, "scope": scope}),
        )
    }

    fn check_bearer(&self, request: &RecordedRequest) -> Result<(), Answer> {
        let token = request
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "));
        match token.and_then(|t| self.tokens.get(t)) {
            Some(expiry) if Instant::now() < *expiry => Ok(()),
            _ => Err(halo_error(
                401,
                "Authorization has been denied for this request.",
            )),
        }
    }

    /// Creates and updates: always a JSON array (§2); a one-element array answers the object.
    fn post_tickets(&mut self, request: &RecordedRequest) -> Answer {
        let items = match array_body(request) {
            Ok(items) => items,
            Err(answer) => return answer,
        };
        for item in &items {
            match item.get("id").and_then(as_id).filter(|id| *id > 0) {
                Some(id) if !self.tickets.contains_key(&id) => {
                    return halo_error(400, format!("Ticket {id} does not exist"));
                }
                Some(_) => {}
                None => {
                    if item
                        .get("summary")
                        .and_then(Value::as_str)
                        .is_none_or(|s| s.trim().is_empty())
                    {
                        return halo_error(400, "Please enter a Summary");
                    }
                }
            }
        }
        let mut created = false;
        let mut answers = Vec::new();
        for item in items {
            match item.get("id").and_then(as_id).filter(|id| *id > 0) {
                Some(id) => {
                    let ticket = self.tickets.get_mut(&id).expect("checked above");
                    for (key, value) in item {
                        if key == "customfields" {
                            merge_custom_fields(ticket, value);
                        } else if key != "id" {
                            ticket[key] = value;
                        }
                    }
                    answers.push(ticket.clone());
                }
                None => {
                    created = true;
                    let id = self.next_ticket_id;
                    self.next_ticket_id += 1;
                    let mut ticket = json!({
                        "id": id, "status_id": 1, "priority_id": 4, "agent_id": 0, "team": "",
                        "customfields": [], "hasbeenclosed": false,
                        "dateoccurred": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    });
                    for (key, value) in item {
                        ticket[key] = value;
                    }
                    ticket["id"] = json!(id);
                    self.tickets.insert(id, ticket.clone());
                    answers.push(ticket);
                }
            }
        }
        let status = if created { 201 } else { 200 };
        if answers.len() == 1 {
            (status, answers.remove(0))
        } else {
            (status, Value::Array(answers))
        }
    }

    /// `POST /api/Actions`: an outcome is required; `new_status` moves the ticket (§3).
    fn post_actions(&mut self, request: &RecordedRequest) -> Answer {
        let items = match array_body(request) {
            Ok(items) => items,
            Err(answer) => return answer,
        };
        for item in &items {
            let ticket_id = item.get("ticket_id").and_then(as_id);
            if !ticket_id.is_some_and(|id| self.tickets.contains_key(&id)) {
                return halo_error(400, "Please select a valid Ticket");
            }
            let has_outcome = item
                .get("outcome")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
                || item.get("outcome_id").and_then(as_id).is_some();
            if !has_outcome {
                return halo_error(400, "An Outcome must be entered for this Action");
            }
        }
        let mut answers = Vec::new();
        for item in items {
            let ticket_id = item
                .get("ticket_id")
                .and_then(as_id)
                .expect("checked above");
            let mut action = Value::Object(item.into_iter().collect());
            let id = self.actions.len() as i64 + 1;
            action["id"] = json!(id);
            action["ticket_id"] = json!(ticket_id);
            action["datetime"] =
                json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            if let Some(status) = action.get("new_status").and_then(as_id) {
                self.tickets.get_mut(&ticket_id).expect("checked above")["status_id"] =
                    json!(status);
            }
            self.actions.push(action.clone());
            answers.push(action);
        }
        if answers.len() == 1 {
            (201, answers.remove(0))
        } else {
            (201, Value::Array(answers))
        }
    }
}

/// Halo's ticket search, approximated: summary, details, third_party_id and custom field values.
fn ticket_matches(ticket: &Value, search: &str) -> bool {
    let contains = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .is_some_and(|text| text.to_lowercase().contains(search))
    };
    ["summary", "details", "third_party_id"]
        .iter()
        .any(|key| contains(ticket.get(*key)))
        || ticket
            .get("customfields")
            .and_then(Value::as_array)
            .is_some_and(|fields| fields.iter().any(|f| contains(f.get("value"))))
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| {
        c.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/json")
    })
}

/// The body as an array of objects, Halo's shape for writes.
fn array_body(request: &RecordedRequest) -> Result<Vec<Map<String, Value>>, Answer> {
    let value: Value = serde_json::from_str(&request.body)
        .map_err(|e| halo_error(400, format!("The request is invalid: {e}")))?;
    let Value::Array(items) = value else {
        return Err(halo_error(400, "The request body must be a JSON array"));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Object(map) => Ok(map),
            _ => Err(halo_error(
                400,
                "Each element of the request body must be an object",
            )),
        })
        .collect()
}

/// Custom fields are written as `[{id, value}]` and merged by id.
fn merge_custom_fields(ticket: &mut Value, written: Value) {
    let Value::Array(written) = written else {
        return;
    };
    if !ticket["customfields"].is_array() {
        ticket["customfields"] = json!([]);
    }
    let fields = ticket["customfields"]
        .as_array_mut()
        .expect("just made an array");
    for field in written {
        let id = field.get("id").and_then(as_id);
        match fields
            .iter_mut()
            .find(|f| f.get("id").and_then(as_id) == id)
        {
            Some(existing) => {
                existing["value"] = field.get("value").cloned().unwrap_or(Value::Null)
            }
            None => fields.push(field),
        }
    }
}

/// Ids arrive as numbers, `3.0` or strings (§2).
fn as_id(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0)
            .map(|f| f as i64),
        _ => None,
    }
}
