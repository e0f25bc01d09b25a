//! Deterministic, realistic session data for the simulator.
//!
//! Seeded from `(seed, instance id, generation)`, so the same request gets the same answer and a
//! test can ask the simulator for the exact body it serves. The mix follows what busy real
//! instances show: a few proxy nodes, many sources with a skewed spread, mostly simple reads and
//! writes, some blocked list pops, pub/sub subscribers, transactions, idle pools, slow consumers.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// One session as DAS returns it (field names and types as in the vendor's example).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SimSession {
    pub sub: u64,
    pub psub: u64,
    pub idle: u64,
    pub flags: String,
    pub oll: u64,
    pub qbuf_free: u64,
    pub multi: i64,
    pub omem: u64,
    pub qbuf: u64,
    pub name: String,
    pub obl: u64,
    pub client: String,
    pub cmd: String,
    pub id: u64,
    pub addr: String,
    pub node_id: String,
    /// A string on the wire, as in real answers.
    pub age: String,
    pub db: u64,
    pub events: String,
    pub fd: u64,
    pub client_desc: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct SourceStat<'a> {
    key: &'a str,
    /// A string on the wire, as in real answers.
    count: String,
    ids: Vec<u64>,
}

fn hash64(parts: &[&[u8]]) -> u64 {
    use std::hash::Hasher as _;
    // FNV-1a: stable across runs and versions, which a seed needs to be.
    let mut h = fnv::FnvHasher::default();
    for p in parts {
        h.write(p);
        h.write_u8(0xff);
    }
    h.finish()
}

/// Default session count of an instance when none is configured: 50..=400, by id.
pub fn default_count(seed: u64, instance: &str) -> usize {
    50 + (hash64(&[&seed.to_le_bytes(), instance.as_bytes(), b"count"]) % 351) as usize
}

const NAMES: &[&str] = &[
    "",
    "",
    "",
    "order-service",
    "cart-api",
    "session-store",
    "celery-worker",
    "sidekiq",
    "feed-ranker",
    "billing",
    "search-indexer",
    "jedis-pool",
    "lettuce",
    "go-redis",
];

/// (command, weight, flags, blocked/pubsub/multi behaviour)
const COMMANDS: &[(&str, u32)] = &[
    ("get", 220),
    ("set", 110),
    ("hget", 70),
    ("hgetall", 35),
    ("mget", 35),
    ("ping", 90),
    ("expire", 25),
    ("incr", 35),
    ("zadd", 25),
    ("zrange", 25),
    ("lpush", 20),
    ("rpop", 15),
    ("blpop", 30),
    ("brpop", 10),
    ("subscribe", 18),
    ("psubscribe", 8),
    ("exec", 15),
    ("info", 15),
    ("del", 20),
    ("exists", 20),
    ("eval", 10),
    ("scan", 8),
    ("client|list", 3),
    ("monitor", 1),
    ("NULL", 12),
    ("PING", 5),
    ("GET", 5),
];

fn pick_command(rng: &mut SmallRng) -> &'static str {
    let total: u32 = COMMANDS.iter().map(|c| c.1).sum();
    let mut n = rng.random_range(0..total);
    for (c, w) in COMMANDS {
        if n < *w {
            return c;
        }
        n -= w;
    }
    "get"
}

/// A log-uniform integer in `[0, max]`: spreads values over every bucket of a distribution.
fn log_uniform(rng: &mut SmallRng, max: u64) -> u64 {
    let x: f64 = rng.random_range(0.0..((max + 1) as f64).ln());
    (x.exp() - 1.0).round() as u64
}

/// Generates the sessions of `instance`.
pub fn sessions(seed: u64, instance: &str, generation: u64, count: usize) -> Vec<SimSession> {
    let base = hash64(&[&seed.to_le_bytes(), instance.as_bytes()]);
    // Structure (nodes, source pool) depends on the instance only; the sessions on the generation.
    let mut shape = SmallRng::seed_from_u64(base);
    let nodes: Vec<String> = (0..shape.random_range(2..=6))
        .map(|i| {
            format!(
                "{instance}-proxy-{}#{}",
                i + 1,
                shape.random_range(1000..9999)
            )
        })
        .collect();
    let pool = shape.random_range(8..=120usize);
    let subnet = shape.random_range(0..=255u8);
    let sources: Vec<String> = (0..pool)
        .map(|i| format!("10.{subnet}.{}.{}", i / 250, i % 250 + 2))
        .collect();

    let mut rng = SmallRng::seed_from_u64(base ^ generation.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut id = 9_000_000 + rng.random_range(0..100_000u64);
    (0..count)
        .map(|i| {
            id += rng.random_range(1..50);
            // Cubing a uniform draw makes a few sources hold most sessions, as real pools do.
            let u: f64 = rng.random();
            let ip = &sources[((u * u * u) * pool as f64) as usize % pool];
            let cmd = pick_command(&mut rng);
            let mut flags = String::new();
            let (mut sub, mut psub, mut multi) = (0, 0, -1);
            match cmd {
                "blpop" | "brpop" => flags.push('b'),
                "subscribe" => {
                    flags.push('P');
                    sub = rng.random_range(1..20);
                }
                "psubscribe" => {
                    flags.push('P');
                    psub = rng.random_range(1..5);
                }
                "exec" if rng.random_bool(0.5) => {
                    flags.push('x');
                    multi = rng.random_range(0..6);
                }
                "monitor" => flags.push('O'),
                _ => {}
            }
            if rng.random_bool(0.02) {
                flags.push('r');
            }
            if flags.is_empty() {
                flags.push('N');
            }
            let idle = if flags.contains('b') || sub + psub > 0 {
                rng.random_range(0..600)
            } else {
                log_uniform(&mut rng, 172_800)
            };
            let age = idle + log_uniform(&mut rng, 3_000_000);
            let slow = rng.random_bool(0.03);
            let omem = if slow {
                rng.random_range(16_384..25_000_000)
            } else {
                0
            };
            let qbuf = if rng.random_bool(0.1) {
                rng.random_range(26..200_000)
            } else {
                0
            };
            SimSession {
                sub,
                psub,
                idle,
                flags,
                oll: if slow { rng.random_range(1..500) } else { 0 },
                qbuf_free: if qbuf > 0 {
                    rng.random_range(0..32_768)
                } else {
                    0
                },
                multi,
                omem,
                qbuf,
                name: NAMES[rng.random_range(0..NAMES.len())].to_owned(),
                obl: if rng.random_bool(0.05) {
                    rng.random_range(1..16_384)
                } else {
                    0
                },
                client: ip.clone(),
                cmd: cmd.to_owned(),
                id,
                addr: format!("{ip}:{}", rng.random_range(10_000..65_000)),
                node_id: nodes[i % nodes.len()].clone(),
                age: age.to_string(),
                db: [0, 0, 0, 0, 0, 0, 1, 2, 3, 5][rng.random_range(0..10)],
                events: if omem > 0 { "rw".into() } else { "r".into() },
                fd: 20 + (i as u64 % 10_000),
                client_desc: String::new(),
            }
        })
        .collect()
}

/// The full GetRedisAllSession answer body for `sessions`.
pub fn answer(sessions: &[SimSession], total: u64, timestamp_ms: u64, request_id: &str) -> Vec<u8> {
    let mut by_ip: Vec<(&str, Vec<u64>)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for s in sessions {
        let i = *index.entry(&s.client).or_insert_with(|| {
            by_ip.push((&s.client, Vec::new()));
            by_ip.len() - 1
        });
        by_ip[i].1.push(s.id);
    }
    let stats: Vec<SourceStat<'_>> = by_ip
        .into_iter()
        .map(|(key, ids)| SourceStat {
            key,
            count: ids.len().to_string(),
            ids,
        })
        .collect();
    // Typed, so the keys come out in the vendor's order (that of the reference page's example),
    // as the real service writes them; `json!` would sort them.
    let body = Answer {
        code: 200,
        message: "Successful",
        data: AnswerData {
            timestamp: timestamp_ms,
            total,
            sessions,
            source_stats: stats,
        },
        request_id,
        success: true,
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Answer<'a> {
    code: u16,
    message: &'a str,
    data: AnswerData<'a>,
    request_id: &'a str,
    success: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AnswerData<'a> {
    timestamp: u64,
    total: u64,
    sessions: &'a [SimSession],
    source_stats: Vec<SourceStat<'a>>,
}

/// A real server's `CLIENT LIST` in the DAS shape (`simulate --from-redis`), so the DAS path can
/// be exercised on real sessions. The exporters' own connections are left out, exactly as the
/// direct source leaves them out, so both paths report the same figures.
pub fn from_client_list(reply: &str, node_id: &str, own_id: Option<u64>) -> Vec<SimSession> {
    use crate::direct::{client_list, CLIENT_NAME};
    client_list::parse(reply)
        .filter(|c| c.name != CLIENT_NAME && !(own_id.is_some() && c.id == own_id))
        .map(|c| SimSession {
            sub: c.sub.unwrap_or(0),
            psub: c.psub.unwrap_or(0),
            idle: c.idle.unwrap_or(0),
            flags: c.flags.to_owned(),
            oll: c.oll.unwrap_or(0),
            qbuf_free: c.qbuf_free.unwrap_or(0),
            multi: c.multi.unwrap_or(-1),
            omem: c.omem.unwrap_or(0),
            qbuf: c.qbuf.unwrap_or(0),
            name: c.name.to_owned(),
            obl: c.obl.unwrap_or(0),
            client: c.client_ip().to_owned(),
            cmd: c.cmd.to_owned(),
            id: c.id.unwrap_or(0),
            addr: c.addr.to_owned(),
            node_id: node_id.to_owned(),
            age: c.age.unwrap_or(0).to_string(),
            db: c.db.unwrap_or(0).max(0) as u64,
            events: c.events.to_owned(),
            fd: c.fd.unwrap_or(0).max(0) as u64,
            client_desc: String::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_varied() {
        let a = serde_json::to_string(&sessions(1, "r-x", 0, 300)).unwrap();
        let b = serde_json::to_string(&sessions(1, "r-x", 0, 300)).unwrap();
        assert_eq!(a, b);
        assert_ne!(
            a,
            serde_json::to_string(&sessions(1, "r-x", 1, 300)).unwrap()
        );
        assert_ne!(
            a,
            serde_json::to_string(&sessions(2, "r-x", 0, 300)).unwrap()
        );
        let s = sessions(7, "r-y", 0, 2000);
        let nodes: std::collections::HashSet<_> = s.iter().map(|s| &s.node_id).collect();
        assert!(nodes.len() >= 2);
        assert!(s.iter().any(|s| s.flags.contains('b')));
        assert!(s.iter().any(|s| s.sub > 0) && s.iter().any(|s| s.psub > 0));
        assert!(s.iter().any(|s| s.multi >= 0));
        assert!(s.iter().any(|s| s.omem > 0));
        assert!(s.iter().any(|s| s.idle > 86_400) && s.iter().any(|s| s.idle < 5));
    }
}
