-- windlass-outbox, Postgres, version 1. Idempotent: safe to run again.
-- `windlass_outbox::postgres::migrate` runs this file (renamed for a configured schema/table)
-- under an advisory lock; users of their own migrator can run it as is.

CREATE TABLE IF NOT EXISTS windlass_outbox (
    id              uuid        PRIMARY KEY,
    seq             bigserial   NOT NULL,
    org_id          text,
    topic           text        NOT NULL,
    partition_key   text,
    event           jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'published', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    published_at    timestamptz
);

-- Claim order: pending rows by seq.
CREATE INDEX IF NOT EXISTS windlass_outbox_pending_idx
    ON windlass_outbox (seq) WHERE status = 'pending';
-- "Is there an older pending row of this key?" and the rows behind a claimed head.
CREATE INDEX IF NOT EXISTS windlass_outbox_key_idx
    ON windlass_outbox (topic, partition_key, seq) WHERE status = 'pending';
-- Retention.
CREATE INDEX IF NOT EXISTS windlass_outbox_published_idx
    ON windlass_outbox (published_at) WHERE status = 'published';
-- Dead-row listing.
CREATE INDEX IF NOT EXISTS windlass_outbox_dead_idx
    ON windlass_outbox (seq) WHERE status = 'dead';

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
