//! The caps of one instance, applied poll after poll: sticky top-N for every capped breakdown,
//! and the by-workload breakdown named from the per-client figures.

use crate::attribution::{self, Attribution, Workload};
use crate::sticky::{cap_counts, Sticky};

use super::{Limits, Snapshot};

/// Which values of each capped breakdown of one instance hold a series. Kept by the task that
/// polls the instance; starts empty.
#[derive(Debug, Default)]
pub struct Caps {
    nodes: Sticky<String>,
    sources: Sticky<String>,
    commands: Sticky<String>,
    client_names: Sticky<String>,
    users: Sticky<String>,
    libraries: Sticky<String>,
    workloads: Sticky<Workload>,
}

impl Snapshot {
    /// Caps every breakdown with the sticky rule (see [`crate::sticky`]) and, when
    /// `attribution` is on, turns the per-client figures into the capped by-workload breakdown.
    pub fn apply_caps(
        &mut self,
        limits: &Limits,
        caps: &mut Caps,
        attribution: Option<&Attribution>,
    ) {
        use std::mem::take;
        self.by_node = cap_counts(take(&mut self.by_node), limits.max_nodes, &mut caps.nodes);
        self.by_source = cap_counts(
            take(&mut self.by_source),
            limits.max_sources,
            &mut caps.sources,
        );
        self.by_command = cap_counts(
            take(&mut self.by_command),
            limits.max_commands,
            &mut caps.commands,
        );
        self.by_client_name = cap_counts(
            take(&mut self.by_client_name),
            limits.max_client_names,
            &mut caps.client_names,
        );
        if let Some(d) = &mut self.direct {
            d.by_user = cap_counts(
                take(&mut d.by_user),
                limits.max_client_names,
                &mut caps.users,
            );
            d.by_library = cap_counts(
                take(&mut d.by_library),
                limits.max_client_names,
                &mut caps.libraries,
            );
        } else {
            // No session with direct fields: every user and library count is 0 now, so none
            // keeps its series into the next poll that has some.
            caps.users = Sticky::new();
            caps.libraries = Sticky::new();
        }
        let clients = take(&mut self.by_client);
        self.by_workload = attribution.filter(|a| a.is_enabled()).map(|a| {
            attribution::by_workload(
                clients.iter().map(|(c, f)| (c.as_str(), *f)),
                &a.lookup(),
                limits.max_workloads,
                &mut caps.workloads,
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::TestCaseError;
    use proptest::{prop_assert, prop_assert_eq};

    use super::super::{Fold, SessionView, OTHER};
    use super::*;
    use crate::attribution::Networks;

    fn session<'a>(client: &'a str, name: &'a str, idle: u64, omem: u64) -> SessionView<'a> {
        SessionView {
            client,
            name,
            idle,
            omem,
            multi: -1,
            ..Default::default()
        }
    }

    #[test]
    fn breakdowns_are_capped_sticky_across_polls() {
        let limits = Limits {
            max_client_names: 1,
            ..Limits::default()
        };
        let mut caps = Caps::default();
        let poll = |names: &[(&str, usize)], caps: &mut Caps| {
            let mut f = Fold::new();
            for (name, n) in names {
                for _ in 0..*n {
                    f.add(&session("10.0.0.1", name, 0, 0));
                }
            }
            let mut s = f.finish(&limits, None, None);
            s.apply_caps(&limits, caps, None);
            s.by_client_name
        };
        let own = |v: Vec<(String, u64)>| -> Vec<String> {
            v.into_iter()
                .map(|(k, _)| k)
                .filter(|k| k != "other")
                .collect()
        };
        assert_eq!(own(poll(&[("a", 3), ("b", 2), ("c", 1)], &mut caps)), ["a"]);
        // b overtakes a: b enters, a stays (rank 2 of 2×1).
        assert_eq!(
            own(poll(&[("a", 2), ("b", 3), ("c", 1)], &mut caps)),
            ["a", "b"]
        );
        // a falls to rank 3: gone; the sum still covers every session.
        let v = poll(&[("a", 1), ("b", 3), ("c", 2)], &mut caps);
        assert_eq!(v, vec![("b".to_owned(), 3), ("other".to_owned(), 3)]);
    }

    #[test]
    fn clients_become_workloads_only_with_attribution() {
        let limits = Limits::default();
        let mut f = Fold::with_clients(600);
        f.add(&session("10.1.0.1", "", 700, 5));
        f.add(&session("10.1.0.2", "", 10, 9));
        f.add(&session("172.16.0.1", "", 600, 1));
        let s = f.finish(&limits, None, None);
        assert_eq!(s.by_client.len(), 3);

        let mut off = s.clone();
        off.apply_caps(&limits, &mut Caps::default(), None);
        assert_eq!(off.by_workload, None);
        assert!(
            off.by_client.is_empty(),
            "the per-client figures are not kept"
        );

        let a = Attribution::new(
            Networks::new([("10.1.0.0/16".parse().unwrap(), "vpc".to_owned())]),
            false,
        );
        let mut on = s;
        on.apply_caps(&limits, &mut Caps::default(), Some(&a));
        let w = on.by_workload.expect("attributed");
        let got: Vec<(&str, u64, u64, u64)> = w
            .iter()
            .map(|(w, f)| (&*w.name, f.sessions, f.long_idle, f.output_buffer_max))
            .collect();
        assert_eq!(got, [("unknown", 1, 1, 1), ("vpc", 2, 1, 9)]);
    }

    #[test]
    fn a_plain_fold_keeps_no_client_figures() {
        let mut f = Fold::new();
        f.add(&session("10.1.0.1", "", 700, 5));
        assert!(!f.tracks_clients());
        assert!(f
            .finish(&Limits::default(), None, None)
            .by_client
            .is_empty());
    }

    /// What the sticky rule gives, computed here from raw counts: ranked by count (ties by
    /// value), a value holds a series when its count is above 0 and it ranks within `cap`, or
    /// within 2×`cap` having held one at the previous poll.
    fn want_named(
        counts: &BTreeMap<String, u64>,
        cap: usize,
        before: &BTreeSet<String>,
    ) -> BTreeSet<String> {
        let mut ranked: Vec<(&String, u64)> = counts
            .iter()
            .filter(|(k, _)| k.as_str() != OTHER)
            .map(|(k, c)| (k, *c))
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        ranked
            .iter()
            .enumerate()
            .filter(|(rank, (k, c))| {
                *c > 0 && (*rank < cap || (*rank < 2 * cap && before.contains(*k)))
            })
            .map(|(_, (k, _))| (*k).clone())
            .collect()
    }

    /// A capped family against its raw counts: exactly the values the sticky rule names, each
    /// with its own count, `other` with everything else (absent at 0), at most 2×cap + 1
    /// series, adding up to the total. Returns the named values for the next poll.
    fn check_family(
        family: &str,
        got: &[(String, u64)],
        counts: &BTreeMap<String, u64>,
        cap: usize,
        before: &BTreeSet<String>,
    ) -> Result<BTreeSet<String>, TestCaseError> {
        let want = want_named(counts, cap, before);
        let named: BTreeSet<String> = got
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| k != OTHER)
            .collect();
        prop_assert_eq!(&named, &want, "{} named", family);
        prop_assert!(
            got.len() <= 2 * cap + 1,
            "{} has {} series",
            family,
            got.len()
        );
        let total: u64 = counts.values().sum();
        let rest: u64 = counts
            .iter()
            .filter(|(k, _)| !want.contains(*k))
            .map(|(_, c)| c)
            .sum();
        for (k, n) in got {
            let expect = if k == OTHER { rest } else { counts[k] };
            prop_assert_eq!(*n, expect, "{} {}", family, k);
        }
        prop_assert_eq!(
            got.iter().any(|(k, _)| k == OTHER),
            rest > 0,
            "{} other",
            family
        );
        prop_assert_eq!(
            got.iter().map(|x| x.1).sum::<u64>(),
            total,
            "{} sum",
            family
        );
        Ok(want)
    }

    proptest::proptest! {
        /// Poll after poll of one instance, every capped family (`by_source`, `by_command`,
        /// `by_client_name`, `by_user`, `by_library` with `max_client_names`, `by_workload`
        /// with `max_workloads`) names exactly what the sticky rule names, so it stays within
        /// 2×cap + 1 series, adds up to the total, and keeps a value's series while it ranks
        /// within 2×cap (no flap at the boundary).
        #[test]
        fn every_capped_family_is_bounded_complete_and_sticky(
            // Per session, an index into each family's few values, so that values tie, trade
            // places and cross the cap from poll to poll.
            polls in proptest::collection::vec(
                proptest::collection::vec(proptest::array::uniform6(0usize..10), 0..60),
                1..8,
            ),
            cap in 0usize..4,
        ) {
            let limits = Limits {
                max_sources: cap,
                max_commands: cap,
                max_client_names: cap,
                max_workloads: cap,
                ..Limits::default()
            };
            // Clients 10.9.k.1: networks name k < 7; the rest are unknown.
            let a = Attribution::new(
                Networks::new((0..7).map(|k| (format!("10.9.{k}.0/24").parse().unwrap(), format!("w{k}")))),
                false,
            );
            let value = |family: usize, k: usize| match family {
                0 => format!("10.0.0.{k}"),
                1 => format!("cmd{k}"),
                // A real client name `other` joins the `other` series.
                2 if k == 9 => OTHER.to_owned(),
                2 => format!("name{k}"),
                3 => format!("user{k}"),
                4 => format!("lib{k}"),
                _ => format!("10.9.{k}.1"),
            };
            let workload = |k: usize| if k < 7 { format!("w{k}") } else { "unknown".to_owned() };
            let mut caps = Caps::default();
            let mut before: Vec<BTreeSet<String>> = vec![BTreeSet::new(); 6];
            for poll in &polls {
                let mut f = Fold::with_clients(600);
                let mut counts: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); 6];
                for keys in poll {
                    let v: Vec<String> = (0..6).map(|fam| value(fam, keys[fam])).collect();
                    f.add(&SessionView {
                        cmd: &v[1],
                        name: &v[2],
                        user: Some(&v[3]),
                        lib_name: Some(&v[4]),
                        client: &v[5],
                        multi: -1,
                        ..Default::default()
                    });
                    f.add_source(&v[0], 1);
                    for fam in 0..5 {
                        *counts[fam].entry(v[fam].clone()).or_default() += 1;
                    }
                    *counts[5].entry(workload(keys[5])).or_default() += 1;
                }
                let mut s = f.finish(&limits, None, None);
                s.apply_caps(&limits, &mut caps, Some(&a));
                // A poll without sessions has no direct figures at all.
                let none = Vec::new();
                let (users, libraries) = s
                    .direct
                    .as_ref()
                    .map_or((&none, &none), |d| (&d.by_user, &d.by_library));
                let workloads: Vec<(String, u64)> = s
                    .by_workload
                    .as_ref()
                    .expect("attribution is on")
                    .iter()
                    .map(|(w, f)| (w.name.to_string(), f.sessions))
                    .collect();
                let got: [(&str, &[(String, u64)]); 6] = [
                    ("by_source", &s.by_source),
                    ("by_command", &s.by_command),
                    ("by_client_name", &s.by_client_name),
                    ("by_user", users),
                    ("by_library", libraries),
                    ("by_workload", &workloads),
                ];
                for (fam, (name, rows)) in got.into_iter().enumerate() {
                    before[fam] = check_family(name, rows, &counts[fam], cap, &before[fam])?;
                }
            }
        }
    }
}
