//! Conformance suites (filled in below).
