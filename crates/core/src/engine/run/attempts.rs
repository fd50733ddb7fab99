//! A step's attempts, shared by served runs and [`Engine::run_step`]: retried by the step's
//! policy (and `Retry-After`), and after a lost answer looked up before anything is sent again
//! ([`Resend`]). What each attempt leaves behind is the [`Ledger`]'s: a served run records
//! every attempt and keeps its claim alive ([`recorded`](super::recorded)); a step run on its
//! own records nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::engine::{Engine, RunSlot};
use crate::flow::{ValidatedFlow, ValidatedStep};
use crate::outbound::{Outbound, SlotLender};
use crate::step::{RegisteredStep, Resend, Step, StepContext, StepError};
use crate::storage::{AttemptOutcome, AttemptRecord, StorageError, now_ms};

use super::RetryPolicy;

/// A run whose attempts of a step may have made something, and when its first attempt began
/// (`None`: no time bound on the look-up).
pub(super) type EarlierRun = (String, Option<i64>);

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

/// What a step's attempts carry from one to the next.
pub(super) struct Attempts {
    pub(super) policy: RetryPolicy,
    pub(super) resend: Resend,
    /// The number of the last attempt made (a resumed step counts its earlier ones).
    pub(super) number: u32,
    /// The runs this one replays whose same step may have taken effect unseen: their keys
    /// are looked up too, so a replay adopts what they created instead of creating again.
    pub(super) ancestors: Vec<EarlierRun>,
    /// An earlier attempt may have taken effect unseen.
    pub(super) uncertain: bool,
    pub(super) exchanges: Vec<crate::outbound::ExchangeRecord>,
    pub(super) first_attempt_at_ms: Option<i64>,
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
pub(super) struct Answer {
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
enum Next<End> {
    End(End),
    RetryAfter(Duration),
}

/// Where a step's attempts keep what they did: a served run writes each attempt before it
/// sends and after it ends and keeps its claim on the run; a step run on its own keeps
/// nothing. `End` is how the step ends for whoever asked.
pub(super) trait Ledger {
    type End;
    /// Before attempt `number` sends (fencing, the intent written): `Some` stops the step.
    async fn begin(
        &mut self,
        inputs: &Value,
        number: u32,
        started_at_ms: i64,
    ) -> Result<Option<Self::End>, StorageError>;
    /// Runs the attempt's `work` to its answer (a served run renews its claim meanwhile), or
    /// stops the step.
    async fn during<F: Future<Output = Answer>>(
        &mut self,
        work: F,
    ) -> Result<Result<Answer, Self::End>, StorageError>;
    /// The step succeeded (or adopted what an earlier attempt made).
    fn succeeded(&mut self, outputs: Value, record: AttemptRecord, a: &mut Attempts) -> Self::End;
    /// The step failed and is not tried again; `message` names where.
    fn failed(
        &mut self,
        error: StepError,
        message: String,
        record: AttemptRecord,
        a: &mut Attempts,
    ) -> Self::End;
    /// A failed attempt that is tried again.
    async fn retrying(&mut self, record: &AttemptRecord) -> Result<(), StorageError>;
    /// Waits `delay` before the next attempt; `Some` stops the step (a shutdown, say).
    async fn wait(&mut self, delay: Duration) -> Result<Option<Self::End>, StorageError>;
}

/// The step whose attempts run, and where its contexts come from.
pub(super) struct Target<'a> {
    pub(super) engine: &'a Engine,
    /// The run's execution slot, which the step may lend while it waits (none for a step
    /// run on its own, which holds none).
    pub(super) slot: Option<&'a Arc<RunSlot>>,
    pub(super) place: Place<'a>,
    /// The run whose key the step's own attempts carry (for a step run on its own: the
    /// caller's idempotency key).
    pub(super) run_id: &'a str,
}

/// A step of a flow, or a step run on its own.
pub(super) enum Place<'a> {
    Flow {
        flow: &'a ValidatedFlow,
        step: &'a ValidatedStep,
    },
    Alone {
        registered: &'a RegisteredStep,
        connection: Option<String>,
    },
}

impl Target<'_> {
    fn implementation(&self) -> &dyn Step {
        match &self.place {
            Place::Flow { step, .. } => step.implementation(),
            Place::Alone { registered, .. } => registered.step(),
        }
    }

    pub(super) fn type_name(&self) -> &'static str {
        match &self.place {
            Place::Flow { step, .. } => step.description().type_name,
            Place::Alone { registered, .. } => registered.description().type_name,
        }
    }

    fn step_id(&self) -> &str {
        match &self.place {
            Place::Flow { step, .. } => &step.id,
            Place::Alone { registered, .. } => registered.description().type_name,
        }
    }

    /// The step's context for an attempt carrying `run_id`'s key.
    fn context(
        &self,
        run_id: &str,
        http: Outbound,
        first_attempt_at_ms: Option<i64>,
    ) -> StepContext {
        match &self.place {
            Place::Flow { flow, step } => {
                (self.engine).step_context(flow, run_id, step, http, first_attempt_at_ms)
            }
            Place::Alone { connection, .. } => StepContext {
                flow_id: String::new(),
                run_id: run_id.to_owned(),
                step_id: self.step_id().to_owned(),
                connection: connection.clone(),
                connections: self.engine.inner.connections.clone(),
                http,
                shutdown: self.engine.inner.shutdown.subscribe(),
                storage: self.engine.inner.storage.clone(),
                first_attempt_at_ms,
            },
        }
    }

    /// What a failed attempt's record and the step's failure say.
    fn failure_message(&self, error: &StepError, settled: bool) -> String {
        let mut message = match &self.place {
            Place::Flow { flow, step } => {
                format!("flow `{}`, step `{}`: {error}", flow.id(), step.id)
            }
            Place::Alone { .. } => format!("step `{}`: {error}", self.type_name()),
        };
        if settled {
            message.push_str(" (a look-up found nothing it made: nothing was done)");
        }
        message
    }

    /// The step's attempts until it succeeds, fails for good, or the ledger stops it.
    pub(super) async fn run<L: Ledger>(
        &self,
        a: &mut Attempts,
        inputs: &Value,
        ledger: &mut L,
    ) -> Result<L::End, StorageError> {
        loop {
            let delay = match self.attempt(a, inputs, ledger).await? {
                Next::End(end) => return Ok(end),
                Next::RetryAfter(delay) => delay,
            };
            if let Some(end) = ledger.wait(delay).await? {
                return Ok(end);
            }
        }
    }

    /// One attempt: begun in the ledger, the request sent (or looked up first, or refused), a
    /// lost last answer settled, the attempt's end handed to the ledger.
    async fn attempt<L: Ledger>(
        &self,
        a: &mut Attempts,
        inputs: &Value,
        ledger: &mut L,
    ) -> Result<Next<L::End>, StorageError> {
        let started_at_ms = now_ms();
        if let Some(end) = ledger.begin(inputs, a.number + 1, started_at_ms).await? {
            return Ok(Next::End(end));
        }
        a.number += 1;
        let first_attempt_at_ms = *a.first_attempt_at_ms.get_or_insert(started_at_ms);
        let clock = Instant::now();
        let lender = self
            .slot
            .map(|slot| Arc::clone(slot) as Arc<dyn SlotLender>);
        let http = Outbound::live(self.engine.inner.http.clone()).lending(lender);
        let sending = self.send(a, inputs, &http, first_attempt_at_ms);
        let answer = match ledger.during(sending).await? {
            Ok(answer) => answer,
            Err(end) => return Ok(Next::End(end)),
        };
        let answer = (self.settle(a, answer, &http, inputs, first_attempt_at_ms, clock)).await;
        let sent = http.exchanges();
        a.exchanges.extend(sent.iter().cloned());
        let succeeded = answer.result.is_ok();
        (self.engine.inner.metrics).observe_attempt(self.type_name(), succeeded, clock.elapsed());
        let mut record = AttemptRecord {
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
            Ok(outputs) => {
                if answer.adopted {
                    record.outcome = AttemptOutcome::Adopted;
                    self.engine.inner.metrics.count_adopted(self.type_name());
                    tracing::info!(run_id = %self.run_id, step = %self.step_id(), "Found what an earlier attempt created; adopted it instead of sending again.");
                }
                Ok(Next::End(ledger.succeeded(outputs, record, a)))
            }
            Err(error) => {
                // A failed lookup leaves the earlier outcome as unknown as it was.
                a.uncertain = !answer.settled
                    && (answer.lookup_failed
                        || error.outcome_unknown()
                        || matches!(error, StepError::OutcomeUnknown(_)));
                self.failed(error, answer.settled, record, a, clock, ledger)
                    .await
            }
        }
    }

    /// A failed attempt: the step's failure when it is not tried again, else the attempt
    /// handed to the ledger and the wait before the next one.
    async fn failed<L: Ledger>(
        &self,
        error: StepError,
        settled: bool,
        mut record: AttemptRecord,
        a: &mut Attempts,
        clock: Instant,
        ledger: &mut L,
    ) -> Result<Next<L::End>, StorageError> {
        let message = self.failure_message(&error, settled);
        let delay = a.may_retry(&error).then(|| a.retry_delay(&error, clock));
        record.outcome = AttemptOutcome::Failed;
        record.error_code = Some(error.code().to_owned());
        record.error = Some(message.clone());
        record.retry_in_ms = delay.map(|d| d.as_millis() as u64);
        record.outcome_unknown = a.uncertain;
        let Some(delay) = delay else {
            return Ok(Next::End(ledger.failed(error, message, record, a)));
        };
        ledger.retrying(&record).await?;
        self.engine.inner.metrics.count_retry(self.type_name());
        tracing::info!(run_id = %self.run_id, step = %self.step_id(), attempt = a.number, delay_ms = delay.as_millis() as u64, "{message}; trying again");
        Ok(Next::RetryAfter(delay))
    }

    /// Sends, looks up first, or refuses, by the step's [`Resend`] and whether an earlier
    /// attempt may have taken effect.
    async fn send(
        &self,
        a: &Attempts,
        inputs: &Value,
        http: &Outbound,
        first_attempt_at_ms: i64,
    ) -> Answer {
        let context = self.context(self.run_id, http.clone(), Some(first_attempt_at_ms));
        let lookups = self.lookups(a, first_attempt_at_ms, a.number > 1);
        let mode = match a.resend {
            _ if !a.uncertain => AttemptMode::Send,
            Resend::Safe => AttemptMode::Send,
            Resend::LookUpFirst => AttemptMode::LookUpFirst(&lookups),
            Resend::Never => AttemptMode::Refuse,
        };
        self.send_once(&context, inputs, mode).await
    }

    /// The runs whose keys a look-up searches, nearest first: this run's own (`with_own`,
    /// unless an earlier run carried the same key), then those of the earlier runs.
    fn lookups(&self, a: &Attempts, first_attempt_at_ms: i64, with_own: bool) -> Vec<EarlierRun> {
        let own = (with_own && !a.ancestors.iter().any(|(id, _)| id == self.run_id))
            .then(|| (self.run_id.to_owned(), Some(first_attempt_at_ms)));
        own.into_iter().chain(a.ancestors.iter().cloned()).collect()
    }

    /// One attempt: send, look up first (adopting what is found), or refuse to send again.
    async fn send_once(
        &self,
        context: &StepContext,
        inputs: &Value,
        mode: AttemptMode<'_>,
    ) -> Answer {
        let send = || self.implementation().execute(context, inputs.clone());
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
            let context = self.context(run_id, http.clone(), *first_attempt_at_ms);
            match self.implementation().find_previous(&context, inputs).await {
                Ok(Some(outputs)) => return Ok(Some(outputs)),
                Ok(None) => {}
                Err(e) => failure = Some(e),
            }
        }
        failure.map_or(Ok(None), Err)
    }
}
