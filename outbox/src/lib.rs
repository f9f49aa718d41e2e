//! windlass-outbox: not built yet.
