//! In-process wake-ups: a writer that enqueues rings the doorbell of its outbox (keyed by
//! table), and relays of the same process waiting on that outbox poll again at once, then at
//! their shortest interval for the commit to land. Costs nothing across processes (they poll).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use tokio::sync::Notify;

static DOORBELLS: LazyLock<Mutex<HashMap<String, Arc<Notify>>>> = LazyLock::new(Default::default);

/// The doorbell of the outbox whose LISTEN channel (table) is `channel`.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) fn doorbell(channel: &str) -> Arc<Notify> {
    DOORBELLS
        .lock()
        .expect("not poisoned")
        .entry(channel.to_owned())
        .or_default()
        .clone()
}

/// Wakes every relay waiting on `doorbell`, and leaves one wake-up for a relay that is between
/// a claim and its next wait (it would otherwise sleep through this enqueue).
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) fn ring(doorbell: &Notify) {
    doorbell.notify_waiters();
    doorbell.notify_one();
}
