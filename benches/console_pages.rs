//! The console's listings with a large history: `cargo bench --bench console_pages`.
//! Fills a SQLite history with CONSOLE_RUNS runs (default 1,000,000; one trigger request each,
//! over 8 flows and 4 statuses, spread over the last 30 days) in bulk, then times the pages the console
//! asks for: the first page and a page deep in the history (by cursor), each with no filter, a
//! flow, a status, a time range, plus the requests by verdict and the 24 h counts. Every
//! listing walks an index from its cursor (`storage::plans` checks the plans), so a deep page
//! should cost about what the first does.

use std::time::{Duration, Instant};

use haloflow::storage::{
    Cursor, RequestFilter, RunFilter, RunStatus, RunStore, SqliteStorage, Verdict,
};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// The history's span: the last day holds a thirtieth of it.
const SPAN_MS: i64 = 30 * DAY_MS;

/// Inserts `count` requests and runs with one statement each (a recursive CTE): the storage's
/// own write path would take minutes for a million.
async fn fill(database: &std::path::Path, count: i64, start_ms: i64) {
    let url = format!("sqlite://{}", database.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let step = (SPAN_MS / count).max(1);
    let numbers =
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $1)";
    let requests = format!(
        "{numbers} INSERT INTO trigger_requests (id, flow_id, received_at_ms, status, http_status, event_count)
         SELECT printf('req-%09d', i), 'flow-' || (i % 8), $2 + i * $3,
                CASE WHEN i % 50 = 0 THEN 'rejected' ELSE 'accepted' END, 202, 1 FROM n"
    );
    let runs = format!(
        "{numbers} INSERT INTO runs (id, request_id, flow_id, status, trigger, created_at_ms)
         SELECT printf('run-%09d', i), printf('req-%09d', i), 'flow-' || (i % 8),
                CASE i % 4 WHEN 0 THEN 'queued' WHEN 1 THEN 'running' WHEN 2 THEN 'succeeded' ELSE 'failed' END,
                '{{}}', $2 + i * $3 FROM n WHERE i % 50 <> 0"
    );
    for statement in [requests, runs] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(count)
            .bind(start_ms)
            .bind(step)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query("ANALYZE").execute(&pool).await.unwrap();
    pool.close().await;
}

/// The median of a few runs of `page`, which must return its rows' count.
async fn time<F, Fut>(mut page: F) -> (Duration, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut times = Vec::new();
    let mut rows = 0;
    for _ in 0..7 {
        let started = Instant::now();
        rows = page().await;
        times.push(started.elapsed());
    }
    times.sort();
    (times[times.len() / 2], rows)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let count: i64 = std::env::var("CONSOLE_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let start_ms = haloflow::internals::storage::now_ms() - SPAN_MS;
    SqliteStorage::open_dir(dir.path()).await.unwrap();
    let filled = Instant::now();
    fill(
        &dir.path().join(haloflow::internals::storage::DATABASE_FILE),
        count,
        start_ms,
    )
    .await;
    println!("{count} runs written in {:.1?}", filled.elapsed());
    let storage = SqliteStorage::open_dir(dir.path()).await.unwrap();
    // A cursor in the middle of the history: page 10,000 of 50 for a million runs.
    let middle = Cursor {
        at_ms: start_ms + (SPAN_MS / count).max(1) * (count / 2),
        id: format!("run-{:09}", count / 2),
    };
    time_run_pages(&storage, &middle, count).await;
    time_request_pages(&storage, &middle, count).await;
    let since = haloflow::internals::storage::now_ms() - DAY_MS;
    let (median, rows) =
        time(|| async { storage.run_counts(Some(since)).await.unwrap().len() }).await;
    println!(
        "{:<32} {rows:>3} rows  {median:>10.2?}",
        "runs of the last 24 h, counted"
    );
}

/// The runs page: first and deep pages, with each filter the console offers.
async fn time_run_pages(storage: &SqliteStorage, middle: &Cursor, count: i64) {
    let runs = |filter: RunFilter| RunFilter {
        limit: Some(51),
        ..filter
    };
    let cases: Vec<(&str, RunFilter)> = vec![
        ("runs, first page", runs(RunFilter::default())),
        (
            "runs, deep page",
            runs(RunFilter {
                before: Some(middle.clone()),
                ..Default::default()
            }),
        ),
        (
            "runs of a flow, deep page",
            runs(RunFilter {
                flow_id: Some("flow-3".into()),
                before: Some(middle.clone()),
                ..Default::default()
            }),
        ),
        (
            "failed runs, deep page",
            runs(RunFilter {
                status: Some(RunStatus::Failed),
                before: Some(middle.clone()),
                ..Default::default()
            }),
        ),
        (
            "runs in an hour, deep page",
            runs(RunFilter {
                since_ms: Some(middle.at_ms - 3_600_000),
                before: Some(middle.clone()),
                ..Default::default()
            }),
        ),
        (
            "runs of a request",
            runs(RunFilter {
                request_id: Some(format!("req-{:09}", count / 3)),
                ..Default::default()
            }),
        ),
    ];
    for (what, filter) in cases {
        let (median, rows) =
            time(|| async { storage.list_runs(&filter).await.unwrap().len() }).await;
        println!("{what:<32} {rows:>3} rows  {median:>10.2?}");
    }
}

/// The requests page: deep pages by verdict.
async fn time_request_pages(storage: &SqliteStorage, middle: &Cursor, count: i64) {
    let request_cases = [
        ("requests, deep page", None),
        ("rejected requests, deep page", Some(Verdict::Rejected)),
        // None are stored: the worst case, every older request is looked at.
        (
            "suppressed requests (none), deep",
            Some(Verdict::Suppressed),
        ),
    ];
    for (what, verdict) in request_cases {
        let filter = RequestFilter {
            verdict,
            limit: Some(51),
            before: Some(Cursor {
                at_ms: middle.at_ms,
                id: format!("req-{:09}", count / 2),
            }),
            ..Default::default()
        };
        let (median, rows) =
            time(|| async { storage.list_requests(&filter).await.unwrap().len() }).await;
        println!("{what:<32} {rows:>3} rows  {median:>10.2?}");
    }
}
