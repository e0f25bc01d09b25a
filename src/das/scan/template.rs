//! The template path: sessions that repeat the layout of one read before, checked key by key
//! with masked word compares and read in their plain value forms.

use super::plain::{plain_string_end, plain_value_end, quoted_or_plain_int, word};
use super::Scanner;
use crate::das::answer::{Field, Ints, Texts};
use crate::snapshot::{parse_flag_bytes, Fold};

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

impl<'a> Scanner<'a> {
    /// One session read against template `t`: each key (with the punctuation and whitespace
    /// around it) must be byte for byte the template's, and each value in its plain form (a
    /// string without escapes, an integer without fraction or exponent, a digit string where
    /// the reference takes an integer from a string). Text labels are only sliced here and
    /// counted per distinct raw value; they are UTF-8-checked once per value in
    /// [`Tally::flush`]. On the first difference it returns `false` having consumed and counted
    /// nothing, and the session is read the general way.
    ///
    /// This is where the scanner earns its speed: a key costs two masked word compares instead
    /// of a scan for its closing quote and a match on its text.
    #[inline]
    pub(super) fn session_by_template(&mut self, t: usize, fold: &mut Fold) -> bool {
        let Some(t) = self.templates.get(t) else {
            return false;
        };
        let b = self.b;
        let mut i = self.i;
        let mut texts: Texts<&'a [u8]> = Texts::default();
        let mut ints = Ints::default();
        for (glue, field) in &t.slots {
            if !glue.at(b, i) {
                return false;
            }
            i += glue.len();
            let next = match *field {
                Field::Int(f) => quoted_or_plain_int(b, i).map(|(v, end)| {
                    *ints.get_mut(f) = Some(v);
                    end
                }),
                Field::Text(f) => {
                    if b.get(i) != Some(&b'"') {
                        return false;
                    }
                    plain_string_end(b, i + 1).map(|end| {
                        *texts.get_mut(f) = b.get(i + 1..end).unwrap_or_default();
                        end + 1
                    })
                }
                Field::Other => plain_value_end(b, i),
            };
            let Some(next) = next else {
                return false;
            };
            i = next;
        }
        if !t.close.at(b, i) {
            return false;
        }
        // The reference refuses a `Flags` that is not UTF-8; the general path will say so.
        if !texts.flags.is_ascii() && std::str::from_utf8(texts.flags).is_err() {
            return false;
        }
        self.i = i + t.close.len();
        fold.add_figures(&ints.figures(parse_flag_bytes(texts.flags)));
        self.tally.count(&texts);
        true
    }
}
