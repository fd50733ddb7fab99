//! What the stores take and give back: requests, runs and their steps as written and as read,
//! links, sync failures and counts. Plain data, the same for every backend.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::outbound::ExchangeRecord;

/// A trigger request as written when it arrives.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: String,
    pub flow_id: String,
    pub received_at_ms: i64,
    pub http_status: u16,
    /// `None` for an accepted request.
    pub error: Option<(String, String)>,
    pub query: Option<Value>,
    pub body: Option<String>,
    pub event_count: usize,
    /// What was done with it, when it is not runs (a sync webhook's outcome).
    pub outcome: Option<Value>,
}

/// A run created with its request.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub flow_id: String,
    pub event_index: usize,
    pub trigger: Value,
    pub created_at_ms: i64,
    /// The flood-control key the run was admitted under (none without flood control).
    pub correlation_key: Option<String>,
    /// The sender's delivery id: a second request with the same one starts no run.
    pub delivery_id: Option<String>,
    /// The node that will execute it, and until when its claim holds (see
    /// [`LeaseStore::claim_run`](super::LeaseStore::claim_run)); the accepting node claims its runs as it stores them.
    pub owner: Option<String>,
    pub lease_until_ms: Option<i64>,
}

/// An event that flood control suppressed: stored with its request, started no run.
#[derive(Debug, Clone)]
pub struct NewSuppressed {
    pub event_index: usize,
    pub flow_id: String,
    pub correlation_key: String,
    pub parent_request_id: String,
    pub received_at_ms: i64,
    pub delivery_id: Option<String>,
}

/// A run admitted by flood control, as replayed at start.
#[derive(Debug, Clone, PartialEq)]
pub struct FloodRecord {
    pub correlation_key: String,
    pub request_id: String,
    pub created_at_ms: i64,
    /// Events suppressed under this request (for this key).
    pub suppressed_count: u64,
}

/// Which trigger requests to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub flow_id: Option<String>,
    /// Only requests whose events were suppressed.
    pub suppressed_only: bool,
    pub limit: Option<u32>,
    /// Flows whose id starts with this (e.g. `servicenow:`).
    pub flow_prefix: Option<String>,
    pub verdict: Option<Verdict>,
    /// Received at or after (unix ms).
    pub since_ms: Option<i64>,
    /// Received before (unix ms).
    pub until_ms: Option<i64>,
    /// Only requests after this one in the listing's order (keyset paging).
    pub before: Option<Cursor>,
}

/// What became of a trigger request: it started runs, its events were suppressed by flood
/// control, it was a delivery received before, or it was refused. A batch may be several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Run,
    Suppressed,
    Duplicate,
    Rejected,
}

impl Verdict {
    pub fn parse(text: &str) -> Option<Verdict> {
        match text {
            "run" => Some(Verdict::Run),
            "suppressed" => Some(Verdict::Suppressed),
            "duplicate" => Some(Verdict::Duplicate),
            "rejected" => Some(Verdict::Rejected),
            _ => None,
        }
    }

    /// The verdict a listed request is shown with: the first of rejected, run, suppressed,
    /// duplicate that applies.
    pub fn of(request: &RequestRecord) -> Verdict {
        if request.status == "rejected" {
            Verdict::Rejected
        } else if !request.run_ids.is_empty() {
            Verdict::Run
        } else if request.suppressed_under.is_some() {
            Verdict::Suppressed
        } else {
            Verdict::Duplicate
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Run => "run",
            Verdict::Suppressed => "suppressed",
            Verdict::Duplicate => "duplicate",
            Verdict::Rejected => "rejected",
        }
    }
}

/// A place in a newest-first listing: `<time_ms>.<id>` of the last row of a page; the next
/// page starts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub at_ms: i64,
    pub id: String,
}

impl Cursor {
    pub fn parse(text: &str) -> Option<Cursor> {
        let (at, id) = text.split_once('.')?;
        Some(Cursor {
            at_ms: at.parse().ok()?,
            id: id.to_owned(),
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.at_ms, self.id)
    }
}

#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<RunStatus> {
        [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Failed)
    }
}

#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Running,
    Succeeded,
    Failed,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
        }
    }
}

/// How a step run ended.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub status: StepStatus,
    pub outputs: Option<Value>,
    pub error: Option<(String, String)>,
    pub exchanges: Vec<ExchangeRecord>,
    pub finished_at_ms: i64,
    /// The attempt that ended the step, appended to its attempt log in the same write.
    pub attempt: Option<AttemptRecord>,
}

/// What a run did since its last write, written at once, in this order: the run starts, a
/// step ends, the next step starts (its intent, before it sends anything), the run ends.
/// Nothing is sent between a step's end and the next step's start, so one write holds both.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress<'a> {
    pub run_started_at_ms: Option<i64>,
    pub step_finished: Option<(&'a str, &'a StepOutcome)>,
    pub step_started: Option<StepStart<'a>>,
    pub run_finished: Option<RunFinish<'a>>,
}

/// An attempt of a step about to send: its intent, written before any request leaves.
#[derive(Debug, Clone, Copy)]
pub struct StepStart<'a> {
    pub step_id: &'a str,
    pub position: usize,
    pub step_type: &'a str,
    pub inputs: &'a Value,
    pub attempt: u32,
    pub at_ms: i64,
}

/// How a run ended.
#[derive(Debug, Clone, Copy)]
pub struct RunFinish<'a> {
    pub status: RunStatus,
    /// The failed step and why.
    pub failure: Option<(&'a str, &'a str)>,
    pub at_ms: i64,
}

/// A run as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub id: String,
    pub flow_id: String,
    pub request_id: Option<String>,
    pub event_index: i64,
    pub status: RunStatus,
    pub error: Option<String>,
    pub failed_step: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// The run this one replays.
    pub replay_of: Option<String>,
}

/// One step of a run as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRunRecord {
    pub step_id: String,
    pub position: i64,
    pub step_type: String,
    pub status: StepStatus,
    pub inputs: Option<Value>,
    pub outputs: Option<Value>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub exchanges: Vec<ExchangeRecord>,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// Attempts made so far (0 for outputs reused from a replayed run).
    pub attempts: u32,
    pub attempt_log: Vec<AttemptRecord>,
    /// The run whose outputs this step reused (a replay from a later step).
    pub reused_from: Option<String>,
}

/// A run with its trigger outputs and steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub trigger: Value,
    pub steps: Vec<StepRunRecord>,
}

/// A trigger request as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: String,
    pub flow_id: String,
    pub received_at_ms: i64,
    pub status: String,
    pub http_status: i64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub query: Option<Value>,
    pub event_count: i64,
    pub run_ids: Vec<String>,
    /// Requests suppressed under this one (it was the last to run for their key).
    pub suppressed_children: Vec<String>,
    /// How many events were suppressed under this one.
    pub suppressed_count: i64,
    /// For a suppressed request: the request it is listed under.
    pub suppressed_under: Option<String>,
    /// For a sync webhook: what was done with it (its run's outputs, or its error).
    pub outcome: Option<Value>,
}

/// Which runs to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub flow_id: Option<String>,
    pub status: Option<RunStatus>,
    /// Created at or after (unix ms).
    pub since_ms: Option<i64>,
    /// Created before (unix ms).
    pub until_ms: Option<i64>,
    pub limit: Option<u32>,
    /// The runs of this trigger request.
    pub request_id: Option<String>,
    /// Flows whose id starts with this (e.g. `servicenow:`).
    pub flow_prefix: Option<String>,
    /// Only runs after this one in the listing's order (keyset paging).
    pub before: Option<Cursor>,
}

/// How one attempt of a step ended.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    /// An earlier attempt's effect was found and taken over instead of sending again.
    Adopted,
}

/// One attempt of a step, as kept in the run history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub number: u32,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub outcome: AttemptOutcome,
    pub error_code: Option<String>,
    pub error: Option<String>,
    /// The wait before the next attempt, when there is one.
    pub retry_in_ms: Option<u64>,
    /// The attempt may have taken effect although it failed (its answer was lost).
    #[serde(default)]
    pub outcome_unknown: bool,
    pub exchanges: Vec<ExchangeRecord>,
}

/// Which side created the linked pair: the ticket's (its record was created from the ticket)
/// or the remote record's (the ticket was created from it). The names are the stored and
/// serialized ones (`ticket`, `remote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkOrigin {
    Ticket,
    Remote,
}

impl LinkOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkOrigin::Ticket => "ticket",
            LinkOrigin::Remote => "remote",
        }
    }
}

/// A remote record whose sync failed in scans.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncFailure {
    pub table: String,
    /// The record's id in the remote system.
    pub record_id: String,
    pub attempts: u32,
    pub last_error: String,
    pub updated_at_ms: i64,
}

/// The 1-1 pairing of a ticket with a record in a remote system. The field names are the
/// stored columns and the serialized form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// The connection the ticket lives in.
    pub ticket_connection: String,
    /// The ticket's id there.
    pub ticket_id: i64,
    /// The remote connection the record lives in (e.g. `customers/<client id>`).
    pub remote: String,
    /// The remote table the record is in.
    pub remote_table: String,
    /// The record's id in the remote system.
    pub remote_id: String,
    /// The record's readable number, when it has one.
    pub number: Option<String>,
    pub created_by: LinkOrigin,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Which links [`LinkStore::list_links`](super::LinkStore::list_links) lists: newest first
/// (by creation), one page at a time.
#[derive(Debug, Clone, Default)]
pub struct LinkFilter {
    /// Only links to records of this remote connection.
    pub remote: Option<String>,
    /// Only links of tickets with this id (in any ticket connection).
    pub ticket_id: Option<i64>,
    /// The page's size: 1 to [`LinkFilter::MAX_LIMIT`], 50 when not given (kept in range).
    pub limit: Option<u32>,
    /// Only links after this cursor in the order, i.e. the page after the one that returned
    /// it ([`LinkPage::next_cursor`]).
    pub before: Option<LinkCursor>,
}

impl LinkFilter {
    /// The largest page.
    pub const MAX_LIMIT: u32 = 1000;
}

/// One page of links, newest first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkPage {
    pub links: Vec<Link>,
    /// Where the next page starts ([`LinkFilter::before`]); `None` on the last page.
    pub next_cursor: Option<LinkCursor>,
}

/// A position in the order links are listed in: a link's creation time and ticket (the keyset
/// the listing pages by, so a page never repeats or skips links written meanwhile). Written as
/// text, `<created at ms>.<ticket id>.<ticket connection>` ([`LinkCursor::parse`]); clients
/// pass it back as they got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCursor {
    pub created_at_ms: i64,
    pub ticket_id: i64,
    pub ticket_connection: String,
}

impl LinkCursor {
    /// The cursor just after `link`.
    pub fn after(link: &Link) -> Self {
        LinkCursor {
            created_at_ms: link.created_at_ms,
            ticket_id: link.ticket_id,
            ticket_connection: link.ticket_connection.clone(),
        }
    }

    /// Reads the text [`LinkCursor`]'s `Display` writes; `None` for anything else (numbers of
    /// 1 to 18 digits with an optional `-`, a connection of one line).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '.');
        let (created, ticket, connection) = (parts.next()?, parts.next()?, parts.next()?);
        let line_break = |c: char| matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}');
        if connection.is_empty() || connection.contains(line_break) {
            return None;
        }
        Some(LinkCursor {
            created_at_ms: cursor_number(created)?,
            ticket_id: cursor_number(ticket)?,
            ticket_connection: connection.to_owned(),
        })
    }
}

/// A cursor's number: an optional `-` and 1 to 18 digits (what always fits an `i64`).
fn cursor_number(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let plain = (1..=18).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    plain.then(|| text.parse().ok()).flatten()
}

impl std::fmt::Display for LinkCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let LinkCursor {
            created_at_ms,
            ticket_id,
            ticket_connection,
        } = self;
        write!(f, "{created_at_ms}.{ticket_id}.{ticket_connection}")
    }
}

impl Serialize for LinkCursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A run's status count, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCount {
    pub flow_id: String,
    pub status: RunStatus,
    pub count: i64,
}

/// A queued run taken by [`LeaseStore::claim_queued_runs`](super::LeaseStore::claim_queued_runs):
/// what starting it needs, without reading it back.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedRun {
    pub run_id: String,
    pub flow_id: String,
    pub trigger: Value,
    /// The run it replays: such a run may carry steps copied from it.
    pub replay_of: Option<String>,
    pub created_at_ms: i64,
}

/// Writes committed and the transactions they took, since start (a backend that groups
/// commits; see [`Backend::write_stats`](super::Backend::write_stats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    pub writes: u64,
    pub commits: u64,
}

/// How full a backend's write queue is: writes waiting for the writer, and how many it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteQueue {
    pub waiting: usize,
    pub capacity: usize,
}

impl WriteQueue {
    /// True when the database is too far behind to take another trigger request: three
    /// quarters of the queue wait. The last quarter stays for the writes of runs executing
    /// (at most one each), so they go on and the queue drains.
    pub fn refuses_requests(&self) -> bool {
        self.waiting >= self.capacity - self.capacity / 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_cursor_reads_back_what_it_writes_and_nothing_else() {
        let cursor = LinkCursor {
            created_at_ms: 1_700_000_000_000,
            ticket_id: -4,
            ticket_connection: "eu.halo".into(),
        };
        assert_eq!(cursor.to_string(), "1700000000000.-4.eu.halo");
        assert_eq!(LinkCursor::parse(&cursor.to_string()), Some(cursor));
        for text in [
            "",
            "banana",
            "1.5",
            "1.2.",
            "+1.2.x",
            "1.+2.x",
            "1..x",
            "1.2.a\nb",
            "1234567890123456789.1.x",
        ] {
            assert_eq!(LinkCursor::parse(text), None, "{text:?}");
        }
    }
}
