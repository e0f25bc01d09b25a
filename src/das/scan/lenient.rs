//! The reference's lenient readings of a token (numbers through serde_json itself, strings
//! unescaped exactly as serde_json unescapes them), for the general path.

use std::borrow::Cow;

use serde::de::{self, Deserializer, Visitor};

use super::{Bail, R};

#[derive(Clone, Copy)]
pub(super) enum Num {
    I(i64),
    U(u64),
    F(f64),
}

/// Parses one number token exactly as serde_json does (same float algorithm, same range errors),
/// by asking serde_json itself. Only used off the fast path.
pub(super) fn serde_number(tok: &[u8]) -> R<Num> {
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
pub(super) fn int_from_num(n: Num) -> Option<i64> {
    match n {
        Num::I(v) => Some(v),
        Num::U(v) => Some(i64::try_from(v).unwrap_or(i64::MAX)),
        Num::F(v) => v.is_finite().then_some(v as i64),
    }
}

/// `LenientInt` from a string (the reference's `visit_str`).
pub(super) fn int_from_str(v: &str) -> Option<i64> {
    let t = v.trim();
    t.parse::<i64>().ok().or_else(|| {
        t.parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| f as i64)
    })
}

/// `LenientStr` from a number (the reference's `to_string` of what serde_json visited).
pub(super) fn str_from_num(n: Num) -> String {
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

pub(super) fn hex4(s: &[u8]) -> R<u16> {
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
pub(super) struct RawStr<'a> {
    pub(super) raw: &'a [u8],
    pub(super) escaped: bool,
}

impl<'a> RawStr<'a> {
    /// The string as the reference's validated `&str` would see it.
    pub(super) fn text(&self) -> R<Cow<'a, str>> {
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
    pub(super) fn key(&self) -> R<Cow<'a, [u8]>> {
        if self.escaped {
            unescape(self.raw).map(Cow::Owned)
        } else {
            Ok(Cow::Borrowed(self.raw))
        }
    }
}
