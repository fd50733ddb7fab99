//! The editor-facing flow schema: `schemas/flow.schema.json` plus, for every registered step
//! type, its inputs wired with `if/then` on `type`, and for every registered trigger type its
//! description and outputs, so editors complete and explain them.
//! `haloflow schema` prints it; a test keeps the checked-in file equal to it.

use serde_json::{Value, json};

use super::FLOW_SCHEMA;
use crate::step::StepRegistry;

pub fn editor_schema(registry: &StepRegistry) -> Value {
    let mut schema: Value = serde_json::from_str(FLOW_SCHEMA).expect("the flow schema is JSON");
    let names: Vec<&str> = registry.type_names().collect();
    let step = &mut schema["$defs"]["step"];
    step["properties"]["type"]["examples"] = json!(names);
    let branches: Vec<Value> = registry
        .steps()
        .map(|registered| {
            let mut inputs = registered.template_tolerant_schema();
            let outputs: Vec<String> = registered
                .description()
                .outputs
                .iter()
                .map(|o| format!("{} ({})", o.name, o.description.trim_end_matches('.')))
                .collect();
            inputs["description"] = json!(format!(
                "{} Outputs: {}.",
                registered.description().summary,
                outputs.join(", ")
            ));
            json!({
                "if": {"required": ["type"], "properties": {"type": {"const": registered.description().type_name}}},
                "then": {"properties": {"inputs": inputs}}
            })
        })
        .collect();
    step["allOf"] = Value::Array(branches);
    add_trigger_types(&mut schema["$defs"]["trigger"], registry);
    schema
}

/// The trigger's `type` completes to the registered names, each explained by its description.
fn add_trigger_types(trigger: &mut Value, registry: &StepRegistry) {
    let names: Vec<&str> = registry
        .triggers()
        .map(|t| t.description().type_name)
        .collect();
    trigger["properties"]["type"]["examples"] = json!(names);
    let branches: Vec<Value> = registry
        .triggers()
        .map(|registered| {
            let description = registered.description();
            let outputs: Vec<&str> = description.outputs.iter().map(|o| o.name).collect();
            let text = format!(
                "{}: {} Outputs: {}.",
                description.type_name,
                description.summary,
                outputs.join(", ")
            );
            json!({
                "if": {"required": ["type"], "properties": {"type": {"const": description.type_name}}},
                "then": {"properties": {"type": {"description": text}}}
            })
        })
        .collect();
    trigger["allOf"] = Value::Array(branches);
}
