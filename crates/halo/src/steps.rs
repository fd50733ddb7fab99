//! Create Ticket, Update Ticket and Add Action on a Halo instance
//! (`../shared/reference/halo-api.md` §2 and §3).

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::{CreatedTicketSearch, HALO, HaloConnection, id_of};
use haloflow_core::step::{
    OutputSpec, Resend, Step, StepContext, StepDescription, StepError, is_placeholder,
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
    (
        "team",
        FieldKind::Text,
        "Team name (Halo's ticket schema has no team id).",
    ),
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
    id_of(value).filter(|id| *id >= 0)
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
    Ok(haloflow_core::json::object([
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
    fn describe(&self) -> StepDescription {
        StepDescription::new("halo.create_ticket", "Create a ticket in Halo.")
            .input_schema(json!({
                "type": "object",
                "required": ["summary"],
                "additionalProperties": false,
                "properties": ticket_properties()
            }))
            .outputs(TICKET_OUTPUTS)
            .connection_kind(HALO)
    }

    async fn execute(&self, ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
        let mut body = ticket_body(&inputs, ctx.is_dry_run())?;
        let halo = ctx.connection::<HaloConnection>(HALO)?;
        halo.idempotency_field()
            .stamp(&mut body, &ctx.idempotency_key());
        let ticket = halo
            .post_one(ctx.http(), "Tickets", Value::Object(body))
            .await?;
        ticket_outputs(ticket)
    }

    /// A flow that writes the key field itself leaves the key nowhere to go: nothing to look
    /// up, so an unknown outcome is never sent again.
    fn resend(&self, inputs: &Value) -> Resend {
        let fields = inputs.get("fields").and_then(Value::as_object);
        if fields.is_some_and(|f| f.contains_key("third_party_id_string")) {
            return Resend::Never;
        }
        Resend::LookUpFirst
    }

    /// Reads the newest tickets (of the input's client) and takes the one carrying this step's
    /// key exactly in the connection's idempotency field ([`crate::HaloConnection::find_created_ticket`]).
    async fn find_previous(
        &self,
        ctx: &StepContext,
        inputs: &Value,
    ) -> Result<Option<Value>, StepError> {
        let halo = ctx.connection::<HaloConnection>(HALO)?;
        let body = ticket_body(inputs, false)?;
        let key = ctx.idempotency_key();
        if halo.idempotency_field().is_set_in(&body) {
            return Err(StepError::OutcomeUnknown(
                "an earlier attempt may have created the ticket, and the flow writes the idempotency field itself, so it cannot be looked up; check Halo, then replay the run from this step if there is no ticket".into(),
            ));
        }
        let search = CreatedTicketSearch {
            key: &key,
            client_id: body.get("client_id").and_then(to_id),
            // A flow that sets dateoccurred may backdate the ticket: no time bound then.
            since_ms: ctx
                .first_attempt_at_ms()
                .filter(|_| !body.contains_key("dateoccurred")),
        };
        let found = halo.find_created_ticket(ctx.http(), search).await?;
        found.map(ticket_outputs).transpose()
    }
}

/// `halo.update_ticket`: changes only the given fields of an existing ticket.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpdateTicket;

#[async_trait]
impl Step for UpdateTicket {
    fn describe(&self) -> StepDescription {
        let mut props = ticket_properties();
        props.insert("ticket_id".into(), id_schema("The ticket to update."));
        StepDescription::new(
            "halo.update_ticket",
            "Update fields of a Halo ticket; inputs left out keep their current values.",
        )
        .input_schema(json!({
            "type": "object",
            "required": ["ticket_id"],
            "minProperties": 2,
            "additionalProperties": false,
            "properties": props
        }))
        .outputs(TICKET_OUTPUTS)
        .connection_kind(HALO)
    }

    // Sets the given fields: sending again sets the same values.
    fn resend(&self, _inputs: &Value) -> Resend {
        Resend::Safe
    }

    async fn execute(&self, ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
        let id = required_id(&inputs, "ticket_id", ctx.is_dry_run())?;
        let mut body = ticket_body(&inputs, ctx.is_dry_run())?;
        body.insert("id".into(), id.clone());
        let halo = ctx.connection::<HaloConnection>(HALO)?;
        let ticket = halo
            .post_one(ctx.http(), "Tickets", Value::Object(body))
            .await?;
        // Halo answers the updated ticket; keep the id we asked for if it answers nothing.
        if ticket.get("id").is_none() {
            return Ok(haloflow_core::json::object([
                ("ticket_id", id),
                ("ticket", ticket),
            ]));
        }
        ticket_outputs(ticket)
    }
}

/// `halo.get_ticket`: reads a ticket and gives the flow its fields as the trigger's `ticket`,
/// `ticket_id` and `agent_assigned`: what an "event information only" webhook (object id and
/// event, no ticket, halo-api.md §5) leaves out. Put it first; the steps after it see the ticket.
#[derive(Debug, Clone, Copy, Default)]
pub struct GetTicket;

#[async_trait]
impl Step for GetTicket {
    fn describe(&self) -> StepDescription {
        StepDescription::new(
            "halo.get_ticket",
            "Read a Halo ticket; the steps after it see it as trigger.ticket (with trigger.agent_assigned), for webhooks that carry only the ticket's id.",
        )
        .input_schema(json!({
            "type": "object",
            "required": ["ticket_id"],
            "additionalProperties": false,
            "properties": {
                "ticket_id": id_schema("The ticket to read, usually {{trigger.ticket_id}}.")
            }
        }))
        .output("ticket_id", "The ticket's id.")
        .output("ticket", "The ticket as Halo answers GET /Tickets/{id}.")
        .output("agent_assigned", "True when the ticket has an agent (agent_id > 0).")
        .connection_kind(HALO)
        .refining_trigger()
    }

    // A read.
    fn resend(&self, _inputs: &Value) -> Resend {
        Resend::Safe
    }

    async fn execute(&self, ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
        let id = required_id(&inputs, "ticket_id", ctx.is_dry_run())?;
        let halo = ctx.connection::<HaloConnection>(HALO)?;
        let ticket = halo.get(ctx.http(), &format!("Tickets/{id}")).await?;
        let agent_assigned = ticket
            .get("agent_id")
            .and_then(to_id)
            .is_some_and(|agent| agent > 0);
        Ok(haloflow_core::json::object([
            ("ticket_id", id),
            ("ticket", ticket),
            ("agent_assigned", Value::Bool(agent_assigned)),
        ]))
    }
}

/// `halo.add_action`: adds an action (a note with an outcome) to a ticket.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddAction;

#[async_trait]
impl Step for AddAction {
    fn describe(&self) -> StepDescription {
        StepDescription::new(
            "halo.add_action",
            "Add an action with an outcome (and optionally a new status) to a Halo ticket.",
        )
        .input_schema(json!({
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
        }))
        .output("action_id", "The new action's id (null if Halo did not answer one).")
        .output("ticket_id", "The ticket the action was added to.")
        .output("action", "The action object Halo answered with.")
        .connection_kind(HALO)
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
        let halo = ctx.connection::<HaloConnection>(HALO)?;
        // An outcome given by name goes by id where the tenant's outcome list is readable
        // (ids differ per tenant; a name Halo does not know fails here, with the list).
        if let (Some(name), None, false) = (
            inputs.get("outcome").and_then(Value::as_str),
            inputs.get("outcome_id"),
            ctx.is_dry_run(),
        ) && let Some(id) = halo.outcome_id(ctx.http(), name).await?
        {
            body.remove("outcome");
            body.insert("outcome_id".into(), json!(id));
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
        let action = halo
            .post_one(ctx.http(), "Actions", Value::Object(body))
            .await?;
        Ok(action_outputs(ticket_id, action))
    }

    fn resend(&self, _inputs: &Value) -> Resend {
        Resend::LookUpFirst
    }

    /// Halo actions carry no key of ours: an action on the same ticket, with the same outcome
    /// (by id or by name; Halo answers both), the same note texts and visibility, added since
    /// the first attempt began, is taken as the one that attempt added.
    async fn find_previous(
        &self,
        ctx: &StepContext,
        inputs: &Value,
    ) -> Result<Option<Value>, StepError> {
        let ticket_id = required_id(inputs, "ticket_id", false)?;
        let halo = ctx.connection::<HaloConnection>(HALO)?;
        let answer = halo
            .get(ctx.http(), &format!("Actions?ticket_id={ticket_id}"))
            .await?;
        let since = ctx
            .first_attempt_at_ms()
            .map(|ms| ms - crate::CLOCK_SKEW_MS);
        let found = answer
            .get("actions")
            .and_then(Value::as_array)
            .and_then(|actions| {
                actions
                    .iter()
                    .rev()
                    .find(|a| same_action(a, inputs, since))
                    .cloned()
            });
        Ok(found.map(|action| action_outputs(ticket_id, action)))
    }
}

/// Whether `action`, as Halo answers it, is what these inputs add (see `find_previous`).
fn same_action(action: &Value, inputs: &Value, since_ms: Option<i64>) -> bool {
    let text = |key: &str| action.get(key).and_then(Value::as_str);
    let input = |key: &str| inputs.get(key).and_then(Value::as_str);
    let outcome = match (inputs.get("outcome_id").and_then(to_id), input("outcome")) {
        (Some(id), _) => action.get("outcome_id").and_then(to_id) == Some(id),
        (None, Some(name)) => {
            text("outcome").is_some_and(|o| o.trim().eq_ignore_ascii_case(name.trim()))
        }
        (None, None) => false,
    };
    let private = inputs
        .get("private")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let recent = since_ms.is_none_or(|since| {
        let at = text("datetime").and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        at.is_none_or(|at| at.timestamp_millis() >= since)
    });
    outcome
        && recent
        && ["note", "note_html"]
            .iter()
            .all(|key| input(key).is_none_or(|given| text(key) == Some(given)))
        && action.get("hiddenfromuser").and_then(Value::as_bool) == Some(private)
}

fn action_outputs(ticket_id: Value, action: Value) -> Value {
    let action_id = action.get("id").and_then(to_id);
    haloflow_core::json::object([
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
