//! windlass facade
