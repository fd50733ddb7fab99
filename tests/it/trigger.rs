//! The Halo trigger end to end, over real HTTP with a real SQLite file: a webhook starts a run,
//! the emulators receive exactly the expected requests, bad requests get JSON 4xx answers.

use crate::common::{ESCALATE_KEY, Harness, Options, ROUTING_PASSWORD, api_calls, sample_payload};
use haloflow::halo::HaloIncidents;
use haloflow::storage::{RequestFilter, RunStatus, StepStatus};
use haloflow::trigger::{TriggerEvent, TriggerType};
use serde_json::{Value, json};

#[tokio::test]
async fn a_webhook_runs_the_flow_and_halo_receives_the_mapped_values() {
    let h = Harness::start().await;
    let (status, answer) = h
        .post_json(
            &h.escalate_url("epearson,Antares%20Team"),
            &sample_payload("halo-new-ticket.json"),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["flow_id"], "escalate-to-partner");
    let run_ids = answer["run_ids"].as_array().unwrap();
    assert_eq!(run_ids.len(), 1);
    let run = h.wait(run_ids[0].as_str().unwrap()).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(
        run.summary.request_id.as_deref(),
        answer["request_id"].as_str()
    );

    // The partner Halo: one ticket created from the trigger's values, the tenant's outcomes
    // read once (the action's outcome is named), one action on the ticket.
    let partner = api_calls(&h.partner);
    assert_eq!(partner.len(), 3, "{partner:#?}");
    let (method, path, body) = &partner[0];
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/api/Tickets"));
    assert_eq!(
        body,
        &json!([{
            "summary": "[Halo #4242] Disk space low on \"SRV01\"",
            "details": "Monitoring says C: is at 97%.\nPlease free space before the nightly backup.",
            "tickettype_id": 1,
            "team": "Escalations",
            "impact": 2,
            "urgency": 2,
            "category_1": "Hardware",
            "customfields": [{"id": 200, "value": 4242}],
            // The idempotency key: a create whose answer is lost is found, not sent twice.
            "third_party_id_string": format!("haloflow:{}:create", run.summary.id)
        }])
    );
    let new_id = run.steps[0].outputs.as_ref().unwrap()["ticket_id"]
        .as_i64()
        .unwrap();
    assert!(
        h.partner.ticket(new_id).is_some(),
        "the emulator holds the created ticket"
    );
    assert_eq!(
        (partner[1].0.as_str(), partner[1].1.as_str()),
        ("GET", "/api/Outcome")
    );
    let (method, path, body) = &partner[2];
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/api/Actions"));
    assert_eq!(
        body[0]["ticket_id"], new_id,
        "the action carries the new ticket's id"
    );
    assert_eq!(
        body[0]["note"],
        format!(
            "Escalated from Halo ticket 4242 (new ticket logged) as ticket {new_id}. Notify: epearson, Antares Team"
        )
    );
    assert_eq!(body[0]["hiddenfromuser"], true);
    // "Note" goes by its id in this tenant's outcome list.
    assert_eq!(
        (body[0].get("outcome"), &body[0]["outcome_id"]),
        (None, &json!(12))
    );

    // The sending Halo: the original ticket updated with only the given fields, then a note.
    let source = api_calls(&h.halo);
    assert_eq!(source.len(), 3, "{source:#?}");
    assert_eq!(
        source[0].2,
        json!([{"status_id": 2, "customfields": [{"id": 201, "value": new_id}], "id": 4242}])
    );
    assert_eq!(
        h.halo.ticket(4242).unwrap()["summary"],
        "Disk space low on \"SRV01\"",
        "fields left out keep their values"
    );
    assert_eq!(source[1].1, "/api/Outcome");
    assert_eq!(source[2].2[0]["ticket_id"], 4242);
    assert!(
        source[2].2[0]["note"]
            .as_str()
            .unwrap()
            .contains(&format!("ticket {new_id} ([Halo #4242] Disk space low"))
    );

    // One token per connection, requested with client credentials.
    for (emulator, client_id) in [(&h.halo, "source-client"), (&h.partner, "partner-client")] {
        let tokens: Vec<_> = emulator
            .requests()
            .into_iter()
            .filter(|r| r.path == "/auth/token")
            .collect();
        assert_eq!(tokens.len(), 1, "the token is cached across steps");
        assert!(tokens[0].body.contains("grant_type=client_credentials"));
        assert!(tokens[0].body.contains(&format!("client_id={client_id}")));
        assert!(tokens[0].body.contains("scope=all"));
    }

    // Each step's rendered inputs, outputs and requests are in the run history.
    assert_eq!(run.steps.len(), 4);
    assert!(run.steps.iter().all(|s| s.status == StepStatus::Succeeded));
    assert_eq!(run.steps[1].inputs.as_ref().unwrap()["ticket_id"], new_id);
    assert_eq!(run.steps[0].exchanges.len(), 2, "token + create");
    assert_eq!(
        run.trigger["recipients"],
        json!(["epearson", "Antares Team"])
    );
    assert_eq!(
        run.trigger["params"],
        json!({}),
        "the URL key is not a parameter"
    );
}

#[tokio::test]
async fn a_batched_body_starts_one_run_per_event_and_routes_by_agent() {
    let h = Harness::start().await;
    let batch = json!([
        sample_payload("halo-new-ticket.json"),
        sample_payload("halo-new-ticket-unassigned.json")
    ]);
    let response = h
        .routing_request("recipients=ops%20lead,bgull&team=Desk%202")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    let run_ids: Vec<&str> = answer["run_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(run_ids.len(), 2);
    for id in &run_ids {
        assert_eq!(h.wait(id).await.summary.status, RunStatus::Succeeded);
    }
    let assigned = h.halo.ticket(4242).unwrap();
    assert_eq!(
        (assigned["status_id"].clone(), assigned["team"].clone()),
        (json!(2), json!("Service Desk"))
    );
    let unassigned = h.halo.ticket(4243).unwrap();
    assert_eq!(
        (unassigned["status_id"].clone(), unassigned["team"].clone()),
        (json!(1), json!("Desk 2"))
    );
    let notes: Vec<String> = h
        .halo
        .actions()
        .iter()
        .map(|a| a["note"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        notes.contains(&"Assigned to agent 3; on-call notified: ops lead, bgull".to_owned()),
        "{notes:?}"
    );
    assert!(
        notes.contains(
            &"Unassigned: sent to Desk 2 for triage; notified: ops lead, bgull".to_owned()
        ),
        "{notes:?}"
    );
    let requests = h
        .engine
        .storage()
        .list_requests(&RequestFilter {
            flow_id: Some("new-ticket-routing".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].event_count, 2);
    assert_eq!(requests[0].run_ids, run_ids);
}

async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(response.status().as_u16(), status);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn bad_requests_get_clear_json_errors_and_are_recorded() {
    let h = Harness::start_with(Options {
        max_body_bytes: 2048,
        // Above the burst below, so every rejection is stored (tests/it/surface.rs floods it).
        configure: |config| config.server.rejections_logged_per_sec = 100,
        ..Options::default()
    })
    .await;
    let sample = sample_payload("halo-new-ticket.json");
    let c = &h.client;

    let message = expect_error(
        c.post(format!("{}/triggers/nope", h.base))
            .json(&sample)
            .send()
            .await
            .unwrap(),
        404,
        "unknown_flow",
    )
    .await;
    assert!(message.contains("nope"));
    let wrong_key = format!("{}/triggers/escalate-to-partner?apiKey=wrong", h.base);
    expect_error(
        c.post(&wrong_key).json(&sample).send().await.unwrap(),
        401,
        "invalid_auth",
    )
    .await;
    let message = expect_error(
        c.post(format!("{}/triggers/escalate-to-partner", h.base))
            .json(&sample)
            .send()
            .await
            .unwrap(),
        401,
        "invalid_auth",
    )
    .await;
    assert!(message.contains("apiKey"), "{message}");
    let bad_basic = c
        .post(format!("{}/triggers/new-ticket-routing", h.base))
        .basic_auth("halo", Some("guess"))
        .json(&sample)
        .send()
        .await
        .unwrap();
    assert_eq!(
        bad_basic.headers()["www-authenticate"],
        "Basic realm=\"haloflow\""
    );
    expect_error(bad_basic, 401, "invalid_auth").await;

    let url = h.escalate_url("a");
    let message = expect_error(
        c.post(&url)
            .header("Content-Type", "application/json")
            .body("{\n  \"event\": \"x\",\n  oops\n}")
            .send()
            .await
            .unwrap(),
        400,
        "invalid_json",
    )
    .await;
    assert!(message.contains("line 3, column 3"), "{message}");
    let message = expect_error(
        c.post(&url)
            .header("Content-Type", "text/plain")
            .body("{}")
            .send()
            .await
            .unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    assert!(message.contains("application/json"), "{message}");
    expect_error(
        c.post(&url).body("{}").send().await.unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    let big = json!({"event": "x", "pad": "y".repeat(4096)});
    let message = expect_error(
        c.post(&url).json(&big).send().await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    assert!(message.contains("2048"), "{message}");
    expect_error(
        c.post(&url).json(&json!([])).send().await.unwrap(),
        400,
        "invalid_payload",
    )
    .await;
    expect_error(
        c.post(&url).json(&json!("text")).send().await.unwrap(),
        400,
        "invalid_payload",
    )
    .await;
    expect_error(
        c.post(&url).json(&json!([{}, 1])).send().await.unwrap(),
        400,
        "invalid_payload",
    )
    .await;
    expect_error(
        c.post(&url)
            .header("Content-Type", "application/json")
            .body(vec![0xff, 0xfe])
            .send()
            .await
            .unwrap(),
        400,
        "invalid_json",
    )
    .await;

    // Every rejection except the unknown flow is on record; none started a run.
    let requests = h
        .engine
        .storage()
        .list_requests(&RequestFilter {
            limit: Some(100),
            ..Default::default()
        })
        .await
        .unwrap();
    let codes: Vec<&str> = requests
        .iter()
        .rev()
        .map(|r| r.error_code.as_deref().unwrap_or("accepted"))
        .collect();
    assert_eq!(
        codes,
        [
            "invalid_auth",
            "invalid_auth",
            "invalid_auth",
            "invalid_json",
            "unsupported_media_type",
            "unsupported_media_type",
            "payload_too_large",
            "invalid_payload",
            "invalid_payload",
            "invalid_payload",
            "invalid_json"
        ]
    );
    assert!(
        requests
            .iter()
            .all(|r| r.status == "rejected" && r.run_ids.is_empty())
    );
    assert!(
        h.engine
            .storage()
            .list_runs(&Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(api_calls(&h.partner).is_empty());
}

#[tokio::test]
async fn the_request_row_is_on_disk_when_the_answer_arrives() {
    let h = Harness::start().await;
    // A separate connection to the same file, as another process would see it.
    let reader = sqlx::SqlitePool::connect(&format!("sqlite://{}", h.db_path().display()))
        .await
        .unwrap();
    for i in 0..5 {
        // Different tickets, so flood control lets every one run.
        let mut payload = sample_payload("halo-new-ticket.json");
        payload["object_id"] = json!(5000 + i);
        let (status, answer) = h.post_json(&h.escalate_url("x"), &payload).await;
        assert_eq!(status, 202);
        let request_id = answer["request_id"].as_str().unwrap();
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT status, event_count FROM trigger_requests WHERE id = $1")
                .bind(request_id)
                .fetch_optional(&reader)
                .await
                .unwrap();
        assert_eq!(row, Some(("accepted".to_owned(), 1)));
        let run_id = answer["run_ids"][0].as_str().unwrap();
        let run: Option<(String,)> = sqlx::query_as("SELECT request_id FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&reader)
            .await
            .unwrap();
        assert_eq!(run, Some((request_id.to_owned(),)));
    }
}

#[tokio::test]
async fn a_missing_value_fails_the_run_naming_flow_step_input_and_path() {
    let h = Harness::start().await;
    // A custom payload without a ticket: the flow's templates need trigger.ticket.summary.
    let (status, answer) = h
        .post_json(
            &h.escalate_url("x"),
            &json!({"event": "custom", "object_id": 9}),
        )
        .await;
    assert_eq!(status, 202);
    let run = h.wait(answer["run_ids"][0].as_str().unwrap()).await;
    assert_eq!(run.summary.status, RunStatus::Failed);
    assert_eq!(run.summary.failed_step.as_deref(), Some("create"));
    let error = run.summary.error.unwrap();
    // The place in the flow file, then flow, step, input and path.
    let text = std::fs::read_to_string("flows/escalate-to-partner.json").unwrap();
    let (line, column) =
        haloflow::internals::flow::locate(&text, "/steps/0/inputs/summary").unwrap();
    assert_eq!(
        error,
        format!(
            "flows/escalate-to-partner.json:{line}:{column}: flow `escalate-to-partner`, step `create`, \
             input /summary: `trigger.ticket.summary` is missing from the data"
        )
    );
    assert_eq!(run.steps[0].error_code.as_deref(), Some("template_error"));
    assert!(api_calls(&h.partner).is_empty(), "nothing was sent");
}

#[tokio::test]
async fn a_rendered_input_that_breaks_the_step_schema_names_its_place() {
    let h = Harness::start().await;
    let mut payload = sample_payload("halo-new-ticket.json");
    payload["ticket"]["impact"] = json!("high");
    let (_, answer) = h.post_json(&h.escalate_url("x"), &payload).await;
    let run = h.wait(answer["run_ids"][0].as_str().unwrap()).await;
    assert_eq!(run.steps[0].error_code.as_deref(), Some("invalid_input"));
    let error = run.summary.error.unwrap();
    let text = std::fs::read_to_string("flows/escalate-to-partner.json").unwrap();
    let (line, column) =
        haloflow::internals::flow::locate(&text, "/steps/0/inputs/impact").unwrap();
    assert!(
        error.starts_with(&format!(
            "flows/escalate-to-partner.json:{line}:{column}: flow `escalate-to-partner`, step `create`: input /impact:"
        )),
        "{error}"
    );
    assert!(error.contains("--dry-run"), "{error}");
    assert!(api_calls(&h.partner).is_empty(), "nothing was sent");
}

#[tokio::test]
async fn a_revoked_token_is_refreshed_once() {
    let h = Harness::start().await;
    let send = || {
        h.routing_request("recipients=a")
            .json(&sample_payload("halo-new-ticket.json"))
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(
        h.wait(first["run_ids"][0].as_str().unwrap())
            .await
            .summary
            .status,
        RunStatus::Succeeded
    );
    h.halo.revoke_tokens();
    let second: Value = send().await.unwrap().json().await.unwrap();
    let run = h.wait(second["run_ids"][0].as_str().unwrap()).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(h.halo.tokens_issued(), 2);
    let statuses: Vec<Option<u16>> = run.steps[0].exchanges.iter().map(|x| x.status).collect();
    assert_eq!(
        statuses[..3],
        [Some(401), Some(200), Some(200)][..],
        "401, new token, retried update: {statuses:?}"
    );
}

#[tokio::test]
async fn halo_errors_fail_the_step_with_halos_message() {
    let h = Harness::start().await;
    h.partner.fail_next("POST", "/api/Tickets", 400, 2, None); // twice: a 400 gets one fresh token
    let (_, answer) = h
        .post_json(
            &h.escalate_url("x"),
            &sample_payload("halo-new-ticket.json"),
        )
        .await;
    let run = h.wait(answer["run_ids"][0].as_str().unwrap()).await;
    assert_eq!(run.summary.status, RunStatus::Failed);
    assert_eq!(run.steps.len(), 1, "later steps do not run");
    assert_eq!(run.steps[0].error_code.as_deref(), Some("http_status"));
    assert!(run.summary.error.unwrap().contains("answered 400"));
    // The basic-auth flow keeps working meanwhile.
    let ok = h
        .routing_request("recipients=a")
        .json(&sample_payload("halo-new-ticket.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    let _ = ROUTING_PASSWORD;
    let _ = ESCALATE_KEY;
}

#[tokio::test]
async fn hostile_inputs_get_answers_not_panics() {
    let h = Harness::start().await;
    let c = &h.client;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let url = h.escalate_url("a");
    let odd_queries = [
        format!(
            "{}/triggers/escalate-to-partner?apiKey={ESCALATE_KEY}&recipients=%FF%FE,,%2C&&=&x",
            h.base
        ),
        format!(
            "{}/triggers/escalate-to-partner?apiKey={ESCALATE_KEY}&recipients",
            h.base
        ),
        format!("{}/triggers/escalate-to-partner?apiKey=%ZZ", h.base),
        format!("{}/triggers/%F0%9F%92%A5", h.base),
        format!("{}/triggers/%FF", h.base),
    ];
    for body in [
        deep.as_str(),
        "{\"ticket\": 5, \"object_id\": 1e400}",
        "{\"object_id\": \"\\ud800\"}",
        "null",
        "",
        "{\"ticket\": {\"agent_id\": \"x\"}}",
    ] {
        let response = c
            .post(&url)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_client_error() || response.status() == 202,
            "{body:.40}: {}",
            response.status()
        );
    }
    for query in &odd_queries {
        let response = c
            .post(query)
            .json(&json!({"event": "x", "ticket": {"summary": "s"}}))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().as_u16() < 500,
            "{query}: {}",
            response.status()
        );
        let answer: Value = response.json().await.expect("every answer is JSON");
        assert!(answer["error"]["code"].is_string() || answer["request_id"].is_string());
    }
    // Wrong method: a JSON 405 that says what to do.
    let response = c
        .get(format!("{}/triggers/escalate-to-partner", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "method_not_allowed");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("take POST")
    );
    // The server still answers normally afterwards.
    let (status, _) = h
        .post_json(&url, &sample_payload("halo-new-ticket.json"))
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        c.get(format!("{}/health", h.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    expect_error(
        c.get(format!("{}/api/runs?status=weird", h.api))
            .send()
            .await
            .unwrap(),
        400,
        "invalid_query",
    )
    .await;
    expect_error(
        c.get(format!("{}/api/runs/none", h.api))
            .send()
            .await
            .unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_error(
        c.get(format!("{}/nowhere", h.base)).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn runs_accepted_before_a_stop_start_on_the_next_start() {
    use haloflow::storage::{NewRequest, NewRun};
    let h = Harness::start().await;
    // A request and run written as the previous process would have, never started.
    let trigger = HaloIncidents.outputs(TriggerEvent {
        request_id: "req-before-stop",
        received_at: "2026-11-23T00:00:00Z",
        query: &haloflow::trigger::TriggerQuery::parse(Some("recipients=a"), None),
        event: sample_payload("halo-new-ticket.json")
            .as_object()
            .unwrap()
            .clone(),
    });
    let storage = h.engine.storage();
    let request = NewRequest {
        id: "req-before-stop".into(),
        flow_id: "new-ticket-routing".into(),
        received_at_ms: 1,
        http_status: 202,
        error: None,
        query: None,
        body: Some("{}".into()),
        event_count: 1,
        outcome: None,
    };
    let run = NewRun {
        id: "run-before-stop".into(),
        flow_id: "new-ticket-routing".into(),
        event_index: 0,
        trigger,
        created_at_ms: 1,
        correlation_key: None,
        delivery_id: None,
        owner: None,
        lease_until_ms: None,
    };
    storage.accept_request(&request, &[run], &[]).await.unwrap();
    assert_eq!(h.engine.resume_unfinished_runs().await.unwrap(), 1);
    let detail = h.wait("run-before-stop").await;
    assert_eq!(detail.summary.status, RunStatus::Succeeded);
    assert_eq!(
        h.engine.resume_unfinished_runs().await.unwrap(),
        0,
        "a finished run is not started again"
    );
}
