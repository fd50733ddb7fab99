//! The typed flow document, deserialized only after the JSON Schema accepted it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    #[serde(rename = "type")]
    pub kind: TriggerKind,
    pub auth: TriggerAuth,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum TriggerKind {
    #[serde(rename = "halo.incidents")]
    HaloIncidents,
}

/// How a trigger authenticates requests; every secret is a name, resolved at start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TriggerAuth {
    UrlKey {
        #[serde(default = "default_key_param")]
        param: String,
        secret_name: String,
    },
    Basic {
        username: String,
        password_secret_name: String,
    },
    Header {
        #[serde(default = "default_key_header")]
        header: String,
        secret_name: String,
    },
    None,
}

fn default_key_param() -> String {
    "apiKey".to_owned()
}

fn default_key_header() -> String {
    "X-API-Key".to_owned()
}

impl TriggerAuth {
    /// The secret names this auth needs.
    pub fn secret_name(&self) -> Option<&str> {
        match self {
            TriggerAuth::UrlKey { secret_name, .. } | TriggerAuth::Header { secret_name, .. } => {
                Some(secret_name)
            }
            TriggerAuth::Basic {
                password_secret_name,
                ..
            } => Some(password_secret_name),
            TriggerAuth::None => None,
        }
    }
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
}
