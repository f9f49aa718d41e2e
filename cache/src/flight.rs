//! Single flight: at most one load per (Rust type, error type, entry) per process, shared by the
//! callers that arrive while it runs, under one rule that keeps every path fresh:
//!
//! **A caller only takes a result that was valid after it arrived.** Every caller takes a
//! *ticket* from a process-wide clock when it arrives; every outcome carries `valid_below`, a
//! ticket taken just before the moment that makes it valid: before the loader was called (the
//! loader read the database after that), or before a guarded write was sent that the store
//! accepted (no invalidation of its tags happened between the load's preparation and that
//! write). A waiter whose ticket is not below `valid_below` does not take the outcome: it
//! looks again and loads itself if needed. Stale values are never shared through a flight:
//! each caller only serves a stale value it read itself.
//!
//! Leadership is cooperative, which lets loaders borrow from their caller: the first caller
//! leads and runs its own loader; the others wait. A leader that gives up (its future dropped,
//! a panic, a timeout) marks the flight abandoned on drop, and a waiter takes over with its own
//! loader. No flight outlives the callers and tasks that run it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// How a flight failed (shared by its waiters).
pub(crate) enum Failure<E> {
    Loader(Arc<E>),
    TimedOut(Duration),
    Panicked,
}

impl<E> Clone for Failure<E> {
    fn clone(&self) -> Self {
        match self {
            Failure::Loader(e) => Failure::Loader(e.clone()),
            Failure::TimedOut(d) => Failure::TimedOut(*d),
            Failure::Panicked => Failure::Panicked,
        }
    }
}

/// The outcome of a flight.
pub(crate) struct Outcome<T, E> {
    pub(crate) result: Result<Arc<T>, Failure<E>>,
    /// Callers whose ticket is below this may take a value (failures are shared with all).
    pub(crate) valid_below: u64,
}

impl<T, E> Clone for Outcome<T, E> {
    fn clone(&self) -> Self {
        Self {
            result: match &self.result {
                Ok(v) => Ok(v.clone()),
                Err(f) => Err(f.clone()),
            },
            valid_below: self.valid_below,
        }
    }
}

pub(crate) enum State<T, E> {
    Loading,
    Done(Outcome<T, E>),
    Abandoned,
}

impl<T, E> Clone for State<T, E> {
    fn clone(&self) -> Self {
        match self {
            State::Loading => State::Loading,
            State::Done(o) => State::Done(o.clone()),
            State::Abandoned => State::Abandoned,
        }
    }
}

pub(crate) struct Flight<T, E> {
    tx: watch::Sender<State<T, E>>,
}

pub(crate) type FlightKey = (TypeId, TypeId, String);

/// The flight table and the ticket clock of one cache.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<FlightKey, Arc<dyn Any + Send + Sync>>>,
    clock: AtomicU64,
}

/// What a caller is to a flight.
pub(crate) enum Role<T: Send + Sync + 'static, E: Send + Sync + 'static> {
    Leader(Leader<T, E>),
    Waiter(watch::Receiver<State<T, E>>),
}

/// The leader's duty: publish an outcome, or (on drop) mark the flight abandoned. Either way
/// the flight leaves the table first, so a caller arriving afterwards never joins a finished
/// flight.
pub(crate) struct Leader<T: Send + Sync + 'static, E: Send + Sync + 'static> {
    flights: Arc<Flights>,
    key: FlightKey,
    flight: Arc<Flight<T, E>>,
    done: bool,
}

impl<T: Send + Sync + 'static, E: Send + Sync + 'static> Leader<T, E> {
    fn leave(&self) {
        let mut map = self.flights.lock();
        let ours = map.get(&self.key).is_some_and(|f| {
            std::ptr::eq(
                Arc::as_ptr(f) as *const (),
                Arc::as_ptr(&self.flight) as *const (),
            )
        });
        if ours {
            map.remove(&self.key);
        }
    }

    /// Publishes the outcome to the waiters. A panicked load is not shared: the flight is
    /// abandoned, and a waiter takes over with its own loader.
    pub(crate) fn finish(mut self, outcome: Outcome<T, E>) {
        if matches!(outcome.result, Err(Failure::Panicked)) {
            return; // dropped: abandoned
        }
        self.leave();
        self.done = true;
        let _ = self.flight.tx.send(State::Done(outcome));
    }

    /// A receiver of this flight (for a caller that leads through a spawned task).
    pub(crate) fn subscribe(&self) -> watch::Receiver<State<T, E>> {
        self.flight.tx.subscribe()
    }
}

impl<T: Send + Sync + 'static, E: Send + Sync + 'static> Drop for Leader<T, E> {
    fn drop(&mut self) {
        if !self.done {
            self.leave();
            let _ = self.flight.tx.send(State::Abandoned);
        }
    }
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlightKey, Arc<dyn Any + Send + Sync>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new ticket (strictly increasing).
    pub(crate) fn ticket(&self) -> u64 {
        self.clock.fetch_add(1, SeqCst) + 1
    }

    /// Flights in progress (for tests: none may be left behind).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when a flight is in progress for `key`.
    pub(crate) fn in_progress(&self, key: &FlightKey) -> bool {
        self.lock().contains_key(key)
    }

    /// Joins the flight of `key`, or registers one led by the caller.
    pub(crate) fn join_or_lead<T, E>(self: &Arc<Self>, key: &FlightKey) -> Role<T, E>
    where
        T: Send + Sync + 'static,
        E: Send + Sync + 'static,
    {
        let mut map = self.lock();
        if let Some(existing) = map.get(key)
            && let Ok(flight) = existing.clone().downcast::<Flight<T, E>>()
        {
            return Role::Waiter(flight.tx.subscribe());
        }
        let (tx, _) = watch::channel(State::Loading);
        let flight = Arc::new(Flight { tx });
        map.insert(key.clone(), flight.clone());
        Role::Leader(Leader {
            flights: self.clone(),
            key: key.clone(),
            flight,
            done: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlightKey {
        (TypeId::of::<u32>(), TypeId::of::<()>(), "k".into())
    }

    #[tokio::test]
    async fn a_dropped_leader_abandons_and_leaves_the_table() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(leader) = flights.join_or_lead::<u32, ()>(&key()) else {
            panic!("first caller must lead")
        };
        let Role::Waiter(mut rx) = flights.join_or_lead::<u32, ()>(&key()) else {
            panic!("second caller must wait")
        };
        drop(leader);
        assert_eq!(flights.len(), 0, "a dropped leader left its flight behind");
        rx.changed().await.unwrap();
        assert!(matches!(*rx.borrow(), State::Abandoned));
        // The next caller leads a new flight.
        assert!(matches!(
            flights.join_or_lead::<u32, ()>(&key()),
            Role::Leader(_)
        ));
    }

    #[tokio::test]
    async fn finish_leaves_the_table_before_publishing() {
        let flights = Arc::new(Flights::default());
        let Role::Leader(leader) = flights.join_or_lead::<u32, ()>(&key()) else {
            panic!()
        };
        let Role::Waiter(mut rx) = flights.join_or_lead::<u32, ()>(&key()) else {
            panic!()
        };
        let t = flights.ticket();
        leader.finish(Outcome {
            result: Ok(Arc::new(7)),
            valid_below: t,
        });
        rx.changed().await.unwrap();
        assert!(matches!(&*rx.borrow(), State::Done(o) if o.valid_below == t));
        assert_eq!(flights.len(), 0);
        assert!(flights.ticket() > t);
    }
}
