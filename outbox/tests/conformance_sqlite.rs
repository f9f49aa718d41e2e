//! The outbox conformance suite on SQLite.
#![cfg(feature = "sqlite")]

windlass_testkit::outbox_conformance!(windlass_testkit::outbox::SqliteFixture);
