//! Fuzzes the GetRedisAllSession decoder and the HTTP classification around it: any body, with
//! any status, never panics; the byte scanner's answer is the serde reference decoder's, error
//! messages included; an accepted answer's breakdowns add up to its sessions; and its sources and
//! totals are what an independent reading of the same JSON (`serde_json::Value`) says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_session_exporter::acs;
use redis_session_exporter::das::{client, wire};
use redis_session_exporter::snapshot::{Limits, Snapshot};
use serde_json::Value;

/// The members of a JSON object in order, duplicates kept (a `Value` map keeps the last).
struct Members(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = m.next_entry()? {
                    out.push(e);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The reference's lenient integer, written again from the API's rules: a number (floats
/// truncated, saturating), a numeric string (trimmed), anything else absent.
fn lenient_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|_| i64::MAX))
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        Value::String(s) => {
            let t = s.trim();
            t.parse::<i64>().ok().or_else(|| {
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f as i64)
            })
        }
        _ => None,
    }
}

/// A member of the envelope: `Data` read with its repeated keys kept.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Member {
    Object(Members),
    Other(#[allow(dead_code)] Value),
}

/// The envelope's members, duplicates kept.
struct Top(Vec<(String, Member)>);

impl<'de> serde::Deserialize<'de> for Top {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Top;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Top, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = m.next_entry()? {
                    out.push(e);
                }
                Ok(Top(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// `(sum of SourceStats counts, Data.Total, number of sessions)` of an answer whose envelope and
/// `Data` have no repeated key; `None` when the reading would be ambiguous.
fn independent(body: &[u8]) -> Option<(u64, Option<u64>, u64)> {
    let top: Top = serde_json::from_slice(body).ok()?;
    let datas: Vec<&Member> = top
        .0
        .iter()
        .filter(|(k, _)| k == "Data")
        .map(|(_, v)| v)
        .collect();
    let [Member::Object(data)] = datas[..] else {
        return None;
    };
    let mut keys: Vec<&str> = data.0.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    if keys.windows(2).any(|w| w[0] == w[1]) {
        return None;
    }
    let get = |k: &str| data.0.iter().find(|(n, _)| n == k).map(|(_, v)| v);
    let sources: u64 = get("SourceStats")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| match s {
                    // The reference also takes an entry written as `[key, count]`.
                    Value::Array(pair) => pair.get(1),
                    _ => s.get("Count"),
                })
                .map(|c| c.and_then(lenient_int).map_or(0, |c| c.max(0) as u64))
                .fold(0u64, u64::saturating_add)
        })
        .unwrap_or(0);
    let total = get("Total").and_then(lenient_int).map(|t| t.max(0) as u64);
    let sessions = get("Sessions")
        .and_then(Value::as_array)
        .map_or(0, |a| a.len() as u64);
    Some((sources, total, sessions))
}

fn check(body: &[u8], s: &Snapshot) {
    let sum = |v: &[(String, u64)]| v.iter().map(|x| x.1).fold(0u64, u64::saturating_add);
    assert_eq!(sum(&s.by_node), s.sessions);
    assert_eq!(sum(&s.by_command), s.sessions);
    assert_eq!(sum(&s.by_client_name), s.sessions);
    assert_eq!(s.by_db.iter().map(|x| x.1).sum::<u64>(), s.sessions);
    assert_eq!(s.idle.count(), s.sessions);
    assert!(s.by_flag.iter().all(|&f| f <= s.sessions));
    // A decode keeps 2×cap per breakdown (all the sticky rule can name; the scheduler applies
    // the sticky caps per instance) and `other`.
    assert!(s.by_source.len() <= 7, "6 sources and other");
    if let Some((sources, total, sessions)) = independent(body) {
        assert_eq!(s.sessions, sessions);
        assert_eq!(
            sum(&s.by_source),
            sources,
            "by_source adds up to SourceStats"
        );
        assert_eq!(s.reported_total, total.unwrap_or(sessions), "Total");
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_sources: 3,
        max_commands: 3,
        max_client_names: 3,
        ..Limits::default()
    };
    let decoded = wire::decode(data, &limits);
    assert_eq!(decoded, wire::decode_reference(data, &limits));
    if let Ok(s) = &decoded {
        check(data, s);
    }
    let _ = acs::error_code(data);
    for status in [200u16, 400, 503] {
        let status = reqwest::StatusCode::from_u16(status).unwrap();
        if let Err(e) = client::classify(status, None, data, &limits) {
            // Every failure maps to a bounded label.
            assert!(e.code().len() <= 64);
        }
    }
});
