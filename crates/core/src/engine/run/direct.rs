//! A step run on its own ([`Engine::run_step`]): the attempts of a served run's step, with
//! nothing recorded.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use super::attempts::{Answer, Attempts, Ledger, Place, Target};
use crate::config::RetrySettings;
use crate::engine::Engine;
use crate::step::{Resend, StepError};
use crate::storage::{AttemptRecord, StorageError};

impl Engine {
    /// Runs one step of the engine's registry on its own, outside any flow, with inputs already
    /// rendered. `connection` names a connection of the step's kind (the kind's default when
    /// `None`).
    ///
    /// The step's attempts are a served run's: retried by the retry policy of its type
    /// (`[retry.by_type."<type>"]`, then `[retry]`, then five attempts from 1 s), waiting at
    /// least what a `Retry-After` asks; after an attempt whose answer was lost (a timeout, a
    /// reset connection, a 500/502/504) the step's [`Resend`] rule decides: `Safe` sends
    /// again, `LookUpFirst` calls [`Step::find_previous`](crate::step::Step::find_previous)
    /// and adopts what an earlier attempt made before sending anything again, `Never` fails
    /// with `outcome_unknown` instead of risking a duplicate.
    ///
    /// `idempotency_key` stands for the operation (an order number, say): the step's
    /// [`StepContext::idempotency_key`](crate::step::StepContext::idempotency_key) is
    /// `haloflow:<idempotency_key>:<step type>` on every attempt and on every call with the
    /// same key. A `LookUpFirst` step therefore looks for what an earlier call with this key
    /// made before it sends (one look-up more per call) and returns that instead of creating
    /// it again: after an error whose outcome is unknown, calling again with the same key is
    /// safe. A `Never` step has nothing to look up: calling again sends again.
    ///
    /// Nothing is recorded: no run, no history, no replay (the attempts are logged and
    /// counted in the metrics). For those, put the step in a flow and use
    /// [`Engine::run_to_completion`]. During a shutdown a step waiting to retry stops waiting
    /// and fails.
    pub async fn run_step(
        &self,
        step_type: &str,
        connection: Option<&str>,
        inputs: Value,
        idempotency_key: &str,
    ) -> Result<Value, StepError> {
        let registry = &self.inner.source.registry;
        let registered = registry.get(step_type).ok_or_else(|| {
            StepError::Failed(format!("no step type `{step_type}` is registered"))
        })?;
        let errors: Vec<String> = (registered.schema.iter_errors(&inputs))
            .map(|e| format!("{}: {}", e.instance_path(), e.masked()))
            .collect();
        if !errors.is_empty() {
            return Err(StepError::Input {
                pointer: String::new(),
                message: errors.join("; "),
            });
        }
        let description = registered.description();
        let connection = description.connection_kind.and_then(|kind| {
            (connection.map(str::to_owned)).or(kind.default_name().map(str::to_owned))
        });
        let resend = registered.step().resend(&inputs);
        // An earlier call with this key may have made what this one would: look first.
        let ancestors = match resend {
            Resend::LookUpFirst => vec![(idempotency_key.to_owned(), None)],
            Resend::Safe | Resend::Never => Vec::new(),
        };
        let mut attempts = Attempts {
            policy: self.retry_policy_of(description.type_name, RetrySettings::default()),
            resend,
            number: 0,
            uncertain: !ancestors.is_empty(),
            ancestors,
            exchanges: Vec::new(),
            first_attempt_at_ms: None,
        };
        let target = Target {
            slot: None,
            engine: self,
            place: Place::Alone {
                registered,
                connection,
            },
            run_id: idempotency_key,
        };
        let mut ledger = Unrecorded {
            engine: self,
            last_error: None,
        };
        (target.run(&mut attempts, &inputs, &mut ledger).await)
            .unwrap_or_else(|e| Err(StepError::storage("running the step", e)))
    }
}

/// A step run on its own keeps nothing but the last error, for a shutdown to report.
struct Unrecorded<'a> {
    engine: &'a Engine,
    last_error: Option<String>,
}

impl Ledger for Unrecorded<'_> {
    type End = Result<Value, StepError>;

    async fn begin(
        &mut self,
        _inputs: &Value,
        _number: u32,
        _started_at_ms: i64,
    ) -> Result<Option<Self::End>, StorageError> {
        Ok(None)
    }

    async fn during<F: Future<Output = Answer>>(
        &mut self,
        work: F,
    ) -> Result<Result<Answer, Self::End>, StorageError> {
        Ok(Ok(work.await))
    }

    fn succeeded(&mut self, outputs: Value, _: AttemptRecord, _: &mut Attempts) -> Self::End {
        Ok(outputs)
    }

    fn failed(
        &mut self,
        error: StepError,
        _message: String,
        _record: AttemptRecord,
        _a: &mut Attempts,
    ) -> Self::End {
        Err(error)
    }

    async fn retrying(&mut self, record: &AttemptRecord) -> Result<(), StorageError> {
        self.last_error.clone_from(&record.error);
        Ok(())
    }

    /// Waits before the next attempt; a shutdown ends the wait with the last error.
    async fn wait(&mut self, delay: Duration) -> Result<Option<Self::End>, StorageError> {
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(None),
            () = self.engine.shutting_down() => {
                let last = self.last_error.take().unwrap_or_default();
                Ok(Some(Err(StepError::Failed(format!(
                    "{last}; not tried again: the engine is shutting down"
                )))))
            }
        }
    }
}
