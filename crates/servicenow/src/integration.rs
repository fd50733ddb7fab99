//! ServiceNow as an integration of the core: the `[servicenow]` section, a connection per Halo
//! customer and supplier (kinds [`CUSTOMERS`] and [`SUPPLIERS`]), the `servicenow.*` steps,
//! the sync-back webhook route and the integrators' schedule.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::routing::{get, post};

use super::config::{self, ServiceNowConfig};
use super::integrator::{ScanReport, log_scan};
use super::steps::{LOG_TO_SUPPLIER, SEND_TICKET, SyncNote};
use super::sync::SyncBack;
use super::{ServiceNowConnection, Side, api, webhook};
use haloflow_core::config::{Config, Problems, Section};
use haloflow_core::connections::{ConnectionKind, Connections, ConnectionsBuilder};
use haloflow_core::engine::integration::{BoxFuture, Integration};
use haloflow_core::engine::{Engine, Exposition};
use haloflow_core::flow::ValidatedFlow;
use haloflow_core::step::{Step, StepError};
use haloflow_core::storage::now_ms;
use haloflow_halo::{HALO, HaloConfig};

/// `[servicenow.customers."<client id>"]`: picked by a ticket's client, never named by a step.
pub const CUSTOMERS: ConnectionKind = ConnectionKind::new("servicenow.customers", "ServiceNow");

/// `[servicenow.suppliers."<supplier id>"]`: picked by a ticket's supplier.
pub const SUPPLIERS: ConnectionKind = ConnectionKind::new("servicenow.suppliers", "ServiceNow");

impl Side {
    /// The connection kind of this side's instances.
    pub fn kind(self) -> ConnectionKind {
        match self {
            Side::Customer => CUSTOMERS,
            Side::Supplier => SUPPLIERS,
        }
    }
}

/// The ServiceNow integration: register it with `EngineBuilder::integration(ServiceNow)`,
/// after [`haloflow_halo::Halo`], whose connections it syncs back into.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceNow;

impl Integration for ServiceNow {
    fn name(&self) -> &'static str {
        "servicenow"
    }

    fn config_sections(&self) -> &'static [&'static str] {
        &[ServiceNowConfig::TABLE]
    }

    fn check_config(&self, config: &Config, problems: &mut Problems) {
        config::check(config, problems);
    }

    fn build_connections(&self, build: &mut ConnectionsBuilder<'_>) {
        // A ServiceNow step picks its instance by the ticket's client: all or none are needed.
        if !build.needed().steps_of("servicenow.") {
            return;
        }
        let Ok(servicenow) = build.config().section::<ServiceNowConfig>() else {
            return; // reported by check_config
        };
        let halo = build.config().section::<HaloConfig>().unwrap_or_default();
        for side in [Side::Customer, Side::Supplier] {
            let connections = match side {
                Side::Customer => &servicenow.customers,
                Side::Supplier => &servicenow.suppliers,
            };
            for (id, settings) in connections {
                build_one(build, &servicenow, side, id, settings);
                // Sync back writes to this Halo connection, whether or not a flow uses it
                // (the Halo integration builds the ones flows use).
                let name = &settings.halo_connection;
                if !build.needed().connection(HALO, name) {
                    haloflow_halo::build_connection(build, &halo, name);
                }
            }
        }
    }

    fn steps(&self) -> Vec<Arc<dyn Step>> {
        vec![
            Arc::new(SEND_TICKET),
            Arc::new(LOG_TO_SUPPLIER),
            Arc::new(SyncNote),
            Arc::new(super::sync_step::SyncRecord),
        ]
    }

    fn flows(&self, connections: &Connections) -> Vec<ValidatedFlow> {
        super::sync_step::flows(connections)
    }

    // One `.route(` per line: tests/openapi.rs reads the routes from this file.
    #[rustfmt::skip]
    fn routes(&self) -> Router<Engine> {
        Router::new()
            .route("/servicenow/{side}/{id}/webhook", post(webhook::receive))
    }

    // One `.route(` per line: tests/openapi.rs reads the routes from this file.
    #[rustfmt::skip]
    fn api_routes(&self) -> Router<Engine> {
        Router::new()
            .route("/api/integrator", get(api::integrator))
            .route("/api/servicenow/links", get(api::links))
    }

    fn expose_metrics<'a>(
        &'a self,
        engine: &'a Engine,
        exposition: &'a mut Exposition,
    ) -> BoxFuture<'a, ()> {
        Box::pin(api::expose_scans(engine, exposition))
    }

    fn start(&self, engine: &Engine) {
        for sn in engine.connections().servicenow_all() {
            if !sn.config.integrator.enabled {
                continue;
            }
            let Ok(every) = sn.config.integrator.interval() else {
                continue;
            };
            let sn = sn.clone();
            engine.spawn_every(every, move |engine| {
                let sn = sn.clone();
                async move {
                    match engine.run_integrator(&sn, every).await {
                        Ok(Some(report)) => log_scan(&report),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(connection = %sn.key(), error = %e, "Integrator scan failed; the next one retries.")
                        }
                    }
                }
            });
        }
    }
}

/// Builds one customer's or supplier's connection; its webhook's secrets must be set too, or
/// every webhook would be refused.
fn build_one(
    build: &mut ConnectionsBuilder<'_>,
    servicenow: &ServiceNowConfig,
    side: Side,
    id: &str,
    settings: &config::ServiceNowConnectionConfig,
) {
    let table = side.kind().config_table();
    if let Some(webhook) = &settings.webhook {
        for name in [&webhook.secret_name, &webhook.hmac_secret_name]
            .into_iter()
            .flatten()
        {
            build.secret(table, &format!("\"{id}\".webhook"), name);
        }
    }
    let secret_name = settings.secret_name().unwrap_or_default();
    if let Some(secret) = build.secret(table, &format!("\"{id}\""), secret_name) {
        let connection =
            ServiceNowConnection::new(side, id.to_owned(), settings.clone(), secret, servicenow);
        build.insert(side.kind(), id, Arc::new(connection));
    }
}

/// The ServiceNow connections of a connection registry.
pub trait ServiceNowConnections {
    /// The ServiceNow instance of a Halo customer (client id) or supplier (supplier id).
    fn servicenow(&self, side: Side, id: &str) -> Option<Arc<ServiceNowConnection>>;
    /// Every ServiceNow connection, customers first.
    fn servicenow_all(&self) -> impl Iterator<Item = &Arc<ServiceNowConnection>>;
}

impl ServiceNowConnections for Connections {
    fn servicenow(&self, side: Side, id: &str) -> Option<Arc<ServiceNowConnection>> {
        self.find(side.kind(), id)
    }

    fn servicenow_all(&self) -> impl Iterator<Item = &Arc<ServiceNowConnection>> {
        self.all(CUSTOMERS).chain(self.all(SUPPLIERS))
    }
}

/// Sync back and the integrator on an engine's storage, connections and HTTP client.
#[async_trait]
pub trait ServiceNowEngine {
    /// Syncing back from ServiceNow, with this engine's storage, connections and HTTP client.
    fn sync_back(&self) -> SyncBack;

    /// One integrator scan of `sn`, unless another node holds its lease (`None`). A first
    /// scan looks `every` back, and records the integrator's start.
    async fn run_integrator(
        &self,
        sn: &ServiceNowConnection,
        every: Duration,
    ) -> Result<Option<ScanReport>, StepError>;
}

#[async_trait]
impl ServiceNowEngine for Engine {
    fn sync_back(&self) -> SyncBack {
        SyncBack {
            storage: self.storage().clone(),
            connections: self.connections().clone(),
            http: super::sync::SyncHttp::Client(self.http_client().clone()),
        }
    }

    async fn run_integrator(
        &self,
        sn: &ServiceNowConnection,
        every: Duration,
    ) -> Result<Option<ScanReport>, StepError> {
        let name = format!("integrator:{}", sn.key());
        let now = now_ms();
        let until = now + every.as_millis() as i64;
        let held = (self
            .storage()
            .try_lease(&name, self.node_id(), until, now)
            .await)
            .map_err(|e| StepError::storage("the integrator lease", e))?;
        if !held {
            return Ok(None);
        }
        // The integrator starts now: records created before it never become tickets unless
        // the connection's filter and create_existing say so (the first scan still looks
        // `every` back for changes to linked records).
        (self.storage().first_scan_start(&sn.key(), now).await)
            .map_err(|e| StepError::storage("the integrator start", e))?;
        let report = self
            .sync_back()
            .scan(sn, now - every.as_millis() as i64)
            .await?;
        Ok(Some(report))
    }
}
