//! Fuzzes the decoder with real-looking answers: the input chooses a corpus shape
//! (`das::corpus`: key order, separators, escapes, number forms, missing keys), a seed and a
//! session count, then a few structure-aware mutations (a value in another form, a member
//! repeated, removed or moved, whitespace, an escaped key, a byte changed). The scanner's answer
//! must be the reference's; an answer left untouched must be read on the fast path, every
//! session after the first of each layout by a learned template.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_session_exporter::das::{corpus, wire};
use redis_session_exporter::snapshot::Limits;

/// Value forms a mutation writes in place of a value: the lenient forms the reference takes
/// and some it refuses.
const FORMS: &[&[u8]] = &[
    b"null",
    b"true",
    b"false",
    b"0",
    b"-1",
    b"1.5",
    b"1e3",
    b"-0",
    b"00",
    b"18446744073709551616",
    b"9223372036854775807",
    b"\"12\"",
    b"\" 12 \"",
    b"\"-7\"",
    b"\"+5\"",
    b"\"\"",
    b"\"x\"",
    b"\"N\\\"\"",
    b"\"\\u00e9\"",
    b"\"\\ud83d\\ude00\"",
    b"\"\\ud83d\"",
    b"\"\xff\"",
    b"[]",
    b"{}",
    b"[1,{\"a\":null}]",
    b"\"a\x01\"",
];

/// Byte offsets where each member of an object starts (`"` after `{` or `,`) in `b`.
fn member_starts(b: &[u8]) -> Vec<usize> {
    (1..b.len())
        .filter(|&i| b[i] == b'"' && matches!(b[i - 1], b'{' | b',' | b' '))
        .collect()
}

/// The end of the value that starts at `v`: a flat value up to the next `,`, `}` or `]` outside
/// a string. Good enough for the generated answers (nested values are not generated there).
fn value_end(b: &[u8], v: usize) -> usize {
    let mut i = v;
    let mut in_str = false;
    while i < b.len() {
        match b[i] {
            b'\\' if in_str => i += 1,
            b'"' => in_str = !in_str,
            b',' | b'}' | b']' if !in_str => return i,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

fn mutate(body: &mut Vec<u8>, op: u8, at: u8, pick: u8) {
    let starts = member_starts(body);
    if starts.is_empty() {
        return;
    }
    // Spread `at` over the whole body: later bytes pick later members.
    let k = starts[(usize::from(at) * starts.len()) / 256];
    let Some(colon) = body[k + 1..]
        .iter()
        .position(|&c| c == b'"')
        .map(|p| k + p + 2)
    else {
        return;
    };
    if body.get(colon) != Some(&b':') {
        return;
    }
    let v = colon + 1 + usize::from(body.get(colon + 1) == Some(&b' '));
    let end = value_end(body, v);
    match op % 7 {
        0 => {
            body.splice(
                v..end,
                FORMS[usize::from(pick) % FORMS.len()].iter().copied(),
            );
        }
        1 => {
            let member = body[k..end].to_vec();
            body.splice(k..k, member.into_iter().chain([b',']));
        }
        2 if body.get(end) == Some(&b',') => {
            body.drain(k..=end);
        }
        3 => {
            let ws: &[u8] = [&b" "[..], b"\n\t", b"\r\n  "][usize::from(pick) % 3];
            body.splice(colon + 1..colon + 1, ws.iter().copied());
        }
        4 => {
            if let Some(&c) = body.get(k + 1) {
                let esc = format!("\\u{:04x}", c);
                body.splice(k + 1..k + 2, esc.into_bytes());
            }
        }
        5 if body.get(end) == Some(&b',') => {
            // Moved after the next member.
            let next_end = value_end(body, end + 1);
            let member = body[k..end].to_vec();
            let next = body[end + 1..next_end].to_vec();
            let swapped = [next, vec![b','], member].concat();
            body.splice(k..next_end, swapped);
        }
        _ => {
            let i = (usize::from(pick) * body.len()) / 256;
            if let Some(b) = body.get_mut(i) {
                const PUNCT: &[u8] = b"{}[]\",:0-.e\\ ntu\x01";
                *b = PUNCT[usize::from(at) % PUNCT.len()];
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [shape, seed, sessions, mutations @ ..] = data else {
        return;
    };
    let members = corpus::members();
    let (_, mut shape) = members[usize::from(*shape) % members.len()].clone();
    shape.sessions = usize::from(*sessions % 48);
    let mut body = corpus::answer(&shape, u64::from(*seed));
    let limits = Limits::default();
    if mutations.is_empty() {
        let report = wire::scan_report(&body);
        assert!(report.scanned, "an untouched answer is scanned");
        let layouts = if shape.sparse { 3 } else { 1 };
        assert!(
            report.by_template + layouts >= report.sessions,
            "only the first session of each layout leaves the fast path: {report:?}"
        );
    }
    for m in mutations.chunks_exact(3).take(6) {
        mutate(&mut body, m[0], m[1], m[2]);
    }
    let decoded = wire::decode(&body, &limits);
    assert_eq!(decoded, wire::decode_reference(&body, &limits));
    if mutations.is_empty() {
        assert_eq!(decoded.map(|s| s.sessions), Ok(shape.sessions as u64));
    }
});
