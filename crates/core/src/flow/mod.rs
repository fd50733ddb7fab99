//! Flows: the document model and the validate-then-build pipeline. Raw JSON is checked against
//! `schemas/flow.schema.json`, then semantically (step ids, step types, step inputs, template
//! references); only a [`ValidatedFlow`] can run.

mod editor_schema;
mod locate;
mod model;
mod problem;
mod trigger_checks;
mod url;
mod validate;

use std::path::{Path, PathBuf};

pub use editor_schema::editor_schema;
pub use locate::locate;
pub use model::{FloodControlDef, FlowDocument, RateLimitDef, StepDef, TriggerDef};
pub use url::{trigger_url, with_recipients};

pub use crate::trigger::TriggerAuth;
pub use problem::{Problem, ProblemCode};
pub use validate::FlowValidator;

use crate::step::{RegisteredStep, RegisteredTrigger};
use crate::template::{CompiledValue, Reference, TemplateSet};

/// The flow schema, as shipped in `schemas/flow.schema.json`.
pub(crate) const FLOW_SCHEMA: &str = include_str!("../../../../schemas/flow.schema.json");

/// A flow that passed every check, with its templates compiled and its steps resolved.
#[derive(Debug, Clone)]
pub struct ValidatedFlow {
    pub document: FlowDocument,
    pub source: Option<PathBuf>,
    pub steps: Vec<ValidatedStep>,
    /// The registered trigger type `"trigger": {"type": ...}` names.
    pub trigger: RegisteredTrigger,
    pub(crate) templates: TemplateSet,
    /// Line and column of every template in the file, by JSON pointer, for run-time errors.
    pub(crate) positions: std::collections::HashMap<String, (usize, usize)>,
}

impl ValidatedFlow {
    pub fn id(&self) -> &str {
        &self.document.id
    }

    /// `file:line:column` of the value at `pointer`, when the flow came from a file.
    pub fn place(&self, pointer: &str) -> Option<String> {
        let file = self.source.as_ref()?;
        let (line, column) = self.positions.get(pointer)?;
        Some(format!("{}:{line}:{column}", file.display()))
    }

    /// One line for listings: `id (name): trigger, N steps: a -> b`.
    pub fn summary(&self) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|s| format!("{} ({})", s.id, s.description().type_name))
            .collect();
        format!(
            "flow `{}` ({}): {} trigger at /triggers/{}, {} step{}: {}",
            self.document.id,
            self.document.name,
            self.document.trigger.type_name,
            self.document.id,
            steps.len(),
            if steps.len() == 1 { "" } else { "s" },
            steps.join(" -> ")
        )
    }
}

/// A step ready to run.
#[derive(Debug, Clone)]
pub struct ValidatedStep {
    pub id: String,
    pub name: Option<String>,
    pub connection: Option<String>,
    /// The step's own retry settings from the flow (unset fields: config, then built-in).
    pub retry: crate::config::RetrySettings,
    /// The registered step its `"type"` names.
    pub registered: RegisteredStep,
    pub(crate) inputs: CompiledValue,
    /// The data paths the inputs read, found at validation.
    pub(crate) references: Vec<Reference>,
    /// For a branching step: its paths, by name, in the order the flow lists them.
    pub paths: Vec<(String, Vec<ValidatedStep>)>,
}

impl ValidatedStep {
    /// The step's implementation, the one its `"type"` names in the registry.
    pub fn implementation(&self) -> &dyn crate::step::Step {
        self.registered.step()
    }

    /// What the step's type is (type name, input schema, outputs, connection kind, paths).
    pub fn description(&self) -> &crate::step::StepDescription {
        self.registered.description()
    }

    /// The path a branching step's outputs select: the one named by `path`, else `default`.
    pub fn chosen_path(&self, outputs: &serde_json::Value) -> Option<&[ValidatedStep]> {
        let name = outputs.get("path").and_then(serde_json::Value::as_str)?;
        let find = |wanted: &str| {
            self.paths
                .iter()
                .find(|(n, _)| n == wanted)
                .map(|(_, p)| p.as_slice())
        };
        find(name).or_else(|| find("default"))
    }
}

/// Every `*.json` file in `path` (sorted), or `path` itself when it is a file.
pub fn flow_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    Ok(files)
}
