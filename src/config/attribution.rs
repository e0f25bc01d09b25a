//! `[attribution]`: which networks and Kubernetes namespaces name the holders of sessions.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KeyError;

/// `[attribution]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionConfig {
    /// Static networks for clients outside the cluster; the longest prefix wins.
    pub networks: Vec<NetworkConfig>,
    /// Sessions idle at least this long count in `redis_sessions_long_idle_by_workload`.
    #[serde(with = "humantime_serde")]
    pub idle_threshold: Duration,
    pub kubernetes: KubernetesConfig,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        Self {
            networks: Vec::new(),
            idle_threshold: Duration::from_secs(600),
            kubernetes: KubernetesConfig::default(),
        }
    }
}

/// One entry of `[attribution] networks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// `10.8.0.0/16`, `fd00::/8`, or a bare address (a host route).
    pub cidr: String,
    pub name: String,
}

/// `[attribution.kubernetes]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    pub enabled: bool,
    /// Empty: the whole cluster; else only these namespaces.
    pub namespaces: Vec<String>,
}

/// Longest network name accepted: it becomes a label value.
const MAX_NAME: usize = 128;

/// Parses a `cidr` value: a prefix, or a bare address as a host route.
pub fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{s:?} is not an IP prefix like 10.8.0.0/16 or fd00::/8"))
}

/// A namespace name as Kubernetes accepts it (an RFC 1123 label).
fn is_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl AttributionConfig {
    /// Whether anything is attributed: networks configured or Kubernetes enabled.
    pub fn is_enabled(&self) -> bool {
        self.kubernetes.enabled || !self.networks.is_empty()
    }

    /// The networks as parsed prefixes (after [`AttributionConfig::validate`] accepted them).
    pub fn parsed_networks(&self) -> Vec<(ipnet::IpNet, String)> {
        self.networks
            .iter()
            .filter_map(|n| parse_cidr(&n.cidr).ok().map(|c| (c, n.name.clone())))
            .collect()
    }

    pub fn validate(&self) -> Vec<KeyError> {
        let mut errs = Vec::new();
        let mut err = |key: String, reason: String| errs.push(KeyError { key, reason });
        let mut seen = HashSet::new();
        for (i, n) in self.networks.iter().enumerate() {
            let key = format!("attribution.networks[{i}]");
            match parse_cidr(&n.cidr) {
                Ok(net) => {
                    if !seen.insert(net) {
                        err(
                            format!("{key}.cidr"),
                            format!("{net} is listed twice (after clearing host bits)"),
                        );
                    }
                }
                Err(reason) => err(format!("{key}.cidr"), reason),
            }
            if n.name.trim().is_empty() {
                err(format!("{key}.name"), "must not be empty".into());
            } else if n.name.chars().count() > MAX_NAME {
                err(
                    format!("{key}.name"),
                    format!("at most {MAX_NAME} characters"),
                );
            }
        }
        if self.idle_threshold.is_zero() {
            err(
                "attribution.idle_threshold".into(),
                "must be greater than zero".into(),
            );
        }
        let mut seen = HashSet::new();
        for (i, ns) in self.kubernetes.namespaces.iter().enumerate() {
            let key = format!("attribution.kubernetes.namespaces[{i}]");
            if !is_namespace(ns) {
                err(
                    key,
                    format!("{ns:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"),
                );
            } else if !seen.insert(ns.as_str()) {
                err(key, format!("{ns:?} is listed twice"));
            }
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(c: &AttributionConfig) -> Vec<String> {
        c.validate().into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn defaults_are_off_and_valid() {
        let c = AttributionConfig::default();
        assert!(!c.is_enabled());
        assert!(c.validate().is_empty());
        assert_eq!(c.idle_threshold, Duration::from_secs(600));
    }

    #[test]
    fn every_error_names_its_key() {
        let c = AttributionConfig {
            networks: vec![
                NetworkConfig {
                    cidr: "10.0.0.0/8".into(),
                    name: "a".into(),
                },
                NetworkConfig {
                    cidr: "10.1.2.3/8".into(),
                    name: " ".into(),
                },
                NetworkConfig {
                    cidr: "10.0.0.0/33".into(),
                    name: "x".repeat(129),
                },
                NetworkConfig {
                    cidr: "192.168.1.1".into(),
                    name: "host".into(),
                },
            ],
            idle_threshold: Duration::ZERO,
            kubernetes: KubernetesConfig {
                enabled: true,
                namespaces: vec!["shop".into(), "Shop".into(), "shop".into(), "-x".into()],
            },
        };
        assert_eq!(
            keys(&c),
            [
                "attribution.networks[1].cidr",
                "attribution.networks[1].name",
                "attribution.networks[2].cidr",
                "attribution.networks[2].name",
                "attribution.idle_threshold",
                "attribution.kubernetes.namespaces[1]",
                "attribution.kubernetes.namespaces[2]",
                "attribution.kubernetes.namespaces[3]",
            ]
        );
        assert_eq!(c.parsed_networks().len(), 3, "the /33 is dropped");
        assert_eq!(
            parse_cidr("192.168.1.1").unwrap().to_string(),
            "192.168.1.1/32"
        );
        assert_eq!(parse_cidr("fd00::1/8").unwrap().to_string(), "fd00::/8");
    }
}
