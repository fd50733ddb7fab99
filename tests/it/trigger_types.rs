//! Trigger types are registered like steps: the core's `webhook` needs no integration, and an
//! embedder's integration adds its own type (outputs, delivery ids, flood control's default
//! correlation) through the same interface Halo uses for `halo.incidents`.

use std::sync::Arc;
use std::time::Duration;

use haloflow::engine::Engine;
use haloflow::flow::FlowValidator;
use haloflow::prelude::{Integration, Integrations, OutputSpec};
use haloflow::storage::{RunStatus, SqliteStorage};
use haloflow::trigger::{REQUEST_OUTPUTS, TriggerDescription, TriggerEvent, TriggerType};
use serde_json::{Map, Value, json};

/// `acme.alert`: an alerting system's webhook, `{"alert_id": "...", "severity": "..."}`.
struct AcmeAlert;

impl TriggerType for AcmeAlert {
    fn describe(&self) -> TriggerDescription {
        let mut outputs = vec![REQUEST_OUTPUTS[0]];
        outputs.push(OutputSpec {
            name: "alert_id",
            description: "The alert's id.",
        });
        outputs.push(OutputSpec {
            name: "severity",
            description: "low, high or critical.",
        });
        TriggerDescription {
            type_name: "acme.alert",
            summary: "An Acme alert.",
            outputs,
            default_correlate_on: vec!["severity"],
        }
    }

    fn delivery_id(&self, event: &Map<String, Value>) -> Option<String> {
        event.get("alert_id")?.as_str().map(str::to_owned)
    }

    fn outputs(&self, event: TriggerEvent<'_>) -> Value {
        json!({
            "request_id": event.request_id,
            "alert_id": event.event.get("alert_id"),
            "severity": event.event.get("severity"),
        })
    }
}

struct Acme;

impl Integration for Acme {
    fn name(&self) -> &'static str {
        "acme"
    }

    fn trigger_types(&self) -> Vec<Arc<dyn TriggerType>> {
        vec![Arc::new(AcmeAlert)]
    }
}

/// One `core.switch` on `value`, so a run succeeds without reaching any system.
fn flow(trigger_type: &str, value: &str) -> Value {
    json!({"id": "alerts", "name": "Alerts",
           "trigger": {"type": trigger_type, "auth": {"type": "none"}},
           "steps": [{"id": "route", "type": "core.switch", "inputs": {"value": value},
                      "paths": {"default": []}}]})
}

/// The public router of an engine with `integrations` (and nothing else) serving `flow`,
/// on a real port.
async fn serve(integrations: Integrations, flow: &Value) -> (Engine, String) {
    let registry = integrations.registry();
    let validated = FlowValidator::new(&registry)
        .validate_str(&flow.to_string(), None)
        .unwrap_or_else(|problems| panic!("{problems:?}"));
    let engine = Engine::builder()
        .integrations(integrations)
        .storage(Arc::new(SqliteStorage::in_memory().await.unwrap()))
        .flow(validated)
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = haloflow::server::router(engine.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (engine, base)
}

async fn post(base: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/triggers/alerts"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn finished(engine: &Engine, answer: &Value) -> haloflow::storage::RunDetail {
    let run_id = answer["run_ids"][0].as_str().expect("a run started");
    tokio::time::timeout(Duration::from_secs(20), engine.wait_for_run(run_id))
        .await
        .expect("the run finishes within 20 s")
        .unwrap()
}

#[tokio::test]
async fn an_integrations_trigger_type_gives_its_outputs_delivery_ids_and_correlation() {
    let integrations = Integrations::new().with(Acme);
    let (engine, base) = serve(integrations, &flow("acme.alert", "{{trigger.severity}}")).await;

    let (status, first) = post(&base, &json!({"alert_id": "a-1", "severity": "high"})).await;
    assert_eq!(status, 202, "{first}");
    let run = finished(&engine, &first).await;
    assert_eq!(run.summary.status, RunStatus::Succeeded);
    assert_eq!(run.trigger["alert_id"], "a-1");
    assert_eq!(run.trigger["severity"], "high");
    assert_eq!(run.steps[0].outputs.as_ref().unwrap()["value"], "high");

    // The type's delivery id: the same alert sent again starts no second run.
    let (status, again) = post(&base, &json!({"alert_id": "a-1", "severity": "high"})).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &json!(true)),
        "{again}"
    );

    // Flood control correlates on the type's default (`severity`): three more high alerts
    // run (four in the window), the fifth is suppressed; a low one still runs.
    for i in 2..5 {
        let (status, answer) = post(
            &base,
            &json!({"alert_id": format!("a-{i}"), "severity": "high"}),
        )
        .await;
        assert_eq!(
            (status, answer["suppressed"].clone()),
            (202, json!(false)),
            "{answer}"
        );
    }
    let (_, fifth) = post(&base, &json!({"alert_id": "a-5", "severity": "high"})).await;
    assert_eq!(fifth["suppressed"], true, "{fifth}");
    let (_, low) = post(&base, &json!({"alert_id": "a-6", "severity": "low"})).await;
    assert_eq!(low["suppressed"], false, "{low}");
}

#[tokio::test]
async fn the_core_webhook_trigger_needs_no_integration() {
    let (engine, base) = serve(
        Integrations::new(),
        &flow("webhook", "{{trigger.body.kind}}"),
    )
    .await;
    // No delivery id and no correlation by default: the same body five times is five runs.
    for _ in 0..5 {
        let (status, answer) = post(&base, &json!({"id": "same", "kind": "ping"})).await;
        assert_eq!(status, 202, "{answer}");
        let run = finished(&engine, &answer).await;
        assert_eq!(run.trigger["body"], json!({"id": "same", "kind": "ping"}));
        assert_eq!(run.steps[0].outputs.as_ref().unwrap()["value"], "ping");
    }
}

#[test]
fn flows_name_registered_trigger_types_and_their_outputs() {
    let registry = Integrations::new().with(Acme).registry();
    let problems = |flow: Value| {
        FlowValidator::new(&registry)
            .validate_str(&flow.to_string(), None)
            .expect_err("the flow is rejected")
    };

    let unknown = problems(flow("halo.incidents", "x"));
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert_eq!(unknown[0].pointer, "/trigger/type");
    assert_eq!(unknown[0].code.as_str(), "unknown_trigger_type");
    assert_eq!(unknown[0].hint, "use one of: acme.alert, webhook");

    let wrong_output = problems(flow("acme.alert", "{{trigger.ticket_id}}"));
    assert_eq!(wrong_output.len(), 1, "{wrong_output:?}");
    assert_eq!(wrong_output[0].pointer, "/steps/0/inputs/value");
    assert!(
        wrong_output[0]
            .message
            .contains("the acme.alert trigger has no output `ticket_id`")
    );
    assert_eq!(
        wrong_output[0].hint,
        "trigger outputs: request_id, alert_id, severity"
    );

    let mut correlated = flow("acme.alert", "x");
    correlated["trigger"]["flood_control"] = json!({"correlate_on": ["body.kind"]});
    let wrong_correlation = problems(correlated);
    assert_eq!(
        wrong_correlation[0].pointer,
        "/trigger/flood_control/correlate_on/0"
    );
}
