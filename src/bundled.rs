//! The integrations this crate ships, for the `haloflow` binary and for an embedder who wants
//! every one its features turned on. An embedder picks integrations one by one instead with
//! [`crate::engine::EngineBuilder::integration`] (e.g. Halo alone, or its own).

use crate::engine::Integrations;

/// Halo, then ServiceNow (which syncs back into Halo connections): those of the two whose
/// features (`halo`, `servicenow`) are on.
pub fn integrations() -> Integrations {
    let integrations = Integrations::new();
    #[cfg(feature = "halo")]
    let integrations = integrations.with(crate::halo::Halo);
    #[cfg(feature = "servicenow")]
    let integrations = integrations.with(crate::servicenow::ServiceNow);
    integrations
}
