//! `schemas/openapi.json` documents the HTTP API: every route of the router is in it, and real
//! answers validate against the documented schemas.

use std::collections::BTreeSet;

use crate::common::{Harness, Options, sample_payload};
use serde_json::{Value, json};

fn openapi() -> Value {
    serde_json::from_str(&std::fs::read_to_string("schemas/openapi.json").unwrap()).unwrap()
}

/// (METHOD, path) of every `.route(...)` in the router: the core's and the integrations'.
fn routes() -> BTreeSet<(String, String)> {
    let source = [
        "crates/core/src/server/mod.rs",
        "crates/servicenow/src/integration.rs",
    ]
    .map(|file| std::fs::read_to_string(file).unwrap())
    .join("\n");
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
    let (status, setup) = get("/api/flows/new-ticket-routing/setup?recipients=ops".into()).await;
    check(&doc, "/api/flows/{flow_id}/setup", "get", status, &setup);
    let (status, session) = get("/api/session".into()).await;
    check(&doc, "/api/session", "get", status, &session);
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
    for path in ["/api/flows/escalate-to-partner/test", "/api/flows/reload"] {
        let url = format!("{}{path}", h.api);
        let response = h.client.post(url).json(&json!({})).send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        let documented = path.replace("escalate-to-partner", "{flow_id}");
        check(&doc, &documented, "post", status, &body);
    }
    let (status, started) = replay(json!({"from_step": "link_back"})).await;
    check(&doc, "/api/runs/{run_id}/replay", "post", status, &started);
    let (status, refused) = replay(json!({"from": "somewhere"})).await;
    check(&doc, "/api/runs/{run_id}/replay", "post", status, &refused);
    assert_eq!(status, 400, "a malformed body is the request's fault");
}

/// xorshift64*: the same seed gives the same requests, with no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Whether `instance` fits `schema`, with the document's components in scope.
fn fits(doc: &Value, schema: &Value, instance: &Value) -> bool {
    let root = json!({"components": doc["components"], "allOf": [schema]});
    jsonschema::validator_for(&root).unwrap().is_valid(instance)
}

/// A query parameter's text as the JSON value its schema describes (integers and booleans
/// are parsed; text that does not parse stays text and so fails those types).
fn query_value(doc: &Value, schema: &Value, text: &str) -> Value {
    let schema = match schema["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
        None => schema,
    };
    match schema["type"].as_str() {
        Some("integer") => text.parse::<i64>().map_or(json!(text), |n| json!(n)),
        Some("boolean") => text.parse::<bool>().map_or(json!(text), |b| json!(b)),
        _ => json!(text),
    }
}

/// Values for a query parameter, valid and not: its enum, numbers around its bounds, times,
/// and text that fits nothing. Which are valid is decided by the schema, not here.
fn query_candidates(doc: &Value, schema: &Value) -> Vec<String> {
    let schema = match schema["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
        None => schema,
    };
    let mut values: Vec<String> = [
        "", "banana", "-1", "0", "1", "1000", "1001", "1.5", "true", "false",
    ]
    .map(String::from)
    .to_vec();
    values.extend(["2026-11-23T10:00:00Z", "1700000000000", "2026-11-23", " "].map(String::from));
    for item in schema["enum"].as_array().into_iter().flatten() {
        values.push(item.as_str().unwrap().to_owned());
    }
    values
}

/// Bodies for an operation, valid and not; validity is decided by the documented schema.
fn body_candidates(path: &str, sample: &Value) -> Vec<Option<String>> {
    let mut bodies: Vec<Option<String>> = [
        "[]",
        "[null]",
        "[1]",
        "null",
        "5",
        "\"x\"",
        "not json",
        "{\"from\": \"x\"}",
        "{\"from_step\": 5}",
        "{\"from_step\": \"create\", \"from\": \"trigger\"}",
        "{\"x\": 1}",
    ]
    .map(|b| Some(b.to_owned()))
    .to_vec();
    if path.starts_with("/triggers/") {
        // Valid events are samples: a made-up event would send made-up requests to Halo.
        bodies.push(Some(sample.to_string()));
        bodies.push(Some(json!([sample]).to_string()));
    } else {
        bodies.push(None);
        for body in [
            "{}",
            "{\"from\": \"failure\"}",
            "{\"from\": \"trigger\"}",
            "{\"from_step\": \"create\"}",
        ] {
            bodies.push(Some(body.to_owned()));
        }
    }
    bodies
}

#[tokio::test]
async fn generated_requests_get_documented_answers() {
    let doc = openapi();
    let h = Harness::start().await;
    let mut sample = sample_payload("halo-new-ticket.json");
    let (_, first) = h.post_json(&h.escalate_url("ops"), &sample).await;
    let run_id = first["run_ids"][0].as_str().unwrap().to_owned();
    h.wait(&run_id).await;
    let mut rng = Rng(0x5EED_0017);
    let mut ticket = 5000;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for _round in 0..12 {
                let mut query = Vec::new();
                let mut query_ok = true;
                let mut url_path = path.clone();
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    let (name, schema) =
                        (parameter["name"].as_str().unwrap(), &parameter["schema"]);
                    if parameter["in"] == "path" {
                        let known = match name {
                            "run_id" => run_id.clone(),
                            "flow_id" => "escalate-to-partner".to_owned(),
                            "side" => "customers".to_owned(),
                            _ => "12".to_owned(),
                        };
                        let value = if rng.below(4) == 0 {
                            "nope".to_owned()
                        } else {
                            known
                        };
                        url_path = url_path.replace(&format!("{{{name}}}"), &value);
                    } else if rng.below(3) != 0 {
                        let value = rng.pick(&query_candidates(&doc, schema)).clone();
                        query_ok &= fits(&doc, schema, &query_value(&doc, schema, &value));
                        query.push((name.to_owned(), value));
                    }
                }
                if path.starts_with("/triggers/") {
                    query.push(("apiKey".into(), crate::common::ESCALATE_KEY.into()));
                }
                let body = operation["requestBody"].is_object().then(|| {
                    ticket += 1;
                    sample["object_id"] = json!(ticket);
                    rng.pick(&body_candidates(path, &sample)).clone()
                });
                let body_schema =
                    &operation["requestBody"]["content"]["application/json"]["schema"];
                let body_ok = match body.clone().flatten() {
                    Some(text) => serde_json::from_str::<Value>(&text)
                        .is_ok_and(|v| fits(&doc, body_schema, &v)),
                    None => operation["requestBody"]["required"] != true,
                };
                // The API and /metrics are on the admin listener (no credentials configured).
                let public = ["/triggers/", "/servicenow/", "/health"]
                    .iter()
                    .any(|p| path.starts_with(p));
                let base = if public { &h.base } else { &h.api };
                let mut request = h
                    .client
                    .request(
                        method.to_uppercase().parse().unwrap(),
                        format!("{base}{url_path}"),
                    )
                    .query(&query);
                if let Some(Some(text)) = &body {
                    request = request
                        .header("Content-Type", "application/json")
                        .body(text.clone());
                }
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let text = response.text().await.unwrap();
                let what = format!(
                    "{} {url_path} {query:?} body {body:?}: {status} {text}",
                    method.to_uppercase()
                );
                let documented = &operation["responses"][status.to_string()];
                assert!(documented.is_object(), "undocumented status: {what}");
                let schema = &documented["content"]["application/json"]["schema"];
                if schema.is_object() {
                    let answer: Value =
                        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
                    check(&doc, path, method, status, &answer);
                }
                // The API checks what it documents: 400 exactly when the request does not
                // fit (the webhook's answers depend on configuration, not on its schema).
                if !path.starts_with("/servicenow/") && status != 404 {
                    assert_eq!(status == 400, !(query_ok && body_ok), "{what}");
                }
            }
        }
    }
}
