//! The HaloITSM Incidents trigger: turns one webhook request into trigger outputs, one set per
//! event (Halo batches events as a JSON array). See `../shared/reference/halo-api.md` §5.

mod auth;
mod url;

use serde_json::{Map, Value, json};

pub use auth::{AuthFailure, TriggerAuthenticator, equal};
pub(crate) use auth::{basic_credentials, bearer_token};
pub use url::{trigger_url, with_recipients};

use crate::json::id_of;
use crate::step::OutputSpec;

/// The outputs templates reach as `trigger.<name>`.
pub(crate) const TRIGGER_OUTPUTS: &[OutputSpec] = &[
    OutputSpec {
        name: "request_id",
        description: "Id of the HTTP request that delivered the event.",
    },
    OutputSpec {
        name: "delivery_id",
        description: "Halo's delivery GUID (`id` in the body), or null.",
    },
    OutputSpec {
        name: "event",
        description: "Halo's event name, lower case (e.g. \"new ticket logged\"), or null.",
    },
    OutputSpec {
        name: "ticket_id",
        description: "The ticket id (`object_id`, else `ticket.id`), or null.",
    },
    OutputSpec {
        name: "ticket",
        description: "The ticket object from the body (empty object when absent).",
    },
    OutputSpec {
        name: "agent_assigned",
        description: "True when the ticket has an agent (agent_id > 0).",
    },
    OutputSpec {
        name: "recipients",
        description: "The `recipients` query parameter as a list of names.",
    },
    OutputSpec {
        name: "params",
        description: "Every other query parameter (the URL key excluded).",
    },
    OutputSpec {
        name: "received_at",
        description: "When the request arrived, RFC 3339 UTC.",
    },
    OutputSpec {
        name: "message",
        description: "Halo's message text, or null.",
    },
    OutputSpec {
        name: "body",
        description: "This event's JSON object as received.",
    },
];

/// The query string of a trigger request, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TriggerQuery {
    pub recipients: Vec<String>,
    /// Other parameters; a parameter given twice keeps the last value.
    pub params: Map<String, Value>,
}

impl TriggerQuery {
    /// Parses `recipients=a,b&x=y`. Recipients are split on commas *before* decoding, so an
    /// encoded comma (`%2C`) stays inside a name; `+` and `%20` decode to spaces. The
    /// parameter named `secret_param` (the URL key) is dropped so it is never stored.
    pub fn parse(raw: Option<&str>, secret_param: Option<&str>) -> TriggerQuery {
        TriggerQuery::parse_scrubbed(raw, secret_param, &[])
    }

    /// [`TriggerQuery::parse`], also dropping any parameter whose name matches
    /// `secret_param` in any case (`apikey` for `apiKey`: a real key sent slightly wrong) and
    /// any parameter holding one of `secrets` (a header key sent in the query).
    pub fn parse_scrubbed(
        raw: Option<&str>,
        secret_param: Option<&str>,
        secrets: &[&str],
    ) -> TriggerQuery {
        let mut query = TriggerQuery::default();
        for pair in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(raw_name);
            let value = decode(raw_value);
            if secret_param.is_some_and(|p| p.eq_ignore_ascii_case(&name))
                || secrets
                    .iter()
                    .any(|s| !s.is_empty() && (value.contains(s) || name.contains(s)))
            {
                continue;
            }
            if name == "recipients" {
                query.recipients.extend(
                    raw_value
                        .split(',')
                        .map(|r| decode(r).trim().to_owned())
                        .filter(|r| !r.is_empty()),
                );
            } else {
                query.params.insert(name, Value::String(value));
            }
        }
        query
    }

    /// The query as stored with the request: what was parsed, never the key.
    pub fn to_json(&self) -> Value {
        json!({"recipients": self.recipients, "params": self.params})
    }
}

fn decode(text: &str) -> String {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// Why a body cannot start runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadProblem {
    EmptyBatch,
    NotAnObject { index: Option<usize> },
}

impl PayloadProblem {
    pub fn message(&self) -> String {
        match self {
            PayloadProblem::EmptyBatch => {
                "the body is an empty JSON array; send at least one event".into()
            }
            PayloadProblem::NotAnObject { index: None } => {
                "the body must be a JSON object (one event) or an array of objects (a batch)".into()
            }
            PayloadProblem::NotAnObject { index: Some(i) } => {
                format!(
                    "element {i} of the batch is not a JSON object; every event must be an object"
                )
            }
        }
    }
}

/// Splits a body into events: an object is one event, an array (Halo batching) one per element.
pub fn events(body: Value) -> Result<Vec<Map<String, Value>>, PayloadProblem> {
    match body {
        Value::Object(event) => Ok(vec![event]),
        Value::Array(items) if items.is_empty() => Err(PayloadProblem::EmptyBatch),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(event) => Ok(event),
                _ => Err(PayloadProblem::NotAnObject { index: Some(i) }),
            })
            .collect(),
        _ => Err(PayloadProblem::NotAnObject { index: None }),
    }
}

/// The trigger outputs for one event.
pub fn outputs(
    request_id: &str,
    received_at: &str,
    query: &TriggerQuery,
    event: Map<String, Value>,
) -> Value {
    let ticket = match event.get("ticket") {
        Some(Value::Object(t)) => Value::Object(t.clone()),
        _ => Value::Object(Map::new()),
    };
    let ticket_id = event
        .get("object_id")
        .and_then(id_of)
        .or_else(|| ticket.get("id").and_then(id_of));
    let agent_assigned = ticket
        .get("agent_id")
        .and_then(id_of)
        .is_some_and(|id| id > 0);
    let text = |key: &str| {
        event
            .get(key)
            .and_then(Value::as_str)
            .map_or(Value::Null, |t| Value::String(t.to_owned()))
    };
    let event_name = match text("event") {
        Value::String(e) => Value::String(e.to_lowercase()),
        other => other,
    };
    let message = text("message");
    crate::json::object([
        ("request_id", Value::String(request_id.to_owned())),
        (
            "delivery_id",
            delivery_id(&event).map_or(Value::Null, Value::String),
        ),
        ("event", event_name),
        ("ticket_id", ticket_id.map_or(Value::Null, Value::from)),
        ("ticket", ticket),
        ("agent_assigned", Value::Bool(agent_assigned)),
        ("recipients", json!(query.recipients)),
        ("params", json!(query.params)),
        ("received_at", Value::String(received_at.to_owned())),
        ("message", message),
        ("body", Value::Object(event)),
    ])
}

/// Halo's delivery GUID: `id` of a default webhook body (one with `event` or `object_id`).
/// A re-send from Halo's Deliveries tab or a retry carries the same one.
pub fn delivery_id(event: &Map<String, Value>) -> Option<String> {
    if !event.contains_key("event") && !event.contains_key("object_id") {
        return None;
    }
    event
        .get("id")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_decoded_and_the_key_is_dropped() {
        let q = TriggerQuery::parse(
            Some(
                "apiKey=s3cret&recipients=epearson,Antares%20Team,a%2Cb,+x+&team=Service+Desk&recipients=ops",
            ),
            Some("apiKey"),
        );
        assert_eq!(
            q.recipients,
            ["epearson", "Antares Team", "a,b", "x", "ops"]
        );
        assert_eq!(
            Value::Object(q.params.clone()),
            json!({"team": "Service Desk"})
        );
        assert!(!q.to_json().to_string().contains("s3cret"));
    }

    #[test]
    fn default_payload_outputs() {
        let q = TriggerQuery::parse(Some("recipients=a"), None);
        let event = json!({"id": "8e25", "event": "New Ticket Logged", "object_id": "4242.0",
                           "ticket": {"id": 4242, "agent_id": 3}});
        let out = outputs(
            "r1",
            "2026-01-01T00:00:00Z",
            &q,
            event.as_object().unwrap().clone(),
        );
        assert_eq!(out["ticket_id"], 4242);
        assert_eq!(out["event"], "new ticket logged");
        assert_eq!(out["delivery_id"], "8e25");
        assert_eq!(out["agent_assigned"], true);
        assert_eq!(out["recipients"], json!(["a"]));
        let custom = outputs(
            "r2",
            "t",
            &q,
            json!({"foo": 1}).as_object().unwrap().clone(),
        );
        assert_eq!(custom["ticket_id"], Value::Null);
        assert_eq!(custom["agent_assigned"], false);
        assert_eq!(custom["body"], json!({"foo": 1}));
    }

    #[test]
    fn batches_and_bad_bodies() {
        assert_eq!(events(json!([{"a": 1}, {"b": 2}])).unwrap().len(), 2);
        assert_eq!(events(json!([])), Err(PayloadProblem::EmptyBatch));
        assert_eq!(
            events(json!([{}, 3])),
            Err(PayloadProblem::NotAnObject { index: Some(1) })
        );
        assert_eq!(
            events(json!("x")),
            Err(PayloadProblem::NotAnObject { index: None })
        );
    }
}
