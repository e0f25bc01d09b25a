//! What both decoders make of a GetRedisAllSession answer: the envelope, `Data`'s metadata, and
//! the one table of session fields that the serde reference (`wire`) and the byte scanner
//! (`scan`) read.
//!
//! A session key the exporter uses is one row of [`session_fields!`]'s invocation below: its name
//! in the answer, its member in [`Texts`] or [`Ints`], and so its kind. Both decoders match keys
//! with [`Field::from_key`] and store values with [`Texts::get_mut`] / [`Ints::get_mut`]; what
//! the fold makes of a value is said once, by name, in [`Ints::figures`] and
//! [`Texts::add_labels`]. Every other key of a session is skipped by both.

use crate::snapshot::{parse_flags, Figures, Fold};

/// The envelope: `Code`, `Message`, `Success`, `Data`; anything else is ignored.
#[derive(Debug, Default)]
pub(crate) struct Envelope {
    pub(crate) code: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) success: Option<bool>,
    /// `None`: no `Data` key; `Some(None)`: `"Data": null`.
    pub(crate) data: Option<Option<DataMeta>>,
}

/// What `Data` held besides the sessions (which go to the fold as they are read).
#[derive(Debug, Default)]
pub(crate) struct DataMeta {
    pub(crate) total: Option<u64>,
    pub(crate) timestamp_ms: Option<i64>,
}

/// Declares the session fields: `Key => member` rows under `text` (a label, read as the
/// reference's lenient string) and `int` (a figure, read as the reference's lenient integer).
/// The key in the answer is the row's `Key` spelled as written.
macro_rules! session_fields {
    (
        text { $($tkey:ident => $tname:ident),* $(,)? }
        int { $($ikey:ident => $iname:ident),* $(,)? }
    ) => {
        /// A text field of a session.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum TextField { $($tkey),* }

        /// An integer field of a session.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum IntField { $($ikey),* }

        /// What a session key means to the exporter.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Field {
            Text(TextField),
            Int(IntField),
            /// A key the exporter does not use: its value is skipped.
            Other,
        }

        /// The session keys as they are spelled in answers.
        #[cfg(test)]
        pub(crate) const SESSION_KEYS: &[&str] = &[$(stringify!($tkey),)* $(stringify!($ikey)),*];

        /// The keys as byte strings, usable as patterns (constants match like literals).
        #[allow(non_upper_case_globals)]
        mod key {
            $(pub(super) const $tkey: &[u8] = stringify!($tkey).as_bytes();)*
            $(pub(super) const $ikey: &[u8] = stringify!($ikey).as_bytes();)*
        }

        impl Field {
            /// The meaning of a key, matched on its (unescaped) bytes as the reference does.
            #[inline]
            pub(crate) fn from_key(k: &[u8]) -> Field {
                match k {
                    $(key::$tkey => Field::Text(TextField::$tkey),)*
                    $(key::$ikey => Field::Int(IntField::$ikey),)*
                    _ => Field::Other,
                }
            }

            /// This field's place in a [`FieldSet`].
            fn index(self) -> Option<u32> {
                const TEXTS: u32 = [$(stringify!($tkey)),*].len() as u32;
                match self {
                    Field::Text(f) => Some(f as u32),
                    Field::Int(f) => Some(TEXTS + f as u32),
                    Field::Other => None,
                }
            }
        }

        /// The text values of one session, by name (what a decoder holds them as: a borrowed
        /// slice, a decoded string, ...).
        #[derive(Debug, Default, Clone, Copy)]
        pub(crate) struct Texts<T> { $(pub(crate) $tname: T),* }

        impl<T> Texts<T> {
            #[inline]
            pub(crate) fn get_mut(&mut self, f: TextField) -> &mut T {
                match f { $(TextField::$tkey => &mut self.$tname),* }
            }
        }

        /// The integer values of one session, by name; `None` when absent, `null` or not a
        /// number (the reference's `LenientInt`).
        #[derive(Debug, Default, Clone, Copy)]
        pub(crate) struct Ints { $(pub(crate) $iname: Option<i64>),* }

        impl Ints {
            #[inline]
            pub(crate) fn get_mut(&mut self, f: IntField) -> &mut Option<i64> {
                match f { $(IntField::$ikey => &mut self.$iname),* }
            }
        }
    };
}

session_fields! {
    text {
        NodeId => node_id,
        Cmd => cmd,
        Name => name,
        Flags => flags,
        Client => client,
    }
    int {
        Db => db,
        Sub => sub,
        Psub => psub,
        Multi => multi,
        Qbuf => qbuf,
        QbufFree => qbuf_free,
        Obl => obl,
        Oll => oll,
        Omem => omem,
        Idle => idle,
        Age => age,
    }
}

impl Ints {
    /// The session's figures as the fold takes them: no db when absent, `Multi` -1 (outside a
    /// transaction) when absent, every other absent or negative figure 0.
    #[inline]
    pub(crate) fn figures(&self, flags: u32) -> Figures {
        let size = |v: Option<i64>| v.map_or(0, |v| v.max(0) as u64);
        Figures {
            db: self.db,
            flags,
            sub: size(self.sub),
            psub: size(self.psub),
            multi: self.multi.unwrap_or(-1),
            qbuf: size(self.qbuf),
            qbuf_free: size(self.qbuf_free),
            obl: size(self.obl),
            oll: size(self.oll),
            omem: size(self.omem),
            idle: size(self.idle),
            age: size(self.age),
        }
    }
}

impl Texts<&str> {
    /// Counts one session: its figures, its client's figures (kept only when attribution is
    /// on), and its labels.
    pub(crate) fn add_session(&self, ints: &Ints, fold: &mut Fold) {
        let f = ints.figures(parse_flags(self.flags));
        fold.add_client(self.client, f.idle, f.omem);
        fold.add_figures(&f);
        self.add_labels(fold);
    }

    /// Counts one session under each of its labels (`Flags` goes into the figures instead,
    /// `Client` into the per-client figures).
    pub(crate) fn add_labels(&self, fold: &mut Fold) {
        fold.add_node(self.node_id, 1);
        fold.add_command(self.cmd, 1);
        fold.add_client_name(self.name, 1);
    }
}

/// Which fields a session has given so far: a key given twice is read twice by the reference,
/// which checks both values, so a decoder that keeps only one must know.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FieldSet(u32);

impl FieldSet {
    /// Adds `f`; false when it was already there. Unused keys are never recorded.
    #[inline]
    pub(crate) fn insert(&mut self, f: Field) -> bool {
        let Some(i) = f.index() else {
            return true;
        };
        let bit = 1 << i;
        let new = self.0 & bit == 0;
        self.0 |= bit;
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_matches_its_own_field_and_only_it() {
        let mut seen = FieldSet::default();
        for k in SESSION_KEYS {
            let f = Field::from_key(k.as_bytes());
            assert_ne!(f, Field::Other, "{k}");
            assert!(seen.insert(f), "{k} shares a field with an earlier key");
        }
        for other in ["", "Addr", "Id", "nodeid", "NodeId ", "Age\0"] {
            assert_eq!(Field::from_key(other.as_bytes()), Field::Other, "{other:?}");
        }
        assert_eq!(Field::from_key(b"QbufFree"), Field::Int(IntField::QbufFree));
        assert_eq!(Field::from_key(b"Name"), Field::Text(TextField::Name));
    }

    #[test]
    fn absent_figures_take_the_documented_defaults() {
        let f = Ints::default().figures(0);
        assert_eq!((f.db, f.multi, f.idle, f.omem), (None, -1, 0, 0));
        let mut ints = Ints::default();
        *ints.get_mut(IntField::Qbuf) = Some(-5);
        *ints.get_mut(IntField::Omem) = Some(7);
        *ints.get_mut(IntField::Multi) = Some(0);
        let f = ints.figures(0);
        assert_eq!((f.qbuf, f.omem, f.multi), (0, 7, 0));
    }
}
