//! Syncing back from ServiceNow: what a changed record means for Halo. Webhooks (a hint: the
//! record and its journal are read again here, by the `servicenow.sync_record` step of a run)
//! and the integrator's scan both come through [`SyncBack::sync_record`], so they are idempotent
//! with each other: each record version is acted on once, each journal entry becomes one Halo
//! action, a new record one ticket.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::mapping;
use super::notes::{self, JournalEntry};
use super::{ServiceNowConnection, Side};
use haloflow_core::connections::Connections;
use haloflow_core::outbound::Outbound;
use haloflow_core::step::StepError;
use haloflow_core::storage::{Link, LinkOrigin, Storage, now_ms};
use haloflow_halo::HaloConnections;

/// What sync back did with one record.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncAction {
    CreatedTicket,
    UpdatedTicket,
    /// Linked, but only new notes were synced (no mapped field changed, or the link was not
    /// created by Halo).
    Notes,
    /// This version of the record was already acted on.
    Duplicate,
    Ignored,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordOutcome {
    pub table: String,
    pub sys_id: String,
    pub number: Option<String>,
    pub action: SyncAction,
    pub ticket_id: Option<i64>,
    /// The Halo fields written.
    pub fields: Vec<String>,
    /// Notes that became Halo actions.
    pub notes: usize,
    pub reason: Option<String>,
}

/// Where sync back reads and writes.
pub struct SyncBack {
    pub storage: Arc<dyn Storage>,
    pub connections: Arc<Connections>,
    pub http: SyncHttp,
}

/// How sync back sends its requests.
#[derive(Debug, Clone)]
pub enum SyncHttp {
    /// A fresh exchange log per record: the integrator's scans keep none.
    Client(reqwest::Client),
    /// A step run's: every exchange goes into the run history.
    Run(Outbound),
}

/// The record a webhook named: `table` and `sys_id`, or `number` (in `table`, else across
/// every task table), and the note it carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedRecord {
    pub table: Option<String>,
    pub sys_id: Option<String>,
    pub number: Option<String>,
    pub note: Option<JournalEntry>,
}

/// The prefix of Halo actions made from ServiceNow notes; `servicenow.sync_note` does not send
/// them back.
pub const FROM_SERVICENOW: &str = "[ServiceNow ";

fn text(record: &Value, field: &str) -> Option<String> {
    match record.get(field)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("value").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// The table a task record lives in (`sys_class_name`), for records found through `task`.
pub fn concrete_table(record: &Value, fallback: &str) -> String {
    text(record, "sys_class_name").unwrap_or_else(|| fallback.to_owned())
}

impl SyncBack {
    /// Where a request goes out.
    pub(super) fn outbound(&self) -> Outbound {
        match &self.http {
            SyncHttp::Client(client) => Outbound::live(client.clone()),
            SyncHttp::Run(http) => http.clone(),
        }
    }

    /// Syncs the record a webhook named, read again first (the webhook is only a hint), with
    /// the note it carried: the outcome as JSON. A record not found is ignored.
    pub async fn sync_named(
        &self,
        sn: &ServiceNowConnection,
        named: &NamedRecord,
    ) -> Result<Value, StepError> {
        let found = self
            .read_record(
                sn,
                named.table.as_deref(),
                named.sys_id.as_deref(),
                named.number.as_deref(),
            )
            .await?;
        let Some((table, record)) = found else {
            return Ok(
                json!({"action": "ignored", "reason": "the record was not found (deleted, or hidden from the integration user)"}),
            );
        };
        let given: Vec<JournalEntry> = named.note.iter().cloned().collect();
        let outcome = self
            .sync_record_with_notes(sn, &table, &record, &given)
            .await?;
        Ok(serde_json::to_value(outcome).unwrap_or(Value::Null))
    }

    /// Reads a record again (the webhook is only a hint): by sys_id in `table`, or by number
    /// across every task table.
    pub async fn read_record(
        &self,
        sn: &ServiceNowConnection,
        table: Option<&str>,
        sys_id: Option<&str>,
        number: Option<&str>,
    ) -> Result<Option<(String, Value)>, StepError> {
        let http = self.outbound();
        let (query_table, query) = match (table, sys_id, number) {
            (Some(table), Some(sys_id), _) => (table, format!("sys_id={sys_id}")),
            (table, _, Some(number)) => (table.unwrap_or("task"), format!("number={number}")),
            _ => return Ok(None),
        };
        let found = sn.query(&http, query_table, &query, None, 1).await?;
        Ok(found
            .into_iter()
            .next()
            .map(|record| (concrete_table(&record, query_table), record)))
    }

    /// Acts on one version of a record, once. Errors leave the version unclaimed so a later
    /// delivery or scan tries again.
    pub async fn sync_record(
        &self,
        sn: &ServiceNowConnection,
        table: &str,
        record: &Value,
    ) -> Result<RecordOutcome, StepError> {
        self.sync_record_with_notes(sn, table, record, &[]).await
    }

    /// [`Self::sync_record`], with notes a webhook carried (a `sys_journal_field` row):
    /// synced even when this version of the record was already acted on.
    pub async fn sync_record_with_notes(
        &self,
        sn: &ServiceNowConnection,
        table: &str,
        record: &Value,
        given: &[JournalEntry],
    ) -> Result<RecordOutcome, StepError> {
        let sys_id = text(record, "sys_id")
            .ok_or_else(|| StepError::Response("the record has no sys_id".into()))?;
        // Updates within one second share `sys_updated_on`; `sys_mod_count` tells them apart.
        let version = format!(
            "{}#{}",
            text(record, "sys_updated_on").unwrap_or_default(),
            text(record, "sys_mod_count").unwrap_or_default()
        );
        let key = sn.key();
        let storage = &self.storage;
        let claimed = storage
            .claim_sync_event(&key, &sys_id, &version, now_ms())
            .await
            .map_err(storage_error)?;
        if !claimed {
            let mut outcome = self.outcome(table, &sys_id, record, SyncAction::Duplicate);
            let link = storage
                .link_for_record(&key, &sys_id)
                .await
                .map_err(storage_error)?;
            if let Some(link) = link.filter(|_| !given.is_empty()) {
                let http = self.outbound();
                outcome.ticket_id = Some(link.ticket_id);
                outcome.notes = self
                    .post_notes(sn, (table, &sys_id, record), &link, given.to_vec(), &http)
                    .await?;
            }
            return Ok(outcome);
        }
        match self.apply(sn, table, &sys_id, record, given).await {
            Ok(outcome) => Ok(outcome),
            Err(e) => {
                let _ = storage.release_sync_event(&key, &sys_id, &version).await;
                Err(e)
            }
        }
    }

    pub(super) fn outcome(
        &self,
        table: &str,
        sys_id: &str,
        record: &Value,
        action: SyncAction,
    ) -> RecordOutcome {
        RecordOutcome {
            table: table.to_owned(),
            sys_id: sys_id.to_owned(),
            number: text(record, "number"),
            action,
            ticket_id: None,
            fields: Vec::new(),
            notes: 0,
            reason: None,
        }
    }

    async fn apply(
        &self,
        sn: &ServiceNowConnection,
        table: &str,
        sys_id: &str,
        record: &Value,
        given: &[JournalEntry],
    ) -> Result<RecordOutcome, StepError> {
        let halo = self.connections.halo(&sn.config.halo_connection)?;
        let http = self.outbound();
        let mut outcome = self.outcome(table, sys_id, record, SyncAction::Notes);
        let link = self
            .storage
            .link_for_record(&sn.key(), sys_id)
            .await
            .map_err(storage_error)?;
        let link = match link {
            Some(link) => {
                if link.created_by == LinkOrigin::Ticket {
                    // Field updates come back only for records Halo created (the seed).
                    let fields = mapping::halo_fields(&sn.config, table, record);
                    if !fields.is_empty() {
                        outcome.fields = fields.keys().cloned().collect();
                        let mut body = fields;
                        body.insert("id".into(), json!(link.ticket_id));
                        halo.post_one(&http, "Tickets", Value::Object(body)).await?;
                        outcome.action = SyncAction::UpdatedTicket;
                    }
                }
                link
            }
            None => match self.new_ticket(sn, table, sys_id, record, &http).await? {
                Ok((link, fields)) => {
                    outcome.action = SyncAction::CreatedTicket;
                    outcome.fields = fields;
                    link
                }
                Err(reason) => {
                    outcome.action = SyncAction::Ignored;
                    outcome.reason = Some(reason);
                    return Ok(outcome);
                }
            },
        };
        outcome.ticket_id = Some(link.ticket_id);
        // New notes: those the webhook carried, and those read by the connection's path.
        let mut entries = given.to_vec();
        entries.extend(notes::read(sn, &http, table, sys_id).await?);
        outcome.notes = self
            .post_notes(sn, (table, sys_id, record), &link, entries, &http)
            .await?;
        Ok(outcome)
    }

    /// The ticket of a record without a link, with the fields written: `Ok(Err(reason))` when
    /// the record creates none.
    async fn new_ticket(
        &self,
        sn: &ServiceNowConnection,
        table: &str,
        sys_id: &str,
        record: &Value,
        http: &Outbound,
    ) -> Result<Result<(Link, Vec<String>), String>, StepError> {
        if let Some(reason) = self.refuse_new(sn, table, record) {
            return Ok(Err(reason));
        }
        // One ticket per record, whichever of webhook and integrator gets here first.
        let key = sn.key();
        let first = self
            .storage
            .claim_sync_event(&key, sys_id, "created", now_ms())
            .await
            .map_err(storage_error)?;
        if !first {
            // Another delivery is creating its ticket right now: this version is released
            // (the caller's error path) and applied by a later attempt, delivery or scan. A
            // claim held elsewhere passes: retryable.
            return Err(StepError::Storage(
                "the record's Halo ticket is being created by another delivery; this change is applied on the next attempt".into(),
            ));
        }
        match self.create_ticket(sn, table, sys_id, record, http).await {
            Ok(created) => Ok(Ok(created)),
            Err(e) => {
                let _ = self
                    .storage
                    .release_sync_event(&key, sys_id, "created")
                    .await;
                Err(e)
            }
        }
    }

    /// Why a record without a link creates no ticket, if it does not.
    fn refuse_new(&self, sn: &ServiceNowConnection, table: &str, record: &Value) -> Option<String> {
        if sn.side() == Side::Supplier {
            return Some("supplier records only update tickets already linked".into());
        }
        let imported =
            sn.config.imported_types.iter().any(|t| {
                t == table || (t == "task" && table != "incident" && table.ends_with("task"))
            });
        if !imported {
            return Some(format!(
                "{table} is not among the connection's imported_types"
            ));
        }
        if text(record, "correlation_id").is_some_and(|c| c.starts_with("HALO-")) {
            return Some("the record was created from Halo and its link was replaced".into());
        }
        None
    }

    /// Creates (or finds, after a lost answer) the Halo ticket of a new record, and links it:
    /// the link and the mapped fields written.
    async fn create_ticket(
        &self,
        sn: &ServiceNowConnection,
        table: &str,
        sys_id: &str,
        record: &Value,
        http: &Outbound,
    ) -> Result<(Link, Vec<String>), StepError> {
        let mapped = mapping::halo_fields(&sn.config, table, record);
        let fields: Vec<String> = mapped.keys().cloned().collect();
        let body = ticket_body(sn, sys_id, record, mapped);
        let ticket = self.post_or_find(sn, (table, sys_id), body, http).await?;
        let ticket_id = ticket
            .get("id")
            .and_then(mapping::halo_text)
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| StepError::Response("Halo's answer has no ticket id".into()))?;
        let now = now_ms();
        let link = Link {
            ticket_connection: sn.config.halo_connection.clone(),
            ticket_id,
            remote: sn.key(),
            remote_table: table.to_owned(),
            remote_id: sys_id.to_owned(),
            number: text(record, "number"),
            created_by: LinkOrigin::Remote,
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.storage.save_link(&link).await.map_err(storage_error)?;
        Ok((link, fields))
    }

    /// Posts the new ticket of `(table, sys_id)`, stamped with its key; or finds the one an
    /// earlier try made. A create made before may have lost its answer (or the link was never
    /// written): the claim says whether one was tried, and then the ticket is looked up, never
    /// made twice.
    async fn post_or_find(
        &self,
        sn: &ServiceNowConnection,
        (table, sys_id): (&str, &str),
        mut body: Map<String, Value>,
        http: &Outbound,
    ) -> Result<Value, StepError> {
        let halo = self.connections.halo(&sn.config.halo_connection)?;
        let key = format!("servicenow:{}:{sys_id}", sn.key());
        halo.idempotency_field().stamp(&mut body, &key);
        let claim = format!("create:{table}:{sys_id}");
        let first_try = self
            .storage
            .claim_note(&sn.key(), &claim, now_ms())
            .await
            .map_err(storage_error)?;
        if !first_try {
            let search = haloflow_halo::CreatedTicketSearch {
                key: &key,
                client_id: body.get("client_id").and_then(Value::as_i64),
                since_ms: None,
            };
            if let Some(ticket) = halo.find_created_ticket(http, search).await? {
                return Ok(ticket);
            }
        }
        match halo.post_one(http, "Tickets", Value::Object(body)).await {
            Ok(ticket) => Ok(ticket),
            Err(e) => {
                // Surely not created (a refusal, a 503): the next try need not look first.
                if !e.outcome_unknown() {
                    let _ = self.storage.release_note(&sn.key(), &claim).await;
                }
                Err(e)
            }
        }
    }

    /// Each entry becomes a Halo action (work note → private, comment → public), once;
    /// haloflow's own notes (its marker, written by the integration user) are not sent back.
    async fn post_notes(
        &self,
        sn: &ServiceNowConnection,
        (table, sys_id, record): (&str, &str, &Value),
        link: &Link,
        entries: Vec<JournalEntry>,
        http: &Outbound,
    ) -> Result<usize, StepError> {
        let marker = format!("[{} ", sn.note_marker());
        let halo = self.connections.halo(&sn.config.halo_connection)?;
        let key = sn.key();
        let number = text(record, "number").unwrap_or_else(|| format!("{table} {sys_id}"));
        let mut synced = 0;
        for entry in entries {
            if entry.value.contains(&marker) && sn.is_integration_user(http, &entry.author).await? {
                continue;
            }
            let note_key = entry.key(sys_id);
            if !self
                .storage
                .claim_note(&key, &note_key, now_ms())
                .await
                .map_err(storage_error)?
            {
                continue;
            }
            let work_note = entry.element == "work_notes";
            let kind = if work_note { "work note" } else { "comment" };
            let mut action = json!({
                "ticket_id": link.ticket_id,
                "note": format!("{FROM_SERVICENOW}{number} {kind} by {}]\n{}", entry.author, entry.value),
                "hiddenfromuser": work_note,
                "sendemail": false,
            });
            // The outcome by id where the tenant's list is readable (ids differ per tenant).
            let outcome = halo.outcome_id(http, &sn.config.note_outcome).await;
            match outcome {
                Ok(Some(id)) => action["outcome_id"] = json!(id),
                Ok(None) => action["outcome"] = json!(sn.config.note_outcome),
                Err(e) => {
                    let _ = self.storage.release_note(&key, &note_key).await;
                    return Err(e);
                }
            }
            if let Err(e) = halo.post_one(http, "Actions", action).await {
                let _ = self.storage.release_note(&key, &note_key).await;
                return Err(e);
            }
            synced += 1;
        }
        Ok(synced)
    }
}

/// A new ticket's body: the mapped fields, summary and details, the client, and the webhook
/// settings' type, user and team.
fn ticket_body(
    sn: &ServiceNowConnection,
    sys_id: &str,
    record: &Value,
    mut body: Map<String, Value>,
) -> Map<String, Value> {
    let summary = text(record, "short_description").unwrap_or_else(|| {
        let number = text(record, "number");
        format!("ServiceNow {}", number.as_deref().unwrap_or(sys_id))
    });
    body.insert("summary".into(), json!(summary));
    if let Some(description) = text(record, "description") {
        body.insert("details".into(), json!(description));
    }
    if let Ok(client_id) = sn.id().parse::<i64>() {
        body.insert("client_id".into(), json!(client_id));
    }
    if let Some(webhook) = &sn.config.webhook {
        if let Some(t) = webhook.ticket_type_id {
            body.insert("tickettype_id".into(), json!(t));
        }
        // Halo requires a site whenever a user is set (checked when the config loads).
        if let (Some(user), Some(site)) = (webhook.user_id, webhook.site_id) {
            body.insert("user_id".into(), json!(user));
            body.insert("site_id".into(), json!(site));
        }
        if let Some(team) = &webhook.team {
            body.insert("team".into(), json!(team));
        }
    }
    body
}

fn storage_error(e: haloflow_core::storage::StorageError) -> StepError {
    StepError::storage("reading or writing the sync state", e)
}
