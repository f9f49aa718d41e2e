-- windlass-outbox, Postgres, layout 2. Idempotent: safe to run again.
-- `windlass_outbox::postgres::migrate` runs this file (renamed for a configured schema/table)
-- under an advisory lock; users of their own migrator can run it as is.

-- The event log: one row per enqueued event, the bytes exactly as encoded. Never updated (only
-- deleted by retention once every destination has it), so a change-data-capture reader sees
-- inserts only.
CREATE TABLE IF NOT EXISTS windlass_outbox (
    seq           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id        text,
    topic         text        NOT NULL,
    partition_key text,
    event_type    text        NOT NULL,
    destinations  text[]      NOT NULL,
    event         text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Delivery state: one row per (event, destination) until the destination has it (then the row
-- is deleted), or dead / skipped. A claim leases a key's rows (lease_token is the fencing
-- token every mark is conditional on).
CREATE TABLE IF NOT EXISTS windlass_outbox_delivery (
    seq             bigint      NOT NULL,
    destination     text        NOT NULL,
    tenant          text        NOT NULL DEFAULT '',
    topic           text        NOT NULL,
    partition_key   text,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'dead', 'skipped')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_token     bigint,
    lease_until     timestamptz,
    last_error      text,
    failed_at       timestamptz,
    PRIMARY KEY (seq, destination)
) WITH (fillfactor = 80);

-- Per-key order: "is there an older row of this key?" and the rows behind a claimed head.
CREATE INDEX IF NOT EXISTS windlass_outbox_delivery_key_idx
    ON windlass_outbox_delivery (destination, topic, partition_key, seq)
    WHERE partition_key IS NOT NULL;
-- Claims: pending rows per destination and tenant (round-robin over tenants), oldest first.
CREATE INDEX IF NOT EXISTS windlass_outbox_delivery_pending_idx
    ON windlass_outbox_delivery (destination, tenant, seq) WHERE status = 'pending';
-- Operator lists (dead rows, blocked keys), keyset-paged.
CREATE INDEX IF NOT EXISTS windlass_outbox_delivery_dead_idx
    ON windlass_outbox_delivery (seq, destination) WHERE status = 'dead';
-- Purge of dead and skipped rows.
CREATE INDEX IF NOT EXISTS windlass_outbox_delivery_failed_idx
    ON windlass_outbox_delivery (failed_at) WHERE status <> 'pending';

-- Operator counters, recounted by the maintenance leader.
CREATE TABLE IF NOT EXISTS windlass_outbox_stats (
    destination       text        NOT NULL,
    topic             text        NOT NULL,
    tenant            text        NOT NULL,
    pending           bigint      NOT NULL,
    dead              bigint      NOT NULL,
    blocked           bigint      NOT NULL,
    oldest_pending_at timestamptz,
    PRIMARY KEY (destination, topic, tenant)
);

-- Small leases and marks: row 'maintenance' is the maintenance leader's lease, row 'stats'
-- holds (in expires_at) when the counters were last recounted.
CREATE TABLE IF NOT EXISTS windlass_outbox_leader (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Consumer side: one row per (consumer, source, id) handled.
CREATE TABLE IF NOT EXISTS windlass_inbox (
    consumer    text        NOT NULL,
    source      text        NOT NULL,
    id          text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, source, id)
);

CREATE INDEX IF NOT EXISTS windlass_inbox_received_idx
    ON windlass_inbox (received_at);
