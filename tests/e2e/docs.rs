//! The documentation keeps up with the binary. Each test fails the moment something lands
//! undocumented:
//! - every relative link of the Markdown files (README, CONTRIBUTING, CHANGELOG, BENCHMARKS,
//!   `docs/`) names a file that exists, and a heading anchor that exists in it;
//! - every metric family the real binary emits (the demo's scrape, plus an exporter with a failing
//!   instance, a direct instance on a real redis-server, a discovery block and attribution, for
//!   the error, direct-only, discovery and attribution families) is documented in
//!   `docs/metrics.md` and queried by at least one panel of the Grafana dashboard;
//! - every configuration key `check-config` accepts is documented in `docs/configuration.md`. The
//!   keys come from the binary itself: a probe key in each table makes `check-config` list the
//!   fields the table accepts (serde's unknown-field error), recursively;
//! - every command-line flag of `--help` (and of each subcommand's) is documented there too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::redis::RedisServer;
use crate::common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `name` occurs in `text` as a whole metric or key name (not as a prefix of a longer one).
fn mentions(text: &str, name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    text.match_indices(name).any(|(i, _)| {
        !text[..i].chars().next_back().is_some_and(word)
            && !text[i + name.len()..].chars().next().is_some_and(word)
    })
}

// ---- links ----------------------------------------------------------------------------------

fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out: Vec<PathBuf> = [
        "README.md",
        "CONTRIBUTING.md",
        "CHANGELOG.md",
        "BENCHMARKS.md",
    ]
    .iter()
    .map(|f| repo().join(f))
    .filter(|p| p.is_file())
    .collect();
    walk(&repo().join("docs"), &mut out);
    out.sort();
    out
}

/// The lines of a Markdown file outside fenced code blocks, with inline code spans removed.
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop `code` spans: a link inside one is not a link.
        let mut s = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                s.push_str(part);
            } else {
                s.push_str("``");
            }
        }
        out.push((n + 1, s));
    }
    out
}

/// GitHub's anchors for the headings of a Markdown file: lower case, punctuation other than
/// `-` and `_` dropped, spaces to `-`; a repeated heading gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        if fenced {
            continue;
        }
        let heading = heading.trim_start_matches('#');
        if !heading.starts_with(' ') {
            continue;
        }
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// Targets of inline links `[text](target)` in a line.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = after[..end].split_whitespace().next().unwrap_or("");
        out.push(target.to_owned());
        rest = &after[end..];
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let files = markdown_files();
    assert!(
        files.iter().any(|p| p.ends_with("docs/metrics.md")),
        "{files:?}"
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let rel = file.strip_prefix(repo()).unwrap().display().to_string();
        for (n, line) in prose_lines(&text) {
            for target in link_targets(&line) {
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let resolved = if path.is_empty() {
                    file.clone()
                } else {
                    file.parent().unwrap().join(path)
                };
                if !resolved.exists() {
                    broken.push(format!("{rel}:{n}: {target}: no such file"));
                    continue;
                }
                if let Some(anchor) = anchor {
                    if resolved.extension().is_some_and(|x| x == "md") {
                        let there = std::fs::read_to_string(&resolved).unwrap();
                        if !anchors(&there).contains(anchor) {
                            broken.push(format!("{rel}:{n}: {target}: no heading #{anchor}"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_checker_sees_anchors_the_way_github_makes_them() {
    let a = anchors(
        "# Title\n## Sources: DAS or Redis itself\n```\n## not a heading\n```\n## Title\n### `simulate --from-redis redis://host:port`\n",
    );
    assert!(a.contains("title") && a.contains("title-1"), "{a:?}");
    assert!(a.contains("sources-das-or-redis-itself"), "{a:?}");
    assert!(a.contains("simulate---from-redis-redishostport"), "{a:?}");
    assert!(!a.contains("not-a-heading"), "{a:?}");
    assert_eq!(
        link_targets("see [a](x.md#y) and [`b`](../c/) or [c](https://e.f)"),
        ["x.md#y", "../c/", "https://e.f"]
    );
}

// ---- metric families ---------------------------------------------------------------------------

/// Families of an OpenMetrics scrape: name → the sample names seen for it.
fn families(om: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap().to_owned();
            out.entry(name).or_default();
        }
    }
    for line in om.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let sample = line.split(['{', ' ']).next().unwrap();
        // The longest family name the sample starts with (a family's samples carry suffixes
        // such as _total, _bucket, _gcount).
        if let Some(f) = out
            .keys()
            .filter(|f| sample.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .cloned()
        {
            out.get_mut(&f).unwrap().insert(sample.to_owned());
        }
    }
    out
}

async fn demo_scrape() -> String {
    let demo = spawn(&["demo", "--listen", "127.0.0.1:0"], &[], &[]);
    let line = demo.wait_for_line("metrics:", Duration::from_secs(30));
    let addr: SocketAddr = line
        .split_whitespace()
        .last()
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    wait_until(
        "every demo instance polled",
        Duration::from_secs(60),
        || async {
            let t = scrape_om(addr).await;
            [
                "r-demo-orders",
                "r-demo-sessions",
                "r-demo-cache",
                "r-demo-flaky",
            ]
            .iter()
            .all(|id| t.contains(&format!("redis_session_up{{instance_id=\"{id}\"}} 1")))
            .then_some(t)
        },
    )
    .await
}

/// An exporter with a failing instance, a direct instance (a real redis-server) and a discovery
/// block: the error, direct-only and discovery families.
async fn failure_direct_and_discovery_scrape() -> String {
    let redis = RedisServer::start();
    let _client = redis
        .client("docs-client")
        .expect("a client of redis-server");
    let redis = redis.addr;
    let (_sim, sim) = start_simulator(
        "seed = 5\n[instances.r-docs-denied]\nfault = { kind = \"no_permission\" }\n",
    );
    let config = format!(
        r#"
[das]
endpoint = "http://{sim}"
timeout = "2s"
[poll]
interval = "1s"
[credentials]
provider = "env"
[[instances]]
id = "r-docs-denied"
labels = {{ team = "payments" }}
[[instances]]
id = "r-docs-direct"
source = "direct"
address = "redis://{redis}"
[[discovery]]
regions = ["cn-hangzhou"]
refresh = "1s"
endpoint = "http://{sim}"
[attribution]
networks = [{{ cidr = "127.0.0.0/8", name = "loopback" }}]
[attribution.kubernetes]
enabled = true
"#
    );
    let (_exp, addr) = start_exporter(
        &config,
        &[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", SIM_KEY_ID),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SIM_KEY_SECRET),
        ],
    );
    wait_until(
        "a failed poll and a discovery refresh",
        Duration::from_secs(60),
        || async {
            let t = scrape_om(addr).await;
            (t.contains("redis_session_exporter_poll_errors_total{")
                && t.contains("redis_sessions_by_user{")
                && t.contains("redis_sessions_by_workload{")
                && t.contains("redis_session_exporter_attribution_errors_total{")
                && t.contains("redis_session_exporter_discovery_last_success_timestamp_seconds{"))
            .then_some(t)
        },
    )
    .await
}

/// Every family of a scrape of the real binary, with its sample names.
async fn emitted_families() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = families(&demo_scrape().await);
    for (f, s) in families(&failure_direct_and_discovery_scrape().await) {
        all.entry(f).or_default().extend(s);
    }
    assert!(all.len() > 30, "too few families: {all:?}");
    all
}

/// A family counts as named in `text` when its name or one of its sample names is.
fn named(text: &str, family: &str, samples: &BTreeSet<String>) -> bool {
    mentions(text, family) || samples.iter().any(|s| mentions(text, s))
}

/// Every PromQL expression of the dashboard: panel targets and query variables.
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        ("query", serde_json::Value::String(s)) => out.push(s.clone()),
                        ("query", serde_json::Value::Object(q)) => {
                            if let Some(s) = q.get("query").and_then(|s| s.as_str()) {
                                out.push(s.to_owned());
                            }
                        }
                        _ => walk(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let d: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/redis-sessions.json")).unwrap();
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    walk(&d["templating"], &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_emitted_family_is_documented_and_on_the_dashboard() {
    let emitted = emitted_families().await;
    let metrics_md = read("docs/metrics.md");
    let queries = dashboard_queries().join("\n");
    let undocumented: Vec<&String> = emitted
        .iter()
        .filter(|(f, s)| !named(&metrics_md, f, s))
        .map(|(f, _)| f)
        .collect();
    let not_on_dashboard: Vec<&String> = emitted
        .iter()
        .filter(|(f, s)| !named(&queries, f, s))
        .map(|(f, _)| f)
        .collect();
    assert!(
        undocumented.is_empty() && not_on_dashboard.is_empty(),
        "families the binary emits but docs/metrics.md does not document: {undocumented:?}\n\
         families no panel of deploy/grafana/redis-sessions.json queries: {not_on_dashboard:?}"
    );
}

#[test]
fn family_matching_is_by_whole_name() {
    let om = "# TYPE redis_sessions gauge\nredis_sessions{instance_id=\"a\"} 1\n\
              # TYPE redis_sessions_reported gauge\nredis_sessions_reported{instance_id=\"a\"} 1\n\
              # TYPE x_polls counter\nx_polls_total 3\n";
    let f = families(om);
    assert_eq!(f["x_polls"], BTreeSet::from(["x_polls_total".to_owned()]));
    assert_eq!(f["redis_sessions"].len(), 1);
    assert!(named("`x_polls_total` counts", "x_polls", &f["x_polls"]));
    assert!(!named(
        "`redis_sessions_reported` only",
        "redis_sessions",
        &f["redis_sessions"]
    ));
    assert!(!mentions(
        "instance_id:redis_sessions:sum",
        "redis_sessions"
    ));
}

// ---- configuration keys and flags ----------------------------------------------------------

const PROBE: &str = "zz_docs_probe";

/// Runs `check-config` on `toml`; what it printed.
fn check_config(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .env("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The fields a table accepts, from the unknown-field error for the probe key placed in it;
/// None when the probe is not refused as an unknown field there (a free-form map, a scalar).
fn accepted_fields(toml: &str, probe_path: &str) -> Option<Vec<String>> {
    let out = check_config(toml);
    let line = out
        .lines()
        .find(|l| l.contains(&format!("`{probe_path}`")) && l.contains("unknown field"))?;
    let expected = &line[line.find("expected")?..];
    let fields: Vec<String> = expected
        .split('`')
        .filter(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect();
    (!fields.is_empty()).then_some(fields)
}

/// Every configuration key the binary accepts, as `[section] key` / `[[section]] key`, and the
/// top-level keys that are not tables.
fn accepted_keys() -> BTreeSet<String> {
    const INSTANCE: &str = "[[instances]]\nid = \"r-docs\"\n";
    let top = accepted_fields(&format!("{PROBE} = 1\n{INSTANCE}"), PROBE)
        .expect("check-config names the accepted top-level keys for an unknown one");
    let mut keys = BTreeSet::new();
    // Tables to probe: (TOML header, path in error messages, how keys are written in the docs).
    let mut queue: Vec<(String, String, String)> = Vec::new();
    for section in &top {
        let as_table = format!("[{section}]\n{PROBE} = 1\n{INSTANCE}");
        let as_array = format!("[[{section}]]\n{PROBE} = 1\n");
        if accepted_fields(&as_table, &format!("{section}.{PROBE}")).is_some() {
            queue.push((
                format!("[{section}]"),
                section.clone(),
                format!("[{section}]"),
            ));
        } else if accepted_fields(&as_array, &format!("{section}[0].{PROBE}")).is_some() {
            queue.push((
                format!("[[{section}]]"),
                format!("{section}[0]"),
                format!("[[{section}]]"),
            ));
        } else {
            keys.insert(format!("`{section}`"));
        }
    }
    while let Some((header, path, doc)) = queue.pop() {
        let extra = if header.starts_with("[[instances") {
            ""
        } else {
            INSTANCE
        };
        let fields = accepted_fields(
            &format!("{header}\n{PROBE} = 1\n{extra}"),
            &format!("{path}.{PROBE}"),
        )
        .unwrap_or_else(|| panic!("no field list for {header}"));
        for f in fields {
            // A nested table of a table (not of an array of tables) is probed in turn.
            if !header.starts_with("[[") {
                let sub_header = format!("[{}.{f}]", header.trim_matches(['[', ']']));
                let sub_path = format!("{path}.{f}");
                if accepted_fields(
                    &format!("{sub_header}\n{PROBE} = 1\n{INSTANCE}"),
                    &format!("{sub_path}.{PROBE}"),
                )
                .is_some()
                {
                    queue.push((sub_header.clone(), sub_path, sub_header));
                    continue;
                }
            }
            keys.insert(format!("`{doc} {f}`"));
        }
    }
    keys
}

#[test]
fn every_config_key_check_config_accepts_is_documented() {
    let keys = accepted_keys();
    // What the probe must find today; more is fine (that is what it is for).
    for k in [
        "`[server] listen`",
        "`[das] timeout`",
        "`[credentials] access_key_secret_file`",
        "`[[instances]] id`",
        "`[[instances]] tls_key_file`",
        "`[[discovery]] regions`",
        "`[sharding] total_shards`",
    ] {
        assert!(keys.contains(k), "the probe missed {k}: {keys:?}");
    }
    // Documented = named in the first cell of a table row of docs/configuration.md.
    let doc = read("docs/configuration.md");
    let first_cells: String = doc
        .lines()
        .filter(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .collect::<Vec<_>>()
        .join("\n");
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !first_cells.contains(k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "configuration keys check-config accepts that docs/configuration.md has no table row for \
         (write the key as {{`[section] key`}} or {{`[[section]] key`}} in the first cell): {missing:?}"
    );
}

/// Every `--flag` in a `--help` text.
fn flags(help: &str) -> BTreeSet<String> {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.split(['=', '<']).next().unwrap().to_owned())
        .filter(|w| w != "--help" && w != "--version")
        .collect()
}

#[test]
fn every_command_line_flag_is_documented() {
    let help = |args: &[&str]| {
        let out = Command::new(bin())
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?} --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&[]);
    let mut all = flags(&top);
    // Subcommands: the lines after "Commands:" up to the next blank line.
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.contains(&"check-config".to_owned()), "{top}");
    for c in &commands {
        all.extend(flags(&help(&[c])));
    }
    assert!(
        all.contains("--config") && all.contains("--shard-from-hostname"),
        "{all:?}"
    );
    let doc = read("docs/configuration.md");
    let missing: Vec<&String> = all.iter().filter(|f| !mentions(&doc, f)).collect();
    assert!(
        missing.is_empty(),
        "flags of --help that docs/configuration.md does not mention: {missing:?}"
    );
    for c in &commands {
        assert!(
            doc.contains(&format!("redis-session-exporter {c}")) || doc.contains(&format!("`{c} ")),
            "subcommand {c} not documented"
        );
    }
}
