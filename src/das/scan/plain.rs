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

/// An integer in the forms real answers use: a plain JSON integer, or a string of an optional
/// minus and 1 to 18 digits (`"Age":"12"`, `"Multi":"-1"`). Returns the value and the index
/// after it.
#[inline]
pub(super) fn quoted_or_plain_int(b: &[u8], i: usize) -> Option<(i64, usize)> {
    if b.get(i) != Some(&b'"') {
        return plain_int_at(b, i);
    }
    let neg = b.get(i + 1) == Some(&b'-');
    let first = i + 1 + usize::from(neg);
    let (v, len) = digits_at(b, first)?;
    let end = first + len;
    (b.get(end) == Some(&b'"')).then_some((if neg { -v } else { v }, end + 1))
}

/// An optional minus and 1 to 18 digits, no leading zero, not followed by a fraction or an
/// exponent: the value and the index after it. Anything else is `None` (serde_json's own
/// number parsing decides those, off the fast path).
#[inline]
pub(super) fn plain_int_at(b: &[u8], i: usize) -> Option<(i64, usize)> {
    let neg = b.get(i) == Some(&b'-');
    let first = i + usize::from(neg);
    // Most figures of a session are 0.
    let (v, len) = match b.get(first..first + 2) {
        Some([b'0', next]) if !next.is_ascii_digit() => (0, 1),
        _ => digits_at(b, first)?,
    };
    let end = first + len;
    // A leading zero must stand alone.
    if len > 1 && b.get(first) == Some(&b'0') {
        return None;
    }
    if let Some(b'.' | b'e' | b'E') = b.get(end) {
        return None;
    }
    Some((if neg { -v } else { v }, end))
}

/// The run of ASCII digits at `i`: its value and length, for 1 to 18 digits; `None` for none or
/// more (a 19th digit may not fit an `i64`). Eight bytes at a time while eight are left: ids,
/// ports and byte counts have 5 to 10 digits, and a byte loop pays a mispredicted branch at the
/// end of every one.
#[inline]
fn digits_at(b: &[u8], i: usize) -> Option<(i64, usize)> {
    let mut v: i64 = 0;
    let mut n = 0;
    while let Some(w) = b.get(i + n..i + n + 8) {
        let x = word(w, 0);
        let k = leading_digits(x);
        if n + k > 18 {
            return None;
        }
        if k > 0 {
            v = v * POW10[k] + eight_digits(x, k);
        }
        n += k;
        if k < 8 {
            return (n > 0).then_some((v, n));
        }
    }
    while let Some(&c) = b.get(i + n) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        if n == 18 {
            return None;
        }
        v = v * 10 + i64::from(d);
        n += 1;
    }
    (n > 0).then_some((v, n))
}

const POW10: [i64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// How many of the eight bytes of `x` (the first byte lowest) are digits before the first that
/// is not.
#[inline]
fn leading_digits(x: u64) -> usize {
    // Each byte minus '0' is 0..=9 for a digit; adding 0x76 lifts every larger value (and the
    // wrapped ones) to 0x80 or more. Borrows and carries only run upwards from a byte that is
    // not a digit, so the lowest flagged byte is exact.
    let t = x.wrapping_sub(ONES * u64::from(b'0'));
    let flagged = (t.wrapping_add(ONES * 0x76) | t) & HIGH;
    if flagged == 0 {
        8
    } else {
        (flagged.trailing_zeros() / 8) as usize
    }
}

/// The value of the first `k` (1 to 8) digits of `x`: shifted to the top so that they read as
/// an eight-digit number with leading zeros, then combined into pairs, fours and eights of
/// digits with three multiplications.
#[inline]
fn eight_digits(x: u64, k: usize) -> i64 {
    let d = (x.wrapping_sub(ONES * u64::from(b'0')) << (8 * (8 - k))) & (ONES * 0x0f);
    let d = d.wrapping_mul(1 + (10 << 8)) >> 8;
    let d = (d & 0x00ff_00ff_00ff_00ff).wrapping_mul(1 + (100 << 16)) >> 16;
    let d = (d & 0x0000_ffff_0000_ffff).wrapping_mul(1 + (10_000 << 32)) >> 32;
    d as i64
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
        b'n' => null_end(b, i),
        _ => plain_int_at(b, i).map(|(_, j)| j),
    }
}

/// The index after a `null` at `i`.
#[inline]
pub(super) fn null_end(b: &[u8], i: usize) -> Option<usize> {
    (b.get(i..i + 4) == Some(b"null")).then_some(i + 4)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The digits at `i`, read one byte at a time.
    fn naive(b: &[u8], i: usize) -> Option<(i64, usize)> {
        let run = b
            .get(i..)?
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if run == 0 || run > 18 {
            return None;
        }
        Some((std::str::from_utf8(&b[i..i + run]).ok()?.parse().ok()?, run))
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2_000))]

        /// Digit runs of every length, at every offset, among the bytes that end them.
        #[test]
        fn digits_read_a_word_at_a_time_are_read_right(
            body in proptest::collection::vec(
                proptest::sample::select(&b"0123456789012345678901234567890123456789\"-.e,}: \xff\x00/"[..]),
                0..40,
            ),
        ) {
            for i in 0..=body.len() {
                proptest::prop_assert_eq!(digits_at(&body, i), naive(&body, i), "at {}", i);
            }
        }
    }

    #[test]
    fn plain_integers_follow_json() {
        let int = |s: &str| plain_int_at(s.as_bytes(), 0);
        assert_eq!(int("0,"), Some((0, 1)));
        assert_eq!(int("-0}"), Some((0, 2)));
        assert_eq!(int("1234567890,"), Some((1_234_567_890, 10)));
        assert_eq!(
            int("-123456789012345678,"),
            Some((-123_456_789_012_345_678, 19))
        );
        for refused in [
            "01",
            "1.5",
            "1e3",
            "12E3",
            "-",
            "x",
            "1234567890123456789",
            "",
        ] {
            assert_eq!(int(refused), None, "{refused}");
        }
        let quoted = |s: &str| quoted_or_plain_int(s.as_bytes(), 0);
        assert_eq!(quoted("\"0012\","), Some((12, 6)));
        assert_eq!(quoted("\"-1\"}"), Some((-1, 4)));
        assert_eq!(quoted("\"12 \""), None);
        assert_eq!(quoted("\"\""), None);
    }
}
