//! The handler runner every backend shares, and the [`Transport`] trait backends implement to
//! plug into it.
//!
//! A backend only moves entries: fetch a batch, acknowledge, dead-letter, hand back. The runner
//! owns the semantics: bounded read-ahead, a concurrency limit, order per ordering key within a
//! partition (the next event of a key starts only when the previous one is acknowledged or
//! dead-lettered; other keys go on), a deadline per handler attempt with a cancellation token,
//! retry with backoff, dead-lettering, panics caught, batched acknowledgements, a `tracing` span
//! per delivery and honest shutdown. It must not know any backend.
//!
//! # The contract with a transport
//! **Pulling.** The runner calls [`Transport::fetch`] from one task, only when it has room for
//! more deliveries (read-ahead, [`SubscribeOptions::prefetch`]); that is its backpressure. A
//! fetch is cancelled only at shutdown, so a transport must not lose entries when its future is
//! dropped (they stay pending in the backend). A transport that must keep polling its backend
//! whatever the runner does (a Kafka consumer must call `poll` to stay in its group) runs its
//! own loop in a task of its own, buffers per partition, pauses a partition whose buffer is
//! full and resumes it when `fetch` drained it; `fetch` then only takes from the buffers. The
//! runner never blocks such a loop.
//!
//! **Partitions.** A partitioned transport creates a [`PartitionControl`] with
//! [`partition_control`], hands the [`PartitionEvents`] to [`Runner::partitioned`], and tags
//! every delivery with the [`Assignment`] (partition + epoch) it was read under
//! ([`Delivery::with_assignment`]). Then:
//! - [`PartitionControl::assign`] before reading a partition: deliveries of a partition the
//!   runner does not know as assigned with that epoch are never started; they are handed back
//!   with [`Transport::release`].
//! - [`PartitionControl::revoke`] when the partition leaves this member (rebalance, a lease
//!   lost), after the transport stopped fetching it. The runner starts nothing more of it,
//!   stops its retries that wait for their backoff, hands back every delivery of it not yet
//!   started ([`Revoked::unstarted`], for the transport to return to the backend), waits at most
//!   `wait` for its handlers in flight, then cancels their [`DeliveryContext::cancel`] tokens
//!   and drops them ([`Revoked::aborted`]), and returns once every acknowledgement of the
//!   partition's finished handlers was passed to [`Transport::ack`]. The transport then commits
//!   or releases the partition. Other partitions keep running throughout.
//! - Deliveries without an assignment (unpartitioned transports) always run.
//!
//! **Gaps under a committed prefix.** Events of different keys run concurrently, so a partition's
//! deliveries finish out of order; a backend that records only the handled prefix of a
//! partition ([`Transport::commits_prefix`], Kafka's committed offset) cannot record a
//! delivery handled above a gap. For such a transport a graceful handover (revoke, shutdown)
//! hands back only the deliveries that arrived *after* the latest one started in that
//! partition; those that arrived before it (queued behind their key, or waiting for a slot)
//! still run, one attempt each (no retry waits), within the same wait (the revoke's `wait`,
//! [`SubscribeOptions::shutdown_timeout`]). The prefix then covers everything this member
//! handled, and the next owner redelivers nothing it ran. Past the wait, what is left is
//! cancelled or handed back, and the next owner runs those again (at least once).
//!
//! **Shutdown** ([`Subscription::shutdown`]): stop fetching; hand back at once every delivery not
//! yet started ([`Transport::release`]), retries waiting for their backoff included; let the
//! handlers in flight finish up to [`SubscribeOptions::shutdown_timeout`] (then cancel and drop
//! them); flush acknowledgements; then [`Transport::close`] (leave the group).
//! [`Subscription::abort`] kills everything like a crash, for tests.
//!
//! **Fencing.** A transport whose acknowledgements or dead-letter writes are fenced by a lease
//! returns [`Error::LeaseLost`](crate::Error::LeaseLost) when the fence refuses: the runner then
//! drops the acknowledgement (the entry stays pending for the partition's next owner) or
//! abandons the dead-lettering, instead of retrying.
//!
//! [`SubscribeOptions::prefetch`]: crate::SubscribeOptions::prefetch
//! [`SubscribeOptions::shutdown_timeout`]: crate::SubscribeOptions::shutdown_timeout
//! [`DeliveryContext::cancel`]: crate::DeliveryContext::cancel
//! [`Subscription::shutdown`]: crate::Subscription::shutdown
//! [`Subscription::abort`]: crate::Subscription::abort

mod ack;
mod attempt;
mod control;
mod dispatch;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use windlass_core::{Group, RetryPolicy, Topic};

use crate::error::Result;
use crate::event::Event;
use crate::handler::Handler;
use crate::subscription::Subscription;
use crate::traits::SubscribeOptions;

pub use control::{PartitionControl, PartitionEvents, Revoked, partition_control};

/// An entry a backend read and could not decode into an [`Event`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Undecodable {
    /// The bytes as read.
    pub raw: Vec<u8>,
    /// Why they do not decode.
    pub reason: String,
}

impl Undecodable {
    /// Describes an entry that does not decode.
    pub fn new(raw: impl Into<Vec<u8>>, reason: impl Into<String>) -> Self {
        Self {
            raw: raw.into(),
            reason: reason.into(),
        }
    }
}

/// A partition as this member holds it: the partition index and the epoch of the lease (or
/// assignment generation) it was read under. A new owner always holds a higher epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Assignment {
    /// The partition index.
    pub partition: u32,
    /// The fencing epoch (lease counter, assignment generation).
    pub epoch: u64,
}

impl Assignment {
    /// Partition `partition` held under `epoch`.
    pub fn new(partition: u32, epoch: u64) -> Self {
        Self { partition, epoch }
    }
}

/// One entry handed to the runner by a [`Transport`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Delivery<T> {
    /// The decoded event, or why the entry does not decode (it then goes to the DLQ at once).
    pub payload: std::result::Result<Event, Undecodable>,
    /// What the transport needs to acknowledge or dead-letter this entry.
    pub token: T,
    /// The backend's id of the entry, for logs and the handler's context.
    pub delivery_id: String,
    /// How many times the backend delivered this entry, this time included (1 the first time).
    pub delivery_count: u32,
    /// The partition it was read from, when the backend partitions topics: order per key is
    /// kept within a partition, and the handler's context names it.
    pub partition: Option<u32>,
    /// The partition and epoch it was read under, for transports that assign partitions
    /// through a [`PartitionControl`] (it then starts only while that assignment holds).
    pub assignment: Option<Assignment>,
}

impl<T> Delivery<T> {
    /// Describes one delivery.
    pub fn new(
        payload: std::result::Result<Event, Undecodable>,
        token: T,
        delivery_id: impl Into<String>,
        delivery_count: u32,
    ) -> Self {
        Self {
            payload,
            token,
            delivery_id: delivery_id.into(),
            delivery_count: delivery_count.max(1),
            partition: None,
            assignment: None,
        }
    }

    /// Names the partition the delivery was read from (without fencing it by an assignment).
    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Tags the delivery with the partition and epoch it was read under.
    pub fn with_assignment(mut self, assignment: Assignment) -> Self {
        self.partition = Some(assignment.partition);
        self.assignment = Some(assignment);
        self
    }
}

/// What a backend implements to be driven by the runner. For backend authors; applications use
/// [`Subscriber`](crate::Subscriber). See the [module docs](self) for the contract.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Identifies one delivery for acknowledgement.
    type Token: Send + Sync + 'static;

    /// This consumer's name in its group.
    fn consumer(&self) -> &str;

    /// Waits a short, backend-defined time for up to `max` entries; an empty batch is fine.
    /// Must not lose entries when the returned future is dropped (they stay pending).
    async fn fetch(&self, max: usize) -> Result<Vec<Delivery<Self::Token>>>;

    /// Acknowledges handled entries (of any partitions, in the order they were handled).
    async fn ack(&self, tokens: &[Self::Token]) -> Result<()>;

    /// Moves an entry to the dead-letter queue with `reason`, then acknowledges it.
    async fn dead_letter(&self, delivery: &Delivery<Self::Token>, reason: &str) -> Result<()>;

    /// Gives back entries that were fetched but never started (shutdown, a partition that is
    /// not assigned). The default leaves them pending for redelivery.
    async fn release(&self, _tokens: Vec<Self::Token>) {}

    /// True when the backend records only a handled *prefix* of each partition (a committed
    /// offset, as on Kafka) rather than each entry. The runner then fills the gaps on a
    /// graceful handover (revoke or shutdown): it also runs the partition's deliveries that
    /// arrived before the latest one it started (see the [module docs](self)), so the prefix
    /// covers every delivery it handled and the next owner runs none of them again. Default
    /// false (entries acknowledged one by one: nothing more runs at a handover).
    fn commits_prefix(&self) -> bool {
        false
    }

    /// Called once, last, after a graceful shutdown flushed every acknowledgement: leave the
    /// group (release leases, deregister). Not called by [`Subscription::abort`].
    async fn close(&self) {}
}

pub(crate) struct Shared<T: Transport> {
    pub(crate) transport: T,
    pub(crate) handler: Arc<dyn Handler>,
    pub(crate) topic: Topic,
    pub(crate) group: Group,
    pub(crate) retry: RetryPolicy,
    pub(crate) handler_timeout: Duration,
    pub(crate) acks: mpsc::UnboundedSender<ack::AckMsg<T::Token>>,
    /// Fired when shutdown starts: stop fetching, stop waiting retries.
    pub(crate) cancel: CancellationToken,
    pub(crate) metrics: Metrics,
}

impl<T: Transport> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish()
    }
}

#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) acked: metrics::Counter,
    pub(crate) retried: metrics::Counter,
    pub(crate) dead: metrics::Counter,
    pub(crate) timed_out: metrics::Counter,
    pub(crate) duration: metrics::Histogram,
}

impl Metrics {
    fn new(topic: &Topic, group: &Group) -> Self {
        let (t, g) = (topic.to_string(), group.to_string());
        let counter = |outcome: &'static str| metrics::counter!("windlass_bus_deliveries_total", "topic" => t.clone(), "group" => g.clone(), "outcome" => outcome);
        Self {
            acked: counter("acked"),
            retried: counter("retried"),
            dead: counter("dead_lettered"),
            timed_out: metrics::counter!("windlass_bus_handler_timeouts_total", "topic" => t.clone(), "group" => g.clone()),
            duration: metrics::histogram!("windlass_bus_handler_seconds", "topic" => t.clone(), "group" => g.clone()),
        }
    }
}

/// Largest batch the runner asks a transport for in one fetch.
const FETCH_BATCH_MAX: usize = 512;

/// A runner to start over a transport: [`Runner::spawn`] gives the [`Subscription`].
pub struct Runner<T: Transport> {
    transport: T,
    topic: Topic,
    group: Group,
    handler: Arc<dyn Handler>,
    options: SubscribeOptions,
    partitions: Option<PartitionEvents<T::Token>>,
    abort: Vec<tokio::task::AbortHandle>,
}

impl<T: Transport> fmt::Debug for Runner<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("partitioned", &self.partitions.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Transport> Runner<T> {
    /// A runner of `handler` over `transport` for one subscription.
    pub fn new(
        transport: T,
        topic: Topic,
        group: Group,
        handler: Arc<dyn Handler>,
        options: SubscribeOptions,
    ) -> Self {
        Self {
            transport,
            topic,
            group,
            handler,
            options,
            partitions: None,
            abort: Vec::new(),
        }
    }

    /// Lets the transport assign and revoke partitions through the [`PartitionControl`] that
    /// goes with `events`.
    pub fn partitioned(mut self, events: PartitionEvents<T::Token>) -> Self {
        self.partitions = Some(events);
        self
    }

    /// Adds a task of the transport (a heartbeat, a poll loop) that
    /// [`Subscription::abort`](crate::Subscription::abort) must kill with the runner's own.
    pub fn abort_with(mut self, handle: tokio::task::AbortHandle) -> Self {
        self.abort.push(handle);
        self
    }

    /// Starts the runner's tasks.
    pub fn spawn(self) -> Subscription {
        let Runner {
            transport,
            topic,
            group,
            handler,
            options,
            partitions,
            mut abort,
        } = self;
        let cancel = CancellationToken::new();
        let concurrency = options.concurrency.max(1);
        let prefetch = options.prefetch.max(concurrency);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let metrics = Metrics::new(&topic, &group);
        let shared = Arc::new(Shared {
            transport,
            handler,
            topic,
            group,
            retry: options.retry,
            handler_timeout: options.handler_timeout.max(Duration::from_millis(1)),
            acks: ack_tx,
            cancel: cancel.clone(),
            metrics,
        });
        let (item_tx, item_rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(prefetch));
        // Fetch again once a quarter of the read-ahead is free, not after every single handler:
        // a drained backlog is then read in batches (few round trips) instead of one by one.
        let refill = (prefetch / 4).clamp(1, FETCH_BATCH_MAX);
        let fetcher = tokio::spawn(dispatch::fetch_loop(shared.clone(), room, refill, item_tx));
        let acks_done = CancellationToken::new();
        let acker = tokio::spawn(ack::ack_loop(shared.clone(), ack_rx, acks_done.clone()));
        abort.push(fetcher.abort_handle());
        abort.push(acker.abort_handle());
        let main = tokio::spawn(dispatch::run(
            shared,
            dispatch::Plumbing {
                items: item_rx,
                control: partitions.map(PartitionEvents::into_receiver),
                concurrency,
                shutdown_timeout: options.shutdown_timeout,
                fetcher,
                acker,
                acks_done,
            },
        ));
        Subscription::new(cancel, main, abort)
    }
}

/// Starts the runner for one subscription over an unpartitioned `transport` (shorthand for
/// [`Runner::new`] + [`Runner::spawn`]).
pub fn spawn<T: Transport>(
    transport: T,
    topic: Topic,
    group: Group,
    handler: Arc<dyn Handler>,
    options: SubscribeOptions,
) -> Subscription {
    Runner::new(transport, topic, group, handler, options).spawn()
}

#[cfg(test)]
mod tests;
