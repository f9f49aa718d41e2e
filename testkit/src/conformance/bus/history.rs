//! A recorded history of handler calls, and the checker of the bus's central promise: for each
//! ordering key, handler calls never overlap and follow publish order, across every member of
//! a group.
//!
//! Steps are recorded in one total order (a mutex in process, a Redis list across processes):
//! `Start` when a handler begins, `End` when it returns or its future is dropped, and `Gone`
//! when a member process was killed (its open calls end there). A call of a key that starts
//! while another call of the same key is open is an overlap, whichever members they ran on.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use windlass_eventbus::{DeliveryContext, Event, Handler, HandlerError, handler_fn};

/// One step of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A handler call of `key`/`seq` began on `member`.
    Start {
        /// The ordering key.
        key: String,
        /// The event's sequence number within its key.
        seq: usize,
        /// The member (process or subscription) it ran on.
        member: String,
    },
    /// That call ended (returned, or its future was dropped).
    End {
        /// The ordering key.
        key: String,
        /// The sequence number.
        seq: usize,
        /// The member.
        member: String,
    },
    /// Every call still open on `member` ended (the process was killed).
    Gone {
        /// The member.
        member: String,
    },
}

impl Step {
    /// `start|key|seq|member`, `end|key|seq|member` or `gone|member`, as member processes
    /// record them in Redis.
    pub fn parse(line: &str) -> Option<Step> {
        let mut parts = line.split('|');
        match parts.next()? {
            "start" | "end" => {
                let start = line.starts_with("start");
                let key = parts.next()?.to_owned();
                let seq = parts.next()?.parse().ok()?;
                let member = parts.next()?.to_owned();
                Some(if start {
                    Step::Start { key, seq, member }
                } else {
                    Step::End { key, seq, member }
                })
            }
            "gone" => Some(Step::Gone {
                member: parts.next()?.to_owned(),
            }),
            _ => None,
        }
    }

    /// The line form of [`Step::parse`].
    pub fn line(&self) -> String {
        match self {
            Step::Start { key, seq, member } => format!("start|{key}|{seq}|{member}"),
            Step::End { key, seq, member } => format!("end|{key}|{seq}|{member}"),
            Step::Gone { member } => format!("gone|{member}"),
        }
    }
}

/// What a history shows, per key.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Calls per key, in start order: (seq, member).
    pub calls: BTreeMap<String, Vec<(usize, String)>>,
    /// Violations found (overlaps, out-of-order or skipped sequence numbers).
    pub violations: Vec<String>,
}

impl Verdict {
    /// Calls of an event seen more than once (redeliveries).
    pub fn duplicates(&self) -> usize {
        self.calls
            .values()
            .map(|calls| {
                let mut seen = std::collections::HashSet::new();
                calls.iter().filter(|(s, _)| !seen.insert(*s)).count()
            })
            .sum()
    }

    /// Members that handled something.
    pub fn members(&self) -> std::collections::BTreeSet<String> {
        self.calls
            .values()
            .flatten()
            .map(|(_, m)| m.clone())
            .collect()
    }
}

/// Checks a history against `expected` sequence counts per key.
///
/// - No overlap: a call of a key never starts while another call of that key is open.
/// - Publish order: a call's sequence number is at most one past the highest seen before for
///   its key (a redelivery re-runs a suffix; nothing is ever skipped), and every sequence
///   number up to the expected count was handled.
/// - With `strict`, additionally no event ran twice (graceful joins and leaves).
pub fn check(steps: &[Step], expected: &HashMap<String, usize>, strict: bool) -> Verdict {
    let mut verdict = Verdict::default();
    let mut open: HashMap<String, (usize, String)> = HashMap::new();
    let mut highest: HashMap<String, usize> = HashMap::new();
    for step in steps {
        match step {
            Step::Start { key, seq, member } => {
                if let Some((other, on)) = open.get(key) {
                    verdict.violations.push(format!(
                        "overlap: {key}#{seq} started on {member} while {key}#{other} ran on {on}"
                    ));
                }
                let next = highest.get(key).map_or(0, |h| h + 1);
                if *seq > next {
                    verdict.violations.push(format!(
                        "out of order: {key}#{seq} ran on {member} before {key}#{next}"
                    ));
                }
                highest
                    .entry(key.clone())
                    .and_modify(|h| *h = (*h).max(*seq))
                    .or_insert(*seq);
                open.insert(key.clone(), (*seq, member.clone()));
                verdict
                    .calls
                    .entry(key.clone())
                    .or_default()
                    .push((*seq, member.clone()));
            }
            Step::End { key, seq, member } => {
                if open.get(key).is_some_and(|(s, m)| s == seq && m == member) {
                    open.remove(key);
                }
            }
            Step::Gone { member } => open.retain(|_, (_, m)| m != member),
        }
    }
    for (key, n) in expected {
        let calls = verdict.calls.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let mut seen: Vec<usize> = calls.iter().map(|(s, _)| *s).collect();
        seen.sort_unstable();
        seen.dedup();
        if seen != (0..*n).collect::<Vec<_>>() {
            verdict.violations.push(format!(
                "{key}: handled {} distinct events of {n} ({:?}...)",
                seen.len(),
                &seen[..seen.len().min(10)]
            ));
        }
        if strict && calls.len() != *n {
            verdict.violations.push(format!(
                "{key}: {} calls for {n} events (an event ran twice)",
                calls.len()
            ));
        }
    }
    verdict
}

/// A history recorded in this process.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<Vec<Step>>>);

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("steps", &self.0.lock().unwrap().len())
            .finish()
    }
}

/// Ends the call when dropped: on return, and when the runner drops the handler (deadline,
/// revoke, abort).
struct EndOnDrop {
    history: History,
    step: Option<Step>,
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if let Some(step) = self.step.take() {
            self.history.push(step);
        }
    }
}

impl History {
    /// Appends a step.
    pub fn push(&self, step: Step) {
        self.0.lock().unwrap().push(step);
    }

    /// The steps so far.
    pub fn steps(&self) -> Vec<Step> {
        self.0.lock().unwrap().clone()
    }

    /// Calls started so far.
    pub fn started(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| matches!(s, Step::Start { .. }))
            .count()
    }

    /// Distinct (key, seq) handled so far.
    pub fn distinct(&self) -> usize {
        let steps = self.0.lock().unwrap();
        let set: std::collections::HashSet<(&str, usize)> = steps
            .iter()
            .filter_map(|s| match s {
                Step::End { key, seq, .. } => Some((key.as_str(), *seq)),
                _ => None,
            })
            .collect();
        set.len()
    }

    /// A handler recording its calls as `member`, taking `latency(seq)` per call. Events carry
    /// their key as `partitionkey` and their sequence number as data ([`keyed`](super::keyed)).
    pub fn handler(
        &self,
        member: &str,
        latency: impl Fn(usize) -> Duration + Send + Sync + 'static,
    ) -> Arc<dyn Handler> {
        let history = self.clone();
        let member = member.to_owned();
        let latency = Arc::new(latency);
        Arc::new(handler_fn(move |event: Event, _ctx: DeliveryContext| {
            let (history, member, latency) = (history.clone(), member.clone(), latency.clone());
            async move {
                let key = event.partition_key().unwrap_or_default().to_owned();
                let seq: usize = event
                    .data_as()
                    .map_err(HandlerError::reject)?
                    .unwrap_or_default();
                history.push(Step::Start {
                    key: key.clone(),
                    seq,
                    member: member.clone(),
                });
                let _end = EndOnDrop {
                    history: history.clone(),
                    step: Some(Step::End { key, seq, member }),
                };
                let pause = latency(seq);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                Ok(())
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(k: &str, s: usize, m: &str) -> Step {
        Step::Start {
            key: k.into(),
            seq: s,
            member: m.into(),
        }
    }
    fn end(k: &str, s: usize, m: &str) -> Step {
        Step::End {
            key: k.into(),
            seq: s,
            member: m.into(),
        }
    }

    #[test]
    fn the_checker_catches_overlap_disorder_gaps_and_duplicates() {
        let expected: HashMap<String, usize> = [("k".to_owned(), 2)].into();
        let ok = [
            start("k", 0, "a"),
            end("k", 0, "a"),
            start("k", 1, "b"),
            end("k", 1, "b"),
        ];
        assert!(check(&ok, &expected, true).violations.is_empty());
        let overlap = [
            start("k", 0, "a"),
            start("k", 1, "b"),
            end("k", 0, "a"),
            end("k", 1, "b"),
        ];
        assert!(!check(&overlap, &expected, false).violations.is_empty());
        let disorder = [
            start("k", 1, "a"),
            end("k", 1, "a"),
            start("k", 0, "a"),
            end("k", 0, "a"),
        ];
        assert!(!check(&disorder, &expected, false).violations.is_empty());
        let gap = [start("k", 0, "a"), end("k", 0, "a")];
        assert!(!check(&gap, &expected, false).violations.is_empty());
        let rerun = [
            start("k", 0, "a"),
            end("k", 0, "a"),
            start("k", 1, "a"),
            Step::Gone { member: "a".into() },
            start("k", 1, "b"),
            end("k", 1, "b"),
        ];
        assert!(check(&rerun, &expected, false).violations.is_empty());
        assert!(!check(&rerun, &expected, true).violations.is_empty());
        assert_eq!(check(&rerun, &expected, false).duplicates(), 1);
        assert_eq!(Step::parse(&rerun[3].line()), Some(rerun[3].clone()));
        assert_eq!(Step::parse(&rerun[2].line()), Some(rerun[2].clone()));
    }
}
