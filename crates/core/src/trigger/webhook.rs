//! The core's own trigger type: any JSON webhook, its body as `trigger.body`.

use serde_json::{Value, json};

use super::{TriggerDescription, TriggerEvent, TriggerType};
use crate::template::OutputSpec;

/// `webhook`: a JSON POST to `/triggers/<flow id>` from any sender. It knows no delivery id,
/// so every request counts, and flood control correlates on nothing unless the flow names
/// outputs in `correlate_on` (say `body.id`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Webhook;

impl Webhook {
    pub const TYPE: &'static str = "webhook";
}

/// Outputs every trigger type may share: they describe the request, not its sender.
pub const REQUEST_OUTPUTS: [OutputSpec; 5] = [
    OutputSpec {
        name: "request_id",
        description: "Id of the HTTP request that delivered the event.",
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
        name: "body",
        description: "This event's JSON object as received.",
    },
];

impl TriggerType for Webhook {
    fn describe(&self) -> TriggerDescription {
        TriggerDescription {
            type_name: Self::TYPE,
            summary: "Any JSON webhook POSTed to /triggers/<flow id>; a JSON array is a batch of events. No de-duplication; flood control correlates on the outputs named in correlate_on (none by default).",
            outputs: REQUEST_OUTPUTS.to_vec(),
            default_correlate_on: Vec::new(),
        }
    }

    fn outputs(&self, event: TriggerEvent<'_>) -> Value {
        json!({
            "request_id": event.request_id,
            "recipients": event.query.recipients,
            "params": event.query.params,
            "received_at": event.received_at,
            "body": Value::Object(event.event),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::TriggerQuery;

    #[test]
    fn outputs_are_the_described_ones() {
        let query = TriggerQuery::parse(Some("recipients=a,b&team=x"), None);
        let outputs = Webhook.outputs(TriggerEvent {
            request_id: "r1",
            received_at: "2026-01-01T00:00:00Z",
            query: &query,
            event: json!({"id": 7}).as_object().unwrap().clone(),
        });
        let names: Vec<&str> = Webhook.describe().outputs.iter().map(|o| o.name).collect();
        let mut keys: Vec<&str> = outputs
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted);
        assert_eq!(outputs["body"], json!({"id": 7}));
        assert_eq!(outputs["recipients"], json!(["a", "b"]));
        assert_eq!(Webhook.delivery_id(&Default::default()), None);
    }
}
