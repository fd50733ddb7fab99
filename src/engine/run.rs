//! Executing a run: render each step's inputs, check them, execute the step, record everything.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use super::{Engine, LoadedFlow};
use crate::config::RetrySettings;
use crate::flow::{ValidatedFlow, ValidatedStep};
use crate::outbound::{DryRunRecorder, Outbound, RequestPreview};
use crate::step::{Resend, StepContext, StepError};
use crate::storage::{
    AttemptOutcome, AttemptRecord, Progress, RunFinish, RunStatus, StepOutcome, StepRunRecord,
    StepStart, StepStatus, StorageError, now_ms,
};
use crate::template::CompiledValue;
use handlebars::Context;

/// How a run's execution ended in this process.
pub(super) enum RunEnd {
    Finished(RunStatus),
    /// The engine is shutting down; the run resumes on the next start.
    Interrupted,
    /// This node's claim expired and another node took the run over.
    LostClaim,
}

enum StepEnd {
    Succeeded(Value),
    Failed(String),
    Interrupted,
    LostClaim,
}

/// Attempts and backoff of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

/// The longest `Retry-After` honoured: Halo's rate-limit window (halo-api.md §6).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

impl RetryPolicy {
    /// Five attempts, 1 s doubling up to 60 s.
    pub const BUILT_IN: RetrySettings = RetrySettings {
        max_attempts: Some(5),
        initial_delay_ms: Some(1000),
        max_delay_ms: Some(60_000),
    };

    pub fn from_settings(settings: RetrySettings) -> RetryPolicy {
        let built_in = Self::BUILT_IN;
        RetryPolicy {
            max_attempts: settings
                .max_attempts
                .or(built_in.max_attempts)
                .unwrap_or(1)
                .max(1),
            initial_delay: Duration::from_millis(
                settings
                    .initial_delay_ms
                    .or(built_in.initial_delay_ms)
                    .unwrap_or(0),
            ),
            max_delay: Duration::from_millis(
                settings.max_delay_ms.or(built_in.max_delay_ms).unwrap_or(0),
            ),
        }
    }

    /// The wait after failed attempt `attempt` (1-based): exponential with "equal jitter"
    /// (half fixed, half random), capped; a longer `Retry-After` wins, up to 5 minutes.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let base = self
            .initial_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let jittered = base / 2 + base.mul_f64(random_fraction() / 2.0);
        match retry_after {
            Some(wanted) => jittered.max(wanted.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }
}

/// A number in [0, 1) from the random bits of a v4 UUID (no extra dependency).
fn random_fraction() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 >> 11;
    bits as f64 / (1u64 << 53) as f64
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

/// A run whose attempts of a step may have made something, and when its first attempt began.
type EarlierRun = (String, Option<i64>);

/// How an attempt goes about its work.
enum AttemptMode<'a> {
    Send,
    /// Look under these runs' keys first; send only when nothing is found.
    LookUpFirst(&'a [EarlierRun]),
    /// The step cannot look up an earlier attempt, so it must not send again.
    Refuse,
}

/// The longest wait before the look-up after a lost last answer: a slow server may still be
/// finishing the request.
const MAX_SETTLE: Duration = Duration::from_secs(10);

/// An attempt that started but never recorded its end (a crash) may have taken effect, as
/// may one that ended with a lost answer.
fn left_uncertain(step: &StepRunRecord) -> bool {
    step.attempts as usize > step.attempt_log.len()
        || step.attempt_log.last().is_some_and(|a| a.outcome_unknown)
}

/// When a step's first attempt started, across restarts.
fn first_attempt_of(step: &StepRunRecord) -> i64 {
    (step.attempt_log.iter().map(|a| a.started_at_ms)).fold(step.started_at_ms, i64::min)
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
    let inputs = flow
        .templates
        .render(&step.inputs, context.data(), context)
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
    let mut place = None;
    let errors: Vec<String> = schema
        .iter_errors(&inputs)
        .map(|e| {
            let at = e.instance_path().to_string();
            if place.is_none() {
                place = inputs_pointer(&step.inputs)
                    .and_then(|base| nearest_place(flow, &format!("{base}{at}")));
            }
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
                "{}flow `{}`, step `{}`: {}. The rendered value does not fit the step's input; check what the template reads (`haloflow run --dry-run` shows it)",
                place.map(|p| format!("{p}: ")).unwrap_or_default(),
                flow.id(),
                step.id,
                errors.join("; ")
            ),
        });
    }
    Ok(inputs)
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
    ) -> Option<RunStatus> {
        match self
            .try_execute_run(&loaded.flow, run_id, trigger, claimed, fresh)
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
        claimed: Instant,
        fresh: bool,
    ) -> Result<RunEnd, StorageError> {
        let storage = &self.inner.storage;
        // A resumed or replayed run reuses the steps it already finished.
        let (earlier, replay_of): (HashMap<String, StepRunRecord>, Option<String>) = if fresh {
            (HashMap::new(), None)
        } else {
            storage
                .get_run(run_id)
                .await?
                .map(|detail| {
                    let steps = detail.steps.into_iter();
                    let steps = steps.map(|s| (s.step_id.clone(), s)).collect();
                    (steps, detail.summary.replay_of)
                })
                .unwrap_or_default()
        };
        let mut claim = claimed;
        let mut unwritten = Unwritten {
            run_started_at_ms: Some(now_ms()),
            step_finished: None,
        };
        let mut data = initial_data(flow, trigger);
        // Steps still to run, next first; a branching step puts its chosen path in front.
        let mut queue: VecDeque<&ValidatedStep> = flow.steps.iter().collect();
        let mut position = 0;
        while let Some(step) = queue.pop_front() {
            let before = earlier.get(&step.id);
            let outputs = match before.filter(|s| s.status == StepStatus::Succeeded) {
                Some(done) => done.outputs.clone().unwrap_or(Value::Null),
                None => {
                    if self.is_shutting_down() {
                        self.write_unwritten(run_id, &mut unwritten).await?;
                        return Ok(RunEnd::Interrupted);
                    }
                    let end = self
                        .execute_step(
                            flow,
                            run_id,
                            step,
                            position,
                            &data,
                            before,
                            replay_of.as_deref(),
                            &mut claim,
                            &mut unwritten,
                        )
                        .await?;
                    match end {
                        StepEnd::Succeeded(outputs) => outputs,
                        StepEnd::Failed(message) => {
                            let end = RunFinish {
                                status: RunStatus::Failed,
                                failure: Some((&step.id, &message)),
                                at_ms: now_ms(),
                            };
                            storage
                                .record_progress(run_id, &unwritten.with(None, Some(end)))
                                .await?;
                            return Ok(RunEnd::Finished(RunStatus::Failed));
                        }
                        StepEnd::Interrupted => {
                            self.write_unwritten(run_id, &mut unwritten).await?;
                            return Ok(RunEnd::Interrupted);
                        }
                        StepEnd::LostClaim => {
                            // The step's end is true whoever holds the run now.
                            self.write_unwritten(run_id, &mut unwritten).await?;
                            return Ok(RunEnd::LostClaim);
                        }
                    }
                }
            };
            position += 1;
            if let Some(path) = step.chosen_path(&outputs) {
                for next in path.iter().rev() {
                    queue.push_front(next);
                }
            }
            if step.implementation().refines_trigger() {
                refine_trigger(&mut data, &outputs);
            }
            add_outputs(&mut data, &step.id, outputs);
        }
        let end = RunFinish {
            status: RunStatus::Succeeded,
            failure: None,
            at_ms: now_ms(),
        };
        storage
            .record_progress(run_id, &unwritten.with(None, Some(end)))
            .await?;
        Ok(RunEnd::Finished(RunStatus::Succeeded))
    }

    async fn write_unwritten(
        &self,
        run_id: &str,
        unwritten: &mut Unwritten,
    ) -> Result<(), StorageError> {
        if !unwritten.is_empty() {
            let progress = unwritten.with(None, None);
            self.inner
                .storage
                .record_progress(run_id, &progress)
                .await?;
            *unwritten = Unwritten::default();
        }
        Ok(())
    }

    /// The retry policy of one step: the flow's settings, then the config's, then built-in.
    pub(super) fn retry_policy(&self, step: &ValidatedStep) -> RetryPolicy {
        let type_name = step.implementation().type_name();
        RetryPolicy::from_settings(
            step.retry
                .or(self.inner.retry.for_type(type_name))
                .or(RetryPolicy::BUILT_IN),
        )
    }

    /// Runs one step's attempts until it succeeds, fails for good, or the engine shuts down.
    /// Every attempt is recorded before it sends (the intent, written with what was
    /// `unwritten`) and after it ends (the step's end is left in `unwritten` for the next write).
    #[allow(clippy::too_many_arguments)] // the run's state, passed down rather than bundled
    async fn execute_step(
        &self,
        flow: &ValidatedFlow,
        run_id: &str,
        step: &ValidatedStep,
        position: usize,
        data: &Context,
        before: Option<&StepRunRecord>,
        replay_of: Option<&str>,
        claim: &mut Instant,
        unwritten: &mut Unwritten,
    ) -> Result<StepEnd, StorageError> {
        let storage = &self.inner.storage;
        let type_name = step.implementation().type_name();
        let inputs = match prepare_inputs(flow, step, data, false) {
            Ok(inputs) => inputs,
            Err(failure) => {
                let start = StepStart {
                    step_id: &step.id,
                    position,
                    step_type: type_name,
                    inputs: &Value::Null,
                    attempt: 1,
                    at_ms: now_ms(),
                };
                storage
                    .record_progress(run_id, &unwritten.with(Some(start), None))
                    .await?;
                let outcome = StepOutcome {
                    status: StepStatus::Failed,
                    outputs: None,
                    error: Some((failure.code.to_owned(), failure.message.clone())),
                    exchanges: Vec::new(),
                    finished_at_ms: now_ms(),
                    attempt: None,
                };
                *unwritten = Unwritten {
                    run_started_at_ms: None,
                    step_finished: Some((step.id.clone(), outcome)),
                };
                return Ok(StepEnd::Failed(failure.message));
            }
        };
        let policy = self.retry_policy(step);
        let resend = step.implementation().resend(&inputs);
        let mut attempt = before.map_or(0, |s| s.attempts);
        // The runs this one replays whose same step may have taken effect unseen: their keys
        // are looked up too, so a replay adopts what they created instead of creating again.
        let ancestors = match (resend, replay_of) {
            (Resend::LookUpFirst, Some(replay_of)) => {
                self.uncertain_ancestors(replay_of, &step.id).await?
            }
            _ => Vec::new(),
        };
        let mut uncertain = before.is_some_and(left_uncertain) || !ancestors.is_empty();
        let mut exchanges = before.map(|s| s.exchanges.clone()).unwrap_or_default();
        let mut first_attempt_at_ms = before.map(first_attempt_of);
        loop {
            // Fencing: a node whose claim was taken over must not send anything more.
            if !self.renew_claim(run_id, claim).await? {
                return Ok(StepEnd::LostClaim);
            }
            attempt += 1;
            let started_at_ms = now_ms();
            let first_attempt_at_ms = *first_attempt_at_ms.get_or_insert(started_at_ms);
            let clock = Instant::now();
            let start = StepStart {
                step_id: &step.id,
                position,
                step_type: type_name,
                inputs: &inputs,
                attempt,
                at_ms: started_at_ms,
            };
            storage
                .record_progress(run_id, &unwritten.with(Some(start), None))
                .await?;
            *unwritten = Unwritten::default();
            let http = Outbound::live(self.inner.http.clone());
            let context =
                self.step_context(flow, run_id, step, http.clone(), Some(first_attempt_at_ms));
            let mut lookups = ancestors.clone();
            if attempt > 1 {
                lookups.insert(0, (run_id.to_owned(), Some(first_attempt_at_ms)));
            }
            let mode = match resend {
                _ if !uncertain => AttemptMode::Send,
                Resend::Safe => AttemptMode::Send,
                Resend::LookUpFirst => AttemptMode::LookUpFirst(&lookups),
                Resend::Never => AttemptMode::Refuse,
            };
            let attempt_work = self.attempt(flow, step, &context, &inputs, mode);
            // A long attempt keeps the claim alive: renewed every quarter lease while it runs.
            tokio::pin!(attempt_work);
            let (mut result, mut adopted, lookup_failed) = loop {
                tokio::select! {
                    done = &mut attempt_work => break done,
                    () = tokio::time::sleep(self.inner.lease / 4) => {
                        if !self.renew_claim(run_id, claim).await? {
                            return Ok(StepEnd::LostClaim);
                        }
                    }
                }
            };
            // The last attempt's outcome is unknown: settle it before calling the step failed,
            // so the run does not say "failed" over a record that exists.
            let mut settled = false;
            let last_lost = result.as_ref().is_err_and(|e| {
                e.outcome_unknown() && !(e.is_retryable() && attempt < policy.max_attempts)
            });
            if last_lost && resend != Resend::Safe {
                let mut lookups = ancestors.clone();
                lookups.insert(0, (run_id.to_owned(), Some(first_attempt_at_ms)));
                tokio::time::sleep(clock.elapsed().min(MAX_SETTLE)).await;
                let error = result.expect_err("checked above");
                (result, adopted, settled) = self
                    .settle_last(flow, step, resend, &http, &inputs, &lookups, error)
                    .await;
            }
            let sent = http.exchanges();
            exchanges.extend(sent.iter().cloned());
            self.inner
                .metrics
                .observe_attempt(type_name, result.is_ok(), clock.elapsed());
            let mut record = AttemptRecord {
                number: attempt,
                started_at_ms,
                finished_at_ms: now_ms(),
                outcome: AttemptOutcome::Succeeded,
                error_code: None,
                error: None,
                retry_in_ms: None,
                outcome_unknown: false,
                exchanges: sent,
            };
            match result {
                Ok(outputs) => {
                    if adopted {
                        record.outcome = AttemptOutcome::Adopted;
                        self.inner.metrics.count_adopted(type_name);
                        tracing::info!(%run_id, step = %step.id, "Found what an earlier attempt created; adopted it instead of sending again.");
                    }
                    // The attempt goes into the log with the step's end, which is written
                    // with whatever the run does next.
                    let outcome = StepOutcome {
                        status: StepStatus::Succeeded,
                        outputs: Some(outputs.clone()),
                        error: None,
                        exchanges,
                        finished_at_ms: record.finished_at_ms,
                        attempt: Some(record),
                    };
                    unwritten.step_finished = Some((step.id.clone(), outcome));
                    return Ok(StepEnd::Succeeded(outputs));
                }
                Err(error) => {
                    // A failed lookup leaves the earlier outcome as unknown as it was.
                    uncertain = !settled
                        && (lookup_failed
                            || error.outcome_unknown()
                            || matches!(error, StepError::OutcomeUnknown(_)));
                    let message = format!("flow `{}`, step `{}`: {error}", flow.id(), step.id);
                    let message = if settled {
                        format!("{message} (a look-up found nothing it made: nothing was done)")
                    } else {
                        message
                    };
                    let retry = error.is_retryable() && attempt < policy.max_attempts;
                    let delay = retry.then(|| {
                        let delay = policy.delay(attempt, error.retry_after());
                        // A lost answer: give a slow server as long again as we waited for
                        // it, so the lookup before the next send sees what it finished.
                        if uncertain {
                            delay.max(clock.elapsed())
                        } else {
                            delay
                        }
                    });
                    record.outcome = AttemptOutcome::Failed;
                    record.error_code = Some(error.code().to_owned());
                    record.error = Some(message.clone());
                    record.retry_in_ms = delay.map(|d| d.as_millis() as u64);
                    record.outcome_unknown = uncertain;
                    let Some(delay) = delay else {
                        let message = if attempt > 1 {
                            format!("{message} (attempt {attempt} of {})", policy.max_attempts)
                        } else {
                            message
                        };
                        tracing::warn!(%run_id, step = %step.id, code = error.code(), "{message}");
                        let outcome = StepOutcome {
                            status: StepStatus::Failed,
                            outputs: None,
                            error: Some((error.code().to_owned(), message.clone())),
                            exchanges,
                            finished_at_ms: now_ms(),
                            attempt: Some(record),
                        };
                        unwritten.step_finished = Some((step.id.clone(), outcome));
                        return Ok(StepEnd::Failed(message));
                    };
                    storage.record_attempt(run_id, &step.id, &record).await?;
                    self.inner.metrics.count_retry(type_name);
                    tracing::info!(%run_id, step = %step.id, attempt, delay_ms = delay.as_millis() as u64, "{message}; trying again");
                    // Long waits keep the claim alive, renewing every half lease.
                    let deadline = tokio::time::Instant::now() + delay;
                    loop {
                        let step = (self.inner.lease / 2)
                            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                        tokio::select! {
                            () = tokio::time::sleep(step) => {}
                            () = self.shutting_down() => return Ok(StepEnd::Interrupted),
                        }
                        if tokio::time::Instant::now() >= deadline {
                            break;
                        }
                        if !self.renew_claim(run_id, claim).await? {
                            return Ok(StepEnd::LostClaim);
                        }
                    }
                }
            }
        }
    }

    /// One attempt: send, look up first (adopting what is found), or refuse to send again.
    /// Returns the result, whether it was adopted, and whether the look-up itself failed.
    async fn attempt(
        &self,
        flow: &ValidatedFlow,
        step: &ValidatedStep,
        context: &StepContext,
        inputs: &Value,
        mode: AttemptMode<'_>,
    ) -> (Result<Value, StepError>, bool, bool) {
        let send = || step.implementation().execute(context, inputs.clone());
        match mode {
            AttemptMode::Send => (send().await, false, false),
            AttemptMode::LookUpFirst(lookups) => {
                match self.look_up(flow, step, &context.http, inputs, lookups).await {
                    Ok(Some(outputs)) => (Ok(outputs), true, false),
                    Ok(None) => (send().await, false, false),
                    Err(e) => (Err(e), false, true),
                }
            }
            AttemptMode::Refuse => (
                Err(StepError::OutcomeUnknown(
                    "an earlier attempt may have taken effect (its answer was lost) and this step cannot look it up, so it was not sent again. Check the target system, then replay the run from this step if nothing was done".to_owned(),
                )),
                false,
                false,
            ),
        }
    }

    /// After a last attempt whose answer was lost: what it made, adopted (`true` second), or
    /// the error with the outcome known to be nothing (`true` third), or an `outcome_unknown`
    /// error when the step cannot look or the look-up fails.
    #[allow(clippy::too_many_arguments)] // the attempt's state, passed down rather than bundled
    async fn settle_last(
        &self,
        flow: &ValidatedFlow,
        step: &ValidatedStep,
        resend: Resend,
        http: &Outbound,
        inputs: &Value,
        lookups: &[EarlierRun],
        error: StepError,
    ) -> (Result<Value, StepError>, bool, bool) {
        let unknown = |why: &str| {
            Err(StepError::OutcomeUnknown(format!(
                "outcome unknown: {error}; the request may have taken effect and {why}"
            )))
        };
        if resend != Resend::LookUpFirst {
            let why = "this step cannot look it up. Check the target system, then replay the run from this step if nothing was done";
            return (unknown(why), false, false);
        }
        match self.look_up(flow, step, http, inputs, lookups).await {
            Ok(Some(outputs)) => (Ok(outputs), true, false),
            Ok(None) => (Err(error), false, true),
            Err(lookup) => (
                unknown(&format!(
                    "the look-up for it failed ({lookup}). Check the target system; a replay of this run looks for it again before creating anything"
                )),
                false,
                false,
            ),
        }
    }

    /// Looks for what earlier attempts made under each run's key (this run's and those of
    /// the runs it replays), nearest first. `Ok(None)` only when every look-up was sure.
    async fn look_up(
        &self,
        flow: &ValidatedFlow,
        step: &ValidatedStep,
        http: &Outbound,
        inputs: &Value,
        lookups: &[EarlierRun],
    ) -> Result<Option<Value>, StepError> {
        let mut failure = None;
        for (run_id, first_attempt_at_ms) in lookups {
            let context = self.step_context(flow, run_id, step, http.clone(), *first_attempt_at_ms);
            match step.implementation().find_previous(&context, inputs).await {
                Ok(Some(outputs)) => return Ok(Some(outputs)),
                Ok(None) => {}
                Err(e) => failure = Some(e),
            }
        }
        failure.map_or(Ok(None), Err)
    }

    /// The runs `replay_of` and its own ancestors whose step `step_id` was left with an
    /// unknown outcome, nearest first; the walk stops at the first run where it was known.
    async fn uncertain_ancestors(
        &self,
        replay_of: &str,
        step_id: &str,
    ) -> Result<Vec<EarlierRun>, StorageError> {
        let mut found = Vec::new();
        let mut next = Some(replay_of.to_owned());
        // Bounded: a replay of a replay of ... is rare, and each hop is a read.
        while let Some(run_id) = next.take().filter(|_| found.len() < 8) {
            let Some(detail) = self.inner.storage.get_run(&run_id).await? else {
                break;
            };
            let Some(earlier) = detail.steps.iter().find(|s| s.step_id == step_id) else {
                break;
            };
            if !left_uncertain(earlier) {
                break;
            }
            found.push((run_id, Some(first_attempt_of(earlier))));
            next = detail.summary.replay_of;
        }
        Ok(found)
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
                fill_placeholders(data.data_mut(), step, &placeholder_steps);
                let mut report = DryRunStep {
                    id: step.id.clone(),
                    step_type: step.implementation().type_name().to_owned(),
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
                let context = self.step_context(flow, "dry-run", step, http, None);
                let outputs = match step.implementation().execute(&context, inputs).await {
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
                    add_outputs(&mut data, &step.id, outputs);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_caps_and_honours_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for _ in 0..100 {
            let first = policy.delay(1, None);
            assert!((50..=100).contains(&first.as_millis()), "{first:?}");
            let third = policy.delay(3, None);
            assert!((200..=400).contains(&third.as_millis()), "{third:?}");
            let capped = policy.delay(10, None);
            assert!((500..=1000).contains(&capped.as_millis()), "{capped:?}");
        }
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(3600))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn step_settings_win_over_config_and_built_in() {
        let step = RetrySettings {
            max_attempts: Some(2),
            ..RetrySettings::default()
        };
        let config = RetrySettings {
            max_attempts: Some(9),
            initial_delay_ms: Some(5),
            max_delay_ms: None,
        };
        let policy = RetryPolicy::from_settings(step.or(config).or(RetryPolicy::BUILT_IN));
        assert_eq!(policy.max_attempts, 2);
        assert_eq!(policy.initial_delay, Duration::from_millis(5));
        assert_eq!(policy.max_delay, Duration::from_secs(60));
    }
}
