//! The HTTP surface a stranger reaches (issue 17): the API only with credentials or on the
//! loopback admin listener, state-changing calls only as JSON from the server's own origin.

mod common;

use base64::Engine as _;
use common::{API_PASSWORD, API_TOKEN, Harness, Options};
use haloflow::config::Config;
use serde_json::Value;

/// Every API operation of the served OpenAPI document (and `/metrics`), with path parameters
/// filled in.
fn api_operations() -> Vec<(reqwest::Method, String)> {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string("schemas/openapi.json").unwrap()).unwrap();
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !(path.starts_with("/api/") || path == "/metrics") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase().parse().unwrap();
            operations.push((method, path.replace("{run_id}", "no-such-run")));
        }
    }
    assert!(operations.len() >= 7, "{operations:?}");
    operations
}

fn with_credentials(config: &mut Config) {
    config.server.api.token_secret_name = Some("HALOFLOW_API_TOKEN".into());
    config.server.api.basic_username = Some("ops".into());
    config.server.api.password_secret_name = Some("HALOFLOW_API_PASSWORD".into());
}

async fn call(
    h: &Harness,
    base: &str,
    (method, path): &(reqwest::Method, String),
    authorization: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = h
        .client
        .request(method.clone(), format!("{base}{path}"))
        .header("Content-Type", "application/json");
    if *method == reqwest::Method::POST {
        request = request.body("{}");
    }
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn with_credentials_every_api_path_refuses_anonymous_calls_on_both_listeners() {
    let h = Harness::start_with(Options {
        configure: with_credentials,
        ..Options::default()
    })
    .await;
    let basic = |scheme: &str, password: &str| {
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("ops:{password}"));
        format!("{scheme} {pair}")
    };
    for base in [h.base.clone(), h.api.clone()] {
        for operation in api_operations() {
            for refused in [
                None,
                Some("Bearer wrong-token".to_owned()),
                Some(basic("Basic", "wrong")),
                Some(format!("Basic {API_TOKEN}")),
            ] {
                let (status, headers, body) = call(&h, &base, &operation, refused.as_deref()).await;
                assert_eq!(status, 401, "{base} {operation:?} {refused:?}: {body}");
                assert_eq!(body["error"]["code"], "invalid_auth", "{operation:?}");
                assert!(headers.contains_key("www-authenticate"), "{operation:?}");
            }
            for accepted in [
                format!("Bearer {API_TOKEN}"),
                format!("bearer {API_TOKEN}"),
                basic("Basic", API_PASSWORD),
                basic("BASIC", API_PASSWORD),
            ] {
                let (status, _, body) = call(&h, &base, &operation, Some(&accepted)).await;
                assert!(
                    status == 200 || body["error"]["code"] == "not_found",
                    "{base} {operation:?} {accepted}: {status} {body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn without_credentials_the_api_is_served_on_the_loopback_admin_listener_only() {
    let h = Harness::start().await;
    for operation in api_operations() {
        let (status, _, body) = call(&h, &h.base, &operation, None).await;
        assert_eq!(status, 404, "public {operation:?}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
        let (status, _, body) = call(&h, &h.api, &operation, None).await;
        assert!(
            status == 200
                || body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("no run"),
            "admin {operation:?}: {status} {body}"
        );
    }
    let health = h
        .client
        .get(format!("{}/health", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "health stays public");
}

#[tokio::test]
async fn metrics_can_be_made_public() {
    let h = Harness::start_with(Options {
        configure: |config| config.server.metrics_public = true,
        ..Options::default()
    })
    .await;
    let metrics = h
        .client
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let runs = h
        .client
        .get(format!("{}/api/runs", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(runs.status(), 404);
}

#[tokio::test]
async fn replay_takes_only_json_from_the_servers_own_origin() {
    let h = Harness::start().await;
    let url = format!("{}/api/runs/no-such-run/replay", h.api);
    let send = |content_type: &'static str, origin: Option<String>| {
        let mut request = h
            .client
            .post(&url)
            .header("Content-Type", content_type)
            .body("{}");
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, body) = send(content_type, None).await;
        assert_eq!(status, 415, "{content_type}: {body}");
        assert_eq!(body["error"]["code"], "unsupported_media_type");
    }
    for origin in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        let (status, body) = send("application/json", Some(origin.to_owned())).await;
        assert_eq!(status, 403, "{origin}: {body}");
        assert_eq!(body["error"]["code"], "forbidden_origin");
    }
    // The server's own origin, and no Origin at all (a client, not a page), get through.
    let (status, body) = send("application/json", Some(h.api.clone())).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = send("application/json", None).await;
    assert_eq!(status, 404, "{body}");
}
