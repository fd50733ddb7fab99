//! `haloflow runs list|show` and `haloflow requests list`: read the run history.

use std::io::Write;
use std::path::Path;

use super::{CommandError, render};
use crate::storage::{RequestFilter, RunFilter, SqliteStorage, Storage, format_ms};

async fn open(data_dir: &Path) -> Result<SqliteStorage, CommandError> {
    let file = data_dir.join(crate::storage::DATABASE_FILE);
    if !file.exists() {
        return Err(CommandError::Failed(format!(
            "no run history at {}; runs are stored by `haloflow serve` or `haloflow run` with the same --data",
            file.display()
        )));
    }
    Ok(SqliteStorage::open_file(&file).await?)
}

pub async fn runs_list(
    data_dir: &Path,
    filter: &RunFilter,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let runs = open(data_dir).await?.list_runs(filter).await?;
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
    data_dir: &Path,
    run_id: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let Some(detail) = open(data_dir).await?.get_run(run_id).await? else {
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
    data_dir: &Path,
    filter: &RequestFilter,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let requests = open(data_dir).await?.list_requests(filter).await?;
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
