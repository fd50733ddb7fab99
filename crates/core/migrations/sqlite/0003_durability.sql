-- Durable execution: every attempt of a step is kept, replays point at the run they replay,
-- Halo delivery ids make a re-sent webhook start no second run.
ALTER TABLE step_runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
-- JSON array of attempts: number, times, outcome, error, delay before the next one, exchanges.
ALTER TABLE step_runs ADD COLUMN attempt_log TEXT;
-- Outputs copied from the run this one replays (the step did not run again).
ALTER TABLE step_runs ADD COLUMN reused_from TEXT;

ALTER TABLE runs ADD COLUMN replay_of TEXT REFERENCES runs (id);
ALTER TABLE runs ADD COLUMN delivery_id TEXT;
CREATE UNIQUE INDEX runs_by_delivery ON runs (flow_id, delivery_id) WHERE delivery_id IS NOT NULL;
CREATE INDEX runs_by_finish ON runs (finished_at_ms) WHERE finished_at_ms IS NOT NULL;

ALTER TABLE suppressed_events ADD COLUMN delivery_id TEXT;
CREATE INDEX suppressed_by_delivery ON suppressed_events (flow_id, delivery_id) WHERE delivery_id IS NOT NULL;
