//! Finding instances in the cloud's inventory: R-KVStore `DescribeInstances` over
//! [`crate::acs`], per region, page by page, turned into [`InstanceConfig`]s.
//!
//! The pure part ([`api`]: request parameters, decoding a page, paging, filtering, label names)
//! is unit tested; the shell ([`start`]) runs one task per `(block, region)` that refreshes on
//! its own clock and sends each complete list as an [`Update`]. A refresh that fails anywhere
//! sends nothing: the last known list stays in force, and the failure is counted per region
//! (`redis_session_exporter_discovery_*`, in [`crate::metrics`]). The configuration
//! (`[[discovery]]`) is [`crate::config::DiscoveryConfig`].

mod api;
mod task;

use std::fmt;

use crate::config::InstanceConfig;

pub use api::{
    decode_page, next_page, request_params, select, tag_label, to_instance, InventoryInstance,
    Page, Tag, Tags, ACTION, API_VERSION, LABEL_ARCHITECTURE, LABEL_NAME, LABEL_REGION,
    MAX_INSTANCES_PER_BLOCK, MAX_PAGES, PAGE_SIZE, TAG_PREFIX,
};
pub use task::{start, Discovery, Shared};

/// Which list an [`Update`] replaces: the block, the region, and the generation of the discovery
/// configuration (bumped on every reload that changes it), so a late update from a task of the
/// previous configuration is recognised and dropped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceKey {
    pub generation: u64,
    pub block: usize,
    pub region: String,
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "discovery#{}[{}]/{}",
            self.generation, self.block, self.region
        )
    }
}

/// One `(block, region)`'s complete current list, replacing its previous one.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub key: SourceKey,
    pub instances: Vec<InstanceConfig>,
}

/// Keeps the lists of one block (`generation`, `block`) within [`MAX_INSTANCES_PER_BLOCK`] all
/// regions together: regions in name order, each list in id order, what passes the bound
/// dropped. Returns how many were dropped (each region's own list is already bounded by
/// [`select`]).
pub fn cap_block(
    discovered: &mut std::collections::BTreeMap<SourceKey, Vec<InstanceConfig>>,
    generation: u64,
    block: usize,
) -> usize {
    let (mut kept, mut dropped) = (0usize, 0usize);
    for (_, list) in discovered
        .iter_mut()
        .filter(|(k, _)| k.generation == generation && k.block == block)
    {
        let room = MAX_INSTANCES_PER_BLOCK.saturating_sub(kept);
        if list.len() > room {
            dropped += list.len() - room;
            list.truncate(room);
        }
        kept += list.len();
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_keys_read_in_logs() {
        let k = SourceKey {
            generation: 7,
            block: 2,
            region: "cn-hangzhou".into(),
        };
        assert_eq!(k.to_string(), "discovery#7[2]/cn-hangzhou");
    }

    #[test]
    fn a_block_keeps_ten_thousand_across_its_regions() {
        use std::collections::BTreeMap;
        let key = |block: usize, region: &str| SourceKey {
            generation: 1,
            block,
            region: region.into(),
        };
        let list = |prefix: &str, n: usize| -> Vec<InstanceConfig> {
            (0..n)
                .map(|i| InstanceConfig::new(format!("{prefix}-{i:05}")))
                .collect()
        };
        let mut d = BTreeMap::new();
        d.insert(key(0, "cn-beijing"), list("b", 6_000));
        d.insert(key(0, "cn-hangzhou"), list("h", 6_000));
        d.insert(key(1, "cn-hangzhou"), list("o", 6_000));
        assert_eq!(cap_block(&mut d, 1, 0), 2_000);
        assert_eq!(d[&key(0, "cn-beijing")].len(), 6_000);
        assert_eq!(d[&key(0, "cn-hangzhou")].len(), 4_000);
        assert_eq!(d[&key(1, "cn-hangzhou")].len(), 6_000, "another block");
        assert_eq!(cap_block(&mut d, 1, 0), 0, "already within");
    }
}
