//! Halo as an integration of the core: the `[halo.<name>]` section, its connections (kind
//! [`HALO`]) and the `halo.*` steps.

use std::sync::Arc;

use super::HaloConnection;
use super::config::{self, HaloConfig};
use super::steps::{AddAction, CreateTicket, GetTicket, UpdateTicket};
use crate::config::{Config, Problems, Section};
use crate::connections::{ConnectionKind, Connections, ConnectionsBuilder};
use crate::engine::integration::Integration;
use crate::step::{Step, StepError};

/// `[halo.<name>]`; steps without `"connection"` use `halo`.
pub const HALO: ConnectionKind = ConnectionKind::new("halo", "Halo").with_default("halo");

/// The Halo integration: register it with `EngineBuilder::integration(Halo)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Halo;

impl Integration for Halo {
    fn name(&self) -> &'static str {
        "halo"
    }

    fn config_sections(&self) -> &'static [&'static str] {
        &[HaloConfig::TABLE]
    }

    fn check_config(&self, config: &Config, problems: &mut Problems) {
        config::check(config, problems);
    }

    fn build_connections(&self, build: &mut ConnectionsBuilder<'_>) {
        let Ok(halo) = build.config().section::<HaloConfig>() else {
            return; // reported by check_config
        };
        for name in halo.keys() {
            if build.needed().connection(HALO, name) {
                build_connection(build, &halo, name);
            }
        }
    }

    fn steps(&self) -> Vec<Arc<dyn Step>> {
        vec![
            Arc::new(CreateTicket),
            Arc::new(UpdateTicket),
            Arc::new(AddAction),
            Arc::new(GetTicket),
        ]
    }
}

/// Builds Halo connection `name` of `halo` unless it is built already; another integration
/// that works on Halo tickets (ServiceNow's sync back) builds the ones it uses this way.
pub fn build_connection(build: &mut ConnectionsBuilder<'_>, halo: &HaloConfig, name: &str) {
    let Some(settings) = halo.get(name) else {
        return;
    };
    if build.contains(HALO, name) {
        return;
    }
    if let Some(secret) = build.secret("halo", name, &settings.client_secret_name) {
        let connection = HaloConnection::new(name.to_owned(), settings.clone(), secret);
        build.insert(HALO, name, Arc::new(connection));
    }
}

/// The Halo connections of a connection registry.
pub trait HaloConnections {
    /// Halo connection `name`.
    fn halo(&self, name: &str) -> Result<Arc<HaloConnection>, StepError>;
    /// Every Halo connection, by name.
    fn halo_all(&self) -> impl Iterator<Item = &Arc<HaloConnection>>;
}

impl HaloConnections for Connections {
    fn halo(&self, name: &str) -> Result<Arc<HaloConnection>, StepError> {
        Ok(self.get(HALO, name)?)
    }

    fn halo_all(&self) -> impl Iterator<Item = &Arc<HaloConnection>> {
        self.all(HALO)
    }
}
