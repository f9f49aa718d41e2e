//! How a partitioned transport tells the runner that a partition was assigned or revoked.

use std::fmt;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::Assignment;
use crate::error::{Error, Result};

/// What a revoke handed back: the deliveries of the partition that never started, for the
/// transport to return to the backend, and how many handlers in flight were cancelled because
/// they outlived the wait.
#[derive(Debug)]
#[non_exhaustive]
pub struct Revoked<T> {
    /// Tokens of the partition's deliveries that were read but never started.
    pub unstarted: Vec<T>,
    /// Handlers of the partition that were still running when the wait ran out (their
    /// cancellation tokens were cancelled and their futures dropped; their entries stay
    /// pending).
    pub aborted: usize,
}

pub(crate) enum Command<T> {
    Assign(Assignment, oneshot::Sender<()>),
    Revoke {
        partition: u32,
        wait: Duration,
        reply: oneshot::Sender<Revoked<T>>,
    },
}

/// The transport's side of [`partition_control`]: cheap to clone, usable from any task.
pub struct PartitionControl<T> {
    tx: mpsc::UnboundedSender<Command<T>>,
}

impl<T> Clone for PartitionControl<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T> fmt::Debug for PartitionControl<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionControl")
            .field("closed", &self.tx.is_closed())
            .finish()
    }
}

/// The runner's side of [`partition_control`], passed to
/// [`Runner::partitioned`](super::Runner::partitioned).
pub struct PartitionEvents<T> {
    rx: mpsc::UnboundedReceiver<Command<T>>,
}

impl<T> fmt::Debug for PartitionEvents<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PartitionEvents")
    }
}

impl<T> PartitionEvents<T> {
    pub(crate) fn into_receiver(self) -> mpsc::UnboundedReceiver<Command<T>> {
        self.rx
    }
}

/// A control channel between a partitioned transport and its runner.
pub fn partition_control<T>() -> (PartitionControl<T>, PartitionEvents<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (PartitionControl { tx }, PartitionEvents { rx })
}

impl<T> PartitionControl<T> {
    /// Tells the runner this member now holds `assignment`: its deliveries may start. Returns
    /// once the runner applied it (fetch the partition only after that).
    /// [`Error::Closed`] once the runner stopped.
    pub async fn assign(&self, assignment: Assignment) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Command::Assign(assignment, reply))
            .map_err(|_| Error::Closed)?;
        done.await.map_err(|_| Error::Closed)
    }

    /// Takes `partition` away: see the [runner docs](super) for what happens. Returns when its
    /// handlers ended (at most `wait`, plus the time aborted ones take to stop) and their
    /// acknowledgements were passed to the transport. [`Error::Closed`] once the runner
    /// stopped (a stopped runner runs nothing).
    pub async fn revoke(&self, partition: u32, wait: Duration) -> Result<Revoked<T>> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(Command::Revoke {
                partition,
                wait,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        done.await.map_err(|_| Error::Closed)
    }

    /// True once the runner stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}
