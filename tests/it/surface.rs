//! The HTTP surface a stranger reaches (issue 17): the API only with credentials or on the
//! loopback admin listener, state-changing calls only as JSON from the server's own origin.

use crate::common::{API_PASSWORD, API_TOKEN, Harness, Options};
use base64::Engine as _;
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
            let path = path.replace("{run_id}", "no-such-run");
            operations.push((method, path.replace("{flow_id}", "no-such-flow")));
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
    client: &reqwest::Client,
    base: &str,
    (method, path): &(reqwest::Method, String),
    authorization: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = client
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
        for (i, operation) in api_operations().into_iter().enumerate() {
            // Each operation's wrong guesses from an address of their own: failures are
            // limited per address.
            let stranger = reqwest::Client::builder()
                .local_address(std::net::IpAddr::from([127, 0, 1, i as u8 + 1]))
                .build()
                .unwrap();
            for refused in [
                None,
                Some("Bearer wrong-token".to_owned()),
                Some(basic("Basic", "wrong")),
                Some(format!("Basic {API_TOKEN}")),
            ] {
                let (status, headers, body) =
                    call(&stranger, &base, &operation, refused.as_deref()).await;
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
                let (status, _, body) = call(&h.client, &base, &operation, Some(&accepted)).await;
                let missing = ["not_found", "unknown_flow"];
                assert!(
                    status == 200
                        || missing.contains(&body["error"]["code"].as_str().unwrap_or("")),
                    "{base} {operation:?} {accepted}: {status} {body}"
                );
            }
        }
    }
    let metrics = h.metrics().await;
    let refused = 2 * 4 * api_operations().len();
    let line = format!(
        "haloflow_rejected_requests_total{{flow=\"api\",reason=\"invalid_auth\"}} {refused}"
    );
    assert!(metrics.contains(&line), "{line} in {metrics}");
}

#[tokio::test]
async fn without_credentials_the_api_is_served_on_the_loopback_admin_listener_only() {
    let h = Harness::start().await;
    for operation in api_operations() {
        let (status, _, body) = call(&h.client, &h.base, &operation, None).await;
        assert_eq!(status, 404, "public {operation:?}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
        let (status, _, body) = call(&h.client, &h.api, &operation, None).await;
        assert!(
            status == 200
                || ["no run", "no flow"]
                    .iter()
                    .any(|m| body["error"]["message"].as_str().unwrap().contains(m)),
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
    let metrics = h.metrics().await;
    for reason in ["forbidden_origin", "unsupported_media_type"] {
        let line =
            format!("haloflow_rejected_requests_total{{flow=\"api\",reason=\"{reason}\"}} 3");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
}

/// A page of another site whose name was re-pointed to 127.0.0.1 (DNS rebinding) sends its
/// own name as Host (and Origin): the open admin listener answers it nothing but health.
#[tokio::test]
async fn the_open_listener_answers_only_to_loopback_names() {
    let h = Harness::start().await;
    let port = h.api.rsplit(':').next().unwrap().to_owned();
    let send = |method: reqwest::Method, path: &str, host: &str| {
        let mut request = h
            .client
            .request(method.clone(), format!("{}{path}", h.api))
            .header("Host", host);
        if method == reqwest::Method::POST {
            let origin = format!("http://{host}");
            request = request
                .header("Origin", origin)
                .json(&serde_json::json!({}));
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    for host in [
        format!("attacker.example:{port}"),
        "attacker.example".to_owned(),
        format!("127.0.0.1.attacker.example:{port}"),
        format!("ops@127.0.0.1:{port}"),
    ] {
        for (method, path) in [
            (reqwest::Method::GET, "/api/runs"),
            (reqwest::Method::GET, "/api/session"),
            (reqwest::Method::GET, "/console/"),
            (reqwest::Method::GET, "/metrics"),
            (reqwest::Method::POST, "/api/flows/escalate-to-partner/test"),
        ] {
            let (status, body) = send(method, path, &host).await;
            assert_eq!(status, 421, "{host} {path}: {body}");
            assert_eq!(body["error"]["code"], "forbidden_host", "{host} {path}");
        }
        let (status, _) = send(reqwest::Method::GET, "/health", &host).await;
        assert_eq!(status, 200, "health answers any name");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        "[::1]:9".to_owned(),
        "127.0.0.2".to_owned(),
    ] {
        let (status, body) = send(reqwest::Method::GET, "/api/runs", &host).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    // A page of this machine at the listener's port may change things; a page on another
    // local port may not, whatever Host it names.
    let origin_from = |origin: String| {
        h.client
            .post(format!("{}/api/runs/no-such-run/replay", h.api))
            .header("Origin", origin)
            .json(&serde_json::json!({}))
            .send()
    };
    let local = origin_from(format!("http://localhost:{port}"))
        .await
        .unwrap();
    assert_eq!(local.status(), 404);
    let other_port = origin_from("http://localhost:1".to_owned()).await.unwrap();
    assert_eq!(other_port.status(), 403);
}

/// The Origin check compares with the server's own addresses, never with the Host the request
/// names (which a page of another site chooses).
#[tokio::test]
async fn an_origin_that_matches_only_the_requests_own_host_is_refused() {
    let h = Harness::start_with(Options {
        configure: with_credentials,
        ..Options::default()
    })
    .await;
    let port = h.base.rsplit(':').next().unwrap().to_owned();
    let replay = |host: String, origin: String| {
        h.client
            .post(format!("{}/api/runs/no-such-run/replay", h.base))
            .bearer_auth(API_TOKEN)
            .header("Host", host)
            .header("Origin", origin)
            .json(&serde_json::json!({}))
            .send()
    };
    let evil = format!("evil.example:{port}");
    let refused = replay(evil.clone(), format!("http://{evil}"))
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden_origin");
    let own = replay(evil, h.base.clone()).await.unwrap();
    assert_eq!(own.status(), 404, "the listener's own address");
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_closes() {
    let h = Harness::start_with(Options {
        configure: |config| {
            config.server.max_connections = 1;
            config.server.header_timeout_secs = 30;
        },
        ..Options::default()
    })
    .await;
    let holder = tokio::net::TcpStream::connect(h.base.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let health = format!("{}/health", h.base);
    let waiting = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let status = reqwest::get(health).await.unwrap().status().as_u16();
        (status, started.elapsed())
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(
        !waiting.is_finished(),
        "served while the only slot was taken"
    );
    drop(holder);
    let (status, took) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert!(took >= std::time::Duration::from_millis(600), "{took:?}");
}

/// Text of `/api/requests` and every byte of the database.
async fn stored(h: &Harness) -> (String, Vec<u8>) {
    let requests = h
        .client
        .get(format!("{}/api/requests?limit=1000", h.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (requests, h.database_bytes())
}

#[tokio::test]
async fn a_secret_in_the_wrong_parameter_is_never_stored() {
    let h = Harness::start().await;
    let payload = crate::common::sample_payload("halo-new-ticket.json");
    // The key under a name of another case: refused, and not kept.
    let url = format!(
        "{}/triggers/escalate-to-partner?apikey={}&recipients=ops",
        h.base,
        crate::common::ESCALATE_KEY
    );
    assert_eq!(h.post_json(&url, &payload).await.0, 401);
    // Accepted with the key, and secrets in other parameters too: those are dropped.
    let url = format!(
        "{}&APIKEY={}&note={}&{}=x",
        h.escalate_url("ops"),
        crate::common::ESCALATE_KEY,
        crate::common::TRIAGE_KEY,
        crate::common::ROUTING_PASSWORD,
    );
    let (status, answer) = h.post_json(&url, &payload).await;
    assert_eq!(status, 202, "{answer}");
    h.wait(answer["run_ids"][0].as_str().unwrap()).await;
    let (requests, database) = stored(&h).await;
    assert!(requests.contains("\"recipients\":[\"ops\"]"), "{requests}");
    for secret in [
        crate::common::ESCALATE_KEY,
        crate::common::TRIAGE_KEY,
        crate::common::ROUTING_PASSWORD,
    ] {
        assert!(!requests.contains(secret), "{secret} in {requests}");
        assert!(
            !crate::common::contains(&database, secret),
            "{secret} in the database"
        );
    }
}

#[tokio::test]
async fn a_flood_of_rejected_requests_costs_a_bounded_amount_of_storage() {
    let h = Harness::start_with(Options {
        configure: |config| config.server.max_header_bytes = 64 * 1024,
        ..Options::default()
    })
    .await;
    let before = h.database_bytes().len();
    let padding = "p".repeat(50 * 1024);
    let url = format!(
        "{}/triggers/escalate-to-partner?apiKey=wrong&pad={padding}",
        h.base
    );
    let started = std::time::Instant::now();
    for _ in 0..50 {
        let sends: Vec<_> = (0..10)
            .map(|_| {
                let request = h.client.post(&url).json(&serde_json::json!({"event": "x"}));
                tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
            })
            .collect();
        for send in sends {
            assert_eq!(send.await.unwrap(), 401);
        }
    }
    let (requests, database) = stored(&h).await;
    let grown = database.len().saturating_sub(before);
    assert!(
        grown < 512 * 1024,
        "500 rejections of 50 KB grew the database by {grown} bytes"
    );
    assert!(!requests.contains("ppppp"), "no query is stored");
    // At most `rejections_logged_per_sec` (5) summaries a second, plus one second's burst:
    // however slowly the machine sent them, never one per rejection.
    let seconds = started.elapsed().as_secs() as usize + 1;
    let listed: serde_json::Value = serde_json::from_str(&requests).unwrap();
    let stored_rejections = (listed["requests"].as_array().unwrap().iter())
        .filter(|r| r["status"] == "rejected")
        .count();
    assert!(
        stored_rejections >= 1 && stored_rejections <= 5 * (seconds + 1) && stored_rejections < 500,
        "a few summaries per second are kept: {stored_rejections} in {seconds} s"
    );
    let metrics = h.metrics().await;
    let line = "haloflow_rejected_requests_total{flow=\"escalate-to-partner\",reason=\"invalid_auth\"} 500";
    assert!(metrics.contains(line), "{metrics}");
}

fn quick_timeouts(config: &mut Config) {
    config.server.header_timeout_secs = 1;
    config.server.idle_timeout_secs = 3;
}

/// Writes `sent` on a fresh connection, then waits for the server to answer or close it;
/// what was read, and how long it took.
async fn stall(base: &str, sent: &str) -> (String, std::time::Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(sent.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the connection was still open after 10 s");
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let h = Harness::start_with(Options {
        configure: quick_timeouts,
        ..Options::default()
    })
    .await;
    // Slowloris: part of a request line and a header, then nothing.
    let (answer, took) = stall(
        &h.base,
        "POST /triggers/escalate-to-partner HTTP/1.1\r\nHost: x\r\n",
    )
    .await;
    assert!(took < std::time::Duration::from_secs(4), "{took:?}");
    assert!(!answer.contains("202"), "{answer}");
    // Connected, silent.
    let (_, took) = stall(&h.base, "").await;
    assert!(took < std::time::Duration::from_secs(4), "{took:?}");
    // A body that stops coming.
    let head = format!(
        "POST /triggers/escalate-to-partner?apiKey={} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"a\":",
        crate::common::ESCALATE_KEY
    );
    let (_, took) = stall(&h.base, &head).await;
    assert!(took < std::time::Duration::from_secs(4), "{took:?}");
    // An idle kept-alive connection after an answer.
    let (answer, took) = stall(&h.base, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < std::time::Duration::from_secs(4), "{took:?}");
    // The two that never sent a whole request are counted (and logged) as rejections.
    let metrics = h.metrics().await;
    let line = "haloflow_rejected_requests_total{flow=\"connection\",reason=\"request_timeout\"} 2";
    assert!(metrics.contains(line), "{line} in {metrics}");
}

#[tokio::test]
async fn over_long_urls_and_headers_get_json_errors() {
    let h = Harness::start().await;
    let long = "x".repeat(40 * 1024);
    let response = h
        .client
        .post(format!(
            "{}/triggers/escalate-to-partner?pad={long}",
            h.base
        ))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 414);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "uri_too_long");
    let response = h
        .client
        .post(format!("{}/triggers/escalate-to-partner", h.base))
        .header("X-Padding", &long)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "headers_too_large");
    assert_eq!(
        h.engine
            .storage()
            .list_requests(&Default::default())
            .await
            .unwrap()
            .len(),
        0
    );
}

/// What axum refuses before a handler runs (a path segment or query that does not decode, a
/// repeated parameter, a body over the limit) is answered as JSON too.
#[tokio::test]
async fn undecodable_paths_queries_and_bodies_get_json_errors() {
    let h = Harness::start().await;
    for (path, code) in [
        ("/api/flows/%FF/setup", "invalid_path"),
        ("/api/runs/%FF", "invalid_path"),
        ("/console/assets/%FF", "invalid_path"),
        (
            "/console/login?next=/console/&next=/console/x",
            "invalid_query",
        ),
    ] {
        let response = h
            .client
            .get(format!("{}{path}", h.api))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
    for path in [
        "/api/flows/escalate-to-partner/test",
        "/api/runs/no-such-run/replay",
    ] {
        let response = h
            .client
            .post(format!("{}{path}", h.api))
            .header("Content-Type", "application/json")
            .body(vec![b' '; 2 * 1024 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "payload_too_large", "{path}");
    }
}

/// Starts `haloflow serve` with the routing flow and `env`, sends a health check and a request
/// with a wrong password, stops it, and returns its stderr.
async fn served_logs(env: &[(&str, &str)]) -> String {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    std::fs::copy("flows/new-ticket-routing.json", flows.join("routing.json")).unwrap();
    let config = dir.path().join("haloflow.toml");
    std::fs::write(&config, "[halo.halo]\nbase_url = \"http://127.0.0.1:9\"\nclient_id = \"c\"\nclient_secret_name = \"LOG_HALO_SECRET\"\n").unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_haloflow"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--flows")
        .arg(&flows)
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(dir.path().join("data"))
        .env("LOG_HALO_SECRET", "s")
        .env("HALOFLOW_ROUTING_PASSWORD", "pw")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let base = first.split_whitespace().nth(3).unwrap().to_owned();
    let client = reqwest::Client::new();
    client.get(format!("{base}/health")).send().await.unwrap();
    let refused = client
        .post(format!("{base}/triggers/new-ticket-routing"))
        .basic_auth("halo", Some("PW-guess-3f1"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::read_to_string(dir.path().join("stderr")).unwrap()
}

#[tokio::test]
async fn logs_are_plain_text_off_a_terminal_or_json_and_debug_is_applied() {
    let text = served_logs(&[("HALOFLOW_LOG", "haloflow=debug")]).await;
    assert!(
        !text.contains('\u{1b}'),
        "no ANSI codes off a terminal: {text:?}"
    );
    assert!(
        text.contains("DEBUG") && text.contains("Answered a request."),
        "{text}"
    );
    let rejected = text
        .lines()
        .find(|l| l.contains("Rejected a request"))
        .unwrap_or_else(|| panic!("the rejection is logged: {text}"));
    assert!(
        rejected.contains("WARN") && rejected.contains("invalid_auth"),
        "{rejected}"
    );
    assert!(rejected.contains("client=127.0.0.1:"), "{rejected}");
    assert!(!text.contains("PW-guess-3f1"), "{rejected}");

    let json = served_logs(&[("HALOFLOW_LOG_FORMAT", "json")]).await;
    let lines: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let rejected = lines
        .iter()
        .find(|l| l["fields"]["reason"] == "invalid_auth")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(rejected["level"], "WARN");
    assert_eq!(rejected["fields"]["flow_id"], "new-ticket-routing");
    assert!(
        rejected["fields"]["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(
        !json.contains("DEBUG"),
        "the default filter is haloflow=warn"
    );

    let invalid = served_logs(&[("HALOFLOW_LOG", "haloflow=loud")]).await;
    assert!(invalid.contains("is not a log filter"), "{invalid}");
}
