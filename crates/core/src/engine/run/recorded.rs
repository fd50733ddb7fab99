//! A served step's attempts on the record: each written before it sends and after it ends,
//! the claim on the run kept alive while it sends and waits, a resumed step counting the
//! attempts it made before. The attempts themselves are [`attempts`](super::attempts)'.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use handlebars::Context;
use serde_json::Value;

use super::attempts::{Answer, Attempts, EarlierRun, Ledger, Place, Target};
use super::{RunState, StepEnd, StepFailure, Unwritten, prepare_inputs};
use crate::engine::{Engine, RunSlot};
use crate::flow::{ValidatedFlow, ValidatedStep};
use crate::step::{Resend, StepError};
use crate::storage::{
    AttemptRecord, StepOutcome, StepRunRecord, StepStart, StepStatus, StorageError, now_ms,
};

/// One step of a served run, with what its attempts need to know.
pub(super) struct StepRun<'a> {
    pub(super) engine: &'a Engine,
    pub(super) slot: &'a Arc<RunSlot>,
    pub(super) flow: &'a ValidatedFlow,
    pub(super) run_id: &'a str,
    pub(super) step: &'a ValidatedStep,
    /// The step's place in the run's record.
    pub(super) position: usize,
    /// The step's record from before an interruption, if any.
    pub(super) before: Option<&'a StepRunRecord>,
    /// The run this one replays.
    pub(super) replay_of: Option<&'a str>,
}

/// A served step's ledger: the run's record and its claim.
struct Recorded<'s, 'a> {
    run: &'s StepRun<'a>,
    state: &'s mut RunState,
}

impl StepRun<'_> {
    /// Runs the step's attempts until it succeeds, fails for good, or the engine shuts down.
    /// Every attempt is recorded before it sends (the intent, written with what was
    /// unwritten) and after it ends (the step's end is left unwritten, for the next write).
    pub(super) async fn execute(
        &self,
        data: &Context,
        state: &mut RunState,
    ) -> Result<StepEnd, StorageError> {
        let inputs = match prepare_inputs(self.flow, self.step, data, false) {
            Ok(inputs) => inputs,
            Err(failure) => return self.fail_unprepared(failure, state).await,
        };
        let mut attempts = self.attempts(&inputs).await?;
        let target = Target {
            engine: self.engine,
            slot: Some(self.slot),
            place: Place::Flow {
                flow: self.flow,
                step: self.step,
            },
            run_id: self.run_id,
        };
        let mut ledger = Recorded { run: self, state };
        target.run(&mut attempts, &inputs, &mut ledger).await
    }

    /// Inputs that could not be rendered or do not fit: the step is recorded as started and
    /// failed, without an attempt.
    async fn fail_unprepared(
        &self,
        failure: StepFailure,
        state: &mut RunState,
    ) -> Result<StepEnd, StorageError> {
        self.record_start(&Value::Null, 1, now_ms(), state).await?;
        let outcome = StepOutcome {
            status: StepStatus::Failed,
            outputs: None,
            error: Some((failure.code.to_owned(), failure.message.clone())),
            exchanges: Vec::new(),
            finished_at_ms: now_ms(),
            attempt: None,
        };
        state.unwritten.step_finished = Some((self.step.id.clone(), outcome));
        Ok(StepEnd::Failed(failure.message))
    }

    /// Writes an attempt's intent, with whatever was unwritten, before anything is sent.
    async fn record_start(
        &self,
        inputs: &Value,
        attempt: u32,
        at_ms: i64,
        state: &mut RunState,
    ) -> Result<(), StorageError> {
        let start = StepStart {
            step_id: &self.step.id,
            position: self.position,
            step_type: self.step.description().type_name,
            inputs,
            attempt,
            at_ms,
        };
        let progress = state.unwritten.with(Some(start), None);
        (self.engine.inner.storage)
            .record_progress(self.run_id, &progress)
            .await?;
        state.unwritten = Unwritten::default();
        Ok(())
    }

    /// The attempts' starting point: the step's policy, and what an interrupted run of it
    /// (or the runs this one replays) may already have done.
    async fn attempts(&self, inputs: &Value) -> Result<Attempts, StorageError> {
        let resend = self.step.implementation().resend(inputs);
        let ancestors = match (resend, self.replay_of) {
            (Resend::LookUpFirst, Some(replay_of)) => {
                (self.engine)
                    .uncertain_ancestors(replay_of, &self.step.id)
                    .await?
            }
            _ => Vec::new(),
        };
        let before = self.before;
        Ok(Attempts {
            policy: self.engine.retry_policy(self.step),
            resend,
            number: before.map_or(0, |s| s.attempts),
            uncertain: before.is_some_and(left_uncertain) || !ancestors.is_empty(),
            ancestors,
            exchanges: before.map(|s| s.exchanges.clone()).unwrap_or_default(),
            first_attempt_at_ms: before.map(first_attempt_of),
        })
    }
}

impl Ledger for Recorded<'_, '_> {
    type End = StepEnd;

    /// Fencing: a node whose claim was taken over must not send anything more.
    async fn begin(
        &mut self,
        inputs: &Value,
        number: u32,
        started_at_ms: i64,
    ) -> Result<Option<StepEnd>, StorageError> {
        let run = self.run;
        if !run
            .engine
            .renew_claim(run.run_id, &mut self.state.claim)
            .await?
        {
            return Ok(Some(StepEnd::LostClaim));
        }
        (run.record_start(inputs, number, started_at_ms, self.state)).await?;
        Ok(None)
    }

    /// Keeps the claim alive while the attempt sends: renewed every quarter lease.
    async fn during<F: Future<Output = Answer>>(
        &mut self,
        work: F,
    ) -> Result<Result<Answer, StepEnd>, StorageError> {
        let engine = self.run.engine;
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(Ok(done)),
                () = tokio::time::sleep(engine.inner.lease / 4) => {
                    if !engine.renew_claim(self.run.run_id, &mut self.state.claim).await? {
                        return Ok(Err(StepEnd::LostClaim));
                    }
                }
            }
        }
    }

    /// The step's end: its outputs, left unwritten with the attempt for the run's next write.
    fn succeeded(&mut self, outputs: Value, record: AttemptRecord, a: &mut Attempts) -> StepEnd {
        let outcome = StepOutcome {
            status: StepStatus::Succeeded,
            outputs: Some(outputs.clone()),
            error: None,
            exchanges: std::mem::take(&mut a.exchanges),
            finished_at_ms: record.finished_at_ms,
            attempt: Some(record),
        };
        self.state.unwritten.step_finished = Some((self.run.step.id.clone(), outcome));
        StepEnd::Succeeded(outputs)
    }

    /// The step failed and is not tried again: its end is left unwritten for the run's end.
    fn failed(
        &mut self,
        error: StepError,
        message: String,
        record: AttemptRecord,
        a: &mut Attempts,
    ) -> StepEnd {
        let message = if a.number > 1 {
            format!(
                "{message} (attempt {} of {})",
                a.number, a.policy.max_attempts
            )
        } else {
            message
        };
        let run = self.run;
        tracing::warn!(run_id = %run.run_id, step = %run.step.id, code = error.code(), "{message}");
        let outcome = StepOutcome {
            status: StepStatus::Failed,
            outputs: None,
            error: Some((error.code().to_owned(), message.clone())),
            exchanges: std::mem::take(&mut a.exchanges),
            finished_at_ms: now_ms(),
            attempt: Some(record),
        };
        self.state.unwritten.step_finished = Some((run.step.id.clone(), outcome));
        StepEnd::Failed(message)
    }

    async fn retrying(&mut self, record: &AttemptRecord) -> Result<(), StorageError> {
        let run = self.run;
        (run.engine.inner.storage)
            .record_attempt(run.run_id, &run.step.id, record)
            .await
    }

    /// Waits before the next attempt; a long wait keeps the claim alive, renewed every half
    /// lease. An end when the engine shuts down or another node takes the run over meanwhile.
    async fn wait(&mut self, delay: Duration) -> Result<Option<StepEnd>, StorageError> {
        let engine = self.run.engine;
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            let nap = (engine.inner.lease / 2)
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                () = engine.shutting_down() => return Ok(Some(StepEnd::Interrupted)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            if !engine
                .renew_claim(self.run.run_id, &mut self.state.claim)
                .await?
            {
                return Ok(Some(StepEnd::LostClaim));
            }
        }
    }
}

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

impl Engine {
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
}
