//! `haloflow runs list|show` and `haloflow requests list`: read the run history.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::{CommandError, render};
use crate::internals::storage::{
    RequestFilter, RunFilter, RunStatus, Storage, StorageSettings, format_ms,
};

/// Where the run history is: a database URL, else SQLite in the data directory.
#[derive(Debug, Clone, clap::Args)]
pub struct Store {
    #[arg(long = "data", value_name = "DATA", default_value = "data")]
    pub data_dir: PathBuf,
    /// The database URL (default: SQLite in --data).
    #[arg(long, env = "HALOFLOW_DATABASE_URL")]
    pub database: Option<String>,
    /// SQLite's durability when the store creates the database.
    #[arg(skip)]
    pub durability: crate::internals::storage::Durability,
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
        let file = self.data_dir.join(crate::internals::storage::DATABASE_FILE);
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
        Ok(crate::internals::storage::open(&settings).await?)
    }
}

async fn open(store: &Store) -> Result<Arc<dyn Storage>, CommandError> {
    store.open_existing().await
}

/// Options of `haloflow runs list`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunsListOptions {
    #[command(flatten)]
    pub store: Store,
    #[arg(long)]
    pub flow: Option<String>,
    /// queued, running, succeeded or failed.
    #[arg(long, value_parser = parse_status)]
    pub status: Option<RunStatus>,
    /// Runs created at or after this time (RFC 3339 or unix milliseconds).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<i64>,
    /// Runs created before this time (RFC 3339 or unix milliseconds).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<i64>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

impl RunsListOptions {
    fn filter(&self) -> RunFilter {
        RunFilter {
            flow_id: self.flow.clone(),
            status: self.status,
            since_ms: self.since,
            until_ms: self.until,
            limit: Some(self.limit),
            ..Default::default()
        }
    }
}

fn parse_status(text: &str) -> Result<RunStatus, String> {
    RunStatus::parse(text)
        .ok_or_else(|| format!("`{text}` is not one of queued, running, succeeded, failed"))
}

fn parse_time(text: &str) -> Result<i64, String> {
    crate::internals::storage::parse_time(text).ok_or_else(|| {
        format!("`{text}` is not a time; use RFC 3339 (2026-11-23T10:00:00Z) or unix milliseconds")
    })
}

/// `haloflow runs list`: recent runs, newest first.
pub async fn runs_list(options: &RunsListOptions, out: &mut dyn Write) -> Result<(), CommandError> {
    let storage = open(&options.store).await?;
    let runs = storage.list_runs(&options.filter()).await?;
    if options.json {
        return Ok(super::write_json(&runs, out)?);
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

/// Options of `haloflow runs show`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunsShowOptions {
    pub run_id: String,
    #[command(flatten)]
    pub store: Store,
    #[arg(long)]
    pub json: bool,
}

/// `haloflow runs show`: one run with its steps, inputs, outputs and requests.
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
    super::show(&detail, json, out, render::run)?;
    Ok(())
}

/// Options of `haloflow requests list`.
#[derive(Debug, Clone, clap::Args)]
pub struct RequestsListOptions {
    #[command(flatten)]
    pub store: Store,
    #[arg(long)]
    pub flow: Option<String>,
    /// Only requests that flood control suppressed.
    #[arg(long)]
    pub suppressed: bool,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(long)]
    pub json: bool,
}

/// `haloflow requests list`: recent trigger requests, accepted and rejected.
pub async fn requests_list(
    options: &RequestsListOptions,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let filter = RequestFilter {
        flow_id: options.flow.clone(),
        suppressed_only: options.suppressed,
        limit: Some(options.limit),
        ..Default::default()
    };
    let requests = open(&options.store).await?.list_requests(&filter).await?;
    if options.json {
        return Ok(super::write_json(&requests, out)?);
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
