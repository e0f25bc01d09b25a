//! Deterministic GetRedisAllSession answers that look like the world rather than like the
//! simulator: for the decode benchmark, the end-to-end CPU benchmark, the fuzz seeds and the
//! tests that hold the scanner to its fast path. No captured customer data: every value is
//! generated from a seed.
//!
//! One [`Shape`] describes how the service (or a proxy in front of it) writes an answer: key
//! order, separators, how non-ASCII and special characters in client names are written, which
//! numbers arrive as strings, and whether optional keys go missing or `null`. The values are the
//! same for every shape with the same seed: magnitudes as production shows them (connection ids
//! around 10^9, ports up to 65535, buffers up to 10^8, a few busy nodes, many client names).
//! [`members`] lists the shapes the benchmark reports.

use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The order in which a session's keys are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrder {
    /// As in the vendor's example answer (and the simulator).
    Vendor,
    /// Sorted by name, as a serializer with sorted maps writes them.
    Sorted,
}

/// Which numeric values are written as JSON strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbers {
    /// As in the vendor's example: `Age` is a string, every other figure a number.
    Vendor,
    /// Every numeric value of a session is a string (`"Idle":"8"`).
    Strings,
    /// Every numeric value is a number, `Age` too.
    Plain,
}

/// How one answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub sessions: usize,
    pub order: KeyOrder,
    /// `", "` and `": "` between items (as Python's `json.dumps` writes) instead of compact JSON.
    pub spaced: bool,
    /// Non-ASCII characters written as `\uXXXX` escapes instead of raw UTF-8.
    pub ascii_only: bool,
    /// Share of client names, in per mille, holding a quote, a backslash or a newline (which
    /// JSON must escape).
    pub escaped_names_per_mille: u32,
    pub numbers: Numbers,
    /// Optional keys (`ClientDesc`, `Name`, `Events`) left out of some sessions, and `null`
    /// values in others.
    pub sparse: bool,
}

impl Shape {
    /// The realistic answer of issue 17: the vendor's key order, compact, raw UTF-8 names, 1 %
    /// of names escaped, `Age` as a string.
    pub const fn realistic(sessions: usize) -> Shape {
        Shape {
            sessions,
            order: KeyOrder::Vendor,
            spaced: false,
            ascii_only: false,
            escaped_names_per_mille: 10,
            numbers: Numbers::Vendor,
            sparse: false,
        }
    }

    /// Share of names escaped, in percent (for reports).
    pub fn escaped_percent(&self) -> f64 {
        f64::from(self.escaped_names_per_mille) / 10.0
    }
}

/// The corpus the benchmark reports: a name and a shape per member, at 1,000, 20,000 and
/// 100,000 sessions.
pub fn members() -> Vec<(String, Shape)> {
    let mut out = Vec::new();
    for n in [1_000, 20_000, 100_000] {
        let r = Shape::realistic(n);
        let variants = [
            ("realistic", r),
            (
                "escapes-0",
                Shape {
                    escaped_names_per_mille: 0,
                    ..r
                },
            ),
            (
                "escapes-25",
                Shape {
                    escaped_names_per_mille: 250,
                    ..r
                },
            ),
            (
                "sorted-keys",
                Shape {
                    order: KeyOrder::Sorted,
                    ..r
                },
            ),
            ("spaced", Shape { spaced: true, ..r }),
            (
                "u-escaped",
                Shape {
                    ascii_only: true,
                    ..r
                },
            ),
            (
                "numbers-as-strings",
                Shape {
                    numbers: Numbers::Strings,
                    ..r
                },
            ),
            (
                "numbers-plain",
                Shape {
                    numbers: Numbers::Plain,
                    ..r
                },
            ),
            ("sparse", Shape { sparse: true, ..r }),
        ];
        for (name, shape) in variants {
            out.push((format!("{name}/{n}"), shape));
        }
    }
    out
}

/// Looks a member up by its name (`realistic/20000`).
pub fn member(name: &str) -> Option<Shape> {
    members()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
}

/// A value before it is written.
#[derive(Debug, Clone)]
enum Value {
    Int(i64),
    Text(String),
    Null,
}

/// Commands as `CLIENT LIST` reports them (lower case, subcommands with `|`), and a few the
/// service upper-cases.
const COMMANDS: &[&str] = &[
    "get",
    "set",
    "hget",
    "hgetall",
    "mget",
    "setex",
    "expire",
    "evalsha",
    "ping",
    "PING",
    "GET",
    "zrangebyscore",
    "lpush",
    "brpop",
    "client|setname",
    "info",
    "NULL",
    "subscribe",
    "del",
    "incr",
];

/// Names that JSON writes with an escape.
const SPECIAL_NAMES: &[&str] = &[
    "job \"nightly\"",
    "C:\\svc\\worker",
    "batch\nimport",
    "tab\tseparated",
    "quote\"and\\slash",
];

/// Names with non-ASCII characters.
const UNICODE_NAMES: &[&str] = &["订单服务", "支付-worker", "café-api", "ユーザー", "😀-bot"];

/// One session's values in the vendor's key order.
fn session(
    rng: &mut StdRng,
    i: usize,
    shape: &Shape,
    nodes: &[String],
) -> Vec<(&'static str, Value)> {
    let node = &nodes[rng.random_range(0..nodes.len())];
    let ip = format!(
        "10.{}.{}.{}",
        rng.random_range(0..8),
        rng.random_range(0..256),
        rng.random_range(1..255)
    );
    let port = rng.random_range(1024..=65535);
    let name = if rng.random_ratio(shape.escaped_names_per_mille, 1000) {
        SPECIAL_NAMES[rng.random_range(0..SPECIAL_NAMES.len())].to_owned()
    } else {
        match rng.random_range(0..10) {
            0..=2 => String::new(),
            3 => UNICODE_NAMES[rng.random_range(0..UNICODE_NAMES.len())].to_owned(),
            _ => format!(
                "svc-{}-{:x}",
                rng.random_range(0..40),
                rng.random_range(0x1000u32..0x1010)
            ),
        }
    };
    let busy = rng.random_ratio(1, 50);
    let pubsub = rng.random_ratio(1, 100);
    let flags = if pubsub {
        "P"
    } else {
        ["N", "N", "N", "N", "N", "N", "x", "b", "r", "S"][rng.random_range(0..10)]
    };
    let big = |rng: &mut StdRng, max: i64| {
        if busy {
            rng.random_range(0..max)
        } else {
            0
        }
    };
    let qbuf = big(rng, 100_000_000);
    vec![
        (
            "Sub",
            Value::Int(if pubsub { rng.random_range(1..20) } else { 0 }),
        ),
        (
            "Psub",
            Value::Int(if pubsub { rng.random_range(0..3) } else { 0 }),
        ),
        ("Idle", Value::Int(rng.random_range(0..2_592_000))),
        ("Flags", Value::Text(flags.to_owned())),
        ("Oll", Value::Int(big(rng, 5_000))),
        (
            "QbufFree",
            Value::Int(if qbuf > 0 {
                0
            } else {
                [0, 20474, 40954][rng.random_range(0..3)]
            }),
        ),
        (
            "Multi",
            Value::Int(if flags == "x" {
                rng.random_range(0..10)
            } else {
                -1
            }),
        ),
        ("Omem", Value::Int(big(rng, 100_000_000))),
        ("Qbuf", Value::Int(qbuf)),
        ("Name", Value::Text(name)),
        ("Obl", Value::Int(big(rng, 16_384))),
        ("Client", Value::Text(ip.clone())),
        (
            "Cmd",
            Value::Text(COMMANDS[rng.random_range(0..COMMANDS.len())].to_owned()),
        ),
        (
            "Id",
            Value::Int(1_000_000_000 + i as i64 * 7 + rng.random_range(0..7)),
        ),
        ("Addr", Value::Text(format!("{ip}:{port}"))),
        ("NodeId", Value::Text(node.clone())),
        ("Age", Value::Int(rng.random_range(0..10_000_000))),
        (
            "Db",
            Value::Int(if rng.random_ratio(1, 10) {
                rng.random_range(1..16)
            } else {
                0
            }),
        ),
        (
            "Events",
            Value::Text(["r", "rw", "w"][rng.random_range(0..3)].to_owned()),
        ),
        ("Fd", Value::Int(rng.random_range(8..65_535))),
        (
            "ClientDesc",
            Value::Text(["prod ip", "", "vpc"][rng.random_range(0..3)].to_owned()),
        ),
    ]
}

/// Writes a JSON string: `"`, `\` and control characters escaped, non-ASCII as `\uXXXX` when
/// `ascii_only`.
fn write_str(out: &mut String, s: &str, ascii_only: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ascii_only && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The answer of `shape`, generated from `seed`.
pub fn answer(shape: &Shape, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (comma, colon) = if shape.spaced {
        (", ", ": ")
    } else {
        (",", ":")
    };
    let nodes: Vec<String> = (0..8)
        .map(|p| {
            format!(
                "r-bp1{:013x}-proxy-{p}#{}",
                seed.wrapping_mul(0x9e37_79b9),
                1_679_000 + p
            )
        })
        .collect();
    let mut out = String::with_capacity(shape.sessions * 420 + 512);
    let _ = write!(
        out,
        "{{\"Code\"{colon}200{comma}\"Message\"{colon}\"Successful\"{comma}\"Data\"{colon}{{\
         \"Timestamp\"{colon}1700000000000{comma}\"Total\"{colon}{}{comma}\"Sessions\"{colon}[",
        shape.sessions
    );
    let mut sources: std::collections::BTreeMap<String, u64> = Default::default();
    for i in 0..shape.sessions {
        let mut fields = session(&mut rng, i, shape, &nodes);
        if let Some((_, Value::Text(ip))) = fields.iter().find(|(k, _)| *k == "Client") {
            *sources.entry(ip.clone()).or_default() += 1;
        }
        if shape.sparse {
            match rng.random_range(0..10) {
                0 => fields.retain(|(k, _)| *k != "ClientDesc"),
                1 => fields.retain(|(k, _)| !matches!(*k, "Name" | "Events")),
                2 => {
                    for (k, v) in &mut fields {
                        if matches!(*k, "Name" | "ClientDesc" | "Omem") {
                            *v = Value::Null;
                        }
                    }
                }
                _ => {}
            }
        }
        if shape.order == KeyOrder::Sorted {
            fields.sort_by_key(|(k, _)| *k);
        }
        if i > 0 {
            out.push_str(comma);
        }
        out.push('{');
        for (j, (k, v)) in fields.iter().enumerate() {
            if j > 0 {
                out.push_str(comma);
            }
            let _ = write!(out, "\"{k}\"{colon}");
            let quoted = match shape.numbers {
                Numbers::Vendor => *k == "Age",
                Numbers::Strings => true,
                Numbers::Plain => false,
            };
            match v {
                Value::Int(n) if quoted => {
                    let _ = write!(out, "\"{n}\"");
                }
                Value::Int(n) => {
                    let _ = write!(out, "{n}");
                }
                Value::Text(s) => write_str(&mut out, s, shape.ascii_only),
                Value::Null => out.push_str("null"),
            }
        }
        out.push('}');
    }
    let _ = write!(out, "]{comma}\"SourceStats\"{colon}[");
    // The service lists each source with the ids of its sessions; only the count matters here,
    // so the ids are a short stand-in.
    for (j, (ip, n)) in sources.iter().take(2_000).enumerate() {
        if j > 0 {
            out.push_str(comma);
        }
        let _ = write!(
            out,
            "{{\"Key\"{colon}\"{ip}\"{comma}\"Count\"{colon}\"{n}\"{comma}\"Ids\"{colon}[{}]}}",
            1_000_000_000 + j as u64
        );
    }
    let _ = write!(
        out,
        "]}}{comma}\"RequestId\"{colon}\"40C6E9AF-6C23-5614-AA83-34344CC6{seed:04X}\"{comma}\"Success\"{colon}true}}"
    );
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_is_json_with_the_sessions_it_claims() {
        for (name, mut shape) in members() {
            shape.sessions = shape.sessions.min(300);
            let body = answer(&shape, 7);
            let v: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
            let sessions = v["Data"]["Sessions"].as_array().expect("sessions");
            assert_eq!(sessions.len(), shape.sessions, "{name}");
            if shape.ascii_only {
                assert!(body.is_ascii(), "{name}");
            }
        }
    }

    #[test]
    fn the_shapes_are_what_they_say() {
        let r = answer(&Shape::realistic(2_000), 1);
        let text = String::from_utf8(r.clone()).unwrap();
        assert!(text.contains("\"Age\":\""), "Age as a string");
        assert!(text.contains("\"Idle\":"), "compact");
        assert!(!text.contains(", "), "no spaces");
        assert!(text.contains("订单服务"), "raw UTF-8");
        let escaped = text.matches("\"Name\":\"job \\\"").count()
            + text.matches("\"Name\":\"C:\\\\").count()
            + text.matches("\"Name\":\"batch\\n").count()
            + text.matches("\"Name\":\"tab\\t").count()
            + text.matches("\"Name\":\"quote\\\"").count();
        // 1 % of 2,000 names, give or take the draw.
        assert!((8..=40).contains(&escaped), "{escaped} escaped names");
        let none = answer(
            &Shape {
                escaped_names_per_mille: 0,
                ..Shape::realistic(2_000)
            },
            1,
        );
        assert!(!String::from_utf8(none).unwrap().contains("\\\""));
        let ascii = answer(
            &Shape {
                ascii_only: true,
                ..Shape::realistic(500)
            },
            1,
        );
        assert!(String::from_utf8(ascii).unwrap().contains("\\u8ba2\\u5355"));
        assert_eq!(
            answer(&Shape::realistic(50), 3),
            answer(&Shape::realistic(50), 3)
        );
    }
}
