//! `haloflow runs list|show` and `haloflow requests list`: read the run history.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::{CommandError, render};
use crate::storage::{RequestFilter, RunFilter, Storage, StorageSettings, format_ms};

/// Where the run history is: a database URL, else SQLite in the data directory.
#[derive(Debug, Clone)]
pub struct Store {
    pub data_dir: PathBuf,
    pub database: Option<String>,
    /// SQLite's durability when the store creates the database.
    pub durability: crate::storage::Durability,
}

impl Store {
    pub fn new(data_dir: PathBuf, database: Option<String>) -> Self {
        Store {
            data_dir,
            database,
            durability: Default::default(),
        }
    }

    /// Opens an existing history (never creates an empty SQLite file by mistake).
    pub async fn open_existing(&self) -> Result<Arc<dyn Storage>, CommandError> {
        let file = self.data_dir.join(crate::storage::DATABASE_FILE);
        if self.database.is_none() && !file.exists() {
            return Err(CommandError::Failed(format!(
                "no run history at {}; runs are stored by `haloflow serve` or `haloflow run` with the same --data (or --database)",
                file.display()
            )));
        }
        self.open().await
    }

    /// Opens the history, creating SQLite's file when needed.
    pub async fn open(&self) -> Result<Arc<dyn Storage>, CommandError> {
        let settings = StorageSettings {
            durability: self.durability,
            ..StorageSettings::new(&self.data_dir, self.database.clone())
        };
        Ok(crate::storage::open(&settings).await?)
    }
}

async fn open(store: &Store) -> Result<Arc<dyn Storage>, CommandError> {
    store.open_existing().await
}

pub async fn runs_list(
    store: &Store,
    filter: &RunFilter,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let runs = open(store).await?.list_runs(filter).await?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&runs).expect("runs serialize")
        )?;
        return Ok(());
    }
    if runs.is_empty() {
        writeln!(out, "no runs")?;
    }
    for run in runs {
        let took = match (run.started_at_ms, run.finished_at_ms) {
            (Some(s), Some(e)) => format!("{} ms", e - s),
            _ => "-".into(),
        };
        writeln!(
            out,
            "{}  {}  {:<9}  {:>8}  {}{}",
            run.id,
            format_ms(run.created_at_ms),
            run.status.as_str(),
            took,
            run.flow_id,
            run.failed_step
                .map(|s| format!("  (failed at step {s})"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

pub async fn runs_show(
    store: &Store,
    run_id: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let Some(detail) = open(store).await?.get_run(run_id).await? else {
        return Err(CommandError::Failed(format!(
            "no run with id `{run_id}`; `haloflow runs list` shows the recent ones"
        )));
    };
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&detail).expect("run serializes")
        )?;
    } else {
        render::run(&detail, out)?;
    }
    Ok(())
}

pub async fn requests_list(
    store: &Store,
    filter: &RequestFilter,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let requests = open(store).await?.list_requests(filter).await?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&requests).expect("requests serialize")
        )?;
        return Ok(());
    }
    if requests.is_empty() {
        writeln!(out, "no trigger requests")?;
    }
    for r in requests {
        let outcome = match (&r.error_code, &r.suppressed_under) {
            (Some(code), _) => format!(
                "{} {code}: {}",
                r.http_status,
                r.error_message.as_deref().unwrap_or("")
            ),
            (None, Some(parent)) if r.run_ids.is_empty() => {
                format!("{} suppressed under {parent}", r.http_status)
            }
            (None, _) => format!("{} runs: {}", r.http_status, r.run_ids.join(", ")),
        };
        writeln!(
            out,
            "{}  {}  {}  {}",
            r.id,
            format_ms(r.received_at_ms),
            r.flow_id,
            outcome
        )?;
        if r.suppressed_count > 0 {
            let children = r.suppressed_children.join(", ");
            writeln!(
                out,
                "    {} suppressed under this request: {children}",
                r.suppressed_count
            )?;
        }
    }
    Ok(())
}
