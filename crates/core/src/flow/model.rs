//! The typed flow document, deserialized only after the JSON Schema accepted it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::trigger::TriggerAuth;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowDocument {
    #[serde(rename = "$schema", default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub trigger: TriggerDef,
    #[serde(default)]
    pub constants: Map<String, Value>,
    pub steps: Vec<StepDef>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerDef {
    /// The registered trigger type, e.g. `webhook` (checked at validation).
    #[serde(rename = "type")]
    pub type_name: String,
    pub auth: TriggerAuth,
    #[serde(default)]
    pub flood_control: FloodControlDef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitDef>,
}

/// Flood control (the xMatters semantics): more than `max_requests` correlated requests within
/// `window_secs` are suppressed: stored, but they start no run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FloodControlDef {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Trigger outputs (dotted paths allowed, e.g. `ticket.client_id`) whose values correlate.
    /// Left out, validation fills in the trigger type's default.
    #[serde(default)]
    pub correlate_on: Vec<String>,
    #[serde(default = "default_max_requests")]
    pub max_requests: u32,
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
}

impl Default for FloodControlDef {
    fn default() -> Self {
        FloodControlDef {
            enabled: true,
            correlate_on: Vec::new(),
            max_requests: default_max_requests(),
            window_secs: default_window_secs(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_max_requests() -> u32 {
    4
}

fn default_window_secs() -> u64 {
    60
}

/// A per-trigger request rate limit: above it, requests are answered 429 with Retry-After.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitDef {
    pub requests: u32,
    pub per_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    pub id: String,
    #[serde(rename = "type")]
    pub step_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    #[serde(default)]
    pub inputs: Map<String, Value>,
    /// How this step is retried; unset fields come from the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::config::RetrySettings>,
    /// For branching steps: the steps of each path, by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub paths: std::collections::BTreeMap<String, Vec<StepDef>>,
}
