-- Several nodes (and restarts): a run is executed by the node holding its lease. A lease that
-- expires (its node died) lets another node take the run over.
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN lease_until_ms INTEGER;
CREATE INDEX runs_unfinished ON runs (lease_until_ms) WHERE status IN ('queued', 'running');

-- Named leases for work one node at a time does (the integrator).
CREATE TABLE leases (
    name     TEXT PRIMARY KEY,
    owner    TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
