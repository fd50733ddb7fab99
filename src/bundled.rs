//! The integrations this crate ships, for the `haloflow` binary and for an embedder who wants
//! both. An embedder picks integrations one by one instead with
//! [`crate::engine::EngineBuilder::integration`] (e.g. Halo alone, or its own).

use crate::engine::integration::Integrations;
use crate::halo::Halo;
use crate::servicenow::ServiceNow;

/// Halo, then ServiceNow (which syncs back into Halo connections).
pub fn integrations() -> Integrations {
    Integrations::new().with(Halo).with(ServiceNow)
}
