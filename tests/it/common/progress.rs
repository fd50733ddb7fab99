//! Writing a run's progress one part at a time, as the storage tests state it.

use async_trait::async_trait;
use haloflow::storage::{
    Progress, RunFinish, RunStatus, RunStore, StepOutcome, StepStart, StorageError,
};
use serde_json::Value;

/// One part of a run's progress at a time: each method is `RunStore::record_progress` with only
/// that part (the engine writes a step's end with the next step's start together with the next
/// step's start). Every `RunStore` has them.
#[async_trait]
pub trait RunStoreExt: RunStore {
    /// A run starts: only that part.
    async fn start_run(&self, run_id: &str, at_ms: i64) -> Result<(), StorageError> {
        let progress = Progress {
            run_started_at_ms: Some(at_ms),
            ..Progress::default()
        };
        self.record_progress(run_id, &progress).await
    }
    /// A run ends: only that part.
    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        failure: Option<(&str, &str)>,
        at_ms: i64,
    ) -> Result<(), StorageError> {
        let finish = RunFinish {
            status,
            failure,
            at_ms,
        };
        let progress = Progress {
            run_finished: Some(finish),
            ..Progress::default()
        };
        self.record_progress(run_id, &progress).await
    }
    /// Attempt `attempt` of a step is about to send (its intent, before any request leaves;
    /// earlier attempts stay in the attempt log): only that part.
    #[allow(clippy::too_many_arguments)]
    async fn start_step(
        &self,
        run_id: &str,
        step_id: &str,
        position: usize,
        step_type: &str,
        inputs: &Value,
        attempt: u32,
        at_ms: i64,
    ) -> Result<(), StorageError> {
        let start = StepStart {
            step_id,
            position,
            step_type,
            inputs,
            attempt,
            at_ms,
        };
        let progress = Progress {
            step_started: Some(start),
            ..Progress::default()
        };
        self.record_progress(run_id, &progress).await
    }
    /// A step ends: only that part.
    async fn finish_step(
        &self,
        run_id: &str,
        step_id: &str,
        outcome: &StepOutcome,
    ) -> Result<(), StorageError> {
        let progress = Progress {
            step_finished: Some((step_id, outcome)),
            ..Progress::default()
        };
        self.record_progress(run_id, &progress).await
    }
}

impl<T: RunStore + ?Sized> RunStoreExt for T {}
