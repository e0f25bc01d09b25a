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

use std::borrow::Cow;
use std::hash::Hasher;

use serde::de::{self, Deserializer, Visitor};

use super::wire::{DataMeta, Envelope};

use crate::snapshot::{parse_flag_bytes, parse_flags, Figures, Fold, FxHasher};

/// The scanner gave up; the reference decoder decides.
struct Bail;

type R<T> = Result<T, Bail>;

/// Nesting deeper than this gives up (serde_json refuses at 128; staying below is conservative).
const MAX_DEPTH: u32 = 100;

/// Scans `body` into `fold`; `None` when the reference decoder must decide.
pub(crate) fn scan(body: &[u8], fold: &mut Fold) -> Option<Envelope> {
    scan_counting(body, fold).map(|(env, _)| env)
}

/// [`scan`], also saying how many sessions were read by a template (for the tests, which check
/// that real answers take the fast path).
fn scan_counting(body: &[u8], fold: &mut Fold) -> Option<(Envelope, u64)> {
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

/// A JSON number as serde_json hands it to a visitor.
#[derive(Clone, Copy)]
enum Num {
    I(i64),
    U(u64),
    F(f64),
}

/// Parses one number token exactly as serde_json does (same float algorithm, same range errors),
/// by asking serde_json itself. Only used off the fast path.
fn serde_number(tok: &[u8]) -> R<Num> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Num;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
            Ok(Num::I(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
            Ok(Num::U(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
            Ok(Num::F(v))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(tok);
    let n = (&mut de).deserialize_any(V).map_err(|_| Bail)?;
    de.end().map_err(|_| Bail)?;
    Ok(n)
}

/// `LenientInt` from a number (the reference's `visit_i64`/`visit_u64`/`visit_f64`).
fn int_from_num(n: Num) -> Option<i64> {
    match n {
        Num::I(v) => Some(v),
        Num::U(v) => Some(i64::try_from(v).unwrap_or(i64::MAX)),
        Num::F(v) => v.is_finite().then_some(v as i64),
    }
}

/// `LenientInt` from a string (the reference's `visit_str`).
fn int_from_str(v: &str) -> Option<i64> {
    let t = v.trim();
    t.parse::<i64>().ok().or_else(|| {
        t.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| f as i64)
    })
}

/// `LenientStr` from a number (the reference's `to_string` of what serde_json visited).
fn str_from_num(n: Num) -> String {
    match n {
        Num::I(v) => v.to_string(),
        Num::U(v) => v.to_string(),
        Num::F(v) => v.to_string(),
    }
}

fn hex(b: u8) -> Option<u16> {
    match b {
        b'0'..=b'9' => Some(u16::from(b - b'0')),
        b'a'..=b'f' => Some(u16::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u16::from(b - b'A' + 10)),
        _ => None,
    }
}

fn hex4(s: &[u8]) -> R<u16> {
    let mut n = 0u16;
    for &c in s.get(..4).ok_or(Bail)? {
        n = (n << 4) | hex(c).ok_or(Bail)?;
    }
    Ok(n)
}

/// Unescapes the inside of a string whose escapes are known to be well-formed. A lone surrogate
/// gives up (the reference refuses it in validated strings; in keys it would accept it, and
/// giving up is the safe side).
fn unescape(raw: &[u8]) -> R<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *raw.get(i + 1).ok_or(Bail)?;
        i += 2;
        let ch = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let n = hex4(raw.get(i..).ok_or(Bail)?)?;
                i += 4;
                let cp = match n {
                    0xD800..=0xDBFF => {
                        if raw.get(i..i + 2) != Some(b"\\u") {
                            return Err(Bail);
                        }
                        let n2 = hex4(raw.get(i + 2..).ok_or(Bail)?)?;
                        if !(0xDC00..=0xDFFF).contains(&n2) {
                            return Err(Bail);
                        }
                        i += 6;
                        ((u32::from(n - 0xD800) << 10) | u32::from(n2 - 0xDC00)) + 0x1_0000
                    }
                    0xDC00..=0xDFFF => return Err(Bail),
                    _ => u32::from(n),
                };
                char::from_u32(cp).ok_or(Bail)?
            }
            _ => return Err(Bail),
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    Ok(out)
}

/// A raw string token: the bytes between the quotes, and whether they hold escapes.
struct RawStr<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> RawStr<'a> {
    /// The string as the reference's validated `&str` would see it.
    fn text(&self) -> R<Cow<'a, str>> {
        if self.escaped {
            String::from_utf8(unescape(self.raw)?)
                .map(Cow::Owned)
                .map_err(|_| Bail)
        } else {
            std::str::from_utf8(self.raw)
                .map(Cow::Borrowed)
                .map_err(|_| Bail)
        }
    }

    /// The key bytes after unescaping (keys are matched as bytes).
    fn key(&self) -> R<Cow<'a, [u8]>> {
        if self.escaped {
            unescape(self.raw).map(Cow::Owned)
        } else {
            Ok(Cow::Borrowed(self.raw))
        }
    }
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

    /// After the opening quote: finds the closing one, checking escapes and refusing raw
    /// control characters as serde_json does for every string.
    #[inline]
    fn string(&mut self) -> R<RawStr<'a>> {
        let start = self.i;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..).ok_or(Bail)?;
            self.i += find_special(rest).ok_or(Bail)?;
            match self.peek() {
                Some(b'"') => {
                    let raw = self.b.get(start..self.i).ok_or(Bail)?;
                    self.i += 1;
                    return Ok(RawStr { raw, escaped });
                }
                Some(b'\\') => {}
                // A raw control character.
                _ => return Err(Bail),
            }
            // A backslash: check the escape's syntax.
            escaped = true;
            match self.b.get(self.i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                Some(b'u') => {
                    hex4(self.b.get(self.i + 2..).ok_or(Bail)?)?;
                    self.i += 6;
                }
                _ => return Err(Bail),
            }
        }
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
        let mut text: [Option<Cow<'a, str>>; TEXT_FIELDS] = Default::default();
        let mut n: [Option<i64>; INT_FIELDS] = [None; INT_FIELDS];
        let mut slots = Vec::new();
        let mut learnable = true;
        let mut seen = 0u32;
        let mut value_end = start;
        if self.next_token()? == b'}' {
            self.i += 1;
        } else {
            loop {
                self.eat(b'"')?;
                let key = self.string()?;
                self.eat(b':')?;
                self.ws();
                let field = field(&key)?;
                // A key given twice is read twice by the reference, which checks both values;
                // the template path keeps only the last text, so such layouts are not learned.
                let bit = match field {
                    Field::Text(k) => 1u32 << k,
                    Field::Int(k) => 1 << (TEXT_FIELDS + k),
                    Field::Other => 0,
                };
                learnable &= !key.escaped && seen & bit == 0;
                seen |= bit;
                let glue = self.b.get(value_end..self.i).ok_or(Bail)?;
                slots.push((Glue::new(glue), field));
                match field {
                    Field::Text(k) => {
                        let v = self.text()?;
                        if let Some(t) = text.get_mut(k) {
                            *t = v;
                        }
                    }
                    Field::Int(k) => {
                        let v = self.int()?;
                        if let Some(x) = n.get_mut(k) {
                            *x = v;
                        }
                    }
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
        let [node, cmd, name, flags, client] = text;
        let flags = flags.as_deref().unwrap_or("");
        let f = figures(&n, parse_flags(flags));
        fold.add_client(client.as_deref().unwrap_or(""), f.idle, f.omem);
        fold.add_figures(&f);
        fold.add_node(node.as_deref().unwrap_or(""), 1);
        fold.add_command(cmd.as_deref().unwrap_or(""), 1);
        fold.add_client_name(name.as_deref().unwrap_or(""), 1);
        Ok(())
    }

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
    fn session_by_template(&mut self, t: usize, fold: &mut Fold) -> bool {
        let Some(t) = self.templates.get(t) else {
            return false;
        };
        let b = self.b;
        let mut i = self.i;
        let mut text: [&'a [u8]; TEXT_FIELDS] = [b""; TEXT_FIELDS];
        let mut n: [Option<i64>; INT_FIELDS] = [None; INT_FIELDS];
        for (glue, field) in &t.slots {
            if !glue.at(b, i) {
                return false;
            }
            i += glue.len();
            let next = match *field {
                Field::Int(k) => quoted_or_plain_int(b, i).map(|(v, j)| {
                    if let Some(x) = n.get_mut(k) {
                        *x = Some(v);
                    }
                    j
                }),
                Field::Text(k) => {
                    if b.get(i) != Some(&b'"') {
                        return false;
                    }
                    plain_string_end(b, i + 1).map(|end| {
                        if let (Some(t), Some(raw)) = (text.get_mut(k), b.get(i + 1..end)) {
                            *t = raw;
                        }
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
        let [node, cmd, name, flags, client] = text;
        // The reference refuses a `Flags` or `Client` that is not UTF-8; the general path will
        // say so.
        let utf8 = |b: &[u8]| b.is_ascii() || std::str::from_utf8(b).is_ok();
        if !utf8(flags) || !utf8(client) {
            return false;
        }
        self.i = i + t.close.len();
        let f = figures(&n, parse_flag_bytes(flags));
        if fold.tracks_clients() {
            fold.add_client(std::str::from_utf8(client).unwrap_or(""), f.idle, f.omem);
        }
        fold.add_figures(&f);
        self.tally.nodes.add(node);
        self.tally.commands.add(cmd);
        self.tally.names.add(name);
        true
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

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Index of the first `"`, `\\` or control character, eight bytes at a time after the first 16.
#[inline]
fn find_special(s: &[u8]) -> Option<usize> {
    // Most strings here are short (keys, commands, addresses): a byte loop finds those fastest.
    for (i, &c) in s.iter().take(16).enumerate() {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return Some(i);
        }
    }
    let mut i = 16;
    let mut chunks = s.get(16..)?.chunks_exact(8);
    for chunk in &mut chunks {
        let Ok(arr) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let m = special_bytes(u64::from_le_bytes(arr));
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| i + p)
}

/// A session field the fold uses.
#[derive(Clone, Copy)]
enum Field {
    /// Index into the text slots: `NodeId`, `Cmd`, `Name`, `Flags`, `Client`.
    Text(usize),
    /// Index into the integer slots (`Db` .. `Age`).
    Int(usize),
    Other,
}

/// How many text slots a session has (`NodeId` .. `Client`).
const TEXT_FIELDS: usize = 5;

/// How many integer slots a session has (`Db` .. `Age`).
const INT_FIELDS: usize = 11;

/// Matches a session key as bytes, after unescaping (rare) as the reference's raw key does.
#[inline]
fn field(key: &RawStr<'_>) -> R<Field> {
    let owned;
    let k: &[u8] = if key.escaped {
        owned = key.key()?;
        &owned
    } else {
        key.raw
    };
    Ok(match k {
        b"NodeId" => Field::Text(0),
        b"Cmd" => Field::Text(1),
        b"Name" => Field::Text(2),
        b"Flags" => Field::Text(3),
        b"Client" => Field::Text(4),
        b"Db" => Field::Int(0),
        b"Sub" => Field::Int(1),
        b"Psub" => Field::Int(2),
        b"Multi" => Field::Int(3),
        b"Qbuf" => Field::Int(4),
        b"QbufFree" => Field::Int(5),
        b"Obl" => Field::Int(6),
        b"Oll" => Field::Int(7),
        b"Omem" => Field::Int(8),
        b"Idle" => Field::Int(9),
        b"Age" => Field::Int(10),
        _ => Field::Other,
    })
}

/// A session's integer slots as the fold takes them (the reference's defaults for absent or
/// null values: no db, `Multi` -1, everything else 0, negatives as 0).
fn figures(n: &[Option<i64>; INT_FIELDS], flags: u32) -> Figures {
    let nn = |v: Option<i64>| v.map_or(0, |v| v.max(0) as u64);
    let [db, sub, psub, multi, qbuf, qbuf_free, obl, oll, omem, idle, age] = *n;
    Figures {
        db,
        flags,
        sub: nn(sub),
        psub: nn(psub),
        multi: multi.unwrap_or(-1),
        qbuf: nn(qbuf),
        qbuf_free: nn(qbuf_free),
        obl: nn(obl),
        oll: nn(oll),
        omem: nn(omem),
        idle: nn(idle),
        age: nn(age),
    }
}

/// The layout of a session as the service writes it: for each key in order, the bytes from
/// the end of the previous value (or the session's `{`) to the start of this key's value, and
/// what the key means; then the bytes that close the session. The service writes every session
/// from the same struct with the same serializer, so after the first session nearly every
/// session matches. It is learned from the body itself, never assumed: any key order and any
/// consistent whitespace works, and a session that matches no template is read the general way.
struct Template<'a> {
    slots: Vec<(Glue<'a>, Field)>,
    close: Glue<'a>,
}

/// A run of bytes the template expects verbatim, with its first 16 bytes pre-packed into two
/// masked words so that the usual keys (`,"QbufFree":` is 12 bytes) compare without a loop.
struct Glue<'a> {
    bytes: &'a [u8],
    mask: [u64; 2],
    word: [u64; 2],
}

impl<'a> Glue<'a> {
    fn new(bytes: &'a [u8]) -> Self {
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

    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether `b` holds these bytes at `i`.
    #[inline]
    fn at(&self, b: &[u8], i: usize) -> bool {
        if self.bytes.len() <= 16 {
            if let Some(w) = b.get(i..i + 16) {
                return word(w, 0) & self.mask[0] == self.word[0]
                    && word(w, 8) & self.mask[1] == self.word[1];
            }
        }
        b.get(i..i + self.bytes.len()) == Some(self.bytes)
    }
}

/// The little-endian word at `b[i..i + 8]` (0 past the end, which callers rule out).
#[inline]
fn word(b: &[u8], i: usize) -> u64 {
    b.get(i..i + 8)
        .and_then(|w| <[u8; 8]>::try_from(w).ok())
        .map_or(0, u64::from_le_bytes)
}

/// An integer in the forms real answers use: a plain JSON integer, or a string of 1 to 18
/// digits (`"Age":"12"`). Returns the value and the index after it.
#[inline]
fn quoted_or_plain_int(b: &[u8], i: usize) -> Option<(i64, usize)> {
    if b.get(i) != Some(&b'"') {
        return plain_int_at(b, i);
    }
    let first = i + 1;
    let mut j = first;
    let mut v: i64 = 0;
    while let Some(&c) = b.get(j) {
        let x = c.wrapping_sub(b'0');
        if x > 9 || j - first == 18 {
            break;
        }
        v = v * 10 + i64::from(x);
        j += 1;
    }
    (j > first && b.get(j) == Some(&b'"')).then_some((v, j + 1))
}

/// An optional minus and 1 to 18 digits, no leading zero, not followed by a fraction or an
/// exponent: the value and the index after it. Anything else is `None` (serde_json's own
/// number parsing decides those, off the fast path).
#[inline]
fn plain_int_at(b: &[u8], i: usize) -> Option<(i64, usize)> {
    let neg = b.get(i) == Some(&b'-');
    let first = i + usize::from(neg);
    let lead = b.get(first)?.wrapping_sub(b'0');
    let mut j = first + 1;
    let v = match lead {
        // Most figures of a session are 0; a leading zero must stand alone.
        0 => {
            if let Some(b'0'..=b'9') = b.get(j) {
                return None;
            }
            0
        }
        1..=9 => {
            let mut v = i64::from(lead);
            while let Some(&c) = b.get(j) {
                let x = c.wrapping_sub(b'0');
                if x > 9 {
                    break;
                }
                if j - first == 18 {
                    // A 19th digit may not fit.
                    return None;
                }
                v = v * 10 + i64::from(x);
                j += 1;
            }
            v
        }
        _ => return None,
    };
    if let Some(b'.' | b'e' | b'E') = b.get(j) {
        return None;
    }
    Some((if neg { -v } else { v }, j))
}

/// The index of the closing quote of a string whose contents start at `i`, if it holds no
/// escape and no control character (so its bytes are its value).
#[inline]
fn plain_string_end(b: &[u8], mut i: usize) -> Option<usize> {
    while let Some(w) = b.get(i..i + 8) {
        let m = special_bytes(word(w, 0));
        if m != 0 {
            let k = i + (m.trailing_zeros() / 8) as usize;
            return (b.get(k) == Some(&b'"')).then_some(k);
        }
        i += 8;
    }
    loop {
        match *b.get(i)? {
            b'"' => return Some(i),
            b'\\' | 0..=0x1f => return None,
            _ => i += 1,
        }
    }
}

/// The end of a value the fold does not use, when it is a plain string or integer; `None`
/// sends the session to the general path (which skips anything).
#[inline]
fn plain_value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => plain_string_end(b, i + 1).map(|end| end + 1),
        _ => plain_int_at(b, i).map(|(_, j)| j),
    }
}

/// High bit set in each byte of `x` that is `"`, `\\` or a control character, possibly also in
/// bytes above the first such one (the classic "has a zero byte" test can carry upwards, never
/// downwards), so the lowest flagged byte (little-endian) is exact.
#[inline]
fn special_bytes(x: u64) -> u64 {
    let q = x ^ (ONES * u64::from(b'"'));
    let bs = x ^ (ONES * u64::from(b'\\'));
    ((q.wrapping_sub(ONES) & !q)
        | (bs.wrapping_sub(ONES) & !bs)
        | (x.wrapping_sub(ONES * 0x20) & !x))
        & HIGH
}

/// The text labels of the sessions read by the template, per distinct raw value.
#[derive(Default)]
struct Tally<'a> {
    nodes: Counter<'a>,
    commands: Counter<'a>,
    names: Counter<'a>,
}

impl Tally<'_> {
    /// Hands each distinct value to the fold once, with its count. A value that is not UTF-8
    /// gives up: the reference refuses the body, and falling back lets it say so.
    fn flush(&self, fold: &mut Fold) -> R<()> {
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
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use serde_json::Value;

    use super::*;
    use crate::das::wire::tests::apply_edits;
    use crate::das::wire::{decode, decode_reference, DecodeError};
    use crate::snapshot::{Limits, Snapshot};

    /// The scanner alone, without the fallback: `None` when it gives up.
    fn scan_only(body: &[u8]) -> Option<Result<Snapshot, DecodeError>> {
        let mut fold = Fold::new();
        let env = scan(body, &mut fold)?;
        // Same conclusion as `decode`: feed the envelope through the public path by rebuilding
        // the result the way `conclude` does.
        Some(crate::das::wire::conclude_for_tests(
            env,
            fold,
            &Limits::default(),
        ))
    }

    /// The scanner never disagrees with the reference: when it answers, the answer (snapshot or
    /// error, messages included) is the reference's; `decode` always equals the reference.
    fn same(body: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
        let reference = decode_reference(body, &Limits::default());
        if let Some(fast) = scan_only(body) {
            proptest::prop_assert_eq!(
                &fast,
                &reference,
                "scanner vs reference on {:?}",
                String::from_utf8_lossy(body)
            );
        }
        proptest::prop_assert_eq!(decode(body, &Limits::default()), reference);
        Ok(())
    }

    fn simulated(seed: u64, count: usize) -> Vec<u8> {
        let sessions = crate::simulator::data::sessions(seed, "r-scan", seed % 5, count);
        crate::simulator::data::answer(&sessions, count as u64, 1_700_000_000_000, "SCAN")
    }

    fn ws(rng: &mut SmallRng, out: &mut String) {
        if rng.random_ratio(1, 4) {
            for _ in 0..rng.random_range(1..4) {
                out.push([' ', '\n', '\r', '\t'][rng.random_range(0..4)]);
            }
        }
    }

    /// A JSON string literal with some characters written as (valid) escapes.
    fn string_lit(rng: &mut SmallRng, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c if rng.random_ratio(1, 12) => {
                    let mut buf = [0u16; 2];
                    for u in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{u:04X}"));
                    }
                }
                '/' if rng.random_bool(0.5) => out.push_str("\\/"),
                c => out.push(c),
            }
        }
        out.push('"');
    }

    const NASTY: &[&str] = &[
        "a\"b\\c\n",
        "é中文😀",
        "tab\there",
        "",
        " 12 ",
        "1e3",
        "-7",
        "true",
        "x/y",
    ];

    /// Writes `v` as JSON with hostile but valid variations: numbers as strings (and as floats),
    /// numeric strings as numbers, nulls, escapes, unicode, unknown nested fields, shuffled keys,
    /// whitespace everywhere.
    fn render(rng: &mut SmallRng, v: &Value, out: &mut String) {
        ws(rng, out);
        match v {
            Value::Object(m) => {
                out.push('{');
                let mut entries: Vec<(&String, &Value)> = m.iter().collect();
                if rng.random_ratio(1, 2) {
                    for i in (1..entries.len()).rev() {
                        entries.swap(i, rng.random_range(0..=i));
                    }
                }
                let unknown: Value =
                    serde_json::json!({"a": [1, {"b": null, "c": "\u{e9}\\"}], "d": -1.5e-3});
                let mut first = true;
                let mut write = |rng: &mut SmallRng, k: &str, v: &Value, out: &mut String| {
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    ws(rng, out);
                    string_lit(rng, k, out);
                    ws(rng, out);
                    out.push(':');
                    render(rng, v, out);
                    ws(rng, out);
                };
                if rng.random_ratio(1, 5) {
                    write(rng, "Unknown", &unknown, out);
                }
                for (k, v) in entries {
                    write(rng, k, v, out);
                }
                if rng.random_ratio(1, 5) {
                    write(rng, "Zz", &unknown, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, e) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    render(rng, e, out);
                    ws(rng, out);
                }
                out.push(']');
            }
            Value::String(s) => match rng.random_range(0..20) {
                0 => out.push_str("null"),
                1 if s.trim().parse::<i64>().is_ok() => out.push_str(s.trim()),
                2 => {
                    let nasty = NASTY[rng.random_range(0..NASTY.len())];
                    string_lit(rng, nasty, out)
                }
                3 => out.push_str(&rng.random_range(-5..100_000).to_string()),
                _ => string_lit(rng, s, out),
            },
            Value::Number(n) => match rng.random_range(0..20) {
                0 => out.push_str("null"),
                1 => out.push_str(&format!("\"{n}\"")),
                2 => out.push_str(&format!("{n}.0")),
                3 => out.push_str(&format!("{n}e0")),
                4 => out.push_str(&format!("\" {n} \"")),
                5 => out.push_str("true"),
                6 => out.push_str(&format!("\"{n}.5\"")),
                7 => out.push_str("\"x\""),
                8 => out.push_str("-0"),
                9 => out.push_str("123456789012345678901234"),
                _ => out.push_str(&n.to_string()),
            },
            Value::Bool(b) => match rng.random_range(0..4) {
                0 => out.push_str(&format!("\"{b}\"")),
                _ => out.push_str(&b.to_string()),
            },
            Value::Null => out.push_str("null"),
        }
    }

    fn hostile(seed: u64, count: usize) -> Vec<u8> {
        let v: Value = serde_json::from_slice(&simulated(seed, count)).unwrap();
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut out = String::new();
        render(&mut rng, &v, &mut out);
        ws(&mut rng, &mut out);
        out.into_bytes()
    }

    #[test]
    fn edge_cases_agree_with_the_reference() {
        let deep = |n: usize| {
            format!(
                r#"{{"Data":{{"Sessions":[],"X":{}{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        let mut bodies: Vec<String> = vec![
            deep(90),
            deep(97),
            deep(124),
            deep(125),
            deep(126),
            deep(200),
            r#"{"Data":{"Sessions":[{"Na\u006De":"x","\u0041ge":"5"}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Name":"\ud83d\ude00"}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Name":"\ud83d"}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Name":"\ude00"}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"N\ud83dme":"x"}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"X":"\ud83d"}]}}"#.into(),
            "{\"Data\":{\"Sessions\":[{\"Na\u{1}me\":1}]}}".into(),
            "{\"Data\":{\"Sessions\":[{\"Name\":\"a\u{1}\"}]}}".into(),
            "{\"Data\":{\"Sessions\":[{\"X\":\"a\u{1f}\"}]}}".into(),
            r#"{"Data":{"SourceStats":[["k",3]]}}"#.into(),
            r#"{"Data":{"SourceStats":[["k",3,4]]}}"#.into(),
            r#"{"Data":{"SourceStats":[{"Key":"a","Key":"b"}]}}"#.into(),
            r#"{"Data":{"SourceStats":[{"Count":1,"Count":2}]}}"#.into(),
            r#"{"Data":{"SourceStats":[{"K\u0065y":"a","Count":"2"}]}}"#.into(),
            r#"{"Data":{"SourceStats":[null]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Idle":1e999}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"X":1e999}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Name":1e999}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Name":-0,"Cmd":1.5,"Flags":1e2,"NodeId":18446744073709551616}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Idle":-0,"Age":18446744073709551615,"Db":-9223372036854775808,"Omem":99999999999999999999}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Idle":01}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Idle":1.}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Idle":-}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Idle":1e}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Idle":"1e}"}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Idle":" 0012 "}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Idle":"+5"}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Idle":"NaN"},{"Idle":"inf"},{"Idle":"1e400"}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Idle":true,"Age":false,"Db":null}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Idle":{}}]}}"#.into(),
            r#"{"Data":{"Sessions":[{"Name":[]}]}}"#.into(),
            r#"{"Data":{"Sessions":[{},]}}"#.into(),
            r#"{"Data":{"Sessions":[{"a":1,}]}}"#.into(),
            r#"{"Data":{"Sessions":{}}}"#.into(),
            r#"{"Data":{"Sessions":[null]}}"#.into(),
            r#"{"Data":{},"Data":null}"#.into(),
            r#"{"Data":{"Sessions":[{}]},"Data":{"Sessions":[{},{}],"Total":9}}"#.into(),
            r#"{"Code":200.0,"Data":{}}"#.into(),
            r#"{"Code":"OK","Data":{}}"#.into(),
            r#"{"Code":" Success ","Data":{}}"#.into(),
            r#"{"Code":true,"Data":{}}"#.into(),
            r#"{"Code":null,"Data":{}}"#.into(),
            r#"{"Code":"X","Code":null,"Data":{}}"#.into(),
            r#"{"Code":[],"Data":{}}"#.into(),
            r#"{"Code":"E","Message":12,"Data":{}}"#.into(),
            r#"{"Code":"E","Message":"\u00e9\n"}"#.into(),
            r#"{"Success":"false","Message":null,"Data":{}}"#.into(),
            r#"{"Success":"False","Data":{}}"#.into(),
            r#"{"Success":[1,{"a":2}],"Data":{}}"#.into(),
            r#"{"Success":1e999,"Data":{}}"#.into(),
            r#"{"Success":0,"Data":{}}"#.into(),
            r#"{"Data":{"Total":-5,"Timestamp":"12.9"}}"#.into(),
            r#"{"Data":{"Total":[]}}"#.into(),
            r#"{"D\u0061ta":{}}"#.into(),
            "\u{feff}{\"Data\":{}}".into(),
            " \n{\"Data\":{}} \t\r\n".into(),
            r#"{"Data":{}}x"#.into(),
            r#"{"Data":{}}{}"#.into(),
            r#"{"Data":{"X":tru}}"#.into(),
            r#"{"Data":{"X":nul}}"#.into(),
            r#"{"Data":{"X":"\x"}}"#.into(),
            r#"{"Data":{"X":"\u12"}}"#.into(),
            r#"{"Data":{"X":"\u12G4"}}"#.into(),
            r#"{"Data" {}}"#.into(),
            r#"{,"Data":{}}"#.into(),
            r#"{"Data":{},}"#.into(),
            r#"{Data:{}}"#.into(),
        ];
        bodies.push(String::from_utf8_lossy(&simulated(1, 50)).into_owned());
        for b in &bodies {
            same(b.as_bytes()).unwrap();
        }
        // Raw invalid UTF-8 in an ignored string and in a session key is fine for both; in a
        // kept string it is an error for both.
        for b in [
            &b"{\"Data\":{\"Sessions\":[{\"X\":\"\xff\"}]}}"[..],
            b"{\"Data\":{\"Sessions\":[{\"\xff\":1}]}}",
            b"{\"Data\":{\"Sessions\":[{\"Name\":\"\xff\"}]}}",
            b"{\"\xff\":1,\"Data\":{}}",
            // Found by the fuzz target: keys inside an object-valued `Success`.
            b"{\"Code\":\"200\",\"Success\":{\"Code\xaa\":\"201\",\"Sss\":\"true\"}}",
            b"{\"Success\":[{\"\xff\":1}],\"Data\":{}}",
            b"{\"Success\":{\"a\":[]},\"Data\":{}}",
        ] {
            same(b).unwrap();
        }
    }

    #[test]
    fn the_scanner_itself_takes_real_and_hostile_answers() {
        for seed in 0..40 {
            for body in [simulated(seed, 30), hostile(seed, 30)] {
                let reference = decode_reference(&body, &Limits::default());
                if reference.is_ok() {
                    assert_eq!(scan_only(&body), Some(reference), "seed {seed}");
                }
            }
        }
    }

    /// The keys of a simulated session, in the order the simulator writes them.
    const SESSION_KEYS: &[&str] = &[
        "Sub",
        "Psub",
        "Idle",
        "Flags",
        "Oll",
        "QbufFree",
        "Multi",
        "Omem",
        "Qbuf",
        "Name",
        "Obl",
        "Client",
        "Cmd",
        "Id",
        "Addr",
        "NodeId",
        "Age",
        "Db",
        "Events",
        "Fd",
        "ClientDesc",
    ];

    /// Value forms a later session may carry instead of the plain one: every lenient form the
    /// reference takes, and some it refuses.
    const VALUE_FORMS: &[&[u8]] = &[
        b"null",
        b"true",
        b"false",
        b"1.5",
        b"-0",
        b"1e3",
        b"-7",
        b"0",
        b"00",
        b"-",
        b"123456789012345678901234",
        b"9223372036854775807",
        b"1234567890123456789",
        b"\"12\"",
        b"\" 12\"",
        b"\"0012\"",
        b"\"\"",
        b"\"-5\"",
        b"\"1234567890123456789\"",
        b"\"x\\u0041y\"",
        b"\"\\ud83d\\ude00\"",
        "\"\u{e9}t\u{e9}\"".as_bytes(),
        b"\"\xff\xfe\"",
        b"\"a\x01b\"",
        b"\"N\\\"\"",
        b"\"GET\"",
        b"\"bP\"",
        b"\"unterminated",
        b"{\"a\":[1,{\"b\":null}]}",
        b"[]",
        b"[1,2",
        b"",
    ];

    /// Index of `"GET"` in [`VALUE_FORMS`].
    const PLAIN_STRING: usize = 25;

    /// Where each session of a compact simulated body starts and ends (`{` .. after `}`).
    fn session_spans(body: &[u8]) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        let mut from = 0;
        while let Some(p) = find(body, from, b"{\"Sub\":") {
            let end = body[p..]
                .iter()
                .position(|&c| c == b'}')
                .map_or(body.len(), |e| p + e + 1);
            spans.push((p, end));
            from = end;
        }
        spans
    }

    fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| from + p)
    }

    /// The span of `"key":value` in a compact simulated session (values are flat, strings
    /// unescaped), without its separator.
    fn field_span(
        body: &[u8],
        (start, end): (usize, usize),
        key: &str,
    ) -> Option<(usize, usize, usize)> {
        let k = find(body, start, format!("\"{key}\":").as_bytes()).filter(|&k| k < end)?;
        let v = k + key.len() + 3;
        let v_end = if body.get(v) == Some(&b'"') {
            v + 2 + body[v + 1..].iter().position(|&c| c == b'"')?
        } else {
            v + body[v..].iter().position(|&c| c == b',' || c == b'}')?
        };
        Some((k, v, v_end))
    }

    /// Applies one edit to the session `si` of a compact simulated body.
    fn mutate(body: &mut Vec<u8>, si: usize, op: u8, key: usize, form: usize, at: usize) {
        let spans = session_spans(body);
        let Some(&span) = spans.get(si % spans.len().max(1)) else {
            return;
        };
        let key = SESSION_KEYS[key % SESSION_KEYS.len()];
        let form = VALUE_FORMS[form % VALUE_FORMS.len()];
        let Some((k, v, v_end)) = field_span(body, span, key) else {
            return;
        };
        match op {
            // Another form of the value.
            0 => {
                body.splice(v..v_end, form.iter().copied());
            }
            // Whitespace after a `,` or `:` of the session.
            1 => {
                let seps: Vec<usize> = (span.0..span.1)
                    .filter(|&i| body[i] == b',' || body[i] == b':')
                    .collect();
                if let Some(&p) = seps.get(at % seps.len().max(1)) {
                    let ws: &[u8] = [&b" "[..], b"\n\t ", b"\r\n"][at % 3];
                    body.splice(p + 1..p + 1, ws.iter().copied());
                }
            }
            // The field swapped with the one after it.
            2 => {
                let next = v_end + 1;
                if body.get(v_end) == Some(&b',') {
                    let after = next
                        + body[next..]
                            .iter()
                            .position(|&c| c == b',' || c == b'}')
                            .unwrap_or(0);
                    let this = body[k..v_end].to_vec();
                    let that = body[next..after].to_vec();
                    let swapped = [that, b",".to_vec(), this].concat();
                    body.splice(k..after, swapped);
                }
            }
            // The field left out.
            3 => {
                if body.get(v_end) == Some(&b',') {
                    body.drain(k..=v_end);
                } else if body.get(k - 1) == Some(&b',') {
                    body.drain(k - 1..v_end);
                }
            }
            // The field given twice, the second time in another form.
            4 => {
                let dup = [&format!("\"{key}\":").into_bytes()[..], form, b","].concat();
                body.splice(k..k, dup);
            }
            // An unknown, nested field first.
            5 => {
                let extra = br#""Extra":{"a":[1,{"b":null}],"c":"\u0041"},"#;
                body.splice(span.0 + 1..span.0 + 1, extra.iter().copied());
            }
            // The key written with an escape.
            _ => {
                let esc = format!("\\u{:04x}", key.as_bytes()[0]);
                body.splice(k + 1..k + 2, esc.into_bytes());
            }
        }
    }

    #[test]
    fn real_answers_take_the_template_path() {
        for seed in 0..20 {
            for count in [1, 2, 50] {
                let body = simulated(seed, count);
                let (_, by_template) = scan_counting(&body, &mut Fold::new()).expect("scans");
                // The first session teaches the layout; every later one matches it.
                assert_eq!(by_template, count as u64 - 1, "seed {seed} count {count}");
            }
        }
    }

    #[test]
    fn plain_string_is_where_the_tests_think() {
        assert_eq!(VALUE_FORMS[PLAIN_STRING], b"\"GET\"");
    }

    #[test]
    fn every_form_of_every_field_agrees() {
        // Each key of a later session, in each value form, alone or repeated, and each other
        // single edit: the scanner agrees with the reference, and answers whenever it accepts.
        for key in 0..SESSION_KEYS.len() {
            for form in 0..VALUE_FORMS.len() {
                for op in [0, 4] {
                    // Session 1 teaches the edited layout with a plain value, session 2 carries
                    // the form under test in that layout.
                    let mut body = simulated(3, 4);
                    mutate(&mut body, 1, op, key, PLAIN_STRING, 0);
                    mutate(&mut body, 2, op, key, form, 0);
                    same(&body).unwrap_or_else(|e| panic!("{e}"));
                    if decode_reference(&body, &Limits::default()).is_ok() {
                        assert!(
                            scan_only(&body).is_some(),
                            "gave up on {}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                }
            }
            for op in [2, 3, 5, 6] {
                let mut body = simulated(3, 3);
                mutate(&mut body, 1, op, key, 0, 0);
                same(&body).unwrap_or_else(|e| panic!("{e}"));
                assert!(scan_only(&body).is_some_and(|r| r.is_ok()));
            }
        }
    }

    #[test]
    fn pretty_printed_answers_take_the_template_path() {
        // Indentation makes every key's run of bytes longer than the two packed words, so the
        // template compares them as slices.
        for seed in 0..10 {
            let value: Value = serde_json::from_slice(&simulated(seed, 30)).unwrap();
            let pretty = serde_json::to_vec_pretty(&value).unwrap();
            same(&pretty).unwrap();
            let (_, by_template) = scan_counting(&pretty, &mut Fold::new()).expect("scans");
            assert_eq!(by_template, 29, "seed {seed}");
        }
    }

    #[test]
    fn alternating_layouts_stay_on_templates() {
        // Every other session leaves `Name` out and writes `Age` as a number: two layouts, both
        // remembered, so only the first session of each is read the general way.
        let mut body = simulated(7, 40);
        for si in (1..40).step_by(2).rev() {
            mutate(&mut body, si, 3, 9, 0, 0);
        }
        let spans = session_spans(&body);
        for &span in spans.iter().skip(1).step_by(2).rev() {
            let (_, v, v_end) = field_span(&body, span, "Age").expect("has Age");
            let unquoted = body[v + 1..v_end - 1].to_vec();
            body.splice(v..v_end, unquoted);
        }
        same(&body).expect("agrees");
        let (_, by_template) = scan_counting(&body, &mut Fold::new()).expect("scans");
        assert_eq!(by_template, 38);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(256))]

        /// Later sessions that differ from the learned layout (other value forms, whitespace,
        /// key order, missing, repeated, unknown or escaped keys) are read exactly as the
        /// reference reads them, and the scanner answers whenever the reference accepts.
        #[test]
        fn session_mutations_agree(
            seed in 0u64..1000,
            count in 1usize..12,
            edits in proptest::collection::vec(
                (0usize..12, 0u8..7, 0usize..64, 0usize..64, 0usize..1000), 1..4),
        ) {
            let mut body = simulated(seed, count);
            for (si, op, key, form, at) in edits {
                mutate(&mut body, si, op, key, form, at);
            }
            same(&body)?;
            if decode_reference(&body, &Limits::default()).is_ok() {
                proptest::prop_assert!(scan_only(&body).is_some(), "gave up on {:?}", String::from_utf8_lossy(&body));
            }
        }

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

        #[test]
        fn real_answers_agree(seed in 0u64..10_000, count in 0usize..300) {
            let body = simulated(seed, count);
            same(&body)?;
            proptest::prop_assert!(scan_only(&body).is_some_and(|r| r.is_ok()));
        }

        #[test]
        fn hostile_answers_agree(seed in 0u64..1_000_000, count in 0usize..60) {
            let body = hostile(seed, count);
            same(&body)?;
            if decode_reference(&body, &Limits::default()).is_ok() {
                proptest::prop_assert!(scan_only(&body).is_some());
            }
        }

        #[test]
        fn edited_answers_agree(
            seed in 0u64..1000,
            count in 0usize..20,
            hostile_first in proptest::bool::ANY,
            edits in proptest::collection::vec((0usize..100_000, 0u8..3, proptest::num::u8::ANY), 1..6),
            cut in proptest::option::of(0usize..100_000),
        ) {
            let mut body = if hostile_first { hostile(seed, count) } else { simulated(seed, count) };
            // Half the edits write JSON punctuation, which reaches deeper paths.
            const PUNCT: &[u8] = b"{}[]\",:0-.e\\ntu\x01";
            let edits = edits.into_iter().map(|(pos, op, byte)| {
                let byte = if byte & 1 == 0 {
                    PUNCT[(byte as usize >> 1) % PUNCT.len()]
                } else {
                    byte
                };
                (pos, op, byte)
            });
            apply_edits(&mut body, edits, cut);
            same(&body)?;
        }

        #[test]
        fn arbitrary_bytes_agree(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            same(&body)?;
        }

        #[test]
        fn json_ish_bytes_agree(body in "[{}\\[\\]\",:0-9a-zA-Z .eEtrufalsn\\\\/]{0,200}") {
            same(body.as_bytes())?;
            let wrapped = format!(r#"{{"Data":{{"Sessions":[{{"Name":{body}}}]}}}}"#);
            same(wrapped.as_bytes())?;
            let wrapped = format!(r#"{{"Data":{{"Sessions":[{{"Idle":{body}, "X":{body}}}]}}}}"#);
            same(wrapped.as_bytes())?;
        }
    }
}
