//! The built-in steps. They use the same `Step` trait and registry an
//! embedder's steps do.

mod core;
mod halo;
mod http;
mod servicenow;

use std::sync::Arc;

use crate::step::{Step, StepRegistry};

pub use self::core::{Condition, Switch};
pub use halo::{AddAction, CreateTicket, GetTicket, UpdateTicket};
pub use http::HttpRequest;
pub use servicenow::{LOG_TO_SUPPLIER, SEND_TICKET, SendToServiceNow, SyncNote};

/// Every built-in step, for [`StepRegistry::with_builtins`].
pub fn builtins() -> Vec<Arc<dyn Step>> {
    vec![
        Arc::new(CreateTicket),
        Arc::new(UpdateTicket),
        Arc::new(AddAction),
        Arc::new(GetTicket),
        Arc::new(Switch),
        Arc::new(Condition),
        Arc::new(HttpRequest),
        Arc::new(SEND_TICKET),
        Arc::new(LOG_TO_SUPPLIER),
        Arc::new(SyncNote),
        Arc::new(crate::servicenow::sync_step::SyncRecord),
    ]
}

/// Registers every built-in step in `registry`.
pub fn register_builtins(registry: &mut StepRegistry) {
    for step in builtins() {
        registry
            .register_arc(step)
            .expect("built-in steps have unique names and valid schemas");
    }
}

// Defined here, above both the step contract and its implementations, so that `step` does not
// know the built-ins.
impl StepRegistry {
    /// A registry with every built-in step.
    pub fn with_builtins() -> Self {
        let mut registry = StepRegistry::new();
        register_builtins(&mut registry);
        registry
    }
}
