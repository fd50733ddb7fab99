//! Dry runs: what a run would do with a trigger payload, without sending or storing anything.

use std::ops::ControlFlow;

use handlebars::Context;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{StepRunner, initial_data, prepare_inputs, run_steps};
use crate::engine::{AcceptError, Engine};
use crate::flow::{ValidatedFlow, ValidatedStep};
use crate::outbound::{DryRunRecorder, Outbound, RequestPreview};
use crate::step::StepError;
use crate::storage::now_ms;
use crate::trigger::TriggerEvent;

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
    /// Shows what a run of `flow_id` would do with this trigger payload: the rendered inputs
    /// and the exact requests, with secrets masked. Nothing is sent or stored.
    pub async fn dry_run(
        &self,
        flow_id: &str,
        query: &crate::trigger::TriggerQuery,
        body: Value,
    ) -> Result<Vec<DryRunReport>, AcceptError> {
        let loaded = self
            .flow(flow_id)
            .ok_or_else(|| AcceptError::UnknownFlow(flow_id.to_owned()))?;
        let events = crate::trigger::events(body).map_err(AcceptError::Payload)?;
        let request_id = crate::engine::new_id();
        let received_at = crate::storage::format_ms(now_ms());
        let mut reports = Vec::new();
        for event in events {
            let trigger = loaded.flow.trigger.trigger_type().outputs(TriggerEvent {
                request_id: &request_id,
                received_at: &received_at,
                query,
                event,
            });
            reports.push(self.dry_run_event(&loaded.flow, trigger).await);
        }
        Ok(reports)
    }

    /// One event's dry run: the steps the shared step loop walks, up to the first error.
    async fn dry_run_event(&self, flow: &ValidatedFlow, trigger: Value) -> DryRunReport {
        let mut data = initial_data(flow, trigger.clone());
        let mut dry = DryRun {
            engine: self,
            flow,
            recorder: DryRunRecorder::default(),
            placeholder_steps: Vec::new(),
            steps: Vec::new(),
        };
        // The loop stops at the first step that fails; that step's report says why.
        let _ = run_steps(flow, &mut data, &mut dry).await;
        DryRunReport {
            flow_id: flow.id().to_owned(),
            trigger,
            steps: dry.steps,
        }
    }
}

/// A dry run's way through the steps: inputs rendered (earlier outputs are placeholders where
/// a step would have sent something), requests previewed, nothing sent or stored.
struct DryRun<'a> {
    engine: &'a Engine,
    flow: &'a ValidatedFlow,
    recorder: DryRunRecorder,
    /// Steps whose outputs are placeholders.
    placeholder_steps: Vec<String>,
    steps: Vec<DryRunStep>,
}

impl StepRunner for DryRun<'_> {
    type Stop = ();
    /// The trigger stays as sent: a refining step's outputs are placeholders here.
    const REFINES_TRIGGER: bool = false;

    async fn run(&mut self, step: &ValidatedStep, data: &mut Context) -> ControlFlow<(), Value> {
        fill_placeholders(data.data_mut(), step, &self.placeholder_steps);
        let mut report = DryRunStep {
            id: step.id.clone(),
            step_type: step.description().type_name.to_owned(),
            inputs: None,
            requests: Vec::new(),
            outputs: None,
            error: None,
        };
        let outputs = self.preview(step, data, &mut report).await;
        report.requests = self.recorder.take();
        report.outputs = outputs.clone();
        self.steps.push(report);
        outputs.map_or(ControlFlow::Break(()), ControlFlow::Continue)
    }
}

impl DryRun<'_> {
    /// Renders the step's inputs and executes it against the recorder: its outputs (or
    /// placeholders, where it would have sent something), or `None` with the error in `report`.
    async fn preview(
        &mut self,
        step: &ValidatedStep,
        data: &Context,
        report: &mut DryRunStep,
    ) -> Option<Value> {
        let inputs = match prepare_inputs(self.flow, step, data, true) {
            Ok(inputs) => inputs,
            Err(failure) => {
                report.error = Some(failure.message);
                return None;
            }
        };
        report.inputs = Some(inputs.clone());
        let http = Outbound::dry_run(self.engine.inner.http.clone(), self.recorder.clone());
        let context = self
            .engine
            .step_context(self.flow, "dry-run", step, http, None);
        match step.implementation().execute(&context, inputs).await {
            Ok(outputs) => Some(outputs),
            Err(StepError::DryRun) => {
                self.placeholder_steps.push(step.id.clone());
                Some(placeholders(step))
            }
            Err(error) => {
                let flow = self.flow.id();
                report.error = Some(format!("flow `{flow}`, step `{}`: {error}", step.id));
                None
            }
        }
    }
}

/// Makes every path `step` reads from a placeholder step exist, e.g.
/// `steps.create.ticket.summary` becomes the string `{{steps.create.ticket.summary}}`.
fn fill_placeholders(data: &mut Value, step: &ValidatedStep, placeholder_steps: &[String]) {
    for reference in &step.references {
        let path = &reference.path;
        if path.len() < 4 || path[0] != "steps" || !placeholder_steps.contains(&path[1]) {
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
        step.description()
            .outputs
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
