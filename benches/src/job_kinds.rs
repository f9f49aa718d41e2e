//! Job kinds the jobs harnesses share (`jobs`, `jobs_limits`, `jobs_enqueue`): a no-op that
//! counts its runs and a ping that records when it started.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use windlass_jobs::{Job, JobContext, JobError};

/// Runs of [`Noop`] so far (all harness jobs of this process).
pub static RAN: AtomicU64 = AtomicU64::new(0);

/// When each [`Ping`] started, by its `seq`.
pub static STARTED_AT: LazyLock<Mutex<HashMap<u64, Instant>>> = LazyLock::new(Default::default);

/// A job that does nothing but count itself in [`RAN`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Noop {
    /// A number making each job's args distinct.
    pub n: u64,
}

impl Job for Noop {
    const KIND: &'static str = "noop";
    async fn run(&self, _ctx: JobContext) -> Result<(), JobError> {
        RAN.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A job that records its start time in [`STARTED_AT`] (pickup latency).
#[derive(Debug, Serialize, Deserialize)]
pub struct Ping {
    /// The sample number.
    pub seq: u64,
}

impl Job for Ping {
    const KIND: &'static str = "ping";
    async fn run(&self, _ctx: JobContext) -> Result<(), JobError> {
        STARTED_AT.lock().unwrap().insert(self.seq, Instant::now());
        Ok(())
    }
}
