-- The console's listings: runs newest first across every flow (keyset paging on
-- (created_at_ms, id)) and the runs of the last 24 hours counted per flow and status.
CREATE INDEX runs_by_time ON runs (created_at_ms, id);
