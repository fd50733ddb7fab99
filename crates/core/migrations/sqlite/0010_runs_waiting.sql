-- Runs beyond server.max_active_runs wait in the database (queued, no claim) and start oldest
-- first as slots free: looking for them walks the unfinished runs in that order and stops at
-- its limit, however many wait. It replaces the index on lease expiry, which made every look
-- sort all unfinished runs.
DROP INDEX runs_unfinished;
CREATE INDEX runs_waiting ON runs (created_at_ms, id) WHERE status IN ('queued', 'running');
