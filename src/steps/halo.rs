//! Create Ticket, Update Ticket and Add Action on a Halo instance
//! (`../shared/reference/halo-api.md` §2 and §3).

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::config::IdempotencyField;
use crate::outbound::encode_component;
use crate::step::{
    ConnectionKind, OutputSpec, Resend, Step, StepContext, StepError, is_placeholder,
};

/// Ticket inputs and the Halo field each one is written to. Ids are numbers or numeric strings
/// (Halo itself sends both, §2), normalised to integers before sending.
const TICKET_FIELDS: &[(&str, FieldKind, &str)] = &[
    ("summary", FieldKind::Text, "The ticket's summary (title)."),
    (
        "details",
        FieldKind::Text,
        "The ticket's details as plain text.",
    ),
    (
        "details_html",
        FieldKind::Text,
        "The ticket's details as HTML.",
    ),
    ("tickettype_id", FieldKind::Id, "Ticket type id."),
    ("client_id", FieldKind::Id, "Client (customer) id."),
    (
        "site_id",
        FieldKind::Id,
        "Site id; Halo requires it whenever a user is set.",
    ),
    ("user_id", FieldKind::Id, "End user id."),
    (
        "agent_id",
        FieldKind::Id,
        "Assigned agent id (0 for unassigned).",
    ),
    ("team", FieldKind::Text, "Team name."),
    ("team_id", FieldKind::Id, "Team id."),
    ("status_id", FieldKind::Id, "Status id."),
    (
        "priority_id",
        FieldKind::Id,
        "Priority id; it must belong to the ticket type's SLA.",
    ),
    ("impact", FieldKind::Id, "Impact id."),
    ("urgency", FieldKind::Id, "Urgency id."),
    (
        "category_1",
        FieldKind::Text,
        "Category 1, a case-sensitive category name.",
    ),
    (
        "category_2",
        FieldKind::Text,
        "Category 2, a case-sensitive category name.",
    ),
    (
        "category_3",
        FieldKind::Text,
        "Category 3, a case-sensitive category name.",
    ),
    (
        "category_4",
        FieldKind::Text,
        "Category 4, a case-sensitive category name.",
    ),
    ("parent_id", FieldKind::Id, "Parent ticket id."),
];

#[derive(Clone, Copy)]
enum FieldKind {
    Text,
    Id,
}

fn id_schema(description: &str) -> Value {
    json!({
        "type": ["integer", "string"],
        "pattern": "^[0-9]+(\\.0+)?$",
        "minimum": 0,
        "description": description
    })
}

/// Schema properties shared by Create Ticket and Update Ticket.
fn ticket_properties() -> Map<String, Value> {
    let mut props = Map::new();
    for (name, kind, description) in TICKET_FIELDS {
        let schema = match kind {
            FieldKind::Text => json!({"type": "string", "description": description}),
            FieldKind::Id => id_schema(description),
        };
        props.insert((*name).into(), schema);
    }
    props.insert(
        "customfields".into(),
        json!({
            "type": "array",
            "description": "Custom fields as Halo writes them: [{\"id\": <field id>, \"value\": ...}].",
            "items": {
                "type": "object",
                "required": ["id", "value"],
                "additionalProperties": false,
                "properties": {"id": id_schema("Custom field id."), "value": {"description": "The value."}}
            }
        }),
    );
    props.insert(
        "fields".into(),
        json!({
            "type": "object",
            "description": "Further Halo ticket fields sent as they are (named inputs take precedence)."
        }),
    );
    props
}

/// Reads a non-negative integer id from a number, `"42"` or `"42.0"`.
fn to_id(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
            .map(|f| f as i64),
        _ => None,
    }
    .filter(|id| *id >= 0)
}

/// The id as Halo wants it (an integer). In a dry run, a placeholder for an earlier step's
/// output is kept as it is, so the preview shows where the value comes from.
fn id_value(value: &Value, pointer: &str, dry_run: bool) -> Result<Value, StepError> {
    if dry_run && is_placeholder(value) {
        return Ok(value.clone());
    }
    to_id(value)
        .map(|id| json!(id))
        .ok_or_else(|| StepError::Input {
            pointer: pointer.to_owned(),
            message: format!("`{value}` is not an id (a whole number)"),
        })
}

fn required_id(inputs: &Value, name: &str, dry_run: bool) -> Result<Value, StepError> {
    let value = inputs.get(name).unwrap_or(&Value::Null);
    id_value(value, &format!("/{name}"), dry_run)
}

/// The Halo ticket object for the given inputs: pass-through `fields` first, then every
/// named input that is present. Inputs left out are not sent, so Halo keeps their values.
fn ticket_body(inputs: &Value, dry_run: bool) -> Result<Map<String, Value>, StepError> {
    let mut body = inputs
        .get("fields")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (name, kind, _) in TICKET_FIELDS {
        let Some(value) = inputs.get(*name) else {
            continue;
        };
        let value = match kind {
            FieldKind::Text => value.clone(),
            FieldKind::Id => id_value(value, &format!("/{name}"), dry_run)?,
        };
        body.insert((*name).into(), value);
    }
    if let Some(Value::Array(fields)) = inputs.get("customfields") {
        let mut out = Vec::with_capacity(fields.len());
        for (i, field) in fields.iter().enumerate() {
            let id = id_value(
                field.get("id").unwrap_or(&Value::Null),
                &format!("/customfields/{i}/id"),
                dry_run,
            )?;
            out.push(
                json!({"id": id, "value": field.get("value").cloned().unwrap_or(Value::Null)}),
            );
        }
        body.insert("customfields".into(), Value::Array(out));
    }
    Ok(body)
}

fn ticket_outputs(ticket: Value) -> Result<Value, StepError> {
    let id = ticket
        .get("id")
        .and_then(to_id)
        .ok_or_else(|| StepError::Response("Halo's answer has no ticket id".into()))?;
    Ok(crate::json::object([
        ("ticket_id", Value::from(id)),
        ("ticket", ticket),
    ]))
}

const TICKET_OUTPUTS: &[OutputSpec] = &[
    OutputSpec {
        name: "ticket_id",
        description: "The ticket's id.",
    },
    OutputSpec {
        name: "ticket",
        description: "The ticket object Halo answered with.",
    },
];

/// `halo.create_ticket`: creates a ticket; outputs its id and the ticket.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateTicket;

#[async_trait]
impl Step for CreateTicket {
    fn type_name(&self) -> &'static str {
        "halo.create_ticket"
    }

    fn description(&self) -> &'static str {
        "Create a ticket in Halo."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "required": ["summary"],
            "additionalProperties": false,
            "properties": ticket_properties()
        })
    }

    fn outputs(&self) -> &'static [OutputSpec] {
        TICKET_OUTPUTS
    }

    fn connection_kind(&self) -> Option<ConnectionKind> {
        Some(ConnectionKind::Halo)
    }

    async fn execute(&self, ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
        let mut body = ticket_body(&inputs, ctx.is_dry_run())?;
        let halo = ctx.halo()?;
        stamp_idempotency_key(&mut body, halo.idempotency_field(), &ctx.idempotency_key());
        let ticket = halo
            .post_one(ctx.http(), "Tickets", Value::Object(body))
            .await?;
        ticket_outputs(ticket)
    }

    fn resend(&self, inputs: &Value) -> Resend {
        // The flow sets third_party_id itself: the key has no place to go, nothing to look up.
        if inputs
            .get("fields")
            .and_then(|f| f.get("third_party_id"))
            .is_some()
        {
            return Resend::Never;
        }
        Resend::LookUpFirst
    }

    /// Lists tickets matching the key with Halo's `search` and takes the one that carries it
    /// exactly in the idempotency field.
    async fn find_previous(
        &self,
        ctx: &StepContext,
        _inputs: &Value,
    ) -> Result<Option<Value>, StepError> {
        let halo = ctx.halo()?;
        let field = halo.idempotency_field();
        if field == IdempotencyField::None {
            return Err(StepError::OutcomeUnknown(format!(
                "an earlier attempt may have created the ticket and [halo.{}] has idempotency_field = \"none\", so it cannot be looked up; check Halo before replaying",
                halo.name()
            )));
        }
        let key = ctx.idempotency_key();
        let answer = halo
            .get(
                ctx.http(),
                &format!("Tickets?search={}&count=10", encode_component(&key)),
            )
            .await?;
        let tickets = answer
            .get("tickets")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let found = tickets
            .into_iter()
            .find(|ticket| carries_key(ticket, field, &key));
        found.map(ticket_outputs).transpose()
    }
}

/// Writes the idempotency key where the connection keeps it, unless the flow set that field.
fn stamp_idempotency_key(body: &mut Map<String, Value>, field: IdempotencyField, key: &str) {
    match field {
        IdempotencyField::ThirdPartyId => {
            body.entry("third_party_id").or_insert_with(|| json!(key));
        }
        IdempotencyField::CustomField(id) => {
            let fields = body
                .entry("customfields")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(fields) = fields
                && !fields
                    .iter()
                    .any(|f| f.get("id").and_then(to_id) == Some(id))
            {
                fields.push(json!({"id": id, "value": key}));
            }
        }
        IdempotencyField::None => {}
    }
}

fn carries_key(ticket: &Value, field: IdempotencyField, key: &str) -> bool {
    match field {
        IdempotencyField::ThirdPartyId => {
            ticket.get("third_party_id").and_then(Value::as_str) == Some(key)
        }
        IdempotencyField::CustomField(id) => ticket
            .get("customfields")
            .and_then(Value::as_array)
            .is_some_and(|fields| {
                fields.iter().any(|f| {
                    f.get("id").and_then(to_id) == Some(id)
                        && f.get("value").and_then(Value::as_str) == Some(key)
                })
            }),
        IdempotencyField::None => false,
    }
}

/// `halo.update_ticket`: changes only the given fields of an existing ticket.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpdateTicket;

#[async_trait]
impl Step for UpdateTicket {
    fn type_name(&self) -> &'static str {
        "halo.update_ticket"
    }

    fn description(&self) -> &'static str {
        "Update fields of a Halo ticket; inputs left out keep their current values."
    }

    fn input_schema(&self) -> Value {
        let mut props = ticket_properties();
        props.insert("ticket_id".into(), id_schema("The ticket to update."));
        json!({
            "type": "object",
            "required": ["ticket_id"],
            "minProperties": 2,
            "additionalProperties": false,
            "properties": props
        })
    }

    fn outputs(&self) -> &'static [OutputSpec] {
        TICKET_OUTPUTS
    }

    fn connection_kind(&self) -> Option<ConnectionKind> {
        Some(ConnectionKind::Halo)
    }

    async fn execute(&self, ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
        let id = required_id(&inputs, "ticket_id", ctx.is_dry_run())?;
        let mut body = ticket_body(&inputs, ctx.is_dry_run())?;
        body.insert("id".into(), id.clone());
        let halo = ctx.halo()?;
        let ticket = halo
            .post_one(ctx.http(), "Tickets", Value::Object(body))
            .await?;
        // Halo answers the updated ticket; keep the id we asked for if it answers nothing.
        if ticket.get("id").is_none() {
            return Ok(crate::json::object([("ticket_id", id), ("ticket", ticket)]));
        }
        ticket_outputs(ticket)
    }
}

/// `halo.add_action`: adds an action (a note with an outcome) to a ticket.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddAction;

#[async_trait]
impl Step for AddAction {
    fn type_name(&self) -> &'static str {
        "halo.add_action"
    }

    fn description(&self) -> &'static str {
        "Add an action with an outcome (and optionally a new status) to a Halo ticket."
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "required": ["ticket_id"],
            "anyOf": [{"required": ["outcome"]}, {"required": ["outcome_id"]}],
            "additionalProperties": false,
            "properties": {
                "ticket_id": id_schema("The ticket the action is added to."),
                "outcome": {"type": "string", "description": "Outcome name, e.g. \"Note\"; Halo requires an outcome."},
                "outcome_id": id_schema("Outcome id (7 is \"Internal Note\" on a stock Halo); ids differ per tenant."),
                "note": {"type": "string", "description": "The note as plain text."},
                "note_html": {"type": "string", "description": "The note as HTML."},
                "private": {"type": "boolean", "default": true, "description": "Hide the action from the end user (Halo's hiddenfromuser). Default true."},
                "new_status": id_schema("Status id the ticket moves to."),
                "send_email": {"type": "boolean", "default": false, "description": "Email the action."},
                "email_to": {"type": "string", "description": "Recipients when send_email is true."},
                "email_cc": {"type": "string", "description": "Copy recipients."},
                "email_subject": {"type": "string", "description": "Email subject."},
                "fields": {"type": "object", "description": "Further Halo action fields sent as they are."}
            }
        })
    }

    fn outputs(&self) -> &'static [OutputSpec] {
        const OUTPUTS: &[OutputSpec] = &[
            OutputSpec {
                name: "action_id",
                description: "The new action's id (null if Halo did not answer one).",
            },
            OutputSpec {
                name: "ticket_id",
                description: "The ticket the action was added to.",
            },
            OutputSpec {
                name: "action",
                description: "The action object Halo answered with.",
            },
        ];
        OUTPUTS
    }

    fn connection_kind(&self) -> Option<ConnectionKind> {
        Some(ConnectionKind::Halo)
    }

    async fn execute(&self, ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
        let ticket_id = required_id(&inputs, "ticket_id", ctx.is_dry_run())?;
        let mut body = inputs
            .get("fields")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        body.insert("ticket_id".into(), ticket_id.clone());
        let copy = [
            ("outcome", "outcome"),
            ("note", "note"),
            ("note_html", "note_html"),
            ("email_to", "emailto"),
            ("email_cc", "emailcc"),
            ("email_subject", "emailsubject"),
        ];
        for (input, field) in copy {
            if let Some(v) = inputs.get(input) {
                body.insert(field.into(), v.clone());
            }
        }
        for (input, field) in [("outcome_id", "outcome_id"), ("new_status", "new_status")] {
            if let Some(v) = inputs.get(input) {
                body.insert(
                    field.into(),
                    id_value(v, &format!("/{input}"), ctx.is_dry_run())?,
                );
            }
        }
        let private = inputs
            .get("private")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        body.insert("hiddenfromuser".into(), json!(private));
        let send_email = inputs
            .get("send_email")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        body.insert("sendemail".into(), json!(send_email));
        let halo = ctx.halo()?;
        let action = halo
            .post_one(ctx.http(), "Actions", Value::Object(body))
            .await?;
        Ok(action_outputs(ticket_id, action))
    }

    fn resend(&self, _inputs: &Value) -> Resend {
        Resend::LookUpFirst
    }

    /// Halo actions carry no key of ours: an action on the same ticket with the same outcome,
    /// note and visibility is taken as the one an earlier attempt added.
    async fn find_previous(
        &self,
        ctx: &StepContext,
        inputs: &Value,
    ) -> Result<Option<Value>, StepError> {
        let ticket_id = required_id(inputs, "ticket_id", false)?;
        let halo = ctx.halo()?;
        let answer = halo
            .get(ctx.http(), &format!("Actions?ticket_id={ticket_id}"))
            .await?;
        let private = inputs
            .get("private")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let same = |action: &&Value| {
            let text = |key: &str| action.get(key).and_then(Value::as_str);
            text("note") == inputs.get("note").and_then(Value::as_str)
                && text("note_html") == inputs.get("note_html").and_then(Value::as_str)
                && text("outcome") == inputs.get("outcome").and_then(Value::as_str)
                && action.get("outcome_id").and_then(to_id)
                    == inputs.get("outcome_id").and_then(to_id)
                && action.get("hiddenfromuser").and_then(Value::as_bool) == Some(private)
        };
        let found = answer
            .get("actions")
            .and_then(Value::as_array)
            .and_then(|actions| actions.iter().rev().find(same).cloned());
        Ok(found.map(|action| action_outputs(ticket_id, action)))
    }
}

fn action_outputs(ticket_id: Value, action: Value) -> Value {
    let action_id = action.get("id").and_then(to_id);
    crate::json::object([
        ("action_id", action_id.map_or(Value::Null, Value::from)),
        ("ticket_id", ticket_id),
        ("action", action),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_normalised_and_absent_inputs_are_not_sent() {
        let body = ticket_body(
            &json!({
            "summary": "s", "client_id": "12", "site_id": 20.0, "agent_id": "3.0",
            "customfields": [{"id": "178", "value": "ALERT-42"}],
            "fields": {"sendack": false, "summary": "overridden"}
            }),
            false,
        )
        .unwrap();
        assert_eq!(
            Value::Object(body),
            json!({"sendack": false, "summary": "s", "client_id": 12, "site_id": 20, "agent_id": 3,
                   "customfields": [{"id": 178, "value": "ALERT-42"}]})
        );
        assert!(ticket_body(&json!({"client_id": "twelve"}), false).is_err());
        let placeholder = json!({"parent_id": "{{steps.create.ticket_id}}"});
        assert!(ticket_body(&placeholder, false).is_err());
        assert_eq!(
            ticket_body(&placeholder, true).unwrap()["parent_id"],
            "{{steps.create.ticket_id}}"
        );
    }
}
