-- Flood control: each run keeps the correlation key it was admitted under, and suppressed
-- events are stored with the request that carried them and the parent they are listed under.

ALTER TABLE runs ADD COLUMN correlation_key TEXT;
CREATE INDEX runs_by_correlation ON runs (flow_id, created_at_ms) WHERE correlation_key IS NOT NULL;

CREATE TABLE suppressed_events (
    request_id        TEXT NOT NULL REFERENCES trigger_requests (id),
    event_index       INTEGER NOT NULL,
    flow_id           TEXT NOT NULL,
    correlation_key   TEXT NOT NULL,
    parent_request_id TEXT NOT NULL,
    received_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (request_id, event_index)
);
CREATE INDEX suppressed_events_by_parent ON suppressed_events (parent_request_id);
