//! A served step's attempts: each recorded before it sends and after it ends, retried by its
//! policy, the claim kept alive, and after a lost answer looked up before anything is sent again.

use std::time::{Duration, Instant};

use handlebars::Context;
use serde_json::Value;

use super::{RetryPolicy, RunState, StepEnd, StepFailure, Unwritten, prepare_inputs};
use crate::engine::Engine;
use crate::flow::{ValidatedFlow, ValidatedStep};
use crate::outbound::{ExchangeRecord, Outbound};
use crate::step::{Resend, StepContext, StepError};
use crate::storage::{
    AttemptOutcome, AttemptRecord, StepOutcome, StepRunRecord, StepStart, StepStatus, StorageError,
    now_ms,
};

/// A run whose attempts of a step may have made something, and when its first attempt began.
type EarlierRun = (String, Option<i64>);

/// The longest wait before the look-up after a lost last answer: a slow server may still be
/// finishing the request.
const MAX_SETTLE: Duration = Duration::from_secs(10);

/// How an attempt goes about its work.
enum AttemptMode<'a> {
    Send,
    /// Look under these runs' keys first; send only when nothing is found.
    LookUpFirst(&'a [EarlierRun]),
    /// The step cannot look up an earlier attempt, so it must not send again.
    Refuse,
}

/// One step of a served run, with what its attempts need to know.
pub(super) struct StepRun<'a> {
    pub(super) engine: &'a Engine,
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

/// What a step's attempts carry from one to the next.
struct Attempts {
    policy: RetryPolicy,
    resend: Resend,
    /// The number of the last attempt made (a resumed step counts its earlier ones).
    number: u32,
    /// The runs this one replays whose same step may have taken effect unseen: their keys
    /// are looked up too, so a replay adopts what they created instead of creating again.
    ancestors: Vec<EarlierRun>,
    /// An earlier attempt may have taken effect unseen.
    uncertain: bool,
    exchanges: Vec<ExchangeRecord>,
    first_attempt_at_ms: Option<i64>,
}

impl Attempts {
    fn may_retry(&self, error: &StepError) -> bool {
        error.is_retryable() && self.number < self.policy.max_attempts
    }

    /// The wait before the next attempt. After a lost answer, a slow server gets as long again
    /// as we waited for it, so the look-up before the next send sees what it finished.
    fn retry_delay(&self, error: &StepError, clock: Instant) -> Duration {
        let delay = self.policy.delay(self.number, error.retry_after());
        if self.uncertain {
            delay.max(clock.elapsed())
        } else {
            delay
        }
    }
}

/// How one attempt ended.
struct Answer {
    result: Result<Value, StepError>,
    /// What an earlier attempt made was found and adopted.
    adopted: bool,
    /// The look-up before sending failed: the earlier outcome is as unknown as it was.
    lookup_failed: bool,
    /// A look-up after a lost last answer found nothing: nothing was done.
    settled: bool,
}

impl Answer {
    fn of(result: Result<Value, StepError>) -> Answer {
        Answer {
            result,
            adopted: false,
            lookup_failed: false,
            settled: false,
        }
    }

    fn adopted(outputs: Value) -> Answer {
        Answer {
            adopted: true,
            ..Answer::of(Ok(outputs))
        }
    }
}

/// What follows an attempt.
enum Next {
    End(StepEnd),
    RetryAfter(Duration),
}

impl StepRun<'_> {
    fn type_name(&self) -> &'static str {
        self.step.description().type_name
    }

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
        loop {
            let delay = match self.attempt(&mut attempts, &inputs, state).await? {
                Next::End(end) => return Ok(end),
                Next::RetryAfter(delay) => delay,
            };
            if let Some(end) = self.wait(delay, &mut state.claim).await? {
                return Ok(end);
            }
        }
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
            step_type: self.type_name(),
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

    /// One attempt: the claim renewed (fencing), the intent written, the request sent (or
    /// looked up first, or refused), a lost last answer settled, the attempt recorded.
    async fn attempt(
        &self,
        a: &mut Attempts,
        inputs: &Value,
        state: &mut RunState,
    ) -> Result<Next, StorageError> {
        // Fencing: a node whose claim was taken over must not send anything more.
        if !self
            .engine
            .renew_claim(self.run_id, &mut state.claim)
            .await?
        {
            return Ok(Next::End(StepEnd::LostClaim));
        }
        a.number += 1;
        let started_at_ms = now_ms();
        let first_attempt_at_ms = *a.first_attempt_at_ms.get_or_insert(started_at_ms);
        let clock = Instant::now();
        self.record_start(inputs, a.number, started_at_ms, state)
            .await?;
        let http = Outbound::live(self.engine.inner.http.clone());
        let sending = self.send(a, inputs, &http, first_attempt_at_ms, &mut state.claim);
        let Some(answer) = sending.await? else {
            return Ok(Next::End(StepEnd::LostClaim));
        };
        let answer = (self.settle(a, answer, &http, inputs, first_attempt_at_ms, clock)).await;
        let sent = http.exchanges();
        a.exchanges.extend(sent.iter().cloned());
        let succeeded = answer.result.is_ok();
        (self.engine.inner.metrics).observe_attempt(self.type_name(), succeeded, clock.elapsed());
        let record = AttemptRecord {
            number: a.number,
            started_at_ms,
            finished_at_ms: now_ms(),
            outcome: AttemptOutcome::Succeeded,
            error_code: None,
            error: None,
            retry_in_ms: None,
            outcome_unknown: false,
            exchanges: sent,
        };
        match answer.result {
            Ok(outputs) => Ok(Next::End(self.succeeded(
                outputs,
                answer.adopted,
                record,
                a,
                state,
            ))),
            Err(error) => {
                // A failed lookup leaves the earlier outcome as unknown as it was.
                a.uncertain = !answer.settled
                    && (answer.lookup_failed
                        || error.outcome_unknown()
                        || matches!(error, StepError::OutcomeUnknown(_)));
                (self.failed(error, answer.settled, record, a, clock, state)).await
            }
        }
    }

    /// Sends (or looks up first, or refuses) while keeping the claim alive: renewed every
    /// quarter lease while the attempt runs. `None` when another node took the run over.
    async fn send(
        &self,
        a: &Attempts,
        inputs: &Value,
        http: &Outbound,
        first_attempt_at_ms: i64,
        claim: &mut Instant,
    ) -> Result<Option<Answer>, StorageError> {
        let context = (self.engine).step_context(
            self.flow,
            self.run_id,
            self.step,
            http.clone(),
            Some(first_attempt_at_ms),
        );
        let lookups = self.lookups(a, first_attempt_at_ms, a.number > 1);
        let mode = match a.resend {
            _ if !a.uncertain => AttemptMode::Send,
            Resend::Safe => AttemptMode::Send,
            Resend::LookUpFirst => AttemptMode::LookUpFirst(&lookups),
            Resend::Never => AttemptMode::Refuse,
        };
        let work = self.send_once(&context, inputs, mode);
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(Some(done)),
                () = tokio::time::sleep(self.engine.inner.lease / 4) => {
                    if !self.engine.renew_claim(self.run_id, claim).await? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// The runs whose keys a look-up searches, nearest first: this run's own (`with_own`),
    /// then those of the replayed runs.
    fn lookups(&self, a: &Attempts, first_attempt_at_ms: i64, with_own: bool) -> Vec<EarlierRun> {
        let own = with_own.then(|| (self.run_id.to_owned(), Some(first_attempt_at_ms)));
        own.into_iter().chain(a.ancestors.iter().cloned()).collect()
    }

    /// One attempt: send, look up first (adopting what is found), or refuse to send again.
    async fn send_once(
        &self,
        context: &StepContext,
        inputs: &Value,
        mode: AttemptMode<'_>,
    ) -> Answer {
        let send = || self.step.implementation().execute(context, inputs.clone());
        match mode {
            AttemptMode::Send => Answer::of(send().await),
            AttemptMode::LookUpFirst(lookups) => {
                match self.look_up(&context.http, inputs, lookups).await {
                    Ok(Some(outputs)) => Answer::adopted(outputs),
                    Ok(None) => Answer::of(send().await),
                    Err(e) => Answer {
                        lookup_failed: true,
                        ..Answer::of(Err(e))
                    },
                }
            }
            AttemptMode::Refuse => Answer::of(Err(StepError::OutcomeUnknown(
                "an earlier attempt may have taken effect (its answer was lost) and this step cannot look it up, so it was not sent again. Check the target system, then replay the run from this step if nothing was done".to_owned(),
            ))),
        }
    }

    /// The last attempt's outcome is unknown: settle it before calling the step failed, so the
    /// run does not say "failed" over a record that exists.
    async fn settle(
        &self,
        a: &Attempts,
        answer: Answer,
        http: &Outbound,
        inputs: &Value,
        first_attempt_at_ms: i64,
        clock: Instant,
    ) -> Answer {
        let last_lost =
            (answer.result.as_ref()).is_err_and(|e| e.outcome_unknown() && !a.may_retry(e));
        if !last_lost || a.resend == Resend::Safe {
            return answer;
        }
        let lookups = self.lookups(a, first_attempt_at_ms, true);
        tokio::time::sleep(clock.elapsed().min(MAX_SETTLE)).await;
        let error = answer.result.expect_err("checked above");
        let settled = self
            .settle_last(a.resend, http, inputs, &lookups, error)
            .await;
        Answer {
            lookup_failed: answer.lookup_failed,
            ..settled
        }
    }

    /// After a last attempt whose answer was lost: what it made, adopted, or the error with
    /// the outcome known to be nothing (`settled`), or an `outcome_unknown` error when the
    /// step cannot look or the look-up fails.
    async fn settle_last(
        &self,
        resend: Resend,
        http: &Outbound,
        inputs: &Value,
        lookups: &[EarlierRun],
        error: StepError,
    ) -> Answer {
        let unknown = |why: &str| {
            Answer::of(Err(StepError::OutcomeUnknown(format!(
                "outcome unknown: {error}; the request may have taken effect and {why}"
            ))))
        };
        if resend != Resend::LookUpFirst {
            return unknown(
                "this step cannot look it up. Check the target system, then replay the run from this step if nothing was done",
            );
        }
        match self.look_up(http, inputs, lookups).await {
            Ok(Some(outputs)) => Answer::adopted(outputs),
            Ok(None) => Answer {
                settled: true,
                ..Answer::of(Err(error))
            },
            Err(lookup) => unknown(&format!(
                "the look-up for it failed ({lookup}). Check the target system; a replay of this run looks for it again before creating anything"
            )),
        }
    }

    /// Looks for what earlier attempts made under each run's key (this run's and those of
    /// the runs it replays), nearest first. `Ok(None)` only when every look-up was sure.
    async fn look_up(
        &self,
        http: &Outbound,
        inputs: &Value,
        lookups: &[EarlierRun],
    ) -> Result<Option<Value>, StepError> {
        let mut failure = None;
        for (run_id, first_attempt_at_ms) in lookups {
            let context = (self.engine).step_context(
                self.flow,
                run_id,
                self.step,
                http.clone(),
                *first_attempt_at_ms,
            );
            match self
                .step
                .implementation()
                .find_previous(&context, inputs)
                .await
            {
                Ok(Some(outputs)) => return Ok(Some(outputs)),
                Ok(None) => {}
                Err(e) => failure = Some(e),
            }
        }
        failure.map_or(Ok(None), Err)
    }

    /// The step's end: its outputs, left unwritten with the attempt for the run's next write.
    fn succeeded(
        &self,
        outputs: Value,
        adopted: bool,
        mut record: AttemptRecord,
        a: &mut Attempts,
        state: &mut RunState,
    ) -> StepEnd {
        if adopted {
            record.outcome = AttemptOutcome::Adopted;
            self.engine.inner.metrics.count_adopted(self.type_name());
            tracing::info!(run_id = %self.run_id, step = %self.step.id, "Found what an earlier attempt created; adopted it instead of sending again.");
        }
        // The attempt goes into the log with the step's end, which is written with whatever
        // the run does next.
        let outcome = StepOutcome {
            status: StepStatus::Succeeded,
            outputs: Some(outputs.clone()),
            error: None,
            exchanges: std::mem::take(&mut a.exchanges),
            finished_at_ms: record.finished_at_ms,
            attempt: Some(record),
        };
        state.unwritten.step_finished = Some((self.step.id.clone(), outcome));
        StepEnd::Succeeded(outputs)
    }

    /// A failed attempt: the step's failure when it is not tried again, else the attempt
    /// recorded and the wait before the next one.
    async fn failed(
        &self,
        error: StepError,
        settled: bool,
        mut record: AttemptRecord,
        a: &mut Attempts,
        clock: Instant,
        state: &mut RunState,
    ) -> Result<Next, StorageError> {
        let mut message = format!(
            "flow `{}`, step `{}`: {error}",
            self.flow.id(),
            self.step.id
        );
        if settled {
            message.push_str(" (a look-up found nothing it made: nothing was done)");
        }
        let delay = a.may_retry(&error).then(|| a.retry_delay(&error, clock));
        record.outcome = AttemptOutcome::Failed;
        record.error_code = Some(error.code().to_owned());
        record.error = Some(message.clone());
        record.retry_in_ms = delay.map(|d| d.as_millis() as u64);
        record.outcome_unknown = a.uncertain;
        let Some(delay) = delay else {
            let end = self.failed_for_good(&error, message, record, a, state);
            return Ok(Next::End(end));
        };
        (self.engine.inner.storage)
            .record_attempt(self.run_id, &self.step.id, &record)
            .await?;
        self.engine.inner.metrics.count_retry(self.type_name());
        tracing::info!(run_id = %self.run_id, step = %self.step.id, attempt = a.number, delay_ms = delay.as_millis() as u64, "{message}; trying again");
        Ok(Next::RetryAfter(delay))
    }

    /// The step failed and is not tried again: its end is left unwritten for the run's end.
    fn failed_for_good(
        &self,
        error: &StepError,
        message: String,
        record: AttemptRecord,
        a: &mut Attempts,
        state: &mut RunState,
    ) -> StepEnd {
        let message = if a.number > 1 {
            format!(
                "{message} (attempt {} of {})",
                a.number, a.policy.max_attempts
            )
        } else {
            message
        };
        tracing::warn!(run_id = %self.run_id, step = %self.step.id, code = error.code(), "{message}");
        let outcome = StepOutcome {
            status: StepStatus::Failed,
            outputs: None,
            error: Some((error.code().to_owned(), message.clone())),
            exchanges: std::mem::take(&mut a.exchanges),
            finished_at_ms: now_ms(),
            attempt: Some(record),
        };
        state.unwritten.step_finished = Some((self.step.id.clone(), outcome));
        StepEnd::Failed(message)
    }

    /// Waits before the next attempt; a long wait keeps the claim alive, renewed every half
    /// lease. An end when the engine shuts down or another node takes the run over meanwhile.
    async fn wait(
        &self,
        delay: Duration,
        claim: &mut Instant,
    ) -> Result<Option<StepEnd>, StorageError> {
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            let nap = (self.engine.inner.lease / 2)
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                () = self.engine.shutting_down() => return Ok(Some(StepEnd::Interrupted)),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            if !self.engine.renew_claim(self.run_id, claim).await? {
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
