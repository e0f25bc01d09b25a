//! A pure, tolerant parser for the text `CLIENT LIST` returns: one client per line, `key=value`
//! pairs separated by single spaces.
//!
//! Every field Redis 6 and 7 (up to 7.2's `lib-name`/`lib-ver`) emit is recognised; unknown fields
//! are ignored (newer servers add some), missing ones take their documented "absent" value, and a
//! number that does not parse counts as absent rather than failing the line. Values are borrowed
//! from the reply, so folding a large list allocates nothing per client.

use crate::snapshot::SessionView;

/// One client as `CLIENT LIST` describes it. Text fields borrow from the reply; `None` means the
/// server did not send that field (older versions lack `ssub`, `user`, `lib-name`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo<'a> {
    pub id: Option<u64>,
    /// `ip:port` (IPv6 without brackets: `::1:6379`) or `/path/to.sock:0` for a Unix socket.
    pub addr: &'a str,
    pub laddr: Option<&'a str>,
    pub fd: Option<i64>,
    /// May contain any non-space character, `=` included.
    pub name: &'a str,
    pub age: Option<u64>,
    pub idle: Option<u64>,
    pub flags: &'a str,
    pub db: Option<i64>,
    pub sub: Option<u64>,
    pub psub: Option<u64>,
    pub ssub: Option<u64>,
    /// Commands queued in MULTI; `-1` outside a transaction.
    pub multi: Option<i64>,
    pub qbuf: Option<u64>,
    pub qbuf_free: Option<u64>,
    pub argv_mem: Option<u64>,
    pub multi_mem: Option<u64>,
    pub obl: Option<u64>,
    pub oll: Option<u64>,
    pub omem: Option<u64>,
    pub tot_mem: Option<u64>,
    pub events: &'a str,
    pub cmd: &'a str,
    pub user: Option<&'a str>,
    pub redir: Option<i64>,
    pub resp: Option<u8>,
    pub lib_name: Option<&'a str>,
    pub lib_ver: Option<&'a str>,
}

/// Parses one line. Tokens without `=` are skipped; a later duplicate key wins.
pub fn parse_line(line: &str) -> ClientInfo<'_> {
    let mut c = ClientInfo::default();
    for token in line.trim_end_matches(['\r', '\n']).split(' ') {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        let u = || value.parse::<u64>().ok();
        let i = || value.parse::<i64>().ok();
        match key {
            "id" => c.id = u(),
            "addr" => c.addr = value,
            "laddr" => c.laddr = Some(value),
            "fd" => c.fd = i(),
            "name" => c.name = value,
            "age" => c.age = u(),
            "idle" => c.idle = u(),
            "flags" => c.flags = value,
            "db" => c.db = i(),
            "sub" => c.sub = u(),
            "psub" => c.psub = u(),
            "ssub" => c.ssub = u(),
            "multi" => c.multi = i(),
            "qbuf" => c.qbuf = u(),
            "qbuf-free" => c.qbuf_free = u(),
            "argv-mem" => c.argv_mem = u(),
            "multi-mem" => c.multi_mem = u(),
            "obl" => c.obl = u(),
            "oll" => c.oll = u(),
            "omem" => c.omem = u(),
            "tot-mem" => c.tot_mem = u(),
            "events" => c.events = value,
            "cmd" => c.cmd = value,
            "user" => c.user = Some(value),
            "redir" => c.redir = i(),
            "resp" => c.resp = value.parse().ok(),
            "lib-name" => c.lib_name = Some(value),
            "lib-ver" => c.lib_ver = Some(value),
            _ => {}
        }
    }
    c
}

/// Every non-empty line of a reply, parsed.
pub fn parse(reply: &str) -> impl Iterator<Item = ClientInfo<'_>> {
    reply
        .split('\n')
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
}

impl<'a> ClientInfo<'a> {
    /// The client's host part of `addr`: the IP (IPv6 unbracketed, as Redis prints it), or the
    /// socket path for a Unix-socket client. This is the `source` label, like DAS `SourceStats`.
    pub fn client_ip(&self) -> &'a str {
        match self.addr.rsplit_once(':') {
            Some((host, _)) => host,
            None => self.addr,
        }
    }

    /// The borrowed view the fold takes. `node_id` is the node this list came from.
    pub fn view(&self, node_id: &'a str) -> SessionView<'a> {
        SessionView {
            node_id,
            client: self.client_ip(),
            cmd: self.cmd,
            db: self.db,
            name: self.name,
            flags: self.flags,
            sub: self.sub.unwrap_or(0),
            psub: self.psub.unwrap_or(0),
            multi: self.multi.unwrap_or(-1),
            qbuf: self.qbuf.unwrap_or(0),
            qbuf_free: self.qbuf_free.unwrap_or(0),
            obl: self.obl.unwrap_or(0),
            oll: self.oll.unwrap_or(0),
            omem: self.omem.unwrap_or(0),
            idle: self.idle.unwrap_or(0),
            age: self.age.unwrap_or(0),
            user: self.user,
            lib_name: self.lib_name,
            tot_mem: self.tot_mem,
            ssub: self.ssub,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from Redis 7.2 (`CLIENT LIST` of a server with a blocked and a pub/sub client).
    const REDIS_72: &str = "id=3 addr=127.0.0.1:52102 laddr=127.0.0.1:6379 fd=8 name=worker=a1 age=12 idle=3 flags=b db=3 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=9 multi-mem=0 rbs=1024 rbp=0 obl=0 oll=0 omem=0 tot-mem=1945 events=r cmd=blpop user=default redir=-1 resp=2 lib-name=redis-py lib-ver=5.0.1\n\
id=4 addr=::1:40012 laddr=::1:6379 fd=9 name= age=5 idle=5 flags=P db=0 sub=2 psub=1 ssub=1 multi=-1 qbuf=0 qbuf-free=20474 argv-mem=0 multi-mem=0 rbs=1024 rbp=0 obl=0 oll=0 omem=0 tot-mem=22298 events=r cmd=subscribe user=app redir=-1 resp=3 lib-name= lib-ver=\n";

    /// Captured from Redis 6.0: no ssub, multi-mem, lib-name or lib-ver.
    const REDIS_60: &str = "id=7 addr=/var/run/redis.sock:0 fd=10 name=cron age=100 idle=0 flags=xU db=1 sub=0 psub=0 multi=2 qbuf=26 qbuf-free=32742 argv-mem=10 obl=0 oll=0 omem=0 tot-mem=61466 events=r cmd=incr user=default redir=-1\r\n";

    #[test]
    fn every_redis_7_field() {
        let v: Vec<_> = parse(REDIS_72).collect();
        assert_eq!(v.len(), 2);
        let a = &v[0];
        assert_eq!(a.id, Some(3));
        assert_eq!(a.addr, "127.0.0.1:52102");
        assert_eq!(a.client_ip(), "127.0.0.1");
        assert_eq!(a.laddr, Some("127.0.0.1:6379"));
        assert_eq!(a.fd, Some(8));
        assert_eq!(a.name, "worker=a1", "a name may contain '='");
        assert_eq!((a.age, a.idle), (Some(12), Some(3)));
        assert_eq!(a.flags, "b");
        assert_eq!(a.db, Some(3));
        assert_eq!((a.sub, a.psub, a.ssub), (Some(0), Some(0), Some(0)));
        assert_eq!(a.multi, Some(-1));
        assert_eq!((a.qbuf, a.qbuf_free), (Some(0), Some(0)));
        assert_eq!((a.argv_mem, a.multi_mem), (Some(9), Some(0)));
        assert_eq!((a.obl, a.oll, a.omem), (Some(0), Some(0), Some(0)));
        assert_eq!(a.tot_mem, Some(1945));
        assert_eq!(a.events, "r");
        assert_eq!(a.cmd, "blpop");
        assert_eq!(a.user, Some("default"));
        assert_eq!(a.redir, Some(-1));
        assert_eq!(a.resp, Some(2));
        assert_eq!((a.lib_name, a.lib_ver), (Some("redis-py"), Some("5.0.1")));

        let b = &v[1];
        assert_eq!(b.client_ip(), "::1", "IPv6 keeps its colons");
        assert_eq!(b.name, "");
        assert_eq!((b.sub, b.psub, b.ssub), (Some(2), Some(1), Some(1)));
        assert_eq!(b.lib_name, Some(""));
        assert_eq!(b.resp, Some(3));
    }

    #[test]
    fn redis_6_lines_default_the_missing_fields() {
        let c = parse(REDIS_60).next().unwrap();
        assert_eq!(c.client_ip(), "/var/run/redis.sock");
        assert_eq!(c.ssub, None);
        assert_eq!(c.laddr, None);
        assert_eq!(c.lib_name, None);
        assert_eq!(c.multi, Some(2));
        assert_eq!(c.cmd, "incr", "the trailing \\r is not part of the value");
        let v = c.view("n:1");
        assert_eq!(v.multi, 2);
        assert_eq!(v.user, Some("default"));
        assert_eq!(v.tot_mem, Some(61466));
    }

    #[test]
    fn tolerant_of_junk_unknown_fields_and_bad_numbers() {
        let c = parse_line("garbage id=x idle=-3 future-field=1 =7 name==x flags=N age=5 age=6");
        assert_eq!(c.id, None);
        assert_eq!(
            c.idle, None,
            "negative idle is absent, not a wrapped number"
        );
        assert_eq!(c.name, "=x");
        assert_eq!(c.age, Some(6), "a later duplicate wins");
        let v = c.view("n");
        assert_eq!((v.multi, v.idle, v.db), (-1, 0, None));
        assert_eq!(v.user, None);
        assert_eq!(parse("\n\n  \n").count(), 0);
        assert_eq!(parse_line("").addr, "");
        assert_eq!(parse_line("addr=nocolon").client_ip(), "nocolon");
    }
}
