//! The validation pipeline. Every check runs, even after others failed, so an author sees all
//! problems of a file at once.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use super::trigger_checks::{check_correlation, registered_trigger, unknown_trigger_output};
use super::{FLOW_SCHEMA, FlowDocument, Problem, ProblemCode, ValidatedFlow, ValidatedStep};
use crate::config::Config;
use crate::step::RegisteredTrigger;
use crate::step::{ConnectionKind, PathRule, RegisteredStep, StepRegistry};
use crate::template::{CompiledValue, Reference, TemplateProblem, TemplateSet, escape_pointer};

static FLOW_SCHEMA_VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: Value = serde_json::from_str(FLOW_SCHEMA).expect("the flow schema is JSON");
    jsonschema::draft202012::new(&schema).expect("the flow schema is a valid JSON Schema")
});

/// Validates flow documents against the step registry (and, when given, the config's
/// connections).
#[derive(Debug, Clone, Copy)]
pub struct FlowValidator<'a> {
    registry: &'a StepRegistry,
    config: Option<&'a Config>,
}

impl<'a> FlowValidator<'a> {
    pub fn new(registry: &'a StepRegistry) -> Self {
        FlowValidator {
            registry,
            config: None,
        }
    }

    /// Also check that every step's connection exists in `config`.
    pub fn with_config(mut self, config: &'a Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Validates every file; flows come back with the problems of all files (including flow
    /// ids used twice), each problem carrying its file.
    pub fn validate_files(&self, files: &[PathBuf]) -> (Vec<ValidatedFlow>, Vec<Problem>) {
        let mut flows: Vec<ValidatedFlow> = Vec::new();
        let mut problems = Vec::new();
        let mut seen: HashMap<String, PathBuf> = HashMap::new();
        for file in files {
            match self.validate_file(file) {
                Ok(flow) => {
                    if let Some(first) = seen.get(flow.id()) {
                        problems.push(Problem {
                            file: Some(file.clone()),
                            ..Problem::new(
                                "/id",
                                ProblemCode::DuplicateFlowId,
                                format!(
                                    "flow id `{}` is also used by {}",
                                    flow.id(),
                                    first.display()
                                ),
                                "give each flow its own id; the trigger URL is /triggers/<id>",
                            )
                        });
                    } else {
                        seen.insert(flow.id().to_owned(), file.clone());
                        flows.push(flow);
                    }
                }
                Err(mut found) => problems.append(&mut found),
            }
        }
        (flows, problems)
    }

    pub fn validate_file(&self, path: &Path) -> Result<ValidatedFlow, Vec<Problem>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Problem {
                file: Some(path.to_owned()),
                ..Problem::new(
                    "",
                    ProblemCode::UnreadableFile,
                    format!("cannot read the file: {e}"),
                    "check the path and its permissions",
                )
            }]
        })?;
        self.validate_str(&text, Some(path))
    }

    /// Runs the whole pipeline on one document.
    pub fn validate_str(
        &self,
        text: &str,
        file: Option<&Path>,
    ) -> Result<ValidatedFlow, Vec<Problem>> {
        let located = |mut problems: Vec<Problem>| {
            for p in &mut problems {
                p.file = file.map(Path::to_owned);
                p.position = p.position.or_else(|| super::locate(text, &p.pointer));
            }
            problems
        };
        let value: Value = serde_json::from_str(text).map_err(|e| {
            let mut problem = Problem::new(
                "",
                ProblemCode::InvalidJson,
                format!("not valid JSON: {e}"),
                "fix the JSON syntax at that line and column",
            );
            problem.position = Some((e.line(), e.column()));
            located(vec![problem])
        })?;
        let mut problems = flow_schema_problems(&value);
        let trigger = registered_trigger(self.registry, &value, &mut problems);
        if let Some(trigger) = trigger {
            check_correlation(&value, trigger, &mut problems);
        }
        let mut templates = TemplateSet::new();
        let compiled = self.check_steps(&value, trigger, &mut templates, &mut problems);
        let Some(trigger) = trigger.filter(|_| problems.is_empty()) else {
            return Err(located(problems));
        };
        let mut document: FlowDocument = serde_json::from_value(value).map_err(|e| {
            located(vec![Problem::new(
                "",
                ProblemCode::SchemaViolation,
                e.to_string(),
                "compare the flow with schemas/flow.schema.json",
            )])
        })?;
        let flood = &mut document.trigger.flood_control;
        if flood.correlate_on.is_empty() {
            let defaults = &trigger.description().default_correlate_on;
            flood.correlate_on = defaults.iter().map(|&o| o.to_owned()).collect();
        }
        let steps = build_steps(&document.steps, compiled);
        Ok(ValidatedFlow {
            document,
            trigger: trigger.clone(),
            source: file.map(Path::to_owned),
            positions: template_positions(text, &steps),
            steps,
            templates,
        })
    }

    /// Semantic checks on the raw document, tolerant of parts the schema already rejected.
    /// Returns the compiled steps (meaningful only without problems).
    fn check_steps(
        &self,
        flow: &Value,
        trigger: Option<&RegisteredTrigger>,
        templates: &mut TemplateSet,
        problems: &mut Vec<Problem>,
    ) -> Vec<CompiledStep> {
        let Some(steps) = flow.get("steps").and_then(Value::as_array) else {
            return Vec::new();
        };
        let mut index = HashMap::new();
        self.index_steps(steps, "/steps", &mut index, problems);
        let mut check = Check {
            scope: Scope {
                index,
                trigger,
                constants: flow.get("constants").and_then(Value::as_object),
                seen: HashSet::new(),
            },
            templates,
            problems,
        };
        self.check_sequence(steps, "/steps", &HashSet::new(), &mut check)
    }

    /// Every step id in the tree (paths included) with its type; ids used twice are problems.
    fn index_steps<'v>(
        &self,
        steps: &'v [Value],
        prefix: &str,
        index: &mut HashMap<&'v str, Option<RegisteredStep>>,
        problems: &mut Vec<Problem>,
    ) {
        for (i, step) in steps.iter().enumerate() {
            if let Some(id) = step.get("id").and_then(Value::as_str) {
                let registered = step
                    .get("type")
                    .and_then(Value::as_str)
                    .and_then(|t| self.registry.get(t))
                    .cloned();
                if index.contains_key(id) {
                    problems.push(Problem::new(
                        format!("{prefix}/{i}/id"),
                        ProblemCode::DuplicateStepId,
                        format!("step id `{id}` is used by an earlier step too"),
                        "step ids must be unique within a flow, paths included; rename one of them",
                    ));
                } else {
                    index.insert(id, registered);
                }
            }
            for (name, path) in step
                .get("paths")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if let Some(path) = path.as_array() {
                    self.index_steps(
                        path,
                        &format!("{prefix}/{i}/paths/{}", escape_pointer(name)),
                        index,
                        problems,
                    );
                }
            }
        }
    }

    /// Checks one sequence of steps. `guaranteed` holds the steps that surely ran before it.
    fn check_sequence(
        &self,
        steps: &[Value],
        prefix: &str,
        guaranteed: &HashSet<String>,
        check: &mut Check<'_, '_>,
    ) -> Vec<CompiledStep> {
        let mut guaranteed = guaranteed.clone();
        let mut compiled = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let pointer = format!("{prefix}/{i}");
            let registered = self.registered_type(step, &pointer, check.problems);
            let empty = Value::Object(Default::default());
            let inputs = step
                .get("inputs")
                .filter(|i| i.is_object())
                .unwrap_or(&empty);
            let inputs_pointer = format!("{pointer}/inputs");
            if let Some(registered) = registered {
                self.check_connection(step, &pointer, registered, check.problems);
                check_inputs(registered, inputs, &inputs_pointer, check.problems);
            }
            let (inputs, references) = check.compile_inputs(inputs, &inputs_pointer, &guaranteed);
            // The step has run for everything after it, its own paths included.
            if let Some(id) = step.get("id").and_then(Value::as_str) {
                check.scope.seen.insert(id.to_owned());
                guaranteed.insert(id.to_owned());
            }
            let paths = self.check_paths(step, registered, &pointer, &guaranteed, check);
            if let Some(registered) = registered {
                compiled.push(CompiledStep {
                    registered: registered.clone(),
                    inputs,
                    references,
                    paths,
                });
            }
        }
        compiled
    }

    /// The step's registered type; an unknown one is a problem.
    fn registered_type(
        &self,
        step: &Value,
        pointer: &str,
        problems: &mut Vec<Problem>,
    ) -> Option<&'a RegisteredStep> {
        let step_type = step.get("type").and_then(Value::as_str)?;
        let registered = self.registry.get(step_type);
        if registered.is_none() {
            problems.push(Problem::new(
                format!("{pointer}/type"),
                ProblemCode::UnknownStepType,
                format!("unknown step type `{step_type}`"),
                format!(
                    "use one of: {}",
                    self.registry.type_names().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        registered
    }

    /// A branching step's paths, each checked as a sequence of its own; the names must be
    /// the step's.
    fn check_paths(
        &self,
        step: &Value,
        registered: Option<&RegisteredStep>,
        pointer: &str,
        guaranteed: &HashSet<String>,
        check: &mut Check<'_, '_>,
    ) -> Vec<(String, Vec<CompiledStep>)> {
        let path_defs = step.get("paths").and_then(Value::as_object);
        if let (Some(registered), Some(path_defs)) = (registered, path_defs) {
            check_path_names(registered, path_defs, pointer, check.problems);
        }
        let mut paths = Vec::new();
        for (name, path) in path_defs.into_iter().flatten() {
            if let Some(path) = path.as_array() {
                let prefix = format!("{pointer}/paths/{}", escape_pointer(name));
                let compiled = self.check_sequence(path, &prefix, guaranteed, check);
                paths.push((name.clone(), compiled));
            }
        }
        paths
    }

    fn check_connection(
        &self,
        step: &Value,
        pointer: &str,
        registered: &RegisteredStep,
        problems: &mut Vec<Problem>,
    ) {
        let named = step.get("connection").and_then(Value::as_str);
        let step_type = registered.description().type_name;
        match registered.description().connection_kind {
            None => {
                if named.is_some() {
                    problems.push(Problem::new(
                        format!("{pointer}/connection"),
                        ProblemCode::ConnectionNotAllowed,
                        format!("step type `{step_type}` takes no connection"),
                        "remove \"connection\"",
                    ));
                }
            }
            Some(kind) => {
                let Some(config) = self.config else { return };
                let Some(name) = named.or(kind.default_name()) else {
                    return;
                };
                let known = config.connection_names(kind.config_table());
                if !known.contains(&name) {
                    let at = if named.is_some() {
                        format!("{pointer}/connection")
                    } else {
                        pointer.to_owned()
                    };
                    problems.push(unknown_connection(at, kind.config_table(), name, &known));
                }
            }
        }
    }
}

/// A step names a connection the config file does not have.
fn unknown_connection(at: String, table: &str, name: &str, known: &[&str]) -> Problem {
    let others = if known.is_empty() {
        "none is configured".to_owned()
    } else {
        format!("configured: {}", known.join(", "))
    };
    Problem::new(
        at,
        ProblemCode::UnknownConnection,
        format!("no {table} connection named `{name}` in the config file ({others})"),
        format!(
            "add a [{table}.{name}] table to the config file or set \"connection\" to a configured one"
        ),
    )
}

/// Pairs the typed steps with their compiled checks, paths included.
fn build_steps(defs: &[super::StepDef], compiled: Vec<CompiledStep>) -> Vec<ValidatedStep> {
    defs.iter()
        .zip(compiled)
        .map(|(def, compiled)| ValidatedStep {
            id: def.id.clone(),
            name: def.name.clone(),
            connection: compiled
                .registered
                .description()
                .connection_kind
                .and_then(|kind| {
                    def.connection
                        .clone()
                        .or(kind.default_name().map(str::to_owned))
                }),
            retry: def.retry.unwrap_or_default(),
            paths: compiled
                .paths
                .into_iter()
                .map(|(name, path)| {
                    let path_defs = def.paths.get(&name).map(Vec::as_slice).unwrap_or_default();
                    (name, build_steps(path_defs, path))
                })
                .collect(),
            registered: compiled.registered,
            inputs: compiled.inputs,
            references: compiled.references,
        })
        .collect()
}

/// Calls `f` on every step, paths included, in document order.
pub(crate) fn for_each_step<'a>(steps: &'a [ValidatedStep], f: &mut dyn FnMut(&'a ValidatedStep)) {
    for step in steps {
        f(step);
        for (_, path) in &step.paths {
            for_each_step(path, f);
        }
    }
}

/// The flow schema's problems, but for step inputs: they are checked against the registry,
/// with better messages (and for steps an embedder registered, which the schema does not know).
fn flow_schema_problems(value: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    for error in FLOW_SCHEMA_VALIDATOR.iter_errors(value) {
        if !is_step_inputs(&error.instance_path().to_string()) {
            schema_problems(&error, "", &mut problems);
        }
    }
    problems
}

/// Where each template of the steps' inputs is in the file, for errors when rendering.
fn template_positions(text: &str, steps: &[ValidatedStep]) -> HashMap<String, (usize, usize)> {
    let mut pointers = Vec::new();
    for_each_step(steps, &mut |step| {
        pointers.extend(template_pointers(&step.inputs))
    });
    let located = pointers.into_iter().filter_map(|pointer| {
        let position = super::locate(text, &pointer)?;
        Some((pointer, position))
    });
    located.collect()
}

/// The pointers of every template leaf in compiled inputs.
fn template_pointers(compiled: &CompiledValue) -> Vec<String> {
    match compiled {
        CompiledValue::Literal(_) => Vec::new(),
        CompiledValue::Path { pointer, .. }
        | CompiledValue::Default { pointer, .. }
        | CompiledValue::Text { pointer } => {
            vec![pointer.clone()]
        }
        CompiledValue::Object(fields) => fields
            .iter()
            .flat_map(|(_, c)| template_pointers(c))
            .collect(),
        CompiledValue::Array(items) => items.iter().flat_map(template_pointers).collect(),
    }
}

/// A step's `inputs` or below, at the top level (`/steps/<n>/inputs`) or on a path at any depth
/// (`/steps/<n>/paths/<name>/<m>/inputs`). Walks the pointer rather than searching it for
/// `/inputs`, since a path may itself be named `inputs`.
fn is_step_inputs(pointer: &str) -> bool {
    let mut parts = pointer.split('/').skip(1);
    if parts.next() != Some("steps") {
        return false;
    }
    loop {
        if parts.next().is_none_or(|i| i.parse::<usize>().is_err()) {
            return false;
        }
        match parts.next() {
            Some("inputs") => return true,
            // The path's name, then the index of a step on it.
            Some("paths") if parts.next().is_some() => {}
            _ => return false,
        }
    }
}

/// Secrets are by reference only: a step that takes an `[http.<name>]` connection gets its
/// credentials from that connection, so its `headers` input may not name a credential header
/// (the value would sit in the flow file and, rendered, in the run history unmasked). Header
/// names are object keys, never templates, so this is known when the flow loads.
fn check_credential_headers(inputs: &Value, inputs_pointer: &str, problems: &mut Vec<Problem>) {
    let Some(headers) = inputs.get("headers").and_then(Value::as_object) else {
        return;
    };
    for name in headers
        .keys()
        .filter(|n| crate::steps::HttpRequest::is_credential_header(n))
    {
        problems.push(Problem::new(
            format!("{inputs_pointer}/headers/{}", escape_pointer(name)),
            ProblemCode::InvalidStepInput,
            crate::steps::HttpRequest::credential_header_message(name),
            "remove the header and set \"connection\" on the step; the connection adds its credentials to every request",
        ));
    }
}

fn input_hint(registered: &RegisteredStep) -> String {
    let schema = &registered.description().input_schema;
    let names: Vec<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    format!(
        "`{}` takes: {}",
        registered.description().type_name,
        names.join(", ")
    )
}

/// The schema's description of the input at `pointer` (relative to `inputs`).
fn input_description(schema: &Value, pointer: &str) -> String {
    let name = pointer
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    schema["properties"][name]["description"]
        .as_str()
        .map(|d| format!("`{name}`: {d}"))
        .unwrap_or_default()
}

fn template_problem(problem: TemplateProblem) -> Problem {
    match problem {
        TemplateProblem::Syntax { pointer, message } => Problem::new(
            pointer,
            ProblemCode::TemplateSyntax,
            format!("template does not parse: {message}"),
            "check that every {{ has a matching }} and every {{#block}} its {{/block}}",
        ),
        TemplateProblem::UnknownHelper { pointer, name } => Problem::new(
            pointer,
            ProblemCode::UnknownHelper,
            format!("unknown template helper `{name}`"),
            "helpers: default, json, join, lower, upper, date, eq, ne, gt, lt, and, or, not, if, unless, each, with",
        ),
    }
}

/// What the checks of one flow share while walking its steps.
struct Scope<'v> {
    /// Every step id of the flow (paths included) and its type when known.
    index: HashMap<&'v str, Option<RegisteredStep>>,
    /// The flow's trigger type, when it is registered.
    trigger: Option<&'v RegisteredTrigger>,
    constants: Option<&'v serde_json::Map<String, Value>>,
    /// Steps that come before, in document order, whether or not they surely run.
    seen: HashSet<String>,
}

/// What checking a flow's steps carries along: its scope, the templates compiled so far, and
/// the problems found.
struct Check<'v, 't> {
    scope: Scope<'v>,
    templates: &'t mut TemplateSet,
    problems: &'t mut Vec<Problem>,
}

impl Check<'_, '_> {
    /// Compiles a step's input templates and checks what they read.
    fn compile_inputs(
        &mut self,
        inputs: &Value,
        inputs_pointer: &str,
        guaranteed: &HashSet<String>,
    ) -> (CompiledValue, Vec<Reference>) {
        let mut references = Vec::new();
        let mut template_problems = Vec::new();
        let compiled = self.templates.compile(
            inputs,
            inputs_pointer,
            &mut references,
            &mut template_problems,
        );
        (self.problems).extend(template_problems.into_iter().map(template_problem));
        for reference in &references {
            if let Some(problem) = check_reference(reference, guaranteed, &self.scope) {
                self.problems.push(problem);
            }
        }
        (compiled, references)
    }
}

/// A step's inputs against its type's schema (templates allowed in place of values), and
/// credentials written into HTTP headers.
fn check_inputs(
    registered: &RegisteredStep,
    inputs: &Value,
    inputs_pointer: &str,
    problems: &mut Vec<Problem>,
) {
    let mut found = Vec::new();
    for error in registered.relaxed_schema.iter_errors(inputs) {
        schema_problems(&error, inputs_pointer, &mut found);
    }
    let schema = &registered.description().input_schema;
    for mut p in found {
        p.hint = match p.code {
            ProblemCode::MissingField | ProblemCode::UnknownField => input_hint(registered),
            _ => input_description(schema, &p.pointer[inputs_pointer.len()..]),
        };
        p.code = ProblemCode::InvalidStepInput;
        problems.push(p);
    }
    if registered.description().connection_kind == Some(ConnectionKind::HTTP) {
        check_credential_headers(inputs, inputs_pointer, problems);
    }
}

/// A step's compiled inputs and paths, for building the validated flow.
struct CompiledStep {
    registered: RegisteredStep,
    inputs: CompiledValue,
    references: Vec<Reference>,
    paths: Vec<(String, Vec<CompiledStep>)>,
}

fn check_path_names(
    registered: &RegisteredStep,
    paths: &serde_json::Map<String, Value>,
    pointer: &str,
    problems: &mut Vec<Problem>,
) {
    let step_type = registered.description().type_name;
    match registered.description().paths {
        PathRule::None if !paths.is_empty() => {
            problems.push(Problem::new(
                format!("{pointer}/paths"),
                ProblemCode::PathsNotAllowed,
                format!("step type `{step_type}` does not branch, so it has no paths"),
                "remove \"paths\" or use core.switch or core.condition",
            ));
        }
        PathRule::Named(names) => {
            for name in paths.keys().filter(|n| !names.contains(&n.as_str())) {
                problems.push(Problem::new(
                    format!("{pointer}/paths/{}", escape_pointer(name)),
                    ProblemCode::UnknownPath,
                    format!("`{step_type}` has no path `{name}`"),
                    format!("its paths: {}", names.join(", ")),
                ));
            }
        }
        _ => {}
    }
}

/// What a template reads must exist and, for a step's outputs, surely have run before.
fn check_reference(
    reference: &Reference,
    guaranteed: &HashSet<String>,
    scope: &Scope<'_>,
) -> Option<Problem> {
    let dotted = reference.dotted();
    let problem = |code, message: String, hint: String| {
        Some(Problem::new(reference.pointer.clone(), code, message, hint))
    };
    let second = reference.path.get(1).map(String::as_str);
    match reference.path[0].as_str() {
        "trigger" => match (second, scope.trigger) {
            (Some(output), Some(trigger)) if !trigger.has_output(output) => Some(
                unknown_trigger_output(trigger, reference.pointer.clone(), &dotted, output),
            ),
            _ => None,
        },
        "constants" => match second {
            Some(name) if !scope.constants.is_some_and(|c| c.contains_key(name)) => problem(
                ProblemCode::UnknownConstant,
                format!("`{dotted}`: there is no constant `{name}`"),
                format!("add \"{name}\" under \"constants\""),
            ),
            _ => None,
        },
        "steps" => check_step_reference(reference, &dotted, guaranteed, scope),
        root => problem(
            ProblemCode::UnknownReference,
            format!("`{dotted}` does not start with trigger, steps or constants"),
            format!(
                "write {{{{trigger.{dotted}}}}}, {{{{steps.<id>.{dotted}}}}} or {{{{constants.{root}}}}}"
            ),
        ),
    }
}

/// `steps.<id>.<output>`: the step exists, runs before this one (surely, unless read
/// through `default`), and has that output.
fn check_step_reference(
    reference: &Reference,
    dotted: &str,
    guaranteed: &HashSet<String>,
    scope: &Scope<'_>,
) -> Option<Problem> {
    let problem = |code, message: String, hint: String| {
        Some(Problem::new(reference.pointer.clone(), code, message, hint))
    };
    let Some(id) = reference.path.get(1).map(String::as_str) else {
        return problem(
            ProblemCode::UnknownStep,
            format!("`{dotted}` names no step"),
            format!("write steps.<id>.<output>; {}", surely_before(guaranteed)),
        );
    };
    let Some(registered) = scope.index.get(id) else {
        return problem(
            ProblemCode::UnknownStep,
            format!("`{dotted}`: there is no step `{id}`"),
            surely_before(guaranteed),
        );
    };
    if !scope.seen.contains(id) {
        return problem(
            ProblemCode::LaterStepReference,
            format!("`{dotted}`: step `{id}` does not run before this step"),
            format!(
                "a step can only use outputs of earlier steps; move `{id}` before this step or use another value ({})",
                surely_before(guaranteed)
            ),
        );
    }
    if !guaranteed.contains(id) && !reference.optional {
        return problem(
            ProblemCode::MaybeNotRunReference,
            format!("`{dotted}`: step `{id}` is on a path that might not have run"),
            format!(
                "read it through default, e.g. {{{{default {dotted} \"none\"}}}}, or move the step out of the path"
            ),
        );
    }
    let (Some(registered), Some(output)) = (registered, reference.path.get(2)) else {
        return None;
    };
    let outputs = &registered.description().outputs;
    if outputs.iter().any(|o| o.name == output) {
        return None;
    }
    let names: Vec<&str> = outputs.iter().map(|o| o.name).collect();
    problem(
        ProblemCode::UnknownStepOutput,
        format!(
            "`{dotted}`: step `{id}` ({}) has no output `{output}`",
            registered.description().type_name
        ),
        format!("its outputs: {}", names.join(", ")),
    )
}

/// The steps that surely run before this one, for hints.
fn surely_before(guaranteed: &HashSet<String>) -> String {
    let mut names: Vec<&str> = guaranteed.iter().map(String::as_str).collect();
    names.sort();
    if names.is_empty() {
        "no step surely runs before this one".to_owned()
    } else {
        format!(
            "steps that surely run before this one: {}",
            names.join(", ")
        )
    }
}

/// Turns one schema error into problems: of the flow (`prefix` empty) or of a step's inputs.
fn schema_problems(
    error: &jsonschema::ValidationError<'_>,
    prefix: &str,
    problems: &mut Vec<Problem>,
) {
    let at = format!("{prefix}{}", error.instance_path());
    let what = if prefix.ends_with("/inputs") {
        "input"
    } else {
        "field"
    };
    match error.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            problems.push(Problem::new(
                at,
                ProblemCode::MissingField,
                format!("missing required {what} `{name}`"),
                flow_hint(prefix, || format!("add \"{name}\"")),
            ));
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            for name in unexpected {
                problems.push(Problem::new(
                    format!("{at}/{}", escape_pointer(name)),
                    ProblemCode::UnknownField,
                    format!("unknown {what} `{name}`"),
                    flow_hint(prefix, || {
                        "remove it or fix its spelling (see schemas/flow.schema.json)".to_owned()
                    }),
                ));
            }
        }
        // Relaxed step schemas wrap values in anyOf [original, template]; the first branch
        // explains the real expectation.
        ValidationErrorKind::AnyOf { context } if context.len() == 2 && !context[0].is_empty() => {
            for inner in &context[0] {
                schema_problems(inner, prefix, problems);
            }
        }
        kind => problems.push(Problem::new(
            at,
            problem_code(kind),
            match kind {
                // An id pattern (integrations' steps take numeric ids): say what it means.
                ValidationErrorKind::Pattern { pattern } if pattern.starts_with("^[0-9]+") => {
                    "must be a whole number (an id) or a template".to_owned()
                }
                _ => error.masked().to_string(),
            },
            flow_hint(prefix, || {
                "see the field's description in schemas/flow.schema.json".to_owned()
            }),
        )),
    }
}

/// The problem code of a schema error that is not about a field's presence.
fn problem_code(kind: &ValidationErrorKind) -> ProblemCode {
    match kind {
        ValidationErrorKind::Type { .. } => ProblemCode::InvalidType,
        ValidationErrorKind::Enum { .. }
        | ValidationErrorKind::Constant { .. }
        | ValidationErrorKind::Pattern { .. }
        | ValidationErrorKind::MinLength { .. }
        | ValidationErrorKind::Minimum { .. } => ProblemCode::InvalidValue,
        _ => ProblemCode::SchemaViolation,
    }
}

/// A hint for a problem of the flow itself; a step input's hint is added by its caller.
fn flow_hint(prefix: &str, hint: impl FnOnce() -> String) -> String {
    if prefix.is_empty() {
        hint()
    } else {
        String::new()
    }
}
