//! One behaviour suite for every storage backend: what the engine relies on holds for SQLite
//! and for PostgreSQL alike.

use crate::common::backends::{TestDatabase, backends};
use crate::common::progress::RunStoreExt;
use haloflow::internals::flood::Admission;
use haloflow::storage::{
    AttemptOutcome, AttemptRecord, Cursor, Link, LinkCursor, LinkFilter, LinkOrigin, NewRequest,
    NewRun, NewSuppressed, PostgresStorage, Progress, RequestFilter, RunFilter, RunFinish,
    RunStatus, StepOutcome, StepStart, StepStatus, Storage, StorageError, Verdict,
};
use serde_json::json;
use sqlx::Connection;

fn request(id: &str, at: i64) -> NewRequest {
    NewRequest {
        id: id.into(),
        flow_id: "f".into(),
        received_at_ms: at,
        http_status: 202,
        error: None,
        query: Some(json!({"recipients": ["a"]})),
        body: Some("{}".into()),
        event_count: 1,
        outcome: None,
    }
}

fn run(id: &str, at: i64, delivery: Option<&str>) -> NewRun {
    NewRun {
        id: id.into(),
        flow_id: "f".into(),
        event_index: 0,
        trigger: json!({"ticket_id": 1}),
        created_at_ms: at,
        correlation_key: Some("[1]".into()),
        delivery_id: delivery.map(str::to_owned),
        owner: Some("node-a".into()),
        lease_until_ms: Some(at + 1000),
    }
}

async fn accept(storage: &dyn Storage, id: &str, at: i64, delivery: Option<&str>) {
    storage
        .accept_request(
            &request(&format!("req-{id}"), at),
            &[run(id, at, delivery)],
            &[],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn requests_runs_and_suppressed_events_read_back() {
    for b in backends().await {
        let s = b.storage.as_ref();
        accept(s, "r1", 1000, Some("d1")).await;
        s.accept_request(
            &request("req-sup", 1100),
            &[],
            &[NewSuppressed {
                event_index: 0,
                flow_id: "f".into(),
                correlation_key: "[1]".into(),
                parent_request_id: "req-r1".into(),
                received_at_ms: 1100,
                delivery_id: Some("d2".into()),
            }],
        )
        .await
        .unwrap();
        let requests = s.list_requests(&RequestFilter::default()).await.unwrap();
        assert_eq!(requests.len(), 2, "{}", b.name);
        let parent = requests.iter().find(|r| r.id == "req-r1").unwrap();
        assert_eq!(parent.run_ids, vec!["r1".to_owned()], "{}", b.name);
        assert_eq!(parent.suppressed_children, vec!["req-sup".to_owned()]);
        assert_eq!(parent.suppressed_count, 1);
        let child = requests.iter().find(|r| r.id == "req-sup").unwrap();
        assert_eq!(child.suppressed_under.as_deref(), Some("req-r1"));
        let only = s
            .list_requests(&RequestFilter {
                suppressed_only: true,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(only.len(), 1, "{}", b.name);
        let mut found = s
            .find_deliveries("f", &["d1".into(), "d2".into(), "d3".into()])
            .await
            .unwrap();
        found.sort();
        assert_eq!(
            found,
            vec![
                ("d1".to_owned(), "req-r1".to_owned()),
                ("d2".to_owned(), "req-sup".to_owned())
            ],
            "{}",
            b.name
        );
        let history = s.flood_history("f", 0).await.unwrap();
        assert_eq!(history[0].suppressed_count, 1, "{}", b.name);
        let runs = s
            .list_runs(&RunFilter {
                since_ms: Some(999),
                until_ms: Some(1001),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(runs.len(), 1, "{}", b.name);
        assert_eq!(runs[0].status, RunStatus::Queued);
    }
}

#[tokio::test]
async fn the_same_delivery_twice_is_a_conflict() {
    for b in backends().await {
        let s = b.storage.as_ref();
        accept(s, "r1", 1000, Some("d1")).await;
        let again = s
            .accept_request(
                &request("req-again", 1001),
                &[run("r2", 1001, Some("d1"))],
                &[],
            )
            .await;
        assert!(
            matches!(again, Err(StorageError::Conflict)),
            "{}: {again:?}",
            b.name
        );
        assert!(
            s.list_requests(&RequestFilter::default())
                .await
                .unwrap()
                .iter()
                .all(|r| r.id != "req-again"),
            "{}: the conflicting request was rolled back",
            b.name
        );
    }
}

/// Writes sent together share commits (a backend that groups them): one that conflicts fails
/// alone, the others are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_write_fails_alone_among_concurrent_ones() {
    for b in backends().await {
        accept(b.storage.as_ref(), "taken", 1000, Some("d-taken")).await;
        let mut tasks = Vec::new();
        for i in 0..60 {
            let storage = b.storage.clone();
            let delivery = (i == 30).then_some("d-taken".to_owned());
            tasks.push(tokio::spawn(async move {
                let id = format!("c{i}");
                let new = request(&format!("req-{id}"), 2000 + i);
                let runs = [run(&id, 2000 + i, delivery.as_deref())];
                storage.accept_request(&new, &runs, &[]).await
            }));
        }
        let mut failed = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await.unwrap() {
                Ok(()) => {}
                Err(StorageError::Conflict) => failed.push(i),
                Err(e) => panic!("{}: c{i}: {e}", b.name),
            }
        }
        assert_eq!(failed, [30], "{}", b.name);
        for i in (0..60).filter(|i| *i != 30) {
            let run = b.storage.get_run(&format!("c{i}")).await.unwrap();
            assert!(run.is_some(), "{}: c{i} was stored", b.name);
        }
        if let Some(stats) = b.storage.write_stats() {
            assert!(stats.writes > stats.commits, "{}: {stats:?}", b.name);
        }
    }
}

/// PostgreSQL's writer survives losing its connection: the batch in flight fails retryably,
/// and later writes go on over a new connection.
#[tokio::test]
async fn postgres_writes_go_on_after_the_writer_loses_its_connection() {
    let Some(database) = TestDatabase::create().await else {
        return;
    };
    let postgres = PostgresStorage::connect(&database.url).await.unwrap();
    let storage: &dyn Storage = &postgres;
    accept(storage, "before", 1000, None).await;
    let mut admin = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let pid: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'haloflow writer'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(ended);
    // Gone for sure before the next write (terminating only signals the backend).
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let lost = storage
        .accept_request(&request("req-lost", 2000), &[run("lost", 2000, None)], &[])
        .await;
    if let Err(e) = lost {
        assert!(e.is_retryable(), "{e}");
    }
    for i in 0..3 {
        accept(storage, &format!("after-{i}"), 3000 + i, None).await;
        assert!(
            storage
                .get_run(&format!("after-{i}"))
                .await
                .unwrap()
                .is_some()
        );
    }
}

fn attempt(number: u32, outcome: AttemptOutcome) -> AttemptRecord {
    AttemptRecord {
        number,
        started_at_ms: 10,
        finished_at_ms: 20,
        outcome,
        error_code: None,
        error: (outcome == AttemptOutcome::Failed).then(|| "503".to_owned()),
        retry_in_ms: (outcome == AttemptOutcome::Failed).then_some(100),
        outcome_unknown: false,
        exchanges: Vec::new(),
    }
}

#[tokio::test]
async fn steps_keep_every_attempt_and_replays_reuse_outputs() {
    for b in backends().await {
        let s = b.storage.as_ref();
        accept(s, "r1", 1000, None).await;
        s.start_run("r1", 1001).await.unwrap();
        s.start_step(
            "r1",
            "create",
            0,
            "halo.create_ticket",
            &json!({"summary": "s"}),
            1,
            1002,
        )
        .await
        .unwrap();
        s.record_attempt("r1", "create", &attempt(1, AttemptOutcome::Failed))
            .await
            .unwrap();
        s.start_step(
            "r1",
            "create",
            0,
            "halo.create_ticket",
            &json!({"summary": "s"}),
            2,
            1003,
        )
        .await
        .unwrap();
        // The last attempt is written with the step's end.
        s.finish_step(
            "r1",
            "create",
            &StepOutcome {
                status: StepStatus::Succeeded,
                outputs: Some(json!({"ticket_id": 7})),
                error: None,
                exchanges: Vec::new(),
                finished_at_ms: 1004,
                attempt: Some(attempt(2, AttemptOutcome::Adopted)),
            },
        )
        .await
        .unwrap();
        s.finish_run("r1", RunStatus::Failed, Some(("note", "boom")), 1005)
            .await
            .unwrap();
        let detail = s.get_run("r1").await.unwrap().unwrap();
        let step = &detail.steps[0];
        assert_eq!(step.attempts, 2, "{}", b.name);
        assert_eq!(
            step.attempt_log
                .iter()
                .map(|a| a.outcome)
                .collect::<Vec<_>>(),
            vec![AttemptOutcome::Failed, AttemptOutcome::Adopted],
            "{}",
            b.name
        );
        assert_eq!(
            step.started_at_ms, 1002,
            "{}: the first attempt's start stays",
            b.name
        );
        assert_eq!(detail.summary.failed_step.as_deref(), Some("note"));

        let mut replay = run("r2", 2000, None);
        replay.correlation_key = None;
        s.create_replay(&replay, Some("req-r1"), "r1", &detail.steps)
            .await
            .unwrap();
        let copied = s.get_run("r2").await.unwrap().unwrap();
        assert_eq!(
            copied.summary.replay_of.as_deref(),
            Some("r1"),
            "{}",
            b.name
        );
        assert_eq!(copied.steps[0].reused_from.as_deref(), Some("r1"));
        assert_eq!(copied.steps[0].outputs, Some(json!({"ticket_id": 7})));
        let counts = s.run_counts(None).await.unwrap();
        assert_eq!(counts.len(), 2, "{}: {counts:?}", b.name);
        let recent = s.run_counts(Some(1500)).await.unwrap();
        assert_eq!(recent.len(), 1, "{}: {recent:?}", b.name);
        assert_eq!((recent[0].count, recent[0].status), (1, RunStatus::Queued));

        // Retention keeps r1 while r2 replays it; r2 is unfinished and stays.
        assert_eq!(s.prune_finished(10_000).await.unwrap(), 0, "{}", b.name);
        s.finish_run("r2", RunStatus::Succeeded, None, 2001)
            .await
            .unwrap();
        assert_eq!(s.prune_finished(10_000).await.unwrap(), 1, "{}", b.name);
        assert_eq!(s.prune_finished(10_000).await.unwrap(), 1, "{}", b.name);
        assert!(s.get_run("r1").await.unwrap().is_none());
        s.ping().await.unwrap();
    }
}

#[tokio::test]
async fn progress_written_at_once_reads_back_like_its_parts() {
    for b in backends().await {
        let s = b.storage.as_ref();
        accept(s, "r1", 1000, None).await;
        let inputs = json!({"summary": "s"});
        let start = |step_id, position, at_ms| StepStart {
            step_id,
            position,
            step_type: "halo.create_ticket",
            inputs: &inputs,
            attempt: 1,
            at_ms,
        };
        let done = |outputs, at_ms| StepOutcome {
            status: StepStatus::Succeeded,
            outputs: Some(outputs),
            error: None,
            exchanges: Vec::new(),
            finished_at_ms: at_ms,
            attempt: Some(attempt(1, AttemptOutcome::Succeeded)),
        };
        // The run starts with its first step's intent.
        s.record_progress(
            "r1",
            &Progress {
                run_started_at_ms: Some(1001),
                step_started: Some(start("a", 0, 1002)),
                ..Progress::default()
            },
        )
        .await
        .unwrap();
        let running = s.get_run("r1").await.unwrap().unwrap();
        assert_eq!(running.summary.status, RunStatus::Running, "{}", b.name);
        assert_eq!(running.summary.started_at_ms, Some(1001));
        assert_eq!(running.steps[0].status, StepStatus::Running);
        // A step's end with the next step's start, then the last step's end with the run's.
        let first = done(json!({"ticket_id": 7}), 1003);
        s.record_progress(
            "r1",
            &Progress {
                step_finished: Some(("a", &first)),
                step_started: Some(start("b", 1, 1004)),
                ..Progress::default()
            },
        )
        .await
        .unwrap();
        let second = done(json!({"ticket_id": 8}), 1005);
        s.record_progress(
            "r1",
            &Progress {
                step_finished: Some(("b", &second)),
                run_finished: Some(RunFinish {
                    status: RunStatus::Succeeded,
                    failure: None,
                    at_ms: 1006,
                }),
                ..Progress::default()
            },
        )
        .await
        .unwrap();
        let detail = s.get_run("r1").await.unwrap().unwrap();
        assert_eq!(detail.summary.status, RunStatus::Succeeded, "{}", b.name);
        assert_eq!(detail.summary.finished_at_ms, Some(1006));
        let steps: Vec<_> = detail
            .steps
            .iter()
            .map(|s| {
                (
                    s.step_id.as_str(),
                    s.status,
                    s.outputs.clone(),
                    s.attempt_log.len(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            vec![
                ("a", StepStatus::Succeeded, Some(json!({"ticket_id": 7})), 1),
                ("b", StepStatus::Succeeded, Some(json!({"ticket_id": 8})), 1),
            ],
            "{}",
            b.name
        );
        assert_eq!(detail.steps[1].started_at_ms, 1004);
    }
}

#[tokio::test]
async fn a_run_has_one_owner_at_a_time_and_expired_claims_move() {
    for b in backends().await {
        let s = b.storage.as_ref();
        accept(s, "r1", 1000, None).await; // owned by node-a until 2000
        assert!(
            !s.claim_run("r1", "node-b", 5000, 1500).await.unwrap(),
            "{}",
            b.name
        );
        assert!(
            s.claim_run("r1", "node-a", 3000, 1500).await.unwrap(),
            "{}: its own",
            b.name
        );
        assert_eq!(
            s.claimable_runs("node-b", 2500, 10).await.unwrap(),
            Vec::<(String, String)>::new(),
            "{}",
            b.name
        );
        // node-a goes quiet; after its lease, node-b takes over and node-a is fenced off.
        assert_eq!(s.claimable_runs("node-b", 3500, 10).await.unwrap().len(), 1);
        assert!(
            s.claim_run("r1", "node-b", 9000, 3500).await.unwrap(),
            "{}",
            b.name
        );
        assert!(
            !s.renew_run_lease("r1", "node-a", 9999).await.unwrap(),
            "{}",
            b.name
        );
        assert!(s.renew_run_lease("r1", "node-b", 9999).await.unwrap());
        // A graceful stop gives it back at once.
        s.release_run("r1", "node-b").await.unwrap();
        assert!(
            s.claim_run("r1", "node-c", 12_000, 4000).await.unwrap(),
            "{}",
            b.name
        );
        // A finished run is nobody's.
        s.finish_run("r1", RunStatus::Succeeded, None, 4001)
            .await
            .unwrap();
        assert!(!s.claim_run("r1", "node-c", 20_000, 4002).await.unwrap());
        assert!(
            s.claimable_runs("node-c", 99_999, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

/// Runs stored unowned (no free slot) are claimed oldest first, as many as asked, in one
/// write, with what starting them needs; a claimed, owned or started run is not taken again.
#[tokio::test]
async fn queued_runs_are_claimed_oldest_first_once() {
    for b in backends().await {
        let s = b.storage.as_ref();
        for (id, at) in [("q3", 1003), ("q1", 1001), ("q2", 1002), ("q4", 1004)] {
            let mut queued = run(id, at, None);
            (queued.owner, queued.lease_until_ms) = (None, None);
            queued.trigger = json!({"ticket_id": at});
            let request = request(&format!("req-{id}"), at);
            s.accept_request(&request, &[queued], &[]).await.unwrap();
        }
        accept(s, "owned", 1000, None).await; // node-a's: not queued for a slot
        let first = s.claim_queued_runs("node-b", 9000, 2).await.unwrap();
        let taken: Vec<_> = first.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(taken, ["q1", "q2"], "{}", b.name);
        assert_eq!(first[0].flow_id, "f");
        assert_eq!(first[0].trigger, json!({"ticket_id": 1001}), "{}", b.name);
        assert_eq!(first[0].replay_of, None);
        assert!(!s.claim_run("q1", "node-c", 9500, 2000).await.unwrap());
        assert!(s.renew_run_lease("q2", "node-b", 9999).await.unwrap());
        // q3 started on node-c: no longer waiting for a slot.
        assert!(s.claim_run("q3", "node-c", 9500, 2000).await.unwrap());
        let rest = s.claim_queued_runs("node-c", 9000, 10).await.unwrap();
        let taken: Vec<_> = rest.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(taken, ["q4"], "{}", b.name);
        assert!(
            s.claim_queued_runs("node-c", 9000, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn a_named_lease_is_held_by_one_node_at_a_time() {
    for b in backends().await {
        let s = b.storage.as_ref();
        assert!(s.try_lease("integrator", "a", 2000, 1000).await.unwrap());
        assert!(
            !s.try_lease("integrator", "b", 2500, 1500).await.unwrap(),
            "{}",
            b.name
        );
        assert!(
            s.try_lease("integrator", "a", 3000, 1500).await.unwrap(),
            "{}: renewal",
            b.name
        );
        assert!(
            s.try_lease("integrator", "b", 5000, 3001).await.unwrap(),
            "{}: expired",
            b.name
        );
        b.release_lease("integrator", "b").await.unwrap();
        assert!(s.try_lease("integrator", "a", 6000, 3002).await.unwrap());
    }
}

fn link(ticket: i64, sys_id: &str) -> Link {
    Link {
        ticket_connection: "halo".into(),
        ticket_id: ticket,
        remote: "customers/12".into(),
        remote_table: "incident".into(),
        remote_id: sys_id.into(),
        number: Some("INC1".into()),
        created_by: LinkOrigin::Ticket,
        created_at_ms: 1,
        updated_at_ms: 1,
    }
}

#[tokio::test]
async fn links_are_one_to_one() {
    for b in backends().await {
        let s = b.storage.as_ref();
        assert!(s.save_link(&link(1, "a")).await.unwrap().is_none());
        let previous = s.save_link(&link(1, "b")).await.unwrap().unwrap();
        assert_eq!(previous.remote_id, "a", "{}", b.name);
        assert!(
            s.link_for_record("customers/12", "a")
                .await
                .unwrap()
                .is_none()
        );
        // Another ticket sent to b takes it over.
        s.save_link(&link(2, "b")).await.unwrap();
        assert!(
            s.link_for_ticket("halo", 1).await.unwrap().is_none(),
            "{}",
            b.name
        );
        assert_eq!(
            s.link_for_record("customers/12", "b")
                .await
                .unwrap()
                .unwrap()
                .ticket_id,
            2
        );
    }
}

/// A link of `connection`/`ticket` to `remote`, created at `at`.
fn link_at(connection: &str, ticket: i64, remote: &str, at: i64) -> Link {
    Link {
        ticket_connection: connection.into(),
        ticket_id: ticket,
        remote: remote.into(),
        remote_id: format!("rec-{connection}-{ticket}"),
        created_at_ms: at,
        updated_at_ms: at,
        ..link(ticket, "")
    }
}

/// Every page of `filter`, as (connection, ticket id) per page.
async fn link_pages(s: &dyn Storage, mut filter: LinkFilter) -> Vec<Vec<(String, i64)>> {
    let mut pages = Vec::new();
    loop {
        let page = s.list_links(&filter).await.unwrap();
        pages.push(
            (page.links.iter())
                .map(|l| (l.ticket_connection.clone(), l.ticket_id))
                .collect(),
        );
        let Some(cursor) = page.next_cursor else {
            return pages;
        };
        assert_eq!(LinkCursor::parse(&cursor.to_string()), Some(cursor.clone()));
        filter.before = Some(cursor);
    }
}

#[tokio::test]
async fn links_are_listed_newest_first_page_by_page() {
    for b in backends().await {
        let s = b.storage.as_ref();
        for ticket in 1..=5 {
            s.save_link(&link_at("halo", ticket, "customers/12", 10 * ticket))
                .await
                .unwrap();
        }
        // Created at the same time as halo/3: the ticket orders them.
        s.save_link(&link_at("other", 3, "suppliers/7", 30))
            .await
            .unwrap();
        let id = |c: &str, t: i64| (c.to_owned(), t);
        let all = LinkFilter {
            limit: Some(2),
            ..LinkFilter::default()
        };
        assert_eq!(
            link_pages(s, all).await,
            [
                vec![id("halo", 5), id("halo", 4)],
                vec![id("other", 3), id("halo", 3)],
                vec![id("halo", 2), id("halo", 1)],
            ],
            "{}",
            b.name
        );
        let supplier = LinkFilter {
            remote: Some("suppliers/7".into()),
            ..LinkFilter::default()
        };
        assert_eq!(
            link_pages(s, supplier).await,
            [vec![id("other", 3)]],
            "{}",
            b.name
        );
        let ticket = LinkFilter {
            ticket_id: Some(3),
            limit: Some(1),
            ..LinkFilter::default()
        };
        assert_eq!(
            link_pages(s, ticket).await,
            [vec![id("other", 3)], vec![id("halo", 3)]],
            "{}",
            b.name
        );
        let none = LinkFilter {
            remote: Some("customers/99".into()),
            ..LinkFilter::default()
        };
        assert_eq!(link_pages(s, none).await, [vec![]], "{}", b.name);
    }
}

#[tokio::test]
async fn flood_control_in_the_database_where_the_backend_keeps_it() {
    for b in backends().await {
        let Some(s) = b.storage.clone().flood_store() else {
            assert_eq!(
                b.name, "sqlite",
                "only SQLite keeps flood control in memory"
            );
            continue;
        };
        let mut verdicts = Vec::new();
        for i in 0..6 {
            verdicts.push(
                s.flood_admit("f", "k", &format!("req-{i}"), 1000 + i, 60_000, 4)
                    .await
                    .unwrap(),
            );
        }
        assert!(
            verdicts[..4].iter().all(|v| *v == Admission::Run),
            "{verdicts:?}"
        );
        assert_eq!(
            verdicts[5],
            Admission::Suppress {
                parent_request_id: "req-3".into(),
                suppressed_count: 2
            }
        );
        // Another key is not correlated; after a quiet window the key runs again.
        assert_eq!(
            s.flood_admit("f", "other", "x", 1010, 60_000, 4)
                .await
                .unwrap(),
            Admission::Run
        );
        assert_eq!(
            s.flood_admit("f", "k", "late", 70_000, 60_000, 4)
                .await
                .unwrap(),
            Admission::Run
        );
        assert_eq!(s.flood_keys().await.unwrap(), vec![("f".to_owned(), 2)]);
        assert_eq!(s.flood_sweep(5000).await.unwrap(), 1, "the idle key goes");
    }
}

#[tokio::test]
async fn the_integrator_keeps_its_start_and_counts_failing_records() {
    for b in backends().await {
        let s = b.storage.as_ref();
        assert_eq!(s.first_scan_start("customers/12", 100).await.unwrap(), 100);
        assert_eq!(
            s.first_scan_start("customers/12", 200).await.unwrap(),
            100,
            "the first start stays: {}",
            b.name
        );
        assert_eq!(s.first_scan_start("customers/13", 300).await.unwrap(), 300);
        for (attempt, at) in [(1, 10), (2, 20)] {
            let n = s
                .record_sync_failure("customers/12", "incident", "a", &format!("boom {at}"), at)
                .await
                .unwrap();
            assert_eq!(n, attempt, "{}", b.name);
        }
        s.record_sync_failure("customers/12", "problem", "b", "bang", 30)
            .await
            .unwrap();
        let failures = s.sync_failures("customers/12").await.unwrap();
        assert_eq!(failures.len(), 2, "{}", b.name);
        assert_eq!(
            (
                failures[0].table.as_str(),
                failures[0].record_id.as_str(),
                failures[0].attempts,
                failures[0].last_error.as_str(),
                failures[0].updated_at_ms
            ),
            ("incident", "a", 2, "boom 20", 20),
            "{}",
            b.name
        );
        s.clear_sync_failure("customers/12", "a").await.unwrap();
        let left: Vec<String> = s
            .sync_failures("customers/12")
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.record_id)
            .collect();
        assert_eq!(left, ["b"], "{}", b.name);
        assert!(s.sync_failures("customers/13").await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_request_keeps_the_outcome_its_run_led_to() {
    for b in backends().await {
        let s = b.storage.as_ref();
        accept(s, "r1", 1000, None).await;
        let outcome = json!({"action": "created_ticket", "ticket_id": 7});
        s.set_request_outcome("req-r1", &outcome).await.unwrap();
        let again = json!({"action": "duplicate"});
        s.set_request_outcome("req-r1", &again).await.unwrap();
        let requests = s.list_requests(&RequestFilter::default()).await.unwrap();
        assert_eq!(requests[0].id, "req-r1", "{}", b.name);
        assert_eq!(requests[0].outcome, Some(again), "{}", b.name);
    }
}

/// A page of a listing: the rows before a cursor.
type Page<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<T>> + 'a>>;

/// Every page of a listing, following the cursor of each page's last row: the ids in order.
async fn pages<'a, T>(
    mut page: impl FnMut(Option<Cursor>) -> Page<'a, T>,
    key: impl Fn(&T) -> Cursor,
    size: usize,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let rows = page(before.clone()).await;
        seen.extend(rows.iter().map(|r| key(r).id));
        if rows.len() < size {
            return seen;
        }
        before = rows.last().map(&key);
    }
}

#[tokio::test]
async fn listings_page_by_keyset_and_filter_by_flow_prefix_request_verdict_and_time() {
    for b in backends().await {
        let s = b.storage.as_ref();
        // Seven runs of `f`, two at the same millisecond; two of a built-in flow.
        for (id, at) in [
            ("r1", 1000),
            ("r2", 1001),
            ("r3a", 1003),
            ("r3b", 1003),
            ("r4", 1004),
            ("r5", 1005),
            ("r6", 1006),
        ] {
            accept(s, id, at, None).await;
        }
        for (id, at) in [("n1", 1010), ("n2", 1011)] {
            let mut request = request(&format!("req-{id}"), at);
            request.flow_id = "servicenow:customers/1".into();
            let mut event = run(id, at, None);
            event.flow_id = request.flow_id.clone();
            s.accept_request(&request, &[event], &[]).await.unwrap();
        }
        let newest_first = ["n2", "n1", "r6", "r5", "r4", "r3b", "r3a", "r2", "r1"];
        let ids = pages(
            |before| {
                Box::pin(async move {
                    let filter = RunFilter {
                        limit: Some(2),
                        before,
                        ..Default::default()
                    };
                    s.list_runs(&filter).await.unwrap()
                })
            },
            |r| Cursor {
                at_ms: r.created_at_ms,
                id: r.id.clone(),
            },
            2,
        )
        .await;
        assert_eq!(ids, newest_first, "{}", b.name);

        let runs_of = |filter: RunFilter| async move {
            let runs = s.list_runs(&filter).await.unwrap();
            runs.into_iter().map(|r| r.id).collect::<Vec<_>>()
        };
        let prefix = RunFilter {
            flow_prefix: Some("servicenow:".into()),
            ..Default::default()
        };
        assert_eq!(runs_of(prefix).await, ["n2", "n1"], "{}", b.name);
        let by_request = RunFilter {
            request_id: Some("req-r4".into()),
            ..Default::default()
        };
        assert_eq!(runs_of(by_request).await, ["r4"], "{}", b.name);
        let after_tie = RunFilter {
            flow_id: Some("f".into()),
            before: Some(Cursor {
                at_ms: 1003,
                id: "r3b".into(),
            }),
            since_ms: Some(1001),
            ..Default::default()
        };
        assert_eq!(runs_of(after_tie).await, ["r3a", "r2"], "{}", b.name);

        // A suppressed request, a duplicate delivery (no run, nothing suppressed), a refusal.
        let suppressed = NewSuppressed {
            event_index: 0,
            flow_id: "f".into(),
            correlation_key: "[1]".into(),
            parent_request_id: "req-r6".into(),
            received_at_ms: 1020,
            delivery_id: None,
        };
        s.accept_request(&request("req-sup", 1020), &[], &[suppressed])
            .await
            .unwrap();
        s.accept_request(&request("req-dup", 1021), &[], &[])
            .await
            .unwrap();
        s.record_rejected(&request("req-bad", 1022)).await.unwrap();
        let requests_of = |filter: RequestFilter| async move {
            let requests = s.list_requests(&filter).await.unwrap();
            requests.into_iter().map(|r| r.id).collect::<Vec<_>>()
        };
        for (verdict, expected) in [
            (Verdict::Suppressed, vec!["req-sup"]),
            (Verdict::Duplicate, vec!["req-dup"]),
            (Verdict::Rejected, vec!["req-bad"]),
        ] {
            let filter = RequestFilter {
                verdict: Some(verdict),
                ..Default::default()
            };
            assert_eq!(
                requests_of(filter).await,
                expected,
                "{} {verdict:?}",
                b.name
            );
        }
        let ran = RequestFilter {
            verdict: Some(Verdict::Run),
            since_ms: Some(1004),
            until_ms: Some(1011),
            ..Default::default()
        };
        assert_eq!(
            requests_of(ran).await,
            ["req-n1", "req-r6", "req-r5", "req-r4"],
            "{}",
            b.name
        );
        let prefix = RequestFilter {
            flow_prefix: Some("servicenow:".into()),
            ..Default::default()
        };
        assert_eq!(
            requests_of(prefix).await,
            ["req-n2", "req-n1"],
            "{}",
            b.name
        );
        let all = pages(
            |before| {
                Box::pin(async move {
                    let filter = RequestFilter {
                        limit: Some(3),
                        before,
                        ..Default::default()
                    };
                    s.list_requests(&filter).await.unwrap()
                })
            },
            |r| Cursor {
                at_ms: r.received_at_ms,
                id: r.id.clone(),
            },
            3,
        )
        .await;
        assert_eq!(all.len(), 12, "{}: {all:?}", b.name);
        assert_eq!(
            &all[..4],
            ["req-bad", "req-dup", "req-sup", "req-n2"],
            "{}",
            b.name
        );
        assert_eq!(all.last().map(String::as_str), Some("req-r1"), "{}", b.name);
    }
}
