//! Flood control and rate limits on the trigger, with a manual clock instead of sleeping.

use std::path::Path;
use std::time::Duration;

use crate::common::{Harness, Options, api_calls, sample_payload};
use haloflow::internals::flood::{Admission, FloodClock, FloodControl, MemoryFloodControl};
use haloflow::internals::flow::FloodControlDef;
use haloflow::storage::{
    NewRequest, NewRun, NewSuppressed, RequestFilter, RunStore, SqliteStorage,
};
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
    let reader = sqlx::SqlitePool::connect(&format!("sqlite://{}", h.db_path().display()))
        .await
        .unwrap();
    let (body,): (String,) = sqlx::query_as("SELECT body FROM trigger_requests WHERE id = $1")
        .bind(children[1])
        .fetch_one(&reader)
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
        .get(format!("{}/api/requests?suppressed=true", h.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["requests"].as_array().unwrap().len(), 2);
    let metrics = h.metrics().await;
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
    let metrics = h.metrics().await;
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

    let registry = haloflow::bundled::integrations().registry();
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

#[tokio::test]
async fn sustained_flood_stays_suppressed() {
    let clock = FloodClock::manual();
    let h = Harness::start_with(Options {
        clock: clock.clone(),
        ..Options::default()
    })
    .await;
    // One request every 5 s for two minutes: three times the default threshold (4 per 60 s).
    let mut answers = Vec::new();
    for i in 0..24 {
        if i > 0 {
            clock.advance(Duration::from_secs(5));
        }
        answers.push(send(&h, 4242).await.1);
    }
    let ran: Vec<usize> = (0..answers.len())
        .filter(|&i| answers[i]["suppressed"] == false)
        .collect();
    assert_eq!(ran, [0, 1, 2, 3], "only the first four run: {answers:#?}");
    let fourth = answers[3]["request_id"].as_str().unwrap().to_owned();
    for (i, answer) in answers[4..].iter().enumerate() {
        assert_eq!(answer["suppressed"], true, "{answer}");
        assert_eq!(answer["parent_request_id"], fourth.as_str(), "{answer}");
        assert_eq!(answer["suppressed_count"], i as u64 + 1, "{answer}");
    }
    for answer in &answers[..4] {
        h.wait(answer["run_ids"][0].as_str().unwrap()).await;
    }
    let created = api_calls(&h.partner)
        .into_iter()
        .filter(|(_, path, _)| path == "/api/Tickets")
        .count();
    assert_eq!(created, 4, "the flood started four runs in two minutes");

    // The flood stops. Half a window later the last window still holds six requests.
    clock.advance(Duration::from_secs(30));
    let (_, late) = send(&h, 4242).await;
    assert_eq!(late["suppressed"], true, "{late}");
    assert_eq!(late["parent_request_id"], fourth.as_str());
    assert_eq!(late["suppressed_count"], 21);
    // After a full window without requests, the next one runs and leads a new group.
    clock.advance(Duration::from_secs(60));
    let (_, again) = send(&h, 4242).await;
    assert_eq!(again["suppressed"], false, "{again}");
    assert_eq!(again["run_ids"].as_array().unwrap().len(), 1);
    let requests = h
        .engine
        .storage()
        .list_requests(&RequestFilter {
            limit: Some(100),
            ..Default::default()
        })
        .await
        .unwrap();
    let parent = requests.iter().find(|r| r.id == fourth).unwrap();
    assert_eq!(parent.suppressed_count, 21);
}

/// Writes one accepted request to `storage` as the trigger would have, `ago` before now.
async fn record(storage: &SqliteStorage, key: &str, ago: Duration, parent: Option<&str>) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let at = haloflow::internals::storage::now_ms() - ago.as_millis() as i64;
    let request = NewRequest {
        id: id.clone(),
        flow_id: "f".into(),
        received_at_ms: at,
        http_status: 202,
        error: None,
        query: None,
        body: Some("{}".into()),
        event_count: 1,
        outcome: None,
    };
    let (runs, suppressed) = match parent {
        None => (
            vec![NewRun {
                id: uuid::Uuid::now_v7().to_string(),
                flow_id: "f".into(),
                event_index: 0,
                trigger: json!({}),
                created_at_ms: at,
                correlation_key: Some(key.into()),
                delivery_id: None,
                owner: None,
                lease_until_ms: None,
            }],
            vec![],
        ),
        Some(parent) => (
            vec![],
            vec![NewSuppressed {
                event_index: 0,
                flow_id: "f".into(),
                correlation_key: key.into(),
                parent_request_id: parent.into(),
                received_at_ms: at,
                delivery_id: None,
            }],
        ),
    };
    storage
        .accept_request(&request, &runs, &suppressed)
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn a_restart_during_a_flood_longer_than_the_window_keeps_suppressing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open_dir(dir.path()).await.unwrap();
    let secs = Duration::from_secs;
    // Key "a": four runs 150 s ago, then one request every 5 s until 5 s ago, all suppressed.
    let mut parent_a = String::new();
    for _ in 0..4 {
        parent_a = record(&storage, "a", secs(150), None).await;
    }
    for ago in (1..=29).rev() {
        record(&storage, "a", secs(5 * ago), Some(&parent_a)).await;
    }
    // Key "b": a flood that ended two minutes ago.
    let mut parent_b = String::new();
    for _ in 0..4 {
        parent_b = record(&storage, "b", secs(300), None).await;
    }
    for ago in [290, 200, 120] {
        record(&storage, "b", secs(ago), Some(&parent_b)).await;
    }
    // Key "c": three runs within the window.
    for _ in 0..3 {
        record(&storage, "c", secs(10), None).await;
    }

    let settings = FloodControlDef::default();
    let flood = MemoryFloodControl::new([("f", &settings)], FloodClock::manual());
    flood.restore(&storage).await.unwrap();
    assert_eq!(
        flood.admit("f", "a", "new-a").await,
        Admission::Suppress {
            parent_request_id: parent_a.clone(),
            suppressed_count: 30
        },
        "the flood in progress stays suppressed under its parent, and the count continues"
    );
    assert_eq!(
        flood.admit("f", "b", "new-b").await,
        Admission::Run,
        "a flood that ended more than a window ago is over"
    );
    assert_eq!(flood.admit("f", "c", "c4").await, Admission::Run);
    assert!(matches!(
        flood.admit("f", "c", "c5").await,
        Admission::Suppress { .. }
    ));
}

#[test]
fn concurrent_correlated_requests_share_one_parent() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 3;
    const ROUNDS: usize = 10_000;
    let settings = FloodControlDef::default();
    let flood = MemoryFloodControl::new([("f", &settings)], FloodClock::manual());
    let barrier = std::sync::Barrier::new(THREADS);
    let per_thread: Vec<Vec<(usize, String, Admission)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (flood, barrier) = (&flood, &barrier);
                scope.spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    let mut verdicts = Vec::new();
                    for round in 0..ROUNDS {
                        barrier.wait();
                        for i in 0..PER_THREAD {
                            let id = format!("r{round}-{t}-{i}");
                            let key = format!("k{round}");
                            let verdict = runtime.block_on(flood.admit("f", &key, &id));
                            verdicts.push((round, id, verdict));
                        }
                    }
                    verdicts
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The clock stands still, so each round is one burst of twelve correlated requests: exactly
    // four run, and the other eight are suppressed under the same run, counted 1 to 8.
    let mut rounds = vec![Vec::new(); ROUNDS];
    for (round, id, verdict) in per_thread.into_iter().flatten() {
        rounds[round].push((id, verdict));
    }
    for (round, verdicts) in rounds.iter().enumerate() {
        let mut runs = Vec::new();
        let mut parents = std::collections::BTreeSet::new();
        let mut counts = Vec::new();
        for (id, verdict) in verdicts {
            match verdict {
                Admission::Run => runs.push(id.clone()),
                Admission::Suppress {
                    parent_request_id,
                    suppressed_count,
                } => {
                    parents.insert(parent_request_id.clone());
                    counts.push(*suppressed_count);
                }
            }
        }
        counts.sort();
        assert_eq!(runs.len(), 4, "round {round}: {runs:?}");
        assert_eq!(parents.len(), 1, "round {round}: {parents:?}");
        assert!(runs.contains(parents.first().unwrap()), "round {round}");
        assert_eq!(counts, (1..=8).collect::<Vec<u64>>(), "round {round}");
    }
}

#[tokio::test]
async fn payloads_without_any_correlation_value_are_not_correlated() {
    let flows = tempfile::tempdir().unwrap();
    write_flow(flows.path(), json!({}));
    let h = Harness::start_with(Options {
        flows: flows.path().to_owned(),
        clock: FloodClock::manual(),
        ..Options::default()
    })
    .await;
    // A custom payload: no object_id, no ticket.id, no event; the key would be [null,null].
    for n in 0..6 {
        let answer: Value = h
            .routing_request("recipients=a")
            .json(&json!({"custom": n}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["suppressed"], false, "request {n}: {answer}");
        for run in answer["run_ids"].as_array().unwrap() {
            h.wait(run.as_str().unwrap()).await;
        }
    }
}
