-- windlass-outbox, SQLite, version 1. Idempotent: safe to run again.
-- Timestamps are Unix epoch milliseconds (INTEGER); `event` is the structured CloudEvents JSON.

CREATE TABLE IF NOT EXISTS windlass_outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    org_id          TEXT,
    topic           TEXT    NOT NULL,
    partition_key   TEXT,
    event           TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'published', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    published_at    INTEGER
);

CREATE INDEX IF NOT EXISTS windlass_outbox_pending_idx
    ON windlass_outbox (seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS windlass_outbox_key_idx
    ON windlass_outbox (topic, partition_key, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS windlass_outbox_published_idx
    ON windlass_outbox (published_at) WHERE status = 'published';

CREATE TABLE IF NOT EXISTS windlass_inbox (
    consumer    TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, source, id)
);

CREATE INDEX IF NOT EXISTS windlass_inbox_received_idx
    ON windlass_inbox (received_at);
