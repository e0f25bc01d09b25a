//! Named networks from `[attribution] networks`: the longest configured prefix holding an IP.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

/// The configured networks, most specific first, so the first match is the longest prefix.
///
/// A handful to a few hundred entries: a scan in prefix order is simpler than a trie and costs
/// nothing next to the poll (each distinct client IP of an answer is looked up once).
#[derive(Debug, Clone, Default)]
pub struct Networks {
    table: Vec<(IpNet, Arc<str>)>,
}

impl Networks {
    /// Builds the table. Host bits are cleared (`10.1.2.3/8` means `10.0.0.0/8`); when one
    /// prefix is given twice the first name wins (config validation refuses that anyway).
    pub fn new(networks: impl IntoIterator<Item = (IpNet, String)>) -> Self {
        let mut table: Vec<(IpNet, Arc<str>)> = Vec::new();
        for (net, name) in networks {
            let net = net.trunc();
            if !table.iter().any(|(n, _)| *n == net) {
                table.push((net, name.into()));
            }
        }
        // Stable: equal lengths keep the configured order.
        table.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Self { table }
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The name of the longest prefix holding `ip`. An IPv4-mapped IPv6 address
    /// (`::ffff:10.0.0.1`) is looked up as the IPv4 address it carries.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Arc<str>> {
        let ip = ip.to_canonical();
        self.table
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, name)| name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nets(list: &[(&str, &str)]) -> Networks {
        Networks::new(
            list.iter()
                .map(|(c, n)| (c.parse().unwrap(), (*n).to_owned())),
        )
    }

    fn name(n: &Networks, ip: &str) -> Option<String> {
        n.lookup(ip.parse().unwrap()).map(|s| s.to_string())
    }

    #[test]
    fn longest_prefix_wins_whatever_the_order() {
        let n = nets(&[
            ("10.0.0.0/8", "corp"),
            ("10.8.0.0/16", "batch-vpc"),
            ("10.8.3.0/24", "batch-gpu"),
            ("192.168.0.0/16", "office"),
        ]);
        assert_eq!(name(&n, "10.8.3.7").as_deref(), Some("batch-gpu"));
        assert_eq!(name(&n, "10.8.4.7").as_deref(), Some("batch-vpc"));
        assert_eq!(name(&n, "10.9.0.1").as_deref(), Some("corp"));
        assert_eq!(name(&n, "192.168.255.255").as_deref(), Some("office"));
        assert_eq!(name(&n, "11.0.0.1"), None);
        assert_eq!(name(&n, "172.16.0.1"), None);
    }

    #[test]
    fn host_bits_are_ignored_and_edges_are_inside() {
        let n = nets(&[("10.1.2.3/24", "a")]);
        assert_eq!(name(&n, "10.1.2.0").as_deref(), Some("a"));
        assert_eq!(name(&n, "10.1.2.255").as_deref(), Some("a"));
        assert_eq!(name(&n, "10.1.3.0"), None);
        assert_eq!(name(&n, "10.1.1.255"), None);
    }

    #[test]
    fn ipv6_and_mapped_ipv4() {
        let n = nets(&[
            ("fd00::/8", "ula"),
            ("fd00:1::/32", "pods6"),
            ("10.0.0.0/8", "v4"),
        ]);
        assert_eq!(name(&n, "fd00:1::5").as_deref(), Some("pods6"));
        assert_eq!(name(&n, "fd00:2::5").as_deref(), Some("ula"));
        assert_eq!(name(&n, "::ffff:10.2.3.4").as_deref(), Some("v4"));
        assert_eq!(name(&n, "2001:db8::1"), None);
    }

    #[test]
    fn catch_all_routes_and_host_routes() {
        let n = nets(&[("0.0.0.0/0", "internet"), ("10.0.0.7/32", "bastion")]);
        assert_eq!(name(&n, "10.0.0.7").as_deref(), Some("bastion"));
        assert_eq!(name(&n, "10.0.0.8").as_deref(), Some("internet"));
        assert_eq!(
            name(&n, "::1"),
            None,
            "an IPv4 default route holds no IPv6 address"
        );
    }

    #[test]
    fn a_prefix_given_twice_keeps_its_first_name() {
        let n = nets(&[("10.0.0.0/8", "first"), ("10.9.9.9/8", "second")]);
        assert_eq!(name(&n, "10.1.1.1").as_deref(), Some("first"));
    }

    proptest! {
        /// Against a brute-force reference: among all networks holding the address, the answer
        /// has the longest prefix (the first configured among equal ones).
        #[test]
        fn agrees_with_brute_force(
            // Few distinct leading octets, so networks overlap and often hold the address.
            nets in proptest::collection::vec(((0u32..4, 0u32..4, any::<u16>()), 0u8..=32), 0..12),
            ip in (0u32..4, 0u32..4, any::<u16>()),
        ) {
            let addr = |(a, b, rest): (u32, u32, u16)| (a << 24) | (b << 16) | u32::from(rest);
            let list: Vec<(IpNet, String)> = nets
                .iter()
                .enumerate()
                .map(|(i, (a, len))| {
                    let net = ipnet::Ipv4Net::new(addr(*a).into(), *len).unwrap().trunc();
                    (IpNet::V4(net), format!("n{i}"))
                })
                .collect();
            let table = Networks::new(list.clone());
            let ip = IpAddr::V4(addr(ip).into());
            let mut best: Option<(u8, &str)> = None;
            for (net, name) in &list {
                if net.contains(&ip) && best.is_none_or(|(l, _)| net.prefix_len() > l) {
                    best = Some((net.prefix_len(), name));
                }
            }
            prop_assert_eq!(table.lookup(ip).map(|s| s.to_string()), best.map(|(_, n)| n.to_owned()));
        }
    }
}
