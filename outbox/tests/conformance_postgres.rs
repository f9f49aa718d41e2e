//! The outbox conformance suite on Postgres.
#![cfg(feature = "postgres")]

windlass_testkit::outbox_conformance!(windlass_testkit::outbox::PgFixture);
