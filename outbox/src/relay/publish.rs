//! Publishing one claim: which rows went out, which failed and how, which wait.
//!
//! Rows go per topic with `publish_batch`; a failed batch (of which a prefix may have gone out)
//! is retried one row at a time in `seq` order so a bad key does not hold the others back:
//! - a transient failure (bus unreachable, timeout) backs the key off without making anything
//!   dead, and the key's later rows wait; after [`BUS_DOWN_AFTER`] transient failures in a row
//!   the bus is taken as down and the heads of the remaining keys back off *untried* (their
//!   attempts are not charged);
//! - a permanent failure (the bus rejects the event) makes the row dead; under
//!   [`DeadPolicy::Block`] the key's later rows wait for an operator, under
//!   [`DeadPolicy::Skip`] they go on.
//!
//! No publish starts with less than the lease margin left: what remains is released untried.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;
use windlass_core::{RetryPolicy, Topic};
use windlass_eventbus::{Event, Publisher};

use crate::config::DeadPolicy;
use crate::store::{Claim, ClaimedRow, Failure, Settlement};

/// Transient failures in a row after which the bus is taken as down for the rest of a claim.
pub(crate) const BUS_DOWN_AFTER: usize = 3;

pub(crate) struct Publishing<'a, P: ?Sized> {
    pub(crate) destination: &'a str,
    pub(crate) publisher: &'a P,
    pub(crate) publish_timeout: Duration,
    pub(crate) margin: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) policy: DeadPolicy,
}

struct PublishError {
    permanent: bool,
    message: String,
}

/// A row decoded for sending.
struct Ready<'r> {
    row: &'r ClaimedRow,
    event: Event,
    /// The row's `windlass.outbox.publish` span, open while the claim is published.
    #[cfg(feature = "otel")]
    _span: tracing::Span,
}

fn key_of(row: &ClaimedRow) -> Option<(&str, &str)> {
    row.partition_key
        .as_deref()
        .map(|k| (row.topic.as_str(), k))
}

impl<P: Publisher + ?Sized> Publishing<'_, P> {
    pub(crate) async fn run(&self, claim: &Claim) -> Settlement {
        let deadline = claim.lease_deadline();
        let mut out = Settlement::default();
        // Keys that stop for this claim (a failed or dead head under block); their later rows
        // are released.
        let mut stopped: HashSet<(String, String)> = HashSet::new();
        let mut order: Vec<&str> = Vec::new();
        let mut by_topic: HashMap<&str, Vec<Ready<'_>>> = HashMap::new();
        for row in &claim.rows {
            if let Some((t, k)) = key_of(row)
                && stopped.contains(&(t.to_owned(), k.to_owned()))
            {
                out.released.push(row.seq);
                continue;
            }
            let decoded = Topic::new(row.topic.as_str())
                .map_err(|e| format!("invalid topic: {e}"))
                .and_then(|_| {
                    Event::from_json_str(&row.event)
                        .map_err(|e| format!("stored event does not decode: {e}"))
                });
            match decoded {
                Ok(event) => {
                    #[cfg(feature = "otel")]
                    let (_span, event) =
                        crate::otel::publish_span(self.destination, &row.topic, row.seq, event);
                    by_topic
                        .entry(row.topic.as_str())
                        .or_insert_with(|| {
                            order.push(row.topic.as_str());
                            Vec::new()
                        })
                        .push(Ready {
                            row,
                            event,
                            #[cfg(feature = "otel")]
                            _span,
                        })
                }
                Err(error) => {
                    out.failed.push(self.dead(row, error));
                    if self.policy.blocks()
                        && let Some((t, k)) = key_of(row)
                    {
                        stopped.insert((t.to_owned(), k.to_owned()));
                    }
                }
            }
        }
        // A key stopped by an undecodable row may have rows decoded before the stop was known
        // only if they came earlier in seq order, which is fine: they are older.
        let mut bus_down: Option<(String, Duration)> = None;
        for name in order {
            let group = &by_topic[name];
            let topic = Topic::new(name).expect("checked above");
            let group: Vec<&Ready<'_>> = group
                .iter()
                .filter(|r| {
                    key_of(r.row)
                        .is_none_or(|(t, k)| !stopped.contains(&(t.to_owned(), k.to_owned())))
                })
                .collect();
            if group.is_empty() {
                continue;
            }
            if bus_down.is_none() {
                let Some(timeout) = self.time_left(deadline) else {
                    out.released.extend(group.iter().map(|r| r.row.seq));
                    continue;
                };
                let events: Vec<Event> = group.iter().map(|r| r.event.clone()).collect();
                if self
                    .timed(timeout, self.publisher.publish_batch(&topic, &events))
                    .await
                    .is_ok()
                {
                    out.published.extend(group.iter().map(|r| r.row.seq));
                    continue;
                }
            }
            self.one_by_one(
                &topic,
                &group,
                deadline,
                &mut stopped,
                &mut bus_down,
                &mut out,
            )
            .await;
        }
        out
    }

    /// After a failed batch (a prefix may have gone out: it goes again, in order).
    async fn one_by_one(
        &self,
        topic: &Topic,
        group: &[&Ready<'_>],
        deadline: Instant,
        stopped: &mut HashSet<(String, String)>,
        bus_down: &mut Option<(String, Duration)>,
        out: &mut Settlement,
    ) {
        let mut transient_in_a_row = 0;
        // Keys (of this topic) whose first row in the claim was handled: later rows are not
        // heads.
        let mut seen: HashSet<&str> = HashSet::new();
        for r in group {
            let row = r.row;
            let key = row.partition_key.as_deref();
            let is_head = key.is_none_or(|k| seen.insert(k));
            if key.is_some_and(|k| stopped.contains(&(row.topic.clone(), k.to_owned()))) {
                out.released.push(row.seq);
                continue;
            }
            if let Some((error, retry_in)) = bus_down.as_ref() {
                if is_head {
                    out.failed.push(Failure {
                        seq: row.seq,
                        error: format!("not tried: the bus looked down ({error})"),
                        retry_in: *retry_in,
                        tried: false,
                        dead: false,
                    });
                } else {
                    out.released.push(row.seq);
                }
                if let Some(k) = key {
                    stopped.insert((row.topic.clone(), k.to_owned()));
                }
                continue;
            }
            let Some(timeout) = self.time_left(deadline) else {
                out.released.push(row.seq);
                continue;
            };
            match self
                .timed(timeout, self.publisher.publish(topic, &r.event))
                .await
            {
                Ok(()) => {
                    transient_in_a_row = 0;
                    out.published.push(row.seq);
                }
                Err(e) if e.permanent => {
                    transient_in_a_row = 0;
                    out.failed.push(self.dead(row, e.message));
                    if self.policy.blocks()
                        && let Some(k) = key
                    {
                        stopped.insert((row.topic.clone(), k.to_owned()));
                    }
                }
                Err(e) => {
                    crate::metrics::failure(self.destination, &row.topic, false);
                    let retry_in = self.retry.delay(row.attempts.saturating_add(1));
                    tracing::debug!(seq = row.seq, topic = %row.topic, error = %e.message, ?retry_in, "outbox publish failed; the key backs off");
                    out.failed.push(Failure {
                        seq: row.seq,
                        error: e.message.clone(),
                        retry_in,
                        tried: true,
                        dead: false,
                    });
                    if let Some(k) = key {
                        stopped.insert((row.topic.clone(), k.to_owned()));
                    }
                    transient_in_a_row += 1;
                    if transient_in_a_row >= BUS_DOWN_AFTER {
                        *bus_down = Some((e.message, retry_in));
                    }
                }
            }
        }
    }

    /// Time a publish may take now, or `None` when too little of the lease is left.
    fn time_left(&self, deadline: Instant) -> Option<Duration> {
        let left = deadline.checked_duration_since(Instant::now())?;
        let left = left.checked_sub(self.margin)?;
        (left >= Duration::from_millis(1)).then(|| left.min(self.publish_timeout))
    }

    async fn timed(
        &self,
        timeout: Duration,
        fut: impl std::future::Future<Output = windlass_eventbus::Result<()>>,
    ) -> Result<(), PublishError> {
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PublishError {
                permanent: is_permanent(&e),
                message: error_chain(&e),
            }),
            Err(_) => Err(PublishError {
                permanent: false,
                message: format!("publish timed out after {timeout:?}"),
            }),
        }
    }

    fn dead(&self, row: &ClaimedRow, error: String) -> Failure {
        tracing::warn!(seq = row.seq, topic = %row.topic, destination = self.destination, %error, "outbox event is dead");
        crate::metrics::failure(self.destination, &row.topic, true);
        crate::metrics::dead(self.destination, &row.topic);
        Failure {
            seq: row.seq,
            error,
            retry_in: Duration::ZERO,
            tried: true,
            dead: true,
        }
    }
}

/// Errors the bus will give again for the same event: retrying cannot help.
pub(crate) fn is_permanent(e: &windlass_eventbus::Error) -> bool {
    use windlass_eventbus::Error as E;
    matches!(
        e,
        E::Event(_) | E::Name(_) | E::TooLarge { .. } | E::Config(_)
    )
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}
