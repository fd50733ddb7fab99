//! `EXPLAIN QUERY PLAN` of the run and request listings on SQLite: every filter the console
//! sends walks an index in the listing's order from its cursor, so a page reads about as many
//! rows as it shows, with a million runs as with ten. A plan, not a timing: the benchmarks
//! measure time.

use sqlx::Row;

use super::sql::{self, Arg, arguments};
use super::{Cursor, RequestFilter, RunFilter, RunStatus, SqliteStorage, Verdict};

async fn plan(storage: &SqliteStorage, (text, args): (String, Vec<Arg>)) -> String {
    let explain = format!("EXPLAIN QUERY PLAN {text}");
    let rows = sqlx::query_with(
        sqlx::AssertSqlSafe(explain),
        arguments::<sqlx::Sqlite>(args).unwrap(),
    )
    .fetch_all(storage.pool())
    .await
    .unwrap();
    let lines: Vec<String> = rows
        .iter()
        .map(|row| row.get::<String, _>("detail"))
        .collect();
    lines.join("\n")
}

fn cursor() -> Option<Cursor> {
    Some(Cursor {
        at_ms: 1_000,
        id: "r".into(),
    })
}

/// The first line of the plan reads the table through `index`, and the listing is not
/// sorted (a request's own lists, in its subqueries, are).
fn assert_ordered_by(plan: &str, index: &str, what: &str) {
    let first = plan.lines().next().unwrap_or("");
    assert!(
        first.contains("INDEX") && first.split_whitespace().any(|word| word == index),
        "{what}: expected {index} first:\n{plan}"
    );
    let sorted = plan.contains("FOR ORDER BY") || plan.contains("RIGHT PART OF ORDER BY");
    assert!(!sorted, "{what}: sorts:\n{plan}");
}

#[tokio::test]
async fn run_listings_walk_an_index_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open_dir(dir.path()).await.unwrap();
    let cases = [
        ("no filter", RunFilter::default(), "runs_by_time"),
        (
            "a page after the first",
            RunFilter {
                before: cursor(),
                ..Default::default()
            },
            "runs_by_time",
        ),
        (
            "since and until",
            RunFilter {
                since_ms: Some(1),
                until_ms: Some(2),
                before: cursor(),
                ..Default::default()
            },
            "runs_by_time",
        ),
        (
            "a flow",
            RunFilter {
                flow_id: Some("f".into()),
                before: cursor(),
                since_ms: Some(1),
                ..Default::default()
            },
            "runs_by_flow",
        ),
        (
            "a status",
            RunFilter {
                status: Some(RunStatus::Failed),
                before: cursor(),
                ..Default::default()
            },
            "runs_by_status",
        ),
    ];
    for (what, filter, index) in cases {
        let paged = filter.before.is_some();
        let plan = plan(&storage, sql::list_runs(&filter, 51)).await;
        assert_ordered_by(&plan, index, what);
        // From the cursor on: a range of the index, not a scan from the newest row.
        assert!(!paged || plan.starts_with("SEARCH"), "{what}:\n{plan}");
    }
    // A request's runs are few: found by the request's index, then sorted.
    let by_request = RunFilter {
        request_id: Some("q".into()),
        ..Default::default()
    };
    let plan = plan(&storage, sql::list_runs(&by_request, 51)).await;
    assert!(plan.contains("INDEX runs_by_request"), "{plan}");
}

#[tokio::test]
async fn request_listings_walk_an_index_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open_dir(dir.path()).await.unwrap();
    let cases = [
        (
            "no filter",
            RequestFilter::default(),
            "trigger_requests_by_time",
        ),
        (
            "a verdict, a time and a page",
            RequestFilter {
                verdict: Some(Verdict::Suppressed),
                since_ms: Some(1),
                before: cursor(),
                ..Default::default()
            },
            "trigger_requests_by_time",
        ),
        (
            "a flow's requests",
            RequestFilter {
                flow_id: Some("f".into()),
                before: cursor(),
                ..Default::default()
            },
            "trigger_requests_by_flow",
        ),
        (
            "a flow prefix",
            RequestFilter {
                flow_prefix: Some("integration:".into()),
                before: cursor(),
                ..Default::default()
            },
            "trigger_requests_by_time",
        ),
    ];
    for (what, filter, index) in cases {
        let paged = filter.before.is_some();
        let plan = plan(&storage, sql::list_requests(&filter, 51)).await;
        assert_ordered_by(&plan, index, what);
        assert!(!paged || plan.starts_with("SEARCH"), "{what}:\n{plan}");
    }
}

#[tokio::test]
async fn the_day_s_counts_read_one_index_alone() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open_dir(dir.path()).await.unwrap();
    use super::sql::Sql;
    let text = <SqliteStorage as Sql>::DIALECT.run_counts_since;
    let counts = (text.to_owned(), vec![Arg::from(1_000i64)]);
    let plan = plan(&storage, counts).await;
    assert!(
        plan.starts_with("SEARCH runs USING COVERING INDEX runs_by_time"),
        "{plan}"
    );
}

/// Looking for unfinished runs to resume (at start, and for dead nodes' runs) walks the
/// unfinished runs oldest first and stops at the limit: its cost does not grow with the runs
/// waiting.
#[tokio::test]
async fn claimable_runs_walk_the_unfinished_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open_dir(dir.path()).await.unwrap();
    let args = super::sql::args!["node", 1_i64, 10_i64];
    let text = <SqliteStorage as super::sql::Sql>::DIALECT.claimable_runs;
    let plan = plan(&storage, (text.to_owned(), args)).await;
    assert_ordered_by(&plan, "runs_waiting", "claimable runs");
}

/// Claiming queued runs (each time a slot frees while runs wait) reads only runs that wait
/// for a slot, oldest first, up to the limit: not the runs the nodes are executing, and not
/// sorted.
#[tokio::test]
async fn claiming_queued_runs_reads_only_the_queued_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::open_dir(dir.path()).await.unwrap();
    let args = super::sql::args!["node", 1_i64, 10_i64];
    let text = <SqliteStorage as super::sql::Sql>::DIALECT.claim_queued_runs;
    let plan = plan(&storage, (text.to_owned(), args)).await;
    assert!(
        plan.lines().any(|line| line
            .trim_start()
            .starts_with("SCAN runs USING INDEX runs_queued")),
        "{plan}"
    );
    assert!(!plan.contains("ORDER BY"), "sorts:\n{plan}");
}
