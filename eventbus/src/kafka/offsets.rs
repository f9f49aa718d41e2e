//! What a member knows about each partition it holds: records read and not yet handed to the
//! runner, which fetched offsets are acknowledged, what is due for commit and what was
//! committed. Pure bookkeeping (no client calls), shared by the poll thread, the transport and
//! the rebalance callbacks under one mutex.
//!
//! Invariants:
//! - the offset due for commit is one past the highest *contiguous* acknowledged offset, so a
//!   crash redelivers what was fetched and not yet contiguous, and never skips anything;
//! - the committed offset of a partition only moves forward: a commit sends only dues above
//!   it, and commits are serialised by the commit lock;
//! - the tracked offsets of a partition are bounded: the poll thread pauses a partition whose
//!   tracked count reaches the high mark and resumes it below the low mark;
//! - an acknowledgement counts only for the assignment (epoch) it was read under.

use std::collections::{BTreeMap, VecDeque};

use rdkafka::message::OwnedMessage;

use crate::runner::Delivery;

/// What the runner holds per delivery: the record's position and assignment epoch, and the
/// record itself (the DLQ copies it as it was read).
#[derive(Debug)]
pub(crate) struct KafkaToken {
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    pub(crate) offset: i64,
    pub(crate) record: Box<OwnedMessage>,
}

/// One held partition.
#[derive(Debug)]
pub(crate) struct Part {
    /// Local assignment counter: a partition assigned again gets a higher one.
    pub(crate) epoch: u64,
    /// Read by the poll thread, not yet handed to the runner.
    pub(crate) buffer: VecDeque<Delivery<KafkaToken>>,
    /// Fetched offsets not yet part of the committed-contiguous prefix; `true` once
    /// acknowledged (or dead-lettered).
    pub(crate) tracked: BTreeMap<i64, bool>,
    /// The offset to commit next (one past the highest contiguous acknowledged offset).
    pub(crate) due: Option<i64>,
    /// The last offset the broker confirmed committed by this member in this assignment.
    pub(crate) committed: Option<i64>,
    /// Handed to the runner and not yet acknowledged, dead-lettered or handed back.
    pub(crate) outstanding: usize,
    /// Paused at the client because `tracked` reached the high mark.
    pub(crate) paused: bool,
    /// Being revoked: nothing more is handed to the runner.
    pub(crate) revoking: bool,
}

impl Part {
    fn new(epoch: u64) -> Self {
        Self {
            epoch,
            buffer: VecDeque::new(),
            tracked: BTreeMap::new(),
            due: None,
            committed: None,
            outstanding: 0,
            paused: false,
            revoking: false,
        }
    }

    /// An offset is due for commit beyond what was committed.
    pub(crate) fn commit_due(&self) -> Option<i64> {
        match (self.due, self.committed) {
            (Some(d), Some(c)) if d <= c => None,
            (d, _) => d,
        }
    }
}

/// Every partition this member holds, for one topic.
#[derive(Debug, Default)]
pub(crate) struct Offsets {
    pub(crate) parts: BTreeMap<i32, Part>,
    next_epoch: u64,
    /// Where the next fetch starts its round over the partitions.
    rotate: usize,
}

impl Offsets {
    /// Starts holding `partition` under a new epoch (any earlier state of it is dropped).
    pub(crate) fn assign(&mut self, partition: i32) -> u64 {
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        self.parts.insert(partition, Part::new(epoch));
        epoch
    }

    /// A record read from `partition` under `epoch`: tracked and buffered. False (and
    /// nothing changes) when the partition is not held under that epoch or is being revoked.
    pub(crate) fn fetched(&mut self, delivery: Delivery<KafkaToken>) -> bool {
        let t = &delivery.token;
        let Some(part) = self.parts.get_mut(&t.partition) else {
            return false;
        };
        if part.epoch != t.epoch || part.revoking {
            return false;
        }
        part.tracked.insert(t.offset, false);
        part.buffer.push_back(delivery);
        true
    }

    /// Takes up to `max` buffered deliveries for the runner, round-robin over the partitions,
    /// with at most `cap` outstanding per partition (a partition stuck behind a slow key cannot
    /// fill the runner's read-ahead and starve the others).
    pub(crate) fn take(&mut self, max: usize, cap: usize) -> Vec<Delivery<KafkaToken>> {
        let mut out = Vec::new();
        let n = self.parts.len();
        if n == 0 || max == 0 {
            return out;
        }
        let start = self.rotate % n;
        self.rotate = self.rotate.wrapping_add(1);
        let keys: Vec<i32> = self.parts.keys().copied().collect();
        // Fair share first, then whatever room is left.
        let share = max.div_ceil(n).max(1);
        for pass in 0..2 {
            for i in 0..n {
                if out.len() >= max {
                    return out;
                }
                let part = self
                    .parts
                    .get_mut(&keys[(start + i) % n])
                    .expect("a key of the map");
                if part.revoking {
                    continue;
                }
                let room = cap.saturating_sub(part.outstanding);
                let limit = if pass == 0 { share } else { max };
                let k = room.min(limit).min(max - out.len()).min(part.buffer.len());
                out.extend(part.buffer.drain(..k));
                part.outstanding += k;
            }
        }
        out
    }

    /// Marks deliveries acknowledged (or dead-lettered); returns true when some partition
    /// has a new offset due for commit.
    pub(crate) fn acked<'a>(&mut self, tokens: impl Iterator<Item = &'a KafkaToken>) -> bool {
        let mut touched: Vec<i32> = Vec::new();
        for t in tokens {
            let Some(part) = self.parts.get_mut(&t.partition) else {
                continue;
            };
            if part.epoch != t.epoch {
                continue;
            }
            if let Some(done) = part.tracked.get_mut(&t.offset) {
                *done = true;
                part.outstanding = part.outstanding.saturating_sub(1);
                if !touched.contains(&t.partition) {
                    touched.push(t.partition);
                }
            }
        }
        let mut moved = false;
        for p in touched {
            let part = self.parts.get_mut(&p).expect("touched partitions are held");
            while let Some(entry) = part.tracked.first_entry() {
                if !*entry.get() {
                    break;
                }
                let next = *entry.key() + 1;
                entry.remove();
                if part.due.is_none_or(|d| next > d) {
                    part.due = Some(next);
                    moved = true;
                }
            }
        }
        moved
    }

    /// Deliveries handed back unstarted: no longer outstanding (still tracked, so the commit
    /// stops before them).
    pub(crate) fn released<'a>(&mut self, tokens: impl Iterator<Item = &'a KafkaToken>) {
        for t in tokens {
            if let Some(part) = self.parts.get_mut(&t.partition)
                && part.epoch == t.epoch
                && part.tracked.get(&t.offset) == Some(&false)
            {
                part.outstanding = part.outstanding.saturating_sub(1);
            }
        }
    }

    /// The offsets due for commit (partition, offset), of `only` these partitions if given.
    pub(crate) fn dues(&self, only: Option<&[i32]>) -> Vec<(i32, i64)> {
        self.parts
            .iter()
            .filter(|(p, _)| only.is_none_or(|o| o.contains(p)))
            .filter_map(|(p, part)| part.commit_due().map(|d| (*p, d)))
            .collect()
    }

    /// Records a commit the broker confirmed (never moving backwards).
    pub(crate) fn committed(&mut self, commits: &[(i32, i64)]) {
        for (p, o) in commits {
            if let Some(part) = self.parts.get_mut(p)
                && part.committed.is_none_or(|c| *o > c)
            {
                part.committed = Some(*o);
            }
        }
    }

    /// Starts revoking `partitions`: nothing more is handed out; the buffered deliveries are
    /// dropped (they were never started; the next owner reads them from the committed offset).
    pub(crate) fn begin_revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            if let Some(part) = self.parts.get_mut(p) {
                part.revoking = true;
                part.buffer.clear();
            }
        }
    }

    /// Stops holding `partitions`.
    pub(crate) fn remove(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.parts.remove(p);
        }
    }

    /// Partitions to pause (tracked count at `high` or more) and to resume (below `low`),
    /// with their flags updated as if done.
    pub(crate) fn flow(&mut self, high: usize, low: usize) -> (Vec<i32>, Vec<i32>) {
        let (mut pause, mut resume) = (Vec::new(), Vec::new());
        for (p, part) in self.parts.iter_mut() {
            if part.revoking {
                continue;
            }
            let n = part.tracked.len();
            if !part.paused && n >= high {
                part.paused = true;
                pause.push(*p);
            } else if part.paused && n < low {
                part.paused = false;
                resume.push(*p);
            }
        }
        (pause, resume)
    }

    /// The largest number of offsets tracked for one partition.
    #[cfg(test)]
    pub(crate) fn max_tracked(&self) -> usize {
        self.parts
            .values()
            .map(|p| p.tracked.len())
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{OwnedMessage, Timestamp};

    use super::*;

    fn token(partition: i32, epoch: u64, offset: i64) -> KafkaToken {
        KafkaToken {
            partition,
            epoch,
            offset,
            record: Box::new(OwnedMessage::new(
                None,
                None,
                "t".to_owned(),
                Timestamp::NotAvailable,
                partition,
                offset,
                None,
            )),
        }
    }

    fn delivery(partition: i32, epoch: u64, offset: i64) -> Delivery<KafkaToken> {
        Delivery::new(
            Err(crate::runner::Undecodable::new(Vec::new(), "test")),
            token(partition, epoch, offset),
            format!("{partition}@{offset}"),
            1,
        )
    }

    #[test]
    fn commits_only_the_contiguous_prefix_and_never_backwards() {
        let mut o = Offsets::default();
        let e0 = o.assign(0);
        let e1 = o.assign(1);
        for off in 10..15 {
            assert!(o.fetched(delivery(0, e0, off)));
        }
        assert!(o.fetched(delivery(1, e1, 3)));
        assert_eq!(o.take(100, 100).len(), 6);
        assert!(!o.acked([token(0, e0, 12), token(0, e0, 11)].iter()));
        assert_eq!(o.dues(None), vec![]);
        assert!(o.acked([token(0, e0, 10)].iter()));
        assert_eq!(o.dues(None), vec![(0, 13)]);
        assert!(o.acked([token(0, e0, 14), token(1, e1, 3)].iter()));
        assert_eq!(o.dues(None), vec![(0, 13), (1, 4)]);
        o.committed(&[(0, 13), (1, 4)]);
        assert_eq!(o.dues(None), vec![]);
        // A late confirmation of an older commit does not move the committed offset back.
        o.committed(&[(0, 11)]);
        assert_eq!(o.parts[&0].committed, Some(13));
        // Acknowledging the same token again (a retried ack) changes nothing, but what is due
        // stays due until a commit is confirmed: a retry really commits.
        assert!(o.acked([token(0, e0, 13)].iter()));
        assert!(!o.acked([token(0, e0, 13)].iter()));
        assert_eq!(o.dues(None), vec![(0, 15)]);
        assert_eq!(o.dues(None), vec![(0, 15)]);
    }

    #[test]
    fn acknowledgements_of_an_earlier_assignment_are_ignored() {
        let mut o = Offsets::default();
        let old = o.assign(2);
        assert!(o.fetched(delivery(2, old, 0)));
        o.begin_revoke(&[2]);
        assert!(
            !o.fetched(delivery(2, old, 1)),
            "a revoking partition buffers nothing"
        );
        o.remove(&[2]);
        let new = o.assign(2);
        assert!(new > old);
        assert!(o.fetched(delivery(2, new, 0)));
        assert!(!o.acked([token(2, old, 0)].iter()));
        assert_eq!(o.dues(None), vec![]);
        assert!(!o.fetched(delivery(2, old, 1)), "a stale epoch is refused");
    }

    #[test]
    fn take_is_fair_and_capped_per_partition() {
        let mut o = Offsets::default();
        let e0 = o.assign(0);
        let e1 = o.assign(1);
        for off in 0..100 {
            o.fetched(delivery(0, e0, off));
        }
        for off in 0..3 {
            o.fetched(delivery(1, e1, off));
        }
        let got = o.take(10, 8);
        let from1 = got.iter().filter(|d| d.token.partition == 1).count();
        assert_eq!(from1, 3, "the small partition is not starved");
        assert_eq!(got.len(), 10);
        // Partition 0 is at its cap of outstanding deliveries: nothing more until acks.
        let more = o.take(10, 8);
        assert!(more.iter().all(|d| d.token.partition == 0));
        assert_eq!(o.parts[&0].outstanding, 8);
        assert!(o.take(10, 8).is_empty());
        let first = more.into_iter().next().unwrap();
        o.released(std::iter::once(&first.token));
        assert_eq!(o.take(10, 8).len(), 1);
    }

    #[test]
    fn flow_pauses_at_the_high_mark_and_resumes_below_the_low_mark() {
        let mut o = Offsets::default();
        let e = o.assign(0);
        for off in 0..10 {
            o.fetched(delivery(0, e, off));
        }
        assert_eq!(o.flow(10, 5), (vec![0], vec![]));
        assert_eq!(o.flow(10, 5), (vec![], vec![]));
        let taken = o.take(100, 100);
        o.acked(taken.iter().take(4).map(|d| &d.token));
        assert_eq!(o.flow(10, 5), (vec![], vec![]), "6 tracked: still paused");
        o.acked(taken.iter().skip(4).take(2).map(|d| &d.token));
        assert_eq!(o.flow(10, 5), (vec![], vec![0]));
        assert_eq!(o.max_tracked(), 4);
    }
}
