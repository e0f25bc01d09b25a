//! End to end: the real binary gets its credentials the ways users run it (RRSA through a fake
//! STS, an ECS RAM role through a fake metadata service, the environment, a static key file, the
//! CLI profile, the INI file), signs DAS calls the simulator verifies (SecurityToken included),
//! refreshes short-lived credentials before they expire without a failed poll, and never shows a
//! secret — in its whole output at `RUST_LOG=trace`, on /metrics, on `/`, or in `check-config`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::common::*;
use crate::fakes::*;

const SIM: &str = "seed = 3\n[instances.r-cred-1]\nsessions = 7\n";
const INSTANCE: &str = "r-cred-1";
const ROLE_ARN: &str = "acs:ram::1234567890:role/redis-session-exporter";
const PROVIDER_ARN: &str = "acs:ram::1234567890:oidc-provider/ack-rrsa-c123";
/// Credentials issued for 15 min + this go stale (and get refreshed) this long after issue.
const STALE_AFTER: Duration = Duration::from_secs(6);

/// Starts the exporter at `RUST_LOG=trace` with only `env` (none of the harness's AccessKey):
/// `HOME` is a fresh directory so the developer's own `~/.aliyun` never leaks in.
fn start(config: &str, env: &[(&str, &str)], files: &[(&str, &str)]) -> (Proc, SocketAddr) {
    let mut all = vec![("RUST_LOG", "trace")];
    all.extend_from_slice(env);
    let mut all_files = vec![("config.toml", config)];
    all_files.extend_from_slice(files);
    let p = spawn(
        &["--config", "config.toml", "--listen", "127.0.0.1:0"],
        &all,
        &all_files,
    );
    let addr = exporter_addr(&p);
    (p, addr)
}

fn config(sim: SocketAddr, credentials: &str) -> String {
    format!(
        "[das]\nendpoint = \"http://{sim}\"\ntimeout = \"5s\"\n[poll]\ninterval = \"1s\"\n\
         max_requests_per_second = 20\n[credentials]\n{credentials}\n[[instances]]\nid = \"{INSTANCE}\"\n"
    )
}

fn polls(text: &str) -> f64 {
    value(
        text,
        &format!("redis_session_exporter_polls_total{{instance_id=\"{INSTANCE}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Every failed poll of the instance, whatever the code.
fn poll_errors(text: &str) -> f64 {
    samples(text)
        .iter()
        .filter(|(k, _)| {
            k.starts_with(&format!(
                "redis_session_exporter_poll_errors_total{{instance_id=\"{INSTANCE}\""
            ))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Waits for `at_least` polls, the last one successful, and for the credentials block to show
/// the provider that signed them (it is published within a second of a change).
async fn wait_polls(addr: SocketAddr, at_least: f64) -> String {
    wait_until("successful polls", Duration::from_secs(30), || async {
        let t = scrape_text(addr).await;
        (polls(&t) >= at_least
            && value(
                &t,
                &format!("redis_session_up{{instance_id=\"{INSTANCE}\"}}"),
            ) == Some(1.0)
            && !t.contains("credential_errors_total{provider=\"default\"}"))
        .then_some(t)
    })
    .await
}

fn expiry(text: &str, provider: &str) -> Option<f64> {
    value(
        text,
        &format!(
            "redis_session_exporter_credentials_expiry_timestamp_seconds{{provider=\"{provider}\"}}"
        ),
    )
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as f64
}

/// `check-config` on the same files and environment: valid, and no secret in its output.
fn check_config_clean(
    config: &str,
    env: &[(&str, &str)],
    files: &[(&str, &str)],
    secrets: &[String],
) {
    let mut all_files = vec![("config.toml", config)];
    all_files.extend_from_slice(files);
    let mut p = spawn(
        &["check-config", "--config", "config.toml"],
        env,
        &all_files,
    );
    let status = wait_exited(&mut p);
    let out = p.output();
    assert!(status.success(), "check-config failed:\n{out}");
    for n in needles(secrets) {
        assert!(!out.contains(&n), "{n:?} leaked into check-config:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rrsa_oidc_credentials_sign_polls_and_refresh_before_expiry() {
    let (_sim, sim) = start_simulator(SIM);
    let (sts, st) = start_sts(StsState {
        role_arn: ROLE_ARN.into(),
        provider_arn: PROVIDER_ARN.into(),
        valid_token: "eyJhbGciOiJSUzI1NiJ9.first-oidc-token.sig".into(),
        lifetime: Duration::from_secs(15 * 60) + STALE_AFTER,
        sim: Some(sim),
        ..Default::default()
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let token_file = home.path().join("rrsa-token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.first-oidc-token.sig\n").unwrap();
    let token_path = token_file.to_str().unwrap();
    let cfg = config(
        sim,
        "provider = \"default\"\nrole_session_name = \"exporter-e2e\"",
    );
    let env = [
        ("HOME", home.path().to_str().unwrap()),
        ("ALIBABA_CLOUD_ROLE_ARN", ROLE_ARN),
        ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", PROVIDER_ARN),
        ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token_path),
        ("ALIBABA_CLOUD_STS_ENDPOINT", &format!("http://{sts}")),
        ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
    ];
    let (p, addr) = start(&cfg, &env, &[]);

    let text = wait_polls(addr, 2.0).await;
    let first = st.lock().unwrap().issued[0].clone();
    assert_eq!(st.lock().unwrap().session_names, ["exporter-e2e"]);
    assert_eq!(expiry(&text, "oidc"), Some(unix(first.expiration)));
    assert_eq!(
        value(
            &text,
            "redis_session_exporter_credential_errors_total{provider=\"oidc\"}"
        ),
        Some(0.0)
    );
    assert_eq!(poll_errors(&text), 0.0);

    // The kubelet rotates the token: only the new one is valid from now on.
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.second-oidc-token.sig\n").unwrap();
    st.lock().unwrap().valid_token = "eyJhbGciOiJSUzI1NiJ9.second-oidc-token.sig".into();

    // Refreshed ahead of expiry (15 min before it), with the re-read token.
    let second = wait_until("a refresh", Duration::from_secs(30), || async {
        st.lock().unwrap().issued.get(1).cloned()
    })
    .await;
    assert!(second.expiration > first.expiration);
    assert!(
        SystemTime::now() < first.expiration,
        "well before the old ones expired"
    );
    assert_eq!(
        st.lock().unwrap().accepted_tokens[1],
        "eyJhbGciOiJSUzI1NiJ9.second-oidc-token.sig"
    );
    wait_until(
        "the new expiry on /metrics",
        Duration::from_secs(10),
        || async {
            (expiry(&scrape_text(addr).await, "oidc") >= Some(unix(second.expiration)))
                .then_some(())
        },
    )
    .await;
    // From now on only the new key exists: polls keep succeeding only if they use it.
    forget_key(sim, &first.access_key_id).await;
    let before = polls(&scrape_text(addr).await);
    let text = wait_polls(addr, before + 3.0).await;
    assert_eq!(
        poll_errors(&text),
        0.0,
        "no failed poll across the refresh:\n{text}"
    );
    let stats = sim_stats(sim).await;
    assert_eq!(
        stats["rejected"],
        serde_json::json!({}),
        "every request verified: {stats}"
    );
    assert!(
        st.lock().unwrap().refused.is_empty(),
        "{:?}",
        st.lock().unwrap().refused
    );
    // Every request STS answered is counted once (all of them `ok` here).
    wait_until(
        "the STS requests counted",
        Duration::from_secs(10),
        || async {
            let t = scrape_text(addr).await;
            let answered = st.lock().unwrap().accepted_tokens.len() as f64;
            (value(
                &t,
                "redis_session_exporter_api_requests_total{api=\"AssumeRoleWithOIDC\",code=\"ok\"}",
            ) == Some(answered))
            .then_some(())
        },
    )
    .await;

    let mut secrets = vec![
        "first-oidc-token".to_owned(),
        "second-oidc-token".to_owned(),
    ];
    for c in st.lock().unwrap().issued.iter() {
        secrets.push(c.access_key_secret.clone());
        secrets.push(c.security_token.clone());
    }
    assert_no_leak(&p, addr, &secrets).await;
    check_config_clean(&cfg, &env, &[], &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_ram_role_through_imdsv2_refreshes_before_expiry() {
    let (_sim, sim) = start_simulator(SIM);
    let (meta, ms) = start_metadata(MetaState {
        role: "exporter-role".into(),
        lifetime: Duration::from_secs(15 * 60) + STALE_AFTER,
        sim: Some(sim),
        ..Default::default()
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let cfg = config(
        sim,
        &format!("provider = \"default\"\necs_metadata_endpoint = \"http://{meta}\""),
    );
    // The harness disables the metadata service by default (it must never reach the real one).
    let env = [
        ("HOME", home.path().to_str().unwrap()),
        ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "false"),
    ];
    let (p, addr) = start(&cfg, &env, &[]);

    let text = wait_polls(addr, 2.0).await;
    let first = ms.lock().unwrap().issued[0].clone();
    assert_eq!(expiry(&text, "ecs_ram_role"), Some(unix(first.expiration)));
    assert_eq!(
        ms.lock().unwrap().role_listings,
        1,
        "the role was discovered"
    );

    let second = wait_until("a refresh", Duration::from_secs(30), || async {
        ms.lock().unwrap().issued.get(1).cloned()
    })
    .await;
    assert!(SystemTime::now() < first.expiration);
    wait_until(
        "the new expiry on /metrics",
        Duration::from_secs(10),
        || async {
            (expiry(&scrape_text(addr).await, "ecs_ram_role") >= Some(unix(second.expiration)))
                .then_some(())
        },
    )
    .await;
    forget_key(sim, &first.access_key_id).await;
    let before = polls(&scrape_text(addr).await);
    let text = wait_polls(addr, before + 3.0).await;
    assert_eq!(poll_errors(&text), 0.0, "{text}");
    assert_eq!(sim_stats(sim).await["rejected"], serde_json::json!({}));
    {
        let s = ms.lock().unwrap();
        assert_eq!(s.unauthorized, 0, "every call carried a valid IMDSv2 token");
        assert!(s.tokens.len() >= 2, "a session token per refresh");
    }

    let mut secrets = Vec::new();
    for c in ms.lock().unwrap().issued.iter() {
        secrets.push(c.access_key_secret.clone());
        secrets.push(c.security_token.clone());
    }
    assert_no_leak(&p, addr, &secrets).await;
    check_config_clean(&cfg, &env, &[], &secrets);
}

/// Role names reach the metadata service as written (RFC 3986 unreserved characters `-._~`
/// are not escaped), whether named in the environment or discovered from the role listing,
/// against a stand-in that matches paths byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_role_names_reach_the_metadata_service_as_written() {
    for (role, named) in [
        ("redis-session-exporter", true),
        ("ops.redis_exporter-2", true),
        ("team_a.redis-exporter", false),
    ] {
        // A simulator each: every fake numbers its keys from 0.
        let (_sim, sim) = start_simulator(SIM);
        let (meta, ms) = start_metadata(MetaState {
            role: role.into(),
            lifetime: Duration::from_secs(3600),
            sim: Some(sim),
            ..Default::default()
        })
        .await;
        let home = tempfile::tempdir().unwrap();
        let cfg = config(
            sim,
            &format!("provider = \"ecs_ram_role\"\necs_metadata_endpoint = \"http://{meta}\""),
        );
        let mut env = vec![
            ("HOME", home.path().to_str().unwrap()),
            ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "false"),
        ];
        if named {
            env.push(("ALIBABA_CLOUD_ECS_METADATA", role));
        }
        let (_p, addr) = start(&cfg, &env, &[]);
        let text = wait_polls(addr, 1.0).await;
        let s = ms.lock().unwrap();
        // Token, (role listing,) credentials: each request counted once.
        assert_eq!(
            value(
                &text,
                "redis_session_exporter_api_requests_total{api=\"metadata\",code=\"ok\"}"
            ),
            Some(s.requests as f64),
            "{role}"
        );
        assert_eq!(
            s.credential_paths,
            vec![format!("/latest/meta-data/ram/security-credentials/{role}")],
            "{role}"
        );
        assert_eq!(s.role_listings, usize::from(!named), "{role}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecs_metadata_disabled_is_honoured_and_counted() {
    let (_sim, sim) = start_simulator(SIM);
    let (meta, ms) = start_metadata(MetaState {
        role: "exporter-role".into(),
        lifetime: Duration::from_secs(3600),
        sim: Some(sim),
        ..Default::default()
    })
    .await;
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("HOME", home.path().to_str().unwrap()),
        ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
    ];
    for provider in ["default", "ecs_ram_role"] {
        let cfg = config(
            sim,
            &format!("provider = \"{provider}\"\necs_metadata_endpoint = \"http://{meta}\""),
        );
        let (_p, addr) = start(&cfg, &env, &[]);
        let text = wait_until("a failed poll", Duration::from_secs(20), || async {
            let t = scrape_text(addr).await;
            value(
                &t,
                &format!(
                    "redis_session_exporter_poll_errors_total{{instance_id=\"{INSTANCE}\",code=\"credentials\"}}"
                ),
            )
            .is_some_and(|v| v >= 1.0)
            .then_some(t)
        })
        .await;
        let label = if provider == "default" {
            "default"
        } else {
            "ecs_ram_role"
        };
        let errors =
            wait_until(
                "the credential error counter",
                Duration::from_secs(10),
                || async {
                    value(
                &scrape_text(addr).await,
                &format!("redis_session_exporter_credential_errors_total{{provider=\"{label}\"}}"),
            )
            .filter(|v| *v >= 1.0)
                },
            )
            .await;
        assert!(errors >= 1.0, "{text}");
        assert!(
            expiry(&text, label).is_none(),
            "no expiry without credentials"
        );
    }
    assert_eq!(
        ms.lock().unwrap().requests,
        0,
        "the metadata service was never asked"
    );
}

/// Long-lived keys from the environment, a static key file, the CLI profile and the INI file:
/// each signs polls the simulator accepts, shows no expiry gauge, and leaks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lived_keys_from_every_place_and_no_leak() {
    let (_sim, sim) = start_simulator(SIM);
    for provider in ["env", "static", "profile", "file"] {
        let id = format!("LTAIcanary{provider}");
        let secret = format!(
            "canary-{provider}-secret/+={}",
            uuid::Uuid::new_v4().simple()
        );
        let token = format!(
            "canary-{provider}-token/+={}",
            uuid::Uuid::new_v4().simple()
        );
        // Only the environment and the profile (StsToken mode) carry a token here.
        let with_token = matches!(provider, "env" | "profile");
        add_sim_key(
            sim,
            serde_json::json!({
                "access_key_id": id,
                "access_key_secret": secret,
                "security_token": with_token.then(|| token.clone()),
            }),
        )
        .await;

        let home = tempfile::tempdir().unwrap();
        let home_s = home.path().to_str().unwrap().to_owned();
        let mut env: Vec<(&str, String)> = vec![
            ("HOME", home_s.clone()),
            ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true".into()),
        ];
        let mut files: Vec<(&str, String)> = Vec::new();
        let mut creds = format!("provider = \"{provider}\"");
        match provider {
            "env" => {
                env.push(("ALIBABA_CLOUD_ACCESS_KEY_ID", id.clone()));
                env.push(("ALIBABA_CLOUD_ACCESS_KEY_SECRET", secret.clone()));
                env.push(("ALIBABA_CLOUD_SECURITY_TOKEN", token.clone()));
            }
            "static" => {
                files.push(("secret.txt", format!("{secret}\n")));
                creds.push_str(&format!(
                    "\naccess_key_id = \"{id}\"\naccess_key_secret_file = \"secret.txt\""
                ));
            }
            "profile" => {
                std::fs::create_dir_all(home.path().join(".aliyun")).unwrap();
                std::fs::write(
                    home.path().join(".aliyun/config.json"),
                    serde_json::json!({
                        "current": "other",
                        "profiles": [
                            {"name": "other", "mode": "AK", "access_key_id": "LTAIwrong", "access_key_secret": "wrong"},
                            {"name": "e2e", "mode": "StsToken", "access_key_id": id,
                             "access_key_secret": secret, "sts_token": token},
                        ]
                    })
                    .to_string(),
                )
                .unwrap();
                env.push(("ALIBABA_CLOUD_PROFILE", "e2e".into()));
            }
            "file" => {
                let path = home.path().join("creds.ini");
                std::fs::write(
                    &path,
                    format!("[default]\ntype = access_key\naccess_key_id = {id}\naccess_key_secret = {secret}\n"),
                )
                .unwrap();
                env.push((
                    "ALIBABA_CLOUD_CREDENTIALS_FILE",
                    path.to_str().unwrap().into(),
                ));
            }
            _ => unreachable!(),
        }
        let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let files_ref: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let cfg = config(sim, &creds);
        let (p, addr) = start(&cfg, &env_ref, &files_ref);
        let text = wait_polls(addr, 2.0).await;
        assert_eq!(poll_errors(&text), 0.0, "{provider}: {text}");
        assert_eq!(
            value(
                &text,
                &format!(
                    "redis_session_exporter_credential_errors_total{{provider=\"{provider}\"}}"
                )
            ),
            Some(0.0),
            "{provider}: {text}"
        );
        assert!(
            expiry(&text, provider).is_none(),
            "long-lived keys have no expiry gauge"
        );
        let secrets = vec![secret.clone(), token.clone()];
        assert_no_leak(&p, addr, &secrets).await;
        check_config_clean(&cfg, &env_ref, &files_ref, &secrets);
    }
    assert_eq!(sim_stats(sim).await["rejected"], serde_json::json!({}));
}

/// The default chain falls through to the INI file when nothing comes before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_chain_falls_through_to_the_ini_file() {
    let (_sim, sim) = start_simulator(SIM);
    let secret = format!("chain-secret/{}", uuid::Uuid::new_v4().simple());
    add_sim_key(
        sim,
        serde_json::json!({"access_key_id": "LTAIchain", "access_key_secret": secret}),
    )
    .await;
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".alibabacloud")).unwrap();
    std::fs::write(
        home.path().join(".alibabacloud/credentials"),
        format!("[default]\ntype = access_key\naccess_key_id = LTAIchain\naccess_key_secret = {secret}\n"),
    )
    .unwrap();
    let env = [
        ("HOME", home.path().to_str().unwrap()),
        ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
    ];
    let (p, addr) = start(&config(sim, "provider = \"default\""), &env, &[]);
    let text = wait_polls(addr, 2.0).await;
    assert_eq!(
        value(
            &text,
            "redis_session_exporter_credential_errors_total{provider=\"file\"}"
        ),
        Some(0.0),
        "{text}"
    );
    p.wait_for_line("credentials found", Duration::from_secs(5));
    assert_no_leak(&p, addr, &[secret]).await;
}

#[test]
fn inline_secret_and_bad_endpoints_are_refused_by_check_config() {
    let cfg = "[credentials]\naccess_key_secret = \"inline-hunter2\"\nsts_endpoint = \"ftp://x\"\n\
               role_session_name = \"x\"\n[[instances]]\nid = \"r-1\"\n";
    let mut p = spawn(
        &["check-config", "--config", "config.toml"],
        &[],
        &[("config.toml", cfg)],
    );
    let status = wait_exited(&mut p);
    let out = p.output();
    assert!(!status.success());
    assert!(!out.contains("inline-hunter2"), "{out}");
    for key in [
        "credentials.access_key_secret",
        "credentials.sts_endpoint",
        "credentials.role_session_name",
    ] {
        assert!(out.contains(key), "{key} named:\n{out}");
    }
}
