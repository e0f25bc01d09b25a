//! The caps of one instance, applied poll after poll: sticky top-N for every capped breakdown,
//! and the by-workload breakdown named from the per-client figures.

use crate::attribution::{self, Attribution, Workload};
use crate::sticky::{cap_counts, Sticky};

use super::{Limits, Snapshot};

/// Which values of each capped breakdown of one instance hold a series. Kept by the task that
/// polls the instance; starts empty.
#[derive(Debug, Default)]
pub struct Caps {
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
    use super::super::{Fold, SessionView};
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
}
