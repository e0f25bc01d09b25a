//! The `aliyun` CLI's profile, `~/.aliyun/config.json`: what a laptop already has after
//! `aliyun configure`.
//!
//! The profile is the one named by `ALIBABA_CLOUD_PROFILE`, else by `current`, else `default`.
//! Modes `AK`, `StsToken`, `EcsRamRole` and `OIDC` are understood; modes that need a signed STS
//! call of their own (`RamRoleArn`, `ChainableRamRoleArn`, …) are refused with a clear message.

use std::path::{Path, PathBuf};

use super::oidc::OidcParams;
use super::{CredentialError, SecretString, Settings, Spec};

pub const ENV_PROFILE: &str = "ALIBABA_CLOUD_PROFILE";
const NAME: &str = "profile";

/// `~/.aliyun/config.json`.
pub fn path(settings: &Settings) -> Option<PathBuf> {
    settings
        .home
        .as_ref()
        .map(|h| h.join(".aliyun").join("config.json"))
}

#[derive(serde::Deserialize)]
struct CliConfig {
    #[serde(default)]
    current: Option<String>,
    #[serde(default)]
    profiles: Vec<CliProfile>,
}

#[derive(serde::Deserialize)]
struct CliProfile {
    name: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    access_key_id: String,
    #[serde(default)]
    access_key_secret: Option<SecretString>,
    #[serde(default)]
    sts_token: Option<SecretString>,
    #[serde(default)]
    ram_role_name: String,
    #[serde(default)]
    ram_role_arn: String,
    #[serde(default)]
    ram_session_name: String,
    #[serde(default)]
    oidc_provider_arn: String,
    #[serde(default)]
    oidc_token_file: String,
}

/// Reads and interprets the file.
pub fn load(path: &Path, get: &dyn Fn(&str) -> Option<String>) -> Result<Spec, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CredentialError::not_configured(NAME, format!("cannot read {}: {e}", path.display()))
    })?;
    let wanted = get(ENV_PROFILE).filter(|p| !p.trim().is_empty());
    parse(&text, wanted.as_deref())
        .map_err(|reason| CredentialError::failed(NAME, format!("{}: {reason}", path.display())))
}

/// Interprets the file's text; `wanted` overrides `current`. Errors never quote values.
pub fn parse(text: &str, wanted: Option<&str>) -> Result<Spec, String> {
    let cfg: CliConfig = serde_json::from_str(text).map_err(|e| {
        // Only the position: serde_json's full message can quote the offending value.
        let what = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "malformed JSON"
            }
            _ => "unexpected structure",
        };
        format!(
            "not a valid aliyun CLI configuration: {what} at line {}, column {}",
            e.line(),
            e.column()
        )
    })?;
    let name = wanted
        .map(str::to_owned)
        .or(cfg.current.filter(|c| !c.is_empty()))
        .unwrap_or_else(|| "default".into());
    let p = cfg
        .profiles
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| format!("no profile named {name:?}"))?;
    let need = |v: &str, key: &str| {
        if v.trim().is_empty() {
            Err(format!(
                "profile {name:?} (mode {}): {key} is empty",
                p.mode
            ))
        } else {
            Ok(v.trim().to_owned())
        }
    };
    let secret = |s: &Option<SecretString>, key: &str| {
        use secrecy::ExposeSecret;
        s.as_ref()
            .filter(|s| !s.expose_secret().trim().is_empty())
            .cloned()
            .ok_or_else(|| format!("profile {name:?} (mode {}): {key} is empty", p.mode))
    };
    match p.mode.as_str() {
        "AK" | "" => Ok(Spec::AccessKey {
            id: need(&p.access_key_id, "access_key_id")?,
            secret: secret(&p.access_key_secret, "access_key_secret")?,
            token: None,
        }),
        "StsToken" => Ok(Spec::AccessKey {
            id: need(&p.access_key_id, "access_key_id")?,
            secret: secret(&p.access_key_secret, "access_key_secret")?,
            token: Some(secret(&p.sts_token, "sts_token")?),
        }),
        "EcsRamRole" => Ok(Spec::EcsRamRole {
            role: Some(p.ram_role_name.trim().to_owned()).filter(|r| !r.is_empty()),
        }),
        "OIDC" => Ok(Spec::Oidc(OidcParams {
            role_arn: need(&p.ram_role_arn, "ram_role_arn")?,
            oidc_provider_arn: need(&p.oidc_provider_arn, "oidc_provider_arn")?,
            token_file: PathBuf::from(need(&p.oidc_token_file, "oidc_token_file")?),
            role_session_name: Some(p.ram_session_name.trim().to_owned()).filter(|s| !s.is_empty()),
        })),
        other => Err(format!(
            "profile {name:?}: mode {other:?} is not supported (use AK, StsToken, EcsRamRole or OIDC)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const FILE: &str = r#"{
      "current": "work",
      "profiles": [
        {"name": "default", "mode": "AK", "access_key_id": "LTAIdefault", "access_key_secret": "sec-default"},
        {"name": "work", "mode": "StsToken", "access_key_id": "STS.work", "access_key_secret": "sec-work", "sts_token": "tok-work"},
        {"name": "vm", "mode": "EcsRamRole", "ram_role_name": "exporter-role"},
        {"name": "k8s", "mode": "OIDC", "ram_role_arn": "acs:ram::1:role/r", "oidc_provider_arn": "acs:ram::1:oidc-provider/p", "oidc_token_file": "/t"},
        {"name": "assume", "mode": "RamRoleArn", "access_key_id": "x", "access_key_secret": "y", "ram_role_arn": "z"},
        {"name": "broken", "mode": "AK", "access_key_id": "LTAIbroken", "access_key_secret": ""}
      ],
      "meta_path": ""
    }"#;

    #[test]
    fn current_profile_and_override() {
        match parse(FILE, None).unwrap() {
            Spec::AccessKey { id, secret, token } => {
                assert_eq!(id, "STS.work");
                assert_eq!(secret.expose_secret(), "sec-work");
                assert_eq!(token.unwrap().expose_secret(), "tok-work");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(FILE, Some("default")).unwrap(),
            Spec::AccessKey { token: None, .. }
        ));
        assert!(matches!(
            parse(FILE, Some("vm")).unwrap(),
            Spec::EcsRamRole { role: Some(r) } if r == "exporter-role"
        ));
        assert!(
            matches!(parse(FILE, Some("k8s")).unwrap(), Spec::Oidc(p) if p.role_arn == "acs:ram::1:role/r")
        );
    }

    #[test]
    fn clear_errors() {
        let e = parse(FILE, Some("nope")).unwrap_err();
        assert!(e.contains("no profile named \"nope\""), "{e}");
        let e = parse(FILE, Some("assume")).unwrap_err();
        assert!(
            e.contains("RamRoleArn") && e.contains("not supported"),
            "{e}"
        );
        let e = parse(FILE, Some("broken")).unwrap_err();
        assert!(e.contains("access_key_secret is empty"), "{e}");
        let e = parse(
            "{\"profiles\": [ {\"name\": \"default\", \"access_key_secret\": \"leak-me\" ",
            None,
        )
        .unwrap_err();
        assert!(e.contains("not a valid aliyun CLI configuration"), "{e}");
        assert!(e.contains("line"), "{e}");
        assert!(!e.contains("leak-me"), "{e}");
    }
}
