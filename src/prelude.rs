//! What an embedding program usually needs: `use haloflow::prelude::*;`.

pub use async_trait::async_trait;

pub use crate::config::{Config, Problems, Section};
pub use crate::connections::{Connections, ConnectionsBuilder, HttpConnection};
pub use crate::engine::integration::{Integration, Integrations};
pub use crate::engine::{Accepted, Completion, Engine, EngineBuilder, EngineError};
pub use crate::flow::{FlowValidator, Problem, ValidatedFlow};
#[cfg(feature = "halo")]
pub use crate::halo::{HALO, Halo, HaloConnection, HaloConnections};
pub use crate::outbound::{Field, OutboundRequest};
pub use crate::secrets::SecretStore;
pub use crate::server::router;
#[cfg(feature = "servicenow")]
pub use crate::servicenow::{ServiceNow, ServiceNowConnection, ServiceNowConnections, Side};
pub use crate::step::{
    ConnectionKind, OutputSpec, PathRule, Resend, Step, StepContext, StepError, StepRegistry,
    is_placeholder,
};
#[cfg(feature = "sqlite")]
pub use crate::storage::SqliteStorage;
pub use crate::storage::{Link, LinkOrigin, RunDetail, RunStatus, Storage, StorageSettings};
pub use crate::trigger::TriggerQuery;
// The storage traits' methods, callable on a backend's own type too (e.g. `SqliteStorage`).
pub use crate::storage::{
    Backend as _, FloodStore as _, LeaseStore as _, LinkStore as _, RunStore as _, SyncStore as _,
};
