//! The core's built-in steps (`core.switch`, `core.condition`, `http.request`). They use the
//! same `Step` trait and registry an embedder's steps do; integrations add theirs
//! (`Integration::steps`).

mod core;
mod http;

use std::sync::Arc;

use crate::step::{Step, StepRegistry};
use crate::trigger::Webhook;

pub use self::core::{Condition, Switch};
pub(crate) use http::HttpRequest;

/// Every built-in step of the core, for [`StepRegistry::with_builtins`].
pub(crate) fn builtins() -> Vec<Arc<dyn Step>> {
    vec![Arc::new(Switch), Arc::new(Condition), Arc::new(HttpRequest)]
}

/// Registers every built-in step of the core in `registry`, and its `webhook` trigger type.
pub(crate) fn register_builtins(registry: &mut StepRegistry) {
    for step in builtins() {
        registry
            .register_arc(step)
            .expect("built-in steps have unique names and valid schemas");
    }
    registry
        .register_trigger(Arc::new(Webhook))
        .expect("the core's trigger type is registered once");
}

// Defined here, above both the step contract and its implementations, so that `step` does not
// know the built-ins.
impl StepRegistry {
    /// A registry with the core's built-in steps and its `webhook` trigger type;
    /// `Integrations::registry` adds the integrations' steps and trigger types.
    pub fn with_builtins() -> Self {
        let mut registry = StepRegistry::new();
        register_builtins(&mut registry);
        registry
    }
}
