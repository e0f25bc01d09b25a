//! Sticky top-N: which values of a capped breakdown keep a series of their own, poll after poll.
//!
//! A plain top-N flaps at its boundary: two clients trading places at rank N swap between a
//! series of their own and `other` on every poll, which breaks every graph and `rate()` over
//! them. Here a value *gets* its own series when it ranks within the cap, and *keeps* it until
//! its rank passes twice the cap or its count drops to 0. So each instance and family has at
//! most 2×cap named series plus `other`, and the named ones and `other` still add up to the
//! total.

use std::collections::HashSet;
use std::hash::Hash;

/// One poll's split of a breakdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection<K, V> {
    /// Entries with a series of their own, sorted by value.
    pub own: Vec<(K, V)>,
    /// Entries for the caller to fold into `other`, sorted by value.
    pub rest: Vec<(K, V)>,
}

/// The values holding a series of their own in one breakdown of one instance, remembered
/// from one poll to the next by whoever polls that instance.
#[derive(Debug, Clone)]
pub struct Sticky<K> {
    held: HashSet<K>,
}

impl<K> Default for Sticky<K> {
    fn default() -> Self {
        Self {
            held: HashSet::new(),
        }
    }
}

impl<K: Eq + Hash + Ord + Clone> Sticky<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Splits this poll's entries (one per value, any order) into those that get a series of
    /// their own and the rest, for the caller to fold into `other`, and remembers the choice.
    ///
    /// Entries are ranked by `weight` (largest first, ties by value so the order is total);
    /// a weight of 0 never holds a series.
    pub fn select<V>(
        &mut self,
        mut entries: Vec<(K, V)>,
        cap: usize,
        weight: impl Fn(&V) -> u64,
    ) -> Selection<K, V> {
        entries
            .sort_unstable_by(|a, b| weight(&b.1).cmp(&weight(&a.1)).then_with(|| a.0.cmp(&b.0)));
        let keep_until = cap.saturating_mul(2);
        let mut kept = Vec::new();
        let mut rest = Vec::new();
        let mut held = HashSet::with_capacity(self.held.len().max(cap));
        for (rank, (k, v)) in entries.into_iter().enumerate() {
            let own =
                weight(&v) > 0 && (rank < cap || (rank < keep_until && self.held.contains(&k)));
            if own {
                held.insert(k.clone());
                kept.push((k, v));
            } else {
                rest.push((k, v));
            }
        }
        self.held = held;
        kept.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rest.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Selection { own: kept, rest }
    }

    /// Values holding a series now.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// The label value used for everything beyond a cap.
pub const OTHER: &str = "other";

/// A capped breakdown of counts: the values that hold a series (sticky), and the rest summed
/// into [`OTHER`]. A real value named `other` is merged into that bucket. Sorted by value.
pub fn cap_counts<I>(counts: I, cap: usize, sticky: &mut Sticky<String>) -> Vec<(String, u64)>
where
    I: IntoIterator,
    I::Item: Into<(String, u64)>,
{
    let mut other = 0u64;
    let entries: Vec<(String, u64)> = counts
        .into_iter()
        .map(Into::into)
        .filter(|(k, c)| {
            // Counts come from the wire (`SourceStats`): sums saturate, never wrap or panic.
            if k == OTHER {
                other = other.saturating_add(*c);
                false
            } else {
                true
            }
        })
        .collect();
    let sel = sticky.select(entries, cap, |c| *c);
    other = sel
        .rest
        .iter()
        .fold(other, |acc, (_, c)| acc.saturating_add(*c));
    let mut out = sel.own;
    if other > 0 {
        out.push((OTHER.to_owned(), other));
        out.sort_unstable();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn poll(s: &mut Sticky<String>, counts: &[(&str, u64)], cap: usize) -> Vec<String> {
        let entries = counts.iter().map(|(k, c)| ((*k).to_owned(), *c)).collect();
        s.select(entries, cap, |c| *c)
            .own
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    #[test]
    fn two_values_trading_places_at_the_boundary_keep_their_series() {
        let mut s = Sticky::new();
        let cap = 2;
        // "b" and "c" swap ranks 2 and 3 on every poll.
        let a = [("a", 100), ("b", 11), ("c", 10), ("d", 1)];
        let b = [("a", 100), ("b", 10), ("c", 11), ("d", 1)];
        assert_eq!(poll(&mut s, &a, cap), ["a", "b"]);
        assert_eq!(poll(&mut s, &b, cap), ["a", "b", "c"], "c enters, b stays");
        for _ in 0..5 {
            assert_eq!(poll(&mut s, &a, cap), ["a", "b", "c"]);
            assert_eq!(poll(&mut s, &b, cap), ["a", "b", "c"]);
        }
    }

    #[test]
    fn a_value_leaves_past_twice_the_cap_or_at_zero() {
        let mut s = Sticky::new();
        assert_eq!(
            poll(&mut s, &[("x", 50), ("y", 40), ("z", 1)], 2),
            ["x", "y"]
        );
        // y falls to rank 4 of 5 (within 2×2): kept.
        let p = [("p", 90), ("q", 80), ("x", 50), ("y", 4), ("z", 1)];
        assert_eq!(poll(&mut s, &p, 2), ["p", "q", "x", "y"]);
        // y falls to rank 5: beyond 2×cap, it goes to `other`; a new arrival at rank 3 does not
        // get in (only ranks within the cap enter).
        let p = [("p", 90), ("q", 80), ("r", 70), ("x", 50), ("y", 4)];
        assert_eq!(poll(&mut s, &p, 2), ["p", "q", "x"]);
        // x's count drops to 0: gone even though it would rank within 2×cap.
        assert_eq!(poll(&mut s, &[("p", 9), ("q", 8), ("x", 0)], 2), ["p", "q"]);
        assert_eq!(s.held(), 2);
    }

    #[test]
    fn a_cap_of_zero_names_nothing() {
        let mut s = Sticky::new();
        let sel = s.select(vec![("a", 3u64), ("b", 1)], 0, |c| *c);
        assert!(sel.own.is_empty());
        assert_eq!(sel.rest, vec![("a", 3), ("b", 1)]);
    }

    #[test]
    fn cap_counts_sums_the_rest_and_a_literal_other_into_other() {
        let mut s = Sticky::new();
        let counts = [("a", 5u64), ("b", 1), ("c", 3), ("d", 3), ("other", 2)]
            .map(|(k, c)| (k.to_owned(), c));
        // a=5 and c=3 win (c before d on the tie); b, d and the literal "other" are summed.
        assert_eq!(
            cap_counts(counts.clone(), 2, &mut s),
            vec![("a".into(), 5), ("c".into(), 3), ("other".into(), 6)]
        );
        // Next poll d overtakes c: c keeps its series (rank 3 of 2×2), d gets one.
        let counts = [("a", 5u64), ("c", 3), ("d", 4)].map(|(k, c)| (k.to_owned(), c));
        assert_eq!(
            cap_counts(counts, 2, &mut s),
            vec![("a".into(), 5), ("c".into(), 3), ("d".into(), 4)]
        );
    }

    #[test]
    fn ties_rank_by_value() {
        let mut s = Sticky::new();
        assert_eq!(poll(&mut s, &[("b", 5), ("a", 5), ("c", 5)], 2), ["a", "b"]);
    }

    proptest! {
        /// Over any sequence of polls: at most 2×cap named values, the top `cap` always named,
        /// nothing lost, and a named value is only dropped when its rank passed 2×cap or its
        /// count reached 0 (the no-flap property).
        #[test]
        fn bounded_complete_and_sticky(
            polls in proptest::collection::vec(
                proptest::collection::btree_map("[a-l]", 0u64..20, 0..12), 1..30),
            cap in 0usize..5,
        ) {
            let mut s = Sticky::new();
            let mut before: Vec<String> = Vec::new();
            for counts in polls {
                let entries: Vec<(String, u64)> = counts.clone().into_iter().collect();
                let Selection { own: kept, rest } = s.select(entries, cap, |c| *c);
                prop_assert!(kept.len() <= 2 * cap);
                let total: u64 = counts.values().sum();
                prop_assert_eq!(kept.iter().chain(&rest).map(|e| e.1).sum::<u64>(), total);
                prop_assert_eq!(kept.len() + rest.len(), counts.len());
                // Ranks, as the rule defines them.
                let mut ranked: Vec<(&String, &u64)> = counts.iter().collect();
                ranked.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                let rank: BTreeMap<&String, usize> =
                    ranked.iter().enumerate().map(|(r, (k, _))| (*k, r)).collect();
                let named: Vec<&String> = kept.iter().map(|e| &e.0).collect();
                for (k, r) in &rank {
                    if *r < cap && counts[*k] > 0 {
                        prop_assert!(named.contains(k), "{} at rank {} must be named", k, r);
                    }
                }
                for k in &before {
                    let stays = rank.get(k).is_some_and(|r| *r < 2 * cap && counts[k] > 0);
                    prop_assert_eq!(named.contains(&k), stays, "{} (was named)", k);
                }
                for k in &named {
                    prop_assert!(before.contains(k) || rank[*k] < cap, "{} entered beyond the cap", k);
                }
                before = named.into_iter().cloned().collect();
            }
        }
    }
}
