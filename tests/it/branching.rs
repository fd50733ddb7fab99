//! Switch and Condition: different paths for assigned and unassigned tickets, and the load-time
//! checks of references across paths.

use crate::common::{Harness, TRIAGE_KEY, api_calls, sample_payload};
use haloflow::engine::Engine;
use haloflow::flow::{FlowValidator, ProblemCode};
use haloflow::storage::{RunStatus, SqliteStorage};
use haloflow::trigger::TriggerQuery;
use serde_json::{Value, json};

async fn triage(h: &Harness, payload: Value) -> haloflow::storage::RunDetail {
    let url = format!(
        "{}/triggers/triage-by-agent?apiKey={TRIAGE_KEY}&recipients=ops",
        h.base
    );
    let (status, answer) = h.post_json(&url, &payload).await;
    assert_eq!(status, 202, "{answer}");
    let run = h.wait(answer["run_ids"][0].as_str().unwrap()).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    run
}

fn step_ids(run: &haloflow::storage::RunDetail) -> Vec<&str> {
    run.steps.iter().map(|s| s.step_id.as_str()).collect()
}

#[tokio::test]
async fn assigned_and_unassigned_tickets_take_different_paths() {
    let h = Harness::start().await;

    let assigned = triage(&h, sample_payload("halo-new-ticket.json")).await;
    assert_eq!(step_ids(&assigned), ["assigned", "tell_agent", "report"]);
    let notes: Vec<String> = h
        .halo
        .actions()
        .iter()
        .map(|a| a["note"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        notes,
        [
            "Assigned to agent 3; notified: ops",
            "Triage: assigned=true, escalated team=none, queued team=none"
        ]
    );
    assert!(
        api_calls(&h.halo)
            .iter()
            .all(|(_, path, _)| path != "/api/Tickets"),
        "no update on this path"
    );

    let mut urgent = sample_payload("halo-new-ticket-unassigned.json");
    urgent["ticket"]["priority_id"] = json!(1);
    let escalated = triage(&h, urgent).await;
    assert_eq!(
        step_ids(&escalated),
        ["assigned", "by_priority", "escalate", "report"]
    );
    assert_eq!(escalated.steps[1].outputs.as_ref().unwrap()["path"], "1");
    assert_eq!(h.halo.ticket(4243).unwrap()["team"], "Major Incidents");

    let mut routine = sample_payload("halo-new-ticket-unassigned.json");
    routine["object_id"] = json!(4242); // another ticket, so flood control stays out of the way
    routine["ticket"]["priority_id"] = json!(3);
    let queued = triage(&h, routine).await;
    assert_eq!(
        step_ids(&queued),
        ["assigned", "by_priority", "queue", "report"]
    );
    let last = h.halo.actions().last().unwrap()["note"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        last,
        "Triage: assigned=false, escalated team=none, queued team=Triage"
    );
}

#[tokio::test]
async fn a_dry_run_follows_the_path_the_payload_selects() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_haloflow"))
        .args([
            "run",
            "flows/triage-by-agent.json",
            "--payload",
            "examples/halo-new-ticket-unassigned.json",
            "--dry-run",
        ])
        .args(["--config", "examples/haloflow.toml"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    assert!(
        out.contains("2. by_priority (core.switch)")
            && out.contains("3. queue (halo.update_ticket)"),
        "{out}"
    );
    assert!(
        !out.contains("tell_agent") && !out.contains("escalate ("),
        "{out}"
    );
}

fn problems(steps: Value) -> Vec<(String, ProblemCode)> {
    let flow = json!({
        "id": "b", "name": "b",
        "trigger": {"type": "halo.incidents", "auth": {"type": "none"}},
        "steps": steps
    });
    let registry = haloflow::bundled::integrations().registry();
    match FlowValidator::new(&registry).validate_str(&flow.to_string(), None) {
        Ok(_) => Vec::new(),
        Err(found) => found.into_iter().map(|p| (p.pointer, p.code)).collect(),
    }
}

#[test]
fn references_across_paths_are_checked_at_load() {
    let branch = |after: Value| {
        json!([
            {"id": "c", "type": "core.condition", "inputs": {"conditions": [{"left": "{{trigger.agent_assigned}}", "op": "exists"}]},
             "paths": {
                "true": [{"id": "a", "type": "halo.create_ticket", "inputs": {"summary": "x"}}],
                "false": [{"id": "b", "type": "halo.add_action", "inputs": {"ticket_id": "{{steps.a.ticket_id}}", "outcome": "Note"}}]
             }},
            {"id": "after", "type": "halo.add_action", "inputs": {"ticket_id": after, "outcome": "Note"}}
        ])
    };
    // From the other path, and after the branch without default: rejected.
    let found = problems(branch(json!("{{steps.a.ticket_id}}")));
    assert!(
        found.contains(&(
            "/steps/0/paths/false/0/inputs/ticket_id".into(),
            ProblemCode::MaybeNotRunReference
        )),
        "{found:?}"
    );
    assert!(
        found.contains(&(
            "/steps/1/inputs/ticket_id".into(),
            ProblemCode::MaybeNotRunReference
        )),
        "{found:?}"
    );
    // Through default after the branch: accepted there (the other path's reference still fails).
    let found = problems(branch(json!("{{default steps.a.ticket_id 1}}")));
    assert_eq!(
        found,
        [(
            "/steps/0/paths/false/0/inputs/ticket_id".to_owned(),
            ProblemCode::MaybeNotRunReference
        )]
    );
    // Outputs of the branching step itself and of earlier steps are always there.
    let ok = json!([
        {"id": "s", "type": "core.switch", "inputs": {"value": "{{trigger.event}}"},
         "paths": {"new ticket logged": [{"id": "n", "type": "halo.add_action", "inputs": {"ticket_id": 1, "outcome": "Note", "note": "{{steps.s.path}}"}}]}},
        {"id": "t", "type": "halo.add_action", "inputs": {"ticket_id": 1, "outcome": "Note", "note": "{{steps.s.value}}"}}
    ]);
    assert_eq!(problems(ok), []);
}

#[test]
fn paths_must_fit_the_step() {
    let found = problems(json!([
        {"id": "x", "type": "halo.create_ticket", "inputs": {"summary": "s"}, "paths": {"true": []}},
        {"id": "c", "type": "core.condition", "inputs": {"conditions": [{"left": 1, "op": "equals", "right": 1}]}, "paths": {"maybe": []}},
        {"id": "d", "type": "core.condition", "inputs": {"conditions": [{"left": 1, "op": "matches", "right": 1}]}}
    ]));
    assert!(
        found.contains(&("/steps/0/paths".into(), ProblemCode::PathsNotAllowed)),
        "{found:?}"
    );
    assert!(
        found.contains(&("/steps/1/paths/maybe".into(), ProblemCode::UnknownPath)),
        "{found:?}"
    );
    assert!(
        found.contains(&(
            "/steps/2/inputs/conditions/0/op".into(),
            ProblemCode::InvalidStepInput
        )),
        "{found:?}"
    );
    let duplicate = problems(json!([
        {"id": "c", "type": "core.switch", "inputs": {"value": 1}, "paths": {"1": [{"id": "c", "type": "core.switch", "inputs": {"value": 2}}]}}
    ]));
    assert_eq!(
        duplicate,
        [(
            "/steps/0/paths/1/0/id".to_owned(),
            ProblemCode::DuplicateStepId
        )]
    );
}

/// A flow whose condition holds when the ticket is urgent OR mentions an outage (`match`
/// as given); each path runs one marker step, so the run's step ids show the path taken.
fn outage_flow(id: &str, match_mode: &str) -> Value {
    json!({
        "id": id, "name": id,
        "trigger": {"type": "halo.incidents", "auth": {"type": "none"}},
        "steps": [
            {"id": "check", "type": "core.condition", "inputs": {"match": match_mode, "conditions": [
                {"left": "{{trigger.ticket.priority_id}}", "op": "equals", "right": 1},
                {"left": "{{trigger.ticket.summary}}", "op": "contains", "right": "outage"}
            ]}, "paths": {
                "true": [{"id": "page_on_call", "type": "core.switch", "inputs": {"value": "page"}}],
                "false": [{"id": "queue", "type": "core.switch", "inputs": {"value": "queue"}}]
            }}
        ]
    })
}

#[tokio::test]
async fn a_condition_with_match_any_takes_the_true_path_when_one_comparison_holds() {
    let registry = haloflow::bundled::integrations().registry();
    let mut builder = Engine::builder()
        .integrations(haloflow::bundled::integrations())
        .storage(std::sync::Arc::new(
            SqliteStorage::in_memory().await.unwrap(),
        ));
    for flow in [outage_flow("any", "any"), outage_flow("all", "all")] {
        builder = builder.flow(
            FlowValidator::new(&registry)
                .validate_str(&flow.to_string(), None)
                .unwrap(),
        );
    }
    let engine = builder.build().unwrap();
    let run = |flow: &'static str, priority: u64, summary: &'static str| {
        let engine = engine.clone();
        async move {
            let payload = json!({"event": "new ticket logged", "object_id": 7,
                "ticket": {"priority_id": priority, "summary": summary}});
            let mut runs = engine
                .run_to_completion(flow, payload, &TriggerQuery::default())
                .await
                .unwrap()
                .runs;
            let run = runs.remove(0);
            assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
            let result = run.steps[0].outputs.as_ref().unwrap()["result"].clone();
            let ids: Vec<String> = run.steps.iter().map(|s| s.step_id.clone()).collect();
            (result, ids)
        }
    };
    // Only the second comparison holds: OR is true, AND (the same comparisons) is false.
    let (result, ids) = run("any", 3, "Site-wide outage").await;
    assert_eq!(
        (result, ids),
        (json!(true), vec!["check".into(), "page_on_call".into()])
    );
    let (result, ids) = run("all", 3, "Site-wide outage").await;
    assert_eq!(
        (result, ids),
        (json!(false), vec!["check".into(), "queue".into()])
    );
    // Only the first holds: still the true path.
    let (result, ids) = run("any", 1, "Printer jam").await;
    assert_eq!(
        (result, ids),
        (json!(true), vec!["check".into(), "page_on_call".into()])
    );
    // Neither holds: the false path.
    let (result, ids) = run("any", 3, "Printer jam").await;
    assert_eq!(
        (result, ids),
        (json!(false), vec!["check".into(), "queue".into()])
    );
}
