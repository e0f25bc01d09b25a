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

#[test]
fn every_corpus_shape_agrees_and_takes_the_template_path() {
    use crate::das::corpus;
    for (name, mut shape) in corpus::members() {
        shape.sessions = shape.sessions.min(400);
        for seed in 0..3 {
            let body = corpus::answer(&shape, seed);
            same(&body).unwrap_or_else(|e| panic!("{name} seed {seed}: {e}"));
            let (_, by_template) = scan_counting(&body, &mut Fold::new()).expect("scans");
            // The first session of each layout teaches it; every other session matches one:
            // escaped names, nulls and digit strings included. Sparse answers have three
            // layouts (all keys; no `ClientDesc`; no `Name` and `Events`).
            let layouts = if shape.sparse { 3 } else { 1 };
            assert_eq!(
                by_template,
                shape.sessions as u64 - layouts,
                "{name} seed {seed}"
            );
        }
    }
}

#[test]
fn committed_real_answers_take_the_fast_path() {
    // The fuzz seeds `real-*.json` are corpus answers (written by the decode bench with
    // `CORPUS_WRITE`); the fuzzers start from them, so they must exercise the fast path, not
    // the fallback.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/decode");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("the decode fuzz seeds") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !name.starts_with("real-") {
            continue;
        }
        let body = std::fs::read(&path).expect("a seed");
        same(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        let sessions = decode(&body, &Limits::default()).expect("decodes").sessions;
        let (_, by_template) = scan_counting(&body, &mut Fold::new()).expect("scans");
        let layouts = if name.contains("sparse") { 3 } else { 1 };
        assert!(sessions >= 10, "{name}: {sessions} sessions");
        assert!(
            by_template + layouts >= sessions,
            "{name}: {by_template} of {sessions} sessions on the fast path"
        );
        seen += 1;
    }
    assert!(seen >= 9, "{seen} real-looking seeds in {}", dir.display());
}
