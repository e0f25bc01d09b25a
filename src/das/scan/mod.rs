//! A single-pass byte scanner for GetRedisAllSession answers: the fast path of
//! [`super::wire::decode`].
//!
//! It walks the body once, checking JSON syntax as it goes, and follows the lenient rules of the
//! serde reference decoder (`wire::decode_reference`) exactly. Two paths read a session:
//!
//! - The general path takes any JSON: keys matched as raw bytes, unused values skipped without
//!   looking inside strings beyond their ends, kept integers parsed inline, kept strings borrowed
//!   from the body (UTF-8-checked, unescaped only when they hold escapes).
//! - The template path reads the sessions that look like one read before. The service writes
//!   every session from one struct, so after the first session the keys, their order and the
//!   punctuation between them repeat byte for byte: each is checked with two masked word
//!   compares, each value is read in its plain form, and the text labels are only sliced and
//!   counted per distinct value ([`Tally`]), UTF-8-checked once per value instead of once per
//!   session. Any difference sends that one session to the general path, which learns its
//!   layout as a new template. This path is why decoding costs less than `serde_json` merely
//!   validating the same bytes (BENCHMARKS.md).
//!
//! Both paths know a session's fields only through the table of `das::answer`, which the
//! reference reads too: a new field is a row there.
//!
//! Every aggregate of the fold is a sum, a maximum or a count, so sessions read by either path,
//! and labels handed over in bulk at the end, give the fold the reference gets.
//!
//! Soundness contract: whenever the scanner returns `Some`, the reference would have produced the
//! same envelope and the same fold. The scanner is allowed to be *stricter* than the reference:
//! on anything it does not handle (a syntax error, a type the reference refuses, a raw control
//! character in a key, a lone surrogate, very deep nesting, duplicate `SourceStats` fields, an
//! array-shaped source entry) it gives up with `None`, and `decode` falls back to the reference,
//! which then produces the exact result or error. Bodies that are not answers are rare, so paying
//! for two passes there costs nothing that matters.
//!
//! # Layout
//! - this file: the tokens, the envelope, and the general path;
//! - `template`: the template path and the layouts it learns;
//! - `plain`: values in their plain forms, and the word-at-a-time byte search;
//! - `tally`: the label counter of the template path;
//! - `lenient`: the reference's lenient readings of numbers and escaped strings.

mod lenient;
mod plain;
mod tally;
mod template;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use self::lenient::{hex4, int_from_num, int_from_str, serde_number, str_from_num, RawStr};
use self::plain::{find_special, quoted_or_plain_int};
use self::tally::Tally;
use self::template::{Glue, Template};
use super::answer::{DataMeta, Envelope, Field, FieldSet, Ints, Texts};
use crate::snapshot::Fold;

/// The scanner gave up; the reference decoder decides.
struct Bail;

type R<T> = Result<T, Bail>;

/// Nesting deeper than this gives up (serde_json refuses at 128; staying below is conservative).
const MAX_DEPTH: u32 = 100;

/// Scans `body` into `fold`; `None` when the reference decoder must decide.
pub(crate) fn scan(body: &[u8], fold: &mut Fold) -> Option<Envelope> {
    scan_counting(body, fold).map(|(env, _)| env)
}

/// [`scan`], also saying how many sessions were read by a template (for the benchmark's
/// fast-path share and the tests that hold real answers to the fast path).
pub(crate) fn scan_counting(body: &[u8], fold: &mut Fold) -> Option<(Envelope, u64)> {
    let mut s = Scanner {
        b: body,
        i: 0,
        depth: 0,
        templates: Vec::new(),
        by_template: 0,
        tally: Tally::default(),
    };
    let env = s.envelope(fold).ok()?;
    s.ws();
    if s.i != body.len() {
        return None;
    }
    s.tally.flush(fold).ok()?;
    Some((env, s.by_template))
}

/// How many session layouts are remembered: enough for a service that leaves out an optional
/// field on some sessions, few enough that a session matching none costs little.
const TEMPLATES: usize = 4;

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    depth: u32,
    /// Layouts of recent sessions read the general way, most recently matched first; the next
    /// sessions are tried against them before the general path (see [`Template`]).
    templates: Vec<Template<'a>>,
    by_template: u64,
    /// Text labels of the sessions read by a template, counted per distinct raw value.
    tally: Tally<'a>,
}

impl<'a> Scanner<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// Skips whitespace and returns the next byte without consuming it.
    #[inline]
    fn next_token(&mut self) -> R<u8> {
        self.ws();
        self.peek().ok_or(Bail)
    }

    #[inline]
    fn eat(&mut self, c: u8) -> R<()> {
        if self.next_token()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(Bail)
        }
    }

    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth >= MAX_DEPTH {
            return Err(Bail);
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// After the opening quote: the string up to its closing quote (see [`string_at`]).
    #[inline]
    fn string(&mut self) -> R<RawStr<'a>> {
        let (raw, end) = string_at(self.b, self.i)?;
        self.i = end;
        Ok(raw)
    }

    /// A number token: checks the grammar serde_json checks and returns its bytes.
    fn number(&mut self) -> R<&'a [u8]> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(Bail);
                }
            }
            Some(b'1'..=b'9') => {
                self.i += 1;
                while let Some(b'0'..=b'9') = self.peek() {
                    self.i += 1;
                }
            }
            _ => return Err(Bail),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.digits()?;
        }
        self.b.get(start..self.i).ok_or(Bail)
    }

    fn digits(&mut self) -> R<()> {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        if self.i == start {
            Err(Bail)
        } else {
            Ok(())
        }
    }

    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Bail)
        }
    }

    /// Skips any value, as `IgnoredAny` does.
    fn skip(&mut self) -> R<()> {
        match self.next_token()? {
            b'"' => {
                self.i += 1;
                self.string().map(drop)
            }
            b'{' => {
                self.i += 1;
                self.enter()?;
                self.object(|s, _| s.skip())?;
                self.leave();
                Ok(())
            }
            b'[' => {
                self.i += 1;
                self.enter()?;
                self.array(|s| s.skip())?;
                self.leave();
                Ok(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            _ => Err(Bail),
        }
    }

    /// After `{`: calls `f` for each key (raw) with the scanner at its value.
    #[inline]
    fn object(&mut self, mut f: impl FnMut(&mut Self, RawStr<'a>) -> R<()>) -> R<()> {
        if self.next_token()? == b'}' {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.eat(b'"')?;
            let key = self.string()?;
            self.eat(b':')?;
            f(self, key)?;
            if self.after_item(b'}')? {
                return Ok(());
            }
        }
    }

    /// After a member or element: `,` (more follow: `false`) or `close` (consumed: `true`).
    #[inline]
    fn after_item(&mut self, close: u8) -> R<bool> {
        let c = self.next_token()?;
        if c == b',' || c == close {
            self.i += 1;
            Ok(c == close)
        } else {
            Err(Bail)
        }
    }

    /// After `[`: calls `f` with the scanner at each element.
    #[inline]
    fn array(&mut self, mut f: impl FnMut(&mut Self) -> R<()>) -> R<()> {
        if self.next_token()? == b']' {
            self.i += 1;
            return Ok(());
        }
        loop {
            f(self)?;
            if self.after_item(b']')? {
                return Ok(());
            }
        }
    }

    /// The reference's `LenientInt`.
    #[inline]
    fn int(&mut self) -> R<Option<i64>> {
        self.ws();
        // The forms real answers send: a plain integer, or a plain digit string ("12").
        if let Some((v, end)) = quoted_or_plain_int(self.b, self.i) {
            self.i = end;
            return Ok(Some(v));
        }
        match self.next_token()? {
            b'"' => {
                self.i += 1;
                let s = self.string()?;
                Ok(int_from_str(&s.text()?))
            }
            b'-' | b'0'..=b'9' => {
                let tok = self.number()?;
                Ok(int_from_num(serde_number(tok)?))
            }
            b't' => self.literal(b"true").map(|()| None),
            b'f' => self.literal(b"false").map(|()| None),
            b'n' => self.literal(b"null").map(|()| None),
            _ => Err(Bail),
        }
    }

    /// The reference's `LenientStr`.
    fn text(&mut self) -> R<Option<Cow<'a, str>>> {
        match self.next_token()? {
            b'"' => {
                self.i += 1;
                let s = self.string()?;
                s.text().map(Some)
            }
            b'-' | b'0'..=b'9' => {
                let tok = self.number()?;
                Ok(Some(Cow::Owned(str_from_num(serde_number(tok)?))))
            }
            b't' => self.literal(b"true").map(|()| Some(Cow::Borrowed("true"))),
            b'f' => self
                .literal(b"false")
                .map(|()| Some(Cow::Borrowed("false"))),
            b'n' => self.literal(b"null").map(|()| None),
            _ => Err(Bail),
        }
    }

    /// The reference's `LenientBool`.
    fn boolean(&mut self) -> R<Option<bool>> {
        match self.next_token()? {
            b'"' => {
                self.i += 1;
                let s = self.string()?;
                Ok(s.text()?.parse().ok())
            }
            b'-' | b'0'..=b'9' => {
                let tok = self.number()?;
                serde_number(tok)?;
                Ok(None)
            }
            b't' => self.literal(b"true").map(|()| Some(true)),
            b'f' => self.literal(b"false").map(|()| Some(false)),
            b'n' => self.literal(b"null").map(|()| None),
            b'[' => self.skip().map(|()| None),
            // The reference reads the keys of an object here as strings (UTF-8-checked, unlike
            // the keys of values it skips), so its error for a bad key differs: it decides.
            b'{' => Err(Bail),
            _ => Err(Bail),
        }
    }

    fn envelope(&mut self, fold: &mut Fold) -> R<Envelope> {
        let mut env = Envelope {
            code: None,
            message: None,
            success: None,
            data: None,
        };
        self.eat(b'{')?;
        self.enter()?;
        self.object(|s, key| {
            match &*key.text()? {
                "Code" => env.code = s.text()?.map(Cow::into_owned),
                "Message" => env.message = s.text()?.map(Cow::into_owned),
                "Success" => env.success = s.boolean()?,
                "Data" => env.data = Some(s.data(fold)?),
                _ => s.skip()?,
            }
            Ok(())
        })?;
        self.leave();
        Ok(env)
    }

    fn data(&mut self, fold: &mut Fold) -> R<Option<DataMeta>> {
        match self.next_token()? {
            b'n' => self.literal(b"null").map(|()| None),
            b'{' => {
                self.i += 1;
                self.enter()?;
                let mut meta = DataMeta::default();
                self.object(|s, key| {
                    match &*key.text()? {
                        "Sessions" => s.sessions(fold)?,
                        "SourceStats" => s.sources(fold)?,
                        "Total" => meta.total = s.int()?.map(|v| v.max(0) as u64),
                        "Timestamp" => meta.timestamp_ms = s.int()?,
                        _ => s.skip()?,
                    }
                    Ok(())
                })?;
                self.leave();
                Ok(Some(meta))
            }
            _ => Err(Bail),
        }
    }

    fn sessions(&mut self, fold: &mut Fold) -> R<()> {
        match self.next_token()? {
            b'n' => self.literal(b"null"),
            b'[' => {
                self.i += 1;
                self.enter()?;
                self.array(|s| {
                    s.ws();
                    for t in 0..s.templates.len() {
                        if s.session_by_template(t, fold) {
                            if t > 0 {
                                s.templates.swap(0, t);
                            }
                            s.by_template += 1;
                            return Ok(());
                        }
                    }
                    s.session(fold)
                })?;
                self.leave();
                Ok(())
            }
            _ => Err(Bail),
        }
    }

    /// One session, the general way: any key order, whitespace, escapes and lenient value
    /// forms. Afterwards its layout is remembered as a template for the next sessions.
    fn session(&mut self, fold: &mut Fold) -> R<()> {
        let start = self.i;
        self.eat(b'{')?;
        self.enter()?;
        let mut texts: Texts<Option<Cow<'a, str>>> = Texts::default();
        let mut ints = Ints::default();
        let mut slots = Vec::new();
        let mut learnable = true;
        let mut seen = FieldSet::default();
        let mut value_end = start;
        if self.next_token()? == b'}' {
            self.i += 1;
        } else {
            loop {
                self.eat(b'"')?;
                let key = self.string()?;
                self.eat(b':')?;
                self.ws();
                let field = Field::from_key(&key.key()?);
                // A key given twice is read twice by the reference, which checks both values;
                // the template path keeps only the last text, so such layouts are not learned.
                learnable &= !key.escaped & seen.insert(field);
                let glue = self.b.get(value_end..self.i).ok_or(Bail)?;
                slots.push((Glue::new(glue), field));
                match field {
                    Field::Text(f) => *texts.get_mut(f) = self.text()?,
                    Field::Int(f) => *ints.get_mut(f) = self.int()?,
                    Field::Other => self.skip()?,
                }
                value_end = self.i;
                if self.after_item(b'}')? {
                    break;
                }
            }
        }
        self.leave();
        let close = Glue::new(self.b.get(value_end..self.i).ok_or(Bail)?);
        if learnable {
            self.templates.truncate(TEMPLATES - 1);
            self.templates.insert(0, Template { slots, close });
        }
        let texts = Texts {
            node_id: texts.node_id.as_deref().unwrap_or(""),
            cmd: texts.cmd.as_deref().unwrap_or(""),
            name: texts.name.as_deref().unwrap_or(""),
            flags: texts.flags.as_deref().unwrap_or(""),
            client: texts.client.as_deref().unwrap_or(""),
        };
        texts.add_session(&ints, fold);
        Ok(())
    }

    fn sources(&mut self, fold: &mut Fold) -> R<()> {
        match self.next_token()? {
            b'n' => self.literal(b"null"),
            b'[' => {
                self.i += 1;
                self.enter()?;
                self.array(|s| s.source(fold))?;
                self.leave();
                Ok(())
            }
            _ => Err(Bail),
        }
    }

    /// One `SourceStats` entry. The reference's derived struct also accepts an array and refuses
    /// duplicate fields: both give up here.
    fn source(&mut self, fold: &mut Fold) -> R<()> {
        self.eat(b'{')?;
        self.enter()?;
        let (mut key, mut count): (Option<Option<Cow<'a, str>>>, Option<Option<i64>>) =
            (None, None);
        self.object(|s, k| {
            match &*k.text()? {
                "Key" if key.is_none() => key = Some(s.text()?),
                "Count" if count.is_none() => count = Some(s.int()?),
                "Key" | "Count" => return Err(Bail),
                _ => s.skip()?,
            }
            Ok(())
        })?;
        self.leave();
        let count = count.flatten().map_or(0, |v| v.max(0) as u64);
        fold.add_source(key.flatten().as_deref().unwrap_or(""), count);
        Ok(())
    }
}

/// The string whose contents start at `i` (after its opening quote), and the index after its
/// closing quote: escapes are checked and raw control characters refused, as serde_json does
/// for every string, kept or skipped.
#[inline]
fn string_at(b: &[u8], start: usize) -> R<(RawStr<'_>, usize)> {
    let mut i = start;
    let mut escaped = false;
    loop {
        i += find_special(b.get(i..).ok_or(Bail)?).ok_or(Bail)?;
        match b.get(i) {
            Some(b'"') => {
                let raw = b.get(start..i).ok_or(Bail)?;
                return Ok((RawStr { raw, escaped }, i + 1));
            }
            Some(b'\\') => {}
            // A raw control character.
            _ => return Err(Bail),
        }
        // A backslash: check the escape's syntax.
        escaped = true;
        match b.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
            Some(b'u') => {
                hex4(b.get(i + 2..).ok_or(Bail)?)?;
                i += 6;
            }
            _ => return Err(Bail),
        }
    }
}
