//! The engine: validated flows, connections and storage, accepting trigger requests durably and
//! running flows off the request path.

mod builder;
mod run;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

pub use builder::{EngineBuilder, EngineError};
pub use run::{DryRunReport, DryRunStep};

use crate::config::ServerConfig;
use crate::connections::Connections;
use crate::flow::ValidatedFlow;
use crate::storage::{
    NewRequest, NewRun, RunDetail, RunStatus, Storage, StorageError, format_ms, now_ms,
};
use crate::trigger::{self, PayloadProblem, TriggerAuthenticator, TriggerQuery};

/// A flow ready to serve: validated, with its trigger secret resolved.
#[derive(Debug)]
pub struct LoadedFlow {
    pub flow: ValidatedFlow,
    pub auth: TriggerAuthenticator,
}

/// The runtime. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    flows: HashMap<String, Arc<LoadedFlow>>,
    connections: Arc<Connections>,
    storage: Arc<dyn Storage>,
    http: reqwest::Client,
    server: ServerConfig,
    finished: broadcast::Sender<(String, RunStatus)>,
}

/// The answer to an accepted trigger request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accepted {
    pub request_id: String,
    pub flow_id: String,
    pub run_ids: Vec<String>,
}

/// A trigger request the engine could not accept.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("no flow with id `{0}` is loaded")]
    UnknownFlow(String),
    #[error("{}", .0.message())]
    Payload(PayloadProblem),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Engine {
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    pub fn flow(&self, flow_id: &str) -> Option<&Arc<LoadedFlow>> {
        self.inner.flows.get(flow_id)
    }

    /// Every loaded flow, sorted by id.
    pub fn flows(&self) -> Vec<&Arc<LoadedFlow>> {
        let mut flows: Vec<_> = self.inner.flows.values().collect();
        flows.sort_by(|a, b| a.flow.id().cmp(b.flow.id()));
        flows
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    pub fn server_config(&self) -> &ServerConfig {
        &self.inner.server
    }

    /// Stores an authenticated request with one run per event, durably, then starts the runs
    /// in the background. `body_text` is kept as received.
    pub async fn accept(
        &self,
        flow: &Arc<LoadedFlow>,
        query: &TriggerQuery,
        body_text: &str,
        body: Value,
    ) -> Result<Accepted, AcceptError> {
        let request_id = new_id();
        let received_at_ms = now_ms();
        let received_at = format_ms(received_at_ms);
        let events = trigger::events(body).map_err(AcceptError::Payload)?;
        let runs: Vec<NewRun> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| NewRun {
                id: new_id(),
                flow_id: flow.flow.id().to_owned(),
                event_index: i,
                trigger: trigger::outputs(&request_id, &received_at, query, event),
                created_at_ms: received_at_ms,
            })
            .collect();
        let request = NewRequest {
            id: request_id.clone(),
            flow_id: flow.flow.id().to_owned(),
            received_at_ms,
            http_status: 202,
            error: None,
            query: Some(query.to_json()),
            body: Some(body_text.to_owned()),
            event_count: runs.len(),
        };
        self.inner.storage.accept_request(&request, &runs).await?;
        let run_ids = runs.iter().map(|r| r.id.clone()).collect();
        for run in runs {
            self.spawn_run(flow.clone(), run.id, run.trigger);
        }
        Ok(Accepted {
            request_id,
            flow_id: flow.flow.id().to_owned(),
            run_ids,
        })
    }

    /// Records a request answered with a 4xx.
    pub async fn record_rejected(&self, request: NewRequest) {
        if let Err(e) = self.inner.storage.record_rejected(&request).await {
            tracing::error!(error = %e, flow_id = %request.flow_id, "Could not record a rejected request.");
        }
    }

    fn spawn_run(&self, flow: Arc<LoadedFlow>, run_id: String, trigger: Value) {
        let engine = self.clone();
        tokio::spawn(async move {
            engine.execute_run(&flow, &run_id, trigger).await;
        });
    }

    /// Starts the runs a previous process accepted but never started.
    pub async fn start_queued_runs(&self) -> Result<usize, StorageError> {
        let queued = self.inner.storage.queued_runs().await?;
        let mut started = 0;
        for (run_id, flow_id) in queued {
            let Some(flow) = self.flow(&flow_id).cloned() else {
                tracing::warn!(%run_id, %flow_id, "Queued run's flow is not loaded; it stays queued.");
                continue;
            };
            let Some(detail) = self.inner.storage.get_run(&run_id).await? else {
                continue;
            };
            self.spawn_run(flow, run_id, detail.trigger);
            started += 1;
        }
        Ok(started)
    }

    /// Waits until the run has finished and returns it.
    pub async fn wait_for_run(&self, run_id: &str) -> Result<RunDetail, StorageError> {
        let mut finished = self.inner.finished.subscribe();
        loop {
            if let Some(detail) = self.inner.storage.get_run(run_id).await?
                && detail.summary.status.is_finished()
            {
                return Ok(detail);
            }
            // Either our run finished (checked again above) or the channel lagged: look again.
            let _ = finished.recv().await;
        }
    }
}

/// Time-ordered unique ids (UUIDv7), so listings sort by creation.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
