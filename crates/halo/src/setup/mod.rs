//! Setting Halo up from haloflow: the webhooks a flow's trigger needs (one for tickets with an
//! agent, one for unassigned tickets, each with the "New Ticket Logged" event and the agent
//! rule), compared with what the tenant has, and the `POST /Webhook`, `POST /Notification`
//! and `DELETE` requests that bring it in step (halo-api.md §5).
//!
//! A webhook haloflow made carries a marker in its `note`
//! (`haloflow-marker: flow=<id> route=<assigned|unassigned> auth=<fingerprint>`) and its name
//! starts with `haloflow - <flow id>`; nothing without the marker is read as ours, changed or
//! deleted. Planning is pure ([`plan`], [`check`], [`removal`]); [`read_tenant`] and [`apply`]
//! talk to Halo.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use haloflow_core::flow::{TriggerAuth, ValidatedFlow};
use haloflow_core::flow::{trigger_url, with_recipients};
use haloflow_core::outbound::Outbound;
use haloflow_core::secrets::Secret;
use haloflow_core::step::StepError;

use crate::HaloConnection;

mod plan;
pub use plan::{Drift, HaloRequest, apply, check, mask_url, plan, removal};

/// The marker's prefix in a webhook's `note`.
pub const MARKER: &str = "haloflow-marker:";
/// "New Ticket Logged" (halo-api.md §5, from halopsa-node; one source).
pub const NEW_TICKET_LOGGED: i64 = 3;
/// `delivery_method` and `type` of a webhook's event (halo-api.md §5, one source).
const DELIVERY_WEBHOOK: i64 = 6;
const EVENT_TYPE_WEBHOOK: i64 = -2;
/// Rule types of a condition: undocumented; unverified values (README says so).
const RULE_EQUAL: i64 = 0;
const RULE_NOT_EQUAL: i64 = 1;
/// `authentication_type`: 0 None, 1 Basic (halo-api.md §5).
const AUTH_NONE: i64 = 0;
const AUTH_BASIC: i64 = 1;
/// Where a new webhook's id goes in its event's body until Halo has given it one.
pub const NEW_WEBHOOK_ID: &str = "<id of the new webhook>";

/// Which tickets a webhook is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Assigned,
    Unassigned,
}

impl Route {
    pub const ALL: [Route; 2] = [Route::Assigned, Route::Unassigned];

    pub fn as_str(self) -> &'static str {
        match self {
            Route::Assigned => "assigned",
            Route::Unassigned => "unassigned",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Route::Assigned => "Assigned",
            Route::Unassigned => "Unassigned",
        }
    }
}

/// What setting Halo up cannot do; the text names the flow, the connection and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "flow `{flow}`: its trigger authenticates with a header, which Halo's webhooks cannot send; switch the trigger's auth to url_key or basic"
    )]
    HeaderAuth { flow: String },
    #[error(
        "flow `{flow}`: the secret {name} of its trigger is not set; set the environment variable {name} (or a [secrets] entry)"
    )]
    MissingSecret { flow: String, name: String },
    #[error("flow `{flow}`, Halo connection [halo.{connection}]: {source}")]
    Halo {
        flow: String,
        connection: String,
        source: Box<StepError>,
    },
}

impl SetupError {
    /// Whether trying again later may succeed (Halo unreachable, rate limited).
    pub fn is_retryable(&self) -> bool {
        matches!(self, SetupError::Halo { source, .. } if source.is_retryable())
    }
}

/// The trigger a flow's webhooks point at.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub flow: &'a ValidatedFlow,
    /// The address Halo reaches haloflow at.
    pub base_url: &'a str,
    /// The recipients in the URL; `None` keeps the ones each existing webhook has (a new
    /// webhook then has none), so a run without them loses nothing.
    pub recipients: Option<&'a [String]>,
    /// The value of the trigger's secret (URL key or Basic password); `None` for no auth.
    pub secret: Option<&'a Secret>,
}

/// One webhook as the flow needs it, with its event.
#[derive(Debug, Clone)]
pub struct Desired {
    pub route: Route,
    /// A `Webhook` without `id`.
    pub webhook: Map<String, Value>,
    /// A `UnameNotification` without `id` and `webhook_id`.
    pub event: Map<String, Value>,
    /// No recipients were given: an existing webhook's stay as they are.
    pub keep_recipients: bool,
}

impl Desired {
    /// What `have` should be: this, with `have`'s recipients when they are kept.
    fn for_existing(&self, have: &Value) -> Desired {
        let mut want = self.clone();
        let have_url = have.get("url").and_then(Value::as_str).unwrap_or_default();
        let kept = have_url
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find(|p| p.starts_with("recipients=")));
        if let (true, Some(kept), Some(url)) =
            (self.keep_recipients, kept, want.webhook["url"].as_str())
        {
            let separator = if url.contains('?') { '&' } else { '?' };
            want.webhook["url"] = Value::String(format!("{url}{separator}{kept}"));
        }
        want
    }
}

/// The webhooks `target`'s flow needs.
pub fn desired(target: &Target<'_>) -> Result<Vec<Desired>, SetupError> {
    let flow = target.flow.id().to_owned();
    let auth = &target.flow.document.trigger.auth;
    let secret = match (auth.secret_name(), target.secret) {
        (Some(name), None) => {
            let name = name.to_owned();
            return Err(SetupError::MissingSecret { flow, name });
        }
        (_, secret) => secret,
    };
    let key = match auth {
        TriggerAuth::UrlKey { .. } => secret.map(Secret::expose),
        TriggerAuth::Header { .. } => return Err(SetupError::HeaderAuth { flow }),
        _ => None,
    };
    let recipients: Vec<&str> = target
        .recipients
        .into_iter()
        .flatten()
        .map(|r| r.trim())
        .collect();
    let recipients: Vec<&str> = recipients.into_iter().filter(|r| !r.is_empty()).collect();
    let url = with_recipients(&trigger_url(target.base_url, target.flow, key), &recipients);
    let fingerprint = match auth {
        TriggerAuth::Basic { .. } => secret.map_or("-".to_owned(), |s| fingerprint(&flow, s)),
        _ => "-".to_owned(),
    };
    Ok(Route::ALL
        .into_iter()
        .map(|route| Desired {
            route,
            webhook: webhook_body(&flow, route, &url, auth, secret, &fingerprint),
            event: event_body(&flow, route),
            keep_recipients: target.recipients.is_none(),
        })
        .collect())
}

fn webhook_body(
    flow: &str,
    route: Route,
    url: &str,
    auth: &TriggerAuth,
    secret: Option<&Secret>,
    fingerprint: &str,
) -> Map<String, Value> {
    let mut body = json!({
        "name": name(flow, route),
        "type": 0,
        "url": url,
        "method": 0,
        "content_type": "application/json",
        "custom_payload": false,
        "active": true,
        "authentication_type": AUTH_NONE,
        "note": format!(
            "Created by haloflow for flow `{flow}` ({} tickets). `haloflow halo setup {flow}` keeps it in step; changes made here are reported by `haloflow halo check {flow}`.\n{MARKER} flow={flow} route={} auth={fingerprint}",
            route.as_str(),
            route.as_str()
        ),
    });
    if let (TriggerAuth::Basic { username, .. }, Some(password)) = (auth, secret) {
        body["authentication_type"] = json!(AUTH_BASIC);
        body["basic_username"] = json!(username);
        body["basic_password"] = json!(password.expose());
    }
    match body {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The flow's webhooks as a person sets them up in Halo (the console's trigger setup): for
/// each route its name, URL, authentication, event and rule in words, and the bodies `setup`
/// would send. `url` is shown as given; no secret's value is added (a Basic password is left
/// out of the body).
pub fn describe(flow: &ValidatedFlow, url: &str) -> Vec<Value> {
    let id = flow.id();
    let auth = &flow.document.trigger.auth;
    let (authentication, username) = match auth {
        TriggerAuth::Basic { username, .. } => ("Basic", Some(username.as_str())),
        _ => ("None", None),
    };
    Route::ALL
        .into_iter()
        .map(|route| {
            let mut webhook = webhook_body(id, route, url, auth, None, "-");
            if let Some(username) = username {
                webhook.insert("authentication_type".into(), json!(AUTH_BASIC));
                webhook.insert("basic_username".into(), json!(username));
            }
            let rule = match route {
                Route::Assigned => "Agent is not Unassigned",
                Route::Unassigned => "Agent is Unassigned",
            };
            json!({
                "route": route.as_str(),
                "name": name(id, route),
                "url": url,
                "method": "POST",
                "content_type": "application/json",
                "authentication": authentication,
                "username": username,
                "event": "New Ticket Logged",
                "rule": rule,
                "halo": {"webhook": webhook, "event": event_body(id, route)},
            })
        })
        .collect()
}

fn name(flow: &str, route: Route) -> String {
    format!("haloflow - {flow} - {}", route.title())
}

/// "New Ticket Logged" with the agent rule: agent is (not) Unassigned (agent id 0).
fn event_body(flow: &str, route: Route) -> Map<String, Value> {
    let rule = match route {
        Route::Assigned => RULE_NOT_EQUAL,
        Route::Unassigned => RULE_EQUAL,
    };
    let body = json!({
        "name": name(flow, route),
        "type": EVENT_TYPE_WEBHOOK,
        "delivery_method": DELIVERY_WEBHOOK,
        "eventno": NEW_TICKET_LOGGED,
        "conditions": [{"fieldname": "agent_id", "type": rule, "value_int": 0, "value_display": "Unassigned"}],
    });
    match body {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A short hash of the Basic password, so a changed password is seen although Halo does not
/// read it back. Not reversible, and salted with the flow id.
fn fingerprint(flow: &str, secret: &Secret) -> String {
    let digest = Sha256::digest(format!("haloflow webhook\0{flow}\0{}", secret.expose()));
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The marker of a webhook's note: (flow, route, auth fingerprint).
fn marker(webhook: &Value) -> Option<(String, Route, String)> {
    let note = webhook.get("note")?.as_str()?;
    let line = note.lines().find_map(|l| l.trim().strip_prefix(MARKER))?;
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for pair in line.split_whitespace() {
        if let Some((k, v)) = pair.split_once('=') {
            fields.insert(k, v);
        }
    }
    let route = match *fields.get("route")? {
        "assigned" => Route::Assigned,
        "unassigned" => Route::Unassigned,
        _ => return None,
    };
    let auth = fields.get("auth").copied().unwrap_or("-").to_owned();
    Some(((*fields.get("flow")?).to_owned(), route, auth))
}

/// One of this flow's webhooks in the tenant, with its events.
#[derive(Debug, Clone)]
pub struct Existing {
    pub route: Route,
    pub webhook: Value,
    pub events: Vec<Value>,
}

impl Existing {
    fn id(&self) -> &str {
        self.webhook["id"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.webhook["name"].as_str().unwrap_or("(no name)")
    }
}

/// This flow's webhooks in the tenant (marked ones only) and their events.
pub async fn read_tenant(
    halo: &HaloConnection,
    http: &Outbound,
    flow: &str,
) -> Result<Vec<Existing>, SetupError> {
    let failed = |source| SetupError::Halo {
        flow: flow.to_owned(),
        connection: halo.name().to_owned(),
        source: Box::new(source),
    };
    let listed = halo.get(http, "Webhook").await.map_err(failed)?;
    let mut ours = Vec::new();
    for webhook in listed.as_array().into_iter().flatten() {
        let Some((marked_flow, route, _)) = marker(webhook) else {
            continue;
        };
        let Some(id) = webhook["id"].as_str().filter(|_| marked_flow == flow) else {
            continue;
        };
        let path = format!("Notification?webhook_id={id}");
        let events = halo.get(http, &path).await.map_err(failed)?;
        let events = events.as_array().cloned().unwrap_or_default();
        ours.push(Existing {
            route,
            webhook: webhook.clone(),
            events,
        });
    }
    Ok(ours)
}
