//! Retries, lost answers, replay, delivery de-duplication, metrics and retention, through a
//! real server, real Halo emulators and a real SQLite file.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::common::{Harness, Options, api_calls, sample_payload};
use haloflow::config::Config;
use haloflow::halo::HaloConfig;
use haloflow::storage::{AttemptOutcome, RunStatus, StepStatus};
use haloflow_emulators::Fault;
use serde_json::{Value, json};

/// Quick retries, and a partner Halo that times out after 1 s.
fn fast_retries(config: &mut Config) {
    config.retry.max_attempts = Some(8);
    config.retry.initial_delay_ms = Some(20);
    config.retry.max_delay_ms = Some(200);
    config
        .edit_section(|halo: &mut HaloConfig| {
            halo.get_mut("partner_halo").unwrap().timeout_secs = 1;
        })
        .unwrap();
}

async fn escalate(h: &Harness) -> Value {
    escalate_ticket(h, 4242).await
}

/// A new-ticket webhook for `ticket_id` (distinct ids stay clear of flood control).
async fn escalate_ticket(h: &Harness, ticket_id: i64) -> Value {
    let mut payload = sample_payload("halo-new-ticket.json");
    payload["object_id"] = json!(ticket_id);
    if h.halo.ticket(ticket_id).is_none() {
        let mut ticket = payload["ticket"].clone();
        ticket["id"] = json!(ticket_id);
        h.halo.insert_ticket(ticket);
    }
    let (status, answer) = h.post_json(&h.escalate_url("ops"), &payload).await;
    assert_eq!(status, 202, "{answer}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_a_schedule_end_every_run_with_no_duplicates() {
    let h = Harness::start_with(Options {
        configure: fast_retries,
        ..Options::default()
    })
    .await;
    // Creates meet every kind of trouble; lost answers (reset, timeout) come after Halo made
    // the ticket, so a blind re-send would duplicate it.
    h.partner.fail_next("POST", "/api/Tickets", 429, 2, Some(1));
    h.partner.fail_next("POST", "/api/Tickets", 503, 2, None);
    h.partner
        .inject("POST", "/api/Tickets", Fault::ResetAfterProcessing, 3);
    h.partner.inject(
        "POST",
        "/api/Tickets",
        Fault::Delay(Duration::from_millis(1500)),
        1,
    );
    h.partner
        .inject("POST", "/api/Actions", Fault::ResetAfterProcessing, 2);
    h.halo.fail_next("POST", "/api/Tickets", 502, 2, None);

    let mut run_ids = Vec::new();
    for i in 0..12 {
        let answer = escalate_ticket(&h, 5000 + i).await;
        run_ids.push(answer["run_ids"][0].as_str().unwrap().to_owned());
    }
    let mut runs = Vec::new();
    for id in &run_ids {
        let run = tokio::time::timeout(Duration::from_secs(60), h.engine.wait_for_run(id))
            .await
            .expect("every run ends")
            .unwrap();
        assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
        runs.push(run);
    }

    // Exactly one partner ticket per run, each carrying its run's key, one action on each.
    let tickets = h.partner.tickets();
    assert_eq!(tickets.len(), run_ids.len(), "{tickets:#?}");
    let keys: HashSet<String> = tickets
        .iter()
        .map(|t| t["third_party_id_string"].as_str().unwrap().to_owned())
        .collect();
    let expected: HashSet<String> = run_ids
        .iter()
        .map(|id| format!("haloflow:{id}:create"))
        .collect();
    assert_eq!(keys, expected);
    let mut actions_per_ticket: BTreeMap<i64, usize> = BTreeMap::new();
    for action in h.partner.actions() {
        *actions_per_ticket
            .entry(action["ticket_id"].as_i64().unwrap())
            .or_default() += 1;
    }
    assert_eq!(actions_per_ticket.len(), run_ids.len());
    assert!(
        actions_per_ticket.values().all(|n| *n == 1),
        "{actions_per_ticket:?}"
    );

    // The history shows every attempt: the 429s waited at least their Retry-After, the lost
    // answers were adopted instead of sent again.
    let attempts: Vec<_> = runs
        .iter()
        .flat_map(|r| r.steps.iter())
        .filter(|s| s.step_id == "create")
        .flat_map(|s| s.attempt_log.iter())
        .collect();
    let rate_limited: Vec<_> = attempts
        .iter()
        .filter(|a| a.error.as_deref().is_some_and(|e| e.contains("429")))
        .collect();
    assert_eq!(rate_limited.len(), 2);
    assert!(rate_limited.iter().all(|a| a.retry_in_ms >= Some(1000)));
    let adopted = attempts
        .iter()
        .filter(|a| a.outcome == AttemptOutcome::Adopted)
        .count();
    assert_eq!(
        adopted, 4,
        "3 resets and 1 timeout after the ticket was made: {attempts:#?}"
    );
    let notes_adopted = runs
        .iter()
        .flat_map(|r| r.steps.iter())
        .filter(|s| s.step_id == "note")
        .flat_map(|s| s.attempt_log.iter())
        .filter(|a| a.outcome == AttemptOutcome::Adopted)
        .count();
    assert_eq!(notes_adopted, 2);
    let create = runs
        .iter()
        .flat_map(|r| r.steps.iter())
        .find(|s| s.step_id == "create" && s.attempts > 1)
        .expect("a create that was retried");
    assert_eq!(create.attempt_log.len() as u32, create.attempts);
    assert!(
        create.exchanges.len() >= create.attempt_log.len(),
        "every attempt's requests are in the outbound log"
    );
}

#[tokio::test]
async fn client_errors_are_not_retried_and_exhausted_attempts_fail_the_run() {
    let h = Harness::start_with(Options {
        configure: |config| {
            fast_retries(config);
            config.retry.by_type.insert(
                "halo.update_ticket".into(),
                haloflow::config::RetrySettings {
                    max_attempts: Some(3),
                    ..Default::default()
                },
            );
        },
        ..Options::default()
    })
    .await;
    h.partner.fail_next("POST", "/api/Tickets", 422, 1, None);
    let run = h
        .wait(escalate(&h).await["run_ids"][0].as_str().unwrap())
        .await;
    assert_eq!(run.summary.status, RunStatus::Failed);
    assert_eq!(run.summary.failed_step.as_deref(), Some("create"));
    assert_eq!(run.steps[0].attempts, 1, "422 is not retried");

    // 503 every time: three attempts (the per-type setting), each recorded, then failed.
    h.halo.fail_next("POST", "/api/Tickets", 503, 3, None);
    let run = h
        .wait(escalate(&h).await["run_ids"][0].as_str().unwrap())
        .await;
    assert_eq!(run.summary.status, RunStatus::Failed, "{run:#?}");
    assert_eq!(run.summary.failed_step.as_deref(), Some("link_back"));
    let step = run.steps.iter().find(|s| s.step_id == "link_back").unwrap();
    assert_eq!(step.attempts, 3);
    assert_eq!(step.attempt_log.len(), 3);
    assert!(
        step.attempt_log
            .iter()
            .all(|a| a.outcome == AttemptOutcome::Failed)
    );
    assert!(
        step.attempt_log[..2]
            .iter()
            .all(|a| a.retry_in_ms.is_some())
    );
    assert_eq!(step.attempt_log[2].retry_in_ms, None);
    let error = run.summary.error.as_deref().unwrap();
    assert!(
        error.contains("503") && error.contains("attempt 3 of 3"),
        "{error}"
    );
}

#[tokio::test]
async fn replay_from_the_failed_step_reuses_earlier_outputs() {
    let h = Harness::start_with(Options {
        configure: fast_retries,
        ..Options::default()
    })
    .await;
    h.halo.fail_next("POST", "/api/Tickets", 400, 2, None); // twice: a 400 gets one fresh token
    let failed = h
        .wait(escalate(&h).await["run_ids"][0].as_str().unwrap())
        .await;
    assert_eq!(failed.summary.failed_step.as_deref(), Some("link_back"));
    let created = failed.steps[0].outputs.clone().unwrap();

    let response = h
        .client
        .post(format!("{}/api/runs/{}/replay", h.api, failed.summary.id))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    let replay = h.wait(answer["run_id"].as_str().unwrap()).await;
    assert_eq!(replay.summary.status, RunStatus::Succeeded, "{replay:#?}");
    assert_eq!(
        replay.summary.replay_of.as_deref(),
        Some(failed.summary.id.as_str())
    );
    // create and note are reused, not sent again: the partner still has one ticket, one action.
    for step in &replay.steps[..2] {
        assert_eq!(
            step.reused_from.as_deref(),
            Some(failed.summary.id.as_str())
        );
        assert_eq!(step.attempts, 0);
    }
    assert_eq!(replay.steps[0].outputs.as_ref(), Some(&created));
    assert_eq!(h.partner.tickets().len(), 1);
    assert_eq!(h.partner.actions().len(), 1);
    let update = api_calls(&h.halo)
        .into_iter()
        .rfind(|(m, p, _)| m == "POST" && p == "/api/Tickets")
        .unwrap();
    assert_eq!(
        update.2[0]["customfields"][0]["value"], created["ticket_id"],
        "the replayed update uses the reused create's outputs"
    );

    // From the trigger, everything runs again; a step that never ran is refused by name.
    let again = h
        .engine
        .replay(&failed.summary.id, haloflow::engine::ReplayFrom::Trigger)
        .await
        .unwrap();
    assert_eq!(h.wait(&again).await.summary.status, RunStatus::Succeeded);
    assert_eq!(h.partner.tickets().len(), 2);
    let refused = h
        .client
        .post(format!("{}/api/runs/{}/replay", h.api, failed.summary.id))
        .json(&json!({"from_step": "tell_agent"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 409);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_replay");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("step `tell_agent` did not run"),
        "{error}"
    );
}

#[tokio::test]
async fn the_same_delivery_twice_starts_one_run() {
    let h = Harness::start().await;
    let payload = sample_payload("halo-new-ticket.json");
    let (status, first) = h.post_json(&h.escalate_url("ops"), &payload).await;
    assert_eq!(status, 202);
    let (status, second) = h.post_json(&h.escalate_url("ops"), &payload).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["first_request_id"], first["request_id"]);
    assert_eq!(second["run_ids"], json!([]));
    h.wait(first["run_ids"][0].as_str().unwrap()).await;
    assert_eq!(h.partner.tickets().len(), 1);

    // In a batch, only the new deliveries run.
    let mut fresh = sample_payload("halo-new-ticket.json");
    fresh["object_id"] = json!(4243);
    let (status, batch) = h
        .post_json(&h.escalate_url("ops"), &json!([payload, fresh]))
        .await;
    assert_eq!(status, 202, "{batch}");
    assert_eq!(batch["run_ids"].as_array().unwrap().len(), 1);
    assert_eq!(batch["duplicate_events"][0]["event_index"], 0);
}

/// Checks the Prometheus text format line by line: HELP and TYPE before samples, names and
/// labels well formed, values numbers, histogram buckets cumulative with +Inf equal to count.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(name_ok(name), "{line}");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind));
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "{line}");
        let labels = &series[name.len()..];
        if !labels.is_empty() {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair.split_once('=').expect("label=value");
                assert!(name_ok(k) && v.starts_with('"'), "{line}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line}");
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text() {
    let h = Harness::start_with(Options {
        configure: fast_retries,
        ..Options::default()
    })
    .await;
    h.partner.fail_next("POST", "/api/Tickets", 503, 1, None);
    h.wait(escalate(&h).await["run_ids"][0].as_str().unwrap())
        .await;
    let response = h
        .client
        .get(format!("{}/metrics", h.api))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    let samples = parse_prometheus(&text);
    let get = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    assert_eq!(
        get("haloflow_trigger_requests_total{flow=\"escalate-to-partner\",outcome=\"accepted\"}"),
        1.0
    );
    assert_eq!(
        get("haloflow_runs{flow=\"escalate-to-partner\",status=\"succeeded\"}"),
        1.0
    );
    assert_eq!(
        get("haloflow_step_retries_total{step_type=\"halo.create_ticket\"}"),
        1.0
    );
    let labels = "step_type=\"halo.create_ticket\",outcome=\"succeeded\"";
    let count = get(&format!(
        "haloflow_step_attempt_duration_seconds_count{{{labels}}}"
    ));
    assert_eq!(
        get(&format!(
            "haloflow_step_attempt_duration_seconds_bucket{{{labels},le=\"+Inf\"}}"
        )),
        count
    );
    let mut last = 0.0;
    for bound in haloflow::internals::engine::LATENCY_BUCKETS {
        let n = get(&format!(
            "haloflow_step_attempt_duration_seconds_bucket{{{labels},le=\"{bound}\"}}"
        ));
        assert!(n >= last, "buckets are cumulative");
        last = n;
    }
    // Every write of the run went through the group-commit writer.
    let writes = get("haloflow_storage_writes_total");
    let commits = get("haloflow_storage_commits_total");
    assert!(
        writes >= 8.0 && commits >= 1.0 && commits <= writes,
        "{writes} writes, {commits} commits"
    );
}

#[tokio::test]
async fn run_history_filters_by_time_and_health_checks_the_database() {
    let h = Harness::start().await;
    let before = haloflow::internals::storage::now_ms();
    let run = h
        .wait(escalate(&h).await["run_ids"][0].as_str().unwrap())
        .await;
    let list = |query: String| {
        let url = format!("{}/api/runs?{query}", h.api);
        let client = h.client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (_, found) = list(format!("since={before}&flow=escalate-to-partner")).await;
    assert_eq!(found["runs"][0]["id"], run.summary.id.as_str());
    let (_, none) = list("until=2020-01-01T00:00:00Z".into()).await;
    assert_eq!(none["runs"], json!([]));
    let (status, error) = list("since=yesterday".into()).await;
    assert_eq!(status, 400);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("since: ")
    );
    let detail: Value = h
        .client
        .get(format!("{}/api/runs/{}", h.api, run.summary.id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(detail["steps"][0]["attempt_log"][0]["outcome"], "succeeded");
    assert_eq!(detail["steps"][0]["exchanges"][0]["method"], "POST");
    let health: Value = h
        .client
        .get(format!("{}/health", h.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["database"], "ok");
}

#[tokio::test]
async fn retention_deletes_only_old_finished_runs() {
    let h = Harness::start().await;
    let run = h
        .wait(escalate(&h).await["run_ids"][0].as_str().unwrap())
        .await;
    let storage = h.engine.storage();
    assert_eq!(
        storage
            .prune_finished(run.summary.created_at_ms - 1)
            .await
            .unwrap(),
        0
    );
    assert!(storage.get_run(&run.summary.id).await.unwrap().is_some());
    let later = run.summary.finished_at_ms.unwrap() + 1;
    assert_eq!(storage.prune_finished(later).await.unwrap(), 1);
    assert!(storage.get_run(&run.summary.id).await.unwrap().is_none());
    let requests = storage
        .list_requests(&haloflow::storage::RequestFilter::default())
        .await
        .unwrap();
    assert!(
        requests.is_empty(),
        "its request went with it: {requests:#?}"
    );
    // The engine's sweep uses the configured age: 30 days by default keeps today's runs.
    let fresh = h
        .wait(escalate(&h).await["run_ids"][0].as_str().unwrap())
        .await;
    assert_eq!(h.engine.prune_finished_runs().await.unwrap(), 0);
    assert_eq!(fresh.steps[0].status, StepStatus::Succeeded);
}

/// Six requests per rolling two seconds at the partner's Halo: one more is answered 429.
/// Paced runs send at most four in any two seconds.
fn tight_partner(config: &mut Config, pacing: u32) {
    config.retry.max_attempts = Some(1);
    config
        .edit_section(|halo: &mut HaloConfig| {
            let partner = halo.get_mut("partner_halo").unwrap();
            partner.rate_limit_requests = pacing;
            partner.rate_limit_window_secs = 2;
        })
        .unwrap();
}

async fn burst_against_a_rate_limited_halo(pacing: u32) -> (usize, Vec<RunStatus>) {
    let h = Harness::start_with(Options {
        configure: if pacing > 0 {
            // A margin under Halo's 6: Halo counts arrivals, which a busy machine delays.
            |c| tight_partner(c, 4)
        } else {
            |c| tight_partner(c, 0)
        },
        ..Options::default()
    })
    .await;
    h.partner.limit_rate(6, Duration::from_secs(2));
    let mut run_ids = Vec::new();
    for i in 0..5 {
        let answer = escalate_ticket(&h, 6000 + i).await;
        run_ids.push(answer["run_ids"][0].as_str().unwrap().to_owned());
    }
    let mut statuses = Vec::new();
    for id in &run_ids {
        statuses.push(h.wait(id).await.summary.status);
    }
    let rejected = h
        .partner
        .requests()
        .iter()
        .filter(|r| r.status == 429)
        .count();
    (rejected, statuses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halo_requests_are_paced_under_its_rolling_window() {
    // Five runs need 11 partner requests (a token, then a ticket and an action each).
    let (rejected, statuses) = burst_against_a_rate_limited_halo(6).await;
    assert_eq!(
        rejected, 0,
        "paced requests wait for the window instead of collecting 429s"
    );
    assert!(
        statuses.iter().all(|s| *s == RunStatus::Succeeded),
        "{statuses:?}"
    );
    // The same burst unpaced (and without retries) runs into Halo's limit.
    let (rejected, statuses) = burst_against_a_rate_limited_halo(0).await;
    assert!(rejected > 0);
    assert!(statuses.contains(&RunStatus::Failed));
}

/// The partner Halo allows four requests a minute (a token, a ticket, the outcome list and
/// an action: one escalation), and the engine runs two at a time.
fn two_slots_and_a_slow_partner(config: &mut Config) {
    config.server.max_active_runs = 2;
    config
        .edit_section(|halo: &mut HaloConfig| {
            let partner = halo.get_mut("partner_halo").unwrap();
            partner.rate_limit_requests = 4;
            partner.rate_limit_window_secs = 60;
        })
        .unwrap();
}

/// Fairness between tenants: runs waiting out one Halo's pacing lend their execution slots,
/// so a backlog at the partner (a minute's wait each) never holds both slots while runs
/// that only talk to the other Halo queue behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_waiting_on_one_halos_pacing_leave_the_slots_to_other_runs() {
    let h = Harness::start_with(Options {
        configure: two_slots_and_a_slow_partner,
        ..Options::default()
    })
    .await;
    // The first escalation spends the partner's window; the next three wait for the next.
    let first = escalate_ticket(&h, 9300).await;
    let first = h.wait(first["run_ids"][0].as_str().unwrap()).await;
    assert_eq!(first.summary.status, RunStatus::Succeeded);
    let mut backlog = Vec::new();
    for ticket_id in 9301..9304 {
        let answer = escalate_ticket(&h, ticket_id).await;
        backlog.push(answer["run_ids"][0].as_str().unwrap().to_owned());
    }

    let mut routed = Vec::new();
    for ticket_id in 9310..9313 {
        let payload = ticket_payload(&h, ticket_id);
        let response = h.routing_request("recipients=ops").json(&payload);
        let answer: Value = response.send().await.unwrap().json().await.unwrap();
        routed.push(answer["run_ids"][0].as_str().unwrap().to_owned());
    }
    for run_id in &routed {
        let run = h.wait(run_id).await;
        assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    }
    assert_eq!(
        ticket_posts(&h),
        1,
        "the backlog still waits for the partner"
    );
    let storage = h.engine.storage();
    for run_id in &backlog {
        let run = storage.get_run(run_id).await.unwrap().unwrap();
        assert_eq!(run.summary.status, RunStatus::Running, "{run:#?}");
    }
    let metrics = h.metrics().await;
    assert!(metrics.contains("\nhaloflow_paced_runs 3\n"), "{metrics}");
    assert!(metrics.contains("\nhaloflow_active_runs 0\n"), "{metrics}");
}

/// `server.max_paced_runs` bounds the runs waiting without a slot: beyond it, a run waits
/// out the pacing in its slot, as before lending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_paced_runs_a_paced_run_waits_in_its_slot() {
    let h = Harness::start_with(Options {
        configure: |config| {
            two_slots_and_a_slow_partner(config);
            config.server.max_paced_runs = 1;
        },
        ..Options::default()
    })
    .await;
    let first = escalate_ticket(&h, 9320).await;
    h.wait(first["run_ids"][0].as_str().unwrap()).await;
    for ticket_id in 9321..9324 {
        escalate_ticket(&h, ticket_id).await;
    }
    // One run lends its slot, the next two wait in theirs (a run claimed from the queue
    // reads `queued` until its first step starts: wait for that too).
    let queued = || async {
        let runs = h.engine.storage().list_runs(&Default::default()).await;
        let runs = runs.unwrap().into_iter();
        runs.filter(|r| r.status == RunStatus::Queued).count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let settled = h.engine.active_runs() == 2 && h.engine.paced_runs() == 1;
        if (settled && queued().await == 0) || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (active, paced) = (h.engine.active_runs(), h.engine.paced_runs());
    assert_eq!(
        (active, paced),
        (2, 1),
        "runs in slots, runs waiting without"
    );
    assert_eq!(queued().await, 0, "all three started");
}

/// How many webhooks the burst tests send beyond the one that holds the only slot.
const BURST: i64 = 24;

/// A new-ticket webhook for `ticket_id`, its source ticket in the Halo emulator.
fn ticket_payload(h: &Harness, ticket_id: i64) -> Value {
    let mut payload = sample_payload("halo-new-ticket.json");
    payload["object_id"] = json!(ticket_id);
    let mut ticket = payload["ticket"].clone();
    ticket["id"] = json!(ticket_id);
    h.halo.insert_ticket(ticket);
    payload
}

/// Ticket creates the partner Halo received.
fn ticket_posts(h: &Harness) -> usize {
    let calls = api_calls(&h.partner).into_iter();
    calls
        .filter(|(method, path, _)| method == "POST" && path.eq_ignore_ascii_case("/api/Tickets"))
        .count()
}

/// Executing load never turns a webhook away (Halo does not send a failed delivery again):
/// with one run executing and no slot left, a burst is stored whole and waits in the
/// database, then runs one at a time, oldest first, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_max_active_runs_is_accepted_whole_and_runs_one_at_a_time() {
    let h = Harness::start_with(Options {
        configure: |config| config.server.max_active_runs = 1,
        ..Options::default()
    })
    .await;
    let hold = haloflow_emulators::Hold::new();
    h.partner.inject(
        "POST",
        "/api/Tickets",
        Fault::HoldBeforeProcessing(hold.clone()),
        1,
    );
    let first = escalate_ticket(&h, 9100).await;
    hold.arrived().await;
    let mut sends = Vec::new();
    for ticket_id in 9101..=9100 + BURST {
        let payload = ticket_payload(&h, ticket_id);
        let (client, url) = (h.client.clone(), h.escalate_url("ops"));
        sends.push(tokio::spawn(async move {
            let response = client.post(url).json(&payload).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }));
    }
    let mut run_ids = vec![first["run_ids"][0].as_str().unwrap().to_owned()];
    for send in sends {
        let (status, answer) = send.await.unwrap();
        assert_eq!(status, 202, "{answer}");
        run_ids.push(answer["run_ids"][0].as_str().unwrap().to_owned());
    }
    let storage = h.engine.storage();
    let requests = (storage.list_requests(&Default::default()).await).unwrap();
    assert_eq!(
        requests.len(),
        1 + BURST as usize,
        "every webhook is stored"
    );
    let runs = storage.list_runs(&Default::default()).await.unwrap();
    let queued = runs.iter().filter(|r| r.status == RunStatus::Queued);
    assert_eq!(queued.count(), BURST as usize, "{runs:#?}");
    assert_eq!(h.engine.active_runs(), 1);
    assert!(ticket_posts(&h) <= 1, "only the held run has started");

    hold.release();
    let mut finished = Vec::new();
    for run_id in &run_ids {
        finished.push(h.wait(run_id).await);
    }
    for run in &finished {
        assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    }
    let tickets = h.partner.tickets();
    assert_eq!(tickets.len(), 1 + BURST as usize, "one ticket per run");
    let created: HashSet<_> = (finished.iter())
        .map(|r| r.steps[0].outputs.as_ref().unwrap()["ticket_id"].clone())
        .collect();
    assert_eq!(
        created.len(),
        tickets.len(),
        "no run created a ticket twice"
    );
    assert_eq!(
        ticket_posts(&h),
        1 + BURST as usize,
        "no create was sent twice"
    );
    assert_one_at_a_time_oldest_first(finished.iter().map(|r| &r.summary).collect());
}

/// Each run started after the one before it finished, in the order they were stored.
fn assert_one_at_a_time_oldest_first(mut runs: Vec<&haloflow::storage::RunSummary>) {
    runs.sort_by_key(|r| r.started_at_ms);
    for pair in runs.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        assert!(
            after.started_at_ms >= before.finished_at_ms,
            "{} started before {} finished",
            after.id,
            before.id
        );
        assert!(
            (after.created_at_ms, &after.id) > (before.created_at_ms, &before.id),
            "{} (stored later) started before {}",
            before.id,
            after.id
        );
    }
}

/// One attempt only: the last attempt is the first.
fn one_attempt(config: &mut Config) {
    fast_retries(config);
    config.retry.max_attempts = Some(1);
}

#[tokio::test]
async fn a_lost_last_answer_is_looked_up_before_the_run_fails() {
    let h = Harness::start_with(Options {
        configure: one_attempt,
        ..Options::default()
    })
    .await;
    // Halo makes the ticket, then the answer is lost: the look-up finds and adopts it.
    h.partner
        .inject("POST", "/api/Tickets", Fault::ResetAfterProcessing, 1);
    let run = h
        .wait(escalate(&h).await["run_ids"][0].as_str().unwrap())
        .await;
    assert_eq!(run.summary.status, RunStatus::Succeeded, "{run:#?}");
    assert_eq!(run.steps[0].attempt_log[0].outcome, AttemptOutcome::Adopted);
    assert_eq!(h.partner.tickets().len(), 1);

    // A 502 that made nothing: the look-up finds nothing, so the run fails with the outcome
    // known, and a replay creates the one ticket.
    h.partner.fail_next("POST", "/api/Tickets", 502, 1, None);
    let failed = h
        .wait(
            escalate_ticket(&h, 4343).await["run_ids"][0]
                .as_str()
                .unwrap(),
        )
        .await;
    assert_eq!(failed.summary.status, RunStatus::Failed);
    assert_eq!(failed.steps[0].error_code.as_deref(), Some("http_status"));
    assert!(!failed.steps[0].attempt_log[0].outcome_unknown);
    let replay = h
        .engine
        .replay(&failed.summary.id, haloflow::engine::ReplayFrom::Failure)
        .await
        .unwrap();
    assert_eq!(h.wait(&replay).await.summary.status, RunStatus::Succeeded);
    assert_eq!(h.partner.tickets().len(), 2, "one ticket per run");
}

#[tokio::test]
async fn an_outcome_left_unknown_says_so_and_a_replay_looks_before_it_creates() {
    let h = Harness::start_with(Options {
        configure: one_attempt,
        ..Options::default()
    })
    .await;
    // The ticket is made, the answer lost, and the look-up fails too.
    h.partner
        .inject("POST", "/api/Tickets", Fault::ResetAfterProcessing, 1);
    h.partner.fail_next("GET", "/api/Tickets", 503, 1, None);
    let failed = h
        .wait(escalate(&h).await["run_ids"][0].as_str().unwrap())
        .await;
    assert_eq!(failed.summary.status, RunStatus::Failed, "{failed:#?}");
    assert_eq!(
        failed.steps[0].error_code.as_deref(),
        Some("outcome_unknown")
    );
    let error = failed.summary.error.as_deref().unwrap();
    assert!(error.contains("outcome unknown"), "{error}");
    assert_eq!(h.partner.tickets().len(), 1);
    let mut shown = Vec::new();
    haloflow::commands::runs_show(
        &haloflow::commands::Store::new(h.data_dir.clone(), None),
        &failed.summary.id,
        false,
        &mut shown,
    )
    .await
    .unwrap();
    let shown = String::from_utf8(shown).unwrap();
    assert!(shown.contains("[outcome_unknown]"), "{shown}");

    // The documented replay from the failed step finds the ticket under the original run's
    // key and adopts it: still one ticket.
    let replay = h
        .engine
        .replay(&failed.summary.id, haloflow::engine::ReplayFrom::Failure)
        .await
        .unwrap();
    let replay = h.wait(&replay).await;
    assert_eq!(replay.summary.status, RunStatus::Succeeded, "{replay:#?}");
    let create = &replay.steps[0];
    assert_eq!(create.attempt_log[0].outcome, AttemptOutcome::Adopted);
    assert_eq!(
        h.partner.tickets().len(),
        1,
        "the replay made no second ticket"
    );
}

/// `Engine::run_step` attempts a step as a served run does: a create that meets a 429 and then
/// loses its answer (Halo made the ticket) is retried and the ticket found, not made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_run_on_its_own_is_retried_and_finds_what_a_lost_answer_created() {
    let h = Harness::start_with(Options {
        configure: fast_retries,
        ..Options::default()
    })
    .await;
    h.partner.fail_next("POST", "/api/Tickets", 429, 1, Some(1));
    h.partner
        .inject("POST", "/api/Tickets", Fault::ResetAfterProcessing, 1);
    let inputs = json!({"summary": "Printer on fire", "client_id": 12});
    let outputs = h
        .engine
        .run_step(
            "halo.create_ticket",
            Some("partner_halo"),
            inputs,
            "order-17",
        )
        .await
        .expect("retried until it succeeded");
    let tickets = h.partner.tickets();
    assert_eq!(tickets.len(), 1, "{tickets:#?}");
    assert_eq!(outputs["ticket_id"], tickets[0]["id"]);
    assert_eq!(
        tickets[0]["third_party_id_string"],
        "haloflow:order-17:halo.create_ticket"
    );
    let posts = (h.partner.requests().iter())
        .filter(|r| r.method == "POST" && r.path.starts_with("/api/Tickets"))
        .count();
    assert_eq!(posts, 2, "the 429, then the create whose answer was lost");
}

/// A second call with the same idempotency key finds what the first made and makes nothing
/// new; another key makes another ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_run_again_with_the_same_key_creates_nothing_new() {
    let h = Harness::start_with(Options {
        configure: fast_retries,
        ..Options::default()
    })
    .await;
    let create = |key: &'static str| {
        let engine = h.engine.clone();
        async move {
            let inputs = json!({"summary": "Printer on fire", "client_id": 12});
            engine
                .run_step("halo.create_ticket", Some("partner_halo"), inputs, key)
                .await
                .unwrap()
        }
    };
    // The caller cannot tell whether its first call took effect (it crashed, say) and calls
    // again with the same key.
    let first = create("order-18").await;
    let again = create("order-18").await;
    assert_eq!(again["ticket_id"], first["ticket_id"]);
    assert_eq!(h.partner.tickets().len(), 1, "{:#?}", h.partner.tickets());
    let other = create("order-19").await;
    assert_ne!(other["ticket_id"], first["ticket_id"]);
    assert_eq!(h.partner.tickets().len(), 2);
}
