//! The integrator: a scan of one instance's imported record types for updates since the last
//! scan (the seed's "Halo integrator"), the failsafe behind the webhooks. Each page is applied
//! through [`SyncBack::sync_record`], so a scan after the webhooks changes nothing, and the
//! watermark moves only after a page is fully applied: a crash mid-scan repeats work without
//! duplicating it.

use serde::Serialize;
use serde_json::Value;

use super::ServiceNowConnection;
use super::sync::{RecordOutcome, SyncAction, SyncBack};
use crate::outbound::Outbound;
use crate::step::StepError;
use crate::storage::now_ms;

/// What one scan did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    pub connection: String,
    pub records: usize,
    pub created: usize,
    pub updated: usize,
    pub notes: usize,
    pub unchanged: usize,
    pub ignored: usize,
    pub errors: Vec<String>,
    pub outcomes: Vec<RecordOutcome>,
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, ServiceNow's raw date-time (§2.7).
fn servicenow_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// The table an imported type is read from.
fn table_of(imported: &str) -> &str {
    match imported {
        "task" => "sc_task",
        other => other,
    }
}

impl SyncBack {
    /// Scans every imported type of `sn` once. A record that fails is reported and retried on
    /// the next scan (the watermark stops before it).
    pub async fn scan(
        &self,
        sn: &ServiceNowConnection,
        first_scan_since_ms: i64,
    ) -> Result<ScanReport, StepError> {
        let key = sn.key();
        let started = now_ms();
        let mut report = ScanReport {
            connection: key.clone(),
            ..ScanReport::default()
        };
        for imported in &sn.config.imported_types {
            let table = table_of(imported);
            if let Err(e) = self
                .scan_table(sn, table, first_scan_since_ms, &mut report)
                .await
            {
                report.errors.push(format!("{table}: {e}"));
            }
        }
        let result = serde_json::json!({
            "records": report.records, "created": report.created, "updated": report.updated,
            "notes": report.notes, "unchanged": report.unchanged, "ignored": report.ignored,
            "errors": report.errors,
        });
        self.storage
            .record_scan(&key, started, now_ms(), &result)
            .await
            .map_err(|e| StepError::Failed(format!("recording the scan failed: {e}")))?;
        Ok(report)
    }

    async fn scan_table(
        &self,
        sn: &ServiceNowConnection,
        table: &str,
        first_scan_since_ms: i64,
        report: &mut ScanReport,
    ) -> Result<(), StepError> {
        let key = sn.key();
        let storage_error =
            |e: crate::storage::StorageError| StepError::Failed(format!("the watermark: {e}"));
        // A scan starts at the watermark's second, inclusive (`>=`: an update later in that
        // same second is not lost; what was applied is de-duplicated). Within the scan, pages
        // follow the last record read (time, then sys_id): keyset paging, so a record that
        // changes mid-scan moves later and is read again instead of shifting an offset.
        let stored = self
            .storage
            .watermark(&key, table)
            .await
            .map_err(storage_error)?;
        let mut after_time = stored.unwrap_or_else(|| servicenow_time(first_scan_since_ms));
        let mut after_id: Option<String> = None;
        let page_size = sn.config.integrator.page_size.max(1) as usize;
        let http = Outbound::live(self.client.clone());
        loop {
            let query = match &after_id {
                None => format!("sys_updated_on>={after_time}^ORDERBYsys_updated_on^ORDERBYsys_id"),
                Some(id) => format!(
                    "sys_updated_on>{after_time}^NQsys_updated_on={after_time}^sys_id>{id}^ORDERBYsys_updated_on^ORDERBYsys_id"
                ),
            };
            let page = sn.query_page(&http, table, &query, page_size, 0).await?;
            let full = page.len() == page_size;
            for record in page {
                let text = |f: &str| record.get(f).and_then(Value::as_str).map(str::to_owned);
                let (Some(time), Some(id)) = (text("sys_updated_on"), text("sys_id")) else {
                    // Without them the watermark cannot move: stop rather than loop.
                    return Err(StepError::Response(format!(
                        "{table}: a record came back without sys_updated_on or sys_id; the scan stops here"
                    )));
                };
                report.records += 1;
                match self.sync_record(sn, table, &record).await {
                    Ok(outcome) => {
                        match outcome.action {
                            SyncAction::CreatedTicket => report.created += 1,
                            SyncAction::UpdatedTicket => report.updated += 1,
                            SyncAction::Duplicate | SyncAction::Notes if outcome.notes == 0 => {
                                report.unchanged += 1
                            }
                            SyncAction::Ignored => report.ignored += 1,
                            _ => {}
                        }
                        report.notes += outcome.notes;
                        report.outcomes.push(outcome);
                    }
                    Err(e) => {
                        // Stop before this record: the next scan starts from it.
                        report.errors.push(format!("{table}: {e}"));
                        return Ok(());
                    }
                }
                after_time = time;
                after_id = Some(id);
            }
            if after_id.is_some() {
                self.storage
                    .set_watermark(&key, table, &after_time)
                    .await
                    .map_err(storage_error)?;
            }
            if !full {
                return Ok(());
            }
        }
    }
}
