//! The job store conformance suite against the in-memory store.

use std::sync::Arc;

use windlass_jobs::JobStore;
use windlass_jobs::memory::MemoryStore;

async fn store() -> (Arc<dyn JobStore>, ()) {
    (Arc::new(MemoryStore::new()), ())
}

windlass_testkit::job_store_conformance!(crate::store());
