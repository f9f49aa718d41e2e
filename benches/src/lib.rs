//! Shared helpers of the windlass benchmarks.
