//! Flood control kept in the database, for several nodes sharing it: every node reads and
//! updates the same per-key state, locked per key while one event is decided (see
//! [`FloodStore::flood_admit`](crate::storage::FloodStore::flood_admit)), so correlated
//! requests spread over nodes count together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;

use super::{Admission, FloodControl};
use crate::flow::FloodControlDef;
use crate::storage::{FloodStore, Storage, StorageError, now_ms};

#[derive(Debug)]
pub(crate) struct DatabaseFloodControl {
    storage: Arc<dyn FloodStore>,
    settings: RwLock<HashMap<String, FloodControlDef>>,
    /// Keys per flow as of the last sweep (for `/metrics`).
    keys: Arc<Mutex<Vec<(String, usize)>>>,
}

impl DatabaseFloodControl {
    pub fn new<'a>(
        storage: Arc<dyn FloodStore>,
        flows: impl IntoIterator<Item = (&'a str, &'a FloodControlDef)>,
    ) -> Self {
        DatabaseFloodControl {
            storage,
            settings: RwLock::new(
                flows
                    .into_iter()
                    .map(|(id, s)| (id.to_owned(), s.clone()))
                    .collect(),
            ),
            keys: Arc::default(),
        }
    }
}

#[async_trait]
impl FloodControl for DatabaseFloodControl {
    async fn admit(&self, flow_id: &str, key: &str, request_id: &str) -> Admission {
        let settings = self
            .settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(flow_id)
            .cloned();
        let Some(settings) = settings.filter(|s| s.enabled) else {
            return Admission::Run;
        };
        let window_ms = (settings.window_secs * 1000) as i64;
        match self
            .storage
            .flood_admit(
                flow_id,
                key,
                request_id,
                now_ms(),
                window_ms,
                settings.max_requests,
            )
            .await
        {
            Ok(admission) => admission,
            Err(e) => {
                // Nothing accepted may be lost: without a verdict the event runs.
                tracing::warn!(%flow_id, error = %e, "Flood control could not decide; the event runs.");
                Admission::Run
            }
        }
    }

    /// The state lives in the database; nothing to rebuild.
    async fn restore(&self, _storage: &dyn Storage) -> Result<usize, StorageError> {
        Ok(0)
    }

    fn configure(&self, flows: &[(&str, &FloodControlDef)]) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = flows
            .iter()
            .map(|(id, s)| ((*id).to_owned(), (*s).clone()))
            .collect();
    }

    /// Deletes keys idle for longer than the longest window, in the background.
    fn sweep(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let longest = self
            .settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|s| s.window_secs)
            .max()
            .unwrap_or(60);
        let storage = self.storage.clone();
        let cache = self.keys.clone();
        let idle_before = now_ms() - (longest as i64) * 1000;
        runtime.spawn(async move {
            if let Err(e) = storage.flood_sweep(idle_before).await {
                tracing::warn!(error = %e, "Flood control could not forget idle keys.");
            }
            if let Ok(counts) = storage.flood_keys().await {
                *cache.lock().unwrap_or_else(|p| p.into_inner()) = counts;
            }
        });
    }

    fn tracked_keys(&self) -> Vec<(String, usize)> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
