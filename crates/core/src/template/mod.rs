//! Step input templates. Only string leaves of a step's `inputs` are templates, so the result is
//! always well-formed JSON; a leaf that is exactly one `{{path}}` yields the referenced value with
//! its JSON type. Templates are compiled once when a flow loads, named after their JSON pointer,
//! and their references are extracted from the handlebars AST for the load-time checks.

mod helpers;

use handlebars::template::{HelperTemplate, Parameter, TemplateElement};
use handlebars::{Context, Handlebars, Path, PathSeg, RenderErrorReason, Template, TemplateError};
use serde_json::Value;

/// A step's inputs, compiled.
#[derive(Debug, Clone)]
pub(crate) enum CompiledValue {
    /// No template anywhere below: used as is.
    Literal(Value),
    /// Exactly `{{a.b.c}}`: the referenced value, with its JSON type.
    Path {
        pointer: String,
        path: Vec<String>,
    },
    /// Exactly `{{default a.b fallback}}`: the value at the path (typed), or the literal
    /// fallback when it is missing, null or empty.
    Default {
        pointer: String,
        path: Vec<String>,
        fallback: Value,
    },
    /// Any other template: renders to a string. The registered template's name is `pointer`.
    Text {
        pointer: String,
    },
    Object(Vec<(String, CompiledValue)>),
    Array(Vec<CompiledValue>),
}

/// A named value templates reach: a trigger output (`trigger.<name>`) or a step output
/// (`steps.<id>.<name>`), as a trigger type or step describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSpec {
    pub name: &'static str,
    pub description: &'static str,
}

/// A data path a template reads, found in the input at `pointer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub pointer: String,
    pub path: Vec<String>,
    /// Read through `default`, so it may be missing (a step on a path that did not run).
    pub optional: bool,
}

impl Reference {
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }
}

/// A template that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TemplateProblem {
    Syntax { pointer: String, message: String },
    UnknownHelper { pointer: String, name: String },
}

/// A template that failed to render at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RenderFailure {
    pub pointer: String,
    /// The data path that was missing, when that was the cause.
    pub missing_path: Option<String>,
    pub message: String,
}

/// The compiled templates of one flow, with the shared helpers.
#[derive(Clone, Debug)]
pub(crate) struct TemplateSet {
    hb: Handlebars<'static>,
}

impl Default for TemplateSet {
    fn default() -> Self {
        TemplateSet::new()
    }
}

impl TemplateSet {
    pub fn new() -> Self {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        helpers::register(&mut hb);
        TemplateSet { hb }
    }

    /// Compiles every string leaf below `value`, whose JSON pointer is `pointer`. Returns the
    /// compiled tree and every reference; problems are collected, not returned early.
    pub fn compile(
        &mut self,
        value: &Value,
        pointer: &str,
        references: &mut Vec<Reference>,
        problems: &mut Vec<TemplateProblem>,
    ) -> CompiledValue {
        match value {
            Value::String(source) if source.contains("{{") => {
                self.compile_string(source, pointer, references, problems)
            }
            Value::Object(map) => {
                let fields: Vec<(String, CompiledValue)> = map
                    .iter()
                    .map(|(key, v)| {
                        let child = format!("{pointer}/{}", escape_pointer(key));
                        (key.clone(), self.compile(v, &child, references, problems))
                    })
                    .collect();
                if fields
                    .iter()
                    .all(|(_, c)| matches!(c, CompiledValue::Literal(_)))
                {
                    CompiledValue::Literal(value.clone())
                } else {
                    CompiledValue::Object(fields)
                }
            }
            Value::Array(items) => {
                let compiled: Vec<CompiledValue> = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.compile(v, &format!("{pointer}/{i}"), references, problems))
                    .collect();
                if compiled
                    .iter()
                    .all(|c| matches!(c, CompiledValue::Literal(_)))
                {
                    CompiledValue::Literal(value.clone())
                } else {
                    CompiledValue::Array(compiled)
                }
            }
            other => CompiledValue::Literal(other.clone()),
        }
    }

    fn compile_string(
        &mut self,
        source: &str,
        pointer: &str,
        references: &mut Vec<Reference>,
        problems: &mut Vec<TemplateProblem>,
    ) -> CompiledValue {
        let template = match Template::compile(source) {
            Ok(t) => t,
            Err(e) => {
                problems.push(TemplateProblem::Syntax {
                    pointer: pointer.to_owned(),
                    message: describe_template_error(&e),
                });
                return CompiledValue::Literal(Value::String(source.to_owned()));
            }
        };
        let mut walker = Walker {
            pointer,
            references,
            problems,
        };
        walker.template(&template, false);
        if let Some(path) = whole_value_path(&template) {
            return CompiledValue::Path {
                pointer: pointer.to_owned(),
                path,
            };
        }
        if let Some((path, fallback)) = whole_value_default(&template) {
            return CompiledValue::Default {
                pointer: pointer.to_owned(),
                path,
                fallback,
            };
        }
        self.hb.register_template(pointer, template);
        CompiledValue::Text {
            pointer: pointer.to_owned(),
        }
    }

    /// Renders compiled inputs against `data` (`{trigger, steps, constants}`); `context` must
    /// wrap the same data (a run keeps its data as the context, so nothing is copied).
    pub fn render(
        &self,
        compiled: &CompiledValue,
        data: &Value,
        context: &Context,
    ) -> Result<Value, RenderFailure> {
        match compiled {
            CompiledValue::Literal(v) => Ok(v.clone()),
            CompiledValue::Path { pointer, path } => lookup(data, path).cloned().ok_or_else(|| {
                let dotted = path.join(".");
                RenderFailure {
                    pointer: pointer.clone(),
                    missing_path: Some(dotted.clone()),
                    message: format!("`{dotted}` is missing from the data"),
                }
            }),
            CompiledValue::Default { path, fallback, .. } => Ok(match lookup(data, path) {
                Some(v) if !v.is_null() && v.as_str() != Some("") => v.clone(),
                _ => fallback.clone(),
            }),
            CompiledValue::Text { pointer } => self
                .hb
                .render_with_context(pointer, context)
                .map(Value::String)
                .map_err(|e| {
                    let missing_path = match e.reason() {
                        RenderErrorReason::MissingVariable(path) => path.clone(),
                        _ => None,
                    };
                    let message = match &missing_path {
                        Some(path) => format!("`{path}` is missing from the data"),
                        None => e.reason().to_string(),
                    };
                    RenderFailure {
                        pointer: pointer.clone(),
                        missing_path,
                        message,
                    }
                }),
            CompiledValue::Object(fields) => {
                let mut map = serde_json::Map::with_capacity(fields.len());
                for (key, child) in fields {
                    map.insert(key.clone(), self.render(child, data, context)?);
                }
                Ok(Value::Object(map))
            }
            CompiledValue::Array(items) => items
                .iter()
                .map(|child| self.render(child, data, context))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
        }
    }
}

/// Follows `path` through objects and arrays.
pub fn lookup<'a>(data: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(data, |value, segment| match value {
        Value::Object(map) => map.get(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Escapes a key for use in a JSON pointer (RFC 6901).
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn describe_template_error(e: &TemplateError) -> String {
    let reason = e.reason().to_string();
    match e.pos() {
        Some((line, column)) => format!("{reason} (line {line}, column {column})"),
        None => reason,
    }
}

/// `Some((path, fallback))` when the template is exactly `{{default a.b <literal>}}`.
fn whole_value_default(template: &Template) -> Option<(Vec<String>, Value)> {
    match template.elements.as_slice() {
        [TemplateElement::Expression(h)] if h.hash.is_empty() => {
            match (&h.name, h.params.as_slice()) {
                (
                    Parameter::Name(name),
                    [
                        Parameter::Path(Path::Relative((segments, _))),
                        Parameter::Literal(fallback),
                    ],
                ) if name == "default" => Some((segment_names(segments), fallback.clone())),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `Some(path)` when the template is exactly one plain `{{a.b}}` expression.
fn whole_value_path(template: &Template) -> Option<Vec<String>> {
    match template.elements.as_slice() {
        [TemplateElement::Expression(h)] if h.params.is_empty() && h.hash.is_empty() => {
            match &h.name {
                Parameter::Path(Path::Relative((segments, _))) => Some(segment_names(segments)),
                Parameter::Name(name) if !helpers::HELPER_NAMES.contains(&name.as_str()) => {
                    Some(split_dotted(name))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn segment_names(segments: &[PathSeg]) -> Vec<String> {
    segments
        .iter()
        .filter_map(|s| match s {
            PathSeg::Named(name) => Some(strip_brackets(name).to_owned()),
            _ => None,
        })
        .collect()
}

fn split_dotted(name: &str) -> Vec<String> {
    name.split(['.', '/'])
        .filter(|s| !s.is_empty())
        .map(|s| strip_brackets(s).to_owned())
        .collect()
}

fn strip_brackets(segment: &str) -> &str {
    segment
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(segment)
}

/// Collects references and unknown helpers from a template's AST. Inside `each`/`with` blocks
/// paths are relative to the current item, so they are not checked against the roots.
struct Walker<'a> {
    pointer: &'a str,
    references: &'a mut Vec<Reference>,
    problems: &'a mut Vec<TemplateProblem>,
}

impl Walker<'_> {
    fn template(&mut self, template: &Template, scoped: bool) {
        for element in &template.elements {
            self.element(element, scoped);
        }
    }

    fn element(&mut self, element: &TemplateElement, scoped: bool) {
        match element {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) => {
                self.helper(h, scoped, false)
            }
            TemplateElement::HelperBlock(h) => self.helper(h, scoped, true),
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => {}
            _ => self.problems.push(TemplateProblem::Syntax {
                pointer: self.pointer.to_owned(),
                message: "partials and decorators are not supported in step inputs".into(),
            }),
        }
    }

    fn helper(&mut self, h: &HelperTemplate, scoped: bool, block: bool) {
        let plain = h.params.is_empty() && h.hash.is_empty() && !block;
        match &h.name {
            Parameter::Name(name) if plain && !helpers::HELPER_NAMES.contains(&name.as_str()) => {
                self.reference(split_dotted(name), scoped, false)
            }
            Parameter::Name(name) => {
                if !helpers::HELPER_NAMES.contains(&name.as_str()) {
                    self.problems.push(TemplateProblem::UnknownHelper {
                        pointer: self.pointer.to_owned(),
                        name: name.clone(),
                    });
                }
            }
            other => self.parameter(other, scoped, false),
        }
        // `default`'s first parameter may be missing: that is what `default` is for.
        let is_default = matches!(&h.name, Parameter::Name(n) if n == "default");
        for (i, p) in h.params.iter().enumerate() {
            self.parameter(p, scoped, is_default && i == 0);
        }
        for p in h.hash.values() {
            self.parameter(p, scoped, false);
        }
        let inner_scoped =
            scoped || matches!(&h.name, Parameter::Name(n) if n == "each" || n == "with");
        if let Some(t) = &h.template {
            self.template(t, inner_scoped);
        }
        if let Some(t) = &h.inverse {
            self.template(t, scoped);
        }
    }

    fn parameter(&mut self, p: &Parameter, scoped: bool, optional: bool) {
        match p {
            Parameter::Path(Path::Relative((segments, _))) => {
                self.reference(segment_names(segments), scoped, optional)
            }
            Parameter::Subexpression(sub) => self.element(&sub.element, scoped),
            _ => {}
        }
    }

    fn reference(&mut self, path: Vec<String>, scoped: bool, optional: bool) {
        if scoped || path.is_empty() || path[0] == "this" {
            return;
        }
        self.references.push(Reference {
            pointer: self.pointer.to_owned(),
            path,
            optional,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(
        value: Value,
    ) -> (
        TemplateSet,
        CompiledValue,
        Vec<Reference>,
        Vec<TemplateProblem>,
    ) {
        let mut set = TemplateSet::new();
        let mut refs = Vec::new();
        let mut problems = Vec::new();
        let compiled = set.compile(&value, "/inputs", &mut refs, &mut problems);
        (set, compiled, refs, problems)
    }

    fn render(value: Value, data: Value) -> Result<Value, RenderFailure> {
        let (set, compiled, _, problems) = compile(value);
        assert!(problems.is_empty(), "{problems:?}");
        set.render(&compiled, &data, &Context::from(data.clone()))
    }

    #[test]
    fn a_whole_default_keeps_types_and_falls_back() {
        let data = json!({"trigger": {"n": 3, "empty": ""}});
        let out = render(
            json!({"a": "{{default trigger.n 0}}", "b": "{{default trigger.missing null}}", "c": "{{default trigger.empty 5}}"}),
            data,
        )
        .unwrap();
        assert_eq!(out, json!({"a": 3, "b": null, "c": 5}));
    }

    #[test]
    fn whole_value_keeps_the_json_type() {
        let data = json!({"trigger": {"ticket_id": 42, "ticket": {"tags": ["a"]}, "ok": true}});
        let out = render(
            json!({"id": "{{trigger.ticket_id}}", "tags": "{{trigger.ticket.tags}}", "ok": "{{ trigger.ok }}", "n": 3}),
            data,
        )
        .unwrap();
        assert_eq!(out, json!({"id": 42, "tags": ["a"], "ok": true, "n": 3}));
    }

    #[test]
    fn text_templates_do_not_escape_and_stay_valid_json() {
        let data = json!({"trigger": {"ticket": {"details": "He said \"<no>\" &\nleft"}}});
        let out = render(json!({"note": "Copied: {{trigger.ticket.details}}"}), data).unwrap();
        assert_eq!(out["note"], "Copied: He said \"<no>\" &\nleft");
    }

    #[test]
    fn missing_values_are_errors_naming_the_path_and_input() {
        let data = json!({"trigger": {"ticket": {}}});
        let err = render(
            json!({"a": {"b": "x {{trigger.ticket.summary}}"}}),
            data.clone(),
        )
        .unwrap_err();
        assert_eq!(err.pointer, "/inputs/a/b");
        assert_eq!(err.missing_path.as_deref(), Some("trigger.ticket.summary"));
        let err = render(json!({"c": "{{trigger.nope}}"}), data).unwrap_err();
        assert_eq!(err.pointer, "/inputs/c");
        assert_eq!(err.message, "`trigger.nope` is missing from the data");
    }

    #[test]
    fn helpers_work_and_default_accepts_missing_values() {
        let data = json!({"trigger": {"recipients": ["a b", "c"], "event": "New Ticket Logged",
                                      "received_at": "2026-09-25T06:41:08.7895915Z", "team": ""}});
        let out = render(
            json!({
                "j": "{{join trigger.recipients \";\"}}",
                "l": "{{lower trigger.event}}",
                "u": "{{upper trigger.event}}",
                "d": "{{default trigger.missing \"fallback\"}}",
                "e": "{{default trigger.team \"Service Desk\"}}",
                "t": "{{date trigger.received_at \"%Y-%m-%d %H:%M\"}}",
                "q": "{{#if (eq trigger.event \"New Ticket Logged\")}}new{{else}}other{{/if}}",
                "s": "{{json trigger.recipients}}"
            }),
            data,
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"j": "a b;c", "l": "new ticket logged", "u": "NEW TICKET LOGGED", "d": "fallback",
                   "e": "Service Desk", "t": "2026-09-25 06:41", "q": "new", "s": "[\"a b\",\"c\"]"})
        );
    }

    #[test]
    fn references_and_problems_are_collected() {
        let (_, _, refs, problems) = compile(json!({
            "a": "{{steps.create.ticket_id}}",
            "b": "{{#if trigger.agent_assigned}}{{upper constants.team}}{{/if}}",
            "c": "{{#each trigger.recipients}}{{this}} {{name}}{{/each}}",
            "d": "{{frobnicate trigger.x}}",
            "e": "{{#if}}"
        }));
        let dotted: Vec<String> = refs.iter().map(Reference::dotted).collect();
        assert_eq!(
            dotted,
            [
                "steps.create.ticket_id",
                "trigger.agent_assigned",
                "constants.team",
                "trigger.recipients",
                "trigger.x"
            ]
        );
        assert!(problems.contains(&TemplateProblem::UnknownHelper {
            pointer: "/inputs/d".into(),
            name: "frobnicate".into()
        }));
        assert!(problems.iter().any(
            |p| matches!(p, TemplateProblem::Syntax { pointer, .. } if pointer == "/inputs/e")
        ));
    }
}
