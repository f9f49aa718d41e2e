//! The job store conformance suite against the in-memory store.

use std::sync::Arc;

use windlass_jobs::JobStore;
use windlass_jobs::memory::MemoryJobStore;

async fn store() -> (Arc<dyn JobStore>, ()) {
    (Arc::new(MemoryJobStore::new()), ())
}

windlass_testkit::job_store_conformance!(crate::store());
