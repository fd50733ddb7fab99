-- The PostgreSQL schema: the same tables as migrations/sqlite (0001 to 0005) in one step, plus
-- the flood-control state that several nodes share. Times are unix milliseconds (UTC); JSON
-- is kept as text, written and read by the same code paths as SQLite's.
-- Secrets never enter these tables: the URL key is dropped from `query`, headers are not kept.

CREATE TABLE trigger_requests (
    id             TEXT PRIMARY KEY,
    flow_id        TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('accepted', 'rejected')),
    http_status    BIGINT NOT NULL,
    error_code     TEXT,
    error_message  TEXT,
    query          TEXT,
    body           TEXT,
    event_count    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX trigger_requests_by_flow ON trigger_requests (flow_id, received_at_ms);

CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    request_id      TEXT REFERENCES trigger_requests (id),
    flow_id         TEXT NOT NULL,
    event_index     BIGINT NOT NULL DEFAULT 0,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    trigger         TEXT NOT NULL,
    error           TEXT,
    failed_step     TEXT,
    created_at_ms   BIGINT NOT NULL,
    started_at_ms   BIGINT,
    finished_at_ms  BIGINT,
    correlation_key TEXT,
    replay_of       TEXT REFERENCES runs (id),
    delivery_id     TEXT,
    owner           TEXT,
    lease_until_ms  BIGINT
);
CREATE INDEX runs_by_flow ON runs (flow_id, created_at_ms);
CREATE INDEX runs_by_status ON runs (status, created_at_ms);
CREATE INDEX runs_by_request ON runs (request_id);
CREATE INDEX runs_by_correlation ON runs (flow_id, created_at_ms) WHERE correlation_key IS NOT NULL;
CREATE UNIQUE INDEX runs_by_delivery ON runs (flow_id, delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX runs_by_finish ON runs (finished_at_ms) WHERE finished_at_ms IS NOT NULL;
CREATE INDEX runs_unfinished ON runs (lease_until_ms) WHERE status IN ('queued', 'running');

CREATE TABLE step_runs (
    run_id         TEXT NOT NULL REFERENCES runs (id),
    step_id        TEXT NOT NULL,
    position       BIGINT NOT NULL,
    step_type      TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    inputs         TEXT,
    outputs        TEXT,
    error_code     TEXT,
    error          TEXT,
    exchanges      TEXT,
    started_at_ms  BIGINT NOT NULL,
    finished_at_ms BIGINT,
    attempts       BIGINT NOT NULL DEFAULT 0,
    attempt_log    TEXT,
    reused_from    TEXT,
    PRIMARY KEY (run_id, step_id)
);

CREATE TABLE suppressed_events (
    request_id        TEXT NOT NULL REFERENCES trigger_requests (id),
    event_index       BIGINT NOT NULL,
    flow_id           TEXT NOT NULL,
    correlation_key   TEXT NOT NULL,
    parent_request_id TEXT NOT NULL,
    received_at_ms    BIGINT NOT NULL,
    delivery_id       TEXT,
    PRIMARY KEY (request_id, event_index)
);
CREATE INDEX suppressed_events_by_parent ON suppressed_events (parent_request_id);
CREATE INDEX suppressed_by_delivery ON suppressed_events (flow_id, delivery_id) WHERE delivery_id IS NOT NULL;

CREATE TABLE links (
    halo_connection TEXT NOT NULL,
    halo_ticket_id  BIGINT NOT NULL,
    servicenow      TEXT NOT NULL,
    table_name      TEXT NOT NULL,
    sys_id          TEXT NOT NULL,
    number          TEXT,
    created_by      TEXT NOT NULL CHECK (created_by IN ('halo', 'servicenow')),
    created_at_ms   BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (halo_connection, halo_ticket_id)
);
CREATE UNIQUE INDEX links_by_record ON links (servicenow, sys_id);

CREATE TABLE leases (
    name     TEXT PRIMARY KEY,
    owner    TEXT NOT NULL,
    until_ms BIGINT NOT NULL
);

-- Flood control shared by the nodes: one row per correlation key, locked only while that key's
-- admission is decided, so unrelated requests never wait on each other.
CREATE TABLE flood_state (
    flow_id           TEXT NOT NULL,
    correlation_key   TEXT NOT NULL,
    -- Arrival times (ms) within the window, oldest first; at most max_requests of them.
    arrivals          BIGINT[] NOT NULL,
    parent_request_id TEXT,
    suppressed_count  BIGINT NOT NULL DEFAULT 0,
    last_ms           BIGINT NOT NULL,
    PRIMARY KEY (flow_id, correlation_key)
);
CREATE INDEX flood_state_idle ON flood_state (last_ms);
