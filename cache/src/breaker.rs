//! The circuit breaker around the store: closed (calls go through, consecutive failures are
//! counted), open (calls fail at once, no store work, for `open_for`), half-open (one probe
//! call goes through; its success closes the breaker, its failure or abandonment opens it
//! again). The closed path costs two atomic loads.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::options::BreakerOptions;
use crate::stats::Registry;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The breaker's state, for health checks and the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Store calls go through.
    Closed,
    /// Store calls fail at once.
    Open,
    /// One probe call is in flight.
    HalfOpen,
}

pub(crate) struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    threshold: u32,
    open_for: Duration,
    opened_at: Mutex<Instant>,
    pub(crate) opened: AtomicU64,
    registry: Arc<Registry>,
}

/// Permission to call the store. A probe that is dropped without a verdict reopens the breaker.
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Permit<'_> {
    pub(crate) fn success(mut self) {
        self.settled = true;
        self.breaker.on_success();
    }
    pub(crate) fn failure(mut self) {
        self.settled = true;
        self.breaker.on_failure(self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.open();
        }
    }
}

impl Breaker {
    pub(crate) fn new(options: &BreakerOptions, registry: Arc<Registry>) -> Self {
        Self {
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            threshold: options.failures.max(1),
            open_for: options.open_for,
            opened_at: Mutex::new(Instant::now()),
            opened: AtomicU64::new(0),
            registry,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(SeqCst) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// A permit to call the store, or `None` when the call must fail at once.
    pub(crate) fn permit(&self) -> Option<Permit<'_>> {
        match self.state.load(SeqCst) {
            CLOSED => Some(Permit {
                breaker: self,
                probe: false,
                settled: false,
            }),
            OPEN => {
                let opened_at = *self.opened_at.lock().unwrap_or_else(|p| p.into_inner());
                if opened_at.elapsed() >= self.open_for
                    && self
                        .state
                        .compare_exchange(OPEN, HALF_OPEN, SeqCst, SeqCst)
                        .is_ok()
                {
                    self.registry.breaker(BreakerState::HalfOpen, false);
                    Some(Permit {
                        breaker: self,
                        probe: true,
                        settled: false,
                    })
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    fn on_success(&self) {
        if self.failures.load(SeqCst) != 0 {
            self.failures.store(0, SeqCst);
        }
        if self.state.load(SeqCst) != CLOSED {
            self.state.store(CLOSED, SeqCst);
            self.registry.breaker(BreakerState::Closed, false);
            tracing::info!("cache store answered again; circuit breaker closed");
        }
    }

    fn on_failure(&self, probe: bool) {
        let n = self.failures.fetch_add(1, SeqCst) + 1;
        if probe || (n >= self.threshold && self.state.load(SeqCst) == CLOSED) {
            self.open();
        }
    }

    fn open(&self) {
        *self.opened_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let was = self.state.swap(OPEN, SeqCst);
        self.registry.breaker(BreakerState::Open, was == CLOSED);
        if was == CLOSED {
            self.opened.fetch_add(1, SeqCst);
            tracing::warn!(
                open_for = ?self.open_for,
                "cache store failing; circuit breaker open (calls fail fast, reads fall through)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_probes_once_and_closes_on_success() {
        let b = Breaker::new(
            &BreakerOptions::default()
                .failures(3)
                .open_for(Duration::from_millis(30)),
            Arc::new(Registry::new("test")),
        );
        for _ in 0..2 {
            b.permit().unwrap().failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.permit().unwrap().success();
        // Successes reset the count: three more failures are needed.
        for _ in 0..2 {
            b.permit().unwrap().failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.permit().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.permit().is_none(), "an open breaker let a call through");
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.permit().expect("a probe after open_for");
        assert!(b.permit().is_none(), "two probes at once");
        // A dropped probe reopens.
        drop(probe);
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        b.permit().unwrap().failure();
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        b.permit().unwrap().success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.opened.load(SeqCst), 1);
    }
}
