//! The bus conformance suite on the in-process bus.

windlass_testkit::bus_conformance!(windlass_testkit::conformance::bus::MemoryFixture);
