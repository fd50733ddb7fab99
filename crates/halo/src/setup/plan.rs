//! What differs between the webhooks a flow needs and the tenant's, and the requests that
//! bring the tenant in step.

use std::collections::HashMap;

use reqwest::Method;
use serde_json::{Map, Value, json};

use haloflow_core::outbound::Outbound;

use super::{Desired, Existing, NEW_WEBHOOK_ID, Route, SetupError, marker};
use crate::HaloConnection;

/// One request to Halo's API (`path` under `/api/`), for the webhook of `route`.
#[derive(Debug, Clone)]
pub struct HaloRequest {
    pub route: Route,
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
}

impl HaloRequest {
    fn post(route: Route, path: &str, object: Map<String, Value>) -> HaloRequest {
        HaloRequest {
            route,
            method: Method::POST,
            path: path.to_owned(),
            body: Some(Value::Array(vec![Value::Object(object)])),
        }
    }

    fn delete(route: Route, path: String) -> HaloRequest {
        HaloRequest {
            route,
            method: Method::DELETE,
            path,
            body: None,
        }
    }

    /// `METHOD /api/path` and the JSON body, with the password and the URL key masked.
    pub fn masked(&self) -> String {
        let mut text = format!("{} /api/{}", self.method, self.path);
        if let Some(body) = &self.body {
            let mut body = body.clone();
            for item in body.as_array_mut().into_iter().flatten() {
                if item.get("basic_password").is_some() {
                    item["basic_password"] = json!("***");
                }
                if let Some(url) = item.get("url").and_then(Value::as_str) {
                    item["url"] = json!(mask_url(url));
                }
            }
            text.push_str(&format!(" {body}"));
        }
        text
    }
}

/// A URL with every query value but `recipients` shown as `***` (a URL key is a secret).
pub fn mask_url(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("recipients", _)) => pair.to_owned(),
            Some((name, _)) => format!("{name}=***"),
            None => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", pairs.join("&"))
}

/// One way the tenant differs from what the flow needs, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// The webhook's name.
    pub webhook: String,
    pub what: String,
    pub fix: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}. Fix: {}", self.webhook, self.what, self.fix)
    }
}

/// Every drift of the tenant's webhooks from `desired`; `setup_command` is the command that
/// repairs it (`haloflow halo setup <flow>` with the options the check was given), named in
/// each fix.
pub fn check(setup_command: &str, desired: &[Desired], existing: &[Existing]) -> Vec<Drift> {
    let setup = format!("run `{setup_command}`");
    let mut drifts = Vec::new();
    for want in desired {
        let mine: Vec<&Existing> = existing.iter().filter(|e| e.route == want.route).collect();
        let Some(have) = mine.first() else {
            let webhook = want.webhook["name"].as_str().unwrap_or_default().to_owned();
            let what = "missing: Halo has no webhook for these tickets".to_owned();
            drifts.push(Drift {
                webhook,
                what,
                fix: setup.clone(),
            });
            continue;
        };
        let want = &want.for_existing(&have.webhook);
        let drift = |what: String, fix: &str| Drift {
            webhook: have.name().to_owned(),
            what,
            fix: fix.to_owned(),
        };
        for what in webhook_drift(want, have) {
            let fix = if what.starts_with("disabled") {
                format!(
                    "see why deliveries failed (the webhook's Deliveries tab), then {setup} to enable it"
                )
            } else {
                setup.clone()
            };
            drifts.push(drift(what, &fix));
        }
        if !have.events.iter().any(|e| event_matches(&want.event, e)) {
            let what = "events: no \"New Ticket Logged\" event with the agent rule".to_owned();
            drifts.push(drift(what, &setup));
        }
        for extra in &mine[1..] {
            let what = format!(
                "a second webhook for {} tickets ({})",
                want.route.as_str(),
                extra.name()
            );
            drifts.push(drift(what, &format!("{setup} (it deletes the copy)")));
        }
    }
    drifts
}

/// The differences of `have`'s webhook from `want`'s, in words (no secret in them).
fn webhook_drift(want: &Desired, have: &Existing) -> Vec<String> {
    let mut found = Vec::new();
    let field = |key: &str| have.webhook.get(key).cloned().unwrap_or(Value::Null);
    if field("active") == json!(false) {
        found.push("disabled (Halo turns a webhook off after failed deliveries)".to_owned());
    }
    let want_url = want.webhook["url"].as_str().unwrap_or_default();
    found.extend(url_drift(
        want_url,
        field("url").as_str().unwrap_or_default(),
    ));
    let want_auth = marker(&Value::Object(want.webhook.clone())).map(|m| m.2);
    if want_auth != marker(&have.webhook).map(|m| m.2) {
        found.push("key: the Basic password is not the flow's current one".to_owned());
    }
    for (key, value) in &want.webhook {
        let skip = ["active", "url", "note", "basic_password", "name"];
        if !skip.contains(&key.as_str()) && &field(key) != value {
            found.push(format!("{key} is {} instead of {value}", field(key)));
        }
    }
    found
}

/// URL drift in words: where it points, its key, its recipients.
fn url_drift(want: &str, have: &str) -> Vec<String> {
    if want == have {
        return Vec::new();
    }
    let parts = |url: &str| -> (String, HashMap<String, String>) {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let pairs = query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        (base.to_owned(), pairs)
    };
    let ((want_base, mut want_q), (have_base, mut have_q)) = (parts(want), parts(have));
    let mut found = Vec::new();
    if want_base != have_base {
        found.push(format!("URL: points at {have_base} instead of {want_base}"));
    }
    let (want_r, have_r) = (want_q.remove("recipients"), have_q.remove("recipients"));
    if want_r != have_r {
        let show = |r: Option<String>| r.unwrap_or_else(|| "none".to_owned());
        found.push(format!(
            "recipients: {} instead of {}",
            show(have_r),
            show(want_r)
        ));
    }
    if want_q != have_q {
        found
            .push("key: the URL key in the webhook's URL is not the flow's current key".to_owned());
    }
    if found.is_empty() {
        found.push(format!(
            "URL: {} instead of {}",
            mask_url(have),
            mask_url(want)
        ));
    }
    found
}

/// Whether an event is the one `want` describes (the fields haloflow sets).
fn event_matches(want: &Map<String, Value>, have: &Value) -> bool {
    let same = |key: &str| have.get(key) == want.get(key);
    let conditions = |value: Option<&Value>| -> Vec<Value> {
        value
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| json!([c.get("fieldname"), c.get("type"), c.get("value_int")]))
            .collect()
    };
    same("eventno")
        && same("type")
        && same("delivery_method")
        && conditions(want.get("conditions")) == conditions(have.get("conditions"))
}

/// The requests that make the tenant's webhooks for the flow what `desired` says. Empty when
/// they already are.
pub fn plan(desired: &[Desired], existing: &[Existing]) -> Vec<HaloRequest> {
    let mut requests = Vec::new();
    for want in desired {
        let mine: Vec<&Existing> = existing.iter().filter(|e| e.route == want.route).collect();
        let Some(have) = mine.first() else {
            requests.push(HaloRequest::post(
                want.route,
                "Webhook",
                want.webhook.clone(),
            ));
            let mut event = want.event.clone();
            event.insert("webhook_id".into(), json!(NEW_WEBHOOK_ID));
            requests.push(HaloRequest::post(want.route, "Notification", event));
            continue;
        };
        let want = &want.for_existing(&have.webhook);
        if !webhook_drift(want, have).is_empty() {
            let mut webhook = Map::from_iter([("id".to_owned(), json!(have.id()))]);
            webhook.extend(want.webhook.clone());
            requests.push(HaloRequest::post(want.route, "Webhook", webhook));
        }
        requests.extend(plan_events(want, have));
        requests.extend(mine[1..].iter().flat_map(|extra| remove_one(extra)));
    }
    requests
}

/// The event requests of one existing webhook: keep one matching event, fix or add one, and
/// delete the rest (they are on haloflow's webhook).
fn plan_events(want: &Desired, have: &Existing) -> Vec<HaloRequest> {
    let keep = have
        .events
        .iter()
        .position(|e| event_matches(&want.event, e));
    let mut requests = Vec::new();
    let mut event = want.event.clone();
    event.insert("webhook_id".into(), json!(have.id()));
    let reuse = match keep {
        Some(index) => Some(index),
        None if !have.events.is_empty() => {
            event.insert("id".into(), have.events[0]["id"].clone());
            requests.push(HaloRequest::post(want.route, "Notification", event));
            Some(0)
        }
        None => {
            requests.push(HaloRequest::post(want.route, "Notification", event));
            None
        }
    };
    for (index, extra) in have.events.iter().enumerate() {
        if Some(index) != reuse {
            let path = format!("Notification/{}", extra["id"]);
            requests.push(HaloRequest::delete(want.route, path));
        }
    }
    requests
}

fn remove_one(existing: &Existing) -> Vec<HaloRequest> {
    let mut requests: Vec<HaloRequest> = existing
        .events
        .iter()
        .map(|e| HaloRequest::delete(existing.route, format!("Notification/{}", e["id"])))
        .collect();
    let path = format!("Webhook/{}", existing.id());
    requests.push(HaloRequest::delete(existing.route, path));
    requests
}

/// The requests that delete the flow's webhooks and their events (marked ones only).
pub fn removal(existing: &[Existing]) -> Vec<HaloRequest> {
    existing.iter().flat_map(remove_one).collect()
}

/// Sends `requests` in order; a new webhook's id goes into its event's `webhook_id`.
pub async fn apply(
    halo: &HaloConnection,
    http: &Outbound,
    flow: &str,
    requests: &[HaloRequest],
) -> Result<(), SetupError> {
    let failed = |source| SetupError::Halo {
        flow: flow.to_owned(),
        connection: halo.name().to_owned(),
        source: Box::new(source),
    };
    let mut created: HashMap<Route, Value> = HashMap::new();
    for request in requests {
        let Some(Value::Array(items)) = &request.body else {
            halo.delete(http, &request.path).await.map_err(failed)?;
            continue;
        };
        let mut object = items.first().cloned().unwrap_or_default();
        if object["webhook_id"] == json!(NEW_WEBHOOK_ID) {
            object["webhook_id"] = created.get(&request.route).cloned().unwrap_or_default();
        }
        let answer = halo
            .post_one(http, &request.path, object)
            .await
            .map_err(failed)?;
        if request.path == "Webhook" {
            created.insert(request.route, answer["id"].clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use haloflow_core::flow::FlowValidator;
    use haloflow_core::step::StepRegistry;

    use super::super::{Target, desired};
    use super::*;
    use haloflow_core::secrets::Secret;

    fn flow(auth: Value) -> haloflow_core::flow::ValidatedFlow {
        let mut registry = StepRegistry::new();
        registry.register(crate::steps::GetTicket).unwrap();
        let trigger = std::sync::Arc::new(crate::HaloIncidents);
        registry.register_trigger(trigger).unwrap();
        let document = json!({"id": "f", "name": "n",
            "trigger": {"type": "halo.incidents", "auth": auth},
            "steps": [{"id": "a", "type": "halo.get_ticket", "inputs": {"ticket_id": 1}}]});
        FlowValidator::new(&registry)
            .validate_str(&document.to_string(), None)
            .unwrap()
    }

    fn wanted(flow: &haloflow_core::flow::ValidatedFlow, secret: &str) -> Vec<Desired> {
        let secret = Secret::new(secret);
        let recipients = ["ops team".to_owned()];
        let target = Target {
            flow,
            base_url: "https://h.example/",
            recipients: Some(&recipients),
            secret: Some(&secret),
        };
        desired(&target).unwrap()
    }

    /// The tenant after `requests` were applied to an empty one.
    fn created(desired: &[Desired]) -> Vec<Existing> {
        desired
            .iter()
            .enumerate()
            .map(|(i, want)| {
                let mut webhook = Value::Object(want.webhook.clone());
                webhook["id"] = json!(format!("00000000-0000-0000-0000-00000000000{i}"));
                webhook.as_object_mut().unwrap().remove("basic_password");
                let mut event = Value::Object(want.event.clone());
                event["id"] = json!(i + 1);
                event["webhook_id"] = webhook["id"].clone();
                Existing {
                    route: want.route,
                    webhook,
                    events: vec![event],
                }
            })
            .collect()
    }

    #[test]
    fn an_empty_tenant_gets_two_webhooks_and_a_matching_one_gets_nothing() {
        let flow = flow(json!({"type": "url_key", "secret_name": "K"}));
        let desired = wanted(&flow, "k&1");
        let requests = plan(&desired, &[]);
        assert_eq!(requests.len(), 4);
        let url = desired[0].webhook["url"].as_str().unwrap();
        assert_eq!(
            url,
            "https://h.example/triggers/f?apiKey=k%261&recipients=ops%20team"
        );
        assert!(
            !requests[0].masked().contains("k%261"),
            "{}",
            requests[0].masked()
        );
        let existing = created(&desired);
        assert!(plan(&desired, &existing).is_empty());
        assert!(check("haloflow halo setup f", &desired, &existing).is_empty());
    }

    #[test]
    fn a_changed_key_or_password_is_drift_and_an_update() {
        let keyed = flow(json!({"type": "url_key", "secret_name": "K"}));
        let existing = created(&wanted(&keyed, "old"));
        let drifts = check("haloflow halo setup f", &wanted(&keyed, "new"), &existing);
        assert_eq!(drifts.len(), 2, "{drifts:?}");
        assert!(drifts[0].what.starts_with("key:"), "{drifts:?}");

        let basic = flow(json!({"type": "basic", "username": "u", "password_secret_name": "P"}));
        let existing = created(&wanted(&basic, "old"));
        let requests = plan(&wanted(&basic, "new"), &existing);
        assert_eq!(requests.len(), 2);
        assert!(
            requests
                .iter()
                .all(|r| r.path == "Webhook" && r.body.is_some())
        );
        assert!(
            check("haloflow halo setup f", &wanted(&basic, "new"), &existing)[0]
                .what
                .contains("password")
        );
    }

    #[test]
    fn a_wrong_event_is_updated_and_extra_events_deleted() {
        let flow = flow(json!({"type": "none"}));
        let desired = wanted(&flow, "-");
        let mut existing = created(&desired);
        existing[0].events[0]["eventno"] = json!(76);
        existing[0].events.push(json!({"id": 9, "eventno": 3}));
        let requests = plan(&desired, &existing);
        let shown: Vec<String> = requests.iter().map(HaloRequest::masked).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown[0].starts_with("POST /api/Notification [{"),
            "{shown:?}"
        );
        assert!(shown[0].contains("\"eventno\":3") && shown[0].ends_with("\"id\":1}]"));
        assert_eq!(shown[1], "DELETE /api/Notification/9");
    }

    #[test]
    fn removal_names_only_the_marked_webhooks() {
        let flow = flow(json!({"type": "none"}));
        let existing = created(&wanted(&flow, "-"));
        let shown: Vec<String> = removal(&existing).iter().map(HaloRequest::masked).collect();
        assert_eq!(shown.len(), 4);
        assert!(shown.iter().all(|s| s.starts_with("DELETE")));
        assert!(marker(&existing[0].webhook).is_some());
        assert!(marker(&json!({"note": "made by hand"})).is_none());
    }
}
