//! Reading stored rows into the storage types, once for every backend: each backend's row type
//! implements [`Columns`] (with [`columns_for!`]), and the mappers below read through it. The
//! columns each mapper reads are listed in `sql`.

use serde_json::Value;

use super::{
    FloodRecord, Link, LinkOrigin, QueuedRun, RequestRecord, RunCount, RunStatus, RunSummary,
    StepRunRecord, StepStatus, StorageError, SyncFailure,
};

/// Typed column access for a backend's row.
pub(super) trait Columns {
    fn text(&self, name: &str) -> Result<String, StorageError>;
    fn text_opt(&self, name: &str) -> Result<Option<String>, StorageError>;
    fn int(&self, name: &str) -> Result<i64, StorageError>;
    fn int_opt(&self, name: &str) -> Result<Option<i64>, StorageError>;
}

/// Implements [`Columns`] for a driver's row type.
macro_rules! columns_for {
    ($row:ty) => {
        impl $crate::storage::rows::Columns for $row {
            fn text(&self, name: &str) -> Result<String, $crate::storage::StorageError> {
                sqlx::Row::try_get(self, name).map_err($crate::storage::error::database)
            }
            fn text_opt(
                &self,
                name: &str,
            ) -> Result<Option<String>, $crate::storage::StorageError> {
                sqlx::Row::try_get(self, name).map_err($crate::storage::error::database)
            }
            fn int(&self, name: &str) -> Result<i64, $crate::storage::StorageError> {
                sqlx::Row::try_get(self, name).map_err($crate::storage::error::database)
            }
            fn int_opt(&self, name: &str) -> Result<Option<i64>, $crate::storage::StorageError> {
                sqlx::Row::try_get(self, name).map_err($crate::storage::error::database)
            }
        }
    };
}
pub(super) use columns_for;

/// JSON values are stored as text.
pub(super) fn to_json_text(value: &Value) -> String {
    // Into a byte buffer: `to_string` goes through `fmt::Write`, a call per token.
    serde_json::to_string(value).expect("a JSON value serialises")
}

pub(super) fn parse_json(
    text: Option<String>,
    what: &'static str,
) -> Result<Option<Value>, StorageError> {
    text.map(|t| serde_json::from_str(&t).map_err(|source| StorageError::Corrupt { what, source }))
        .transpose()
}

/// A JSON column holding a list of `T` (empty when null).
fn parse_list<T: serde::de::DeserializeOwned>(
    text: Option<String>,
    what: &'static str,
) -> Result<Vec<T>, StorageError> {
    parse_json(text, what)?
        .map(serde_json::from_value)
        .transpose()
        .map_err(|source| StorageError::Corrupt { what, source })
        .map(Option::unwrap_or_default)
}

pub(super) fn run_summary(row: &impl Columns) -> Result<RunSummary, StorageError> {
    Ok(RunSummary {
        id: row.text("id")?,
        flow_id: row.text("flow_id")?,
        request_id: row.text_opt("request_id")?,
        event_index: row.int("event_index")?,
        status: RunStatus::parse(&row.text("status")?).unwrap_or(RunStatus::Failed),
        error: row.text_opt("error")?,
        failed_step: row.text_opt("failed_step")?,
        created_at_ms: row.int("created_at_ms")?,
        started_at_ms: row.int_opt("started_at_ms")?,
        finished_at_ms: row.int_opt("finished_at_ms")?,
        replay_of: row.text_opt("replay_of")?,
    })
}

pub(super) fn step_run(row: &impl Columns) -> Result<StepRunRecord, StorageError> {
    Ok(StepRunRecord {
        step_id: row.text("step_id")?,
        position: row.int("position")?,
        step_type: row.text("step_type")?,
        status: match row.text("status")?.as_str() {
            "running" => StepStatus::Running,
            "succeeded" => StepStatus::Succeeded,
            _ => StepStatus::Failed,
        },
        inputs: parse_json(row.text_opt("inputs")?, "step inputs")?,
        outputs: parse_json(row.text_opt("outputs")?, "step outputs")?,
        error_code: row.text_opt("error_code")?,
        error: row.text_opt("error")?,
        exchanges: parse_list(row.text_opt("exchanges")?, "exchange log")?,
        started_at_ms: row.int("started_at_ms")?,
        finished_at_ms: row.int_opt("finished_at_ms")?,
        attempts: row.int("attempts")?.max(0) as u32,
        attempt_log: parse_list(row.text_opt("attempt_log")?, "attempt log")?,
        reused_from: row.text_opt("reused_from")?,
    })
}

/// A request row with `run_ids` and `children` as comma-separated lists.
pub(super) fn request_record(row: &impl Columns) -> Result<RequestRecord, StorageError> {
    let split = |ids: Option<String>| -> Vec<String> {
        ids.filter(|ids| !ids.is_empty())
            .map(|ids| ids.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    };
    Ok(RequestRecord {
        id: row.text("id")?,
        flow_id: row.text("flow_id")?,
        received_at_ms: row.int("received_at_ms")?,
        status: row.text("status")?,
        http_status: row.int("http_status")?,
        error_code: row.text_opt("error_code")?,
        error_message: row.text_opt("error_message")?,
        query: parse_json(row.text_opt("query")?, "request query")?,
        event_count: row.int("event_count")?,
        run_ids: split(row.text_opt("run_ids")?),
        suppressed_children: split(row.text_opt("children")?),
        suppressed_count: row.int("suppressed_count")?,
        suppressed_under: row.text_opt("suppressed_under")?,
        outcome: parse_json(row.text_opt("outcome")?, "request outcome")?,
    })
}

pub(super) fn flood_record(row: &impl Columns) -> Result<FloodRecord, StorageError> {
    Ok(FloodRecord {
        correlation_key: row.text("correlation_key")?,
        request_id: row.text("request_id")?,
        created_at_ms: row.int("created_at_ms")?,
        suppressed_count: row.int("suppressed")?.max(0) as u64,
    })
}

pub(super) fn link(row: &impl Columns) -> Result<Link, StorageError> {
    Ok(Link {
        ticket_connection: row.text("ticket_connection")?,
        ticket_id: row.int("ticket_id")?,
        remote: row.text("remote")?,
        remote_table: row.text("remote_table")?,
        remote_id: row.text("remote_id")?,
        number: row.text_opt("number")?,
        created_by: if row.text("created_by")? == LinkOrigin::Remote.as_str() {
            LinkOrigin::Remote
        } else {
            LinkOrigin::Ticket
        },
        created_at_ms: row.int("created_at_ms")?,
        updated_at_ms: row.int("updated_at_ms")?,
    })
}

pub(super) fn sync_failure(row: &impl Columns) -> Result<SyncFailure, StorageError> {
    Ok(SyncFailure {
        table: row.text("table_name")?,
        record_id: row.text("record_id")?,
        attempts: u32::try_from(row.int("attempts")?).unwrap_or(u32::MAX),
        last_error: row.text("last_error")?,
        updated_at_ms: row.int("updated_at_ms")?,
    })
}

pub(super) fn run_count(row: &impl Columns) -> Result<RunCount, StorageError> {
    Ok(RunCount {
        flow_id: row.text("flow_id")?,
        status: RunStatus::parse(&row.text("status")?).unwrap_or(RunStatus::Failed),
        count: row.int("n")?,
    })
}

pub(super) fn queued_run(row: &impl Columns) -> Result<QueuedRun, StorageError> {
    let trigger = parse_json(row.text_opt("trigger")?, "trigger outputs")?;
    Ok(QueuedRun {
        run_id: row.text("id")?,
        flow_id: row.text("flow_id")?,
        trigger: trigger.unwrap_or(Value::Null),
        replay_of: row.text_opt("replay_of")?,
        created_at_ms: row.int("created_at_ms")?,
    })
}

/// A scan as (remote, started, finished, result).
pub(super) fn scan(row: &impl Columns) -> Result<(String, i64, i64, Value), StorageError> {
    Ok((
        row.text("remote")?,
        row.int("started_at_ms")?,
        row.int("finished_at_ms")?,
        parse_json(row.text_opt("result")?, "scan result")?.unwrap_or(Value::Null),
    ))
}
