//! A Halo API emulator (`../shared/reference/halo-api.md`): the OAuth token endpoint (§1),
//! tickets (§2), actions (§3), suppliers, attachments (§4) and outcomes, with Halo's array
//! bodies and error shapes (§6). Every `/api` call is held to Halo's published contract
//! ([`HaloContract`]): an undocumented operation or query parameter fails, a body of the wrong
//! type answers 400, and what Halo would silently ignore (a property its schema does not have)
//! is dropped and recorded in [`HaloEmulator::warnings`], which tests assert empty.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::halo_contract::{HaloContract, Operation};

#[path = "halo_webhooks.rs"]
mod webhooks;
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
    /// The tenant's outcomes (`TOutcome`), which actions must name.
    outcomes: Vec<Value>,
    /// What Halo would have ignored, and answers that do not fit the schema.
    warnings: Vec<String>,
    /// The status an expired token is answered with: 401, or 400 as some Halo versions do (§1).
    expired_token_status: u16,
    /// Older Halo versions ignore `parent_id` on `GET /Tickets` and list every ticket.
    parent_filter: bool,
    /// Webhooks (`/Webhook`) and their events (`/Notification`).
    hooks: webhooks::Hooks,
}

/// A stock Halo's outcomes as an example tenant has them. Only 7 "Internal Note" is confirmed
/// (halo-api.md §3); outcome ids differ per tenant, which is why code resolves names.
const STOCK_OUTCOMES: &[(i64, &str)] = &[
    (1, "Respond"),
    (2, "Email User"),
    (3, "Private Note"),
    (4, "Change Status"),
    (5, "Reassign"),
    (7, "Internal Note"),
    (8, "Resolve"),
    (12, "Note"),
    (17, "Supplier Update"),
];

/// Lists answer this many records unless `count` or paging says otherwise (halo-api.md §2,
/// one source); a page holds at most 100 (the `page_size` parameter's documentation).
const DEFAULT_LIST_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 100;

/// An answer: status and JSON body.
type Answer = (u16, Value);

/// 200 with what was found, else Halo's 404 with `message`.
fn found(value: Option<&Value>, message: String) -> Answer {
    match value {
        Some(value) => (200, value.clone()),
        None => halo_error(404, message),
    }
}

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
                outcomes: STOCK_OUTCOMES
                    .iter()
                    .map(|(id, name)| json!({"id": id, "outcome": name, "buttonname": name}))
                    .collect(),
                warnings: Vec::new(),
                expired_token_status: 401,
                parent_filter: true,
                hooks: webhooks::Hooks::default(),
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

    /// What Halo would have ignored silently (a property its schema does not have), requests
    /// the contract refuses (an undocumented query parameter) and answers of the emulator that
    /// do not fit the schema. A test ends with this empty.
    pub fn warnings(&self) -> Vec<String> {
        self.lock().warnings.clone()
    }

    /// Every issued token expires now; an expired token is answered with `status` (401, or 400
    /// as some Halo versions answer it, §1). Unlike [`HaloEmulator::revoke_tokens`], the
    /// tokens are still known, only too old.
    pub fn expire_tokens(&self, status: u16) {
        let mut state = self.lock();
        state.expired_token_status = status;
        let now = Instant::now();
        for expiry in state.tokens.values_mut() {
            *expiry = now;
        }
    }

    /// Acts like an older Halo that ignores `parent_id` on `GET /Tickets`.
    pub fn ignore_parent_id_filter(&self) {
        self.lock().parent_filter = false;
    }

    pub fn tokens_issued(&self) -> usize {
        self.lock().tokens_issued
    }

    /// Every issued token answers 401 from now on.
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// Seeds a ticket (its own `id` if it has one) and returns its id. It is stored as Halo
    /// would hold it: properties its schema does not have (a webhook payload's ticket carries
    /// some) are dropped; a value of the wrong type is recorded as a warning.
    pub fn insert_ticket(&self, ticket: Value) -> i64 {
        let mut ticket = self.seed("Faults", ticket);
        let mut state = self.lock();
        let id = match ticket.get("id").and_then(id_of).filter(|id| *id > 0) {
            Some(id) => id,
            None => state.next_ticket_id,
        };
        state.next_ticket_id = state.next_ticket_id.max(id + 1);
        ticket.insert("id".into(), json!(id));
        state.tickets.insert(id, Value::Object(ticket));
        id
    }

    /// Seeds a supplier (`GET /api/Supplier/{id}`), a `Company` as Halo's schema has it.
    pub fn insert_supplier(&self, supplier: Value) {
        let supplier = self.seed("Company", supplier);
        if let Some(id) = supplier.get("id").and_then(id_of) {
            self.lock().suppliers.insert(id, Value::Object(supplier));
        }
    }

    /// Replaces the tenant's outcomes with `(id, name)` pairs.
    pub fn set_outcomes(&self, outcomes: &[(i64, &str)]) {
        self.lock().outcomes = outcomes
            .iter()
            .map(|(id, name)| json!({"id": id, "outcome": name, "buttonname": name}))
            .collect();
    }

    fn seed(&self, schema: &str, value: Value) -> Map<String, Value> {
        let contract = HaloContract::get();
        let mut value = match value {
            Value::Object(map) => Value::Object(map),
            _ => Value::Object(Map::new()),
        };
        contract.strip_unknown(schema, &mut value);
        let problems = contract.check_value(schema, &value);
        let mut state = self.lock();
        for problem in problems {
            state.warn(format!(
                "seeded `{schema}` does not fit Halo's schema: {problem}"
            ));
        }
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
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
            (_, ["api", ..]) => self.api(request).unwrap_or_else(|answer| answer),
            _ => not_found(request),
        }
    }

    /// A call to `/api/...`: authenticated, checked against the published contract (operation,
    /// query parameters, body schema), handled, and its answer checked against the schema.
    fn api(&mut self, request: &RecordedRequest) -> Result<Answer, Answer> {
        self.check_bearer(request)?;
        let contract = HaloContract::get();
        let api_path = &request.path["/api".len()..];
        let op = contract
            .operation(&request.method, api_path)
            .ok_or_else(|| not_found(request))?;
        let problems = op.check_query(&request.query_pairs());
        if !problems.is_empty() {
            let detail = problems.join(" ");
            self.warn(format!("{} {}: {detail}", request.method, request.path));
            return Err(invalid(detail));
        }
        let items = if request.method == "POST" {
            self.read_body(request, contract, op)?
        } else {
            Vec::new()
        };
        let answer = self.route(request, op, items)?;
        if (200..300).contains(&answer.0) {
            self.check_answer(request, contract, op, &answer.1);
        }
        Ok(answer)
    }

    /// Handles a documented operation with a checked body.
    fn route(
        &mut self,
        request: &RecordedRequest,
        op: &Operation,
        items: Vec<Value>,
    ) -> Result<Answer, Answer> {
        let id = || {
            let last = request.path.rsplit('/').next().unwrap_or_default();
            last.parse::<i64>()
                .map_err(|_| invalid(format!("The value '{last}' is not valid for id.")))
        };
        Ok(match (op.method.as_str(), op.path.as_str()) {
            ("POST", "/Tickets") => self.post_tickets(items),
            ("GET", "/Tickets") => self.list_tickets(request),
            ("GET", "/Tickets/{id}") => {
                let id = id()?;
                found(self.tickets.get(&id), format!("Ticket {id} not found"))
            }
            ("DELETE", "/Tickets/{id}") => {
                let id = id()?;
                match self.tickets.remove(&id) {
                    Some(_) => (200, Value::Null),
                    None => halo_error(404, format!("Ticket {id} not found")),
                }
            }
            ("POST", "/Actions") => self.post_actions(items),
            ("GET", "/Actions") => self.list_actions(request),
            ("GET", "/Actions/{id}") => {
                let id = id()?;
                let action = self.actions.iter().find(|a| a["id"].as_i64() == Some(id));
                found(action, "Action not found".into())
            }
            ("GET", "/Supplier/{id}") => {
                let id = id()?;
                found(self.suppliers.get(&id), format!("Supplier {id} not found"))
            }
            ("GET", "/Attachment") => self.list_attachments(request),
            ("GET", "/Outcome") => (200, Value::Array(self.outcomes.clone())),
            ("GET", "/Outcome/{id}") => {
                let id = id()?;
                let outcome = self.outcomes.iter().find(|o| o["id"].as_i64() == Some(id));
                found(outcome, format!("Outcome {id} not found"))
            }
            (method, path) if webhooks::Hooks::models(path) => {
                self.hooks_route(request, method, path, items)?
            }
            (method, path) => halo_error(
                501,
                format!("the Halo emulator does not model {method} {path} (it is documented)"),
            ),
        })
    }

    /// A write's body: JSON, of the operation's schema (a type error answers 400 in ASP.NET's
    /// shape, §6), with properties the schema does not know dropped as Halo drops them, and
    /// recorded as warnings.
    fn read_body(
        &mut self,
        request: &RecordedRequest,
        contract: &HaloContract,
        op: &Operation,
    ) -> Result<Vec<Value>, Answer> {
        if !is_json(request.header("content-type")) {
            return Err(halo_error(415, "Content-Type must be application/json"));
        }
        let body: Value = serde_json::from_str(&request.body)
            .map_err(|e| halo_error(400, format!("The request is invalid: {e}")))?;
        let check = contract.check_body(op, &body);
        if !check.errors.is_empty() {
            return Err((400, json!(check.errors)));
        }
        for pointer in &check.unknown {
            self.warn(format!(
                "{} {}: {pointer} is not in Halo's schema (Halo ignores it)",
                request.method, request.path
            ));
        }
        let items = match body {
            Value::Array(items) => items,
            other => vec![other],
        };
        Ok(match op.record_schema() {
            Some(name) => items
                .into_iter()
                .map(|mut item| {
                    contract.strip_unknown(name, &mut item);
                    item
                })
                .collect(),
            None => items,
        })
    }

    /// Every answer must fit the published schema of what it returns; a misfit is the
    /// emulator drifting from Halo, recorded as a warning.
    fn check_answer(
        &mut self,
        request: &RecordedRequest,
        contract: &HaloContract,
        op: &Operation,
        answer: &Value,
    ) {
        let Some(schema) = contract.record_schema_of(op) else {
            return;
        };
        let records: Vec<&Value> = match answer {
            Value::Array(items) => items.iter().collect(),
            Value::Object(map) if map.contains_key("record_count") => {
                if !map["record_count"].is_i64() {
                    self.warn(format!(
                        "answer to {} {}: record_count is not an integer",
                        request.method, request.path
                    ));
                }
                map.values().filter_map(Value::as_array).flatten().collect()
            }
            Value::Null => Vec::new(),
            other => vec![other],
        };
        for record in records {
            for problem in contract.check_value(schema, record) {
                self.warn(format!(
                    "answer to {} {} does not fit `{schema}`: {problem}",
                    request.method, request.path
                ));
            }
        }
    }

    fn warn(&mut self, warning: String) {
        self.warnings.push(warning);
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
            Some(_) => Err(halo_error(
                self.expired_token_status,
                "The access token has expired.",
            )),
            None => Err(halo_error(
                401,
                "Authorization has been denied for this request.",
            )),
        }
    }

    /// Creates and updates: a JSON array (§2); a one-element array answers the object. A user
    /// needs a site (halo-api.md §2, CIPP).
    fn post_tickets(&mut self, items: Vec<Value>) -> Answer {
        for item in &items {
            let existing = match item.get("id").and_then(id_of).filter(|id| *id > 0) {
                Some(id) => match self.tickets.get(&id) {
                    Some(ticket) => Some(ticket),
                    None => return halo_error(400, format!("Ticket {id} does not exist")),
                },
                None => None,
            };
            let given = |key: &str| {
                item.get(key)
                    .or_else(|| existing.and_then(|t| t.get(key)))
                    .and_then(id_of)
                    .filter(|id| *id > 0)
            };
            if existing.is_none()
                && item
                    .get("summary")
                    .and_then(Value::as_str)
                    .is_none_or(|s| s.trim().is_empty())
            {
                return halo_error(400, "Please enter a Summary");
            }
            if given("user_id").is_some() && given("site_id").is_none() {
                return halo_error(400, "A Site must be selected when a User is set");
            }
        }
        let mut created = false;
        let mut answers = Vec::new();
        for item in items {
            let Value::Object(item) = item else { continue };
            match item.get("id").and_then(id_of).filter(|id| *id > 0) {
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
                    answers.push(self.create_ticket(item));
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

    fn create_ticket(&mut self, item: Map<String, Value>) -> Value {
        let id = self.next_ticket_id;
        self.next_ticket_id += 1;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut ticket = json!({
            "id": id, "status_id": 1, "priority_id": 4, "agent_id": 0, "team": "",
            "customfields": [], "hasbeenclosed": false, "dateoccurred": now,
        });
        for (key, value) in item {
            ticket[key] = value;
        }
        ticket["id"] = json!(id);
        self.tickets.insert(id, ticket.clone());
        ticket
    }

    /// `GET /api/Tickets`: `{record_count, tickets}` with documented filters (`search` on
    /// summary and details, `parent_id`, `client_id`), `order=id`/`orderdesc`, `count`, and
    /// paging (`pageinate`, `page_size` up to 100, `page_no` from 1). Listed tickets are the
    /// list view: without custom fields, which only a ticket read returns.
    fn list_tickets(&self, request: &RecordedRequest) -> Answer {
        let param = |name: &str| request.query_param(name);
        let number = |name: &str| param(name).and_then(|v| v.trim().parse::<i64>().ok());
        let search = param("search").map(|s| s.to_lowercase());
        let parent = number("parent_id").filter(|_| self.parent_filter);
        let client = number("client_id");
        let mut tickets: Vec<&Value> = self
            .tickets
            .values()
            .filter(|t| search.as_deref().is_none_or(|s| ticket_matches(t, s)))
            .filter(|t| parent.is_none_or(|p| t.get("parent_id").and_then(id_of) == Some(p)))
            .filter(|t| client.is_none_or(|c| t.get("client_id").and_then(id_of) == Some(c)))
            .collect();
        if param("orderdesc").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            tickets.reverse();
        }
        let (listed, total) = page(&tickets, request);
        let listed: Vec<Value> = listed
            .into_iter()
            .map(|t| {
                let mut t = (*t).clone();
                if let Some(map) = t.as_object_mut() {
                    map.remove("customfields");
                }
                t
            })
            .collect();
        (200, json!({"record_count": total, "tickets": listed}))
    }

    /// `GET /api/Actions?ticket_id=`: without ticket_id Halo lists nothing (§3).
    fn list_actions(&self, request: &RecordedRequest) -> Answer {
        let ticket_id = request
            .query_param("ticket_id")
            .and_then(|v| v.parse::<i64>().ok());
        let actions: Vec<&Value> = self
            .actions
            .iter()
            .filter(|a| ticket_id.is_some() && a["ticket_id"].as_i64() == ticket_id)
            .collect();
        (
            200,
            json!({"record_count": actions.len(), "actions": actions}),
        )
    }

    fn list_attachments(&self, request: &RecordedRequest) -> Answer {
        let ticket_id = request
            .query_param("ticket_id")
            .and_then(|v| v.parse::<i64>().ok());
        let listed: Vec<&Value> = self
            .attachments
            .iter()
            .filter(|(meta, _)| ticket_id.is_some() && meta["ticket_id"].as_i64() == ticket_id)
            .map(|(meta, _)| meta)
            .collect();
        (
            200,
            json!({"record_count": listed.len(), "attachments": listed}),
        )
    }

    /// `POST /api/Actions`: the ticket must exist and the outcome must be one of the tenant's
    /// (by id or by name); the stored action carries both, as Halo answers it. `new_status`
    /// moves the ticket (§3).
    fn post_actions(&mut self, items: Vec<Value>) -> Answer {
        let mut outcomes = Vec::with_capacity(items.len());
        for item in &items {
            let ticket_id = item.get("ticket_id").and_then(id_of);
            if !ticket_id.is_some_and(|id| self.tickets.contains_key(&id)) {
                return halo_error(400, "Please select a valid Ticket");
            }
            match self.find_outcome(item) {
                Ok(outcome) => outcomes.push(outcome),
                Err(answer) => return answer,
            }
        }
        let mut answers = Vec::new();
        for (item, (outcome_id, outcome)) in items.into_iter().zip(outcomes) {
            let mut action = item;
            let ticket_id = action.get("ticket_id").and_then(id_of).expect("checked");
            let id = self.actions.len() as i64 + 1;
            action["id"] = json!(id);
            action["ticket_id"] = json!(ticket_id);
            action["outcome_id"] = json!(outcome_id);
            action["outcome"] = json!(outcome);
            action["datetime"] =
                json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            if let Some(status) = action.get("new_status").and_then(id_of) {
                self.tickets.get_mut(&ticket_id).expect("checked")["status_id"] = json!(status);
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

    /// The action's outcome from the tenant's list: by `outcome_id` when given, else by name.
    fn find_outcome(&self, action: &Value) -> Result<(i64, String), Answer> {
        let by_id = action
            .get("outcome_id")
            .and_then(id_of)
            .filter(|id| *id > 0);
        let by_name = action
            .get("outcome")
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty());
        let found = match (by_id, by_name) {
            (Some(id), _) => self.outcomes.iter().find(|o| o["id"].as_i64() == Some(id)),
            (None, Some(name)) => self.outcomes.iter().find(|o| {
                o["outcome"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            }),
            (None, None) => {
                return Err(halo_error(
                    400,
                    "An Outcome must be entered for this Action",
                ));
            }
        };
        match found {
            Some(o) => Ok((
                o["id"].as_i64().unwrap_or_default(),
                o["outcome"].as_str().unwrap_or_default().to_owned(),
            )),
            None => Err(halo_error(
                400,
                format!(
                    "The Outcome {} does not exist",
                    by_id.map_or_else(
                        || format!("'{}'", by_name.unwrap_or_default()),
                        |id| id.to_string()
                    )
                ),
            )),
        }
    }
}

/// The page of `records` a list request asks for, and how many match in all.
fn page<'a>(records: &[&'a Value], request: &RecordedRequest) -> (Vec<&'a Value>, usize) {
    let number = |name: &str| {
        request
            .query_param(name)
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    let paged = request
        .query_param("pageinate")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let (skip, take) = if paged {
        let size = number("page_size")
            .unwrap_or(DEFAULT_LIST_SIZE)
            .clamp(1, MAX_PAGE_SIZE);
        let page_no = number("page_no").unwrap_or(1).max(1);
        ((page_no - 1) * size, size)
    } else {
        (0, number("count").unwrap_or(DEFAULT_LIST_SIZE))
    };
    let listed = records.iter().skip(skip).take(take).copied().collect();
    (listed, records.len())
}

/// Halo's ticket search, approximated by what it surely covers: summary and details.
fn ticket_matches(ticket: &Value, search: &str) -> bool {
    ["summary", "details"].iter().any(|key| {
        ticket
            .get(*key)
            .and_then(Value::as_str)
            .is_some_and(|text| text.to_lowercase().contains(search))
    })
}

fn not_found(request: &RecordedRequest) -> Answer {
    halo_error(
        404,
        format!(
            "No HTTP resource was found that matches {} {}",
            request.method, request.path
        ),
    )
}

/// ASP.NET's answer to a request it cannot bind.
fn invalid(detail: impl Into<String>) -> Answer {
    (
        400,
        json!({"Message": "The request is invalid.", "MessageDetail": detail.into()}),
    )
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| {
        c.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/json")
    })
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
        let id = field.get("id").and_then(id_of);
        match fields
            .iter_mut()
            .find(|f| f.get("id").and_then(id_of) == id)
        {
            Some(existing) => {
                existing["value"] = field.get("value").cloned().unwrap_or(Value::Null)
            }
            None => fields.push(field),
        }
    }
}

/// An id as Halo reads one in a request: a number, `"42"` or `"42.0"` (Halo sends and takes all
/// three); nothing else.
fn id_of(value: &Value) -> Option<i64> {
    let number = match value {
        Value::Number(n) if n.is_i64() => return n.as_i64(),
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (number.fract() == 0.0).then_some(number as i64)
}
