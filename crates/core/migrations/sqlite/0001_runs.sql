-- Trigger requests, runs and step runs. Times are unix milliseconds (UTC).
-- Secrets never enter these tables: the URL key is dropped from `query`, headers are not kept.

CREATE TABLE trigger_requests (
    id             TEXT PRIMARY KEY,
    flow_id        TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('accepted', 'rejected')),
    http_status    INTEGER NOT NULL,
    error_code     TEXT,
    error_message  TEXT,
    query          TEXT,
    body           TEXT,
    event_count    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX trigger_requests_by_flow ON trigger_requests (flow_id, received_at_ms);

CREATE TABLE runs (
    id             TEXT PRIMARY KEY,
    request_id     TEXT REFERENCES trigger_requests (id),
    flow_id        TEXT NOT NULL,
    event_index    INTEGER NOT NULL DEFAULT 0,
    status         TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    trigger        TEXT NOT NULL,
    error          TEXT,
    failed_step    TEXT,
    created_at_ms  INTEGER NOT NULL,
    started_at_ms  INTEGER,
    finished_at_ms INTEGER
);
CREATE INDEX runs_by_flow ON runs (flow_id, created_at_ms);
CREATE INDEX runs_by_status ON runs (status, created_at_ms);
CREATE INDEX runs_by_request ON runs (request_id);

CREATE TABLE step_runs (
    run_id         TEXT NOT NULL REFERENCES runs (id),
    step_id        TEXT NOT NULL,
    position       INTEGER NOT NULL,
    step_type      TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    inputs         TEXT,
    outputs        TEXT,
    error_code     TEXT,
    error          TEXT,
    exchanges      TEXT,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    PRIMARY KEY (run_id, step_id)
);
