-- Names that say what a column holds, not which integration first used it: a link joins a
-- ticket (ticket_connection, ticket_id) with a remote record (remote, remote_table,
-- remote_id), created from one side or the other ('ticket' or 'remote'); sync state is kept
-- per remote connection and record. Rows are kept; stored origins are translated.

-- The origin's CHECK changes, which SQLite can only do by rebuilding the table.
CREATE TABLE links_renamed (
    ticket_connection TEXT NOT NULL,
    ticket_id         INTEGER NOT NULL,
    -- The remote connection, e.g. `customers/<client id>`.
    remote            TEXT NOT NULL,
    remote_table      TEXT NOT NULL,
    remote_id         TEXT NOT NULL,
    number            TEXT,
    created_by        TEXT NOT NULL CHECK (created_by IN ('ticket', 'remote')),
    created_at_ms     INTEGER NOT NULL,
    updated_at_ms     INTEGER NOT NULL,
    PRIMARY KEY (ticket_connection, ticket_id)
);
INSERT INTO links_renamed
    SELECT halo_connection, halo_ticket_id, servicenow, table_name, sys_id, number,
           CASE created_by WHEN 'servicenow' THEN 'remote' ELSE 'ticket' END,
           created_at_ms, updated_at_ms
    FROM links;
DROP TABLE links;
ALTER TABLE links_renamed RENAME TO links;
CREATE UNIQUE INDEX links_by_record ON links (remote, remote_id);
-- Listing links newest first, page by page (keyset: created at, then the ticket).
CREATE INDEX links_newest ON links (created_at_ms, ticket_connection, ticket_id);

ALTER TABLE sync_events RENAME COLUMN servicenow TO remote;
ALTER TABLE sync_events RENAME COLUMN sys_id TO record_id;

ALTER TABLE synced_notes RENAME COLUMN servicenow TO remote;
ALTER TABLE synced_notes RENAME COLUMN journal_sys_id TO note_id;

ALTER TABLE integrator_watermarks RENAME TO scan_watermarks;
ALTER TABLE scan_watermarks RENAME COLUMN servicenow TO remote;

ALTER TABLE integrator_scans RENAME TO sync_scans;
ALTER TABLE sync_scans RENAME COLUMN servicenow TO remote;

ALTER TABLE integrator_starts RENAME TO first_scan_starts;
ALTER TABLE first_scan_starts RENAME COLUMN servicenow TO remote;

ALTER TABLE integrator_failures RENAME TO sync_failures;
ALTER TABLE sync_failures RENAME COLUMN servicenow TO remote;
ALTER TABLE sync_failures RENAME COLUMN sys_id TO record_id;
