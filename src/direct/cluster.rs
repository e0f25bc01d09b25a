//! A pure parser for `CLUSTER NODES`: which primaries and replicas a cluster has, and where.
//!
//! `CLUSTER NODES` is used rather than `CLUSTER SHARDS` because every cluster-capable Redis
//! (3.0 onwards) answers it, while `SHARDS` needs 7.0; both list the same nodes.

/// One node worth asking for its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// `host:port` of the client port; this is the `node_id` label.
    pub addr: String,
    pub primary: bool,
}

/// The reachable primaries and replicas, in the order listed, without duplicates.
///
/// Nodes flagged `fail`, `noaddr` or `handshake` are left out (nothing to connect to, or not yet
/// part of the cluster). The node answering lists itself with an empty IP before it has learnt
/// it (`:6379@16379`); `seed_host` fills that in.
pub fn parse_nodes(reply: &str, seed_host: &str) -> Vec<ClusterNode> {
    let mut out: Vec<ClusterNode> = Vec::new();
    for line in reply.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if flags
            .iter()
            .any(|f| matches!(*f, "fail" | "noaddr" | "handshake"))
        {
            continue;
        }
        let primary = flags.contains(&"master");
        if !primary && !flags.contains(&"slave") {
            continue;
        }
        // `ip:port@cport[,hostname]`
        let hostport = address.split(['@', ',']).next().unwrap_or("");
        let Some((host, port)) = hostport.rsplit_once(':') else {
            continue;
        };
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            continue;
        }
        let host = if host.is_empty() { seed_host } else { host };
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if !out.iter().any(|n| n.addr == addr) {
            out.push(ClusterNode { addr, primary });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_and_replicas_skipping_failed_nodes() {
        let reply = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host-a slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 slave,fail 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 0 1426238316232 5 connected
824fe116063bc5fcf9f4ffd895bc17aee7731ac3 :30006@31006 myself,master - 0 0 6 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca ::1:30001@31001 master,nofailover - 0 0 1 connected 0-5460
aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa :0@0 master,noaddr - 0 0 0 disconnected
truncated line
";
        let nodes = parse_nodes(reply, "10.0.0.1");
        let addrs: Vec<(&str, bool)> = nodes.iter().map(|n| (n.addr.as_str(), n.primary)).collect();
        assert_eq!(
            addrs,
            vec![
                ("127.0.0.1:30004", false),
                ("127.0.0.1:30002", true),
                ("127.0.0.1:30003", true),
                ("10.0.0.1:30006", true),
                ("[::1]:30001", true),
            ]
        );
    }
}
