-- The console's listings: runs and trigger requests newest first, paged by keyset on
-- (time, id), filtered by flow or status or neither; and the runs of the last 24 hours counted
-- per flow and status. Each listing walks one of these indexes in order from its cursor, so
-- a page costs the same on the first page and the ten-thousandth. `runs_by_time` also holds
-- flow and status, so the 24 h counts read the index alone.
CREATE INDEX runs_by_time ON runs (created_at_ms, id, flow_id, status);
DROP INDEX runs_by_flow;
CREATE INDEX runs_by_flow ON runs (flow_id, created_at_ms, id);
DROP INDEX runs_by_status;
CREATE INDEX runs_by_status ON runs (status, created_at_ms, id);
CREATE INDEX trigger_requests_by_time ON trigger_requests (received_at_ms, id);
DROP INDEX trigger_requests_by_flow;
CREATE INDEX trigger_requests_by_flow ON trigger_requests (flow_id, received_at_ms, id);
