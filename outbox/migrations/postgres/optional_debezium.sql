-- windlass-outbox, Postgres, optional: the columns Debezium's outbox event router reads by
-- default, generated from the routing columns (no data migration, nothing for the writer to
-- fill). See docs/outbox.md for the router configuration.
ALTER TABLE windlass_outbox
    ADD COLUMN IF NOT EXISTS aggregatetype text GENERATED ALWAYS AS (topic) STORED,
    ADD COLUMN IF NOT EXISTS aggregateid   text GENERATED ALWAYS AS (partition_key) STORED,
    ADD COLUMN IF NOT EXISTS type          text GENERATED ALWAYS AS (event_type) STORED;
