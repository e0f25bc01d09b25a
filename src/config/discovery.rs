//! `[[discovery]]`: one inventory query (R-KVStore `DescribeInstances`), run in each of its
//! regions, and its validation.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::KeyError;

/// The API takes at most this many tag filters.
pub const MAX_TAGS: usize = 5;
/// `{region}` is replaced by each region of the block.
pub const DEFAULT_ENDPOINT: &str = "https://r-kvstore.{region}.aliyuncs.com";
/// Small enough for tests; production refreshes every few minutes.
pub const MIN_REFRESH: Duration = Duration::from_millis(100);
/// Values of `architecture` the API knows.
pub const ARCHITECTURES: &[&str] = &["cluster", "standard", "rwsplit"];

/// `[[discovery]]`: one inventory query, run in each of its regions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    #[serde(default)]
    pub regions: Vec<String>,
    /// All must match (AND), as the API applies them.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// `InstanceStatus` filter. Absent: every status that can hold sessions (discovery leaves out
    /// `Creating`, `Released` and `Inactive`); `""`: any status at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Instance ids never to poll even when they match.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// A URL, where `{region}` (if present) becomes each region.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
}

fn default_refresh() -> Duration {
    Duration::from_secs(600)
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.into()
}

impl DiscoveryConfig {
    /// Every problem of this block, keys prefixed with `prefix` (`discovery[0]`).
    pub fn validate(&self, prefix: &str) -> Vec<KeyError> {
        let mut errs = Vec::new();
        let mut err = |key: String, reason: String| errs.push(KeyError { key, reason });
        if self.regions.is_empty() {
            err(
                format!("{prefix}.regions"),
                "must list at least one region, e.g. [\"cn-hangzhou\"]".into(),
            );
        }
        let mut seen = HashSet::new();
        for (j, r) in self.regions.iter().enumerate() {
            let valid = !r.is_empty()
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                err(
                    format!("{prefix}.regions[{j}]"),
                    format!("{r:?} is not a region id like \"cn-hangzhou\""),
                );
            } else if !seen.insert(r.as_str()) {
                err(
                    format!("{prefix}.regions[{j}]"),
                    format!("region {r:?} listed twice"),
                );
            }
        }
        if self.tags.len() > MAX_TAGS {
            err(
                format!("{prefix}.tags"),
                format!(
                    "{} tags given; DescribeInstances takes at most {MAX_TAGS}",
                    self.tags.len()
                ),
            );
        }
        for k in self.tags.keys() {
            if k.trim().is_empty() {
                err(
                    format!("{prefix}.tags"),
                    "a tag key must not be empty".into(),
                );
            }
        }
        if let Some(a) = &self.architecture {
            if !ARCHITECTURES.contains(&a.as_str()) {
                err(
                    format!("{prefix}.architecture"),
                    format!("{a:?} is not one of {}", ARCHITECTURES.join(", ")),
                );
            }
        }
        if self.instance_type.as_deref().is_some_and(str::is_empty) {
            err(
                format!("{prefix}.instance_type"),
                "must not be empty (leave it out to match every type)".into(),
            );
        }
        for (j, id) in self.exclude.iter().enumerate() {
            if id.trim().is_empty() {
                err(format!("{prefix}.exclude[{j}]"), "must not be empty".into());
            }
        }
        if self.refresh < MIN_REFRESH {
            err(
                format!("{prefix}.refresh"),
                format!(
                    "must be at least {}",
                    humantime::format_duration(MIN_REFRESH)
                ),
            );
        }
        let probe = self.endpoint_for("cn-hangzhou");
        let placeholders_left = probe.contains('{') || probe.contains('}');
        match url::Url::parse(&probe) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && !placeholders_left => {}
            _ => err(
                format!("{prefix}.endpoint"),
                format!(
                    "{:?} is not an http(s)://host[:port] URL (the only placeholder is {{region}})",
                    self.endpoint
                ),
            ),
        }
        errs
    }

    /// The endpoint of `region`: the template with `{region}` replaced, no trailing slash.
    pub fn endpoint_for(&self, region: &str) -> String {
        endpoint_for(&self.endpoint, region)
    }
}

/// [`DiscoveryConfig::endpoint_for`] of any template.
pub fn endpoint_for(template: &str, region: &str) -> String {
    template
        .replace("{region}", region)
        .trim_end_matches('/')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(toml_text: &str) -> DiscoveryConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults() {
        let b = block("regions = [\"cn-hangzhou\"]");
        assert_eq!(b.status, None);
        assert_eq!(b.refresh, Duration::from_secs(600));
        assert_eq!(b.endpoint, DEFAULT_ENDPOINT);
        assert!(b.validate("discovery[0]").is_empty());
        assert_eq!(
            endpoint_for(&b.endpoint, "cn-beijing"),
            "https://r-kvstore.cn-beijing.aliyuncs.com"
        );
        assert_eq!(
            endpoint_for("http://127.0.0.1:9/", "x"),
            "http://127.0.0.1:9"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let cases = [
            ("regions = []", "discovery[2].regions"),
            ("", "discovery[2].regions"),
            ("regions = [\"cn-hangzhou\", \"CN HZ\"]", "discovery[2].regions[1]"),
            ("regions = [\"a\", \"a\"]", "discovery[2].regions[1]"),
            (
                "regions = [\"a\"]\ntags = { a = \"1\", b = \"2\", c = \"3\", d = \"4\", e = \"5\", f = \"6\" }",
                "discovery[2].tags",
            ),
            ("regions = [\"a\"]\narchitecture = \"ring\"", "discovery[2].architecture"),
            ("regions = [\"a\"]\nrefresh = \"10ms\"", "discovery[2].refresh"),
            ("regions = [\"a\"]\nendpoint = \"ftp://x\"", "discovery[2].endpoint"),
            ("regions = [\"a\"]\nendpoint = \"https://{zone}.x\"", "discovery[2].endpoint"),
            ("regions = [\"a\"]\nexclude = [\"\"]", "discovery[2].exclude[0]"),
            ("regions = [\"a\"]\ninstance_type = \"\"", "discovery[2].instance_type"),
        ];
        for (text, key) in cases {
            let errs = block(text).validate("discovery[2]");
            assert!(
                errs.iter().any(|e| e.key == key),
                "{text:?}: expected {key}, got {errs:?}"
            );
        }
        let five =
            "regions = [\"a\"]\ntags = { a = \"1\", b = \"2\", c = \"3\", d = \"4\", e = \"5\" }";
        assert!(block(five).validate("d").is_empty());
    }
}
