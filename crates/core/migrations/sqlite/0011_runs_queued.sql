-- Runs waiting for a slot (queued, no node holds them) are claimed oldest first, as many as a
-- node has free slots, in one statement: this index holds only them, so a claim reads just the
-- rows it takes, however many runs the nodes are executing.
CREATE INDEX runs_queued ON runs (created_at_ms, id) WHERE status = 'queued' AND owner IS NULL;
