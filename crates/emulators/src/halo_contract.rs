//! Halo's published API contract, as the Halo emulator enforces it: the operations, their
//! documented query parameters and their schemas from Halo's own OpenAPI document
//! (`reference/halo-openapi.json`, "Halo API" v2, a cut of the paths haloflow uses with every
//! schema they reference; its origin is in `info.x-subset-of`).
//!
//! OpenAPI 3.0 schemas are not JSON Schema: `nullable` widens the type, `format: int32` bounds
//! an integer, and `additionalProperties: false` is how the generator marks every .NET class.
//! Halo (ASP.NET) ignores a property its class does not have, so an unknown property is not an
//! error here: it is reported separately ([`HaloContract::strip_unknown`]) for tests to see.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};

use serde_json::{Map, Value, json};

static DOCUMENT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../reference/halo-openapi.json"
));

static CONTRACT: LazyLock<HaloContract> = LazyLock::new(|| {
    let document: Value = serde_json::from_str(DOCUMENT).expect("halo-openapi.json is JSON");
    HaloContract::from_document(&document)
});

/// One documented operation: `GET /Tickets`, `POST /Actions`, ...
#[derive(Debug)]
pub struct Operation {
    pub method: String,
    /// The path as documented, e.g. `/Tickets/{id}`.
    pub path: String,
    segments: Vec<String>,
    /// Documented query parameters: lower-case name and declared type (`int`, `bool`, ...).
    params: HashMap<String, String>,
    body: Option<BodySchema>,
}

/// What a request body must be.
#[derive(Debug, Clone)]
enum BodySchema {
    /// `[{...}]` of a named schema, Halo's shape for creates and updates.
    ArrayOf(String),
    /// One object of a named schema.
    Object(String),
    /// Any JSON object.
    AnyObject,
}

/// What checking a request body found.
#[derive(Debug, Default)]
pub struct BodyCheck {
    /// Type errors, keyed by ASP.NET's field path (`[0].third_party_id`), Halo's 400 shape.
    pub errors: BTreeMap<String, Vec<String>>,
    /// JSON pointers of properties the schema does not know (Halo ignores them silently).
    pub unknown: Vec<String>,
}

pub struct HaloContract {
    /// `components.schemas` converted to JSON Schema, for `$ref`s to resolve against.
    components: Value,
    /// The schemas as published (for the unknown-property walk).
    schemas: Map<String, Value>,
    operations: Vec<Operation>,
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl std::fmt::Debug for HaloContract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaloContract")
            .field("operations", &self.operations.len())
            .finish()
    }
}

impl HaloContract {
    /// The contract from the bundled document (parsed once per process).
    pub fn get() -> &'static HaloContract {
        &CONTRACT
    }

    fn from_document(document: &Value) -> HaloContract {
        let schemas = document["components"]["schemas"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let converted: Map<String, Value> = schemas
            .iter()
            .map(|(name, schema)| (name.clone(), to_json_schema(schema)))
            .collect();
        let mut operations = Vec::new();
        for (path, item) in document["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                operations.push(Operation::from_spec(path, method, op));
            }
        }
        HaloContract {
            components: json!({ "schemas": converted }),
            schemas,
            operations,
            validators: Mutex::new(HashMap::new()),
        }
    }

    /// The documented operation for a request to `/api{path}` (paths are case-insensitive,
    /// as Halo's are).
    pub fn operation(&self, method: &str, api_path: &str) -> Option<&Operation> {
        let segments: Vec<String> = api_path
            .trim_matches('/')
            .split('/')
            .map(str::to_ascii_lowercase)
            .collect();
        self.operations
            .iter()
            .filter(|op| op.method.eq_ignore_ascii_case(method) && op.matches(&segments))
            // A literal segment beats a parameter: `/Notify/servicenowticket` over `/{id}`.
            .max_by_key(|op| op.segments.iter().filter(|s| !s.starts_with('{')).count())
    }

    /// The schema of one record of the resource `op` reads or writes: the body schema of the
    /// collection's `POST` (`Faults` for `GET /Tickets/{id}`).
    pub fn record_schema_of(&self, op: &Operation) -> Option<&str> {
        let collection = op.segments.first()?;
        self.operations
            .iter()
            .find(|o| o.method == "POST" && o.segments.len() == 1 && &o.segments[0] == collection)
            .and_then(Operation::record_schema)
    }

    /// Checks a request body against the operation's request schema.
    pub fn check_body(&self, op: &Operation, body: &Value) -> BodyCheck {
        let mut check = BodyCheck::default();
        let Some(schema) = &op.body else {
            return check;
        };
        let (validator, name) = match schema {
            BodySchema::ArrayOf(name) => (self.validator(name, true), Some(name)),
            BodySchema::Object(name) => (self.validator(name, false), Some(name)),
            BodySchema::AnyObject => {
                if !body.is_object() {
                    check
                        .errors
                        .entry(String::new())
                        .or_default()
                        .push("The request body must be a JSON object.".into());
                }
                return check;
            }
        };
        for error in validator.iter_errors(body) {
            let path = aspnet_path(&error.instance_path().to_string());
            check
                .errors
                .entry(path)
                .or_default()
                .push(error.to_string());
        }
        if let Some(name) = name {
            let mut copy = body.clone();
            check.unknown = match schema {
                BodySchema::ArrayOf(_) => (copy.as_array_mut().into_iter().flatten())
                    .enumerate()
                    .flat_map(|(i, item)| self.strip_unknown_at(name, item, &format!("/{i}")))
                    .collect(),
                _ => self.strip_unknown(name, &mut copy),
            };
        }
        check
    }

    /// Checks a value (an answer) against a named schema: type errors and unknown properties,
    /// each as one line naming its JSON pointer.
    pub fn check_value(&self, name: &str, value: &Value) -> Vec<String> {
        let validator = self.validator(name, false);
        let mut problems: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{}: {e}", pointer_or_root(&e.instance_path().to_string())))
            .collect();
        let mut copy = value.clone();
        problems.extend(
            self.strip_unknown(name, &mut copy)
                .into_iter()
                .map(|p| format!("{p}: `{name}` has no such property")),
        );
        problems
    }

    /// Removes the properties `name`'s schema does not know, at any depth, as Halo drops them;
    /// returns their JSON pointers.
    pub fn strip_unknown(&self, name: &str, value: &mut Value) -> Vec<String> {
        self.strip_unknown_at(name, value, "")
    }

    fn strip_unknown_at(&self, name: &str, value: &mut Value, at: &str) -> Vec<String> {
        let mut unknown = Vec::new();
        if let Some(schema) = self.schemas.get(name) {
            self.walk_unknown(schema, value, &mut at.to_owned(), &mut unknown);
        }
        unknown
    }

    fn walk_unknown(
        &self,
        schema: &Value,
        value: &mut Value,
        at: &mut String,
        out: &mut Vec<String>,
    ) {
        if let Some(target) = schema.get("$ref").and_then(Value::as_str) {
            let name = target.rsplit('/').next().unwrap_or_default();
            if let Some(schema) = self.schemas.get(name) {
                self.walk_unknown(schema, value, at, out);
            }
            return;
        }
        match value {
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter_mut().enumerate() {
                        let len = at.len();
                        at.push_str(&format!("/{i}"));
                        self.walk_unknown(item_schema, item, at, out);
                        at.truncate(len);
                    }
                }
            }
            Value::Object(map) => {
                let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                    return;
                };
                let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
                map.retain(|key, _| {
                    let known = properties.contains_key(key) || !closed;
                    if !known {
                        out.push(format!("{at}/{}", escape_pointer(key)));
                    }
                    known
                });
                for (key, child) in map.iter_mut() {
                    if let Some(child_schema) = properties.get(key) {
                        let len = at.len();
                        at.push('/');
                        at.push_str(&escape_pointer(key));
                        self.walk_unknown(child_schema, child, at, out);
                        at.truncate(len);
                    }
                }
            }
            _ => {}
        }
    }

    /// A compiled validator for schema `name` (or an array of it), built once.
    fn validator(&self, name: &str, array: bool) -> Arc<jsonschema::Validator> {
        let key = format!("{name}{}", if array { "[]" } else { "" });
        let mut validators = self.validators.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = validators.get(&key) {
            return v.clone();
        }
        let reference = json!({ "$ref": format!("#/components/schemas/{name}") });
        let mut root = if array {
            json!({ "type": "array", "items": reference })
        } else {
            reference
        };
        root["components"] = self.components.clone();
        let validator = Arc::new(
            jsonschema::draft202012::new(&root).expect("Halo's schemas convert to JSON Schema"),
        );
        validators.insert(key, validator.clone());
        validator
    }
}

impl Operation {
    fn from_spec(path: &str, method: &str, op: &Value) -> Operation {
        let params = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "query")
            .filter_map(|p| {
                let name = p["name"].as_str()?.to_ascii_lowercase();
                let kind = p["schema"]["type"].as_str().unwrap_or("string").to_owned();
                Some((name, kind))
            })
            .collect();
        let schema = &op["requestBody"]["content"]["application/json"]["schema"];
        let named = |s: &Value| {
            s.get("$ref")
                .and_then(Value::as_str)
                .map(|r| r.rsplit('/').next().unwrap_or_default().to_owned())
        };
        let body = if schema.is_null() {
            None
        } else if schema["type"] == "array" {
            named(&schema["items"]).map(BodySchema::ArrayOf)
        } else if let Some(name) = named(schema) {
            Some(BodySchema::Object(name))
        } else {
            Some(BodySchema::AnyObject)
        };
        Operation {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            segments: path
                .trim_matches('/')
                .split('/')
                .map(str::to_ascii_lowercase)
                .collect(),
            params,
            body,
        }
    }

    fn matches(&self, segments: &[String]) -> bool {
        self.segments.len() == segments.len()
            && self
                .segments
                .iter()
                .zip(segments)
                .all(|(ours, theirs)| ours.starts_with('{') || ours == theirs)
    }

    /// The schema name of one record this operation reads or writes (`Faults` for tickets).
    pub fn record_schema(&self) -> Option<&str> {
        match &self.body {
            Some(BodySchema::ArrayOf(name) | BodySchema::Object(name)) => Some(name),
            _ => None,
        }
    }

    /// Problems with the query parameters: one that is not documented for this operation, or
    /// a value that is not of its documented type.
    pub fn check_query(&self, pairs: &[(String, String)]) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, value) in pairs {
            let Some(kind) = self.params.get(&name.to_ascii_lowercase()) else {
                problems.push(format!(
                    "`{name}` is not a documented query parameter of {} {}",
                    self.method, self.path
                ));
                continue;
            };
            let fits = match kind.as_str() {
                "int" | "integer" => value.trim().parse::<i64>().is_ok(),
                "bool" | "boolean" => {
                    value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false")
                }
                "double" | "number" => value.trim().parse::<f64>().is_ok(),
                _ => true,
            };
            if !fits {
                problems.push(format!(
                    "The value '{value}' is not valid for {name} ({kind})."
                ));
            }
        }
        problems
    }
}

/// OpenAPI 3.0 schema → JSON Schema (2020-12): `nullable` adds `null` to the type, integer
/// formats become bounds, `uuid` a pattern; `additionalProperties: false` is left to the
/// unknown-property walk; a `$ref`'d object may be null (a .NET reference).
fn to_json_schema(schema: &Value) -> Value {
    let Some(object) = schema.as_object() else {
        return schema.clone();
    };
    if let Some(target) = object.get("$ref") {
        return json!({ "anyOf": [{ "$ref": target }, { "type": "null" }] });
    }
    let nullable = object.get("nullable") == Some(&Value::Bool(true));
    let mut out = Map::new();
    for (key, value) in object {
        match key.as_str() {
            "type" => {
                let kind = value.clone();
                out.insert(
                    "type".into(),
                    if nullable {
                        json!([kind, "null"])
                    } else {
                        kind
                    },
                );
            }
            "format" => insert_format(&mut out, value.as_str()),
            "items" => {
                out.insert("items".into(), to_json_schema(value));
            }
            "properties" => {
                let properties: Map<String, Value> = value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, s)| (name.clone(), to_json_schema(s)))
                    .collect();
                out.insert("properties".into(), Value::Object(properties));
            }
            "additionalProperties" if value.is_object() => {
                out.insert(key.clone(), to_json_schema(value));
            }
            "enum" => {
                let mut values = value.as_array().cloned().unwrap_or_default();
                if nullable {
                    values.push(Value::Null);
                }
                out.insert("enum".into(), Value::Array(values));
            }
            "maxLength" => {
                out.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
    Value::Object(out)
}

/// An OpenAPI format as JSON Schema: integer formats as bounds, `uuid` as a pattern.
fn insert_format(out: &mut Map<String, Value>, format: Option<&str>) {
    match format {
        Some("int32") => {
            out.insert("minimum".into(), json!(i32::MIN));
            out.insert("maximum".into(), json!(i32::MAX));
        }
        Some("int64") => {
            out.insert("minimum".into(), json!(i64::MIN));
            out.insert("maximum".into(), json!(i64::MAX));
        }
        Some("uuid") => {
            out.insert(
                "pattern".into(),
                json!("^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"),
            );
        }
        _ => {}
    }
}

/// `/0/customfields/1/id` → `[0].customfields[1].id`, the path ASP.NET names in its 400s.
fn aspnet_path(pointer: &str) -> String {
    let mut path = String::new();
    for part in pointer.split('/').skip(1) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if part.parse::<usize>().is_ok() {
            path.push_str(&format!("[{part}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&part);
        }
    }
    path
}

fn pointer_or_root(pointer: &str) -> &str {
    if pointer.is_empty() {
        "(root)"
    } else {
        pointer
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_where_the_schema_says_integer_is_a_type_error_named_by_its_field_path() {
        let contract = HaloContract::get();
        let op = contract
            .operation("POST", "/tickets")
            .expect("POST /Tickets");
        let check = contract.check_body(
            op,
            &json!([{"summary": "s", "third_party_id": "haloflow:1:2", "site_id": null}]),
        );
        assert_eq!(
            check.errors.keys().collect::<Vec<_>>(),
            ["[0].third_party_id"]
        );
        assert!(check.unknown.is_empty());
    }

    #[test]
    fn unknown_properties_are_reported_and_dropped_not_errors() {
        let contract = HaloContract::get();
        let op = contract.operation("POST", "/Actions").unwrap();
        let check = contract.check_body(
            op,
            &json!([{"ticket_id": 1, "outcome_id": 7, "private": true, "customfields": [{"id": 1, "bogus": 2}]}]),
        );
        assert!(check.errors.is_empty(), "{:?}", check.errors);
        assert_eq!(check.unknown, ["/0/private", "/0/customfields/0/bogus"]);
        let mut ticket = json!({"id": 1, "team_id": 3, "summary": "s"});
        assert_eq!(contract.strip_unknown("Faults", &mut ticket), ["/team_id"]);
        assert_eq!(ticket, json!({"id": 1, "summary": "s"}));
    }

    #[test]
    fn int32_bounds_and_literal_paths_are_honoured() {
        let contract = HaloContract::get();
        let op = contract.operation("POST", "/Tickets").unwrap();
        let check = contract.check_body(op, &json!([{"client_id": 3_000_000_000_i64}]));
        assert!(check.errors.contains_key("[0].client_id"));
        assert_eq!(
            contract
                .operation("POST", "/Notify/servicenowaction")
                .map(|op| op.path.as_str()),
            Some("/Notify/servicenowaction")
        );
        let list = contract.operation("GET", "/Tickets").unwrap();
        assert!(
            list.check_query(&[("parent_id".into(), "12".into())])
                .is_empty()
        );
        assert_eq!(
            list.check_query(&[("third_party_id".into(), "x".into())])
                .len(),
            1
        );
        assert_eq!(list.check_query(&[("count".into(), "ten".into())]).len(), 1);
    }
}
