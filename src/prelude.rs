//! What an embedding program usually needs: `use haloflow::prelude::*;`. Each item is
//! documented in its module; this lists them.

pub use async_trait::async_trait;

#[doc(no_inline)]
pub use crate::config::{Config, Problems, Section};
#[doc(no_inline)]
pub use crate::connections::{ConnectionKind, Connections, ConnectionsBuilder, HttpConnection};
#[doc(no_inline)]
pub use crate::engine::{Accepted, Completion, Engine, EngineBuilder, EngineError};
#[doc(no_inline)]
pub use crate::engine::{Integration, Integrations};
#[doc(no_inline)]
pub use crate::flow::{FlowValidator, Problem, ValidatedFlow};
#[cfg(feature = "halo")]
#[doc(no_inline)]
pub use crate::halo::{HALO, Halo, HaloConnection, HaloConnections, HaloIncidents};
#[doc(no_inline)]
pub use crate::outbound::{Field, OutboundRequest};
#[doc(no_inline)]
pub use crate::secrets::SecretStore;
#[doc(no_inline)]
pub use crate::server::router;
#[cfg(feature = "servicenow")]
#[doc(no_inline)]
pub use crate::servicenow::{ServiceNow, ServiceNowConnection, ServiceNowConnections, Side};
#[doc(no_inline)]
pub use crate::step::{
    OutputSpec, PathRule, Resend, Step, StepContext, StepDescription, StepError, StepRegistry,
    is_placeholder,
};
#[cfg(feature = "sqlite")]
#[doc(no_inline)]
pub use crate::storage::SqliteStorage;
#[doc(no_inline)]
pub use crate::storage::{Link, LinkOrigin, RunDetail, RunStatus, Storage, StorageSettings};
#[doc(no_inline)]
pub use crate::trigger::{TriggerDescription, TriggerEvent, TriggerQuery, TriggerType, Webhook};
// The storage traits' methods, callable on a backend's own type too (e.g. `SqliteStorage`).
#[doc(no_inline)]
pub use crate::storage::{
    Backend as _, FloodStore as _, LeaseStore as _, LinkStore as _, RunStore as _, SyncStore as _,
};
