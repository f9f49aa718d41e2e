//! The group member's client side: one thread that polls the consumer all the time, the
//! rebalance callbacks, pause/resume per partition and the commits.
//!
//! - **Polling never stops.** A dedicated thread calls `poll` in a loop (librdkafka serves the
//!   group protocol and the rebalance callbacks from it); records go into a buffer per
//!   partition ([`Offsets`]). Backpressure is per partition: a partition whose tracked offsets
//!   (read and not yet committed-contiguous) reach the high mark is `pause`d at the client and
//!   `resume`d below the low mark; the other partitions keep flowing.
//! - **Revoke** (the `pre_rebalance` callback, on the poll thread, before librdkafka gives the
//!   partitions up): stop handing the partitions to the runner and drop their buffers, ask the
//!   runner to revoke them ([`PartitionControl::revoke`]: nothing more starts, in-flight
//!   handlers get at most the handler timeout, then their acknowledgements are flushed), then
//!   commit their contiguous offsets synchronously (retried within a bound), and only then
//!   return, so the next owner starts from there.
//! - **Assign**: a new local epoch per partition; the runner learns it before any record of it
//!   is polled, and acknowledgements of an earlier epoch are ignored.
//! - **Commits** are serialised by one lock, send only offsets above what was committed, and
//!   record what the broker confirmed: the committed offset never moves backwards, and a
//!   failed commit stays due (the subscriber's committer retries it, the poll thread's
//!   periodic commit and the revoke commit it too).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{Notify, oneshot, watch};

use crate::error::{Error, Result};
use crate::kafka::codec;
use crate::kafka::offsets::{KafkaToken, Offsets};
use crate::runner::{Assignment, Delivery, PartitionControl};

/// How often the poll thread commits what is due even without new acknowledgements (a commit
/// that failed, a dead-lettered record's offset).
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// Attempts of a commit made on revoke or at the end.
const FINAL_COMMIT_ATTEMPTS: u32 = 4;
/// Longest wait for the runner to take an assignment.
const ASSIGN_WAIT: Duration = Duration::from_secs(5);
/// Most records taken from the client per lock of the shared state (a batch ends early when
/// the client has nothing more at hand). Never more than a quarter of the pause mark: pausing
/// is decided between batches, so a batch is what a partition can overshoot its mark by.
const POLL_BATCH: usize = 256;
/// How long one poll waits while some partition is paused (a resume is noticed this fast).
const PAUSED_POLL: Duration = Duration::from_millis(2);

/// Running, closing (graceful: commit what is due, leave) or aborted (leave without commit).
const RUNNING: u8 = 0;
const CLOSING: u8 = 1;
const ABORTED: u8 = 2;

/// What the poll thread, the rebalance callbacks and the transport share.
pub(crate) struct Core {
    pub(crate) topic: String,
    pub(crate) offsets: Mutex<Offsets>,
    /// Serialises commits (and the removal of revoked partitions after their last commit).
    commit_lock: Mutex<()>,
    /// Notified when records were buffered or room was freed.
    pub(crate) ready: Notify,
    /// Notified when an acknowledgement moved an offset due for commit.
    pub(crate) commit_wanted: Notify,
    control: PartitionControl<KafkaToken>,
    runtime: tokio::runtime::Handle,
    /// How long a revoke waits for the partition's handlers in flight.
    revoke_wait: Duration,
    /// Pause a partition at this many tracked offsets; resume below half of it.
    high_mark: usize,
    state: AtomicU8,
    /// Bumped by every rebalance callback (the poll thread then re-reads the epochs).
    generation: AtomicU64,
    /// Flipped on the first assignment (empty ones included).
    assigned: watch::Sender<bool>,
}

impl Core {
    pub(crate) fn new(
        topic: &str,
        control: PartitionControl<KafkaToken>,
        revoke_wait: Duration,
        high_mark: usize,
    ) -> (Arc<Self>, watch::Receiver<bool>) {
        let (assigned, rx) = watch::channel(false);
        let core = Arc::new(Self {
            topic: topic.to_owned(),
            offsets: Mutex::new(Offsets::default()),
            commit_lock: Mutex::new(()),
            ready: Notify::new(),
            commit_wanted: Notify::new(),
            control,
            runtime: tokio::runtime::Handle::current(),
            revoke_wait,
            high_mark: high_mark.max(2),
            state: AtomicU8::new(RUNNING),
            generation: AtomicU64::new(0),
            assigned,
        });
        (core, rx)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Offsets> {
        self.offsets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Commits every due offset (of `only` these partitions if given), synchronously, under
    /// the commit lock. Returns what was committed.
    pub(crate) fn commit_due<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        only: Option<&[i32]>,
    ) -> Result<Vec<(i32, i64)>> {
        let _serial = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.commit_locked(consumer, only)
    }

    fn commit_locked<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        only: Option<&[i32]>,
    ) -> Result<Vec<(i32, i64)>> {
        let dues = self.lock().dues(only);
        if dues.is_empty() {
            return Ok(dues);
        }
        let mut tpl = TopicPartitionList::with_capacity(dues.len());
        for (p, o) in &dues {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                .map_err(|e| Error::backend("kafka", "commit", e))?;
        }
        consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| Error::backend("kafka", "commit", e))?;
        self.lock().committed(&dues);
        tracing::trace!(topic = %self.topic, ?dues, "offsets committed");
        Ok(dues)
    }

    /// The last commit of partitions leaving this member, retried a few times.
    fn final_commit<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, parts: &[i32]) {
        for attempt in 1..=FINAL_COMMIT_ATTEMPTS {
            match self.commit_locked(consumer, Some(parts)) {
                Ok(_) => return,
                Err(e) if attempt < FINAL_COMMIT_ATTEMPTS => {
                    tracing::warn!(topic = %self.topic, ?parts, error = %e, attempt, "commit of revoked partitions failed; retrying");
                    std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
                }
                Err(e) => {
                    tracing::error!(topic = %self.topic, ?parts, error = %e, "commit of revoked partitions failed; their next owner redelivers what was handled since the last commit");
                }
            }
        }
    }

    fn revoke<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, parts: Vec<i32>) {
        if parts.is_empty() {
            return;
        }
        tracing::debug!(topic = %self.topic, ?parts, "partitions revoked");
        self.lock().begin_revoke(&parts);
        if self.state() == RUNNING {
            // Stop the runner's work on them: nothing more starts; in-flight handlers get the
            // revoke wait, then are cancelled; their acknowledgements reach `ack` before this
            // returns.
            let control = self.control.clone();
            let wait = self.revoke_wait;
            let revokes = parts.iter().map(|p| {
                let control = control.clone();
                let p = *p;
                async move { control.revoke(p.max(0) as u32, wait).await }
            });
            let all = futures::future::join_all(revokes);
            // Bounded even if the runner is wedged: the commit below must still happen before
            // the rebalance timeout.
            let results = self.on_runtime(all, wait + Duration::from_millis(500));
            let aborted: usize = results
                .iter()
                .flatten()
                .filter_map(|r| r.as_ref().ok())
                .map(|r| r.aborted)
                .sum();
            if aborted > 0 {
                tracing::warn!(topic = %self.topic, ?parts, aborted, "handlers outlived the revoke wait and were cancelled; the next owner redelivers their records");
            }
        }
        let _serial = self.commit_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.state() != ABORTED {
            self.final_commit(consumer, &parts);
        }
        self.lock().remove(&parts);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Runs `fut` on the runtime and waits for it on this (non-runtime) thread, at most
    /// `bound`. `None` when it did not finish in time or the runtime is gone. No tokio timer
    /// is involved on this thread, so a runtime shutting down cannot make it panic.
    fn on_runtime<F>(&self, fut: F, bound: Duration) -> Option<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        // Detached: the result comes back through the channel.
        drop(self.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        }));
        rx.recv_timeout(bound).ok()
    }

    fn assign(&self, parts: Vec<i32>) {
        tracing::debug!(topic = %self.topic, ?parts, "partitions assigned");
        for p in parts {
            let epoch = self.lock().assign(p);
            if self.state() == RUNNING {
                let control = self.control.clone();
                let a = Assignment::new(p.max(0) as u32, epoch);
                if self
                    .on_runtime(async move { control.assign(a).await }, ASSIGN_WAIT)
                    .is_none()
                {
                    tracing::warn!(topic = %self.topic, partition = p, "the runner did not take the assignment in time");
                }
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.assigned.send_replace(true);
    }
}

/// The consumer's context: the rebalance callbacks.
pub(crate) struct GroupContext {
    pub(crate) core: Arc<Core>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let ours = |tpl: &TopicPartitionList| -> Vec<i32> {
            tpl.elements()
                .iter()
                .filter(|e| e.topic() == self.core.topic)
                .map(|e| e.partition())
                .collect()
        };
        match rebalance {
            Rebalance::Revoke(tpl) => self.core.revoke(consumer, ours(tpl)),
            Rebalance::Assign(tpl) => self.core.assign(ours(tpl)),
            Rebalance::Error(e) => {
                tracing::warn!(topic = %self.core.topic, error = %e, "rebalance failed")
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // A partition assigned again starts unpaused, whatever the client remembered.
        if let Rebalance::Assign(tpl) = rebalance
            && tpl.count() > 0
        {
            let _ = consumer.resume(tpl);
        }
    }
}

/// The poll thread's handle, held by the transport.
pub(crate) struct PollThread {
    core: Arc<Core>,
    /// The consumer, for the transport's commits (the poll thread holds the only strong
    /// reference, so the consumer is closed on that thread).
    pub(crate) consumer: Weak<BaseConsumer<GroupContext>>,
    done: Mutex<Option<oneshot::Receiver<()>>>,
}

impl PollThread {
    /// Starts polling `consumer` (already subscribed) on a thread of its own.
    pub(crate) fn start(
        core: Arc<Core>,
        consumer: BaseConsumer<GroupContext>,
        poll_wait: Duration,
    ) -> std::io::Result<Self> {
        let consumer = Arc::new(consumer);
        let weak = Arc::downgrade(&consumer);
        let (tx, done) = oneshot::channel();
        let c = core.clone();
        std::thread::Builder::new()
            .name(format!("windlass-kafka-{}", truncate(&core.topic, 20)))
            .spawn(move || {
                poll_loop(&c, &consumer, poll_wait);
                tracing::debug!(topic = %c.topic, "poll loop ended; leaving the group");
                // Leaving the group runs the revoke callback here (a final commit unless
                // aborted), then closes the client.
                drop(consumer);
                let _ = tx.send(());
            })?;
        Ok(Self {
            core,
            consumer: weak,
            done: Mutex::new(Some(done)),
        })
    }

    /// Graceful end: commit what is due, leave the group, wait (bounded) for the thread.
    pub(crate) async fn close(&self, wait: Duration) {
        let _ =
            self.core
                .state
                .compare_exchange(RUNNING, CLOSING, Ordering::AcqRel, Ordering::Acquire);
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(done) = done
            && tokio::time::timeout(wait, done).await.is_err()
        {
            tracing::warn!(topic = %self.core.topic, ?wait, "the Kafka consumer did not close in time; it closes in the background");
        }
    }
}

impl Drop for PollThread {
    fn drop(&mut self) {
        // Not closed gracefully (aborted): leave without committing anything more.
        let _ =
            self.core
                .state
                .compare_exchange(RUNNING, ABORTED, Ordering::AcqRel, Ordering::Acquire);
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn poll_loop(core: &Core, consumer: &BaseConsumer<GroupContext>, poll_wait: Duration) {
    let wait = poll_wait.clamp(Duration::from_millis(1), Duration::from_millis(100));
    let mut last_commit = Instant::now();
    let batch_max = POLL_BATCH.min(core.high_mark / 4).max(1);
    let mut batch: Vec<Delivery<KafkaToken>> = Vec::with_capacity(batch_max);
    let mut seen_generation = u64::MAX;
    let mut epochs: HashMap<i32, u64> = HashMap::new();
    loop {
        match core.state() {
            RUNNING => {}
            CLOSING => {
                if let Err(e) = core.commit_due(consumer, None) {
                    tracing::warn!(topic = %core.topic, error = %e, "final commit failed; what was handled since the last commit is redelivered");
                }
                return;
            }
            _ => return,
        }
        let paused = flow(core, consumer);
        if last_commit.elapsed() >= COMMIT_EVERY {
            last_commit = Instant::now();
            if let Err(e) = core.commit_due(consumer, None) {
                tracing::warn!(topic = %core.topic, error = %e, "periodic commit failed; retrying");
            }
        }
        // Rebalance callbacks run inside `poll`, on this thread; a record is tagged with the
        // epoch its partition held when it was polled (a batch stored after a rebalance has
        // its stale records refused).
        let mut timeout = if paused { PAUSED_POLL.min(wait) } else { wait };
        while batch.len() < batch_max {
            match consumer.poll(timeout) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(topic = %core.topic, error = %e, "kafka consumer error");
                    break;
                }
                Some(Ok(m)) => {
                    let record = detach(&m);
                    drop(m);
                    timeout = Duration::ZERO;
                    let generation = core.generation.load(Ordering::Acquire);
                    if generation != seen_generation {
                        seen_generation = generation;
                        epochs = core
                            .lock()
                            .parts
                            .iter()
                            .map(|(p, part)| (*p, part.epoch))
                            .collect();
                    }
                    let (partition, offset) = (record.partition(), record.offset());
                    let Some(epoch) = epochs.get(&partition).copied() else {
                        continue;
                    };
                    let payload = codec::decode(&record);
                    let token = KafkaToken {
                        partition,
                        epoch,
                        offset,
                        record: Box::new(record),
                    };
                    batch.push(
                        Delivery::new(payload, token, format!("{partition}@{offset}"), 1)
                            .with_assignment(Assignment::new(partition.max(0) as u32, epoch)),
                    );
                }
            }
        }
        if !batch.is_empty() {
            let mut offsets = core.lock();
            for d in batch.drain(..) {
                offsets.fetched(d);
            }
            drop(offsets);
            core.ready.notify_one();
        }
    }
}

/// The record as the runner keeps it (the DLQ writes it as read): key, payload, headers and
/// position. The topic is left out (the transport knows it), which saves a copy per record.
fn detach(m: &BorrowedMessage<'_>) -> OwnedMessage {
    OwnedMessage::new(
        m.payload().map(<[u8]>::to_vec),
        m.key().map(<[u8]>::to_vec),
        String::new(),
        m.timestamp(),
        m.partition(),
        m.offset(),
        m.headers().map(BorrowedHeaders::detach),
    )
}

/// Pauses partitions at the high mark, resumes those below the low mark. True while some
/// partition stays paused.
fn flow(core: &Core, consumer: &BaseConsumer<GroupContext>) -> bool {
    let (pause, resume, paused) = {
        let mut offsets = core.lock();
        let (pause, resume) = offsets.flow(core.high_mark, core.high_mark / 2);
        let paused = offsets.parts.values().any(|p| p.paused);
        (pause, resume, paused)
    };
    let list = |parts: &[i32]| {
        let mut tpl = TopicPartitionList::with_capacity(parts.len());
        for p in parts {
            tpl.add_partition(&core.topic, *p);
        }
        tpl
    };
    if !pause.is_empty() {
        tracing::debug!(topic = %core.topic, partitions = ?pause, "paused: too many records read and not yet committed");
        if let Err(e) = consumer.pause(&list(&pause)) {
            tracing::warn!(topic = %core.topic, error = %e, "pause failed");
        }
    }
    if !resume.is_empty() {
        tracing::debug!(topic = %core.topic, partitions = ?resume, "resumed");
        if let Err(e) = consumer.resume(&list(&resume)) {
            tracing::warn!(topic = %core.topic, error = %e, "resume failed");
        }
    }
    paused
}
