//! windlass-jobs: not built yet.
