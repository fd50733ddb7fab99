//! The explicit registry of what flows may name: step types and trigger types. Built-ins are
//! registered the same way an embedder's are.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::{Step, StepDescription};
use crate::trigger::{TriggerDescription, TriggerType};

/// A registered step: its implementation, its description (asked for once, at registration)
/// and its input schema compiled twice: as written (for rendered inputs) and relaxed so that a
/// template string may stand in for any value (for load-time checks).
#[derive(Clone)]
pub struct RegisteredStep {
    step: Arc<dyn Step>,
    description: Arc<StepDescription>,
    pub(crate) schema: Arc<jsonschema::Validator>,
    pub(crate) relaxed_schema: Arc<jsonschema::Validator>,
}

impl RegisteredStep {
    /// The step's implementation.
    pub fn step(&self) -> &dyn Step {
        self.step.as_ref()
    }

    /// What the step is (type name, summary, input schema, outputs, connection kind, paths).
    pub fn description(&self) -> &StepDescription {
        &self.description
    }

    /// The input schema as flow files may write it: templates allowed in place of any value.
    pub fn template_tolerant_schema(&self) -> Value {
        relax_root(&self.description.input_schema)
    }
}

impl std::fmt::Debug for RegisteredStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredStep")
            .field("type", &self.description.type_name)
            .finish()
    }
}

/// A registered trigger type, with its description (asked for once, at registration).
#[derive(Clone)]
pub struct RegisteredTrigger {
    trigger: Arc<dyn TriggerType>,
    description: Arc<TriggerDescription>,
}

impl RegisteredTrigger {
    /// The trigger type's implementation.
    pub fn trigger_type(&self) -> &dyn TriggerType {
        self.trigger.as_ref()
    }

    /// What the trigger type is (name, summary, outputs, flood control's default correlation).
    pub fn description(&self) -> &TriggerDescription {
        &self.description
    }

    /// Whether templates may read `trigger.<name>`.
    pub fn has_output(&self, name: &str) -> bool {
        self.description.outputs.iter().any(|o| o.name == name)
    }
}

impl std::fmt::Debug for RegisteredTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredTrigger")
            .field("type", &self.description.type_name)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("step type `{0}` is registered twice; type names must be unique")]
    Duplicate(String),
    #[error("trigger type `{0}` is registered twice; type names must be unique")]
    DuplicateTrigger(String),
    #[error("step type `{name}` has an invalid input schema: {message}")]
    InvalidSchema { name: String, message: String },
}

/// Step and trigger implementations by type name: what flows may name.
#[derive(Debug, Clone, Default)]
pub struct StepRegistry {
    steps: BTreeMap<&'static str, RegisteredStep>,
    triggers: BTreeMap<&'static str, RegisteredTrigger>,
}

impl StepRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        StepRegistry::default()
    }

    /// Registers a step under its type name.
    pub fn register<S: Step>(&mut self, step: S) -> Result<(), RegistryError> {
        self.register_arc(Arc::new(step))
    }

    /// Registers a shared step under its type name.
    pub fn register_arc(&mut self, step: Arc<dyn Step>) -> Result<(), RegistryError> {
        let description = step.describe();
        let name = description.type_name;
        if self.steps.contains_key(name) {
            return Err(RegistryError::Duplicate(name.to_owned()));
        }
        let schema = &description.input_schema;
        let compile = |schema: &Value| {
            jsonschema::draft202012::new(schema).map_err(|e| RegistryError::InvalidSchema {
                name: name.to_owned(),
                message: e.to_string(),
            })
        };
        let strict = compile(schema)?;
        let relaxed = compile(&relax_root(schema))?;
        self.steps.insert(
            name,
            RegisteredStep {
                step,
                description: Arc::new(description),
                schema: Arc::new(strict),
                relaxed_schema: Arc::new(relaxed),
            },
        );
        Ok(())
    }

    /// Every registered step, by type name.
    pub fn steps(&self) -> impl Iterator<Item = &RegisteredStep> + '_ {
        self.steps.values()
    }

    pub fn get(&self, type_name: &str) -> Option<&RegisteredStep> {
        self.steps.get(type_name)
    }

    pub fn type_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.steps.keys().copied()
    }

    /// Registers a trigger type under its type name.
    pub fn register_trigger(&mut self, trigger: Arc<dyn TriggerType>) -> Result<(), RegistryError> {
        let description = trigger.describe();
        let name = description.type_name;
        if self.triggers.contains_key(name) {
            return Err(RegistryError::DuplicateTrigger(name.to_owned()));
        }
        let description = Arc::new(description);
        self.triggers.insert(
            name,
            RegisteredTrigger {
                trigger,
                description,
            },
        );
        Ok(())
    }

    /// The trigger type named `type_name`.
    pub fn trigger(&self, type_name: &str) -> Option<&RegisteredTrigger> {
        self.triggers.get(type_name)
    }

    /// Every registered trigger type, by type name.
    pub fn triggers(&self) -> impl Iterator<Item = &RegisteredTrigger> + '_ {
        self.triggers.values()
    }
}

/// Relaxes every subschema below the root; the root (the `inputs` object) stays strict so
/// that unknown and missing inputs are reported at their own pointers.
fn relax_root(schema: &Value) -> Value {
    relax(schema, false)
}

fn relax_for_templates(schema: &Value) -> Value {
    relax(schema, true)
}

/// Rewrites a schema so that any subschema also accepts a string holding a template
/// (`{{...}}`): at load time a template's value is not known yet.
fn relax(schema: &Value, wrap: bool) -> Value {
    match schema {
        Value::Object(map) => {
            let mut relaxed = serde_json::Map::new();
            for (key, value) in map {
                let value = match key.as_str() {
                    "properties" | "patternProperties" | "$defs" | "definitions" => match value {
                        Value::Object(props) => Value::Object(
                            props
                                .iter()
                                .map(|(k, v)| (k.clone(), relax_for_templates(v)))
                                .collect(),
                        ),
                        other => other.clone(),
                    },
                    "items" | "additionalProperties" | "not" | "contains" => {
                        relax_for_templates(value)
                    }
                    "anyOf" | "oneOf" | "allOf" | "prefixItems" => match value {
                        Value::Array(items) => {
                            Value::Array(items.iter().map(relax_for_templates).collect())
                        }
                        other => other.clone(),
                    },
                    _ => value.clone(),
                };
                relaxed.insert(key.clone(), value);
            }
            if wrap
                && (map.contains_key("type")
                    || map.contains_key("enum")
                    || map.contains_key("const"))
            {
                let mut wrapper = serde_json::json!({
                    "anyOf": [Value::Object(relaxed), {"type": "string", "pattern": "\\{\\{"}]
                });
                // Editors show the description of the value, not of an anyOf branch.
                if let Some(description) = map.get("description") {
                    wrapper["description"] = description.clone();
                }
                wrapper
            } else {
                Value::Object(relaxed)
            }
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::step::{Resend, StepContext, StepError};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts how often it is asked for its description.
    #[derive(Default)]
    struct Counted(AtomicUsize);

    #[async_trait::async_trait]
    impl Step for Counted {
        fn describe(&self) -> StepDescription {
            self.0.fetch_add(1, Ordering::SeqCst);
            StepDescription::new("test.counted", "Counts its descriptions.")
                .input_schema(json!({"type": "object", "properties": {"n": {"type": "integer"}}}))
                .output("n", "The number.")
        }
        fn resend(&self, _inputs: &Value) -> Resend {
            Resend::Safe
        }
        async fn execute(&self, _: &StepContext, inputs: Value) -> Result<Value, StepError> {
            Ok(inputs)
        }
    }

    #[test]
    fn the_registry_asks_for_a_description_once_and_keeps_it() {
        let step = Arc::new(Counted::default());
        let mut registry = StepRegistry::new();
        registry.register_arc(step.clone()).unwrap();
        let registered = registry.get("test.counted").unwrap();
        for _ in 0..3 {
            assert_eq!(registered.description().outputs[0].name, "n");
            let _ = registered.template_tolerant_schema();
        }
        assert!(registered.schema.is_valid(&json!({"n": 1})));
        assert!(!registered.schema.is_valid(&json!({"n": "one"})));
        // A second registration under the same name is refused, after one more question.
        assert!(matches!(
            registry.register_arc(step.clone()),
            Err(RegistryError::Duplicate(_))
        ));
        assert_eq!(step.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn relaxed_schema_accepts_templates_in_place_of_values() {
        let schema = json!({
            "type": "object",
            "required": ["id"],
            "additionalProperties": false,
            "properties": {"id": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "integer"}}}
        });
        let relaxed = jsonschema::draft202012::new(&relax_root(&schema)).unwrap();
        assert!(
            !relaxed.is_valid(&json!("{{x}}")),
            "the root stays an object"
        );
        assert!(relaxed.is_valid(&json!({"id": "{{trigger.ticket_id}}", "tags": [1, "{{x}}"]})));
        assert!(!relaxed.is_valid(&json!({"id": "twelve"})));
        assert!(
            !relaxed.is_valid(&json!({"tags": []})),
            "required still applies"
        );
        assert!(
            !relaxed.is_valid(&json!({"id": 1, "other": 2})),
            "unknown keys still rejected"
        );
    }
}
