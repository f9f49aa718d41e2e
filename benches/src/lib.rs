//! Shared helpers of the windlass benchmarks.

pub mod job_kinds;
