//! Values in the plain forms real answers use (integers without fraction or exponent, digit
//! strings, strings without escapes), read without serde, and the word-at-a-time search for the
//! bytes that end or complicate a string.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Index of the first `"`, `\\` or control character, eight bytes at a time after the first 16.
#[inline]
pub(super) fn find_special(s: &[u8]) -> Option<usize> {
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

/// The little-endian word at `b[i..i + 8]` (0 past the end, which callers rule out).
#[inline]
pub(super) fn word(b: &[u8], i: usize) -> u64 {
    b.get(i..i + 8)
        .and_then(|w| <[u8; 8]>::try_from(w).ok())
        .map_or(0, u64::from_le_bytes)
}

/// An integer in the forms real answers use: a plain JSON integer, or a string of 1 to 18
/// digits (`"Age":"12"`). Returns the value and the index after it.
#[inline]
pub(super) fn quoted_or_plain_int(b: &[u8], i: usize) -> Option<(i64, usize)> {
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
pub(super) fn plain_int_at(b: &[u8], i: usize) -> Option<(i64, usize)> {
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
pub(super) fn plain_string_end(b: &[u8], mut i: usize) -> Option<usize> {
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
pub(super) fn plain_value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => plain_string_end(b, i + 1).map(|end| end + 1),
        _ => plain_int_at(b, i).map(|(_, j)| j),
    }
}

/// High bit set in each byte of `x` that is `"`, `\\` or a control character, possibly also in
/// bytes above the first such one (the classic "has a zero byte" test can carry upwards, never
/// downwards), so the lowest flagged byte (little-endian) is exact.
#[inline]
pub(super) fn special_bytes(x: u64) -> u64 {
    let q = x ^ (ONES * u64::from(b'"'));
    let bs = x ^ (ONES * u64::from(b'\\'));
    ((q.wrapping_sub(ONES) & !q)
        | (bs.wrapping_sub(ONES) & !bs)
        | (x.wrapping_sub(ONES * 0x20) & !x))
        & HIGH
}
