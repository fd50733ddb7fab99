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
        let mut watermark = match self
            .storage
            .watermark(&key, table)
            .await
            .map_err(storage_error)?
        {
            Some(w) => w,
            None => servicenow_time(first_scan_since_ms),
        };
        let page_size = sn.config.integrator.page_size.max(1) as usize;
        let http = Outbound::live(self.client.clone());
        // Records updated in the watermark's own second that an earlier page already covered.
        let mut skip = 0usize;
        loop {
            // `>=` loses no same-second update; ordering by time then sys_id keeps pages stable.
            let query = format!("sys_updated_on>={watermark}^ORDERBYsys_updated_on^ORDERBYsys_id");
            let page = sn.query_page(&http, table, &query, page_size, skip).await?;
            let full = page.len() == page_size;
            let updated = |r: &Value| {
                r.get("sys_updated_on")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            let last = page.last().and_then(updated);
            if last.is_none() && !page.is_empty() {
                // Without the stamp the watermark cannot move: stop rather than loop.
                return Err(StepError::Response(format!(
                    "{table}: a record came back without sys_updated_on; the scan stops here"
                )));
            }
            let at_last = page.iter().filter(|r| updated(r) == last).count();
            for record in page {
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
            }
            if let Some(last) = last {
                if last == watermark {
                    skip += at_last;
                } else {
                    // The next query starts at `last` again: skip what this page saw of it.
                    skip = at_last;
                    watermark = last;
                }
                self.storage
                    .set_watermark(&key, table, &watermark)
                    .await
                    .map_err(storage_error)?;
            }
            if !full {
                return Ok(());
            }
        }
    }
}
