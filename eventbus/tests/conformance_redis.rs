//! The bus conformance suite on Redis Streams (the real server, a fresh key prefix per test).

windlass_testkit::bus_conformance!(windlass_testkit::conformance::bus::RedisFixture);
