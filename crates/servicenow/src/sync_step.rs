//! The `servicenow.sync_record` step, and the built-in sync-back flow of each ServiceNow
//! connection that runs it. A webhook from ServiceNow is stored as a request with one run of
//! its connection's flow (`servicenow:customers/12`), answered, and then synced by the engine
//! like any other run: retried with backoff, recorded in the run history, replayable, resumed
//! after a crash.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::notes::JournalEntry;
use super::sync::{NamedRecord, SyncBack, SyncHttp};
use super::{ServiceNowConnection, ServiceNowConnections, Side};
use haloflow_core::connections::Connections;
use haloflow_core::flow::{FlowValidator, ValidatedFlow};
use haloflow_core::step::{
    OutputSpec, Resend, Step, StepContext, StepDescription, StepError, StepRegistry,
};
use haloflow_core::trigger::Webhook;

/// The step's type name.
pub const SYNC_RECORD: &str = "servicenow.sync_record";

/// The id of a connection's sync-back flow, and of its webhook's requests and runs.
pub fn flow_id(sn: &ServiceNowConnection) -> String {
    format!("servicenow:{}", sn.key())
}

/// Why `value` cannot be a ServiceNow sys_id (`hex`) or name (table, number): it goes into an
/// encoded query, so anything but the characters ServiceNow's own have is refused.
pub fn check_name(field: &str, value: &str, hex: bool) -> Result<(), String> {
    let plain = !value.is_empty()
        && value.len() <= 100
        && value.chars().all(|c| {
            if hex {
                c.is_ascii_hexdigit()
            } else {
                c.is_ascii_alphanumeric() || c == '_' || c == '-'
            }
        });
    if plain {
        return Ok(());
    }
    Err(format!(
        "`{field}`: `{}` is not a ServiceNow {}",
        value.chars().take(40).collect::<String>(),
        if hex {
            "sys_id (32 hex digits)"
        } else {
            "name (letters, digits, _ and -)"
        }
    ))
}

impl NamedRecord {
    /// The event a webhook naming this record is stored with: its run's `trigger.body`, and
    /// the step's `record` input.
    pub fn to_event(&self) -> Map<String, Value> {
        let mut event = Map::new();
        let names = [
            ("table", &self.table),
            ("sys_id", &self.sys_id),
            ("number", &self.number),
        ];
        for (name, value) in names {
            if let Some(value) = value {
                event.insert(name.to_owned(), json!(value));
            }
        }
        if let Some(note) = &self.note {
            event.insert("note".to_owned(), note.to_row());
        }
        event
    }

    /// The record the step's `record` input names (see [`Self::to_event`]).
    fn from_input(record: &Value) -> Result<NamedRecord, StepError> {
        let invalid = |name: &str, message: String| StepError::Input {
            pointer: format!("/record/{name}"),
            message,
        };
        let text = |name: &str, hex: bool| match record.get(name).and_then(Value::as_str) {
            None => Ok(None),
            Some(value) => check_name(name, value, hex)
                .map(|()| Some(value.to_owned()))
                .map_err(|message| invalid(name, message)),
        };
        let note = match record.get("note") {
            None => None,
            Some(row) => Some(JournalEntry::from_row(row).ok_or_else(|| {
                let message = "not a work note or comment with its time and text (a sys_journal_field row: element, sys_created_on, sys_created_by, value)";
                invalid("note", message.to_owned())
            })?),
        };
        Ok(NamedRecord {
            table: text("table", false)?,
            sys_id: text("sys_id", true)?,
            number: text("number", false)?,
            note,
        })
    }
}

const OUTPUTS: &[OutputSpec] = &[
    OutputSpec {
        name: "action",
        description: "What was done: created_ticket, updated_ticket, notes, duplicate (this version of the record was acted on before) or ignored.",
    },
    OutputSpec {
        name: "table",
        description: "The record's table (its sys_class_name when found through task).",
    },
    OutputSpec {
        name: "sys_id",
        description: "The record's sys_id.",
    },
    OutputSpec {
        name: "number",
        description: "The record's number, e.g. INC0010001.",
    },
    OutputSpec {
        name: "ticket_id",
        description: "The linked Halo ticket, when there is one.",
    },
    OutputSpec {
        name: "fields",
        description: "The Halo fields written.",
    },
    OutputSpec {
        name: "notes",
        description: "How many notes became Halo actions.",
    },
    OutputSpec {
        name: "reason",
        description: "Why the record was ignored.",
    },
];

/// `servicenow.sync_record`: what a ServiceNow webhook runs.
#[derive(Debug, Clone, Copy)]
pub struct SyncRecord;

#[async_trait]
impl Step for SyncRecord {
    fn describe(&self) -> StepDescription {
        let name = |description: &str| json!({"type": "string", "description": description});
        StepDescription::new(
            SYNC_RECORD,
            "Syncs a ServiceNow record back to Halo: reads it again, creates or updates its linked ticket, and turns its new notes into actions (what a ServiceNow webhook runs).",
        )
        .input_schema(json!({
            "type": "object",
            "required": ["servicenow", "record"],
            "additionalProperties": false,
            "properties": {
                "servicenow": {"type": "string", "pattern": "^(customers|suppliers)/.+$",
                               "description": "The connection, e.g. customers/12 ([servicenow.customers.\"12\"])."},
                "record": {
                    "type": "object",
                    "additionalProperties": false,
                    "description": "The record: table and sys_id, or number (in table, else across every task table).",
                    "properties": {
                        "table": name("The table, e.g. incident."),
                        "sys_id": name("The record's sys_id."),
                        "number": name("The record's number, e.g. INC0010001."),
                        "note": {"type": "object",
                                 "description": "A note to sync as it is: a sys_journal_field row (element, sys_created_on, sys_created_by, value)."}
                    }
                }
            }
        }))
        .outputs(OUTPUTS)
    }

    /// Sending again is what sync back is built for: each record version is claimed once, a
    /// ticket whose create lost its answer is looked up by its key before another is made, and
    /// each note is claimed once.
    fn resend(&self, _inputs: &Value) -> Resend {
        Resend::Safe
    }

    async fn execute(&self, ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
        let sn = connection(ctx, &inputs)?;
        let named = NamedRecord::from_input(&inputs["record"])?;
        let sync = SyncBack {
            storage: ctx.storage().clone(),
            connections: ctx.connections().clone(),
            http: SyncHttp::Run(ctx.http().clone()),
        };
        sync.sync_named(&sn, &named).await
    }
}

/// The connection the `servicenow` input names.
fn connection(ctx: &StepContext, inputs: &Value) -> Result<Arc<ServiceNowConnection>, StepError> {
    let key = inputs["servicenow"].as_str().unwrap_or_default();
    key.split_once('/')
        .and_then(|(side, id)| ctx.connections().servicenow(Side::parse(side)?, id))
        .ok_or_else(|| {
            StepError::Connection(format!(
                "no ServiceNow connection `{key}`: add [servicenow.customers.\"<client id>\"] or [servicenow.suppliers.\"<supplier id>\"] to the config"
            ))
        })
}

/// The sync-back flow of `sn`: one `servicenow.sync_record` step over the record its webhook
/// named. Its id names the connection (no file's flow can have it), it is not served at
/// `/triggers`, and it has no flood control: every change of a record counts.
pub fn flow(sn: &ServiceNowConnection) -> ValidatedFlow {
    let mut registry = StepRegistry::new();
    registry
        .register(SyncRecord)
        .expect("one step with a valid schema");
    registry
        .register_trigger(Arc::new(Webhook))
        .expect("one trigger type");
    let document = json!({
        "id": "servicenow-sync-back",
        "name": format!("Sync back from ServiceNow {}", sn.key()),
        "description": "Built in: what the connection's webhook runs.",
        "trigger": {"type": Webhook::TYPE, "auth": {"type": "none"}, "flood_control": {"enabled": false}},
        "steps": [{"id": "sync", "type": SYNC_RECORD,
                   "inputs": {"servicenow": sn.key(), "record": "{{trigger.body}}"}}]
    });
    let mut flow = FlowValidator::new(&registry)
        .validate_str(&document.to_string(), None)
        .expect("the built-in sync-back flow is valid");
    flow.document.id = flow_id(sn);
    flow
}

/// The sync-back flow of every ServiceNow connection.
pub fn flows(connections: &Connections) -> Vec<ValidatedFlow> {
    connections.servicenow_all().map(|sn| flow(sn)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_record_is_read_back_from_its_event() {
        let named = NamedRecord {
            table: Some("incident".into()),
            sys_id: Some("0123456789abcdef0123456789abcdef".into()),
            number: None,
            note: Some(JournalEntry {
                element: "work_notes".into(),
                created_on: "2024-05-01 10:00:00".into(),
                author: "abel.tuter".into(),
                value: "Checked".into(),
            }),
        };
        let event = Value::Object(named.to_event());
        assert_eq!(NamedRecord::from_input(&event).unwrap(), named);
    }

    #[test]
    fn a_value_that_is_no_servicenow_name_is_refused() {
        let error = NamedRecord::from_input(&json!({"sys_id": "x^ORactive=true"})).unwrap_err();
        assert!(
            matches!(&error, StepError::Input { pointer, .. } if pointer == "/record/sys_id"),
            "{error}"
        );
        assert!(check_name("number", "INC0010001", false).is_ok());
        assert!(check_name("table", "incident;drop", false).is_err());
    }
}
