//! The `halo.incidents` trigger type: a HaloITSM webhook (`../shared/reference/halo-api.md`
//! §5). Halo batches events as a JSON array; each default-format event carries a delivery
//! GUID (`id`), the event name, the ticket id (`object_id`) and usually the ticket.

use haloflow_core::json::{id_of, object};
use haloflow_core::step::OutputSpec;
use haloflow_core::trigger::{REQUEST_OUTPUTS, TriggerDescription, TriggerEvent, TriggerType};
use serde_json::{Map, Value, json};

/// `halo.incidents`: register it through the [`Halo`](crate::Halo) integration.
#[derive(Debug, Clone, Copy, Default)]
pub struct HaloIncidents;

impl HaloIncidents {
    pub const TYPE: &'static str = "halo.incidents";
}

/// What a Halo event adds to the request's outputs (with `message`, listed before `body`).
const EVENT_OUTPUTS: [OutputSpec; 5] = [
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
];

const MESSAGE_OUTPUT: OutputSpec = OutputSpec {
    name: "message",
    description: "Halo's message text, or null.",
};

/// One of the outputs every trigger type shares.
fn request_output(name: &str) -> OutputSpec {
    *REQUEST_OUTPUTS
        .iter()
        .find(|o| o.name == name)
        .expect("a request output")
}

impl TriggerType for HaloIncidents {
    fn describe(&self) -> TriggerDescription {
        let mut outputs = vec![request_output("request_id")];
        outputs.extend(EVENT_OUTPUTS);
        outputs.extend(["recipients", "params", "received_at"].map(request_output));
        outputs.extend([MESSAGE_OUTPUT, request_output("body")]);
        TriggerDescription {
            type_name: Self::TYPE,
            summary: "A HaloITSM webhook POSTs to /triggers/<flow id>. A re-sent delivery (the same `id`) starts no second run. Flood control is on by default: more than 4 requests for the same ticket and event within 60 s are suppressed.",
            outputs,
            default_correlate_on: vec!["ticket_id", "event"],
        }
    }

    /// Halo's delivery GUID: `id` of a default webhook body (one with `event` or `object_id`).
    /// A re-send from Halo's Deliveries tab or a retry carries the same one.
    fn delivery_id(&self, event: &Map<String, Value>) -> Option<String> {
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

    fn outputs(&self, trigger: TriggerEvent<'_>) -> Value {
        let event = trigger.event;
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
        let delivery_id = self.delivery_id(&event).map_or(Value::Null, Value::String);
        object([
            ("request_id", Value::String(trigger.request_id.to_owned())),
            ("delivery_id", delivery_id),
            ("event", event_name),
            ("ticket_id", ticket_id.map_or(Value::Null, Value::from)),
            ("ticket", ticket),
            ("agent_assigned", Value::Bool(agent_assigned)),
            ("recipients", json!(trigger.query.recipients)),
            ("params", json!(trigger.query.params)),
            ("received_at", Value::String(trigger.received_at.to_owned())),
            ("message", message),
            ("body", Value::Object(event)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haloflow_core::trigger::TriggerQuery;

    fn outputs(query: &TriggerQuery, event: Value) -> Value {
        HaloIncidents.outputs(TriggerEvent {
            request_id: "r1",
            received_at: "2026-01-01T00:00:00Z",
            query,
            event: event.as_object().unwrap().clone(),
        })
    }

    #[test]
    fn default_payload_outputs() {
        let q = TriggerQuery::parse(Some("recipients=a"), None);
        let event = json!({"id": "8e25", "event": "New Ticket Logged", "object_id": "4242.0",
                           "ticket": {"id": 4242, "agent_id": 3}});
        let out = outputs(&q, event);
        assert_eq!(out["ticket_id"], 4242);
        assert_eq!(out["event"], "new ticket logged");
        assert_eq!(out["delivery_id"], "8e25");
        assert_eq!(out["agent_assigned"], true);
        assert_eq!(out["recipients"], json!(["a"]));
        let custom = outputs(&q, json!({"foo": 1}));
        assert_eq!(custom["ticket_id"], Value::Null);
        assert_eq!(custom["agent_assigned"], false);
        assert_eq!(custom["body"], json!({"foo": 1}));
    }

    #[test]
    fn outputs_are_the_described_ones_in_order() {
        let out = outputs(&TriggerQuery::default(), json!({"event": "x"}));
        let keys: Vec<&str> = out
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let described: Vec<&str> = HaloIncidents
            .describe()
            .outputs
            .iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(keys, described);
    }
}
