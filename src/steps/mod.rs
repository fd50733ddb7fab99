//! The built-in steps. They use the same `Step` trait and registry an
//! embedder's steps do.

mod core;
mod halo;
mod http;
mod servicenow;

use std::sync::Arc;

use crate::step::Step;

pub use self::core::{Condition, Switch};
pub use halo::{AddAction, CreateTicket, GetTicket, UpdateTicket};
pub use http::HttpRequest;
pub use servicenow::{LOG_TO_SUPPLIER, SEND_TICKET, SendToServiceNow, SyncNote};

/// Every built-in step, for [`StepRegistry::with_builtins`](crate::step::StepRegistry::with_builtins).
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
    ]
}
