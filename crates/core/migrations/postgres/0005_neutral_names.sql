-- Names that say what a column holds, not which integration first used it: a link joins a
-- ticket (ticket_connection, ticket_id) with a remote record (remote, remote_table,
-- remote_id), created from one side or the other ('ticket' or 'remote'); sync state is kept
-- per remote connection and record. Rows are kept; stored origins are translated.

ALTER TABLE links RENAME COLUMN halo_connection TO ticket_connection;
ALTER TABLE links RENAME COLUMN halo_ticket_id TO ticket_id;
ALTER TABLE links RENAME COLUMN servicenow TO remote;
ALTER TABLE links RENAME COLUMN table_name TO remote_table;
ALTER TABLE links RENAME COLUMN sys_id TO remote_id;
ALTER TABLE links DROP CONSTRAINT links_created_by_check;
UPDATE links SET created_by = CASE created_by WHEN 'servicenow' THEN 'remote' ELSE 'ticket' END;
ALTER TABLE links ADD CONSTRAINT links_created_by_check CHECK (created_by IN ('ticket', 'remote'));
-- Listing links newest first, page by page (keyset: created at, then the ticket).
CREATE INDEX links_newest ON links (created_at_ms, ticket_connection, ticket_id);

ALTER TABLE sync_events RENAME COLUMN servicenow TO remote;
ALTER TABLE sync_events RENAME COLUMN sys_id TO record_id;

ALTER TABLE synced_notes RENAME COLUMN servicenow TO remote;
ALTER TABLE synced_notes RENAME COLUMN journal_sys_id TO note_id;

ALTER TABLE integrator_watermarks RENAME TO scan_watermarks;
ALTER TABLE scan_watermarks RENAME COLUMN servicenow TO remote;
ALTER INDEX integrator_watermarks_pkey RENAME TO scan_watermarks_pkey;

ALTER TABLE integrator_scans RENAME TO sync_scans;
ALTER TABLE sync_scans RENAME COLUMN servicenow TO remote;
ALTER INDEX integrator_scans_pkey RENAME TO sync_scans_pkey;

ALTER TABLE integrator_starts RENAME TO first_scan_starts;
ALTER TABLE first_scan_starts RENAME COLUMN servicenow TO remote;
ALTER INDEX integrator_starts_pkey RENAME TO first_scan_starts_pkey;

ALTER TABLE integrator_failures RENAME TO sync_failures;
ALTER TABLE sync_failures RENAME COLUMN servicenow TO remote;
ALTER TABLE sync_failures RENAME COLUMN sys_id TO record_id;
ALTER INDEX integrator_failures_pkey RENAME TO sync_failures_pkey;
