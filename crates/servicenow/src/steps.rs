//! Send to ServiceNow, Log to Supplier and note sync: the seed `halo-servicenow-integration.txt`
//! as steps, over the Table and Attachment APIs (`../shared/reference/servicenow-api.md`).
//!
//! The ServiceNow instance is picked by the ticket: its client's (`[servicenow.customers]`) or
//! its supplier's (`[servicenow.suppliers]`). The step's `connection` is the Halo it reads from.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::mapping::{self, RECORD_TYPES};
use crate::{ServiceNowConnection, ServiceNowConnections, Side, digest, notes};
use haloflow_core::step::{OutputSpec, Resend, Step, StepContext, StepDescription, StepError};
use haloflow_core::storage::{Link, LinkOrigin, now_ms};
use haloflow_halo::{HALO, HaloConnection};

fn id_schema(description: &str) -> Value {
    json!({"type": ["integer", "string"], "pattern": "^[0-9]+(\\.0+)?$", "minimum": 0, "description": description})
}

fn send_schema(what: &str) -> Value {
    json!({
        "type": "object",
        "required": ["ticket_id"],
        "additionalProperties": false,
        "properties": {
            "ticket_id": id_schema(what),
            "record_type": {
                "enum": RECORD_TYPES,
                "description": "The ServiceNow table; default: the connection's record_types entry for the ticket's type, else incident."
            }
        }
    })
}

const RECORD_OUTPUTS: &[OutputSpec] = &[
    OutputSpec {
        name: "sys_id",
        description: "The record's sys_id.",
    },
    OutputSpec {
        name: "number",
        description: "The record's number, e.g. INC0010001.",
    },
    OutputSpec {
        name: "table",
        description: "The table the record is in.",
    },
    OutputSpec {
        name: "link",
        description: "The link recorded between the ticket and the record.",
    },
    OutputSpec {
        name: "caller_matched",
        description: "Whether the end user's email matched a ServiceNow user (else the default caller).",
    },
    OutputSpec {
        name: "attachments",
        description: "The public attachments sent with the record.",
    },
    OutputSpec {
        name: "children",
        description: "Child tickets sent with a problem.",
    },
    OutputSpec {
        name: "skipped",
        description: "True when nothing was sent (a supplier without ServiceNow).",
    },
    OutputSpec {
        name: "reason",
        description: "Why nothing was sent.",
    },
];

/// Reads a non-negative integer id from a number, `"42"` or `"42.0"`.
fn to_id(value: &Value) -> Option<i64> {
    haloflow_core::json::id_of(value).filter(|id| *id >= 0)
}

fn required_id(inputs: &Value, name: &str) -> Result<i64, StepError> {
    inputs
        .get(name)
        .and_then(to_id)
        .ok_or_else(|| StepError::Input {
            pointer: format!("/{name}"),
            message: "not an id (a whole number)".into(),
        })
}

/// `HALO-<ticket id>-<digest of run and step>`: the same on every attempt of a step run,
/// within ServiceNow's 100-character limit, and recognisable by the sync back (§2.2).
fn correlation_id(ctx: &StepContext, ticket_id: i64, part: &str) -> String {
    format!(
        "HALO-{ticket_id}-{}",
        digest(&format!("{}:{part}", ctx.idempotency_key()))
    )
}

async fn read_ticket(
    ctx: &StepContext,
    halo: &HaloConnection,
    ticket_id: i64,
) -> Result<Value, StepError> {
    halo.get(
        ctx.http(),
        &format!("Tickets/{ticket_id}?includedetails=true"),
    )
    .await
}

/// The field a record's caller goes in: incidents have `caller_id`, requests `requested_for`.
fn caller_field(table: &str) -> &'static str {
    match table {
        "incident" => "caller_id",
        "sc_request" | "sc_req_item" => "requested_for",
        _ => "opened_by",
    }
}

/// A guess of a file's type from its name, for the upload's Content-Type.
fn content_type(file_name: &str) -> &'static str {
    let extension = file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "txt" | "log" => "text/plain",
        "csv" => "text/csv",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// What was sent for one ticket.
struct Sent {
    record: Value,
    table: String,
    link: Link,
    caller_matched: Option<bool>,
    attachments: Vec<String>,
    children: Vec<Value>,
}

impl Sent {
    fn outputs(self) -> Value {
        json!({
            "sys_id": self.record.get("sys_id").cloned().unwrap_or(Value::Null),
            "number": self.record.get("number").cloned().unwrap_or(Value::Null),
            "table": self.table,
            "link": link_output(&self.link),
            "caller_matched": self.caller_matched,
            "attachments": self.attachments,
            "children": self.children,
            "skipped": false,
            "reason": Value::Null,
        })
    }
}

/// A link as the `link` output: the field names and origins flows have always read (a Halo
/// ticket and a ServiceNow record), whatever the storage calls them.
fn link_output(link: &Link) -> Value {
    let created_by = match link.created_by {
        LinkOrigin::Ticket => "halo",
        LinkOrigin::Remote => "servicenow",
    };
    json!({
        "halo_connection": link.ticket_connection, "halo_ticket_id": link.ticket_id,
        "servicenow": link.remote, "table": link.remote_table, "sys_id": link.remote_id,
        "number": link.number, "created_by": created_by,
        "created_at_ms": link.created_at_ms, "updated_at_ms": link.updated_at_ms,
    })
}

fn skipped(reason: String) -> Value {
    json!({"sys_id": null, "number": null, "table": null, "link": null, "caller_matched": null,
           "attachments": [], "children": [], "skipped": true, "reason": reason})
}

/// Sends tickets to one instance. With `adopt`, records an earlier attempt created are looked
/// up (by correlation id) and taken over, and attachments already there are not sent again.
struct Sender<'a> {
    ctx: &'a StepContext,
    halo: Arc<HaloConnection>,
    sn: Arc<ServiceNowConnection>,
    adopt: bool,
}

/// Where a child record hangs: the problem it was sent with.
struct ParentRecord {
    sys_id: String,
}

impl Sender<'_> {
    /// Sends one ticket (and a problem's children when enabled). In adopt mode, `None` when
    /// the earlier attempt created nothing.
    async fn send(
        &self,
        ticket: &Value,
        record_type: Option<&str>,
        parent: Option<&ParentRecord>,
    ) -> Result<Option<Sent>, StepError> {
        let ticket_id = ticket
            .get("id")
            .and_then(to_id)
            .ok_or_else(|| StepError::Response("Halo's ticket has no id".into()))?;
        let table = self.record_type(ticket, record_type)?;
        let correlation = correlation_id(self.ctx, ticket_id, &ticket_id.to_string());
        let found = if self.adopt {
            self.find_created(&table, &correlation).await?
        } else {
            None
        };
        let (record, caller_matched) = match found {
            Some(record) => (record, None),
            None if self.adopt && parent.is_none() => return Ok(None),
            None => {
                let (record, matched) = self
                    .create(ticket, ticket_id, &table, &correlation, parent)
                    .await?;
                (record, Some(matched))
            }
        };
        let link = self.link(ticket_id, &table, &record)?;
        // 1-1: sending again to another record replaces the ticket's link.
        self.ctx.save_link(&link).await?;
        let attachments = if self.sn.sync_attachments() {
            self.send_attachments(ticket_id, &table, &link.remote_id)
                .await?
        } else {
            Vec::new()
        };
        let children =
            if table == "problem" && self.sn.config.sync_child_tickets && parent.is_none() {
                self.send_children(ticket_id, &link.remote_id).await?
            } else {
                Vec::new()
            };
        Ok(Some(Sent {
            record,
            table,
            link,
            caller_matched,
            attachments,
            children,
        }))
    }

    /// The record an earlier attempt created, found by its correlation id.
    async fn find_created(
        &self,
        table: &str,
        correlation: &str,
    ) -> Result<Option<Value>, StepError> {
        Ok(self
            .sn
            .query(
                self.ctx.http(),
                table,
                &format!("correlation_id={correlation}"),
                Some("sys_id,number,correlation_id"),
                1,
            )
            .await?
            .into_iter()
            .next())
    }

    /// The link between the ticket and its record.
    fn link(&self, ticket_id: i64, table: &str, record: &Value) -> Result<Link, StepError> {
        let sys_id = record
            .get("sys_id")
            .and_then(Value::as_str)
            .ok_or_else(|| StepError::Response("ServiceNow's record has no sys_id".into()))?;
        let now = now_ms();
        Ok(Link {
            ticket_connection: self.ctx.connection.clone().unwrap_or_else(|| "halo".into()),
            ticket_id,
            remote: self.sn.key(),
            remote_table: table.to_owned(),
            remote_id: sys_id.to_owned(),
            number: record
                .get("number")
                .and_then(Value::as_str)
                .map(str::to_owned),
            created_by: LinkOrigin::Ticket,
            created_at_ms: now,
            updated_at_ms: now,
        })
    }

    /// Sends a problem's child tickets under it (not those sync back created from this
    /// instance: they have their records).
    async fn send_children(&self, ticket_id: i64, sys_id: &str) -> Result<Vec<Value>, StepError> {
        let problem = ParentRecord {
            sys_id: sys_id.to_owned(),
        };
        let child_ids = self.halo.child_tickets(self.ctx.http(), ticket_id).await?;
        let mut children = Vec::new();
        for child_id in child_ids {
            if from_servicenow(self.ctx, child_id, &self.sn)
                .await?
                .is_some()
            {
                continue;
            }
            let child = read_ticket(self.ctx, &self.halo, child_id).await?;
            let sent = Box::pin(self.send(&child, None, Some(&problem))).await?;
            if let Some(sent) = sent {
                children.push(json!({
                    "ticket_id": child_id, "table": sent.table,
                    "sys_id": sent.link.remote_id, "number": sent.link.number,
                }));
            }
        }
        Ok(children)
    }

    /// The table: the step's input, else the connection's default for the ticket type, else
    /// incident.
    fn record_type(&self, ticket: &Value, input: Option<&str>) -> Result<String, StepError> {
        let from_type = ticket
            .get("tickettype_id")
            .and_then(mapping::halo_text)
            .and_then(|t| self.sn.config.record_types.get(&t).cloned());
        let table = input
            .map(str::to_owned)
            .or(from_type)
            .unwrap_or_else(|| "incident".to_owned());
        if !RECORD_TYPES.contains(&table.as_str()) {
            return Err(StepError::Connection(format!(
                "{}: record type `{table}` is not one of {}",
                self.sn.config_table(),
                RECORD_TYPES.join(", ")
            )));
        }
        Ok(table)
    }

    /// Creates the record: mapped fields, state New, the caller, the parent, the correlation
    /// id. Returns the record and whether the caller matched by email.
    async fn create(
        &self,
        ticket: &Value,
        ticket_id: i64,
        table: &str,
        correlation: &str,
        parent: Option<&ParentRecord>,
    ) -> Result<(Value, bool), StepError> {
        let http = self.ctx.http();
        let mut fields = mapping::record_fields(&self.sn.config, table, ticket);
        fields.insert("state".into(), json!(mapping::new_state(table)));
        fields.insert("correlation_id".into(), json!(correlation));
        fields.insert(
            "correlation_display".into(),
            json!(format!("Halo #{ticket_id}")),
        );
        let matched = self.matching_caller(ticket).await?;
        let caller = matched
            .clone()
            .or_else(|| self.sn.config.default_caller.clone());
        if let Some(caller) = caller {
            fields.insert(caller_field(table).into(), json!(caller));
        }
        match parent {
            Some(problem) => {
                // An incident names its problem in problem_id alone; other children by parent
                // (and a problem task by problem too).
                if table != "incident" {
                    fields.insert("parent".into(), json!(problem.sys_id));
                }
                if let Some(field) = mapping::parent_field(table, "problem") {
                    fields.insert(field.into(), json!(problem.sys_id));
                }
            }
            None => self.relate_to_parent(&mut fields, ticket, table).await?,
        }
        let record = self.sn.create(http, table, Value::Object(fields)).await?;
        Ok((record, matched.is_some()))
    }

    /// The sys_id of the active ServiceNow user with the end user's email, if any.
    async fn matching_caller(&self, ticket: &Value) -> Result<Option<String>, StepError> {
        let email = ticket
            .get("user_email")
            .and_then(Value::as_str)
            .map(|e| e.trim().to_lowercase())
            .filter(|e| !e.is_empty() && !e.contains('^'));
        let Some(email) = email else {
            return Ok(None);
        };
        self.sn.caller_for_email(self.ctx.http(), &email).await
    }

    /// Parent and child stay related: a task under its parent's linked record, by `parent`
    /// and by the child table's own reference (an incident task's `incident`, §2.5).
    async fn relate_to_parent(
        &self,
        fields: &mut serde_json::Map<String, Value>,
        ticket: &Value,
        table: &str,
    ) -> Result<(), StepError> {
        if let Some(parent_id) = ticket.get("parent_id").and_then(to_id).filter(|id| *id > 0)
            && let Some(link) = self.ctx.link_for_ticket(parent_id).await?
            && link.remote == self.sn.key()
        {
            fields.insert("parent".into(), json!(link.remote_id));
            if let Some(field) = mapping::parent_field(table, &link.remote_table) {
                fields.insert(field.into(), json!(link.remote_id));
            }
        }
        Ok(())
    }

    /// Sends the ticket's public attachments, skipping names the record already has (after a
    /// lost answer).
    async fn send_attachments(
        &self,
        ticket_id: i64,
        table: &str,
        sys_id: &str,
    ) -> Result<Vec<String>, StepError> {
        let http = self.ctx.http();
        let listed = self
            .halo
            .get(http, &format!("Attachment?ticket_id={ticket_id}"))
            .await?;
        let public = public_attachments(&listed);
        if public.is_empty() {
            return Ok(Vec::new());
        }
        let already = if self.adopt {
            self.attached(table, sys_id).await?
        } else {
            HashSet::new()
        };
        let mut sent = Vec::new();
        for attachment in public {
            let (Some(id), Some(name)) = (
                attachment.get("id").and_then(to_id),
                attachment.get("filename").and_then(Value::as_str),
            ) else {
                continue;
            };
            if !already.contains(name) {
                let bytes = self
                    .halo
                    .get_bytes(http, &format!("Attachment/{id}"))
                    .await?;
                self.sn
                    .upload(http, table, sys_id, name, content_type(name), bytes)
                    .await?;
            }
            sent.push(name.to_owned());
        }
        Ok(sent)
    }

    /// The names of the files the record already has.
    async fn attached(&self, table: &str, sys_id: &str) -> Result<HashSet<String>, StepError> {
        Ok(self
            .sn
            .attachments(self.ctx.http(), table, sys_id)
            .await?
            .iter()
            .filter_map(|a| {
                a.get("file_name")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect())
    }
}

/// The attachments of Halo's list that are shown to users.
fn public_attachments(listed: &Value) -> Vec<Value> {
    listed
        .get("attachments")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|a| a.get("showforusers").and_then(Value::as_bool) == Some(true))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The link of a ticket that sync back created from a record of `sn`'s instance: such a
/// ticket already has its record there, and sending it would make a second one.
async fn from_servicenow(
    ctx: &StepContext,
    ticket_id: i64,
    sn: &ServiceNowConnection,
) -> Result<Option<Link>, StepError> {
    Ok(ctx
        .link_for_ticket(ticket_id)
        .await?
        .filter(|link| link.created_by == LinkOrigin::Remote && link.remote == sn.key()))
}

/// The outputs for a ticket that came from the instance: skipped, naming its record.
fn came_from(ticket_id: i64, link: &Link) -> Value {
    let mut outputs = skipped(format!(
        "ticket {ticket_id} came from ServiceNow ({} {} {}) and is linked to that record; it is not sent again",
        link.remote,
        link.remote_table,
        link.number.as_deref().unwrap_or(&link.remote_id)
    ));
    outputs["sys_id"] = json!(link.remote_id);
    outputs["number"] = json!(link.number);
    outputs["table"] = json!(link.remote_table);
    outputs["link"] = link_output(link);
    outputs
}

/// The connection for a customer's ticket: by its client id.
fn customer_connection(
    ctx: &StepContext,
    ticket: &Value,
) -> Result<Arc<ServiceNowConnection>, StepError> {
    let client = ticket.get("client_id").and_then(mapping::halo_text);
    let Some(client) = client else {
        return Err(StepError::Failed(
            "the ticket has no client (client_id); assign it to the customer whose ServiceNow it goes to".into(),
        ));
    };
    ctx.connections().servicenow(Side::Customer, &client).ok_or_else(|| {
        StepError::Connection(format!(
            "Halo client {client} has no ServiceNow connection; add [servicenow.customers.\"{client}\"] to the config file"
        ))
    })
}

/// `servicenow.send_ticket` (the ticket's customer's instance) and
/// `servicenow.log_to_supplier` (its supplier's; a supplier without one is skipped, so one flow
/// serves both kinds): one step type per side, the same sending.
#[derive(Debug, Clone, Copy)]
pub struct SendToServiceNow {
    side: Side,
}

/// `servicenow.send_ticket`.
pub const SEND_TICKET: SendToServiceNow = SendToServiceNow {
    side: Side::Customer,
};

/// `servicenow.log_to_supplier`.
pub const LOG_TO_SUPPLIER: SendToServiceNow = SendToServiceNow {
    side: Side::Supplier,
};

impl SendToServiceNow {
    async fn run(
        &self,
        ctx: &StepContext,
        inputs: &Value,
        adopt: bool,
    ) -> Result<Option<Value>, StepError> {
        let halo = ctx.connection::<HaloConnection>(HALO)?;
        let ticket_id = required_id(inputs, "ticket_id")?;
        let ticket = read_ticket(ctx, &halo, ticket_id).await?;
        let sn = match self.side {
            Side::Customer => customer_connection(ctx, &ticket)?,
            Side::Supplier => match supplier_connection(ctx, &halo, &ticket, ticket_id).await? {
                Ok(sn) => sn,
                Err(skipped) => return Ok(Some(skipped)),
            },
        };
        if let Some(link) = from_servicenow(ctx, ticket_id, &sn).await? {
            return Ok(Some(came_from(ticket_id, &link)));
        }
        let sender = Sender {
            ctx,
            halo,
            sn,
            adopt,
        };
        let record_type = inputs.get("record_type").and_then(Value::as_str);
        Ok(sender
            .send(&ticket, record_type, None)
            .await?
            .map(Sent::outputs))
    }
}

/// The supplier's instance (`Ok(Err(outputs))`: skipped, the supplier has none). The supplier
/// must have an email address in Halo.
async fn supplier_connection(
    ctx: &StepContext,
    halo: &HaloConnection,
    ticket: &Value,
    ticket_id: i64,
) -> Result<Result<Arc<ServiceNowConnection>, Value>, StepError> {
    let Some(supplier_id) = ticket
        .get("supplier_id")
        .and_then(to_id)
        .filter(|id| *id > 0)
    else {
        return Err(StepError::Failed(format!(
            "ticket {ticket_id} has no supplier; set the supplier on the ticket before logging to it"
        )));
    };
    let Some(sn) = ctx
        .connections()
        .servicenow(Side::Supplier, &supplier_id.to_string())
    else {
        return Ok(Err(skipped(format!(
            "supplier {supplier_id} has no ServiceNow connection ([servicenow.suppliers.\"{supplier_id}\"])"
        ))));
    };
    let supplier = halo
        .get(ctx.http(), &format!("Supplier/{supplier_id}"))
        .await?;
    // Halo's `Company` schema (a supplier) names it `email_address`.
    let email = supplier
        .get("email_address")
        .and_then(Value::as_str)
        .filter(|e| !e.trim().is_empty());
    if email.is_none() {
        return Err(StepError::Failed(format!(
            "supplier {supplier_id} has no email address; Log to Supplier needs one: add it to the supplier in Halo"
        )));
    }
    Ok(Ok(sn))
}

#[async_trait]
impl Step for SendToServiceNow {
    fn describe(&self) -> StepDescription {
        let (type_name, summary, ticket) = match self.side {
            Side::Customer => (
                "servicenow.send_ticket",
                "Create the Halo ticket in its customer's ServiceNow (mapped fields, caller, parent, attachments) and link them.",
                "The Halo ticket to send.",
            ),
            Side::Supplier => (
                "servicenow.log_to_supplier",
                "Create the Halo ticket in its supplier's ServiceNow; skipped for a supplier without one.",
                "The Halo ticket to log to its supplier.",
            ),
        };
        StepDescription::new(type_name, summary)
            .input_schema(send_schema(ticket))
            .outputs(RECORD_OUTPUTS)
            .connection_kind(HALO)
    }

    async fn execute(&self, ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
        self.run(ctx, &inputs, false)
            .await?
            .ok_or_else(|| StepError::Failed("nothing was created".into()))
    }

    fn resend(&self, _inputs: &Value) -> Resend {
        Resend::LookUpFirst
    }

    async fn find_previous(
        &self,
        ctx: &StepContext,
        inputs: &Value,
    ) -> Result<Option<Value>, StepError> {
        self.run(ctx, inputs, true).await
    }
}

/// `servicenow.sync_note`: a Halo note to the linked record, as a work note (hidden from the
/// user) or a comment (visible). Only the note is synced.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncNote;

/// The note, its visibility, and the record to write it to.
struct NoteToSync {
    text: String,
    private: bool,
    link: Link,
    sn: Arc<ServiceNowConnection>,
}

impl SyncNote {
    /// `Ok(Err(outputs))` when the note is skipped.
    async fn prepare(
        &self,
        ctx: &StepContext,
        inputs: &Value,
    ) -> Result<Result<NoteToSync, Value>, StepError> {
        let ticket_id = required_id(inputs, "ticket_id")?;
        let Some(link) = ctx.link_for_ticket(ticket_id).await? else {
            return Err(StepError::Failed(format!(
                "ticket {ticket_id} is not linked to a ServiceNow record; send it first (servicenow.send_ticket or servicenow.log_to_supplier)"
            )));
        };
        let (side, sn) = linked_connection(ctx, ticket_id, &link)?;
        // Customer syncs need the action's "Sync to ServiceNow"; supplier updates do not.
        let sync = inputs.get("sync").and_then(Value::as_bool).unwrap_or(true);
        if side == Side::Customer && !sync {
            return Ok(Err(skipped_note(
                &link,
                "the action is not marked Sync to ServiceNow",
            )));
        }
        let (text, private) = match inputs.get("action_id").and_then(to_id) {
            Some(action_id) => action_note(ctx, action_id).await?,
            None => (
                note_or_html(
                    inputs.get("note").and_then(Value::as_str),
                    inputs.get("note_html").and_then(Value::as_str),
                ),
                inputs
                    .get("private")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            ),
        };
        if text.trim().is_empty() {
            return Ok(Err(skipped_note(&link, "the note is empty")));
        }
        // A note that came from ServiceNow (sync back) is not sent back to it.
        if text.starts_with(crate::sync::FROM_SERVICENOW) {
            return Ok(Err(skipped_note(&link, "the note came from ServiceNow")));
        }
        Ok(Ok(NoteToSync {
            text,
            private,
            link,
            sn,
        }))
    }

    /// The marker that ends every note we write: the configured text and a digest of the step
    /// run, so the sync back ignores our own notes and a lost answer can be looked up.
    fn marker(ctx: &StepContext, sn: &ServiceNowConnection) -> String {
        format!("[{} {}]", sn.note_marker(), digest(&ctx.idempotency_key()))
    }

    fn outputs(note: &NoteToSync, field: &str, text: &str) -> Value {
        json!({"skipped": false, "reason": null, "sys_id": note.link.remote_id,
               "table": note.link.remote_table, "field": field, "note": text})
    }
}

/// The connection of the instance a ticket's link names, and its side.
fn linked_connection(
    ctx: &StepContext,
    ticket_id: i64,
    link: &Link,
) -> Result<(Side, Arc<ServiceNowConnection>), StepError> {
    let (side, id) = link.remote.split_once('/').unwrap_or(("", ""));
    let side = if side == Side::Supplier.as_str() {
        Side::Supplier
    } else {
        Side::Customer
    };
    let sn = ctx.connections().servicenow(side, id).ok_or_else(|| {
        StepError::Connection(format!(
            "ticket {ticket_id} is linked to {} but the config file has no [servicenow.{}.\"{id}\"]",
            link.remote,
            side.as_str()
        ))
    })?;
    Ok((side, sn))
}

/// A Halo action's note and whether it is hidden from the user.
async fn action_note(ctx: &StepContext, action_id: i64) -> Result<(String, bool), StepError> {
    let halo = ctx.connection::<HaloConnection>(HALO)?;
    let action = halo
        .get(ctx.http(), &format!("Actions/{action_id}"))
        .await?;
    let private = action
        .get("hiddenfromuser")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    // An action with an empty note and HTML is its HTML.
    let note = action
        .get("note")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let html = action.get("note_html").and_then(Value::as_str);
    Ok((note_or_html(note, html), private))
}

/// The note as text, else the HTML inside [code] tags.
fn note_or_html(note: Option<&str>, html: Option<&str>) -> String {
    match (note, html) {
        (Some(note), _) => note.to_owned(),
        (None, Some(html)) => format!("[code]{html}[/code]"),
        (None, None) => String::new(),
    }
}

/// The outputs of a note that is not written, and why.
fn skipped_note(link: &Link, reason: &str) -> Value {
    json!({"skipped": true, "reason": reason, "sys_id": link.remote_id, "table": link.remote_table,
           "field": null})
}

fn field_for(private: bool) -> &'static str {
    if private { "work_notes" } else { "comments" }
}

#[async_trait]
impl Step for SyncNote {
    fn describe(&self) -> StepDescription {
        StepDescription::new(
            "servicenow.sync_note",
            "Add a Halo note to the ticket's linked ServiceNow record: private as a work note, public as a comment.",
        )
        .input_schema(json!({
            "type": "object",
            "required": ["ticket_id"],
            "anyOf": [{"required": ["note"]}, {"required": ["note_html"]}, {"required": ["action_id"]}],
            "additionalProperties": false,
            "properties": {
                "ticket_id": id_schema("The linked Halo ticket."),
                "action_id": id_schema("A Halo action whose note and visibility are read from Halo."),
                "note": {"type": "string", "description": "The note as plain text (instead of action_id)."},
                "note_html": {"type": "string", "description": "The note as HTML, sent inside [code] tags."},
                "private": {"type": "boolean", "default": true, "description": "Hidden from the user: a work note; else a comment. Default true."},
                "sync": {"type": "boolean", "default": true, "description": "The action's \"Sync to ServiceNow\": customer records get the note only when true; supplier records always."}
            }
        }))
        .output("sys_id", "The linked record's sys_id.")
        .output("table", "The linked record's table.")
        .output("field", "work_notes or comments.")
        .output("note", "The text written, marker included.")
        .output("skipped", "True when nothing was written.")
        .output("reason", "Why nothing was written.")
        .connection_kind(HALO)
    }

    async fn execute(&self, ctx: &StepContext, inputs: Value) -> Result<Value, StepError> {
        let note = match self.prepare(ctx, &inputs).await? {
            Ok(note) => note,
            Err(skipped) => return Ok(skipped),
        };
        let field = field_for(note.private);
        let text = format!("{}\n\n{}", note.text, Self::marker(ctx, &note.sn));
        note.sn
            .patch(
                ctx.http(),
                &note.link.remote_table,
                &note.link.remote_id,
                json!({ field: text }),
            )
            .await?;
        Ok(Self::outputs(&note, field, &text))
    }

    fn resend(&self, _inputs: &Value) -> Resend {
        Resend::LookUpFirst
    }

    /// Journal entries carry our marker: one with this step run's digest is ours.
    async fn find_previous(
        &self,
        ctx: &StepContext,
        inputs: &Value,
    ) -> Result<Option<Value>, StepError> {
        let note = match self.prepare(ctx, inputs).await? {
            Ok(note) => note,
            Err(skipped) => return Ok(Some(skipped)),
        };
        let field = field_for(note.private);
        let marker = Self::marker(ctx, &note.sn);
        // Read by the connection's journal path: `sys_journal_field` hides every row from a
        // user without audit_viewer, and a retry would write the note twice.
        let run_digest = digest(&ctx.idempotency_key());
        let entries = notes::read(
            &note.sn,
            ctx.http(),
            &note.link.remote_table,
            &note.link.remote_id,
        )
        .await?;
        let found: Vec<_> = entries
            .into_iter()
            .filter(|e| e.element == field && e.value.contains(&run_digest))
            .collect();
        Ok(found.first().map(|_| {
            let text = format!("{}\n\n{marker}", note.text);
            Self::outputs(&note, field, &text)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_short_and_distinct() {
        assert_eq!(digest("a"), digest("a"));
        assert_ne!(digest("a"), digest("b"));
        assert_eq!(digest("x").len(), 16);
        assert_eq!(content_type("log.TXT"), "text/plain");
        assert_eq!(content_type("blob"), "application/octet-stream");
        assert_eq!(caller_field("incident"), "caller_id");
        assert_eq!(caller_field("sc_task"), "opened_by");
    }
}
