//! Flood control and rate limits on the trigger, with a manual clock instead of sleeping.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Harness, Options, api_calls, sample_payload};
use haloflow::flood::{Admission, FloodClock, FloodControl, MemoryFloodControl};
use haloflow::flow::FloodControlDef;
use haloflow::storage::RequestFilter;
use serde_json::{Value, json};

async fn send(h: &Harness, ticket_id: i64) -> (u16, Value) {
    let mut payload = sample_payload("halo-new-ticket.json");
    payload["object_id"] = json!(ticket_id);
    h.post_json(&h.escalate_url("ops"), &payload).await
}

#[tokio::test]
async fn six_correlated_requests_give_four_runs_and_two_suppressed_under_the_fourth() {
    let clock = FloodClock::manual();
    let h = Harness::start_with(Options {
        clock: clock.clone(),
        ..Options::default()
    })
    .await;
    let mut answers = Vec::new();
    for _ in 0..6 {
        let (status, answer) = send(&h, 4242).await;
        assert_eq!(
            status, 202,
            "suppressed requests are answered 202 too: {answer}"
        );
        answers.push(answer);
    }
    for answer in &answers[..4] {
        assert_eq!(answer["suppressed"], false);
        h.wait(answer["run_ids"][0].as_str().unwrap()).await;
    }
    let fourth = answers[3]["request_id"].as_str().unwrap();
    for (answer, count) in answers[4..].iter().zip([1, 2]) {
        assert_eq!(answer["suppressed"], true, "{answer}");
        assert_eq!(answer["parent_request_id"], fourth);
        assert_eq!(answer["suppressed_count"], count);
        assert_eq!(answer["run_ids"], json!([]));
    }
    let created = api_calls(&h.partner)
        .into_iter()
        .filter(|(_, path, _)| path == "/api/Tickets")
        .count();
    assert_eq!(created, 4, "suppressed requests start no run");

    // The history shows the fourth request with its two suppressed children, stored with their payload.
    let storage = h.engine.storage();
    let requests = storage
        .list_requests(&RequestFilter::default())
        .await
        .unwrap();
    let parent = requests.iter().find(|r| r.id == fourth).unwrap();
    let children: Vec<&str> = answers[4..]
        .iter()
        .map(|a| a["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(parent.suppressed_children, children);
    assert_eq!(parent.suppressed_count, 2);
    let suppressed = storage
        .list_requests(&RequestFilter {
            suppressed_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(suppressed.len(), 2);
    assert!(
        suppressed
            .iter()
            .all(|r| r.suppressed_under.as_deref() == Some(fourth) && r.run_ids.is_empty())
    );
    let reader = haloflow::storage::SqliteStorage::open_file(&h.db_path())
        .await
        .unwrap();
    let (body,): (String,) = sqlx::query_as("SELECT body FROM trigger_requests WHERE id = $1")
        .bind(children[1])
        .fetch_one(reader.pool())
        .await
        .unwrap();
    assert!(body.contains("Disk space low"), "the payload is kept");

    // And the command line.
    let list = |extra: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_haloflow"))
            .args(["requests", "list", "--data", h.data_dir.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    let all = list(&[]);
    assert!(
        all.contains(&format!(
            "    2 suppressed under this request: {}, {}",
            children[0], children[1]
        )),
        "{all}"
    );
    let only = list(&["--suppressed"]);
    assert_eq!(only.lines().count(), 2, "{only}");
    assert!(
        only.lines()
            .all(|l| l.ends_with(&format!("202 suppressed under {fourth}"))),
        "{only}"
    );

    // Other tickets are not correlated with this one.
    for ticket in [1, 2, 3] {
        assert_eq!(send(&h, ticket).await.1["suppressed"], false);
    }
    // After the window, the same ticket runs again and leads a new group.
    clock.advance(Duration::from_secs(61));
    let (_, again) = send(&h, 4242).await;
    assert_eq!(again["suppressed"], false, "{again}");
    assert_eq!(again["run_ids"].as_array().unwrap().len(), 1);

    // The API and /metrics show it.
    let api: Value = h
        .client
        .get(format!("{}/api/requests?suppressed=true", h.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["requests"].as_array().unwrap().len(), 2);
    let metrics = h
        .client
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "haloflow_trigger_requests_total{flow=\"escalate-to-partner\",outcome=\"accepted\"} 8"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "haloflow_trigger_requests_total{flow=\"escalate-to-partner\",outcome=\"suppressed\"} 2"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_restart_in_the_middle_of_a_flood_keeps_suppressing() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let first = Harness::start_with(Options {
        data_dir: Some(data_dir.clone()),
        ..Options::default()
    })
    .await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(send(&first, 4242).await.1);
    }
    assert_eq!(answers[4]["suppressed"], true);
    let fourth = answers[3]["request_id"].as_str().unwrap().to_owned();
    for answer in &answers[..4] {
        first.wait(answer["run_ids"][0].as_str().unwrap()).await;
    }
    drop(first);

    // A new process on the same database.
    let second = Harness::start_with(Options {
        data_dir: Some(data_dir),
        ..Options::default()
    })
    .await;
    let (_, answer) = send(&second, 4242).await;
    assert_eq!(
        answer["suppressed"], true,
        "the flood is still suppressed after the restart: {answer}"
    );
    assert_eq!(answer["parent_request_id"], fourth.as_str());
    assert_eq!(answer["suppressed_count"], 2, "the count continues");
    assert_eq!(send(&second, 77).await.1["suppressed"], false);
}

fn write_flow(dir: &Path, trigger_extra: Value) {
    let mut flow: Value =
        serde_json::from_str(&std::fs::read_to_string("flows/new-ticket-routing.json").unwrap())
            .unwrap();
    for (key, value) in trigger_extra.as_object().unwrap() {
        flow["trigger"][key] = value.clone();
    }
    std::fs::write(dir.join("routing.json"), flow.to_string()).unwrap();
}

#[tokio::test]
async fn over_the_rate_limit_requests_get_429_with_retry_after_and_are_not_stored() {
    let flows = tempfile::tempdir().unwrap();
    write_flow(
        flows.path(),
        json!({"rate_limit": {"requests": 2, "per_secs": 60}, "flood_control": {"enabled": false}}),
    );
    let clock = FloodClock::manual();
    let h = Harness::start_with(Options {
        flows: flows.path().to_owned(),
        clock: clock.clone(),
        ..Options::default()
    })
    .await;
    let send = || {
        h.routing_request("recipients=a")
            .json(&sample_payload("halo-new-ticket.json"))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 202);
    assert_eq!(send().await.unwrap().status(), 202);
    let limited = send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(
        limited.headers()["retry-after"],
        "30",
        "one request per 30 s refills"
    );
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let stored = h
        .engine
        .storage()
        .list_requests(&RequestFilter::default())
        .await
        .unwrap();
    assert_eq!(stored.len(), 2, "the limited request is not stored");
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        send().await.unwrap().status(),
        202,
        "allowed again after Retry-After"
    );
    let metrics = h
        .client
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outcome=\"rate_limited\"} 1"), "{metrics}");
}

#[tokio::test]
async fn flood_settings_are_configurable_and_checked() {
    let flows = tempfile::tempdir().unwrap();
    write_flow(
        flows.path(),
        json!({"flood_control": {"correlate_on": ["ticket.client_id"], "max_requests": 1, "window_secs": 10}}),
    );
    let h = Harness::start_with(Options {
        flows: flows.path().to_owned(),
        clock: FloodClock::manual(),
        ..Options::default()
    })
    .await;
    let send = |ticket: i64| {
        let mut payload = sample_payload("halo-new-ticket.json");
        payload["object_id"] = json!(ticket);
        h.routing_request("recipients=a").json(&payload).send()
    };
    let first: Value = send(4242).await.unwrap().json().await.unwrap();
    let second: Value = send(4243).await.unwrap().json().await.unwrap();
    assert_eq!(first["suppressed"], false);
    assert_eq!(
        second["suppressed"], true,
        "same client, different ticket: correlated by ticket.client_id"
    );

    let registry = haloflow::step::StepRegistry::with_builtins();
    let mut bad: Value =
        serde_json::from_str(&std::fs::read_to_string("flows/new-ticket-routing.json").unwrap())
            .unwrap();
    bad["trigger"]["flood_control"] = json!({"correlate_on": ["tikcet_id"], "max_requests": 0});
    let problems = haloflow::flow::FlowValidator::new(&registry)
        .validate_str(&bad.to_string(), None)
        .unwrap_err();
    let at: Vec<&str> = problems.iter().map(|p| p.pointer.as_str()).collect();
    assert!(
        at.contains(&"/trigger/flood_control/correlate_on/0"),
        "{problems:#?}"
    );
    assert!(
        at.contains(&"/trigger/flood_control/max_requests"),
        "{problems:#?}"
    );
}

#[tokio::test]
async fn a_million_distinct_keys_are_evicted_once_idle() {
    let clock = FloodClock::manual();
    let settings = FloodControlDef::default();
    let flood = MemoryFloodControl::new([("f", &settings)], clock.clone());
    for i in 0..1_000_000u32 {
        let key = i.to_string();
        assert_eq!(flood.admit("f", &key, &key).await, Admission::Run);
    }
    assert_eq!(flood.tracked_keys(), [("f".to_owned(), 1_000_000)]);
    flood.sweep();
    assert_eq!(
        flood.tracked_keys(),
        [("f".to_owned(), 1_000_000)],
        "keys active within the window are kept"
    );
    clock.advance(Duration::from_secs(61));
    flood.sweep();
    assert_eq!(
        flood.tracked_keys(),
        [("f".to_owned(), 0)],
        "idle keys are evicted"
    );
}
