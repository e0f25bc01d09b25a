//! The typed aggregate of one instance's sessions, and the fold that builds it.
//!
//! A source feeds sessions one at a time into [`Fold::add`] (borrowed fields, nothing kept per
//! session), then [`Fold::finish`] bounds the breakdowns and yields a [`Snapshot`]; the
//! scheduler then applies the sticky caps ([`Snapshot::apply_caps`], which remembers between
//! polls which values hold a series) and names the clients (attribution). Every figure exported
//! for an instance comes from one `Snapshot`.

mod cap;

pub use cap::Caps;

use std::collections::{BTreeMap, HashMap};

use crate::attribution::{Figures as ClientFigures, Workload};

/// Upper bounds (`le`) of `redis_session_idle_seconds`; `+Inf` is implicit.
pub const IDLE_BOUNDS: &[u64] = &[1, 5, 10, 30, 60, 300, 600, 1800, 3600, 21600, 86400];
/// Upper bounds of `redis_session_age_seconds`.
pub const AGE_BOUNDS: &[u64] = &[60, 300, 1800, 3600, 21600, 86400, 604_800, 2_592_000];
/// Upper bounds of the query and output buffer distributions.
pub const BUFFER_BOUNDS: &[u64] = &[0, 1024, 16384, 65536, 1_048_576, 16_777_216];

/// Upper bounds of `redis_session_total_memory_bytes` (direct source only): a bare connection
/// uses about 20 KiB, so the first bucket sits just above that.
pub const TOTAL_MEMORY_BOUNDS: &[u64] =
    &[32_768, 65_536, 262_144, 1_048_576, 16_777_216, 268_435_456];

/// The label value used for everything beyond a cap.
pub const OTHER: &str = "other";

/// Client flag letters and the names they are exported under, in exposition order.
/// Source: Redis `CLIENT LIST` documentation (the DAS `Flags` field carries the same letters).
pub const FLAGS: &[(char, &str)] = &[
    ('A', "close_asap"),
    ('b', "blocked"),
    ('c', "close_after_reply"),
    ('d', "dirty_cas"),
    ('e', "no_evict"),
    ('i', "io_wait"),
    ('M', "master"),
    ('N', "none"),
    ('O', "monitor"),
    ('P', "pubsub"),
    ('r', "readonly"),
    ('S', "replica"),
    ('u', "unblocked"),
    ('U', "unix_socket"),
    ('x', "multi"),
    ('t', "tracking"),
    ('T', "no_touch"),
    ('R', "tracking_invalid"),
    ('B', "tracking_broadcast"),
];
/// Index of the `unknown` slot, after the known flags.
pub const FLAG_UNKNOWN: usize = FLAGS.len();
/// Name of the slot for letters not in [`FLAGS`].
pub const FLAG_UNKNOWN_NAME: &str = "unknown";

/// Slot of every ASCII byte in [`Snapshot::by_flag`]; a table because it runs once per letter
/// of every session.
const FLAG_TABLE: [u8; 128] = {
    let mut t = [FLAG_UNKNOWN as u8; 128];
    let mut i = 0;
    while i < FLAGS.len() {
        t[FLAGS[i].0 as usize] = i as u8;
        i += 1;
    }
    t
};

/// Returns a bit set of the slots present in a `Flags` string (each flag counts once per session).
pub fn parse_flags(flags: &str) -> u32 {
    parse_flag_bytes(flags.as_bytes())
}

/// [`parse_flags`] over the bytes of a `Flags` string (for a decoder that has not made it a
/// `&str` yet).
pub fn parse_flag_bytes(flags: &[u8]) -> u32 {
    // A non-ASCII byte is part of an unknown letter; each byte maps to one slot.
    flags.iter().fold(0u32, |acc, &b| {
        let slot = FLAG_TABLE
            .get(b as usize)
            .map_or(FLAG_UNKNOWN, |&s| s as usize);
        acc | (1 << slot)
    })
}

/// The Fx hash (rustc's, from `rustc-hash`): the fold's keys are short, trusted-enough strings
/// from one answer whose map is dropped after the poll, so SipHash's flood resistance buys
/// nothing here and costs a visible share of the fold (see BENCHMARKS.md). The scanner's label
/// tally hashes with it too.
pub use rustc_hash::FxHasher;

/// The maps of the fold.
pub type FoldMap = HashMap<Box<str>, u64, rustc_hash::FxBuildHasher>;

/// Figures per client IP, and what counts as long idle.
#[derive(Debug)]
struct ClientTally {
    idle_threshold: u64,
    map: HashMap<Box<str>, ClientFigures, rustc_hash::FxBuildHasher>,
}

impl ClientTally {
    fn sorted(self) -> Vec<(String, ClientFigures)> {
        let mut v: Vec<(String, ClientFigures)> =
            self.map.into_iter().map(|(k, f)| (k.into(), f)).collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The caps the fold applies, configured in `[limits]`.
pub use crate::config::Limits;

/// A gauge histogram over non-negative integers: per-bucket counts (not cumulative), count and sum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribution {
    pub bounds: &'static [u64],
    /// `counts[i]` holds values `<= bounds[i]` and `> bounds[i-1]`; the last slot is `+Inf`.
    pub counts: Vec<u64>,
    pub sum: u64,
}

impl Distribution {
    pub fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0,
        }
    }

    pub fn observe(&mut self, v: u64) {
        // Bounds are short and sorted; `partition_point` finds the first bound >= v.
        let slot = self.bounds.partition_point(|&b| b < v);
        self.counts[slot] += 1;
        self.sum = self.sum.saturating_add(v);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Cumulative counts, one per bound and then `+Inf`.
    pub fn cumulative(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().scan(0u64, |acc, c| {
            *acc += c;
            Some(*acc)
        })
    }
}

/// One session, as borrowed fields of whatever the source decoded. Absent text fields are `""`.
#[derive(Debug, Clone, Default)]
pub struct SessionView<'a> {
    pub node_id: &'a str,
    /// The client's IP (DAS `Client`; the host part of a direct source's `addr`), for
    /// attribution.
    pub client: &'a str,
    pub cmd: &'a str,
    /// `None` when the answer gave no `Db`; exported as `db=""`.
    pub db: Option<i64>,
    pub name: &'a str,
    pub flags: &'a str,
    pub sub: u64,
    pub psub: u64,
    /// Commands queued in MULTI; `-1` (or absent) outside a transaction.
    pub multi: i64,
    pub qbuf: u64,
    pub qbuf_free: u64,
    pub obl: u64,
    pub oll: u64,
    pub omem: u64,
    pub idle: u64,
    pub age: u64,
    /// Fields only a direct source has (`user`, `lib-name`, `tot-mem`); `None` from DAS.
    pub user: Option<&'a str>,
    pub lib_name: Option<&'a str>,
    pub tot_mem: Option<u64>,
    /// Shard-channel subscriptions (`ssub`, Redis 7+; direct only).
    pub ssub: Option<u64>,
}

/// Databases counted in a plain array rather than the fold's map.
const SMALL_DBS: i64 = 16;

/// The largest database number that gets its own `db` label value (Redis allows 0–255 with
/// `databases`; managed Redis 0–255 or fewer). Anything else is a figure from the wire that
/// must not mint series: it is summed under [`DB_OTHER`].
pub const MAX_DB: i64 = 255;

/// The `by_db` key of every database outside 0–[`MAX_DB`], exported as `db="other"`.
pub const DB_OTHER: i64 = i64::MIN;

/// One session's numbers, db and flags: what [`Fold::add_figures`] takes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub db: Option<i64>,
    /// Bit set of flag slots, as [`parse_flags`] returns it.
    pub flags: u32,
    pub sub: u64,
    pub psub: u64,
    pub multi: i64,
    pub qbuf: u64,
    pub qbuf_free: u64,
    pub obl: u64,
    pub oll: u64,
    pub omem: u64,
    pub idle: u64,
    pub age: u64,
}

/// The streaming accumulator. Text keys are copied once per distinct value, never per session.
#[derive(Debug)]
pub struct Fold {
    sessions: u64,
    nodes: FoldMap,
    commands: FoldMap,
    names: FoldMap,
    sources: FoldMap,
    /// Sessions per db for the usual databases 0..16, kept apart from `dbs` because a map
    /// entry per session is a visible share of the fold.
    small_dbs: [u64; SMALL_DBS as usize],
    dbs: BTreeMap<Option<i64>, u64>,
    flags: [u64; FLAGS.len() + 1],
    sub: u64,
    psub: u64,
    in_transaction: u64,
    qbuf_free: u64,
    oll: u64,
    obl: u64,
    max_qbuf: u64,
    max_omem: u64,
    max_oll: u64,
    idle: Distribution,
    age: Distribution,
    qbuf: Distribution,
    omem: Distribution,
    users: FoldMap,
    libraries: FoldMap,
    tot_mem: Distribution,
    ssub: u64,
    /// True once any session carried direct-only fields.
    direct_fields: bool,
    /// Per-client figures, kept only when attribution is on.
    clients: Option<ClientTally>,
    /// Reused buffer for lower-casing commands without an allocation per session.
    scratch: String,
}

impl Default for Fold {
    fn default() -> Self {
        Self::new()
    }
}

fn bump(map: &mut FoldMap, key: &str, by: u64) {
    if let Some(v) = map.get_mut(key) {
        // Counts come from the wire (`SourceStats`): saturate, never wrap or panic.
        *v = v.saturating_add(by);
    } else {
        map.insert(key.into(), by);
    }
}

impl Fold {
    pub fn new() -> Self {
        Self {
            sessions: 0,
            nodes: FoldMap::default(),
            commands: FoldMap::default(),
            names: FoldMap::default(),
            sources: FoldMap::default(),
            small_dbs: [0; SMALL_DBS as usize],
            dbs: BTreeMap::new(),
            flags: [0; FLAGS.len() + 1],
            sub: 0,
            psub: 0,
            in_transaction: 0,
            qbuf_free: 0,
            oll: 0,
            obl: 0,
            max_qbuf: 0,
            max_omem: 0,
            max_oll: 0,
            idle: Distribution::new(IDLE_BOUNDS),
            age: Distribution::new(AGE_BOUNDS),
            qbuf: Distribution::new(BUFFER_BOUNDS),
            omem: Distribution::new(BUFFER_BOUNDS),
            users: FoldMap::default(),
            libraries: FoldMap::default(),
            tot_mem: Distribution::new(TOTAL_MEMORY_BOUNDS),
            ssub: 0,
            direct_fields: false,
            clients: None,
            scratch: String::new(),
        }
    }

    /// The fold `limits` ask for: with per-client figures when attribution is on.
    pub fn for_limits(limits: &Limits) -> Self {
        match limits.client_idle_threshold {
            Some(t) => Self::with_clients(t),
            None => Self::new(),
        }
    }

    /// A fold that also keeps figures per client IP for attribution, counting sessions idle at
    /// least `idle_threshold` seconds as long idle.
    pub fn with_clients(idle_threshold: u64) -> Self {
        Self {
            clients: Some(ClientTally {
                idle_threshold,
                map: HashMap::default(),
            }),
            ..Self::new()
        }
    }

    /// Whether per-client figures are kept ([`Fold::with_clients`]): a decoder that feeds
    /// [`Fold::add_figures`] itself must then call [`Fold::add_client`] for each session.
    pub fn tracks_clients(&self) -> bool {
        self.clients.is_some()
    }

    /// Counts one session of `client` (idle `idle` seconds, `omem` bytes of output buffer) in
    /// the per-client figures; nothing when they are not kept.
    pub fn add_client(&mut self, client: &str, idle: u64, omem: u64) {
        if let Some(t) = &mut self.clients {
            let threshold = t.idle_threshold;
            if let Some(f) = t.map.get_mut(client) {
                f.add_session(idle, omem, threshold);
            } else {
                let mut f = ClientFigures::default();
                f.add_session(idle, omem, threshold);
                t.map.insert(client.into(), f);
            }
        }
    }

    /// Adds one session to every aggregate.
    pub fn add(&mut self, s: &SessionView<'_>) {
        self.add_client(s.client, s.idle, s.omem);
        self.add_figures(&Figures {
            db: s.db,
            flags: parse_flags(s.flags),
            sub: s.sub,
            psub: s.psub,
            multi: s.multi,
            qbuf: s.qbuf,
            qbuf_free: s.qbuf_free,
            obl: s.obl,
            oll: s.oll,
            omem: s.omem,
            idle: s.idle,
            age: s.age,
        });
        self.add_node(s.node_id, 1);
        self.add_command(s.cmd, 1);
        self.add_client_name(s.name, 1);
        if s.user.is_some() || s.lib_name.is_some() || s.tot_mem.is_some() || s.ssub.is_some() {
            self.direct_fields = true;
            self.ssub = self.ssub.saturating_add(s.ssub.unwrap_or(0));
            bump(&mut self.users, s.user.unwrap_or(""), 1);
            bump(&mut self.libraries, s.lib_name.unwrap_or(""), 1);
            self.tot_mem.observe(s.tot_mem.unwrap_or(0));
        }
    }

    /// Adds one session's figures: everything but its text labels, which the caller adds with
    /// [`Fold::add_node`], [`Fold::add_command`] and [`Fold::add_client_name`]. Split from
    /// [`Fold::add`] so a decoder can tally the labels of a whole answer itself and hand each
    /// distinct value over once (every aggregate here is a sum, a maximum or a count, so the
    /// order in which sessions and labels arrive does not change the result).
    pub fn add_figures(&mut self, s: &Figures) {
        self.sessions += 1;
        match s.db {
            Some(db @ 0..SMALL_DBS) => self.small_dbs[db as usize] += 1,
            other => *self.dbs.entry(other).or_insert(0) += 1,
        }
        let mut bits = s.flags;
        while bits != 0 {
            let slot = bits.trailing_zeros() as usize;
            if let Some(n) = self.flags.get_mut(slot) {
                *n += 1;
            }
            bits &= bits - 1;
        }
        self.sub = self.sub.saturating_add(s.sub);
        self.psub = self.psub.saturating_add(s.psub);
        if s.multi >= 0 {
            self.in_transaction += 1;
        }
        self.qbuf_free = self.qbuf_free.saturating_add(s.qbuf_free);
        self.oll = self.oll.saturating_add(s.oll);
        self.obl = self.obl.saturating_add(s.obl);
        self.max_qbuf = self.max_qbuf.max(s.qbuf);
        self.max_omem = self.max_omem.max(s.omem);
        self.max_oll = self.max_oll.max(s.oll);
        self.idle.observe(s.idle);
        self.age.observe(s.age);
        self.qbuf.observe(s.qbuf);
        self.omem.observe(s.omem);
    }

    /// Counts `n` sessions on proxy or data node `node`.
    pub fn add_node(&mut self, node: &str, n: u64) {
        bump(&mut self.nodes, node, n);
    }

    /// Counts `n` sessions whose last command was `cmd` (case-folded: `GET` and `get` are one).
    pub fn add_command(&mut self, cmd: &str, n: u64) {
        if cmd.bytes().any(|b| b.is_ascii_uppercase()) {
            self.scratch.clear();
            self.scratch.push_str(cmd);
            self.scratch.make_ascii_lowercase();
            bump(&mut self.commands, &self.scratch, n);
        } else {
            bump(&mut self.commands, cmd, n);
        }
    }

    /// Counts `n` sessions with client name `name` (`""` for unnamed).
    pub fn add_client_name(&mut self, name: &str, n: u64) {
        bump(&mut self.names, name, n);
    }

    /// Adds `count` sessions from one source address (DAS `SourceStats`, or a direct source's
    /// own tally of client IPs).
    pub fn add_source(&mut self, source: &str, count: u64) {
        bump(&mut self.sources, source, count);
    }

    /// Sessions folded so far.
    pub fn sessions(&self) -> u64 {
        self.sessions
    }

    /// Bounds the breakdowns and freezes the aggregate: each keeps the values ranked within
    /// twice its cap, which is all [`Snapshot::apply_caps`] can give a series (entering needs a
    /// rank within the cap, staying one within twice the cap), and sums the rest into `other`.
    ///
    /// `reported_total` is what the source claimed (DAS `Data.Total`); when absent, the number of
    /// sessions folded. `timestamp_ms` is the source's own time of the answer, if it gave one.
    pub fn finish(
        self,
        limits: &Limits,
        reported_total: Option<u64>,
        timestamp_ms: Option<i64>,
    ) -> Snapshot {
        let mut dbs: BTreeMap<Option<i64>, u64> = BTreeMap::new();
        for (db, n) in self.dbs {
            let db = db.map(|d| {
                if (0..=MAX_DB).contains(&d) {
                    d
                } else {
                    DB_OTHER
                }
            });
            let e = dbs.entry(db).or_insert(0);
            *e = e.saturating_add(n);
        }
        for (db, &n) in (0..).zip(&self.small_dbs) {
            if n > 0 {
                dbs.insert(Some(db), n);
            }
        }
        Snapshot {
            sessions: self.sessions,
            reported_total: reported_total.unwrap_or(self.sessions),
            timestamp_ms,
            by_node: cap(self.nodes, limits.max_nodes.saturating_mul(2)),
            by_source: cap(self.sources, limits.max_sources.saturating_mul(2)),
            by_command: cap(self.commands, limits.max_commands.saturating_mul(2)),
            by_client_name: cap(self.names, limits.max_client_names.saturating_mul(2)),
            by_db: dbs.into_iter().collect(),
            by_flag: self.flags,
            subscriptions_channel: self.sub,
            subscriptions_pattern: self.psub,
            in_transaction: self.in_transaction,
            query_buffer_free_bytes: self.qbuf_free,
            output_list_objects: self.oll,
            fixed_output_buffer_bytes: self.obl,
            query_buffer_max_bytes: self.max_qbuf,
            output_buffer_max_bytes: self.max_omem,
            output_list_max_objects: self.max_oll,
            idle: self.idle,
            age: self.age,
            query_buffer: self.qbuf,
            output_buffer: self.omem,
            by_client: self.clients.map(ClientTally::sorted).unwrap_or_default(),
            by_workload: None,
            direct: self.direct_fields.then(|| DirectFigures {
                by_user: cap(self.users, limits.max_client_names.saturating_mul(2)),
                by_library: cap(self.libraries, limits.max_client_names.saturating_mul(2)),
                total_memory: self.tot_mem,
                subscriptions_shard: self.ssub,
            }),
            max_connections: None,
        }
    }
}

/// Keeps the `n` largest entries (ties broken by name, so the choice is stable) and sums the rest
/// into [`OTHER`]. A real key named `other` is merged into that bucket. Output is sorted by name.
pub fn cap<S>(map: HashMap<Box<str>, u64, S>, n: usize) -> Vec<(String, u64)> {
    let mut v: Vec<(Box<str>, u64)> = map.into_iter().collect();
    let mut other = 0u64;
    // Counts come from the wire (`SourceStats`): every sum saturates, never wraps or panics.
    v.retain(|(k, c)| {
        if &**k == OTHER {
            other = other.saturating_add(*c);
            false
        } else {
            true
        }
    });
    if v.len() > n {
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        other = v[n..]
            .iter()
            .fold(other, |acc, (_, c)| acc.saturating_add(*c));
        v.truncate(n);
    }
    let mut out: Vec<(String, u64)> = v.into_iter().map(|(k, c)| (k.into(), c)).collect();
    if other > 0 {
        out.push((OTHER.to_owned(), other));
    }
    out.sort_unstable();
    out
}

/// Everything exported about one instance's sessions at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Sessions actually listed and folded.
    pub sessions: u64,
    /// `Data.Total` as the source reported it.
    pub reported_total: u64,
    pub timestamp_ms: Option<i64>,
    pub by_node: Vec<(String, u64)>,
    pub by_source: Vec<(String, u64)>,
    pub by_command: Vec<(String, u64)>,
    pub by_client_name: Vec<(String, u64)>,
    /// Sessions per db: `None` when the source gave none, [`DB_OTHER`] for every db outside
    /// 0–[`MAX_DB`].
    pub by_db: Vec<(Option<i64>, u64)>,
    /// Indexed like [`FLAGS`], then [`FLAG_UNKNOWN`].
    pub by_flag: [u64; FLAGS.len() + 1],
    pub subscriptions_channel: u64,
    pub subscriptions_pattern: u64,
    pub in_transaction: u64,
    pub query_buffer_free_bytes: u64,
    pub output_list_objects: u64,
    pub fixed_output_buffer_bytes: u64,
    pub query_buffer_max_bytes: u64,
    pub output_buffer_max_bytes: u64,
    pub output_list_max_objects: u64,
    pub idle: Distribution,
    pub age: Distribution,
    pub query_buffer: Distribution,
    pub output_buffer: Distribution,
    /// Per-client figures, when the fold kept them; consumed by [`Snapshot::apply_caps`].
    pub by_client: Vec<(String, ClientFigures)>,
    /// Sessions by workload (attribution), capped; `None` when attribution is off.
    pub by_workload: Option<Vec<(Workload, ClientFigures)>>,
    /// Present only when the source reports direct-only fields.
    pub direct: Option<DirectFigures>,
    /// The connection limit the source itself reported (the direct source: the nodes'
    /// `maxclients`, summed); `None` when it did not say.
    pub max_connections: Option<u64>,
}

/// Figures only a direct (CLIENT LIST) source can give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectFigures {
    pub by_user: Vec<(String, u64)>,
    pub by_library: Vec<(String, u64)>,
    pub total_memory: Distribution,
    /// Sum of `ssub` (shard-channel subscriptions).
    pub subscriptions_shard: u64,
}

/// Name under which flag slot `i` is exported.
pub fn flag_name(i: usize) -> &'static str {
    FLAGS.get(i).map_or(FLAG_UNKNOWN_NAME, |(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn session<'a>(node: &'a str, cmd: &'a str, name: &'a str, flags: &'a str) -> SessionView<'a> {
        SessionView {
            node_id: node,
            cmd,
            name,
            flags,
            db: Some(0),
            multi: -1,
            ..Default::default()
        }
    }

    #[test]
    fn every_db_is_counted_in_order() {
        let mut f = Fold::new();
        for db in [
            Some(16),
            None,
            Some(0),
            Some(-3),
            Some(15),
            Some(0),
            Some(i64::MAX),
        ] {
            f.add(&SessionView {
                db,
                ..session("n", "get", "", "N")
            });
        }
        let snap = f.finish(&Limits::default(), None, None);
        assert_eq!(
            snap.by_db,
            vec![
                (None, 1),
                (Some(DB_OTHER), 2),
                (Some(0), 2),
                (Some(15), 1),
                (Some(16), 1),
            ],
            "-3 and i64::MAX are both other"
        );
    }

    #[test]
    fn labels_counted_in_bulk_equal_labels_counted_per_session() {
        let labels = [("p1", "GET", "a"), ("p2", "get", ""), ("p1", "Set", "a")];
        let mut one_by_one = Fold::new();
        let mut bulk = Fold::new();
        for (node, cmd, name) in labels {
            one_by_one.add(&session(node, cmd, name, "N"));
            bulk.add_figures(&Figures {
                db: Some(0),
                flags: parse_flags("N"),
                multi: -1,
                ..Figures::default()
            });
        }
        bulk.add_node("p1", 2);
        bulk.add_node("p2", 1);
        bulk.add_command("GET", 1);
        bulk.add_command("get", 1);
        bulk.add_command("Set", 1);
        bulk.add_client_name("a", 2);
        bulk.add_client_name("", 1);
        let limits = Limits::default();
        let bulk = bulk.finish(&limits, None, None);
        assert_eq!(bulk, one_by_one.finish(&limits, None, None));
        assert_eq!(
            bulk.by_command,
            vec![("get".to_owned(), 2), ("set".to_owned(), 1)]
        );
    }

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        let mut d = Distribution::new(IDLE_BOUNDS);
        for v in [0, 1, 2, 5, 86400, 86401] {
            d.observe(v);
        }
        let cum: Vec<u64> = d.cumulative().collect();
        assert_eq!(cum[0], 2, "0 and 1 are <= 1");
        assert_eq!(cum[1], 4, "2 and 5 are <= 5");
        assert_eq!(cum[IDLE_BOUNDS.len() - 1], 5, "86400 is <= 86400");
        assert_eq!(*cum.last().unwrap(), 6);
        assert_eq!(d.sum, 86400 + 86401 + 8);
    }

    #[test]
    fn buffer_zero_bucket_holds_empty_buffers() {
        let mut d = Distribution::new(BUFFER_BOUNDS);
        d.observe(0);
        d.observe(1);
        assert_eq!(d.counts[0], 1);
        assert_eq!(d.counts[1], 1);
    }

    #[test]
    fn flags_count_once_per_session_and_unknown_letters() {
        let mut f = Fold::new();
        f.add(&session("n", "get", "", "xx"));
        f.add(&session("n", "get", "", "bZ?"));
        f.add(&session("n", "get", "", ""));
        let s = f.finish(&Limits::default(), None, None);
        let slot = |name: &str| (0..=FLAG_UNKNOWN).find(|&i| flag_name(i) == name).unwrap();
        assert_eq!(s.by_flag[slot("multi")], 1);
        assert_eq!(s.by_flag[slot("blocked")], 1);
        assert_eq!(
            s.by_flag[slot("unknown")],
            1,
            "Z and ? are one unknown session"
        );
        assert_eq!(s.by_flag.iter().sum::<u64>(), 3);
    }

    #[test]
    fn commands_are_lower_cased_and_merged() {
        let mut f = Fold::new();
        f.add(&session("n", "PING", "", "N"));
        f.add(&session("n", "ping", "", "N"));
        f.add(&session("n", "Client|List", "", "N"));
        let s = f.finish(&Limits::default(), None, None);
        assert_eq!(
            s.by_command,
            vec![("client|list".to_owned(), 1), ("ping".to_owned(), 2)]
        );
    }

    #[test]
    fn cap_keeps_largest_and_sums_the_rest() {
        let map: HashMap<Box<str>, u64> = [("a", 5), ("b", 1), ("c", 3), ("d", 3), ("other", 2)]
            .into_iter()
            .map(|(k, v)| (k.into(), v))
            .collect();
        let v = cap(map, 2);
        // a=5 and c=3 win (c before d on the tie); b, d and the literal "other" are summed.
        assert_eq!(
            v,
            vec![("a".into(), 5), ("c".into(), 3), ("other".into(), 6)]
        );
    }

    /// Node ids and databases come from the wire: past `[limits] max_nodes` node ids share
    /// `other` (the fold keeps twice the cap, the sticky cap the cap itself), and every db
    /// outside 0–255 is one `other` entry, whatever its number.
    #[test]
    fn nodes_and_dbs_are_bounded() {
        let limits = Limits {
            max_nodes: 3,
            ..Limits::default()
        };
        let mut f = Fold::for_limits(&limits);
        for (i, db) in [0i64, 255, 256, -1, 1000, i64::MAX, i64::MIN, 7, 7, 15, 16]
            .into_iter()
            .enumerate()
        {
            let node = format!("node-{}", i % 10);
            let mut s = session(&node, "get", "", "N");
            s.db = Some(db);
            f.add(&s);
        }
        let snap = f.finish(&limits, None, None);
        let dbs: BTreeMap<Option<i64>, u64> = snap.by_db.iter().copied().collect();
        let want: BTreeMap<Option<i64>, u64> = [
            (Some(0), 1),
            (Some(7), 2),
            (Some(15), 1),
            (Some(16), 1),
            (Some(255), 1),
            (Some(DB_OTHER), 5),
        ]
        .into_iter()
        .collect();
        assert_eq!(dbs, want);
        assert_eq!(
            snap.by_node.len(),
            7,
            "2 × 3 kept and other: {:?}",
            snap.by_node
        );
        assert_eq!(snap.by_node.iter().map(|e| e.1).sum::<u64>(), 11);
        let mut capped = snap.clone();
        capped.apply_caps(&limits, &mut Caps::default(), None);
        assert_eq!(
            capped.by_node.len(),
            4,
            "3 kept and other: {:?}",
            capped.by_node
        );
        assert_eq!(capped.by_node.iter().map(|e| e.1).sum::<u64>(), 11);
        assert!(capped.by_node.iter().any(|e| e.0 == OTHER));
    }

    /// Figures from the wire at their largest, three times: every sum (subscriptions, buffers,
    /// list objects, memory, the distributions' `_sum`) saturates at `u64::MAX`, and the source
    /// counts too; nothing wraps, nothing panics in a debug build.
    #[test]
    fn sums_of_huge_figures_saturate() {
        let mut f = Fold::new();
        for _ in 0..3 {
            let mut s = session("n", "get", "", "N");
            (s.sub, s.psub, s.qbuf, s.qbuf_free, s.obl, s.oll, s.omem) = (
                u64::MAX,
                u64::MAX,
                u64::MAX,
                u64::MAX,
                u64::MAX,
                u64::MAX,
                u64::MAX,
            );
            (s.idle, s.age, s.tot_mem, s.ssub) =
                (u64::MAX, u64::MAX, Some(u64::MAX), Some(u64::MAX));
            f.add(&s);
            f.add_source("10.0.0.1", i64::MAX as u64);
        }
        let snap = f.finish(&Limits::default(), Some(u64::MAX), None);
        assert_eq!(snap.sessions, 3);
        for (name, v) in [
            ("sub", snap.subscriptions_channel),
            ("psub", snap.subscriptions_pattern),
            ("qbuf_free", snap.query_buffer_free_bytes),
            ("oll", snap.output_list_objects),
            ("obl", snap.fixed_output_buffer_bytes),
            ("idle sum", snap.idle.sum),
            ("age sum", snap.age.sum),
            ("qbuf sum", snap.query_buffer.sum),
            ("omem sum", snap.output_buffer.sum),
        ] {
            assert_eq!(v, u64::MAX, "{name}");
        }
        let d = snap.direct.as_ref().unwrap();
        assert_eq!(
            (d.total_memory.sum, d.subscriptions_shard),
            (u64::MAX, u64::MAX)
        );
        assert_eq!(snap.by_source, vec![("10.0.0.1".to_owned(), u64::MAX)]);
        assert_eq!(snap.reported_total, u64::MAX);
    }

    #[test]
    fn transactions_and_reported_total() {
        let mut f = Fold::new();
        let mut s = session("n", "exec", "", "x");
        s.multi = 0;
        f.add(&s);
        f.add(&session("n", "get", "", "N"));
        let snap = f.finish(&Limits::default(), Some(7), Some(1_000));
        assert_eq!(snap.in_transaction, 1);
        assert_eq!(snap.reported_total, 7);
        assert_eq!(snap.sessions, 2);
    }

    proptest! {
        /// Any text: no panic, only defined slots set, and the set is the union of the letters'
        /// slots (so a letter counts once however often it repeats).
        #[test]
        fn parse_flags_is_total_and_a_union(flags in any::<String>()) {
            let bits = parse_flags(&flags);
            prop_assert_eq!(bits >> (FLAG_UNKNOWN + 1), 0);
            let union = flags.chars().fold(0u32, |acc, c| acc | parse_flags(c.encode_utf8(&mut [0; 4])));
            prop_assert_eq!(bits, union);
            for (i, (letter, _)) in FLAGS.iter().enumerate() {
                prop_assert_eq!(bits & (1 << i) != 0, flags.contains(*letter));
            }
            let unknown = flags.chars().any(|c| !FLAGS.iter().any(|(l, _)| *l == c));
            prop_assert_eq!(bits & (1 << FLAG_UNKNOWN) != 0, unknown);
        }
    }

    prop_compose! {
        /// One session with every field the fold reads, direct-only ones included when `direct`.
        fn arb_full_session(direct: bool)(
            node in "[a-c]{0,2}", cmd in "[a-dA-D|]{0,3}", name in "(other|[a-z]{0,2})",
            flags in "[AbcdeiMNOPrSuUxtTRBZq]{0,5}", db in proptest::option::of(prop_oneof![-1i64..20, 250i64..260, Just(i64::MIN)]),
            sub in 0u64..5, psub in 0u64..5, multi in -1i64..3,
            qbuf in 0u64..100_000, qbuf_free in 0u64..40_000, obl in 0u64..16_384,
            omem in 0u64..20_000_000, oll in 0u64..50,
            idle in 0u64..200_000, age in 0u64..3_000_000,
            user in proptest::option::of("[u-w]{0,1}"), lib in proptest::option::of("[l-m]{0,1}"),
            tot_mem in proptest::option::of(0u64..300_000_000), ssub in proptest::option::of(0u64..4),
            client in "(10\\.0\\.0\\.[1-4])?",
        ) -> Full {
            Full {
                node, cmd, name, flags, db, sub, psub, multi, qbuf, qbuf_free, obl, omem, oll,
                idle, age, client,
                user: user.filter(|_| direct), lib: lib.filter(|_| direct),
                tot_mem: tot_mem.filter(|_| direct), ssub: ssub.filter(|_| direct),
            }
        }
    }

    #[derive(Debug, Clone)]
    struct Full {
        node: String,
        cmd: String,
        name: String,
        flags: String,
        db: Option<i64>,
        sub: u64,
        psub: u64,
        multi: i64,
        qbuf: u64,
        qbuf_free: u64,
        obl: u64,
        omem: u64,
        oll: u64,
        idle: u64,
        age: u64,
        user: Option<String>,
        lib: Option<String>,
        tot_mem: Option<u64>,
        ssub: Option<u64>,
        client: String,
    }

    /// `(key, count)` per key, counted the plain way.
    fn tally<K: Ord>(keys: impl IntoIterator<Item = K>) -> BTreeMap<K, u64> {
        let mut m = BTreeMap::new();
        for k in keys {
            *m.entry(k).or_insert(0) += 1;
        }
        m
    }

    /// A capped breakdown against the full map it was cut from: the kept entries are exactly
    /// the `limit` largest (ties to the smaller name), with their true counts, and `other` holds
    /// the rest (plus any real key named `other`).
    fn check_capped(
        got: &[(String, u64)],
        full: &BTreeMap<String, u64>,
        limit: usize,
    ) -> Result<(), TestCaseError> {
        let named: Vec<(&String, u64)> = full
            .iter()
            .filter(|(k, _)| k.as_str() != OTHER)
            .map(|(k, v)| (k, *v))
            .collect();
        let mut ranked = named.clone();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let keep = ranked.len().min(limit);
        let want_kept: BTreeMap<&str, u64> = ranked[..keep]
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        let got_kept: BTreeMap<&str, u64> = got
            .iter()
            .filter(|(k, _)| k != OTHER)
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        prop_assert_eq!(&got_kept, &want_kept);
        let rest: u64 =
            ranked[keep..].iter().map(|x| x.1).sum::<u64>() + full.get(OTHER).copied().unwrap_or(0);
        let got_other = got.iter().find(|(k, _)| k == OTHER).map(|x| x.1);
        prop_assert_eq!(got_other, (rest > 0).then_some(rest));
        Ok(())
    }

    /// Cumulative counts of `values` at each bound, the plain way.
    fn buckets(values: impl Iterator<Item = u64> + Clone, bounds: &[u64]) -> Vec<u64> {
        bounds
            .iter()
            .map(|b| values.clone().filter(|v| v <= b).count() as u64)
            .collect()
    }

    proptest! {
        /// Every breakdown, key by key, against maps built here from the raw sessions; the caps
        /// keep exactly the largest entries; every flag slot, `in_transaction`, the sums, maxima
        /// and bucket counts as well; direct-only figures when the sessions carry them.
        #[test]
        fn every_breakdown_matches_an_independent_tally(
            (direct, sessions) in any::<bool>().prop_flat_map(|d| {
                (Just(d), proptest::collection::vec(arb_full_session(d), 0..150))
            }),
            sources in proptest::collection::vec(("(other|10\\.0\\.0\\.[1-9])", 1u64..40), 0..20),
            max_sources in 0usize..5, max_commands in 0usize..5, max_names in 0usize..5,
            threshold_at in proptest::option::of(any::<proptest::sample::Index>()),
        ) {
            // The threshold is one session's idle time, so the boundary (idle == threshold
            // counts as long idle) is always exercised.
            let idle_threshold =
                threshold_at.map(|i| sessions.get(i.index(sessions.len().max(1))).map_or(0, |s| s.idle));
            let limits = Limits {
                max_sources, max_commands, max_client_names: max_names,
                client_idle_threshold: idle_threshold,
                ..Limits::default()
            };
            let mut f = Fold::for_limits(&limits);
            for s in &sessions {
                f.add(&SessionView {
                    node_id: &s.node, cmd: &s.cmd, name: &s.name, flags: &s.flags, db: s.db,
                    sub: s.sub, psub: s.psub, multi: s.multi, qbuf: s.qbuf,
                    qbuf_free: s.qbuf_free, obl: s.obl, omem: s.omem, oll: s.oll,
                    idle: s.idle, age: s.age,
                    user: s.user.as_deref(), lib_name: s.lib.as_deref(), tot_mem: s.tot_mem,
                    ssub: s.ssub, client: &s.client,
                });
            }
            for (src, n) in &sources {
                f.add_source(src, *n);
            }
            let snap = f.finish(&limits, None, None);
            let n = sessions.len() as u64;
            prop_assert_eq!(snap.sessions, n);
            prop_assert_eq!(snap.reported_total, n);

            let nodes = tally(sessions.iter().map(|s| s.node.clone()));
            prop_assert_eq!(snap.by_node.iter().cloned().collect::<BTreeMap<_, _>>(), nodes);
            // Databases past 0–255 (and negative ones) are one `other` entry, keyed i64::MIN.
            let dbs = tally(sessions.iter().map(|s| s.db.map(|d| if (0..=255).contains(&d) { d } else { i64::MIN })));
            prop_assert_eq!(snap.by_db.iter().cloned().collect::<BTreeMap<_, _>>(), dbs);
            // The fold keeps twice each cap (all the sticky rule can name); the sticky caps of
            // a first poll (nothing held yet) are the plain ones.
            let commands = tally(sessions.iter().map(|s| s.cmd.to_ascii_lowercase()));
            check_capped(&snap.by_command, &commands, 2 * max_commands)?;
            let names = tally(sessions.iter().map(|s| s.name.clone()));
            check_capped(&snap.by_client_name, &names, 2 * max_names)?;
            let mut source_counts = BTreeMap::new();
            for (src, c) in &sources {
                *source_counts.entry(src.clone()).or_insert(0) += c;
            }
            check_capped(&snap.by_source, &source_counts, 2 * max_sources)?;

            // Per-client figures, kept only with attribution's idle threshold.
            let mut clients: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
            if let Some(t) = idle_threshold {
                for s in &sessions {
                    let c = clients.entry(&s.client).or_default();
                    c.0 += 1;
                    c.1 += u64::from(s.idle >= t);
                    c.2 = c.2.max(s.omem);
                }
            }
            let got: BTreeMap<&str, (u64, u64, u64)> = snap
                .by_client
                .iter()
                .map(|(c, f)| (c.as_str(), (f.sessions, f.long_idle, f.output_buffer_max)))
                .collect();
            prop_assert_eq!(got, clients);

            let mut first = snap.clone();
            first.apply_caps(&limits, &mut Caps::default(), None);
            check_capped(&first.by_command, &commands, max_commands)?;
            check_capped(&first.by_client_name, &names, max_names)?;
            check_capped(&first.by_source, &source_counts, max_sources)?;
            prop_assert!(first.by_client.is_empty());

            // Flags: the documented letters, written out here rather than read from FLAGS.
            let letters = "AbcdeiMNOPrSuUxtTRB";
            for (slot, letter) in letters.chars().enumerate() {
                let want = sessions.iter().filter(|s| s.flags.contains(letter)).count() as u64;
                prop_assert_eq!(snap.by_flag[slot], want, "flag {}", letter);
            }
            let unknown = sessions
                .iter()
                .filter(|s| s.flags.chars().any(|c| !letters.contains(c)))
                .count() as u64;
            prop_assert_eq!(snap.by_flag[letters.len()], unknown, "unknown flags");
            prop_assert_eq!(snap.by_flag.len(), letters.len() + 1);

            let in_tx = sessions.iter().filter(|s| s.multi >= 0).count() as u64;
            prop_assert_eq!(snap.in_transaction, in_tx);
            prop_assert_eq!(snap.subscriptions_channel, sessions.iter().map(|s| s.sub).sum::<u64>());
            prop_assert_eq!(snap.subscriptions_pattern, sessions.iter().map(|s| s.psub).sum::<u64>());
            prop_assert_eq!(snap.query_buffer_free_bytes, sessions.iter().map(|s| s.qbuf_free).sum::<u64>());
            prop_assert_eq!(snap.output_list_objects, sessions.iter().map(|s| s.oll).sum::<u64>());
            prop_assert_eq!(snap.fixed_output_buffer_bytes, sessions.iter().map(|s| s.obl).sum::<u64>());
            prop_assert_eq!(snap.query_buffer_max_bytes, sessions.iter().map(|s| s.qbuf).max().unwrap_or(0));
            prop_assert_eq!(snap.output_buffer_max_bytes, sessions.iter().map(|s| s.omem).max().unwrap_or(0));
            prop_assert_eq!(snap.output_list_max_objects, sessions.iter().map(|s| s.oll).max().unwrap_or(0));
            for (d, values, bounds) in [
                (&snap.idle, sessions.iter().map(|s| s.idle).collect::<Vec<_>>(), IDLE_BOUNDS),
                (&snap.age, sessions.iter().map(|s| s.age).collect(), AGE_BOUNDS),
                (&snap.query_buffer, sessions.iter().map(|s| s.qbuf).collect(), BUFFER_BOUNDS),
                (&snap.output_buffer, sessions.iter().map(|s| s.omem).collect(), BUFFER_BOUNDS),
            ] {
                prop_assert_eq!(d.count(), n);
                prop_assert_eq!(d.sum, values.iter().sum::<u64>());
                prop_assert_eq!(d.cumulative().take(bounds.len()).collect::<Vec<_>>(), buckets(values.iter().copied(), bounds));
            }

            let with_direct: Vec<&Full> = sessions
                .iter()
                .filter(|s| s.user.is_some() || s.lib.is_some() || s.tot_mem.is_some() || s.ssub.is_some())
                .collect();
            match (&snap.direct, &first.direct) {
                (None, None) => prop_assert!(with_direct.is_empty()),
                (None, Some(_)) | (Some(_), None) => prop_assert!(false, "caps changed direct"),
                (Some(d), Some(first)) => {
                    prop_assert!(direct && !with_direct.is_empty());
                    let users = tally(with_direct.iter().map(|s| s.user.clone().unwrap_or_default()));
                    check_capped(&d.by_user, &users, 2 * max_names)?;
                    check_capped(&first.by_user, &users, max_names)?;
                    let libs = tally(with_direct.iter().map(|s| s.lib.clone().unwrap_or_default()));
                    check_capped(&d.by_library, &libs, 2 * max_names)?;
                    check_capped(&first.by_library, &libs, max_names)?;
                    prop_assert_eq!(d.subscriptions_shard, with_direct.iter().map(|s| s.ssub.unwrap_or(0)).sum::<u64>());
                    prop_assert_eq!(d.total_memory.count(), with_direct.len() as u64);
                    prop_assert_eq!(
                        d.total_memory.cumulative().take(TOTAL_MEMORY_BOUNDS.len()).collect::<Vec<_>>(),
                        buckets(with_direct.iter().map(|s| s.tot_mem.unwrap_or(0)), TOTAL_MEMORY_BOUNDS)
                    );
                }
            }
        }
    }
}
