//! What an embedding program usually needs: `use haloflow::prelude::*;`.

pub use async_trait::async_trait;

pub use crate::config::{Config, Problems, Section};
pub use crate::connections::{Connections, ConnectionsBuilder, HttpConnection};
pub use crate::engine::integration::{Integration, Integrations};
pub use crate::engine::{Accepted, Engine, EngineBuilder, EngineError};
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
pub use crate::storage::{Link, LinkOrigin, RunDetail, RunStatus, SqliteStorage, Storage};
