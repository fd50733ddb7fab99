//! The integrator: a scan of one instance's imported record types for updates since the last
//! scan (the seed's "Halo integrator"), the failsafe behind the webhooks. Each page is applied
//! through [`SyncBack::sync_record`], so a scan after the webhooks changes nothing, and the
//! watermark moves only after a page is fully applied: a crash mid-scan repeats work without
//! duplicating it.
//!
//! A record without a link becomes a ticket only when the connection selects it: created since
//! the integrator started (unless `create_existing`), and matching `filter.<table>`, so a
//! first scan never turns every unlinked record of the instance into tickets. A record that
//! fails is retried by the next scans, up to `max_attempts`; then it is recorded and skipped
//! so it does not stop every scan.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::Value;

use super::ServiceNowConnection;
use super::config::imported_table;
use super::sync::{RecordOutcome, SyncAction, SyncBack};
use haloflow_core::step::StepError;
use haloflow_core::storage::{StorageError, now_ms};

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
    /// Records that failed `max_attempts` scans, skipped until they change.
    pub skipped: Vec<String>,
    pub outcomes: Vec<RecordOutcome>,
}

impl ScanReport {
    /// Counts a record's outcome and keeps it.
    fn count(&mut self, outcome: RecordOutcome) {
        match outcome.action {
            SyncAction::CreatedTicket => self.created += 1,
            SyncAction::UpdatedTicket => self.updated += 1,
            SyncAction::Duplicate | SyncAction::Notes if outcome.notes == 0 => self.unchanged += 1,
            SyncAction::Ignored => self.ignored += 1,
            _ => {}
        }
        self.notes += outcome.notes;
        self.outcomes.push(outcome);
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, ServiceNow's raw date-time (§2.7).
fn servicenow_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// What one scan knows before it reads a record.
struct ScanState {
    /// Records created before this (raw UTC) are not turned into tickets.
    created_since: Option<String>,
    /// Records whose sync failed in earlier scans.
    failing: HashSet<String>,
}

fn storage_error(e: StorageError) -> StepError {
    StepError::storage("reading or writing the integrator state", e)
}

impl SyncBack {
    /// Scans every imported type of `sn` once. A record that fails is reported and retried on
    /// the next scan (the watermark stops before it), `max_attempts` times. The integrator's
    /// start, recorded by the first scan unless the engine recorded it, is
    /// `first_scan_since_ms`.
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
        let start = self
            .storage
            .first_scan_start(&key, first_scan_since_ms)
            .await
            .map_err(storage_error)?;
        let state = ScanState {
            created_since: (!sn.config.integrator.create_existing).then(|| servicenow_time(start)),
            failing: self
                .storage
                .sync_failures(&key)
                .await
                .map_err(storage_error)?
                .into_iter()
                .map(|f| f.record_id)
                .collect(),
        };
        for imported in &sn.config.imported_types {
            let table = imported_table(imported);
            if let Err(e) = self
                .scan_table(sn, table, first_scan_since_ms, &state, &mut report)
                .await
            {
                report.errors.push(format!("{table}: {e}"));
            }
        }
        let result = serde_json::json!({
            "records": report.records, "created": report.created, "updated": report.updated,
            "notes": report.notes, "unchanged": report.unchanged, "ignored": report.ignored,
            "errors": report.errors, "skipped": report.skipped,
        });
        self.storage
            .record_scan(&key, started, now_ms(), &result)
            .await
            .map_err(|e| StepError::storage("recording the scan", e))?;
        Ok(report)
    }

    async fn scan_table(
        &self,
        sn: &ServiceNowConnection,
        table: &str,
        first_scan_since_ms: i64,
        state: &ScanState,
        report: &mut ScanReport,
    ) -> Result<(), StepError> {
        let key = sn.key();
        let storage_error = |e| StepError::storage("the watermark", e);
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
        let http = self.outbound();
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
                if !self.apply_one(sn, table, &record, state, report).await? {
                    // Stop before this record: the next scan starts from it.
                    return Ok(());
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

impl SyncBack {
    /// Syncs one scanned record, unless the connection does not select it for a new ticket.
    /// False when it failed and the scan should stop before it (attempts are left).
    async fn apply_one(
        &self,
        sn: &ServiceNowConnection,
        table: &str,
        record: &Value,
        state: &ScanState,
        report: &mut ScanReport,
    ) -> Result<bool, StepError> {
        let key = sn.key();
        let id = record
            .get("sys_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(reason) = self.not_selected(sn, table, record, state).await? {
            report.ignored += 1;
            let mut outcome = self.outcome(table, id, record, SyncAction::Ignored);
            outcome.reason = Some(reason);
            report.outcomes.push(outcome);
            return Ok(true);
        }
        match self.sync_record(sn, table, record).await {
            Ok(outcome) => {
                report.count(outcome);
                if state.failing.contains(id) {
                    self.storage
                        .clear_sync_failure(&key, id)
                        .await
                        .map_err(storage_error)?;
                }
                Ok(true)
            }
            Err(e) => self.failed(sn, table, id, &e, report).await,
        }
    }

    /// Records a failed sync of a record: false while it has attempts left (the next scan
    /// starts from it), true when it is skipped until it changes.
    async fn failed(
        &self,
        sn: &ServiceNowConnection,
        table: &str,
        id: &str,
        e: &StepError,
        report: &mut ScanReport,
    ) -> Result<bool, StepError> {
        let attempts = self
            .storage
            .record_sync_failure(&sn.key(), table, id, &e.to_string(), now_ms())
            .await
            .map_err(storage_error)?;
        let max = sn.config.integrator.max_attempts.max(1);
        if attempts < max {
            report.errors.push(format!(
                "{table} {id}: {e} (attempt {attempts} of {max}; the next scan starts here)"
            ));
            return Ok(false);
        }
        report.skipped.push(format!(
            "{table} {id}: failed in {attempts} scans, skipped until it changes (integrator.max_attempts = {max}): {e}"
        ));
        Ok(true)
    }

    /// Why a record without a link does not become a ticket, if it does not: created before
    /// the integrator started, or not selected by `filter.<table>` (asked of the instance).
    async fn not_selected(
        &self,
        sn: &ServiceNowConnection,
        table: &str,
        record: &Value,
        state: &ScanState,
    ) -> Result<Option<String>, StepError> {
        let id = record
            .get("sys_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let linked = self
            .storage
            .link_for_record(&sn.key(), id)
            .await
            .map_err(storage_error)?;
        if linked.is_some() {
            return Ok(None);
        }
        let created = record
            .get("sys_created_on")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(since) = &state.created_since
            && created < since.as_str()
        {
            return Ok(Some(format!(
                "created {created}, before the integrator started ({since}); set integrator.create_existing with a filter to import older records"
            )));
        }
        let Some(filter) = sn.config.integrator.filter.get(table) else {
            return Ok(None);
        };
        let http = self.outbound();
        let found = sn
            .query(
                &http,
                table,
                &format!("sys_id={id}^{filter}"),
                Some("sys_id"),
                1,
            )
            .await?;
        let selected = found
            .first()
            .and_then(|r| r.get("sys_id"))
            .and_then(Value::as_str)
            == Some(id);
        Ok((!selected).then(|| format!("not selected by integrator.filter.{table}")))
    }
}

/// A scan that met errors is a warning naming the first, not a quiet "done".
pub(super) fn log_scan(report: &ScanReport) {
    let (connection, records, created) = (&report.connection, report.records, report.created);
    match report.errors.first() {
        None => {
            tracing::info!(%connection, records, created, updated = report.updated, notes = report.notes, "Integrator scan done.")
        }
        Some(first) => {
            tracing::warn!(%connection, records, created, errors = report.errors.len(), first_error = %first, skipped = report.skipped.len(), "Integrator scan met errors; the records that failed are tried again by the next scan (see `haloflow integrator run` for each error).")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::{ScanReport, log_scan};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Seen: a scan with 3 connection errors was logged as INFO "scan done records=0".
    #[test]
    fn a_scan_that_met_errors_is_a_warning_naming_the_first() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            log_scan(&ScanReport {
                connection: "customers/12".into(),
                errors: vec!["connection refused".into(); 3],
                ..ScanReport::default()
            });
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("WARN"), "{text}");
        assert!(
            text.contains("errors=3") && text.contains("connection refused"),
            "{text}"
        );
        assert!(!text.contains("scan done"), "{text}");
    }
}
