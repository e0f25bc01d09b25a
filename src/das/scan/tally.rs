//! Text labels of the template path, counted per distinct raw value and handed to the fold once
//! per value.

use std::hash::Hasher;

use super::template::Label;
use super::{Bail, R};
use crate::das::answer::Texts;
use crate::snapshot::{Fold, FxHasher};

/// The text labels of the sessions read by a template, per distinct raw value.
#[derive(Default)]
pub(super) struct Tally<'a> {
    nodes: Counter<'a>,
    commands: Counter<'a>,
    names: Counter<'a>,
}

impl<'a> Tally<'a> {
    /// Counts one session under each of its labels (`Flags` goes into the figures instead):
    /// raw values here, decoded ones (rare) straight into the fold.
    #[inline]
    pub(super) fn count(&mut self, texts: Texts<Label<'a>>, fold: &mut Fold) {
        match texts.node_id {
            Label::Raw(raw) => self.nodes.add(raw),
            Label::Decoded(s) => fold.add_node(&s, 1),
        }
        match texts.cmd {
            Label::Raw(raw) => self.commands.add(raw),
            Label::Decoded(s) => fold.add_command(&s, 1),
        }
        match texts.name {
            Label::Raw(raw) => self.names.add(raw),
            Label::Decoded(s) => fold.add_client_name(&s, 1),
        }
    }

    /// Hands each distinct value to the fold once, with its count. A value that is not UTF-8
    /// gives up: the reference refuses the body, and falling back lets it say so.
    pub(super) fn flush(&self, fold: &mut Fold) -> R<()> {
        for (raw, n) in self.nodes.iter() {
            fold.add_node(std::str::from_utf8(raw).map_err(|_| Bail)?, n);
        }
        for (raw, n) in self.commands.iter() {
            fold.add_command(std::str::from_utf8(raw).map_err(|_| Bail)?, n);
        }
        for (raw, n) in self.names.iter() {
            fold.add_client_name(std::str::from_utf8(raw).map_err(|_| Bail)?, n);
        }
        Ok(())
    }
}

/// Counts borrowed byte strings: an open-addressing table (linear probing, at most half full)
/// keyed by the raw bytes. Built for this one job rather than a `HashMap<&[u8], u64>` because
/// it runs three times per session: a probe compares the stored hash before the bytes.
struct Counter<'a> {
    /// `(hash, value, count)`; a count of 0 marks a free slot.
    slots: Vec<(u64, &'a [u8], u64)>,
    used: usize,
}

impl Default for Counter<'_> {
    fn default() -> Self {
        Counter {
            slots: vec![(0, &[][..], 0); 16],
            used: 0,
        }
    }
}

impl<'a> Counter<'a> {
    #[inline]
    fn add(&mut self, value: &'a [u8]) {
        let h = hash_bytes(value);
        let mask = self.slots.len() - 1;
        let mut i = (h as usize) & mask;
        while let Some(slot) = self.slots.get_mut(i) {
            if slot.2 == 0 {
                *slot = (h, value, 1);
                self.used += 1;
                if self.used * 2 > self.slots.len() {
                    self.grow();
                }
                return;
            }
            if slot.0 == h && slot.1 == value {
                slot.2 += 1;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let bigger = vec![(0, &[][..], 0); self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, bigger);
        let mask = self.slots.len() - 1;
        for entry in old.into_iter().filter(|e| e.2 > 0) {
            let mut i = (entry.0 as usize) & mask;
            while let Some(slot) = self.slots.get_mut(i) {
                if slot.2 == 0 {
                    *slot = entry;
                    break;
                }
                i = (i + 1) & mask;
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&'a [u8], u64)> + '_ {
        self.slots.iter().filter(|e| e.2 > 0).map(|e| (e.1, e.2))
    }
}

/// The fold's Fx hash of the bytes, with its well-mixed high bits folded down because the
/// table indexes with the low ones.
#[inline]
fn hash_bytes(v: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(v);
    let h = h.finish();
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    use super::Counter;

    proptest::proptest! {
    /// The label counter counts like a map, through growth and colliding hashes.
    #[test]
    fn counter_counts_like_a_map(values in proptest::collection::vec(
        proptest::collection::vec(proptest::sample::select(&b"ab\xff-#1"[..]), 0..24), 0..600)
    ) {
        let mut counter = Counter::default();
        let mut map = std::collections::HashMap::<&[u8], u64>::new();
        for v in &values {
            counter.add(v);
            *map.entry(v).or_default() += 1;
        }
        let mut got: Vec<(&[u8], u64)> = counter.iter().collect();
        got.sort_unstable();
        let mut want: Vec<(&[u8], u64)> = map.into_iter().collect();
        want.sort_unstable();
        proptest::prop_assert_eq!(got, want);
    }
    }
}
