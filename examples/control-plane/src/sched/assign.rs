//! Which scheduler should lead which entitlement: bounded-load rendezvous hashing.
//!
//! Every scheduler computes the same answer from the same view (the live schedulers and
//! the entitlements in the store), with no coordination: entitlements are taken in name
//! order, and each goes to the live scheduler with the highest hash of
//! `(scheduler, entitlement)` among those still below `ceil(entitlements / schedulers)`.
//! Plain rendezvous hashing moves only the entitlements of a scheduler that leaves or
//! joins; the load bound keeps shards within one entitlement of each other, which plain
//! hashing does not with a handful of entitlements. The answer is only the *desired*
//! leader: the leader key in the store is the truth, taken by a create-if-absent
//! transaction, so two views that briefly differ never give an entitlement two leaders.

use std::collections::BTreeMap;

/// FNV-1a, 64-bit: a hash that every build of the scheduler computes alike. (std's
/// `DefaultHasher` may change between Rust releases, and schedulers built by different
/// toolchains must agree; a crate for eight lines is not worth a dependency.)
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The desired leader of each entitlement, given the live schedulers. Empty if no
/// scheduler is live.
pub fn desired_leaders<'a>(
    schedulers: &[&'a str],
    entitlements: &[&'a str],
) -> BTreeMap<&'a str, &'a str> {
    let mut out = BTreeMap::new();
    if schedulers.is_empty() {
        return out;
    }
    let mut ents = entitlements.to_vec();
    ents.sort_unstable();
    ents.dedup();
    let bound = ents.len().div_ceil(schedulers.len());
    let mut load: BTreeMap<&str, usize> = schedulers.iter().map(|s| (*s, 0)).collect();
    for e in ents {
        let best = schedulers
            .iter()
            .filter(|s| load.get(*s).is_some_and(|&n| n < bound))
            .max_by_key(|s| (fnv1a(&[s, e]), **s));
        if let Some(s) = best {
            if let Some(n) = load.get_mut(s) {
                *n += 1;
            }
            out.insert(e, *s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn balanced_and_complete() {
        for (s, e) in [(1, 4), (3, 4), (3, 10), (5, 3), (20, 100)] {
            let sched = names("sched-", s);
            let ents = names("ent-", e);
            let sr: Vec<&str> = sched.iter().map(String::as_str).collect();
            let er: Vec<&str> = ents.iter().map(String::as_str).collect();
            let d = desired_leaders(&sr, &er);
            assert_eq!(d.len(), e, "every entitlement has a leader");
            let mut load: BTreeMap<&str, usize> = BTreeMap::new();
            for s in d.values() {
                *load.entry(s).or_default() += 1;
            }
            let bound = e.div_ceil(s);
            assert!(load.values().all(|&n| n <= bound), "{load:?} bound {bound}");
        }
    }

    #[test]
    fn order_of_the_view_does_not_matter() {
        let a = desired_leaders(&["s1", "s2", "s3"], &["e1", "e2", "e3", "e4"]);
        let b = desired_leaders(&["s3", "s1", "s2"], &["e4", "e2", "e1", "e3"]);
        assert_eq!(a, b);
    }

    #[test]
    fn a_leaving_scheduler_moves_few_entitlements() {
        let sched = names("s", 10);
        let ents = names("e", 200);
        let er: Vec<&str> = ents.iter().map(String::as_str).collect();
        let all: Vec<&str> = sched.iter().map(String::as_str).collect();
        let before = desired_leaders(&all, &er);
        let after = desired_leaders(&all[1..], &er);
        let moved = er.iter().filter(|e| before[*e] != after[*e]).count();
        let owned = er.iter().filter(|e| before[*e] == all[0]).count();
        // Its own entitlements must move; the load bound moves a few more, not most.
        assert!(
            moved >= owned && moved < 200 / 2,
            "moved {moved}, owned {owned}"
        );
        assert!(er.iter().all(|e| after[*e] != all[0]));
    }
}
