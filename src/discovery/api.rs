//! R-KVStore `DescribeInstances`, pure: the parameters of a page, decoding an answer, paging,
//! and turning the inventory into [`InstanceConfig`]s (filters re-checked, labels named).

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::acs;
use crate::config::{check_label_name, DiscoveryConfig, InstanceConfig, SourceKind};

/// R-KVStore's action and API version.
pub const ACTION: &str = "DescribeInstances";
pub const API_VERSION: &str = "2015-01-01";
/// The largest page the API serves.
pub const PAGE_SIZE: u32 = 50;
/// A runaway paging loop (a server that never says it is done) stops here: 100,000 instances.
pub const MAX_PAGES: u32 = 2_000;
/// The most instances one `[[discovery]]` block yields, all its regions together. Paging stops
/// once a region has given this many, and what passes the bound is dropped with a warning: an
/// inventory (or a server) cannot grow the polling fleet, its memory and its series without end.
pub const MAX_INSTANCES_PER_BLOCK: usize = 10_000;
/// The largest DescribeInstances page read (50 instances are a few tens of KiB; tags can be many).
pub const MAX_PAGE_BYTES: u64 = 16 * 1024 * 1024;
/// Label names the inventory facts get on `redis_session_instance_info`.
pub const LABEL_NAME: &str = "instance_name";
pub const LABEL_REGION: &str = "region";
pub const LABEL_ARCHITECTURE: &str = "architecture";
pub const LABEL_STATUS: &str = "status";
/// Statuses of instances that hold no sessions: not yet created, released, or expired (its
/// subscription lapsed). Every other status (`Normal`, `Changing`, `HASwitching`, `Migrating`,
/// `Transforming`, `NetworkModifying`, …) is an instance that serves clients, often in trouble,
/// and stays polled unless a block's `status` says otherwise.
pub const STATUSES_WITHOUT_SESSIONS: &[&str] = &["Creating", "Released", "Inactive"];
pub const TAG_PREFIX: &str = "tag_";

/// The action's own parameters for one page (the signature's common ones are added by
/// [`acs::Client`]). Tags are numbered from 1 in key order.
pub fn request_params(cfg: &DiscoveryConfig, region: &str, page: u32) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = vec![
        ("Action".into(), ACTION.into()),
        ("Version".into(), API_VERSION.into()),
        ("Format".into(), "JSON".into()),
        ("RegionId".into(), region.into()),
        ("PageNumber".into(), page.to_string()),
        ("PageSize".into(), PAGE_SIZE.to_string()),
    ];
    // The API filters on one status only; the default (every status that can hold sessions) is
    // applied by `select`.
    if let Some(status) = cfg.status.as_ref().filter(|s| !s.is_empty()) {
        p.push(("InstanceStatus".into(), status.clone()));
    }
    if let Some(a) = &cfg.architecture {
        p.push(("ArchitectureType".into(), a.clone()));
    }
    if let Some(t) = &cfg.instance_type {
        p.push(("InstanceType".into(), t.clone()));
    }
    for (n, (k, v)) in cfg.tags.iter().enumerate() {
        p.push((format!("Tag.{}.Key", n + 1), k.clone()));
        p.push((format!("Tag.{}.Value", n + 1), v.clone()));
    }
    p
}

/// `params` plus the v1 signature's common parameters, signed for a POST.
/// One instance as the inventory lists it (the fields the exporter uses; the rest is ignored).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InventoryInstance {
    pub instance_id: String,
    pub instance_name: String,
    pub architecture_type: String,
    pub instance_status: String,
    pub instance_type: String,
    pub region_id: String,
    /// The instance class's connection limit; a number or a numeric string, absent (or 0) when
    /// unknown.
    #[serde(
        deserialize_with = "lenient_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub connections: Option<u64>,
    /// Absent when the API leaves tags out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
}

/// A count that may come as a number or a string; anything else (a negative, a fraction, text)
/// is unknown rather than a failed refresh.
fn lenient_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|&n| n > 0))
}

/// `{"Tag": [{"Key": …, "Value": …}]}`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tags {
    #[serde(rename = "Tag")]
    pub tag: Vec<Tag>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// One decoded page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub instances: Vec<InventoryInstance>,
    /// `TotalCount`, when the answer has one.
    pub total: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PageWire {
    instances: Option<InstancesWire>,
    #[serde(default)]
    total_count: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct InstancesWire {
    #[serde(rename = "KVStoreInstance", default)]
    list: Vec<InventoryInstance>,
}

/// Decodes a successful answer. An answer without `Instances` is an error answer (its `Code`
/// becomes the error code) or not a DescribeInstances answer at all.
pub fn decode_page(body: &[u8]) -> Result<Page, acs::Error> {
    let wire: PageWire = serde_json::from_slice(body)
        .map_err(|e| acs::Error::InvalidResponse(format!("not a DescribeInstances answer: {e}")))?;
    let Some(instances) = wire.instances else {
        return Err(acs::api_error(body, None)
            .unwrap_or_else(|| acs::Error::InvalidResponse("no Instances in the answer".into())));
    };
    let total = wire.total_count.and_then(|v| match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    Ok(Page {
        instances: instances.list,
        total,
    })
}

/// The page to read after `page`, or `None` when every page is read: the page was short or
/// empty, or `seen` (instances so far) reached the `TotalCount` the server announced or
/// [`MAX_INSTANCES_PER_BLOCK`].
pub fn next_page(page: u32, on_page: usize, seen: usize, total: Option<u64>) -> Option<u32> {
    let done = on_page == 0
        || seen >= MAX_INSTANCES_PER_BLOCK
        || match total {
            Some(t) => seen as u64 >= t,
            None => on_page < PAGE_SIZE as usize,
        };
    (!done && page < MAX_PAGES).then_some(page + 1)
}

/// `tag_` + the key with every character outside `[a-zA-Z0-9_]` replaced by `_`.
pub fn tag_label(key: &str) -> String {
    let mut s = String::with_capacity(TAG_PREFIX.len() + key.len());
    s.push_str(TAG_PREFIX);
    s.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    s
}

/// Keeps the instances of `region` that match every filter of `cfg` (the API applies them too;
/// checking again costs nothing and protects against a server that ignores one), minus
/// `exclude`, deduplicated (pages can overlap while the inventory changes), in id order, at
/// most [`MAX_INSTANCES_PER_BLOCK`] (the first in id order).
pub fn select(
    cfg: &DiscoveryConfig,
    region: &str,
    found: &[InventoryInstance],
) -> Vec<InstanceConfig> {
    let exclude: HashSet<&str> = cfg.exclude.iter().map(String::as_str).collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for i in found {
        let mismatch = |want: Option<&str>, have: &str| {
            want.is_some_and(|w| !w.is_empty() && !have.is_empty() && !w.eq_ignore_ascii_case(have))
        };
        if i.instance_id.trim().is_empty()
            || exclude.contains(i.instance_id.as_str())
            || mismatch(Some(region), &i.region_id)
            || match &cfg.status {
                Some(want) => mismatch(Some(want), &i.instance_status),
                None => STATUSES_WITHOUT_SESSIONS
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(i.instance_status.trim())),
            }
            || mismatch(cfg.architecture.as_deref(), &i.architecture_type)
            || mismatch(cfg.instance_type.as_deref(), &i.instance_type)
        {
            continue;
        }
        if let Some(tags) = &i.tags {
            let all = cfg
                .tags
                .iter()
                .all(|(k, v)| tags.tag.iter().any(|t| &t.key == k && &t.value == v));
            if !all {
                continue;
            }
        }
        if seen.insert(i.instance_id.clone()) {
            out.push(to_instance(i, region));
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.truncate(MAX_INSTANCES_PER_BLOCK);
    out
}

/// The inventory facts as labels of `redis_session_instance_info`. A tag whose sanitised name
/// collides with another's keeps the first in key order.
pub fn to_instance(i: &InventoryInstance, region: &str) -> InstanceConfig {
    let mut inst = InstanceConfig::new(i.instance_id.trim());
    inst.source = SourceKind::Das;
    inst.max_connections = i.connections;
    let l = &mut inst.labels;
    let region = if i.region_id.is_empty() {
        region
    } else {
        &i.region_id
    };
    l.insert(LABEL_REGION.into(), region.into());
    if !i.instance_name.is_empty() {
        l.insert(LABEL_NAME.into(), i.instance_name.clone());
    }
    if !i.architecture_type.is_empty() {
        l.insert(LABEL_ARCHITECTURE.into(), i.architecture_type.clone());
    }
    if !i.instance_status.is_empty() {
        l.insert(LABEL_STATUS.into(), i.instance_status.clone());
    }
    let mut tags: Vec<&Tag> = i.tags.iter().flat_map(|t| &t.tag).collect();
    tags.sort_by(|a, b| a.key.cmp(&b.key));
    for t in tags {
        let name = tag_label(&t.key);
        // `tag_…` can never be reserved, but stay honest if the rules change.
        if check_label_name(&name).is_ok() {
            l.entry(name).or_insert_with(|| t.value.clone());
        }
    }
    inst
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::acs::sign;
    use crate::credentials::Credentials;
    use crate::source::PollError;

    fn block(toml_text: &str) -> DiscoveryConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn inst(id: &str, region: &str, tags: &[(&str, &str)]) -> InventoryInstance {
        InventoryInstance {
            instance_id: id.into(),
            instance_name: format!("name of {id}"),
            architecture_type: "standard".into(),
            instance_status: "Normal".into(),
            instance_type: "Redis".into(),
            region_id: region.into(),
            connections: None,
            tags: Some(Tags {
                tag: tags
                    .iter()
                    .map(|(k, v)| Tag {
                        key: (*k).into(),
                        value: (*v).into(),
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn parameters_of_a_page() {
        let b = block(
            "regions = [\"cn-hangzhou\"]\ntags = { team = \"core\", env = \"prod\" }\narchitecture = \"cluster\"\ninstance_type = \"Redis\"\nstatus = \"Normal\"",
        );
        let p: BTreeMap<String, String> =
            request_params(&b, "cn-hangzhou", 3).into_iter().collect();
        let want: BTreeMap<String, String> = [
            ("Action", "DescribeInstances"),
            ("Version", "2015-01-01"),
            ("Format", "JSON"),
            ("RegionId", "cn-hangzhou"),
            ("PageNumber", "3"),
            ("PageSize", "50"),
            ("InstanceStatus", "Normal"),
            ("ArchitectureType", "cluster"),
            ("InstanceType", "Redis"),
            ("Tag.1.Key", "env"),
            ("Tag.1.Value", "prod"),
            ("Tag.2.Key", "team"),
            ("Tag.2.Value", "core"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(p, want);
        // Neither the default (several statuses, filtered by `select`) nor "" (any) is one
        // status the API could filter on.
        for text in ["regions = [\"a\"]\nstatus = \"\"", "regions = [\"a\"]"] {
            assert!(!request_params(&block(text), "a", 1)
                .iter()
                .any(|(k, _)| k == "InstanceStatus"));
        }
    }

    #[test]
    fn by_default_every_status_that_can_hold_sessions_is_kept() {
        let statuses = [
            "Normal",
            "Creating",
            "Changing",
            "Inactive",
            "HASwitching",
            "Migrating",
            "Released",
            "Transforming",
            "NetworkModifying",
            "Flushing",
            "released",
            "",
        ];
        let found: Vec<InventoryInstance> = statuses
            .iter()
            .enumerate()
            .map(|(n, s)| InventoryInstance {
                instance_status: (*s).into(),
                ..inst(&format!("r-{n:02}"), "cn-hangzhou", &[])
            })
            .collect();
        let kept = |b: &DiscoveryConfig| -> Vec<String> {
            select(b, "cn-hangzhou", &found)
                .iter()
                .map(|i| i.labels.get(LABEL_STATUS).cloned().unwrap_or_default())
                .collect()
        };
        assert_eq!(
            kept(&block("regions = [\"cn-hangzhou\"]")),
            [
                "Normal",
                "Changing",
                "HASwitching",
                "Migrating",
                "Transforming",
                "NetworkModifying",
                "Flushing",
                ""
            ]
        );
        // An explicit status still filters; "" keeps everything.
        assert_eq!(
            kept(&block("regions = [\"cn-hangzhou\"]\nstatus = \"Changing\"")),
            ["Changing", ""]
        );
        assert_eq!(
            kept(&block("regions = [\"cn-hangzhou\"]\nstatus = \"\"")).len(),
            statuses.len()
        );
    }

    #[test]
    fn signed_like_das_and_verifiable() {
        let creds = Credentials::new("STS.testid", "testsecret", Some("tok+en".into()));
        let b = block("regions = [\"cn-hangzhou\"]");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200);
        let q = acs::signed_query(
            &creds.access_key(),
            &request_params(&b, "cn-hangzhou", 1),
            t,
            "n-1",
        );
        let (unsigned, sig) = q.rsplit_once("&Signature=").unwrap();
        let params: Vec<(String, String)> = unsigned
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                let dec = |s: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8()
                        .unwrap()
                        .into_owned()
                };
                (dec(k), dec(v))
            })
            .collect();
        assert!(params.contains(&("SecurityToken".into(), "tok+en".into())));
        assert!(params.contains(&("Timestamp".into(), "2024-01-01T00:00:00Z".into())));
        let expect = sign::signature(
            "testsecret",
            &sign::string_to_sign("POST", &sign::canonical_query(&params)),
        );
        assert_eq!(sig, sign::percent_encode(&expect));
    }

    #[test]
    fn decoding_pages_and_errors() {
        let body = br#"{"RequestId":"x","PageNumber":1,"PageSize":50,"TotalCount":"2","Instances":{"KVStoreInstance":[
            {"InstanceId":"r-1","InstanceName":"one","ArchitectureType":"cluster","InstanceStatus":"Normal","RegionId":"cn-hangzhou","Capacity":1024,
             "Tags":{"Tag":[{"Key":"env","Value":"prod"}]}},
            {"InstanceId":"r-2","Unknown":{"deep":[1,2]}}]}}"#;
        let p = decode_page(body).unwrap();
        assert_eq!(p.total, Some(2));
        assert_eq!(p.instances.len(), 2);
        assert_eq!(p.instances[0].instance_name, "one");
        assert_eq!(p.instances[0].tags.as_ref().unwrap().tag[0].value, "prod");
        assert_eq!(p.instances[1].tags, None);

        let code = |body: &[u8]| {
            PollError::from(decode_page(body).unwrap_err())
                .code()
                .into_owned()
        };
        assert_eq!(
            code(br#"{"RequestId":"x","Code":"Forbidden.RAM","Message":"no"}"#),
            "Forbidden.RAM"
        );
        assert_eq!(code(b"{\"Instances\":"), "invalid_response");
        assert_eq!(code(b"{}"), "invalid_response");
        let empty = decode_page(br#"{"Instances":{},"TotalCount":0}"#).unwrap();
        assert!(empty.instances.is_empty());
    }

    #[test]
    fn the_connection_limit_comes_from_connections() {
        let body = br#"{"TotalCount":6,"Instances":{"KVStoreInstance":[
            {"InstanceId":"r-num","Connections":20000},
            {"InstanceId":"r-str","Connections":" 80000 "},
            {"InstanceId":"r-none"},
            {"InstanceId":"r-zero","Connections":0},
            {"InstanceId":"r-neg","Connections":-1},
            {"InstanceId":"r-text","Connections":"many"}]}}"#;
        let p = decode_page(body).unwrap();
        let limits: Vec<Option<u64>> = p.instances.iter().map(|i| i.connections).collect();
        assert_eq!(limits, [Some(20_000), Some(80_000), None, None, None, None]);
        let b = block("regions = [\"cn-hangzhou\"]");
        let got: BTreeMap<String, Option<u64>> = select(&b, "cn-hangzhou", &p.instances)
            .into_iter()
            .map(|i| (i.id, i.max_connections))
            .collect();
        assert_eq!(got["r-str"], Some(80_000));
        assert_eq!(got["r-none"], None);
    }

    #[test]
    fn paging_reads_every_page_and_stops() {
        // 120 instances: 50 + 50 + 20.
        assert_eq!(next_page(1, 50, 50, Some(120)), Some(2));
        assert_eq!(next_page(2, 50, 100, Some(120)), Some(3));
        assert_eq!(next_page(3, 20, 120, Some(120)), None);
        // Exactly 100: the second full page is the last.
        assert_eq!(next_page(2, 50, 100, Some(100)), None);
        // No TotalCount: a short page ends it.
        assert_eq!(next_page(1, 50, 50, None), Some(2));
        assert_eq!(next_page(2, 49, 99, None), None);
        // An empty page always ends it, even when TotalCount promised more.
        assert_eq!(next_page(4, 0, 150, Some(500)), None);
        assert_eq!(next_page(MAX_PAGES, 50, 1, Some(u64::MAX)), None);
    }

    #[test]
    fn selection_and_labels() {
        let b = block(
            "regions = [\"cn-hangzhou\"]\ntags = { env = \"prod\" }\nexclude = [\"r-excluded\"]",
        );
        let mut stopped = inst("r-stopped", "cn-hangzhou", &[("env", "prod")]);
        stopped.instance_status = "Released".into();
        let mut untagged = inst("r-notags", "cn-hangzhou", &[]);
        untagged.tags = None;
        let found = vec![
            inst(
                "r-b",
                "cn-hangzhou",
                &[("env", "prod"), ("team/owner", "core"), ("team.owner", "x")],
            ),
            inst("r-a", "cn-hangzhou", &[("env", "prod")]),
            inst("r-a", "cn-hangzhou", &[("env", "prod")]),
            inst("r-staging", "cn-hangzhou", &[("env", "staging")]),
            inst("r-other-region", "cn-beijing", &[("env", "prod")]),
            inst("r-excluded", "cn-hangzhou", &[("env", "prod")]),
            stopped,
            untagged,
        ];
        let got = select(&b, "cn-hangzhou", &found);
        let ids: Vec<&str> = got.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, vec!["r-a", "r-b", "r-notags"]);
        let l = &got[1].labels;
        assert_eq!(l["instance_name"], "name of r-b");
        assert_eq!(l["region"], "cn-hangzhou");
        assert_eq!(l["architecture"], "standard");
        assert_eq!(l["status"], "Normal");
        assert_eq!(l["tag_env"], "prod");
        // `team.owner` and `team/owner` both sanitise to tag_team_owner: the first key wins.
        assert_eq!(l["tag_team_owner"], "x");
        for name in l.keys() {
            let ok = name == "region" || check_label_name(name).is_ok();
            assert!(ok, "{name} is not a usable label name");
        }
    }

    /// A region with more instances than a block may yield: paging stops at the bound, and the
    /// selection keeps exactly the bound, the first in id order.
    #[test]
    fn a_block_yields_at_most_ten_thousand() {
        let b = block("regions = [\"cn-hangzhou\"]");
        assert_eq!(next_page(1, 50, 9_950, Some(20_000)), Some(2));
        assert_eq!(
            next_page(1, 50, MAX_INSTANCES_PER_BLOCK, Some(20_000)),
            None
        );
        assert_eq!(next_page(1, 50, MAX_INSTANCES_PER_BLOCK, None), None);
        let found: Vec<InventoryInstance> = (0..MAX_INSTANCES_PER_BLOCK + 50)
            .rev()
            .map(|i| inst(&format!("r-{i:05}"), "cn-hangzhou", &[]))
            .collect();
        let got = select(&b, "cn-hangzhou", &found);
        assert_eq!(got.len(), MAX_INSTANCES_PER_BLOCK);
        assert_eq!(got[0].id, "r-00000");
        assert_eq!(got.last().unwrap().id, "r-09999");
    }

    #[test]
    fn tag_labels_are_valid_names() {
        for key in ["env", "a-b.c/d:e", "环境", "", "1x", "__x", "acs:rm:rgId"] {
            let name = tag_label(key);
            assert!(check_label_name(&name).is_ok(), "{key:?} -> {name:?}");
        }
        assert_eq!(tag_label("k8s.io/app-name"), "tag_k8s_io_app_name");
    }
}
