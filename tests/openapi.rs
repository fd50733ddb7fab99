//! `schemas/openapi.json` documents the HTTP API: every route of the router is in it, and real
//! answers validate against the documented schemas.

mod common;

use std::collections::BTreeSet;

use common::{Harness, Options, sample_payload};
use serde_json::{Value, json};

fn openapi() -> Value {
    serde_json::from_str(&std::fs::read_to_string("schemas/openapi.json").unwrap()).unwrap()
}

/// (METHOD, path) of every `.route(...)` in the router.
fn routes() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string("src/server/mod.rs").unwrap();
    source
        .lines()
        .filter_map(|line| line.trim().strip_prefix(".route(\""))
        .map(|rest| {
            let (path, handler) = rest.split_once("\", ").unwrap();
            let method = handler.split('(').next().unwrap().to_uppercase();
            (method, path.to_owned())
        })
        .collect()
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let doc = openapi();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(|method| (method.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let routes = routes();
    assert!(routes.len() >= 8, "{routes:?}");
    assert_eq!(documented, routes);
}

/// The problems of `body` against the documented schema of `path`/`method`/`status`.
fn problems(doc: &Value, path: &str, method: &str, status: u16, body: &Value) -> Vec<String> {
    let schema = &doc["paths"][path][method]["responses"][status.to_string()]["content"]["application/json"]
        ["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status} is not documented"
    );
    let root = json!({"components": doc["components"], "allOf": [schema]});
    let validator = jsonschema::validator_for(&root).unwrap();
    validator
        .iter_errors(body)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_schemas_reject_what_they_do_not_describe() {
    let doc = openapi();
    let stray = json!({"runs": [{"id": "r", "bogus": 1}]});
    assert!(!problems(&doc, "/api/runs", "get", 200, &stray).is_empty());
    let error = json!({"error": {"code": "x"}});
    assert!(!problems(&doc, "/api/runs/{run_id}", "get", 404, &error).is_empty());
}

fn check(doc: &Value, path: &str, method: &str, status: u16, body: &Value) {
    let errors = problems(doc, path, method, status, body);
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match the OpenAPI schema: {errors:#?}\n{body:#}"
    );
}

#[tokio::test]
async fn answers_match_the_documented_schemas() {
    let doc = openapi();
    let h = Harness::start_with(Options {
        configure: |config| {
            config.retry.initial_delay_ms = Some(10);
        },
        ..Options::default()
    })
    .await;
    let get = |path: String| {
        let client = h.client.clone();
        let url = format!("{}{path}", h.api);
        async move {
            let response = client.get(url).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let payload = sample_payload("halo-new-ticket.json");
    // One run retried then succeeded, one failed, one duplicate delivery.
    h.partner.fail_next("POST", "/api/Tickets", 503, 1, None);
    let (status, accepted) = h.post_json(&h.escalate_url("ops"), &payload).await;
    check(&doc, "/triggers/{flow_id}", "post", status, &accepted);
    let (status, duplicate) = h.post_json(&h.escalate_url("ops"), &payload).await;
    assert_eq!(status, 200);
    check(&doc, "/triggers/{flow_id}", "post", status, &duplicate);
    let ok = h.wait(accepted["run_ids"][0].as_str().unwrap()).await;
    h.halo.fail_next("POST", "/api/Tickets", 400, 2, None); // twice: a 400 gets one fresh token
    let (_, second) = h
        .post_json(
            &h.escalate_url("ops"),
            &sample_payload("halo-new-ticket.json"),
        )
        .await;
    let failed = h.wait(second["run_ids"][0].as_str().unwrap()).await;

    let (status, runs) = get("/api/runs?flow=escalate-to-partner".into()).await;
    check(&doc, "/api/runs", "get", status, &runs);
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2);
    for id in [&ok.summary.id, &failed.summary.id] {
        let (status, run) = get(format!("/api/runs/{id}")).await;
        check(&doc, "/api/runs/{run_id}", "get", status, &run);
    }
    let (status, missing) = get("/api/runs/nope".into()).await;
    check(&doc, "/api/runs/{run_id}", "get", status, &missing);
    let (status, requests) = get("/api/requests".into()).await;
    check(&doc, "/api/requests", "get", status, &requests);
    let (status, flows) = get("/api/flows".into()).await;
    check(&doc, "/api/flows", "get", status, &flows);
    let (status, health) = get("/health".into()).await;
    check(&doc, "/health", "get", status, &health);
    let (status, bad) = get("/api/runs?status=done".into()).await;
    check(&doc, "/api/runs", "get", status, &bad);

    let replay = |body: Value| {
        let client = h.client.clone();
        let url = format!("{}/api/runs/{}/replay", h.api, failed.summary.id);
        async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, started) = replay(json!({"from_step": "link_back"})).await;
    check(&doc, "/api/runs/{run_id}/replay", "post", status, &started);
    let (status, refused) = replay(json!({"from": "somewhere"})).await;
    check(&doc, "/api/runs/{run_id}/replay", "post", status, &refused);
    assert_eq!(status, 409);
}
