//! What an embedding program usually needs: `use haloflow::prelude::*;`.

pub use async_trait::async_trait;

pub use crate::config::Config;
pub use crate::engine::{Accepted, Engine, EngineBuilder, EngineError};
pub use crate::flow::{FlowValidator, ValidatedFlow};
pub use crate::outbound::{Field, OutboundRequest};
pub use crate::secrets::SecretStore;
pub use crate::server::router;
pub use crate::step::{
    ConnectionKind, OutputSpec, PathRule, Step, StepContext, StepError, StepRegistry,
};
pub use crate::storage::{RunDetail, RunStatus, SqliteStorage, Storage};
