-- Links: the 1-1 pairing of a Halo ticket with a ServiceNow record. Sending a ticket again to
-- another record replaces its link; a record is linked to one ticket at most.
CREATE TABLE links (
    halo_connection TEXT NOT NULL,
    halo_ticket_id  INTEGER NOT NULL,
    -- The instance, as `customers/<client id>` or `suppliers/<supplier id>`.
    servicenow      TEXT NOT NULL,
    table_name      TEXT NOT NULL,
    sys_id          TEXT NOT NULL,
    number          TEXT,
    created_by      TEXT NOT NULL CHECK (created_by IN ('halo', 'servicenow')),
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (halo_connection, halo_ticket_id)
);
CREATE UNIQUE INDEX links_by_record ON links (servicenow, sys_id);
