//! The SQL both backends run, written once, and what a backend provides to run it ([`Sql`]).
//!
//! Two kinds of statements:
//! - single ones, with numbered parameters (`$1`, a number may repeat): run alone;
//! - batchable ones, with `?` parameters, each taking the next argument: SQLite runs a batch
//!   as one multi-statement query (one round trip to its thread), PostgreSQL numbers each
//!   statement's `?`s ([`numbered`]) and runs them in a transaction. No `?` appears in their
//!   string literals.
//!
//! Where the dialects differ (appending to a JSON list), each backend gives its own text
//! ([`Dialect`]), with the same parameters.

use std::borrow::Cow;

use async_trait::async_trait;
use sqlx::Arguments as _;

use super::rows::Columns;
use super::{Cursor, RequestFilter, RunFilter, StorageError, Verdict};

/// One statement argument, owned: a write may run after the caller's borrows ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(bool),
}

impl From<&str> for Arg {
    fn from(value: &str) -> Self {
        Arg::Text(Some(value.to_owned()))
    }
}

impl From<String> for Arg {
    fn from(value: String) -> Self {
        Arg::Text(Some(value))
    }
}

impl From<Option<&str>> for Arg {
    fn from(value: Option<&str>) -> Self {
        Arg::Text(value.map(str::to_owned))
    }
}

impl From<Option<String>> for Arg {
    fn from(value: Option<String>) -> Self {
        Arg::Text(value)
    }
}

impl From<i64> for Arg {
    fn from(value: i64) -> Self {
        Arg::Int(Some(value))
    }
}

impl From<Option<i64>> for Arg {
    fn from(value: Option<i64>) -> Self {
        Arg::Int(value)
    }
}

impl From<bool> for Arg {
    fn from(value: bool) -> Self {
        Arg::Bool(value)
    }
}

/// A statement's arguments, in order: `args![run_id, owner, until_ms]`.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        vec![$($crate::storage::sql::Arg::from($value)),*]
    };
}
pub(super) use args;

/// A statement and its arguments.
#[derive(Debug, Clone)]
pub(super) struct Statement {
    pub sql: &'static str,
    pub args: Vec<Arg>,
}

impl Statement {
    pub fn new(sql: &'static str, args: Vec<Arg>) -> Self {
        Statement { sql, args }
    }
}

/// A driver's argument list from ours.
pub(super) fn arguments<DB: sqlx::Database>(args: Vec<Arg>) -> Result<DB::Arguments, StorageError>
where
    Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut out = DB::Arguments::default();
    out.reserve(args.len(), 0);
    for arg in args {
        match arg {
            Arg::Text(value) => out.add(value),
            Arg::Int(value) => out.add(value),
            Arg::Bool(value) => out.add(value),
        }
        .map_err(|e| super::error::database(sqlx::Error::Encode(e)))?;
    }
    Ok(out)
}

/// A statement for a database that numbers its parameters: each `?` becomes `$1`, `$2`, … in
/// order. A statement without `?` is returned as it is.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(super) fn numbered(sql: &'static str) -> Cow<'static, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    Cow::Owned(number(sql))
}

/// [`numbered`] for a statement built at run time.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(super) fn number(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// The statements whose text differs between the dialects; each takes the parameters named.
#[derive(Debug)]
pub(super) struct Dialect {
    /// A step ends (batchable): status, outputs, error code, error, exchanges, finished at,
    /// then the attempt record (JSON text, or null) three times, run id, step id.
    pub finish_step: &'static str,
    /// An attempt is appended to a step's log (batchable): the attempt record (JSON text), run
    /// id, step id.
    pub append_attempt: &'static str,
    /// Runs per flow and status created since `$1` (single). SQLite names the time index:
    /// without statistics its planner scans the flow index whole for the grouping instead.
    pub run_counts_since: &'static str,
    /// Unfinished runs an owner may claim, oldest first (single): owner, now, limit. SQLite
    /// names the index of unfinished runs in that order: without statistics its planner takes
    /// the status index and sorts every unfinished run instead.
    pub claimable_runs: &'static str,
    /// Claims the oldest queued runs no node holds, in one write (atomic): owner, lease until,
    /// limit; returns id, flow id, trigger, replay of, created at. SQLite names the index of
    /// such runs; PostgreSQL skips rows another node is claiming at the same moment.
    pub claim_queued_runs: &'static str,
    /// Tells the other nodes, when the transaction commits, that runs wait unowned
    /// (batchable); `None` where one node has the database to itself.
    pub runs_waiting_notice: Option<&'static str>,
}

/// What a SQL backend provides. The stores are written once over it (`shared`); a backend
/// adds what it alone does (committing, flood control in the database).
#[async_trait]
pub(super) trait Sql: Send + Sync + 'static {
    type Row: Columns + Send + 'static;
    const DIALECT: Dialect;
    /// Reads rows.
    async fn fetch_all(
        &self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<Vec<Self::Row>, StorageError>;
    /// Reads rows with a statement built at run time from fixed fragments ([`Listing`]).
    async fn fetch_listing(
        &self,
        sql: String,
        args: Vec<Arg>,
    ) -> Result<Vec<Self::Row>, StorageError>;
    /// One write; returns the rows it changed. A unique-index violation is
    /// [`StorageError::Conflict`].
    async fn execute(&self, sql: &'static str, args: Vec<Arg>) -> Result<u64, StorageError>;
    /// Batchable writes that take effect together or not at all; returns the rows they
    /// returned (a `SELECT` among them, or `RETURNING`). A unique-index violation is
    /// [`StorageError::Conflict`].
    async fn execute_atomic(
        &self,
        statements: Vec<Statement>,
    ) -> Result<Vec<Self::Row>, StorageError>;

    /// Batchable writes in order, in one go. Unlike [`Sql::execute_atomic`], a backend may
    /// leave the ones before a failed one done: for writes each of which stands alone (a
    /// run's progress).
    async fn execute_all(&self, statements: Vec<Statement>) -> Result<(), StorageError> {
        self.execute_atomic(statements).await.map(drop)
    }

    /// At most one row.
    async fn fetch_optional(
        &self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<Option<Self::Row>, StorageError> {
        Ok(self.fetch_all(sql, args).await?.into_iter().next())
    }

    /// Exactly one row.
    async fn fetch_one(
        &self,
        sql: &'static str,
        args: Vec<Arg>,
    ) -> Result<Self::Row, StorageError> {
        self.fetch_optional(sql, args)
            .await?
            .ok_or_else(|| super::error::database(sqlx::Error::RowNotFound))
    }
}

// Column lists, as macros so that statements built from them stay `&'static str`.

/// The columns `rows::run_summary` reads.
macro_rules! run_columns {
    () => {
        "id, flow_id, request_id, event_index, status, error, failed_step, created_at_ms, started_at_ms, finished_at_ms, replay_of"
    };
}

/// The columns `rows::step_run` reads.
macro_rules! step_columns {
    () => {
        "step_id, position, step_type, status, inputs, outputs, error_code, error, exchanges, started_at_ms, finished_at_ms, attempts, attempt_log, reused_from"
    };
}

/// The columns `rows::link` reads.
macro_rules! link_columns {
    () => {
        "ticket_connection, ticket_id, remote, remote_table, remote_id, number, created_by, created_at_ms, updated_at_ms"
    };
}

/// The columns `rows::sync_failure` reads.
macro_rules! failure_columns {
    () => {
        "table_name, record_id, attempts, last_error, updated_at_ms"
    };
}

/// Runs that retention deletes: finished before `?`, and not replayed by a run that stays
/// (replays keep their history readable).
macro_rules! doomed_runs {
    () => {
        "SELECT id FROM runs r WHERE r.finished_at_ms < ?
           AND NOT EXISTS (SELECT 1 FROM runs x WHERE x.replay_of = r.id)"
    };
}

// Requests, runs and steps: batchable writes.

/// id, flow id, received at, status, HTTP status, error code, error message, query, body,
/// event count, outcome.
pub(super) const INSERT_REQUEST: &str = "INSERT INTO trigger_requests
    (id, flow_id, received_at_ms, status, http_status, error_code, error_message, query, body, event_count, outcome)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// outcome, request id.
pub(super) const SET_REQUEST_OUTCOME: &str =
    "UPDATE trigger_requests SET outcome = $1 WHERE id = $2";

/// id, request id, flow id, event index, trigger, created at, correlation key, delivery id,
/// replay of, owner, lease until.
pub(super) const INSERT_RUN: &str = "INSERT INTO runs
    (id, request_id, flow_id, event_index, status, trigger, created_at_ms, correlation_key, delivery_id, replay_of, owner, lease_until_ms)
    VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)";

/// request id, event index, flow id, correlation key, parent request id, received at,
/// delivery id.
pub(super) const INSERT_SUPPRESSED: &str = "INSERT INTO suppressed_events
    (request_id, event_index, flow_id, correlation_key, parent_request_id, received_at_ms, delivery_id)
    VALUES (?, ?, ?, ?, ?, ?, ?)";

/// A step a replay reuses: run id, step id, position, step type, inputs, outputs, started at,
/// finished at, reused from.
pub(super) const INSERT_REUSED_STEP: &str = "INSERT INTO step_runs
    (run_id, step_id, position, step_type, status, inputs, outputs, exchanges, started_at_ms, finished_at_ms, attempts, reused_from)
    VALUES (?, ?, ?, ?, 'succeeded', ?, ?, '[]', ?, ?, 0, ?)";

/// started at, run id.
pub(super) const START_RUN: &str =
    "UPDATE runs SET status = 'running', started_at_ms = coalesce(started_at_ms, ?) WHERE id = ?";

/// run id, step id, position, step type, inputs, started at, attempt. The first attempt's
/// start time stays; later attempts only bump the count.
pub(super) const START_STEP: &str = "INSERT INTO step_runs
    (run_id, step_id, position, step_type, status, inputs, started_at_ms, attempts)
    VALUES (?, ?, ?, ?, 'running', ?, ?, ?)
    ON CONFLICT (run_id, step_id) DO UPDATE SET
       status = 'running', inputs = excluded.inputs, attempts = excluded.attempts,
       outputs = NULL, error = NULL, error_code = NULL, finished_at_ms = NULL";

/// status, failed step, error, finished at, run id.
pub(super) const FINISH_RUN: &str =
    "UPDATE runs SET status = ?, failed_step = ?, error = ?, finished_at_ms = ?,
    owner = NULL, lease_until_ms = NULL WHERE id = ?";

/// Retention, in this order; each takes the time before which runs finished.
pub(super) const PRUNE: [&str; 4] = [
    concat!("DELETE FROM step_runs WHERE run_id IN (", doomed_runs!(), ")"),
    concat!(
        "DELETE FROM runs WHERE id IN (",
        doomed_runs!(),
        ") RETURNING id"
    ),
    "DELETE FROM suppressed_events WHERE received_at_ms < ?
       AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.request_id = suppressed_events.parent_request_id)",
    "DELETE FROM trigger_requests WHERE received_at_ms < ?
       AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.request_id = trigger_requests.id)
       AND NOT EXISTS (SELECT 1 FROM suppressed_events s WHERE s.request_id = trigger_requests.id)",
];

// Requests, runs and steps: reads.

/// flow id, status, limit, since, until.
pub(super) const GET_RUN: &str = concat!(
    "SELECT ",
    run_columns!(),
    ", trigger FROM runs WHERE id = $1"
);

pub(super) const RUN_STEPS: &str = concat!(
    "SELECT ",
    step_columns!(),
    " FROM step_runs WHERE run_id = $1 ORDER BY position"
);

/// The columns `rows::request_record` reads; `run_ids` and `children` are comma-separated
/// lists.
const REQUEST_COLUMNS: &str = "r.id, r.flow_id, r.received_at_ms, r.status, r.http_status, r.error_code, r.error_message,
        r.query, r.event_count, r.outcome,
        (SELECT string_agg(id, ',' ORDER BY event_index) FROM runs WHERE request_id = r.id) AS run_ids,
        (SELECT string_agg(request_id, ',' ORDER BY first_ms, request_id)
           FROM (SELECT request_id, min(received_at_ms) AS first_ms FROM suppressed_events
                 WHERE parent_request_id = r.id GROUP BY request_id) AS c) AS children,
        (SELECT count(*) FROM suppressed_events WHERE parent_request_id = r.id) AS suppressed_count,
        (SELECT parent_request_id FROM suppressed_events WHERE request_id = r.id ORDER BY event_index LIMIT 1) AS suppressed_under";

const SUPPRESSED: &str = "EXISTS (SELECT 1 FROM suppressed_events s WHERE s.request_id = r.id)";
const HAS_RUNS: &str = "EXISTS (SELECT 1 FROM runs x WHERE x.request_id = r.id)";

/// A listing's statement, built from the filters given, so that it names only the columns it
/// filters on and the planner picks their index (a `($1 IS NULL OR flow_id = $1)` form
/// defeats it). The text is made of fixed fragments; every value is an argument.
#[derive(Debug, Default)]
pub(super) struct Listing {
    clauses: Vec<String>,
    pub args: Vec<Arg>,
}

impl Listing {
    /// The next parameter, `$n`, bound to `value`.
    fn arg(&mut self, value: impl Into<Arg>) -> String {
        self.args.push(value.into());
        format!("${}", self.args.len())
    }

    /// A condition with `{}` standing for one parameter bound to `value`.
    fn clause(&mut self, template: &str, value: impl Into<Arg>) {
        let parameter = self.arg(value);
        self.clauses.push(template.replace("{}", &parameter));
    }

    /// `time` and `id` of rows newest first: after the cursor, and within since/until.
    fn keyset(
        &mut self,
        (time, id): (&str, &str),
        before: Option<&Cursor>,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) {
        if let Some(since) = since_ms {
            self.clause(&format!("{time} >= {{}}"), since);
        }
        if let Some(until) = until_ms {
            self.clause(&format!("{time} < {{}}"), until);
        }
        if let Some(cursor) = before {
            let at = self.arg(cursor.at_ms);
            let after = self.arg(cursor.id.as_str());
            // A row value: both backends read it as one range of the (time, id) index.
            self.clauses
                .push(format!("({time}, {id}) < ({at}, {after})"));
        }
    }

    fn flow(&mut self, column: &str, flow_id: Option<&str>, prefix: Option<&str>) {
        if let Some(flow) = flow_id {
            self.clause(&format!("{column} = {{}}"), flow);
        }
        if let Some(prefix) = prefix {
            self.clause(&format!("substr({column}, 1, length({{}})) = {{}}"), prefix);
        }
    }

    fn finish(mut self, select: &str, order: &str, limit: u32) -> (String, Vec<Arg>) {
        let limit = self.arg(i64::from(limit));
        let filter = if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        };
        (
            format!("{select}{filter} ORDER BY {order} LIMIT {limit}"),
            self.args,
        )
    }
}

/// Runs newest first, as `filter` says.
pub(super) fn list_runs(filter: &RunFilter, limit: u32) -> (String, Vec<Arg>) {
    let mut listing = Listing::default();
    listing.flow(
        "flow_id",
        filter.flow_id.as_deref(),
        filter.flow_prefix.as_deref(),
    );
    if let Some(status) = filter.status {
        listing.clause("status = {}", status.as_str());
    }
    if let Some(request) = &filter.request_id {
        listing.clause("request_id = {}", request.as_str());
    }
    let (since, until) = (filter.since_ms, filter.until_ms);
    listing.keyset(
        ("created_at_ms", "id"),
        filter.before.as_ref(),
        since,
        until,
    );
    let select = concat!("SELECT ", run_columns!(), " FROM runs");
    listing.finish(select, "created_at_ms DESC, id DESC", limit)
}

/// Trigger requests newest first, as `filter` says.
pub(super) fn list_requests(filter: &RequestFilter, limit: u32) -> (String, Vec<Arg>) {
    let mut listing = Listing::default();
    listing.flow(
        "r.flow_id",
        filter.flow_id.as_deref(),
        filter.flow_prefix.as_deref(),
    );
    if filter.suppressed_only {
        listing.clauses.push(SUPPRESSED.to_owned());
    }
    let verdict = match filter.verdict {
        None => None,
        Some(Verdict::Rejected) => Some("r.status = 'rejected'".to_owned()),
        Some(Verdict::Run) => Some(format!("r.status = 'accepted' AND {HAS_RUNS}")),
        Some(Verdict::Suppressed) => Some(SUPPRESSED.to_owned()),
        Some(Verdict::Duplicate) => Some(format!(
            "r.status = 'accepted' AND NOT {HAS_RUNS} AND NOT {SUPPRESSED}"
        )),
    };
    listing.clauses.extend(verdict);
    let (since, until) = (filter.since_ms, filter.until_ms);
    listing.keyset(
        ("r.received_at_ms", "r.id"),
        filter.before.as_ref(),
        since,
        until,
    );
    let select = format!("SELECT {REQUEST_COLUMNS} FROM trigger_requests r");
    listing.finish(&select, "r.received_at_ms DESC, r.id DESC", limit)
}

/// flow id, delivery id.
pub(super) const FIND_DELIVERY: &str =
    "SELECT request_id FROM runs WHERE flow_id = $1 AND delivery_id = $2 AND request_id IS NOT NULL
     UNION ALL
     SELECT request_id FROM suppressed_events WHERE flow_id = $1 AND delivery_id = $2
     LIMIT 1";

/// flow id, since.
pub(super) const FLOOD_HISTORY: &str = "SELECT r.correlation_key, r.request_id, r.created_at_ms,
        (SELECT count(*) FROM suppressed_events s
         WHERE s.parent_request_id = r.request_id AND s.correlation_key = r.correlation_key) AS suppressed
     FROM runs r
     WHERE r.flow_id = $1 AND r.created_at_ms >= $2 AND r.correlation_key IS NOT NULL
     ORDER BY r.created_at_ms, r.id";

pub(super) const RUN_COUNTS: &str = "SELECT flow_id, status, count(*) AS n FROM runs GROUP BY flow_id, status ORDER BY flow_id, status";

/// The runs created since a time per flow and status ([`Dialect::run_counts_since`]), from
/// `runs_by_time` alone.
macro_rules! run_counts_since {
    ($indexed_by:literal) => {
        concat!(
            "SELECT flow_id, status, count(*) AS n FROM runs ",
            $indexed_by,
            " WHERE created_at_ms >= $1 GROUP BY flow_id, status ORDER BY flow_id, status"
        )
    };
}
pub(super) use run_counts_since;

// Claims and leases.

/// owner, now, limit. `$indexed_by` names the index for SQLite (see
/// [`Dialect::claimable_runs`]).
macro_rules! claimable_runs {
    ($indexed_by:literal) => {
        concat!(
            "SELECT id, flow_id FROM runs ",
            $indexed_by,
            " WHERE status IN ('queued', 'running')
               AND (owner IS NULL OR owner = $1 OR lease_until_ms < $2)
             ORDER BY created_at_ms, id LIMIT $3"
        )
    };
}
pub(super) use claimable_runs;

/// owner, lease until, limit (see [`Dialect::claim_queued_runs`]). `$indexed_by` names the
/// index for SQLite, `$skip_locked` is PostgreSQL's row lock clause. The runs are picked once,
/// in a materialised CTE: as `IN (subquery)`, PostgreSQL may run the subquery again for each
/// row it updates, and with `SKIP LOCKED` each run finds the next ones, past the limit.
macro_rules! claim_queued_runs {
    ($indexed_by:literal, $skip_locked:literal) => {
        concat!(
            "WITH picked AS MATERIALIZED (SELECT id AS picked_id FROM runs ",
            $indexed_by,
            " WHERE status = 'queued' AND owner IS NULL
                ORDER BY created_at_ms, id LIMIT $3 ",
            $skip_locked,
            ")
             UPDATE runs SET owner = $1, lease_until_ms = $2 FROM picked
             WHERE id = picked_id AND status = 'queued' AND owner IS NULL
             RETURNING id, flow_id, trigger, replay_of, created_at_ms"
        )
    };
}
pub(super) use claim_queued_runs;

/// run id, owner, lease until, now.
pub(super) const CLAIM_RUN: &str = "UPDATE runs SET owner = $2, lease_until_ms = $3
     WHERE id = $1 AND status IN ('queued', 'running')
       AND (owner IS NULL OR owner = $2 OR lease_until_ms < $4)";

/// run id, owner, lease until.
pub(super) const RENEW_RUN_LEASE: &str = "UPDATE runs SET lease_until_ms = $3
     WHERE id = $1 AND owner = $2 AND status IN ('queued', 'running')";

/// run id, owner.
pub(super) const RELEASE_RUN: &str =
    "UPDATE runs SET owner = NULL, lease_until_ms = NULL WHERE id = $1 AND owner = $2";

/// name, owner, until, now.
pub(super) const TRY_LEASE: &str = "INSERT INTO leases (name, owner, until_ms) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until_ms = excluded.until_ms
     WHERE leases.owner = excluded.owner OR leases.until_ms < $4";

/// name, owner.
pub(super) const RELEASE_LEASE: &str = "DELETE FROM leases WHERE name = $1 AND owner = $2";

// Links.

/// A ticket's link (batchable): connection, ticket id.
pub(super) const LINK_FOR_TICKET: &str = concat!(
    "SELECT ",
    link_columns!(),
    " FROM links WHERE ticket_connection = ? AND ticket_id = ?"
);

/// A record's link: remote, record id.
pub(super) const LINK_FOR_RECORD: &str = concat!(
    "SELECT ",
    link_columns!(),
    " FROM links WHERE remote = $1 AND remote_id = $2"
);

/// remote, ticket id, before (created at, ticket connection, ticket id), limit. Newest first;
/// a page starts after its cursor (keyset paging).
pub(super) const LIST_LINKS: &str = concat!(
    "SELECT ",
    link_columns!(),
    " FROM links
     WHERE ($1 IS NULL OR remote = $1) AND ($2 IS NULL OR ticket_id = $2)
       AND ($3 IS NULL OR (created_at_ms, ticket_connection, ticket_id) < ($3, $4, $5))
     ORDER BY created_at_ms DESC, ticket_connection DESC, ticket_id DESC LIMIT $6"
);

/// 1-1: the record loses any other ticket's link (batchable): remote, record id, connection,
/// ticket id.
pub(super) const UNLINK_RECORD: &str = "DELETE FROM links WHERE remote = ? AND remote_id = ?
       AND NOT (ticket_connection = ? AND ticket_id = ?)";

/// Batchable: connection, ticket id, remote, table, record id, number, created by, created
/// at, updated at.
pub(super) const SAVE_LINK: &str =
    "INSERT INTO links (ticket_connection, ticket_id, remote, remote_table, remote_id, number,
                        created_by, created_at_ms, updated_at_ms)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT (ticket_connection, ticket_id) DO UPDATE SET
        remote = excluded.remote, remote_table = excluded.remote_table,
        remote_id = excluded.remote_id, number = excluded.number, created_by = excluded.created_by,
        created_at_ms = CASE WHEN links.remote_id = excluded.remote_id THEN links.created_at_ms
                             ELSE excluded.created_at_ms END,
        updated_at_ms = excluded.updated_at_ms";

// Sync state, per remote connection (`remote`).

/// remote, record id, version, at.
pub(super) const CLAIM_SYNC_EVENT: &str =
    "INSERT INTO sync_events (remote, record_id, version, received_at_ms) VALUES ($1, $2, $3, $4)
     ON CONFLICT DO NOTHING";

/// remote, record id, version.
pub(super) const RELEASE_SYNC_EVENT: &str =
    "DELETE FROM sync_events WHERE remote = $1 AND record_id = $2 AND version = $3";

/// remote, note id, at.
pub(super) const CLAIM_NOTE: &str =
    "INSERT INTO synced_notes (remote, note_id, synced_at_ms) VALUES ($1, $2, $3)
     ON CONFLICT DO NOTHING";

/// remote, note id.
pub(super) const RELEASE_NOTE: &str = "DELETE FROM synced_notes WHERE remote = $1 AND note_id = $2";

/// remote, table.
pub(super) const WATERMARK: &str =
    "SELECT watermark FROM scan_watermarks WHERE remote = $1 AND table_name = $2";

/// remote, table, watermark.
pub(super) const SET_WATERMARK: &str =
    "INSERT INTO scan_watermarks (remote, table_name, watermark) VALUES ($1, $2, $3)
     ON CONFLICT (remote, table_name) DO UPDATE SET watermark = excluded.watermark";

/// remote, started at, finished at, result.
pub(super) const RECORD_SCAN: &str =
    "INSERT INTO sync_scans (remote, started_at_ms, finished_at_ms, result) VALUES ($1, $2, $3, $4)
     ON CONFLICT (remote) DO UPDATE SET started_at_ms = excluded.started_at_ms,
        finished_at_ms = excluded.finished_at_ms, result = excluded.result";

pub(super) const SCANS: &str =
    "SELECT remote, started_at_ms, finished_at_ms, result FROM sync_scans ORDER BY remote";

/// remote, at.
pub(super) const RECORD_FIRST_SCAN_START: &str =
    "INSERT INTO first_scan_starts (remote, started_at_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING";

/// remote.
pub(super) const FIRST_SCAN_START: &str =
    "SELECT started_at_ms FROM first_scan_starts WHERE remote = $1";

/// remote, record id, table, error, at.
pub(super) const RECORD_SYNC_FAILURE: &str =
    "INSERT INTO sync_failures (remote, record_id, table_name, attempts, last_error, updated_at_ms)
     VALUES ($1, $2, $3, 1, $4, $5)
     ON CONFLICT (remote, record_id) DO UPDATE SET attempts = sync_failures.attempts + 1,
        last_error = excluded.last_error, updated_at_ms = excluded.updated_at_ms";

/// remote, record id.
pub(super) const SYNC_FAILURE: &str = concat!(
    "SELECT ",
    failure_columns!(),
    " FROM sync_failures WHERE remote = $1 AND record_id = $2"
);

/// remote, record id.
pub(super) const CLEAR_SYNC_FAILURE: &str =
    "DELETE FROM sync_failures WHERE remote = $1 AND record_id = $2";

/// remote.
pub(super) const SYNC_FAILURES: &str = concat!(
    "SELECT ",
    failure_columns!(),
    " FROM sync_failures WHERE remote = $1 ORDER BY updated_at_ms, record_id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_are_numbered_in_order() {
        assert_eq!(
            numbered("UPDATE t SET a = ?, b = coalesce(b, ?) WHERE id = ?"),
            "UPDATE t SET a = $1, b = coalesce(b, $2) WHERE id = $3"
        );
        assert!(matches!(
            numbered("SELECT 1 WHERE a = $1"),
            Cow::Borrowed("SELECT 1 WHERE a = $1")
        ));
    }
}
