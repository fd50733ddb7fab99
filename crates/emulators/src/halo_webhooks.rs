//! Halo's outbound webhooks (`/Webhook`) and their events (`/Notification`, a
//! `UnameNotification` with `webhook_id`), halo-api.md §5. Bodies are checked against the
//! published schema before they get here (`HaloState::api`); this models what Halo does with
//! them. What Halo does is documented only in part; the choices below are the ones that can
//! neither duplicate nor lose an object, and README's "Set up Halo from haloflow" lists them:
//! - `POST` with an `id` of an existing object updates it (as for tickets); an `id` Halo does
//!   not have answers 400, never creates.
//! - A new webhook needs a `name` and a `url` (the UI requires both).
//! - An event's `webhook_id` must name an existing webhook.
//! - Reads leave out `basic_password` (a credential is not read back).
//! - Deleting a webhook deletes its events.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{
    Answer, HaloEmulator, HaloState, RecordedRequest, RunningEmulator, halo_error, id_of, invalid,
};

/// The webhooks and events of the tenant.
#[derive(Debug, Default)]
pub(super) struct Hooks {
    /// By id (a GUID, as Halo's are).
    webhooks: BTreeMap<String, Value>,
    /// By id (an integer).
    events: BTreeMap<i64, Value>,
    next_event_id: i64,
}

impl Hooks {
    /// Whether `path` (as documented) is one of the operations modelled here.
    pub(super) fn models(path: &str) -> bool {
        matches!(
            path,
            "/Webhook" | "/Webhook/{id}" | "/Notification" | "/Notification/{id}"
        )
    }
}

impl HaloEmulator {
    /// Serves the emulator at `addr` (`haloflow emulator halo`, for trying `halo setup` by hand).
    pub async fn start_at(&self, addr: std::net::SocketAddr) -> std::io::Result<RunningEmulator> {
        RunningEmulator::serve_at(self.router(), addr).await
    }

    /// The stored webhooks, as stored (with `basic_password`, which reads leave out).
    pub fn webhooks(&self) -> Vec<Value> {
        self.lock().hooks.webhooks.values().cloned().collect()
    }

    /// The stored events of webhooks (`UnameNotification`s).
    pub fn notifications(&self) -> Vec<Value> {
        self.lock().hooks.events.values().cloned().collect()
    }

    /// Seeds a webhook (a tenant's own, or one to break) and returns its id; properties
    /// Halo's schema does not have are dropped.
    pub fn insert_webhook(&self, webhook: Value) -> String {
        let mut webhook = self.seed("Webhook", webhook);
        let id = match webhook.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => uuid::Uuid::new_v4().to_string(),
        };
        webhook.insert("id".into(), json!(id));
        let mut state = self.lock();
        state
            .hooks
            .webhooks
            .insert(id.clone(), Value::Object(webhook));
        id
    }

    /// Changes a stored webhook as an administrator (or Halo, disabling it after failures)
    /// would: each property of `changes` replaces the stored one.
    pub fn change_webhook(&self, id: &str, changes: Value) {
        let mut state = self.lock();
        if let (Some(Value::Object(stored)), Value::Object(changes)) =
            (state.hooks.webhooks.get_mut(id), changes)
        {
            stored.extend(changes);
        }
    }
}

impl HaloState {
    /// `/Webhook` and `/Notification`: list, read, create or update, delete.
    pub(super) fn hooks_route(
        &mut self,
        request: &RecordedRequest,
        method: &str,
        path: &str,
        items: Vec<Value>,
    ) -> Result<Answer, Answer> {
        let last = request.path.rsplit('/').next().unwrap_or_default();
        Ok(match (method, path) {
            ("GET", "/Webhook") => self.list_webhooks(request),
            ("GET", "/Webhook/{id}") => match self.hooks.webhooks.get(&webhook_id(last)?) {
                Some(webhook) => (200, readable(webhook)),
                None => halo_error(404, format!("Webhook {last} not found")),
            },
            ("POST", "/Webhook") => self.post_webhooks(items),
            ("DELETE", "/Webhook/{id}") => self.delete_webhook(&webhook_id(last)?),
            ("GET", "/Notification") => self.list_events(request),
            ("GET", "/Notification/{id}") => match self.hooks.events.get(&event_id(last)?) {
                Some(event) => (200, event.clone()),
                None => halo_error(404, format!("Notification {last} not found")),
            },
            ("POST", "/Notification") => self.post_events(items),
            ("DELETE", "/Notification/{id}") => match self.hooks.events.remove(&event_id(last)?) {
                Some(_) => (200, Value::Null),
                None => halo_error(404, format!("Notification {last} not found")),
            },
            _ => halo_error(501, format!("{method} {path} is not modelled")),
        })
    }

    /// `GET /Webhook[?type=]`: a plain array.
    fn list_webhooks(&self, request: &RecordedRequest) -> Answer {
        let kind = request
            .query_param("type")
            .and_then(|t| t.parse::<i64>().ok());
        let listed: Vec<Value> = self
            .hooks
            .webhooks
            .values()
            .filter(|w| kind.is_none_or(|k| w.get("type").and_then(id_of) == Some(k)))
            .map(readable)
            .collect();
        (200, Value::Array(listed))
    }

    /// `GET /Notification[?webhook_id=&type=]`: a plain array.
    fn list_events(&self, request: &RecordedRequest) -> Answer {
        let webhook = request.query_param("webhook_id");
        let kind = request
            .query_param("type")
            .and_then(|t| t.parse::<i64>().ok());
        let listed: Vec<Value> = self
            .hooks
            .events
            .values()
            .filter(|e| {
                webhook
                    .as_deref()
                    .is_none_or(|w| e["webhook_id"].as_str().is_some_and(|id| same_id(id, w)))
            })
            .filter(|e| kind.is_none_or(|k| e.get("type").and_then(id_of) == Some(k)))
            .cloned()
            .collect();
        (200, Value::Array(listed))
    }

    /// `POST /Webhook [...]`: every item is checked before any is stored.
    fn post_webhooks(&mut self, items: Vec<Value>) -> Answer {
        for item in &items {
            match item.get("id").and_then(Value::as_str) {
                Some(id) if !self.hooks.webhooks.contains_key(id) => {
                    return halo_error(400, format!("Webhook {id} does not exist"));
                }
                Some(_) => {}
                None if !has_text(item, "name") => return halo_error(400, "Please enter a Name"),
                None if !has_text(item, "url") => {
                    return halo_error(400, "Please enter a Payload URL");
                }
                None => {}
            }
        }
        let mut created = false;
        let mut answers = Vec::new();
        for item in items {
            let Value::Object(item) = item else { continue };
            let id = match item.get("id").and_then(Value::as_str) {
                Some(id) => id.to_owned(),
                None => {
                    created = true;
                    uuid::Uuid::new_v4().to_string()
                }
            };
            let stored = self
                .hooks
                .webhooks
                .entry(id.clone())
                .or_insert_with(|| json!({"id": id, "active": true}));
            merge(stored, item);
            answers.push(readable(stored));
        }
        one_or_many(created, answers)
    }

    fn delete_webhook(&mut self, id: &str) -> Answer {
        if self.hooks.webhooks.remove(id).is_none() {
            return halo_error(404, format!("Webhook {id} not found"));
        }
        self.hooks
            .events
            .retain(|_, e| !e["webhook_id"].as_str().is_some_and(|w| same_id(w, id)));
        (200, Value::Null)
    }

    /// `POST /Notification [...]`: `id` 0 or absent creates; an event of a webhook names one
    /// the tenant has.
    fn post_events(&mut self, items: Vec<Value>) -> Answer {
        for item in &items {
            let id = item.get("id").and_then(id_of).unwrap_or(0);
            if id > 0 && !self.hooks.events.contains_key(&id) {
                return halo_error(400, format!("Notification {id} does not exist"));
            }
            if let Some(webhook) = item.get("webhook_id").and_then(Value::as_str)
                && !self.hooks.webhooks.keys().any(|w| same_id(w, webhook))
            {
                return halo_error(400, format!("Webhook {webhook} does not exist"));
            }
        }
        let mut created = false;
        let mut answers = Vec::new();
        for item in items {
            let Value::Object(item) = item else { continue };
            let id = match item.get("id").and_then(id_of).filter(|id| *id > 0) {
                Some(id) => id,
                None => {
                    created = true;
                    self.hooks.next_event_id += 1;
                    self.hooks.next_event_id
                }
            };
            let stored = self.hooks.events.entry(id).or_insert_with(|| json!({}));
            merge(stored, item);
            stored["id"] = json!(id);
            answers.push(stored.clone());
        }
        one_or_many(created, answers)
    }
}

/// A webhook as reads answer it: without its password.
fn readable(webhook: &Value) -> Value {
    let mut webhook = webhook.clone();
    if let Some(map) = webhook.as_object_mut() {
        map.remove("basic_password");
    }
    webhook
}

fn merge(stored: &mut Value, item: Map<String, Value>) {
    if let Value::Object(stored) = stored {
        for (key, value) in item {
            if key != "id" {
                stored.insert(key, value);
            }
        }
    }
}

fn one_or_many(created: bool, mut answers: Vec<Value>) -> Answer {
    let status = if created { 201 } else { 200 };
    if answers.len() == 1 {
        (status, answers.remove(0))
    } else {
        (status, Value::Array(answers))
    }
}

fn has_text(item: &Value, key: &str) -> bool {
    item.get(key)
        .and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty())
}

/// GUIDs compare case-insensitively.
fn same_id(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// A webhook id in a path: a GUID (ASP.NET's binding answer otherwise).
fn webhook_id(text: &str) -> Result<String, Answer> {
    uuid::Uuid::parse_str(text)
        .map(|id| id.to_string())
        .map_err(|_| invalid(format!("The value '{text}' is not valid for id.")))
}

fn event_id(text: &str) -> Result<i64, Answer> {
    text.parse::<i64>()
        .map_err(|_| invalid(format!("The value '{text}' is not valid for id.")))
}
