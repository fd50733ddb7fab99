//! Halo as an integration of the core: the `[halo.<name>]` section, its connections (kind
//! [`HALO`]), the `halo.*` steps and the `halo.incidents` trigger type.

use std::sync::Arc;

use super::HaloConnection;
use super::config::{self, HaloConfig};
use super::steps::{AddAction, CreateTicket, GetTicket, UpdateTicket};
use super::trigger::HaloIncidents;
use haloflow_core::config::{Config, Problems, Section};
use haloflow_core::connections::{ConnectionKind, Connections, ConnectionsBuilder};
use haloflow_core::engine::integration::Integration;
use haloflow_core::flow::{TriggerAuth, ValidatedFlow};
use haloflow_core::step::{Step, StepError};
use haloflow_core::trigger::TriggerType;
use serde_json::Value;

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

    fn trigger_types(&self) -> Vec<Arc<dyn TriggerType>> {
        vec![Arc::new(HaloIncidents)]
    }

    /// The two webhooks of the seed (tickets with an agent and unassigned ones), and what to
    /// choose as the webhook's Authentication in Halo.
    fn trigger_setup(&self, flow: &ValidatedFlow, url: &str) -> Option<Value> {
        if !is_halo_trigger(flow) {
            return None;
        }
        let setting = match &flow.document.trigger.auth {
            TriggerAuth::UrlKey { .. } => "None (the key is in the URL)",
            TriggerAuth::Basic { .. } => "Basic, with the user name and the password below",
            TriggerAuth::Header { .. } => {
                "Halo's webhooks cannot send a key header: change the trigger's auth to url_key or basic"
            }
            TriggerAuth::None => "None",
        };
        Some(serde_json::json!({
            "auth": {"halo_setting": setting},
            "webhooks": crate::setup::describe(flow, url),
        }))
    }

    /// The seed's new-ticket webhook (`examples/halo-new-ticket.json`) with a fresh delivery
    /// id, so each test is a new delivery.
    fn sample_payload(&self, flow: &ValidatedFlow) -> Option<Value> {
        if !is_halo_trigger(flow) {
            return None;
        }
        let mut payload: Value = serde_json::from_str(NEW_TICKET_SAMPLE).ok()?;
        payload["id"] = Value::String(haloflow_core::engine::new_id());
        Some(payload)
    }
}

const NEW_TICKET_SAMPLE: &str = include_str!("../../../examples/halo-new-ticket.json");

fn is_halo_trigger(flow: &ValidatedFlow) -> bool {
    flow.document.trigger.type_name == HaloIncidents::TYPE
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
