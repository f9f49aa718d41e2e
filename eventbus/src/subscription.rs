//! The handle of a running subscription.

use std::fmt;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// A running subscription. [`Subscription::shutdown`] stops it gracefully; dropping the handle
/// also asks it to stop (gracefully, in the background).
pub struct Subscription {
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<()>>>,
    abort: Vec<tokio::task::AbortHandle>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("running", &self.is_running())
            .finish()
    }
}

impl Subscription {
    /// Wraps a runner task. `abort` lists every task to kill on [`Subscription::abort`].
    pub fn new(
        cancel: CancellationToken,
        task: JoinHandle<Result<()>>,
        abort: Vec<tokio::task::AbortHandle>,
    ) -> Self {
        Self {
            cancel,
            task: Some(task),
            abort,
        }
    }

    /// True until the subscription stopped.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops reading, lets in-flight handlers finish (up to the subscription's
    /// `shutdown_timeout`), acknowledges what they finished, and returns. Events read but not
    /// started stay unacknowledged: the backend delivers them again (to this consumer name on
    /// restart, or to another member once they are idle past the claim timeout).
    pub async fn shutdown(mut self) -> Result<()> {
        self.cancel.cancel();
        self.join().await
    }

    /// Waits until the subscription stops by itself (a fatal error) or is shut down elsewhere.
    pub async fn join(&mut self) -> Result<()> {
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Err(Error::Closed)),
            None => Ok(()),
        }
    }

    /// Stops with a deadline: like [`Subscription::shutdown`], then aborts whatever is left.
    pub async fn shutdown_within(mut self, deadline: Duration) -> Result<()> {
        self.cancel.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        let abort = task.abort_handle();
        match tokio::time::timeout(deadline, task).await {
            Ok(res) => res.unwrap_or(Err(Error::Closed)),
            Err(_) => {
                abort.abort();
                for a in &self.abort {
                    a.abort();
                }
                Err(Error::Timeout("subscription shutdown"))
            }
        }
    }

    /// Kills the subscription at once, like a crash: nothing in flight is acknowledged, so the
    /// backend redelivers it. Meant for tests and emergencies.
    pub fn abort(mut self) {
        for a in &self.abort {
            a.abort();
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.cancel.cancel();
        }
    }
}
