//! Queue limits in the memory store, with the Postgres store's semantics (see
//! `postgres/limits`): which due jobs a fetch may claim under the queue's [`QueueLimits`]
//! (concurrency and sliding-window rate, whole queue and per partition, round-robin between
//! partitions), and the start log and last-served times that decision reads. Everything runs
//! under the store's one lock, so fetches are serialized like the Postgres advisory lock does.

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Utc};

use super::{Row, State, is_waiting, kind_ok};
use crate::limits::{PartitionBy, QueueLimits};
use crate::model::{JobId, JobRecord, JobState};

/// Limits per queue and what enforcing them remembers.
#[derive(Debug, Default)]
pub(super) struct Limits {
    /// The limits of each limited queue.
    pub(super) by_queue: BTreeMap<String, QueueLimits>,
    /// Starts of rate-limited queues: (when, partition, how many), oldest first.
    starts: HashMap<String, VecDeque<(DateTime<Utc>, String, u32)>>,
    /// When each partition of a queue last had a job claimed.
    served: HashMap<(String, String), DateTime<Utc>>,
    /// Rate-limited queues whose last fetch claimed nothing: when a start leaves the window.
    hint: HashMap<String, DateTime<Utc>>,
}

/// The partition of a job: what [`PartitionBy`] reads, `""` when missing (like Postgres's
/// `coalesce(..., '')`).
pub(super) fn part(by: &PartitionBy, r: &JobRecord) -> String {
    match by {
        PartitionBy::Org => r.org_id.clone().unwrap_or_default(),
        PartitionBy::Kind => r.kind.clone(),
        PartitionBy::Arg(f) => match r.args.get(f) {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        },
    }
}

fn since(now: DateTime<Utc>, period: std::time::Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(period).unwrap_or(chrono::Duration::MAX)
}

/// The ids a fetch of `queue` claims, in claim order: due jobs most urgent first, at most
/// `limit`, within the queue's limits (round-robin between partitions when partitioned).
pub(super) fn select(
    st: &State,
    queue: &str,
    kinds: &[String],
    limit: usize,
    now: DateTime<Utc>,
) -> Vec<JobId> {
    let due = |r: &&Row| {
        r.rec.queue == queue
            && is_waiting(r.rec.state)
            && r.rec.run_at <= now
            && kind_ok(kinds, &r.rec.kind)
    };
    let key = |r: &JobRecord| (r.priority, r.run_at, r.id);
    let Some(l) = st.limits.by_queue.get(queue) else {
        let mut due: Vec<_> = st.jobs.values().filter(due).map(|r| key(&r.rec)).collect();
        due.sort_unstable();
        return due.into_iter().take(limit).map(|k| k.2).collect();
    };
    let of_queue = || st.jobs.values().filter(|r| r.rec.queue == queue);
    let part_of = |r: &JobRecord| l.partition.as_ref().map(|by| part(by, r));
    // Running jobs and starts in the windows, whole queue and per partition.
    let mut running: HashMap<Option<String>, usize> = HashMap::new();
    let mut running_total = 0;
    for r in of_queue().filter(|r| r.rec.state == JobState::Running) {
        running_total += 1;
        *running.entry(part_of(&r.rec)).or_default() += 1;
    }
    let log = st.limits.starts.get(queue);
    let started = |period: std::time::Duration, p: Option<&str>| -> usize {
        let from = since(now, period);
        log.into_iter()
            .flatten()
            .filter(|(at, part, _)| *at > from && p.is_none_or(|p| p == part))
            .map(|(_, _, n)| *n as usize)
            .sum()
    };
    let left = |max: Option<u32>, used: usize| {
        max.map_or(usize::MAX, |m| (m as usize).saturating_sub(used))
    };
    let room = limit.min(left(l.global, running_total)).min(left(
        l.rate.map(|r| r.jobs),
        l.rate.map_or(0, |r| started(r.period, None)),
    ));
    let Some(by) = &l.partition else {
        let mut due: Vec<_> = st.jobs.values().filter(due).map(|r| key(&r.rec)).collect();
        due.sort_unstable();
        return due.into_iter().take(room).map(|k| k.2).collect();
    };
    // Every partition with waiting jobs (of any kind, due or not) counts for the fair share.
    let mut heads: BTreeMap<String, Vec<(i16, DateTime<Utc>, JobId)>> = BTreeMap::new();
    for r in of_queue().filter(|r| is_waiting(r.rec.state)) {
        heads.entry(part(by, &r.rec)).or_default();
    }
    for r in st.jobs.values().filter(due) {
        if let Some(h) = heads.get_mut(&part(by, &r.rec)) {
            h.push(key(&r.rec));
        }
    }
    let share = room.div_ceil(heads.len().max(1));
    let mut cand = Vec::new();
    for (p, mut jobs) in heads {
        let cap = share
            .min(left(
                l.per_partition,
                running.get(&Some(p.clone())).copied().unwrap_or(0),
            ))
            .min(left(
                l.per_partition_rate.map(|r| r.jobs),
                l.per_partition_rate
                    .map_or(0, |r| started(r.period, Some(&p))),
            ));
        jobs.sort_unstable();
        let served = st
            .limits
            .served
            .get(&(queue.to_owned(), p.clone()))
            .copied();
        for (rn, (prio, run_at, id)) in jobs.into_iter().take(cap).enumerate() {
            cand.push((rn, served, prio, run_at, id));
        }
    }
    // Round-robin: each partition's first job, least recently served partition first, then
    // each one's second, and so on.
    cand.sort_unstable();
    cand.into_iter().take(room).map(|c| c.4).collect()
}

/// Records a fetch of a limited queue that claimed `claimed` (the partition of each claimed
/// job; `""` when not partitioned): the start log of rate-limited queues (pruned to the
/// longest period), the partitions' last-served time, and the wake-up hint.
pub(super) fn record(st: &mut State, queue: &str, claimed: &[String], now: DateTime<Utc>) {
    let Some(l) = st.limits.by_queue.get(queue).cloned() else {
        return;
    };
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for p in claimed {
        *counts.entry(p.as_str()).or_default() += 1;
    }
    if l.partition.is_some() {
        for p in counts.keys() {
            st.limits
                .served
                .insert((queue.to_owned(), (*p).to_owned()), now);
        }
    }
    st.limits.hint.remove(queue);
    if !l.has_rate() {
        return;
    }
    let log = st.limits.starts.entry(queue.to_owned()).or_default();
    let horizon = since(now, l.log_horizon());
    while log.front().is_some_and(|(at, _, _)| *at <= horizon) {
        log.pop_front();
    }
    for (p, n) in counts {
        log.push_back((now, p.to_owned(), n));
    }
    if claimed.is_empty() {
        // When the first start in a window leaves it: a slot may open then.
        let expiry = |period: std::time::Duration| {
            log.iter()
                .map(|(at, _, _)| *at)
                .filter(|at| *at > since(now, period))
                .min()
                .map(|at| at + (now - since(now, period))) // at + period
        };
        let next = [l.rate, l.per_partition_rate]
            .into_iter()
            .flatten()
            .filter_map(|r| expiry(r.period))
            .min();
        if let Some(at) = next {
            st.limits.hint.insert(queue.to_owned(), at);
        }
    }
}

/// `due` (the earliest `run_at` waiting) pushed back to when a rate-limited queue whose last
/// fetch claimed nothing may claim again.
pub(super) fn next_due(
    st: &State,
    queue: &str,
    due: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let hint = st.limits.hint.get(queue).copied();
    due.map(|d| hint.map_or(d, |h| d.max(h)))
}

/// Sets (or, when empty, removes) a queue's limits; the global limit alone when `global_only`.
pub(super) fn set(st: &mut State, queue: &str, limits: &QueueLimits, global_only: bool) {
    let mut new = if global_only {
        let mut l = st.limits.by_queue.get(queue).cloned().unwrap_or_default();
        l.global = limits.global;
        l
    } else {
        limits.clone()
    };
    if new.partition.is_none() {
        new.per_partition = None;
        new.per_partition_rate = None;
    }
    st.limits.hint.remove(queue);
    if new.is_empty() {
        st.limits.by_queue.remove(queue);
    } else {
        st.limits.by_queue.insert(queue.to_owned(), new);
    }
}

/// Every limited queue's limits, by name.
pub(super) fn list(st: &State) -> impl Iterator<Item = (String, QueueLimits)> + '_ {
    st.limits
        .by_queue
        .iter()
        .map(|(q, l)| (q.clone(), l.clone()))
}

/// Forgets partitions not served since `cutoff` (pruning).
pub(super) fn prune(st: &mut State, cutoff: DateTime<Utc>) {
    st.limits.served.retain(|_, at| *at >= cutoff);
}
