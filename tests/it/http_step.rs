//! The generic HTTP step against the ServiceNow emulator: credentials from a connection,
//! JSON outputs used by later steps, non-2xx answers, text bodies, and URLs or headers that
//! would hand the connection's credentials to someone else.

use std::sync::Arc;

use haloflow::config::Config;
use haloflow::engine::Engine;
use haloflow::flow::FlowValidator;
use haloflow::secrets::SecretStore;
use haloflow::step::StepError;
use haloflow::storage::{RunStatus, SqliteStorage};
use haloflow::trigger::TriggerQuery;
use haloflow_emulators::servicenow::{ServiceNowEmulator, ServiceNowEmulatorConfig};
use serde_json::{Value, json};

const PASSWORD: &str = "PW-snow-71d0c3";

async fn setup(
    flows: &[Value],
) -> (
    Engine,
    ServiceNowEmulator,
    haloflow_emulators::RunningEmulator,
) {
    let snow = ServiceNowEmulator::new(ServiceNowEmulatorConfig {
        username: "haloflow".into(),
        password: PASSWORD.into(),
        oauth_client_id: None,
        oauth_client_secret: None,
        token_lifetime_secs: 1800,
        oauth_user: "oauth.app".into(),
    });
    let running = snow.start().await.unwrap();
    let config = Config::parse(&format!(
        "[http.snow]\nbase_url = \"{}\"\nbasic_username = \"haloflow\"\nbasic_password_secret_name = \"SNOW_PASSWORD\"\n\
         [http.acme]\nbase_url = \"https://acme.example.com\"\nbearer_token_secret_name = \"SNOW_PASSWORD\"\n\
         [http.acme_api]\nbase_url = \"https://acme.example.com/api\"\nbearer_token_secret_name = \"SNOW_PASSWORD\"\n",
        running.base_url()
    ))
    .unwrap();
    let registry = haloflow::bundled::integrations().registry();
    let mut builder = Engine::builder()
        .integrations(haloflow::bundled::integrations())
        .config(config.clone())
        .secrets(SecretStore::from_values([("SNOW_PASSWORD", PASSWORD)]))
        .storage(Arc::new(SqliteStorage::in_memory().await.unwrap()));
    for flow in flows {
        let validated = FlowValidator::new(&registry)
            .with_config(&config)
            .validate_str(&flow.to_string(), None)
            .unwrap();
        builder = builder.flow(validated);
    }
    (builder.build().unwrap(), snow, running)
}

fn flow(id: &str, steps: Value) -> Value {
    json!({"id": id, "name": id, "trigger": {"type": "halo.incidents", "auth": {"type": "none"}}, "steps": steps})
}

#[tokio::test]
async fn creates_and_reads_a_record_with_the_connection_credentials() {
    let (engine, snow, _running) = setup(&[flow(
        "to-snow",
        json!([
            {"id": "create", "type": "http.request", "connection": "snow", "inputs": {
                "method": "POST", "url": "/api/now/table/incident", "headers": {"Accept": "application/json"},
                "json": {"short_description": "{{trigger.ticket.summary}}", "correlation_id": "halo-{{trigger.ticket_id}}"},
                "expected_status": [201]}},
            {"id": "read", "type": "http.request", "connection": "snow", "inputs": {
                "url": "/api/now/table/incident/{{steps.create.json.result.sys_id}}",
                "query": {"sysparm_fields": "number,correlation_id"}}}
        ]),
    )])
    .await;
    let payload = json!({"event": "new ticket logged", "object_id": 7, "ticket": {"summary": "Printer \"jam\""}});
    let runs = engine
        .run_to_completion("to-snow", payload, &TriggerQuery::default())
        .await
        .unwrap()
        .runs;
    assert_eq!(
        runs[0].summary.status,
        RunStatus::Succeeded,
        "{:#?}",
        runs[0]
    );
    let records = snow.records("incident");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["short_description"], "Printer \"jam\"");
    assert_eq!(records[0]["correlation_id"], "halo-7");
    assert_eq!(
        records[0]["sys_created_by"], "haloflow",
        "sent with the connection's Basic credentials"
    );
    let read = runs[0].steps[1].outputs.as_ref().unwrap();
    assert_eq!(read["status"], 200);
    assert_eq!(
        read["json"]["result"],
        json!({"number": "INC0010001", "correlation_id": "halo-7"})
    );
    let requests = snow.requests();
    assert_eq!(
        requests[1].query.as_deref(),
        Some("sysparm_fields=number%2Ccorrelation_id")
    );
    let history = serde_json::to_string(&runs).unwrap();
    assert!(
        !history.contains(PASSWORD),
        "the password is not in the run history"
    );
}

#[tokio::test]
async fn a_non_2xx_answer_fails_the_step_unless_expected() {
    let (engine, _snow, running) = setup(&[
        flow("missing", json!([{"id": "get", "type": "http.request", "connection": "snow", "inputs": {"url": "/api/now/table/incident/nope"}}])),
        flow(
            "expected",
            json!([{"id": "get", "type": "http.request", "connection": "snow", "inputs": {"url": "/api/now/table/incident/nope", "expected_status": [404]}}]),
        ),
    ])
    .await;
    let failed = &engine
        .run_to_completion("missing", json!({}), &TriggerQuery::default())
        .await
        .unwrap()
        .runs[0];
    assert_eq!(failed.summary.status, RunStatus::Failed);
    let error = failed.summary.error.as_deref().unwrap();
    assert!(
        error.contains(&format!(
            "GET {}/api/now/table/incident/nope answered 404",
            running.base_url()
        )),
        "{error}"
    );
    assert!(
        error.contains("No Record found"),
        "the body explains: {error}"
    );
    assert_eq!(failed.steps[0].error_code.as_deref(), Some("http_status"));
    let ok = &engine
        .run_to_completion("expected", json!({}), &TriggerQuery::default())
        .await
        .unwrap()
        .runs[0];
    assert_eq!(ok.summary.status, RunStatus::Succeeded);
    assert_eq!(ok.steps[0].outputs.as_ref().unwrap()["status"], 404);
}

#[tokio::test]
async fn urls_must_stay_under_the_connection() {
    let (engine, snow, _running) = setup(&[flow(
        "escape",
        json!([{"id": "get", "type": "http.request", "connection": "snow", "inputs": {"url": "http://169.254.169.254/latest"}}]),
    )])
    .await;
    let run = &engine
        .run_to_completion("escape", json!({}), &TriggerQuery::default())
        .await
        .unwrap()
        .runs[0];
    assert_eq!(run.summary.status, RunStatus::Failed);
    assert!(
        run.summary
            .error
            .as_deref()
            .unwrap()
            .contains("is not under the connection's base URL")
    );
    assert!(snow.requests().is_empty());
    // The step can also be run directly, outside a flow.
    let outputs = engine
        .run_step(
            "http.request",
            Some("snow"),
            json!({"url": "/api/now/table/incident"}),
            "list-incidents",
        )
        .await
        .unwrap();
    assert_eq!(outputs["json"], json!({"result": []}));
}

fn snow_config(password: &str) -> ServiceNowEmulatorConfig {
    ServiceNowEmulatorConfig {
        username: "haloflow".into(),
        password: password.into(),
        oauth_client_id: None,
        oauth_client_secret: None,
        token_lifetime_secs: 1800,
        oauth_user: "oauth.app".into(),
    }
}

/// The step's input error, or a panic naming what happened instead.
fn input_error(result: Result<Value, StepError>, url: &str) -> String {
    match result {
        Err(error @ StepError::Input { .. }) => error.to_string(),
        other => panic!("{url}: expected an input error before sending, got {other:?}"),
    }
}

#[tokio::test]
async fn look_alike_urls_do_not_get_the_connection_credentials() {
    let (engine, snow, running) = setup(&[]).await;
    // Each starts with the connection's base_url as text; none is under it.
    for (connection, url) in [
        ("acme", "https://acme.example.com.evil.io/steal"),
        ("acme", "https://acme.example.com@evil.io/steal"),
        ("acme_api", "https://acme.example.com/apix"),
        ("acme_api", "https://acme.example.com/api/../admin"),
    ] {
        let error = input_error(
            engine
                .run_step(
                    "http.request",
                    Some(connection),
                    json!({"url": url}),
                    "look-alike",
                )
                .await,
            url,
        );
        assert!(
            error.contains("is not under the connection's base URL")
                || error.contains("credentials before the host"),
            "{url}: {error}"
        );
    }
    // The same with a host that answers: the look-alike never receives a request, so never
    // the Basic credentials of `snow`.
    let evil = ServiceNowEmulator::new(snow_config("other"));
    let evil_running = evil.start().await.unwrap();
    let evil_host = evil_running.base_url().replace("http://", "");
    let userinfo = format!("{}@{evil_host}/api/now/table/incident", running.base_url());
    let error = input_error(
        engine
            .run_step(
                "http.request",
                Some("snow"),
                json!({"url": userinfo}),
                "userinfo",
            )
            .await,
        &userinfo,
    );
    assert!(error.contains("credentials before the host"), "{error}");
    assert!(evil.requests().is_empty(), "{:?}", evil.requests());
    // An absolute URL that is under the base URL still works.
    let outputs = engine
        .run_step(
            "http.request",
            Some("snow"),
            json!({"url": format!("{}/api/now/table/incident", running.base_url())}),
            "absolute-url",
        )
        .await
        .unwrap();
    assert_eq!(outputs["status"], 200);
    assert_eq!(snow.requests().len(), 1);
}

#[tokio::test]
async fn credential_headers_are_refused_before_sending() {
    let (engine, snow, _running) = setup(&[]).await;
    // Run directly, the step has no load-time check in front of it: it refuses by itself.
    let error = input_error(
        engine
            .run_step(
                "http.request",
                Some("snow"),
                json!({"url": "/api/now/table/incident", "headers": {"cookie": "session=abc"}}),
                "cookie",
            )
            .await,
        "cookie",
    );
    assert!(error.contains("input /headers/cookie"), "{error}");
    assert!(error.contains("[http.<name>] connection"), "{error}");
    assert!(!error.contains("session=abc"), "{error}");
    assert!(snow.requests().is_empty());
}

#[tokio::test]
async fn a_text_body_is_sent_as_written_and_previewed_in_a_dry_run() {
    let text = "Escalated from Halo #7.\nLine two: 50% done & \"quoted\".";
    let (engine, snow, _running) = setup(&[flow(
        "attach",
        json!([{"id": "upload", "type": "http.request", "connection": "snow", "inputs": {
            "method": "POST", "url": "/api/now/attachment/file",
            "query": {"table_name": "incident", "table_sys_id": "{{trigger.ticket.sys_id}}", "file_name": "halo-{{trigger.ticket_id}}.txt"},
            "text": "{{trigger.ticket.details}}", "content_type": "text/plain; charset=utf-8",
            "expected_status": [201]}}]),
    )])
    .await;
    let sys_id = snow.insert_record("incident", json!({"short_description": "x"}));
    let payload = json!({"event": "new ticket logged", "object_id": 7, "ticket": {"sys_id": sys_id, "details": text}});

    // A dry run shows the request, body and content type included, and sends nothing.
    let reports = engine
        .dry_run("attach", &TriggerQuery::default(), payload.clone())
        .await
        .unwrap();
    let step = &reports[0].steps[0];
    assert_eq!(step.error, None, "{step:#?}");
    let preview = &step.requests[0];
    assert_eq!(preview.method, "POST");
    assert!(
        preview.url.ends_with(&format!(
            "/api/now/attachment/file?table_name=incident&table_sys_id={sys_id}&file_name=halo-7.txt"
        )),
        "{}",
        preview.url
    );
    assert_eq!(preview.body, Some(Value::String(text.into())));
    assert!(
        preview
            .headers
            .contains(&("Content-Type".into(), "text/plain; charset=utf-8".into())),
        "{:?}",
        preview.headers
    );
    assert!(
        preview
            .headers
            .contains(&("Authorization".into(), "Basic ***".into())),
        "the connection's credentials are masked: {:?}",
        preview.headers
    );
    assert!(snow.requests().is_empty(), "a dry run sends nothing");

    // The real run sends exactly that text with that content type.
    let runs = engine
        .run_to_completion("attach", payload, &TriggerQuery::default())
        .await
        .unwrap()
        .runs;
    assert_eq!(
        runs[0].summary.status,
        RunStatus::Succeeded,
        "{:#?}",
        runs[0]
    );
    let sent = snow.requests().pop().unwrap();
    assert_eq!(sent.body, text);
    assert_eq!(
        sent.headers.get("content-type").map(String::as_str),
        Some("text/plain; charset=utf-8")
    );
    let attachments = snow.attachments();
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0]["file_name"], "halo-7.txt");
    assert_eq!(attachments[0]["size_bytes"], text.len().to_string());
    let outputs = runs[0].steps[0].outputs.as_ref().unwrap();
    assert_eq!(outputs["status"], 201);
    assert_eq!(outputs["json"]["result"]["table_sys_id"], sys_id);
}

#[tokio::test]
async fn a_lost_answer_is_retried_for_a_get_but_not_for_a_post() {
    let post = json!([{"id": "create", "type": "http.request", "connection": "snow",
        "retry": {"max_attempts": 3, "initial_delay_ms": 10},
        "inputs": {"method": "POST", "url": "/api/now/table/incident", "json": {"short_description": "x"}}}]);
    let get = json!([{"id": "read", "type": "http.request", "connection": "snow",
        "retry": {"max_attempts": 3, "initial_delay_ms": 10},
        "inputs": {"url": "/api/now/table/incident"}}]);
    let (engine, snow, _running) = setup(&[flow("post", post), flow("get", get)]).await;
    let reset = haloflow_emulators::Fault::ResetAfterProcessing;
    snow.inject("POST", "/api/now/table/incident", reset.clone(), 1);
    snow.inject("GET", "/api/now/table/incident", reset, 1);

    let runs = engine
        .run_to_completion("post", json!({"event": "e"}), &TriggerQuery::default())
        .await
        .unwrap()
        .runs;
    assert_eq!(runs[0].summary.status, RunStatus::Failed);
    assert_eq!(
        runs[0].steps[0].error_code.as_deref(),
        Some("outcome_unknown")
    );
    assert_eq!(
        snow.records("incident").len(),
        1,
        "the POST was not sent twice"
    );
    assert_eq!(runs[0].steps[0].attempts, 2);

    let runs = engine
        .run_to_completion("get", json!({"event": "e"}), &TriggerQuery::default())
        .await
        .unwrap()
        .runs;
    assert_eq!(
        runs[0].summary.status,
        RunStatus::Succeeded,
        "{:#?}",
        runs[0]
    );
    assert_eq!(
        runs[0].steps[0].attempts, 2,
        "the GET was simply sent again"
    );
}
