//! Human-readable output of runs, dry runs and trigger URLs.

use std::io::{self, Write};

use serde_json::Value;

use crate::internals::engine::DryRunReport;
use crate::internals::flow::Problem;
use crate::internals::outbound::ExchangeRecord;
use crate::internals::storage::{AttemptOutcome, AttemptRecord, StepRunRecord};
use crate::internals::storage::{RunDetail, format_ms};

pub use crate::internals::flow::{trigger_url, with_recipients};

fn indented_json(value: &Value, indent: &str) -> String {
    serde_json::to_string_pretty(value)
        .unwrap_or_default()
        .lines()
        .collect::<Vec<_>>()
        .join(&format!("\n{indent}"))
}

fn duration(start: Option<i64>, end: Option<i64>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => format!("{} ms", e - s),
        _ => "unfinished".to_owned(),
    }
}

/// A problem as a line; with `color`, the place is bold, the code red and the hint cyan.
pub fn problem(problem: &Problem, color: bool) -> String {
    if !color {
        return problem.to_string();
    }
    let plain = Problem {
        hint: String::new(),
        ..problem.clone()
    }
    .to_string();
    let (place, rest) = plain.split_once(": [").unwrap_or((&plain, ""));
    let (code, message) = rest.split_once("] ").unwrap_or((rest, ""));
    let hint = if problem.hint.is_empty() {
        String::new()
    } else {
        format!(". \x1b[36m{}\x1b[0m", problem.hint)
    };
    format!("\x1b[1m{place}\x1b[0m: \x1b[31m[{code}]\x1b[0m {message}{hint}")
}

/// A finished (or unfinished) run: each step with its inputs, outputs, requests and error.
pub fn run(detail: &RunDetail, out: &mut dyn Write) -> io::Result<()> {
    run_summary(detail, out)?;
    for step in &detail.steps {
        step_record(step, out)?;
    }
    Ok(())
}

/// The run's status, request, timing, trigger, and what it replays or why it failed.
fn run_summary(detail: &RunDetail, out: &mut dyn Write) -> io::Result<()> {
    let run = &detail.summary;
    writeln!(
        out,
        "run {}  flow {}  {}",
        run.id,
        run.flow_id,
        run.status.as_str().to_uppercase()
    )?;
    writeln!(
        out,
        "  request {} (event {}), created {}, took {}",
        run.request_id.as_deref().unwrap_or("-"),
        run.event_index,
        format_ms(run.created_at_ms),
        duration(run.started_at_ms, run.finished_at_ms)
    )?;
    let t = &detail.trigger;
    writeln!(
        out,
        "  trigger: event={} ticket_id={} agent_assigned={} recipients={}",
        t["event"], t["ticket_id"], t["agent_assigned"], t["recipients"]
    )?;
    if let Some(original) = &run.replay_of {
        writeln!(out, "  replay of run {original}")?;
    }
    if let Some(error) = &run.error {
        writeln!(out, "  error: {error}")?;
    }
    Ok(())
}

/// One step of a run: status and timing, its attempts when there was more than one (or one
/// adopted), inputs, outputs, requests and error.
fn step_record(step: &StepRunRecord, out: &mut dyn Write) -> io::Result<()> {
    let how = match (&step.reused_from, step.attempts) {
        (Some(from), _) => format!("  outputs reused from run {from}"),
        (None, n) if n > 1 => format!("  {n} attempts"),
        _ => String::new(),
    };
    writeln!(
        out,
        "  {}. {} ({})  {}  {}{how}",
        step.position + 1,
        step.step_id,
        step.step_type,
        step.status.as_str(),
        duration(Some(step.started_at_ms), step.finished_at_ms)
    )?;
    let log = &step.attempt_log;
    if log.len() > 1 || log.iter().any(|a| a.outcome == AttemptOutcome::Adopted) {
        for attempt in log {
            writeln!(out, "     {}", attempt_line(attempt))?;
        }
    }
    if let Some(inputs) = &step.inputs {
        let inputs = indented_json(inputs, "              ");
        writeln!(out, "     inputs:  {inputs}")?;
    }
    if let Some(outputs) = &step.outputs {
        let outputs = indented_json(outputs, "              ");
        writeln!(out, "     outputs: {outputs}")?;
    }
    for exchange in &step.exchanges {
        writeln!(out, "     {}", exchange_line(exchange))?;
    }
    if let Some(error) = &step.error {
        let code = step.error_code.as_deref().unwrap_or("error");
        writeln!(out, "     error [{code}]: {error}")?;
    }
    Ok(())
}

/// `attempt 2: failed, next in 400 ms: ...`
fn attempt_line(a: &AttemptRecord) -> String {
    let wait = a
        .retry_in_ms
        .map(|ms| format!(", next in {ms} ms"))
        .unwrap_or_default();
    let error = a
        .error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    let outcome = match a.outcome {
        AttemptOutcome::Succeeded => "succeeded",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::Adopted => "adopted what an earlier attempt created",
        // The enum is non-exhaustive: an outcome added later reads as the end it is.
        _ => "ended",
    };
    format!("attempt {}: {outcome}{wait}{error}", a.number)
}

/// `request: POST https://... -> 201 (12 ms)`, with the error when there was one.
fn exchange_line(x: &ExchangeRecord) -> String {
    let status = x
        .status
        .map(|s| s.to_string())
        .unwrap_or_else(|| "no answer".into());
    let error = (x.error.as_ref())
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    format!(
        "request: {} {} -> {status} ({} ms){error}",
        x.method, x.url, x.duration_ms
    )
}

/// A dry run: rendered inputs and the exact requests, secrets masked.
pub fn dry_run(report: &DryRunReport, out: &mut dyn Write) -> io::Result<()> {
    let t = &report.trigger;
    writeln!(
        out,
        "DRY RUN of flow {} (nothing is sent or stored)",
        report.flow_id
    )?;
    writeln!(
        out,
        "  trigger: event={} ticket_id={} agent_assigned={} recipients={}",
        t["event"], t["ticket_id"], t["agent_assigned"], t["recipients"]
    )?;
    for (i, step) in report.steps.iter().enumerate() {
        writeln!(out, "  {}. {} ({})", i + 1, step.id, step.step_type)?;
        if let Some(inputs) = &step.inputs {
            writeln!(
                out,
                "     inputs: {}",
                indented_json(inputs, "             ")
            )?;
        }
        for request in &step.requests {
            writeln!(out, "     would send: {} {}", request.method, request.url)?;
            for (name, value) in &request.headers {
                writeln!(out, "       {name}: {value}")?;
            }
            if let Some(body) = &request.body {
                let text = match body {
                    Value::String(s) => s.clone(),
                    other => indented_json(other, "       "),
                };
                writeln!(out, "       {text}")?;
            }
        }
        if let Some(outputs) = &step.outputs {
            writeln!(
                out,
                "     outputs (filled in by a real run): {}",
                indented_json(outputs, "       ")
            )?;
        }
        if let Some(error) = &step.error {
            writeln!(out, "     error: {error}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internals::flow::{FlowValidator, ValidatedFlow};

    fn flow(auth: serde_json::Value) -> ValidatedFlow {
        let doc = serde_json::json!({
            "id": "f", "name": "n", "trigger": {"type": "halo.incidents", "auth": auth},
            "steps": [{"id": "a", "type": "halo.create_ticket", "inputs": {"summary": "s"}}]
        });
        FlowValidator::new(&crate::bundled::integrations().registry())
            .validate_str(&doc.to_string(), None)
            .unwrap()
    }

    #[test]
    fn recipients_follow_the_key_with_an_ampersand_and_are_encoded() {
        let keyed = flow(serde_json::json!({"type": "url_key", "secret_name": "K"}));
        let url = with_recipients(
            &trigger_url("https://h/", &keyed, Some("k/1")),
            &["epearson", "Antares Team", "a,b"],
        );
        assert_eq!(
            url,
            "https://h/triggers/f?apiKey=k%2F1&recipients=epearson,Antares%20Team,a%2Cb"
        );
        assert_eq!(
            trigger_url("https://h", &keyed, None),
            "https://h/triggers/f?apiKey=<K>"
        );
        let basic = flow(
            serde_json::json!({"type": "basic", "username": "u", "password_secret_name": "P"}),
        );
        assert_eq!(
            with_recipients(&trigger_url("https://h", &basic, None), &["bgull"]),
            "https://h/triggers/f?recipients=bgull"
        );
    }
}
