//! Triggers: how a webhook request becomes runs. The server authenticates it
//! ([`TriggerAuthenticator`]), parses its query ([`TriggerQuery`]) and splits its body into
//! events ([`events`]); the flow's [`TriggerType`] turns each event into the outputs templates
//! read as `trigger.<name>` and says which delivery it is, for de-duplication.

mod auth;
mod trigger_type;
mod webhook;

use serde_json::{Map, Value, json};

pub use auth::{AuthFailure, TriggerAuth, TriggerAuthenticator, equal};
pub(crate) use auth::{basic_credentials, bearer_token};
pub use trigger_type::{TriggerDescription, TriggerEvent, TriggerType};
pub use webhook::{REQUEST_OUTPUTS, Webhook};

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

/// Splits a body into events: an object is one event, an array (a batch) one per element.
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
