//! Which member should own which partition: balanced (counts differ by at most one), sticky
//! (a partition stays with its live owner while that owner is within its quota), and
//! deterministic (every member computing it from the same view gets the same answer, so no
//! coordinator is needed).

use std::collections::HashMap;

/// The target owner of every partition, from the live members and the current live owners.
///
/// - `members`: the live members of the group (any order; duplicates ignored).
/// - `owners[p]`: the member holding partition `p`'s lease now (`None`: free or expired).
///
/// Each member's quota is `P / N`, plus one for the `P % N` members that hold the most
/// partitions now (ties by name), so the members that must give some up are as few as possible.
/// A partition keeps its owner while the owner is a live member within its quota; the others go
/// to the members under quota, in partition order.
pub(crate) fn plan(members: &[String], owners: &[Option<String>]) -> Vec<Option<String>> {
    let partitions = owners.len();
    let mut members: Vec<&str> = members.iter().map(String::as_str).collect();
    members.sort_unstable();
    members.dedup();
    if members.is_empty() {
        return vec![None; partitions];
    }
    let n = members.len();
    let (base, extra) = (partitions / n, partitions % n);
    let mut held: HashMap<&str, usize> = members.iter().map(|m| (*m, 0)).collect();
    for owner in owners.iter().flatten() {
        if let Some(c) = held.get_mut(owner.as_str()) {
            *c += 1;
        }
    }
    let mut by_load = members.clone();
    by_load.sort_by(|a, b| held[b].cmp(&held[a]).then(a.cmp(b)));
    let quota: HashMap<&str, usize> = by_load
        .iter()
        .enumerate()
        .map(|(rank, m)| (*m, base + usize::from(rank < extra)))
        .collect();
    let mut kept: HashMap<&str, usize> = members.iter().map(|m| (*m, 0)).collect();
    let mut target: Vec<Option<String>> = vec![None; partitions];
    for (p, owner) in owners.iter().enumerate() {
        if let Some(owner) = owner
            && let Some(k) = kept.get_mut(owner.as_str())
            && *k < quota[owner.as_str()]
        {
            *k += 1;
            target[p] = Some(owner.clone());
        }
    }
    let mut room = members
        .iter()
        .flat_map(|m| std::iter::repeat_n(*m, quota[m] - kept[m]));
    for slot in target.iter_mut().filter(|t| t.is_none()) {
        *slot = room.next().map(str::to_owned);
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    fn counts(target: &[Option<String>]) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for t in target.iter().flatten() {
            *c.entry(t.clone()).or_default() += 1;
        }
        c
    }

    #[test]
    fn every_partition_gets_an_owner_and_counts_differ_by_at_most_one() {
        for p in 1..=20 {
            for n in 1..=7 {
                let members = names(n);
                let target = plan(&members, &vec![None; p]);
                assert!(target.iter().all(Option::is_some), "P={p} N={n}");
                let c = counts(&target);
                let (min, max) = (
                    members
                        .iter()
                        .map(|m| c.get(m).copied().unwrap_or(0))
                        .min()
                        .unwrap(),
                    c.values().copied().max().unwrap(),
                );
                assert!(max - min <= 1, "P={p} N={n}: {c:?}");
            }
        }
    }

    #[test]
    fn a_joining_member_takes_only_what_it_needs() {
        let one = vec!["a".to_owned()];
        let owners = plan(&one, &vec![None; 16]);
        let two = vec!["a".to_owned(), "b".to_owned()];
        let target = plan(&two, &owners);
        let moved = owners
            .iter()
            .zip(&target)
            .filter(|(before, after)| before != after)
            .count();
        assert_eq!(moved, 8, "{target:?}");
        // Sticky: once the move is done, nothing else moves.
        assert_eq!(plan(&two, &target), target);
    }

    #[test]
    fn a_leaving_members_partitions_go_to_the_others_and_nothing_else_moves() {
        let three = names(3);
        let owners = plan(&three, &vec![None; 16]);
        let mut after_crash = owners.clone();
        for o in after_crash.iter_mut() {
            if o.as_deref() == Some("m1") {
                *o = None;
            }
        }
        let two = vec!["m0".to_owned(), "m2".to_owned()];
        let target = plan(&two, &after_crash);
        for (p, owner) in owners.iter().enumerate() {
            if owner.as_deref() != Some("m1") {
                assert_eq!(&target[p], owner, "partition {p} moved needlessly");
            }
        }
        assert_eq!(counts(&target).values().copied().max(), Some(8));
    }

    #[test]
    fn dead_owners_and_unknown_members_are_ignored() {
        let members = vec!["a".to_owned()];
        let owners = vec![Some("ghost".to_owned()), None];
        assert_eq!(
            plan(&members, &owners),
            vec![Some("a".to_owned()), Some("a".to_owned())]
        );
        assert_eq!(plan(&[], &owners), vec![None, None]);
    }

    #[test]
    fn the_extra_partitions_stay_with_the_members_holding_them() {
        // P=3, N=2: whoever holds two keeps two.
        let members = vec!["a".to_owned(), "b".to_owned()];
        let owners = vec![
            Some("b".to_owned()),
            Some("b".to_owned()),
            Some("a".to_owned()),
        ];
        assert_eq!(plan(&members, &owners), owners);
    }

    #[test]
    fn more_members_than_partitions_leaves_some_idle() {
        let target = plan(&names(5), &vec![None; 3]);
        assert_eq!(counts(&target).len(), 3);
    }
}
