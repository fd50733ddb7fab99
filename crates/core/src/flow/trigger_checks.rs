//! The checks on a flow's trigger: its type must be registered, and flood control may
//! correlate only on outputs that type has.

use serde_json::Value;

use super::{Problem, ProblemCode};
use crate::step::{RegisteredTrigger, StepRegistry};

/// The registered trigger type the flow names; an unknown one is a problem. `None` also when
/// the schema already reported a missing or non-string type.
pub(super) fn registered_trigger<'r>(
    registry: &'r StepRegistry,
    flow: &Value,
    problems: &mut Vec<Problem>,
) -> Option<&'r RegisteredTrigger> {
    let type_name = flow.pointer("/trigger/type").and_then(Value::as_str)?;
    let registered = registry.trigger(type_name);
    if registered.is_none() {
        let known: Vec<&str> = registry
            .triggers()
            .map(|t| t.description().type_name)
            .collect();
        problems.push(Problem::new(
            "/trigger/type",
            ProblemCode::UnknownTriggerType,
            format!("unknown trigger type `{type_name}`"),
            format!("use one of: {}", known.join(", ")),
        ));
    }
    registered
}

/// Flood control correlates on trigger outputs; each named output must exist.
pub(super) fn check_correlation(
    flow: &Value,
    trigger: &RegisteredTrigger,
    problems: &mut Vec<Problem>,
) {
    let Some(paths) = flow
        .pointer("/trigger/flood_control/correlate_on")
        .and_then(Value::as_array)
    else {
        return;
    };
    for (i, path) in paths.iter().enumerate() {
        let Some(path) = path.as_str() else { continue };
        let output = path.split('.').next().unwrap_or_default();
        if !trigger.has_output(output) {
            problems.push(unknown_trigger_output(
                trigger,
                format!("/trigger/flood_control/correlate_on/{i}"),
                path,
                output,
            ));
        }
    }
}

/// `shown` (a path or reference) names an output `trigger` does not have.
pub(super) fn unknown_trigger_output(
    trigger: &RegisteredTrigger,
    pointer: String,
    shown: &str,
    output: &str,
) -> Problem {
    let description = trigger.description();
    let outputs: Vec<&str> = description.outputs.iter().map(|o| o.name).collect();
    Problem::new(
        pointer,
        ProblemCode::UnknownTriggerOutput,
        format!(
            "`{shown}`: the {} trigger has no output `{output}`",
            description.type_name
        ),
        format!("trigger outputs: {}", outputs.join(", ")),
    )
}
