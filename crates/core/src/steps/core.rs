//! Branching: `core.switch` picks a path by value, `core.condition` by comparisons. Both only
//! compute which path runs; the engine runs it (see `Step::paths`).

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::step::{PathRule, Resend, Step, StepContext, StepDescription, StepError};

/// `core.switch`: the path named like the value, else `default`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Switch;

#[async_trait]
impl Step for Switch {
    fn describe(&self) -> StepDescription {
        StepDescription::new(
            "core.switch",
            "Run the path named like `value` (paths are the step's \"paths\"), else the `default` path.",
        )
        .input_schema(json!({
            "type": "object",
            "required": ["value"],
            "additionalProperties": false,
            "properties": {
                "value": {"description": "The value to switch on; compared as text with the path names (true, 42, \"high\")."}
            }
        }))
        .output("value", "The value switched on.")
        .output("path", "The path name the value selects (the default path runs when none has it).")
        .paths(PathRule::Any)
    }

    // Only picks a path: nothing outside the run changes.
    fn resend(&self, _inputs: &Value) -> Resend {
        Resend::Safe
    }

    async fn execute(&self, _: &StepContext, inputs: Value) -> Result<Value, StepError> {
        let value = inputs.get("value").cloned().unwrap_or(Value::Null);
        Ok(json!({"path": as_text(&value), "value": value}))
    }
}

/// `core.condition`: the `true` or `false` path, by AND/OR of comparisons.
#[derive(Debug, Clone, Copy, Default)]
pub struct Condition;

const OPERATORS: &[&str] = &[
    "equals",
    "not_equals",
    "contains",
    "starts_with",
    "greater_than",
    "less_than",
    "is_empty",
    "exists",
];

#[async_trait]
impl Step for Condition {
    fn describe(&self) -> StepDescription {
        StepDescription::new(
            "core.condition",
            "Run the `true` or the `false` path: all (AND) or any (OR) of the comparisons hold.",
        )
        .input_schema(json!({
            "type": "object",
            "required": ["conditions"],
            "additionalProperties": false,
            "properties": {
                "match": {"enum": ["all", "any"], "default": "all", "description": "all: every comparison holds (AND); any: at least one (OR)."},
                "conditions": {
                    "type": "array",
                    "minItems": 1,
                    "description": "Comparisons of `left` with `right`. Read a value that may be missing as {{default path null}}.",
                    "items": {
                        "type": "object",
                        "required": ["left", "op"],
                        "additionalProperties": false,
                        "properties": {
                            "left": {"description": "The value tested, usually a template."},
                            "op": {"enum": OPERATORS, "description": "equals, not_equals, contains (text or list), starts_with, greater_than, less_than (numbers, else text), is_empty (null, \"\", [] or {}), exists (not null)."},
                            "right": {"description": "The value compared with (not used by is_empty and exists)."}
                        }
                    }
                }
            }
        }))
        .output("result", "Whether the condition holds.")
        .output("path", "\"true\" or \"false\": the path that runs.")
        .paths(PathRule::Named(&["true", "false"]))
    }

    // Only picks a path: nothing outside the run changes.
    fn resend(&self, _inputs: &Value) -> Resend {
        Resend::Safe
    }

    async fn execute(&self, _: &StepContext, inputs: Value) -> Result<Value, StepError> {
        let any = inputs.get("match").and_then(Value::as_str) == Some("any");
        let conditions = inputs
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut results = Vec::with_capacity(conditions.len());
        for (i, condition) in conditions.iter().enumerate() {
            let op = condition
                .get("op")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let left = condition.get("left").unwrap_or(&Value::Null);
            let right = condition.get("right").unwrap_or(&Value::Null);
            results.push(compare(op, left, right).ok_or_else(|| StepError::Input {
                pointer: format!("/conditions/{i}/op"),
                message: format!(
                    "unknown operator `{op}`; use one of {}",
                    OPERATORS.join(", ")
                ),
            })?);
        }
        let result = if any {
            results.iter().any(|r| *r)
        } else {
            results.iter().all(|r| *r)
        };
        Ok(json!({"result": result, "path": result.to_string()}))
    }
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Numbers compare as numbers (`42` equals `"42"`), everything else as text or JSON.
fn loosely_equal(left: &Value, right: &Value) -> bool {
    match (as_number(left), as_number(right)) {
        (Some(a), Some(b)) => a == b,
        _ => {
            left == right
                || (!left.is_object() && !left.is_array() && as_text(left) == as_text(right))
        }
    }
}

/// `None` for an unknown operator.
pub fn compare(op: &str, left: &Value, right: &Value) -> Option<bool> {
    Some(match op {
        "equals" => loosely_equal(left, right),
        "not_equals" => !loosely_equal(left, right),
        "contains" => match left {
            Value::Array(items) => items.iter().any(|item| loosely_equal(item, right)),
            other => as_text(other).contains(&as_text(right)),
        },
        "starts_with" => as_text(left).starts_with(&as_text(right)),
        "greater_than" | "less_than" => {
            let ordering = match (as_number(left), as_number(right)) {
                (Some(a), Some(b)) => a.partial_cmp(&b),
                _ => Some(as_text(left).cmp(&as_text(right))),
            };
            ordering
                == Some(if op == "greater_than" {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Less
                })
        }
        "is_empty" => match left {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        },
        "exists" => !left.is_null(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::compare;
    use serde_json::json;

    #[test]
    fn each_operator() {
        let cases = [
            ("equals", json!(42), json!("42"), true),
            ("equals", json!("a"), json!("b"), false),
            ("not_equals", json!("a"), json!("b"), true),
            ("not_equals", json!(true), json!("true"), false),
            ("contains", json!("Disk space low"), json!("space"), true),
            ("contains", json!(["ops", "bgull"]), json!("bgull"), true),
            ("contains", json!(["ops"]), json!("x"), false),
            ("starts_with", json!("INC0010001"), json!("INC"), true),
            ("starts_with", json!("PRB1"), json!("INC"), false),
            ("greater_than", json!(3), json!("2"), true),
            (
                "greater_than",
                json!("2026-02-01"),
                json!("2026-01-31"),
                true,
            ),
            ("less_than", json!(2), json!(10), true),
            ("less_than", json!(10), json!(2), false),
            ("is_empty", json!(""), json!(null), true),
            ("is_empty", json!([]), json!(null), true),
            ("is_empty", json!(null), json!(null), true),
            ("is_empty", json!(0), json!(null), false),
            ("exists", json!(0), json!(null), true),
            ("exists", json!(null), json!(null), false),
        ];
        for (op, left, right, expected) in cases {
            assert_eq!(
                compare(op, &left, &right),
                Some(expected),
                "{op} {left} {right}"
            );
        }
        assert_eq!(compare("matches", &json!(1), &json!(1)), None);
    }
}
