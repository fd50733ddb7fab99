-- The integrator: when it started per instance (by default, records created before it never
-- become tickets), and records whose sync keeps failing (skipped after a bounded number of
-- attempts, so one record does not stop every scan).
CREATE TABLE integrator_starts (
    servicenow    TEXT PRIMARY KEY,
    started_at_ms INTEGER NOT NULL
);

CREATE TABLE integrator_failures (
    servicenow    TEXT NOT NULL,
    sys_id        TEXT NOT NULL,
    table_name    TEXT NOT NULL,
    attempts      INTEGER NOT NULL,
    last_error    TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (servicenow, sys_id)
);
