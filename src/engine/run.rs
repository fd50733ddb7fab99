//! Executing a run: render each step's inputs, check them, execute the step, record everything.

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{Engine, LoadedFlow};
use crate::flow::{ValidatedFlow, ValidatedStep};
use crate::outbound::{DryRunRecorder, Outbound, RequestPreview};
use crate::step::{StepContext, StepError};
use crate::storage::{RunStatus, StepOutcome, StepStatus, StorageError, now_ms};
use crate::template::TemplateSet;

/// Why a step could not start or finish, as recorded.
struct StepFailure {
    code: &'static str,
    message: String,
}

/// The data templates see: `{trigger, steps, constants}`.
fn initial_data(flow: &ValidatedFlow, trigger: Value) -> Value {
    json!({
        "trigger": trigger,
        "steps": Map::new(),
        "constants": Value::Object(flow.document.constants.clone()),
    })
}

/// Renders a step's inputs and checks them against the step's schema (the strict one live;
/// the template-tolerant one in a dry run, where earlier outputs are placeholders).
fn prepare_inputs(
    flow: &ValidatedFlow,
    step: &ValidatedStep,
    data: &Value,
    dry_run: bool,
) -> Result<Value, StepFailure> {
    let context = TemplateSet::context(data);
    let inputs = flow
        .templates
        .render(&step.inputs, data, &context)
        .map_err(|failure| {
            let input = failure
                .pointer
                .split_once("/inputs")
                .map(|(_, rest)| rest)
                .unwrap_or(&failure.pointer);
            let place = flow
                .place(&failure.pointer)
                .map(|p| format!("{p}: "))
                .unwrap_or_default();
            StepFailure {
                code: "template_error",
                message: format!(
                    "{place}flow `{}`, step `{}`, input {}: {}",
                    flow.id(),
                    step.id,
                    if input.is_empty() { "/" } else { input },
                    failure.message
                ),
            }
        })?;
    let schema = if dry_run {
        &step.step.relaxed_schema
    } else {
        &step.step.schema
    };
    let errors: Vec<String> = schema
        .iter_errors(&inputs)
        .map(|e| {
            let at = e.instance_path().to_string();
            format!(
                "input {}: {}",
                if at.is_empty() { "/" } else { &at },
                e.masked()
            )
        })
        .collect();
    if !errors.is_empty() {
        return Err(StepFailure {
            code: "invalid_input",
            message: format!(
                "flow `{}`, step `{}`: {}",
                flow.id(),
                step.id,
                errors.join("; ")
            ),
        });
    }
    Ok(inputs)
}

/// One step of a dry run.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunStep {
    pub id: String,
    pub step_type: String,
    pub inputs: Option<Value>,
    pub requests: Vec<RequestPreview>,
    /// Placeholders (`{{steps.<id>.<output>}}`) where a real run would have values.
    pub outputs: Option<Value>,
    pub error: Option<String>,
}

/// What a run would do, without sending anything.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunReport {
    pub flow_id: String,
    pub trigger: Value,
    pub steps: Vec<DryRunStep>,
}

impl Engine {
    fn step_context(
        &self,
        flow: &ValidatedFlow,
        run_id: &str,
        step: &ValidatedStep,
        http: Outbound,
    ) -> StepContext {
        StepContext {
            flow_id: flow.id().to_owned(),
            run_id: run_id.to_owned(),
            step_id: step.id.clone(),
            connection: step.connection.clone(),
            connections: self.inner.connections.clone(),
            http,
            shutdown: self.inner.shutdown.subscribe(),
        }
    }

    /// Runs a stored run to its end, recording each step as it finishes.
    pub(super) async fn execute_run(&self, loaded: &LoadedFlow, run_id: &str, trigger: Value) {
        let status = match self.try_execute_run(&loaded.flow, run_id, trigger).await {
            Ok(status) => status,
            Err(e) => {
                // The run stays `running` in the database; the resume issue picks these up.
                tracing::error!(%run_id, error = %e, "Storage failed during a run; the run was interrupted.");
                return;
            }
        };
        let _ = self.inner.finished.send((run_id.to_owned(), status));
    }

    async fn try_execute_run(
        &self,
        flow: &ValidatedFlow,
        run_id: &str,
        trigger: Value,
    ) -> Result<RunStatus, StorageError> {
        let storage = &self.inner.storage;
        storage.start_run(run_id, now_ms()).await?;
        let mut data = initial_data(flow, trigger);
        // Steps still to run, next first; a branching step puts its chosen path in front.
        let mut queue: VecDeque<&ValidatedStep> = flow.steps.iter().collect();
        let mut executed = 0;
        while let Some(step) = queue.pop_front() {
            let position = executed;
            executed += 1;
            let type_name = step.step.step.type_name();
            let inputs = match prepare_inputs(flow, step, &data, false) {
                Ok(inputs) => inputs,
                Err(failure) => {
                    storage
                        .start_step(
                            run_id,
                            &step.id,
                            position,
                            type_name,
                            &Value::Null,
                            now_ms(),
                        )
                        .await?;
                    let outcome = StepOutcome {
                        status: StepStatus::Failed,
                        outputs: None,
                        error: Some((failure.code.to_owned(), failure.message.clone())),
                        exchanges: Vec::new(),
                        finished_at_ms: now_ms(),
                    };
                    storage.finish_step(run_id, &step.id, &outcome).await?;
                    return self.fail_run(run_id, &step.id, &failure.message).await;
                }
            };
            storage
                .start_step(run_id, &step.id, position, type_name, &inputs, now_ms())
                .await?;
            let http = Outbound::live(self.inner.http.clone());
            let context = self.step_context(flow, run_id, step, http.clone());
            let result = step.step.step.execute(&context, inputs).await;
            let (outcome, failure) = match result {
                Ok(outputs) => (
                    StepOutcome {
                        status: StepStatus::Succeeded,
                        outputs: Some(outputs),
                        error: None,
                        exchanges: http.exchanges(),
                        finished_at_ms: now_ms(),
                    },
                    None,
                ),
                Err(error) => {
                    let message = format!("flow `{}`, step `{}`: {error}", flow.id(), step.id);
                    tracing::warn!(%run_id, step = %step.id, code = error.code(), retryable = error.is_retryable(), "{message}");
                    (
                        StepOutcome {
                            status: StepStatus::Failed,
                            outputs: None,
                            error: Some((error.code().to_owned(), message.clone())),
                            exchanges: http.exchanges(),
                            finished_at_ms: now_ms(),
                        },
                        Some(message),
                    )
                }
            };
            storage.finish_step(run_id, &step.id, &outcome).await?;
            if let Some(message) = failure {
                return self.fail_run(run_id, &step.id, &message).await;
            }
            if let Some(outputs) = outcome.outputs {
                if let Some(path) = step.chosen_path(&outputs) {
                    for next in path.iter().rev() {
                        queue.push_front(next);
                    }
                }
                if let Some(steps) = data.get_mut("steps").and_then(Value::as_object_mut) {
                    steps.insert(step.id.clone(), outputs);
                }
            }
        }
        storage
            .finish_run(run_id, RunStatus::Succeeded, None, now_ms())
            .await?;
        Ok(RunStatus::Succeeded)
    }

    async fn fail_run(
        &self,
        run_id: &str,
        step_id: &str,
        message: &str,
    ) -> Result<RunStatus, StorageError> {
        self.inner
            .storage
            .finish_run(
                run_id,
                RunStatus::Failed,
                Some((step_id, message)),
                now_ms(),
            )
            .await?;
        Ok(RunStatus::Failed)
    }

    /// Shows what a run of `flow_id` would do with this trigger payload: the rendered inputs
    /// and the exact requests, with secrets masked. Nothing is sent or stored.
    pub async fn dry_run(
        &self,
        flow_id: &str,
        query: &crate::trigger::TriggerQuery,
        body: Value,
    ) -> Result<Vec<DryRunReport>, super::AcceptError> {
        let loaded = self
            .flow(flow_id)
            .ok_or_else(|| super::AcceptError::UnknownFlow(flow_id.to_owned()))?;
        let flow = &loaded.flow;
        let events = crate::trigger::events(body).map_err(super::AcceptError::Payload)?;
        let request_id = super::new_id();
        let received_at = crate::storage::format_ms(now_ms());
        let mut reports = Vec::new();
        for event in events {
            let trigger = crate::trigger::outputs(&request_id, &received_at, query, event);
            let mut data = initial_data(flow, trigger.clone());
            let recorder = DryRunRecorder::default();
            let mut steps = Vec::new();
            let mut placeholder_steps: Vec<&str> = Vec::new();
            let mut queue: VecDeque<&ValidatedStep> = flow.steps.iter().collect();
            while let Some(step) = queue.pop_front() {
                fill_placeholders(&mut data, step, &placeholder_steps);
                let mut report = DryRunStep {
                    id: step.id.clone(),
                    step_type: step.step.step.type_name().to_owned(),
                    inputs: None,
                    requests: Vec::new(),
                    outputs: None,
                    error: None,
                };
                let inputs = match prepare_inputs(flow, step, &data, true) {
                    Ok(inputs) => inputs,
                    Err(failure) => {
                        report.error = Some(failure.message);
                        steps.push(report);
                        break;
                    }
                };
                report.inputs = Some(inputs.clone());
                let http = Outbound::dry_run(self.inner.http.clone(), recorder.clone());
                let context = self.step_context(flow, "dry-run", step, http);
                let outputs = match step.step.step.execute(&context, inputs).await {
                    Ok(outputs) => Some(outputs),
                    Err(StepError::DryRun) => {
                        placeholder_steps.push(&step.id);
                        Some(placeholders(step))
                    }
                    Err(error) => {
                        report.error =
                            Some(format!("flow `{}`, step `{}`: {error}", flow.id(), step.id));
                        None
                    }
                };
                report.requests = recorder.take();
                report.outputs = outputs.clone();
                let failed = outputs.is_none();
                if let Some(outputs) = outputs {
                    if let Some(path) = step.chosen_path(&outputs) {
                        for next in path.iter().rev() {
                            queue.push_front(next);
                        }
                    }
                    if let Some(map) = data.get_mut("steps").and_then(Value::as_object_mut) {
                        map.insert(step.id.clone(), outputs);
                    }
                }
                steps.push(report);
                if failed {
                    break;
                }
            }
            reports.push(DryRunReport {
                flow_id: flow.id().to_owned(),
                trigger,
                steps,
            });
        }
        Ok(reports)
    }
}

/// Makes every path `step` reads from a placeholder step exist, e.g.
/// `steps.create.ticket.summary` becomes the string `{{steps.create.ticket.summary}}`.
fn fill_placeholders(data: &mut Value, step: &ValidatedStep, placeholder_steps: &[&str]) {
    for reference in &step.references {
        let path = &reference.path;
        if path.len() < 4 || path[0] != "steps" || !placeholder_steps.contains(&path[1].as_str()) {
            continue;
        }
        let mut node = &mut data["steps"][&path[1]];
        for segment in &path[2..] {
            if !node.is_object() {
                *node = Value::Object(Map::new());
            }
            node = node
                .as_object_mut()
                .expect("just made an object")
                .entry(segment.clone())
                .or_insert(Value::Null);
        }
        if node.is_null() {
            *node = Value::String(format!("{{{{{}}}}}", reference.dotted()));
        }
    }
}

/// `{"ticket_id": "{{steps.create.ticket_id}}", ...}`: a real run fills these in.
fn placeholders(step: &ValidatedStep) -> Value {
    Value::Object(
        step.step
            .step
            .outputs()
            .iter()
            .map(|o| {
                (
                    o.name.to_owned(),
                    Value::String(format!("{{{{steps.{}.{}}}}}", step.id, o.name)),
                )
            })
            .collect(),
    )
}
