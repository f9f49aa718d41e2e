//! Unit tests of the runner over a scripted transport.
