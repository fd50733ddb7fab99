//! Flow validation: every problem reported at once, with pointers, codes and hints; through the
//! library and through `haloflow validate`.

use std::path::Path;
use std::process::Command;

use haloflow::flow::{FlowValidator, Problem, ProblemCode};
use serde_json::{Value, json};

fn validate(flow: Value) -> Result<haloflow::flow::ValidatedFlow, Vec<Problem>> {
    let registry = haloflow::bundled::integrations().registry();
    FlowValidator::new(&registry).validate_str(&flow.to_string(), None)
}

fn codes_at(problems: &[Problem]) -> Vec<(String, ProblemCode)> {
    problems
        .iter()
        .map(|p| (p.pointer.clone(), p.code))
        .collect()
}

fn base_flow(steps: Value) -> Value {
    json!({
        "id": "t",
        "name": "test",
        "trigger": {"type": "halo.incidents", "auth": {"type": "url_key", "secret_name": "KEY"}},
        "constants": {"team": "Ops"},
        "steps": steps
    })
}

#[test]
fn a_flow_with_three_kinds_of_mistakes_reports_all_three() {
    let flow = base_flow(json!([
        {"id": "create", "type": "halo.create_ticket",
         "inputs": {"summary": "{{trigger.ticket.summary}} for {{steps.note.action_id}}", "sumary": "typo"}},
        {"id": "note", "type": "halo.add_note", "inputs": {}}
    ]));
    let problems = validate(flow).unwrap_err();
    let found = codes_at(&problems);
    assert!(
        found.contains(&(
            "/steps/0/inputs/sumary".into(),
            ProblemCode::InvalidStepInput
        )),
        "{problems:#?}"
    );
    assert!(
        found.contains(&("/steps/1/type".into(), ProblemCode::UnknownStepType)),
        "{problems:#?}"
    );
    assert!(
        found.contains(&(
            "/steps/0/inputs/summary".into(),
            ProblemCode::LaterStepReference
        )),
        "{problems:#?}"
    );
    assert_eq!(problems.len(), 3, "{problems:#?}");
    let unknown = problems
        .iter()
        .find(|p| p.code == ProblemCode::UnknownStepType)
        .unwrap();
    assert!(
        unknown.hint.contains("halo.add_action"),
        "the hint lists the known types: {}",
        unknown.hint
    );
}

#[test]
fn a_reference_to_a_later_step_is_rejected_at_load() {
    let flow = base_flow(json!([
        {"id": "first", "type": "halo.add_action",
         "inputs": {"ticket_id": "{{steps.second.ticket_id}}", "outcome": "Note"}},
        {"id": "second", "type": "halo.create_ticket", "inputs": {"summary": "x"}}
    ]));
    let problems = validate(flow).unwrap_err();
    assert_eq!(
        codes_at(&problems),
        [(
            "/steps/0/inputs/ticket_id".to_owned(),
            ProblemCode::LaterStepReference
        )]
    );
    assert!(
        problems[0].message.contains("steps.second.ticket_id"),
        "{}",
        problems[0].message
    );
    // A step may not read its own outputs either.
    let own = base_flow(
        json!([{"id": "a", "type": "halo.create_ticket", "inputs": {"summary": "{{steps.a.ticket_id}}"}}]),
    );
    assert_eq!(
        codes_at(&validate(own).unwrap_err())[0].1,
        ProblemCode::LaterStepReference
    );
}

#[test]
fn every_reference_kind_is_checked() {
    let flow = base_flow(json!([
        {"id": "create", "type": "halo.create_ticket", "inputs": {
            "summary": "{{trigger.tikcet.summary}}",
            "team": "{{constants.tema}}",
            "details": "{{ticket.details}}",
            "category_1": "{{shout trigger.event}}",
            "category_2": "{{#if trigger.event}}unclosed"
        }},
        {"id": "note", "type": "halo.add_action", "inputs": {
            "ticket_id": "{{steps.create.ticket_idd}}",
            "outcome": "Note",
            "note": "{{steps.nothere.x}}"
        }},
        {"id": "note", "type": "halo.add_action", "inputs": {"ticket_id": 1, "outcome_id": 7}}
    ]));
    let found = codes_at(&validate(flow).unwrap_err());
    for expected in [
        ("/steps/0/inputs/summary", ProblemCode::UnknownTriggerOutput),
        ("/steps/0/inputs/team", ProblemCode::UnknownConstant),
        ("/steps/0/inputs/details", ProblemCode::UnknownReference),
        ("/steps/0/inputs/category_1", ProblemCode::UnknownHelper),
        ("/steps/0/inputs/category_2", ProblemCode::TemplateSyntax),
        ("/steps/1/inputs/ticket_id", ProblemCode::UnknownStepOutput),
        ("/steps/1/inputs/note", ProblemCode::UnknownStep),
        ("/steps/2/id", ProblemCode::DuplicateStepId),
    ] {
        assert!(
            found.contains(&(expected.0.to_owned(), expected.1)),
            "missing {expected:?} in {found:#?}"
        );
    }
}

#[test]
fn schema_problems_name_the_field() {
    let flow = json!({
        "id": "Bad Id",
        "trigger": {"type": "halo.incidents", "auth": {"type": "url_key", "secret_name": "KEY", "secret": "inline!"}},
        "steps": [{"id": "a", "type": "halo.create_ticket", "inputs": {"summary": 5, "client_id": "twelve"}}],
        "extra": true
    });
    let problems = validate(flow).unwrap_err();
    let found = codes_at(&problems);
    for expected in [
        ("/id", ProblemCode::InvalidValue),
        ("", ProblemCode::MissingField),
        ("/extra", ProblemCode::UnknownField),
        ("/trigger/auth/secret", ProblemCode::UnknownField),
        ("/steps/0/inputs/summary", ProblemCode::InvalidStepInput),
        ("/steps/0/inputs/client_id", ProblemCode::InvalidStepInput),
    ] {
        assert!(
            found.contains(&(expected.0.to_owned(), expected.1)),
            "missing {expected:?} in {problems:#?}"
        );
    }
    let missing = problems
        .iter()
        .find(|p| p.code == ProblemCode::MissingField)
        .unwrap();
    assert_eq!(missing.message, "missing required field `name`");
    // No problem text repeats the inline value an author mistakenly wrote.
    assert!(
        problems.iter().all(|p| !p.to_string().contains("inline!")),
        "{problems:#?}"
    );
}

#[test]
fn unknown_connections_are_reported_when_a_config_is_given() {
    let flow = base_flow(
        json!([{"id": "a", "type": "halo.create_ticket", "connection": "elsewhere", "inputs": {"summary": "x"}}]),
    );
    let config = haloflow::bundled::integrations()
        .parse_config(
            "[halo.halo]\nbase_url = \"http://h\"\nclient_id = \"c\"\nclient_secret_name = \"S\"\n",
        )
        .unwrap();
    let registry = haloflow::bundled::integrations().registry();
    let problems = FlowValidator::new(&registry)
        .with_config(&config)
        .validate_str(&flow.to_string(), None)
        .unwrap_err();
    assert_eq!(
        codes_at(&problems),
        [(
            "/steps/0/connection".to_owned(),
            ProblemCode::UnknownConnection
        )]
    );
    assert!(
        problems[0].hint.contains("[halo.elsewhere]"),
        "{}",
        problems[0].hint
    );
}

#[test]
fn invalid_json_names_line_and_column() {
    let registry = haloflow::bundled::integrations().registry();
    let problems = FlowValidator::new(&registry)
        .validate_str("{\n  \"id\": \"x\",\n  oops\n}", Some(Path::new("f.json")))
        .unwrap_err();
    assert_eq!(problems.len(), 1);
    let text = problems[0].to_string();
    assert!(text.starts_with("f.json:3:3: /: [invalid_json]"), "{text}");
    assert!(text.contains("line 3 column 3"), "{text}");
}

#[test]
fn the_shipped_flows_are_valid() {
    let registry = haloflow::bundled::integrations().registry();
    let config = haloflow::bundled::integrations()
        .load_config(Path::new("examples/haloflow.toml"))
        .unwrap();
    let files = haloflow::internals::flow::flow_files(Path::new("flows")).unwrap();
    assert!(files.len() >= 2);
    let (flows, problems) = FlowValidator::new(&registry)
        .with_config(&config)
        .validate_files(&files);
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(flows.len(), files.len());
}

#[test]
fn the_cli_prints_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.json"),
        base_flow(json!([
            {"id": "a", "type": "halo.create_ticket", "inputs": {"summary": "{{steps.b.ticket_id}}", "sumary": 1}},
            {"id": "b", "type": "halo.nope"}
        ]))
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("good.json"),
        base_flow(json!([{"id": "a", "type": "halo.create_ticket", "inputs": {"summary": "x"}}]))
            .to_string()
            .replace("\"t\"", "\"good\""),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_haloflow"))
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let bad = dir.path().join("bad.json").display().to_string();
    // `file:line:column: /pointer: [code] message. hint`
    for (pointer, rest) in [
        (
            "/steps/0/inputs/sumary",
            "[invalid_step_input] unknown input `sumary`. `halo.create_ticket` takes: ",
        ),
        (
            "/steps/1/type",
            "[unknown_step_type] unknown step type `halo.nope`. use one of: ",
        ),
        (
            "/steps/0/inputs/summary",
            "[later_step_reference] `steps.b.ticket_id`: step `b` does not run before this step. ",
        ),
    ] {
        let found = stdout
            .lines()
            .find(|l| l.contains(&format!(": {pointer}: {rest}")));
        let line = found.unwrap_or_else(|| panic!("no line for {pointer} in:\n{stdout}"));
        let place = line
            .strip_prefix(&format!("{bad}:"))
            .unwrap()
            .split(": ")
            .next()
            .unwrap();
        let (row, column) = place.split_once(':').unwrap();
        assert!(
            row.parse::<usize>().is_ok() && column.parse::<usize>().is_ok(),
            "{line}"
        );
    }
    let json = Command::new(env!("CARGO_BIN_EXE_haloflow"))
        .args(["validate", "--format", "json"])
        .arg(dir.path())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["problems"].as_array().unwrap().len(), 3);
    assert_eq!(report["valid"][0]["id"], "good");
    let first = &report["problems"][0];
    assert!(
        first["code"].is_string() && first["pointer"].is_string() && first["position"].is_array(),
        "{first}"
    );
    assert!(stdout.contains("good.json: ok: flow `good`"), "{stdout}");
}

#[test]
fn a_bad_input_on_a_path_is_reported_once() {
    // The file-level schema also describes step inputs; its copy of this problem must not be
    // reported next to the step registry's, at any depth of paths.
    let flow = base_flow(json!([
        {"id": "c", "type": "core.condition", "inputs": {"conditions": [{"left": 1, "op": "equals", "right": 1}]},
         "paths": {"true": [
            {"id": "s", "type": "core.switch", "inputs": {"value": 1}, "paths": {"inputs": [
                {"id": "a", "type": "halo.create_ticket", "inputs": {"summary": 5}}
            ]}}
         ], "false": [
            {"id": "b", "type": "halo.add_action", "inputs": {"ticket_id": 1, "outcome": "Note", "note": ["not text"]}}
         ]}}
    ]));
    let problems = validate(flow).unwrap_err();
    let mut found = codes_at(&problems);
    found.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        found,
        [
            (
                "/steps/0/paths/false/0/inputs/note".to_owned(),
                ProblemCode::InvalidStepInput
            ),
            (
                "/steps/0/paths/true/0/paths/inputs/0/inputs/summary".to_owned(),
                ProblemCode::InvalidStepInput
            ),
        ],
        "{problems:#?}"
    );
}

#[test]
fn credential_headers_are_rejected_when_the_flow_loads() {
    let flow = base_flow(json!([
        {"id": "call", "type": "http.request", "inputs": {"url": "https://api.example.org/x", "headers": {
            "Accept": "application/json",
            "authorization": "Bearer sk-live-123",
            "X-API-Key": "{{trigger.ticket.summary}}",
            "Cookie": "session=abc",
            "Proxy-Authorization": "Basic dTpw"
        }}}
    ]));
    let problems = validate(flow).unwrap_err();
    let mut found = codes_at(&problems);
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<(String, ProblemCode)> = [
        "Cookie",
        "Proxy-Authorization",
        "X-API-Key",
        "authorization",
    ]
    .iter()
    .map(|h| {
        (
            format!("/steps/0/inputs/headers/{h}"),
            ProblemCode::InvalidStepInput,
        )
    })
    .collect();
    assert_eq!(found, expected, "{problems:#?}");
    for problem in &problems {
        assert!(
            problem.message.contains("[http.<name>] connection"),
            "the message points at connections: {problem}"
        );
        assert!(
            !problem.to_string().contains("sk-live-123"),
            "the value is not repeated: {problem}"
        );
    }
}
