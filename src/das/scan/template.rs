//! The template path: sessions that repeat the layout of one read before, checked key by key
//! with masked word compares and read in their plain value forms.

use super::plain::{null_end, plain_string_end, plain_value_end, quoted_or_plain_int, word};
use super::{string_at, Scanner};
use crate::das::answer::{Field, Ints, Texts};
use crate::snapshot::{parse_flag_bytes, parse_flags, Fold};

/// the end of the previous value (or the session's `{`) to the start of this key's value, and
/// what the key means; then the bytes that close the session. The service writes every session
/// from the same struct with the same serializer, so after the first session nearly every
/// session matches. It is learned from the body itself, never assumed: any key order and any
/// consistent whitespace works, and a session that matches no template is read the general way.
pub(super) struct Template<'a> {
    pub(super) slots: Vec<(Glue<'a>, Field)>,
    pub(super) close: Glue<'a>,
}

/// A run of bytes the template expects verbatim, with its first 16 bytes pre-packed into two
/// masked words so that the usual keys (`,"QbufFree":` is 12 bytes) compare without a loop.
pub(super) struct Glue<'a> {
    bytes: &'a [u8],
    mask: [u64; 2],
    word: [u64; 2],
}

impl<'a> Glue<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        let mut padded = [0u8; 16];
        let mut ones = [0u8; 16];
        for ((p, o), &b) in padded.iter_mut().zip(ones.iter_mut()).zip(bytes) {
            *p = b;
            *o = 0xff;
        }
        Glue {
            bytes,
            mask: [word(&ones, 0), word(&ones, 8)],
            word: [word(&padded, 0), word(&padded, 8)],
        }
    }

    pub(super) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether `b` holds these bytes at `i`.
    #[inline]
    pub(super) fn at(&self, b: &[u8], i: usize) -> bool {
        if self.bytes.len() <= 16 {
            if let Some(w) = b.get(i..i + 16) {
                return word(w, 0) & self.mask[0] == self.word[0]
                    && word(w, 8) & self.mask[1] == self.word[1];
            }
        }
        b.get(i..i + self.bytes.len()) == Some(self.bytes)
    }
}

/// A text value read by a template, until its session is accepted.
#[derive(Debug)]
pub(super) enum Label<'a> {
    /// The bytes between the quotes (`b""` for an absent or `null` value): counted per
    /// distinct value and UTF-8-checked once per value, in [`Tally::flush`].
    Raw(&'a [u8]),
    /// A value written with escapes, unescaped and checked on the spot (rare: a name with a
    /// quote, or non-ASCII written as `\uXXXX`).
    Decoded(String),
}

impl Default for Label<'_> {
    fn default() -> Self {
        Label::Raw(b"")
    }
}

impl<'a> Scanner<'a> {
    /// One session read against template `t`: each key (with the punctuation and whitespace
    /// around it) must be byte for byte the template's, and each value in a form the template
    /// path reads (see [`Scanner::template_value`]). On the first difference it returns `false`
    /// having consumed and counted nothing, and the session is read the general way.
    ///
    /// This is where the scanner earns its speed: a key costs two masked word compares instead
    /// of a scan for its closing quote and a match on its text, and a label is only sliced and
    /// counted ([`Tally`]).
    #[inline]
    pub(super) fn session_by_template(&mut self, t: usize, fold: &mut Fold) -> bool {
        let Some(t) = self.templates.get(t) else {
            return false;
        };
        let b = self.b;
        let mut i = self.i;
        let mut texts: Texts<Label<'a>> = Texts::default();
        let mut ints = Ints::default();
        for (glue, field) in &t.slots {
            if !glue.at(b, i) {
                return false;
            }
            i += glue.len();
            match template_value(b, i, *field, &mut texts, &mut ints) {
                Some(next) => i = next,
                None => return false,
            }
        }
        if !t.close.at(b, i) {
            return false;
        }
        let flags = match &texts.flags {
            Label::Raw(raw) if raw.is_ascii() => parse_flag_bytes(raw),
            // The reference refuses a `Flags` or `Client` that is not UTF-8; the general path
            // will say so. (The other labels are checked once per distinct value, by the tally.)
            Label::Raw(raw) => match std::str::from_utf8(raw) {
                Ok(s) => parse_flags(s),
                Err(_) => return false,
            },
            Label::Decoded(s) => parse_flags(s),
        };
        let client = match &texts.client {
            Label::Raw(raw) => match std::str::from_utf8(raw) {
                Ok(s) => s,
                Err(_) => return false,
            },
            Label::Decoded(s) => s.as_str(),
        };
        self.i = i + t.close.len();
        let f = ints.figures(flags);
        fold.add_client(client, f.idle, f.omem);
        fold.add_figures(&f);
        self.tally.count(texts, fold);
        true
    }
}

/// Reads the value of `field` at `i` in the forms the template path takes, and returns the index
/// after it; `None` for any other form (the general path reads it). The forms: for a figure, an
/// integer without fraction or exponent, or a digit string (`"12"`, `"-1"`); for a label, a
/// string; for a key the fold does not use, a string or such an integer; and `null` for any.
#[inline]
fn template_value<'a>(
    b: &'a [u8],
    i: usize,
    field: Field,
    texts: &mut Texts<Label<'a>>,
    ints: &mut Ints,
) -> Option<usize> {
    match field {
        Field::Int(f) => match quoted_or_plain_int(b, i) {
            Some((v, end)) => {
                *ints.get_mut(f) = Some(v);
                Some(end)
            }
            None => {
                *ints.get_mut(f) = None;
                null_end(b, i)
            }
        },
        Field::Text(f) => match b.get(i)? {
            b'"' => {
                if let Some(end) = plain_string_end(b, i + 1) {
                    *texts.get_mut(f) = Label::Raw(b.get(i + 1..end)?);
                    return Some(end + 1);
                }
                let (raw, end) = string_at(b, i + 1).ok()?;
                *texts.get_mut(f) = Label::Decoded(raw.text().ok()?.into_owned());
                Some(end)
            }
            _ => {
                *texts.get_mut(f) = Label::Raw(b"");
                null_end(b, i)
            }
        },
        Field::Other => plain_value_end(b, i).or_else(|| match b.get(i)? {
            b'"' => string_at(b, i + 1).ok().map(|(_, end)| end),
            _ => None,
        }),
    }
}
