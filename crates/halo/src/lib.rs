//! A Halo instance reached through its REST API (`../shared/reference/halo-api.md`): OAuth
//! client credentials, a cached token refreshed shortly before it expires and once on a 401,
//! and JSON array bodies for creates and updates.

pub mod config;
mod integration;
pub mod setup;
pub mod steps;
mod trigger;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

pub use config::{HaloConfig, HaloConnectionConfig, IdempotencyField};
pub use haloflow_core::json::id_of;
use haloflow_core::outbound::{Field, Outbound, OutboundRequest, OutboundResponse};
use haloflow_core::secrets::Secret;
use haloflow_core::step::StepError;
pub use integration::{HALO, Halo, HaloConnections, build_connection};
pub use trigger::HaloIncidents;

/// Halo's largest page (`page_size`: "Maximum size: 100").
const PAGE_SIZE: usize = 100;

/// The most pages of child tickets read for one parent.
pub const MAX_CHILD_PAGES: usize = 20;

/// How many of the newest tickets a lookup after a lost create answer reads.
const LOOKUP_WINDOW: usize = 50;

/// Halo's clock and ours may differ: a ticket that occurred this much before an attempt
/// started may still be the attempt's.
pub const CLOCK_SKEW_MS: i64 = 10 * 60 * 1000;

/// What [`HaloConnection::find_created_ticket`] looks for.
#[derive(Debug, Clone, Copy)]
pub struct CreatedTicketSearch<'a> {
    /// The idempotency key the create wrote.
    pub key: &'a str,
    /// The client the create named, if any (narrows the search with a documented filter).
    pub client_id: Option<i64>,
    /// When the first attempt started (ms since the epoch). Tickets that occurred before it
    /// cannot be its; `None` when that is unknown or the create set `dateoccurred` itself.
    pub since_ms: Option<i64>,
}

impl IdempotencyField {
    /// Writes `key` where this field lives, unless the body already sets that field.
    pub fn stamp(self, body: &mut Map<String, Value>, key: &str) {
        match self {
            IdempotencyField::ThirdPartyIdString => {
                body.entry("third_party_id_string")
                    .or_insert_with(|| json!(key));
            }
            IdempotencyField::CustomField(id) => {
                let fields = body
                    .entry("customfields")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(fields) = fields
                    && !fields
                        .iter()
                        .any(|f| f.get("id").and_then(id_of) == Some(id))
                {
                    fields.push(json!({"id": id, "value": key}));
                }
            }
            IdempotencyField::None => {}
        }
    }

    /// Whether the flow's own body sets this field (then it cannot carry the key).
    pub fn is_set_in(self, body: &Map<String, Value>) -> bool {
        match self {
            IdempotencyField::ThirdPartyIdString => body.contains_key("third_party_id_string"),
            IdempotencyField::CustomField(id) => body
                .get("customfields")
                .and_then(Value::as_array)
                .is_some_and(|f| f.iter().any(|f| f.get("id").and_then(id_of) == Some(id))),
            IdempotencyField::None => false,
        }
    }

    /// The field's text in a ticket as Halo answers it; `None` when the ticket does not carry
    /// the field at all (a list view).
    fn read(self, ticket: &Value) -> Option<&str> {
        match self {
            IdempotencyField::ThirdPartyIdString => ticket
                .get("third_party_id_string")
                .map(|v| v.as_str().unwrap_or_default()),
            IdempotencyField::CustomField(id) => {
                let fields = ticket.get("customfields")?.as_array()?;
                Some(
                    fields
                        .iter()
                        .find(|f| f.get("id").and_then(id_of) == Some(id))
                        .and_then(|f| f.get("value"))
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                )
            }
            IdempotencyField::None => None,
        }
    }

    fn describe(self) -> String {
        match self {
            IdempotencyField::ThirdPartyIdString => "third_party_id_string".into(),
            IdempotencyField::CustomField(id) => format!("custom field {id}"),
            IdempotencyField::None => "idempotency field".into(),
        }
    }
}

/// The tickets of a `GET /Tickets` answer (`{record_count, tickets}`).
fn tickets_of(answer: &Value) -> Vec<Value> {
    answer
        .get("tickets")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// When a ticket occurred (`dateoccurred`, UTC with or without an offset), in ms.
fn occurred_ms(ticket: &Value) -> Option<i64> {
    let text = ticket.get("dateoccurred")?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .ok()
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc().timestamp_millis())
        })
}

#[derive(Debug)]
pub struct HaloConnection {
    name: String,
    config: HaloConnectionConfig,
    client_secret: Secret,
    token: haloflow_core::outbound::TokenCache,
    /// The tenant's outcomes (name, id), read once.
    outcomes: Mutex<Option<Vec<(String, i64)>>>,
    /// Paces requests under the tenant's rolling-window limit; `None` when turned off.
    pacer: Option<Pacer>,
}

#[derive(Debug, Clone)]
struct BearerToken {
    access_token: Secret,
    /// Fetched for this call rather than taken from the cache.
    fresh: bool,
}

/// Paces requests to at most `limit` in any rolling `window`, Halo's own rule (§6). A sliding
/// log, exact where a token bucket would let up to twice the limit through a window that
/// straddles a burst. Halo counts a request when it arrives, which is some time between its
/// sending and its answer: a request holds a slot while it is in flight and counts from its
/// answer after, so no window of Halo's can see more than `limit` however long the network or
/// a busy machine delays a request.
#[derive(Debug)]
struct Pacer {
    limit: usize,
    window: Duration,
    state: std::sync::Mutex<PacerState>,
    /// Told when a request is answered, for those waiting while every slot is in flight.
    answered: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct PacerState {
    in_flight: usize,
    /// When the requests of the last window were answered, oldest first.
    answered: std::collections::VecDeque<Instant>,
}

/// A request's place in the window; dropping it (answered, failed or cancelled) counts it
/// from that moment.
struct PaceSlot<'a>(&'a Pacer);

impl Drop for PaceSlot<'_> {
    fn drop(&mut self) {
        let pacer = self.0;
        let mut state = pacer.state.lock().unwrap_or_else(|p| p.into_inner());
        state.in_flight -= 1;
        state.answered.push_back(Instant::now());
        drop(state);
        pacer.answered.notify_waiters();
    }
}

impl Pacer {
    fn new(limit: u32, window: Duration) -> Option<Pacer> {
        (limit > 0 && !window.is_zero()).then(|| Pacer {
            limit: limit as usize,
            window,
            state: Default::default(),
            answered: tokio::sync::Notify::new(),
        })
    }

    /// One more request's slot if it fits in the window now; else how long until the oldest
    /// answer leaves the window (None: every slot is in flight, wait for an answer).
    fn try_acquire(&self) -> Result<PaceSlot<'_>, Option<Duration>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while (state.answered.front()).is_some_and(|t| now.duration_since(*t) >= self.window) {
            state.answered.pop_front();
        }
        if state.in_flight + state.answered.len() < self.limit {
            state.in_flight += 1;
            return Ok(PaceSlot(self));
        }
        Err((state.answered.front()).map(|t| self.window - now.duration_since(*t)))
    }

    /// Waits until one more request fits in the window, and holds its slot.
    async fn acquire(&self) -> PaceSlot<'_> {
        loop {
            // Registered before the state is read, so an answer in between is not missed.
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let wait = match self.try_acquire() {
                Ok(slot) => return slot,
                Err(wait) => wait,
            };
            match wait {
                // The oldest answer leaves the window then.
                Some(wait) => tokio::time::sleep(wait).await,
                // Every slot is in flight: the first answer starts a window to wait out.
                None => answered.await,
            }
        }
    }
}

impl HaloConnection {
    pub fn new(name: String, config: HaloConnectionConfig, client_secret: Secret) -> Self {
        let pacer = Pacer::new(
            config.rate_limit_requests,
            Duration::from_secs(config.rate_limit_window_secs),
        );
        HaloConnection {
            name,
            config,
            client_secret,
            token: Default::default(),
            outcomes: Mutex::new(None),
            pacer,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where creates carry their idempotency key (checked when the config loads).
    pub fn idempotency_field(&self) -> IdempotencyField {
        self.config
            .idempotency()
            .unwrap_or(IdempotencyField::ThirdPartyIdString)
    }

    /// The id of the tenant's outcome called `name` (case-insensitive), from `GET /Outcome`
    /// read once and cached. `Ok(None)` when the list cannot be read (the API agent may lack
    /// the permission): the action then names its outcome and Halo resolves it.
    pub async fn outcome_id(&self, http: &Outbound, name: &str) -> Result<Option<i64>, StepError> {
        let mut cached = self.outcomes.lock().await;
        if cached.is_none() {
            let listed = match self.get(http, "Outcome").await {
                Ok(Value::Array(outcomes)) => outcomes,
                Ok(_) => return Ok(None),
                Err(StepError::Status { status, .. }) if status == 403 || status == 404 => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            let pairs = listed
                .iter()
                .filter_map(|o| {
                    Some((
                        o.get("outcome")?.as_str()?.to_owned(),
                        o.get("id").and_then(id_of)?,
                    ))
                })
                .collect();
            *cached = Some(pairs);
        }
        let outcomes = cached.as_ref().expect("filled above");
        match outcomes
            .iter()
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name.trim()))
        {
            Some((_, id)) => Ok(Some(*id)),
            None => Err(StepError::Input {
                pointer: "/outcome".into(),
                message: format!(
                    "Halo ([halo.{}]) has no outcome called `{name}`; its outcomes are: {}. Use one of these names or give outcome_id",
                    self.name,
                    outcomes
                        .iter()
                        .map(|(n, id)| format!("{n} ({id})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// The ids of a ticket's children, read page by page with the documented `parent_id` filter.
    /// Each listed ticket's own `parent_id` is checked too: older Halo versions ignore the
    /// filter and list every ticket, so at most [`MAX_CHILD_PAGES`] pages are read.
    pub async fn child_tickets(
        &self,
        http: &Outbound,
        parent_id: i64,
    ) -> Result<Vec<i64>, StepError> {
        let mut children = Vec::new();
        for page in 1..=MAX_CHILD_PAGES {
            let path = format!(
                "Tickets?parent_id={parent_id}&pageinate=true&page_size={PAGE_SIZE}&page_no={page}"
            );
            let answer = self.get(http, &path).await?;
            let listed = tickets_of(&answer);
            children.extend(listed.iter().filter_map(|t| {
                let parent = t.get("parent_id").and_then(id_of);
                t.get("id")
                    .and_then(id_of)
                    .filter(|_| parent == Some(parent_id))
            }));
            let total = answer
                .get("record_count")
                .and_then(Value::as_u64)
                .unwrap_or(0) as usize;
            if listed.len() < PAGE_SIZE || page * PAGE_SIZE >= total {
                return Ok(children);
            }
        }
        Err(StepError::Failed(format!(
            "Halo ([halo.{}]) listed more than {} tickets for parent_id={parent_id}; it may be ignoring the filter, as older versions do. Upgrade Halo or turn off sync_child_tickets",
            self.name,
            MAX_CHILD_PAGES * PAGE_SIZE
        )))
    }

    /// Finds the ticket an earlier attempt created with idempotency key `key` (its answer was
    /// lost). Only documented query parameters are used: the newest tickets (`order=id`,
    /// `orderdesc`, `count`, and `client_id` when known) are read newest first, each compared
    /// exactly on the key field (read from the ticket itself when the list view leaves the field
    /// out). `Ok(None)` only when every ticket that could be the one was seen; otherwise the
    /// outcome stays unknown and nothing is sent again.
    pub async fn find_created_ticket(
        &self,
        http: &Outbound,
        search: CreatedTicketSearch<'_>,
    ) -> Result<Option<Value>, StepError> {
        let field = self.idempotency_field();
        let unknown = |why: String| {
            StepError::OutcomeUnknown(format!(
                "an earlier attempt may have created the ticket and {why}; look in Halo for a ticket whose {} is `{}`, then replay the run from this step if there is none",
                field.describe(),
                search.key
            ))
        };
        if field == IdempotencyField::None {
            return Err(unknown(format!(
                "[halo.{}] has idempotency_field = \"none\", so it cannot be looked up",
                self.name
            )));
        }
        let mut path = format!("Tickets?order=id&orderdesc=true&count={LOOKUP_WINDOW}");
        if let Some(client) = search.client_id {
            path.push_str(&format!("&client_id={client}"));
        }
        let listed = tickets_of(&self.get(http, &path).await?);
        let mut saw_all = listed.len() < LOOKUP_WINDOW;
        let floor = search.since_ms.map(|ms| ms - CLOCK_SKEW_MS);
        for ticket in listed {
            if let Some(floor) = floor
                && occurred_ms(&ticket).is_some_and(|at| at < floor)
            {
                saw_all = true;
                break;
            }
            let Some(id) = ticket.get("id").and_then(id_of) else {
                continue;
            };
            let full = match field.read(&ticket) {
                Some(value) if value != search.key => continue,
                _ => self.get(http, &format!("Tickets/{id}")).await?,
            };
            if field.read(&full) == Some(search.key) {
                return Ok(Some(full));
            }
        }
        if saw_all {
            Ok(None)
        } else {
            Err(unknown(format!(
                "more than {LOOKUP_WINDOW} tickets were created since it started"
            )))
        }
    }

    /// Waits for a slot under the rate limit (none in a dry run); hold it until the answer.
    /// A run that must wait lends its execution slot meanwhile: a tenant's backlog waiting
    /// out its window leaves the engine's slots to other tenants' runs.
    async fn pace(&self, http: &Outbound) -> Option<PaceSlot<'_>> {
        match &self.pacer {
            Some(pacer) if http.dry_run_recorder().is_none() => Some(match pacer.try_acquire() {
                Ok(slot) => slot,
                Err(_) => http.wait_without_slot(pacer.acquire()).await,
            }),
            _ => None,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.timeout_secs)
    }

    /// `GET /api/{path}`.
    pub async fn get(&self, http: &Outbound, path: &str) -> Result<Value, StepError> {
        self.call(http, Method::GET, path, None).await
    }

    /// `POST /api/{path}` with `[object]`, Halo's shape for creates and updates (§2, §3);
    /// a one-element array answers the single object.
    pub async fn post_one(
        &self,
        http: &Outbound,
        path: &str,
        object: Value,
    ) -> Result<Value, StepError> {
        let answer = self
            .call(http, Method::POST, path, Some(Value::Array(vec![object])))
            .await?;
        match answer {
            Value::Array(mut items) if items.len() == 1 => Ok(items.remove(0)),
            other => Ok(other),
        }
    }

    /// `DELETE /api/{path}`.
    pub async fn delete(&self, http: &Outbound, path: &str) -> Result<Value, StepError> {
        self.call(http, Method::DELETE, path, None).await
    }

    /// Proves the credentials: a fresh token and a one-ticket read.
    pub async fn check(&self, http: &Outbound) -> Result<(), StepError> {
        self.token(http, true).await?;
        self.get(http, "Tickets?count=1").await.map(|_| ())
    }

    /// `GET /api/{path}` answered with raw bytes (an attachment's file, §4).
    pub async fn get_bytes(&self, http: &Outbound, path: &str) -> Result<Vec<u8>, StepError> {
        let (url, response) = self.exchange(http, Method::GET, path, None).await?;
        if response.is_success() {
            return Ok(response.body);
        }
        parse_answer(&Method::GET, &url, response).map(|_| Vec::new())
    }

    async fn call(
        &self,
        http: &Outbound,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, StepError> {
        let (url, response) = self.exchange(http, method.clone(), path, body).await?;
        parse_answer(&method, &url, response)
    }

    /// Sends with a token, refreshing it once on 401; any answer is returned.
    async fn exchange(
        &self,
        http: &Outbound,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(String, OutboundResponse), StepError> {
        let url = self.config.api_url(path);
        let mut refreshed = false;
        loop {
            let token = self.token(http, refreshed).await?;
            let slot = self.pace(http).await;
            let mut request = OutboundRequest::new(method.clone(), url.clone())
                .header(Field::secret(
                    "Authorization",
                    // Halo issues bearer tokens only (§1); HaloAPI builds "{token_type} {token}".
                    format!("Bearer {}", token.access_token.expose()),
                ))
                .header(Field::plain("Accept", "application/json"))
                .timeout(self.timeout());
            if let Some(body) = &body {
                request = request.json(body.clone());
            }
            let response = http.send(request).await;
            drop(slot);
            let response = response?;
            // One refresh on 401: the token may have been revoked before its expiry. Some Halo
            // versions answer an expired token with 400 (halo-api.md §1, n8n #16857), so a 400
            // to a cached token refreshes too; a 400 means nothing was done, so sending the
            // request again cannot duplicate it, and a real validation error comes back again.
            let stale = response.status == 401 || (response.status == 400 && !token.fresh);
            if stale && !refreshed {
                refreshed = true;
                continue;
            }
            return Ok((url, response));
        }
    }

    /// A valid token, from the cache unless `force_refresh`.
    async fn token(&self, http: &Outbound, force_refresh: bool) -> Result<BearerToken, StepError> {
        if let Some(recorder) = http.dry_run_recorder() {
            // A dry run shows the token request once, and sends nothing.
            if recorder.first_token_request(&self.name) {
                http.preview_only(&self.token_request());
            }
            return Ok(BearerToken {
                access_token: Secret::new("dry-run"),
                fresh: true,
            });
        }
        let (access_token, fresh) = self
            .token
            .get(force_refresh, || self.fetch_token(http))
            .await?;
        Ok(BearerToken {
            access_token,
            fresh,
        })
    }

    /// A new token and its lifespan in seconds.
    async fn fetch_token(&self, http: &Outbound) -> Result<(Secret, u64), StepError> {
        let request = self.token_request();
        let url = request.url.clone();
        let slot = self.pace(http).await;
        let response = http.send(request).await;
        drop(slot);
        let body = parse_answer(&Method::POST, &url, response?).map_err(|e| {
            e.with_credentials_hint(|| {
                format!(
                    "Check client_id and the secret `{}` of [halo.{}] (the Client ID changes when the Halo application is saved)",
                    self.config.client_secret_name, self.name
                )
            })
        })?;
        let (token, expires_in) =
            haloflow_core::outbound::granted_token(&body).ok_or_else(|| {
                StepError::Response(format!("token answer from {url} has no access_token"))
            })?;
        Ok((token, expires_in.unwrap_or(3600)))
    }

    fn token_request(&self) -> OutboundRequest {
        let mut url = self.config.token_url();
        if let Some(tenant) = &self.config.tenant {
            url = format!(
                "{url}?tenant={}",
                haloflow_core::outbound::encode_component(tenant)
            );
        }
        OutboundRequest::new(Method::POST, url)
            .header(Field::plain("Accept", "application/json"))
            .form(vec![
                Field::plain("grant_type", "client_credentials"),
                Field::plain("client_id", &self.config.client_id),
                Field::secret("client_secret", self.client_secret.expose()),
                Field::plain("scope", &self.config.scope),
            ])
            .timeout(self.timeout())
    }
}

/// 2xx with a JSON body (or none) is success; anything else becomes a [`StepError::Status`]
/// carrying Halo's own message from any of its error shapes (§6).
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
            StepError::Response(format!(
                "{method} {url} answered {} with a body that is not JSON",
                response.status
            ))
        });
    }
    Err(StepError::Status {
        method: method.to_string(),
        url: url.to_owned(),
        status: response.status,
        message: halo_error_message(&response),
        retry_after: response.retry_after,
    })
}

fn halo_error_message(response: &OutboundResponse) -> String {
    let text = response.text();
    let Some(body) = response.json() else {
        return truncate(text.trim());
    };
    let field = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
    let detail = field("MessageDetail")
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    let message = field("error_description")
        .or_else(|| validation_errors(&body))
        .or_else(|| field("errorMessage"))
        .or_else(|| field("Message").map(|m| format!("{m}{detail}")))
        .or_else(|| field("message"))
        .or_else(|| field("error"))
        .or_else(|| body.as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_string());
    truncate(&message)
}

/// ASP.NET's validation answer, keyed by field path: `{"[0].client_id": ["..."]}` (§6).
fn validation_errors(body: &Value) -> Option<String> {
    let map = body.as_object()?;
    let lines: Vec<String> = map
        .iter()
        .filter_map(|(path, messages)| {
            let messages = messages.as_array()?;
            let text: Vec<&str> = messages.iter().filter_map(Value::as_str).collect();
            Some(format!(
                "{}: {}",
                if path.is_empty() { "body" } else { path },
                text.join(" ")
            ))
        })
        .collect();
    (!lines.is_empty() && lines.len() == map.len()).then(|| lines.join("; "))
}

fn truncate(text: &str) -> String {
    const LIMIT: usize = 500;
    if text.len() <= LIMIT {
        return text.to_owned();
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Halo counts a request when it arrives, at the latest when it is answered: a request
    /// answered late keeps its place in the window until a window after its answer.
    #[tokio::test(start_paused = true)]
    async fn a_request_counts_in_the_window_from_its_answer() {
        let pacer = Pacer::new(2, Duration::from_secs(10)).unwrap();
        let start = Instant::now();
        let slow = pacer.acquire().await;
        drop(pacer.acquire().await);
        tokio::time::sleep(Duration::from_secs(4)).await;
        drop(slow); // answered 4 s after it was sent
        drop(pacer.acquire().await);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(10),
            "the quick one left"
        );
        drop(pacer.acquire().await);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(14),
            "the slow one left"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_slot_in_flight_the_next_waits_for_an_answer_and_a_window() {
        let pacer = Pacer::new(1, Duration::from_secs(10)).unwrap();
        let start = Instant::now();
        let first = pacer.acquire().await;
        let answer_later = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(first);
        };
        let (_, _second) = tokio::join!(answer_later, pacer.acquire());
        assert_eq!(start.elapsed(), Duration::from_secs(13));
    }
}
