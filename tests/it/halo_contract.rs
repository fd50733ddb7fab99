//! The Halo emulator holds haloflow to Halo's published API ("Halo API" v2,
//! `reference/halo-openapi.json`), and what would break on a real Halo is fixed.

use std::time::Duration;

use crate::common::{
    Harness, Options, TRIAGE_KEY, api_calls, assert_contract_kept, sample_payload,
};
use haloflow::storage::RunStatus;
use haloflow_emulators::Fault;
use haloflow_emulators::halo::HaloEmulator;
use haloflow_emulators::halo_contract::HaloContract;
use serde_json::{Value, json};

async fn emulator() -> (HaloEmulator, haloflow_emulators::RunningEmulator, String) {
    let emulator = crate::common::halo_emulator();
    let running = emulator.start().await.unwrap();
    let base = running.base_url();
    let token = crate::common::halo_token(&reqwest::Client::new(), &base).await;
    let token = token["access_token"].as_str().unwrap().to_owned();
    (emulator, running, token)
}

async fn call(
    base: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut request = client
        .request(method.parse().unwrap(), format!("{base}/api/{path}"))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn requests_are_held_to_the_published_schema_and_rules() {
    let (emulator, running, token) = emulator().await;
    let base = running.base_url();
    // A string where the schema says int32: 400, keyed by ASP.NET's field path (§6).
    let (status, answer) = call(
        &base,
        &token,
        "POST",
        "Tickets",
        Some(json!([{"summary": "s", "third_party_id": "haloflow:1:create"}])),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["[0].third_party_id"].is_array(), "{answer}");
    assert!(emulator.tickets().is_empty());

    // A property the schema does not know: accepted and dropped, as Halo does, but recorded.
    let (status, ticket) = call(
        &base,
        &token,
        "POST",
        "Tickets",
        Some(json!([{"summary": "s", "team_id": 5, "third_party_id_string": "k"}])),
    )
    .await;
    assert_eq!(status, 201, "{ticket}");
    assert!(ticket.get("team_id").is_none());
    assert_eq!(ticket["third_party_id_string"], "k");
    assert_eq!(
        emulator.warnings(),
        ["POST /api/Tickets: /0/team_id is not in Halo's schema (Halo ignores it)"]
    );

    // A user needs a site (CIPP); an undocumented filter fails rather than being ignored.
    let (status, answer) = call(
        &base,
        &token,
        "POST",
        "Tickets",
        Some(json!([{"summary": "s", "user_id": 399}])),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = call(&base, &token, "GET", "Tickets?third_party_id=1", None).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["MessageDetail"]
            .as_str()
            .unwrap()
            .contains("third_party_id")
    );

    // An outcome must be one of the tenant's; the action then carries both its id and name.
    let id = ticket["id"].as_i64().unwrap();
    let (status, _) = call(
        &base,
        &token,
        "POST",
        "Actions",
        Some(json!([{"ticket_id": id, "outcome_id": 999, "note": "n"}])),
    )
    .await;
    assert_eq!(status, 400);
    let (status, action) = call(
        &base,
        &token,
        "POST",
        "Actions",
        Some(json!([{"ticket_id": id, "outcome": "note", "note": "n"}])),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        (&action["outcome_id"], &action["outcome"]),
        (&json!(12), &json!("Note"))
    );

    // Documented but not modelled: said so; not documented at all: Halo's 404.
    assert_eq!(call(&base, &token, "GET", "Client", None).await.0, 501);
    assert_eq!(call(&base, &token, "GET", "Nonsense", None).await.0, 404);
}

#[tokio::test]
async fn every_answer_fits_the_published_schema() {
    let (emulator, running, token) = emulator().await;
    let base = running.base_url();
    emulator.insert_supplier(
        json!({"id": 7, "name": "Vendor", "email_address": "desk@vendor.example"}),
    );
    let parent = emulator.insert_ticket(json!({"summary": "parent"}));
    let (_, child) = call(&base, &token, "POST", "Tickets",
        Some(json!([{"summary": "c", "parent_id": parent, "client_id": 12, "site_id": 20, "user_id": 399,
                     "customfields": [{"id": 178, "value": "x"}]}]))).await;
    let child_id = child["id"].as_i64().unwrap();
    call(
        &base,
        &token,
        "POST",
        "Actions",
        Some(
            json!([{"ticket_id": child_id, "outcome_id": 7, "note": "n", "hiddenfromuser": true}]),
        ),
    )
    .await;
    emulator.insert_attachment(child_id, "log.txt", true, b"x");
    let contract = HaloContract::get();
    for (path, schema, list) in [
        (format!("Tickets/{child_id}"), "Faults", None),
        (
            format!("Tickets?parent_id={parent}"),
            "Faults",
            Some("tickets"),
        ),
        (
            format!("Actions?ticket_id={child_id}"),
            "Actions",
            Some("actions"),
        ),
        ("Actions/1".to_owned(), "Actions", None),
        ("Supplier/7".to_owned(), "Company", None),
        (
            format!("Attachment?ticket_id={child_id}"),
            "Attachment",
            Some("attachments"),
        ),
        ("Outcome".to_owned(), "TOutcome", Some("")),
    ] {
        let (status, answer) = call(&base, &token, "GET", &path, None).await;
        assert_eq!(status, 200, "GET {path}: {answer}");
        let records: Vec<&Value> = match list {
            None => vec![&answer],
            Some("") => answer.as_array().unwrap().iter().collect(),
            Some(key) => {
                assert!(answer["record_count"].is_i64(), "{answer}");
                answer[key].as_array().unwrap().iter().collect()
            }
        };
        assert!(!records.is_empty(), "GET {path}");
        for record in records {
            let problems = contract.check_value(schema, record);
            assert!(problems.is_empty(), "GET {path}: {problems:?}");
        }
    }
    assert_contract_kept(&[&emulator]);
}

#[tokio::test]
async fn an_older_halo_ignores_parent_id_and_an_expired_token_may_be_a_400() {
    let (emulator, running, token) = emulator().await;
    let base = running.base_url();
    let parent = emulator.insert_ticket(json!({"summary": "parent"}));
    emulator.insert_ticket(json!({"summary": "child", "parent_id": parent}));
    emulator.insert_ticket(json!({"summary": "other"}));
    let listed = |answer: Value| answer["tickets"].as_array().unwrap().len();
    let path = format!("Tickets?parent_id={parent}");
    assert_eq!(listed(call(&base, &token, "GET", &path, None).await.1), 1);
    emulator.ignore_parent_id_filter();
    assert_eq!(listed(call(&base, &token, "GET", &path, None).await.1), 3);
    emulator.expire_tokens(400);
    assert_eq!(call(&base, &token, "GET", &path, None).await.0, 400);
}

/// A harness whose flows are the repository's plus `extra` (file name, flow).
async fn harness_with(
    extra: &[(&str, Value)],
    configure: fn(&mut haloflow::config::Config),
) -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("flows").unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    for (name, flow) in extra {
        std::fs::write(dir.path().join(name), flow.to_string()).unwrap();
    }
    let h = Harness::start_with(Options {
        flows: dir.path().to_owned(),
        configure,
        ..Options::default()
    })
    .await;
    (h, dir)
}

fn flow(id: &str, steps: Value) -> Value {
    json!({
        "id": id, "name": id,
        "trigger": {"type": "halo.incidents",
                    "auth": {"type": "url_key", "param": "apiKey", "secret_name": "HALOFLOW_TRIAGE_KEY"}},
        "steps": steps
    })
}

async fn trigger(h: &Harness, flow: &str, body: &Value) -> haloflow::storage::RunDetail {
    let url = format!("{}/triggers/{flow}?apiKey={TRIAGE_KEY}", h.base);
    let (status, answer) = h.post_json(&url, body).await;
    assert_eq!(status, 202, "{answer}");
    h.wait(answer["run_ids"][0].as_str().unwrap()).await
}

#[tokio::test]
async fn an_event_only_webhook_gives_flows_the_ticket_through_halo_get_ticket() {
    let steps = json!([
        {"id": "ticket", "type": "halo.get_ticket", "inputs": {"ticket_id": "{{trigger.ticket_id}}"}},
        {"id": "assigned", "type": "core.condition",
         "inputs": {"conditions": [{"left": "{{trigger.agent_assigned}}", "op": "equals", "right": true}]},
         "paths": {
            "true": [{"id": "tell_agent", "type": "halo.add_action", "inputs": {
                "ticket_id": "{{trigger.ticket_id}}", "outcome": "Note",
                "note": "agent {{trigger.ticket.agent_id}} of client {{trigger.ticket.client_id}}"}}],
            "false": [{"id": "queue", "type": "halo.add_action", "inputs": {
                "ticket_id": "{{trigger.ticket_id}}", "outcome": "Note", "note": "unassigned"}}]
         }}
    ]);
    let (h, _dir) = harness_with(&[("event-only.json", flow("event-only", steps))], |_| {}).await;
    // "Event information only" (halo-api.md §5): the delivery names the ticket, nothing more.
    let body = json!({"id": uuid::Uuid::new_v4().to_string(), "event": "New Ticket Logged",
                      "object_id": 4242, "webhook_id": "53232637-9a8e-4f1b-8d3c-2a1b0c9d8e7f"});
    let run = trigger(&h, "event-only", &body).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    let ran: Vec<&str> = run.steps.iter().map(|s| s.step_id.as_str()).collect();
    assert_eq!(ran, ["ticket", "assigned", "tell_agent"]);
    let action = h.halo.actions().pop().unwrap();
    assert_eq!(action["note"], "agent 3 of client 12");
}

#[tokio::test]
async fn an_unknown_outcome_name_fails_with_the_tenants_outcomes() {
    let steps = json!([{"id": "note", "type": "halo.add_action",
        "inputs": {"ticket_id": "{{trigger.ticket_id}}", "outcome": "Notes", "note": "n"}}]);
    let (h, _dir) = harness_with(&[("bad-outcome.json", flow("bad-outcome", steps))], |_| {}).await;
    let run = trigger(&h, "bad-outcome", &sample_payload("halo-new-ticket.json")).await;
    assert_eq!(run.summary.status, RunStatus::Failed);
    let error = run.steps[0].error.clone().unwrap();
    assert!(
        error.contains("no outcome called `Notes`") && error.contains("Note (12)"),
        "{error}"
    );
    assert!(h.halo.actions().is_empty());
}

async fn escalate(h: &Harness) -> haloflow::storage::RunDetail {
    let url = h.escalate_url("ops");
    let (status, answer) = h
        .post_json(&url, &sample_payload("halo-new-ticket.json"))
        .await;
    assert_eq!(status, 202, "{answer}");
    h.wait(answer["run_ids"][0].as_str().unwrap()).await
}

#[tokio::test]
async fn a_400_to_a_cached_token_gets_one_fresh_token() {
    let h = Harness::start().await;
    assert_eq!(escalate(&h).await.summary.status, RunStatus::Succeeded);
    // Some Halo versions answer an expired token with 400 (halo-api.md §1, n8n #16857).
    h.partner.expire_tokens(400);
    let run = escalate(&h).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(h.partner.tokens_issued(), 2);
}

fn one_second_timeouts(config: &mut haloflow::config::Config) {
    config
        .edit_section(|halo: &mut haloflow::halo::HaloConfig| {
            for halo in halo.values_mut() {
                halo.timeout_secs = 1;
            }
        })
        .unwrap();
    config.retry.initial_delay_ms = Some(10);
}

#[tokio::test]
async fn a_lost_create_answer_is_never_sent_again_when_the_lookup_cannot_be_sure() {
    let (h, _dir) = harness_with(&[], one_second_timeouts).await;
    let hold = haloflow_emulators::Hold::new();
    h.partner.inject(
        "POST",
        "/api/Tickets",
        Fault::HoldAfterProcessing(hold.clone()),
        1,
    );
    let url = h.escalate_url("ops");
    let (status, answer) = h
        .post_json(&url, &sample_payload("halo-new-ticket.json"))
        .await;
    assert_eq!(status, 202);
    hold.arrived().await;
    // More tickets than the lookup reads arrive before the answer is lost.
    for n in 0..60 {
        h.partner
            .insert_ticket(json!({"summary": format!("busy {n}"),
            "dateoccurred": chrono::Utc::now().to_rfc3339()}));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hold.release();
    let run = h.wait(answer["run_ids"][0].as_str().unwrap()).await;
    assert_eq!(run.summary.status, RunStatus::Failed, "{run:#?}");
    assert_eq!(
        run.steps[0].error_code.as_deref(),
        Some("outcome_unknown"),
        "{run:#?}"
    );
    let key = format!("haloflow:{}:create", run.summary.id);
    let created: Vec<Value> = h
        .partner
        .tickets()
        .into_iter()
        .filter(|t| t["third_party_id_string"] == json!(key))
        .collect();
    assert_eq!(created.len(), 1, "created once, never again");
    // Only documented filters were used to look.
    assert!(
        api_calls(&h.partner)
            .iter()
            .any(|(m, p, _)| m == "GET" && p == "/api/Tickets")
    );
}
