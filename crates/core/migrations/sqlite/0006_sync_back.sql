-- Sync back from ServiceNow: each record version acted on once (webhooks and the integrator
-- share this), each journal entry turned into a Halo action once, the integrator's watermark
-- per instance and table, and its last scan per instance.
CREATE TABLE sync_events (
    servicenow     TEXT NOT NULL,
    sys_id         TEXT NOT NULL,
    version        TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (servicenow, sys_id, version)
);

CREATE TABLE synced_notes (
    servicenow     TEXT NOT NULL,
    journal_sys_id TEXT NOT NULL,
    synced_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (servicenow, journal_sys_id)
);

CREATE TABLE integrator_watermarks (
    servicenow TEXT NOT NULL,
    table_name TEXT NOT NULL,
    watermark  TEXT NOT NULL,
    PRIMARY KEY (servicenow, table_name)
);

CREATE TABLE integrator_scans (
    servicenow     TEXT PRIMARY KEY,
    started_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER NOT NULL,
    result         TEXT NOT NULL
);

-- What a ServiceNow webhook (stored as a trigger request) did, as JSON.
ALTER TABLE trigger_requests ADD COLUMN outcome TEXT;
