-- windlass-outbox, SQLite, layout 2. Idempotent: safe to run again.
-- Timestamps are Unix epoch milliseconds (INTEGER); `event` is the structured CloudEvents JSON,
-- exactly as encoded; `destinations` is a comma-separated list.

CREATE TABLE IF NOT EXISTS windlass_outbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id        TEXT,
    topic         TEXT    NOT NULL,
    partition_key TEXT,
    event_type    TEXT    NOT NULL,
    destinations  TEXT    NOT NULL,
    event         TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS windlass_outbox_delivery (
    seq             INTEGER NOT NULL,
    destination     TEXT    NOT NULL,
    tenant          TEXT    NOT NULL DEFAULT '',
    topic           TEXT    NOT NULL,
    partition_key   TEXT,
    status          TEXT    NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'dead', 'skipped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    lease_token     INTEGER,
    lease_until     INTEGER,
    last_error      TEXT,
    failed_at       INTEGER,
    PRIMARY KEY (seq, destination)
);

CREATE INDEX IF NOT EXISTS windlass_outbox_delivery_key_idx
    ON windlass_outbox_delivery (destination, topic, partition_key, seq)
    WHERE partition_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS windlass_outbox_delivery_pending_idx
    ON windlass_outbox_delivery (destination, tenant, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS windlass_outbox_delivery_dead_idx
    ON windlass_outbox_delivery (seq, destination) WHERE status = 'dead';
CREATE INDEX IF NOT EXISTS windlass_outbox_delivery_failed_idx
    ON windlass_outbox_delivery (failed_at) WHERE status <> 'pending';

CREATE TABLE IF NOT EXISTS windlass_outbox_stats (
    destination       TEXT    NOT NULL,
    topic             TEXT    NOT NULL,
    tenant            TEXT    NOT NULL,
    pending           INTEGER NOT NULL,
    dead              INTEGER NOT NULL,
    blocked           INTEGER NOT NULL,
    oldest_pending_at INTEGER,
    PRIMARY KEY (destination, topic, tenant)
);

CREATE TABLE IF NOT EXISTS windlass_outbox_leader (
    name       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS windlass_inbox (
    consumer    TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, source, id)
);

CREATE INDEX IF NOT EXISTS windlass_inbox_received_idx
    ON windlass_inbox (received_at);
