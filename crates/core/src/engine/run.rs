//! Executing a run: one step loop, shared by served runs and dry runs, renders each step's
//! inputs, checks them, runs the step and goes on along the path it chose. A served run
//! records and retries every step ([`attempts`]); a dry run previews them ([`dry`]).

mod attempts;
mod direct;
mod dry;
mod recorded;
mod retry;

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};

use super::{Engine, LoadedFlow, RunSlot};
use crate::flow::{ValidatedFlow, ValidatedStep};
use crate::outbound::Outbound;
use crate::step::StepContext;
use crate::storage::{
    Progress, RunFinish, RunStatus, StepOutcome, StepRunRecord, StepStart, StepStatus,
    StorageError, now_ms,
};
use crate::template::CompiledValue;
use handlebars::Context;
use recorded::StepRun;

pub use dry::{DryRunReport, DryRunStep};
pub(crate) use retry::RetryPolicy;

/// How a run's execution ended in this process.
pub(super) enum RunEnd {
    Finished(RunStatus),
    /// The engine is shutting down; the run resumes on the next start.
    Interrupted,
    /// This node's claim expired and another node took the run over.
    LostClaim,
}

/// How one step of a served run ended.
enum StepEnd {
    Succeeded(Value),
    Failed(String),
    Interrupted,
    LostClaim,
}

/// How the step loop runs each step: the one thing a served run (recorded, retried,
/// resumable) and a dry run (previewed, nothing sent or stored) do differently.
trait StepRunner {
    /// Why the loop stopped before the flow's end.
    type Stop;
    /// Whether a refining step's outputs replace the trigger's for the steps after it.
    const REFINES_TRIGGER: bool;
    /// Runs `step` on the data so far: its outputs, or why the loop stops here.
    async fn run(
        &mut self,
        step: &ValidatedStep,
        data: &mut Context,
    ) -> ControlFlow<Self::Stop, Value>;
}

/// The step loop: a flow's steps in order, each seeing the outputs of those before it; a
/// branching step puts the path it chose in front of the rest.
async fn run_steps<R: StepRunner>(
    flow: &ValidatedFlow,
    data: &mut Context,
    runner: &mut R,
) -> ControlFlow<R::Stop> {
    let mut queue: VecDeque<&ValidatedStep> = flow.steps.iter().collect();
    while let Some(step) = queue.pop_front() {
        let outputs = runner.run(step, data).await?;
        if let Some(path) = step.chosen_path(&outputs) {
            for next in path.iter().rev() {
                queue.push_front(next);
            }
        }
        if R::REFINES_TRIGGER && step.description().refines_trigger {
            refine_trigger(data, &outputs);
        }
        add_outputs(data, &step.id, outputs);
    }
    ControlFlow::Continue(())
}

/// What a run did that is not written yet: it goes out with the run's next write (the next
/// step's intent or the run's end), so a step's end and what follows it cost one write.
/// Nothing is sent while something is unwritten.
#[derive(Default)]
struct Unwritten {
    run_started_at_ms: Option<i64>,
    step_finished: Option<(String, StepOutcome)>,
}

impl Unwritten {
    /// The progress to write: what is unwritten, then `step_started` and `run_finished`.
    fn with<'a>(
        &'a self,
        step_started: Option<StepStart<'a>>,
        run_finished: Option<RunFinish<'a>>,
    ) -> Progress<'a> {
        Progress {
            run_started_at_ms: self.run_started_at_ms,
            step_finished: self.step_finished.as_ref().map(|(id, o)| (id.as_str(), o)),
            step_started,
            run_finished,
        }
    }

    fn is_empty(&self) -> bool {
        self.run_started_at_ms.is_none() && self.step_finished.is_none()
    }
}

/// What a served run holds between its writes.
struct RunState {
    /// When this node last renewed its claim on the run.
    claim: Instant,
    unwritten: Unwritten,
}

/// A served run's way through its steps: every step recorded and retried, the claim kept
/// alive; the steps an interrupted or replayed run already finished are reused, not run again.
struct ServedRun<'a> {
    engine: &'a Engine,
    /// The run's execution slot, which its steps may lend while they wait.
    slot: &'a Arc<RunSlot>,
    flow: &'a ValidatedFlow,
    run_id: &'a str,
    /// The steps this run recorded before, by id.
    earlier: HashMap<String, StepRunRecord>,
    /// The run this one replays.
    replay_of: Option<String>,
    /// The next step's place in the run's record.
    position: usize,
    state: RunState,
}

impl StepRunner for ServedRun<'_> {
    type Stop = Result<RunEnd, StorageError>;
    const REFINES_TRIGGER: bool = true;

    async fn run(
        &mut self,
        step: &ValidatedStep,
        data: &mut Context,
    ) -> ControlFlow<Self::Stop, Value> {
        let next = self.run_step(step, data).await;
        self.position += 1;
        match next {
            Ok(next) => next.map_break(Ok),
            Err(e) => ControlFlow::Break(Err(e)),
        }
    }
}

impl ServedRun<'_> {
    /// Reuses the step's outputs when this run finished it before; else runs its attempts.
    async fn run_step(
        &mut self,
        step: &ValidatedStep,
        data: &Context,
    ) -> Result<ControlFlow<RunEnd, Value>, StorageError> {
        let before = self.earlier.get(&step.id);
        if let Some(done) = before.filter(|s| s.status == StepStatus::Succeeded) {
            return Ok(ControlFlow::Continue(
                done.outputs.clone().unwrap_or(Value::Null),
            ));
        }
        if self.engine.is_shutting_down() {
            return Ok(ControlFlow::Break(self.stop(RunEnd::Interrupted).await?));
        }
        let step_run = StepRun {
            engine: self.engine,
            slot: self.slot,
            flow: self.flow,
            run_id: self.run_id,
            step,
            position: self.position,
            before,
            replay_of: self.replay_of.as_deref(),
        };
        let end = match step_run.execute(data, &mut self.state).await? {
            StepEnd::Succeeded(outputs) => return Ok(ControlFlow::Continue(outputs)),
            StepEnd::Failed(message) => {
                let failure = Some((step.id.as_str(), message.as_str()));
                self.finish(RunStatus::Failed, failure).await?
            }
            StepEnd::Interrupted => self.stop(RunEnd::Interrupted).await?,
            // The step's end is true whoever holds the run now.
            StepEnd::LostClaim => self.stop(RunEnd::LostClaim).await?,
        };
        Ok(ControlFlow::Break(end))
    }

    /// Writes the run's end, with whatever was unwritten.
    async fn finish(
        &self,
        status: RunStatus,
        failure: Option<(&str, &str)>,
    ) -> Result<RunEnd, StorageError> {
        let end = RunFinish {
            status,
            failure,
            at_ms: now_ms(),
        };
        let progress = self.state.unwritten.with(None, Some(end));
        (self.engine.inner.storage)
            .record_progress(self.run_id, &progress)
            .await?;
        Ok(RunEnd::Finished(status))
    }

    /// Stops the run here, unfinished: what is unwritten is written first.
    async fn stop(&mut self, end: RunEnd) -> Result<RunEnd, StorageError> {
        let unwritten = &mut self.state.unwritten;
        if !unwritten.is_empty() {
            (self.engine.inner.storage)
                .record_progress(self.run_id, &unwritten.with(None, None))
                .await?;
            *unwritten = Unwritten::default();
        }
        Ok(end)
    }
}

/// Why a step could not start or finish, as recorded.
struct StepFailure {
    code: &'static str,
    message: String,
}

/// The data templates see: `{trigger, steps, constants}`, held as the handlebars context
/// itself, so rendering a step's text templates copies nothing.
fn initial_data(flow: &ValidatedFlow, trigger: Value) -> Context {
    Context::from(crate::json::object([
        ("trigger", trigger),
        ("steps", Value::Object(Map::new())),
        ("constants", Value::Object(flow.document.constants.clone())),
    ]))
}

/// Replaces trigger outputs with a refining step's outputs of the same names.
fn refine_trigger(data: &mut Context, outputs: &Value) {
    let (Some(trigger), Some(outputs)) = (
        data.data_mut()
            .get_mut("trigger")
            .and_then(Value::as_object_mut),
        outputs.as_object(),
    ) else {
        return;
    };
    for (name, value) in outputs {
        trigger.insert(name.clone(), value.clone());
    }
}

/// Makes a step's outputs visible to the steps after it.
fn add_outputs(data: &mut Context, step_id: &str, outputs: Value) {
    if let Some(steps) = data
        .data_mut()
        .get_mut("steps")
        .and_then(Value::as_object_mut)
    {
        steps.insert(step_id.to_owned(), outputs);
    }
}

/// Renders a step's inputs and checks them against the step's schema (the strict one live;
/// the template-tolerant one in a dry run, where earlier outputs are placeholders).
fn prepare_inputs(
    flow: &ValidatedFlow,
    step: &ValidatedStep,
    context: &Context,
    dry_run: bool,
) -> Result<Value, StepFailure> {
    let inputs = render_inputs(flow, step, context)?;
    let schema = if dry_run {
        &step.registered.relaxed_schema
    } else {
        &step.registered.schema
    };
    let mut place = None;
    let errors: Vec<String> = schema
        .iter_errors(&inputs)
        .map(|e| {
            let at = e.instance_path().to_string();
            if place.is_none() {
                place = inputs_pointer(&step.inputs)
                    .and_then(|base| nearest_place(flow, &format!("{base}{at}")));
            }
            let at = if at.is_empty() { "/" } else { &at };
            format!("input {at}: {}", e.masked())
        })
        .collect();
    if errors.is_empty() {
        return Ok(inputs);
    }
    Err(StepFailure {
        code: "invalid_input",
        message: format!(
            "{}flow `{}`, step `{}`: {}. The rendered value does not fit the step's input; check what the template reads (`haloflow run --dry-run` shows it)",
            place.map(|p| format!("{p}: ")).unwrap_or_default(),
            flow.id(),
            step.id,
            errors.join("; ")
        ),
    })
}

/// Renders a step's input templates against the data so far.
fn render_inputs(
    flow: &ValidatedFlow,
    step: &ValidatedStep,
    context: &Context,
) -> Result<Value, StepFailure> {
    let rendered = flow.templates.render(&step.inputs, context.data(), context);
    rendered.map_err(|failure| {
        let input = (failure.pointer.split_once("/inputs"))
            .map(|(_, rest)| rest)
            .unwrap_or(&failure.pointer);
        let place = (flow.place(&failure.pointer))
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
    })
}

/// The JSON pointer of a step's `inputs` object, from any compiled template in it.
fn inputs_pointer(value: &CompiledValue) -> Option<String> {
    match value {
        CompiledValue::Path { pointer, .. }
        | CompiledValue::Default { pointer, .. }
        | CompiledValue::Text { pointer } => pointer
            .rfind("/inputs")
            .map(|end| pointer[..end + "/inputs".len()].to_owned()),
        CompiledValue::Object(fields) => fields.iter().find_map(|(_, v)| inputs_pointer(v)),
        CompiledValue::Array(items) => items.iter().find_map(inputs_pointer),
        CompiledValue::Literal(_) => None,
    }
}

/// `file:line:column` of `pointer`, or of its nearest ancestor that has one.
fn nearest_place(flow: &ValidatedFlow, pointer: &str) -> Option<String> {
    let mut pointer = pointer;
    loop {
        if let Some(place) = flow.place(pointer) {
            return Some(place);
        }
        pointer = &pointer[..pointer.rfind('/')?];
    }
}

impl Engine {
    fn step_context(
        &self,
        flow: &ValidatedFlow,
        run_id: &str,
        step: &ValidatedStep,
        http: Outbound,
        first_attempt_at_ms: Option<i64>,
    ) -> StepContext {
        StepContext {
            first_attempt_at_ms,
            flow_id: flow.id().to_owned(),
            run_id: run_id.to_owned(),
            step_id: step.id.clone(),
            connection: step.connection.clone(),
            connections: self.inner.connections.clone(),
            http,
            shutdown: self.inner.shutdown.subscribe(),
            storage: self.inner.storage.clone(),
        }
    }

    /// Runs a stored run to its end, recording each step as it finishes. A run interrupted
    /// earlier continues: steps that succeeded are not run again, their outputs are reused.
    /// Returns the status when the run finished here.
    pub(super) async fn execute_run(
        &self,
        loaded: &LoadedFlow,
        run_id: &str,
        trigger: Value,
        claimed: Instant,
        fresh: bool,
        slot: &Arc<RunSlot>,
    ) -> Option<RunStatus> {
        match self
            .try_execute_run(&loaded.flow, run_id, trigger, (claimed, fresh), slot)
            .await
        {
            Ok(RunEnd::Finished(status)) => return Some(status),
            Ok(RunEnd::Interrupted) => {
                self.inner.metrics.count_interrupted();
                // Another node may take it at once; this one resumes it on its next start.
                if let Err(e) = self
                    .inner
                    .storage
                    .release_run(run_id, &self.inner.node_id)
                    .await
                {
                    tracing::warn!(%run_id, error = %e, "Could not give the run back; it is taken over when its claim expires.");
                }
                tracing::info!(%run_id, "Shutting down: the run stops here and resumes on the next start.");
            }
            Ok(RunEnd::LostClaim) => {
                tracing::warn!(%run_id, "This node's claim on the run expired and another node took it over; stopped here.");
            }
            Err(e) => {
                // The run stays unfinished in the database and resumes on the next start.
                tracing::error!(%run_id, error = %e, "Storage failed during a run; the run was interrupted.");
            }
        }
        None
    }

    async fn try_execute_run(
        &self,
        flow: &ValidatedFlow,
        run_id: &str,
        trigger: Value,
        (claimed, fresh): (Instant, bool),
        slot: &Arc<RunSlot>,
    ) -> Result<RunEnd, StorageError> {
        // A resumed or replayed run reuses the steps it already finished.
        let (earlier, replay_of) = if fresh {
            (HashMap::new(), None)
        } else {
            self.recorded_steps(run_id).await?
        };
        let mut run = ServedRun {
            engine: self,
            slot,
            flow,
            run_id,
            earlier,
            replay_of,
            position: 0,
            state: RunState {
                claim: claimed,
                unwritten: Unwritten {
                    run_started_at_ms: Some(now_ms()),
                    step_finished: None,
                },
            },
        };
        let mut data = initial_data(flow, trigger);
        match run_steps(flow, &mut data, &mut run).await {
            ControlFlow::Break(stopped) => stopped,
            ControlFlow::Continue(()) => run.finish(RunStatus::Succeeded, None).await,
        }
    }

    /// The steps a run recorded before, by id, and the run it replays.
    async fn recorded_steps(
        &self,
        run_id: &str,
    ) -> Result<(HashMap<String, StepRunRecord>, Option<String>), StorageError> {
        let detail = self.inner.storage.get_run(run_id).await?;
        Ok(detail
            .map(|detail| {
                let steps = detail.steps.into_iter();
                let steps = steps.map(|s| (s.step_id.clone(), s)).collect();
                (steps, detail.summary.replay_of)
            })
            .unwrap_or_default())
    }

    /// The retry policy of one step: the flow's settings, then the config's, then built-in.
    fn retry_policy(&self, step: &ValidatedStep) -> RetryPolicy {
        self.retry_policy_of(step.description().type_name, step.retry)
    }

    /// The retry policy of a step of `type_name` with `own` settings: those, then the config's
    /// (`[retry.by_type]`, then `[retry]`), then built-in.
    fn retry_policy_of(&self, type_name: &str, own: crate::config::RetrySettings) -> RetryPolicy {
        RetryPolicy::from_settings(
            own.or(self.inner.retry.for_type(type_name))
                .or(RetryPolicy::BUILT_IN),
        )
    }

    /// Extends this node's claim on the run; false when another node holds it now. A claim
    /// renewed less than a quarter lease ago (`claimed`) still has three quarters to run, so no
    /// other node can hold it: that saves a write per step.
    async fn renew_claim(&self, run_id: &str, claimed: &mut Instant) -> Result<bool, StorageError> {
        if claimed.elapsed() < self.inner.lease / 4 {
            return Ok(true);
        }
        let renewed_at = Instant::now();
        let until = now_ms() + self.inner.lease.as_millis() as i64;
        let held = self
            .inner
            .storage
            .renew_run_lease(run_id, &self.inner.node_id, until)
            .await?;
        if held {
            *claimed = renewed_at;
        }
        Ok(held)
    }

    pub(super) fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Completes once [`Engine::shutdown`] was called.
    pub(super) async fn shutting_down(&self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        let _ = shutdown.wait_for(|down| *down).await;
    }
}
