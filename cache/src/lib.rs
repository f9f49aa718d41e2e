//! windlass-cache: not built yet.
