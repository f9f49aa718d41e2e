//! The state of one memory topic: partition logs, consumer groups (cursors, pending entries,
//! leases, members) and the dead-letter queue. Everything behind one mutex.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::event::Event;
use crate::traits::DeadLetter;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) struct TopicLog {
    pub(super) state: Mutex<TopicState>,
    /// Notified when entries are appended.
    pub(super) data: Notify,
    /// Notified when entries are acknowledged (room may be trimmed).
    pub(super) space: Notify,
}

impl TopicLog {
    pub(super) fn new(partitions: u32) -> Self {
        Self {
            state: Mutex::new(TopicState::new(partitions)),
            data: Notify::new(),
            space: Notify::new(),
        }
    }
}

#[derive(Clone)]
pub(super) enum Payload {
    Event(Event),
    Raw(Bytes),
}

impl Payload {
    pub(super) fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::Event(e) => e.to_json_vec(),
            Payload::Raw(b) => b.to_vec(),
        }
    }
}

pub(super) struct Stored {
    pub(super) payload: Payload,
    pub(super) at: SystemTime,
}

#[derive(Default)]
pub(super) struct PartLog {
    pub(super) base: u64,
    pub(super) entries: VecDeque<Stored>,
}

impl PartLog {
    pub(super) fn end(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    pub(super) fn get(&self, seq: u64) -> Option<&Stored> {
        seq.checked_sub(self.base)
            .and_then(|i| self.entries.get(i as usize))
    }
}

pub(super) struct Pending {
    pub(super) consumer: Arc<str>,
    pub(super) count: u32,
}

pub(super) struct Lease {
    pub(super) owner: Option<String>,
    pub(super) epoch: u64,
    pub(super) until: Instant,
}

impl Lease {
    /// The live owner.
    pub(super) fn holder(&self, now: Instant) -> Option<&str> {
        self.owner.as_deref().filter(|_| self.until > now)
    }

    /// True when `member` holds it under `epoch` (expired but not taken over counts: nobody
    /// else can have written in between).
    pub(super) fn fences(&self, member: &str, epoch: u64) -> bool {
        self.owner.as_deref() == Some(member) && self.epoch == epoch
    }
}

pub(super) struct GroupPart {
    pub(super) cursor: u64,
    pub(super) pending: BTreeMap<u64, Pending>,
    pub(super) lease: Lease,
}

pub(super) struct GroupState {
    pub(super) parts: Vec<GroupPart>,
    /// Live members and when their registration expires.
    pub(super) members: BTreeMap<String, Instant>,
    pub(super) changed: watch::Sender<u64>,
}

impl GroupState {
    pub(super) fn new(cursors: impl Iterator<Item = u64>) -> Self {
        let now = Instant::now();
        Self {
            parts: cursors
                .map(|cursor| GroupPart {
                    cursor,
                    pending: BTreeMap::new(),
                    lease: Lease {
                        owner: None,
                        epoch: 0,
                        until: now,
                    },
                })
                .collect(),
            members: BTreeMap::new(),
            changed: watch::channel(0).0,
        }
    }
}

pub(super) struct TopicState {
    pub(super) parts: Vec<PartLog>,
    pub(super) groups: HashMap<String, GroupState>,
    /// Dead letters by sequence number (their id is `{partition}/{seq}`).
    pub(super) dlq: BTreeMap<u64, DeadLetter>,
    pub(super) dlq_seq: u64,
}

impl TopicState {
    fn new(partitions: u32) -> Self {
        Self {
            parts: (0..partitions).map(|_| PartLog::default()).collect(),
            groups: HashMap::new(),
            dlq: BTreeMap::new(),
            dlq_seq: 0,
        }
    }

    pub(super) fn partitions(&self) -> u32 {
        self.parts.len() as u32
    }

    pub(super) fn len(&self) -> usize {
        self.parts.iter().map(|p| p.entries.len()).sum()
    }

    /// Drops entries every group has acknowledged.
    pub(super) fn trim(&mut self) {
        if self.groups.is_empty() {
            // No group yet: keep everything (a first subscriber starting at the earliest entry
            // must find it).
            return;
        }
        for (p, log) in self.parts.iter_mut().enumerate() {
            let keep_from = self
                .groups
                .values()
                .map(|g| {
                    let gp = &g.parts[p];
                    gp.pending
                        .keys()
                        .next()
                        .copied()
                        .unwrap_or(gp.cursor)
                        .min(gp.cursor)
                })
                .min()
                .unwrap_or(0);
            while log.base < keep_from && !log.entries.is_empty() {
                log.entries.pop_front();
                log.base += 1;
            }
        }
    }
}
