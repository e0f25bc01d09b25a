//! The SDKs' INI credentials file: `ALIBABA_CLOUD_CREDENTIALS_FILE`, default
//! `~/.alibabacloud/credentials`.
//!
//! The section is `[default]` or the one named by `ALIBABA_CLOUD_PROFILE`; its `type` is
//! `access_key` (`access_key_id`, `access_key_secret`), `ecs_ram_role` (`role_name`, optional)
//! or `oidc_role_arn` (`role_arn`, `oidc_provider_arn`, `oidc_token_file_path`,
//! `role_session_name` optional). The parser is a dozen lines: INI has no standard worth a crate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::oidc::OidcParams;
use super::profile::ENV_PROFILE;
use super::{CredentialError, SecretString, Settings, Spec};

pub const ENV_CREDENTIALS_FILE: &str = "ALIBABA_CLOUD_CREDENTIALS_FILE";
const NAME: &str = "file";

/// The file to read: the environment's choice, else `~/.alibabacloud/credentials`.
pub fn path(settings: &Settings, get: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    get(ENV_CREDENTIALS_FILE)
        .filter(|p| !p.trim().is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            settings
                .home
                .as_ref()
                .map(|h| h.join(".alibabacloud").join("credentials"))
        })
}

/// True when the file was named explicitly (then a missing file is an error, not a skip).
pub fn named_explicitly(get: &dyn Fn(&str) -> Option<String>) -> bool {
    get(ENV_CREDENTIALS_FILE).is_some_and(|p| !p.trim().is_empty())
}

/// Reads and interprets the file.
pub fn load(path: &Path, get: &dyn Fn(&str) -> Option<String>) -> Result<Spec, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CredentialError::not_configured(NAME, format!("cannot read {}: {e}", path.display()))
    })?;
    let wanted = get(ENV_PROFILE).filter(|p| !p.trim().is_empty());
    parse(&text, wanted.as_deref().unwrap_or("default"))
        .map_err(|reason| CredentialError::failed(NAME, format!("{}: {reason}", path.display())))
}

/// Sections of `key = value` lines; `#` and `;` start comments. Errors name the line, never
/// its content (it may be a secret).
pub fn parse_ini(text: &str) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| format!("line {}: malformed section header", i + 1))?;
            section = Some(name.to_owned());
            out.entry(name.to_owned()).or_default();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected `key = value` or `[section]`", i + 1))?;
        let sec = section
            .as_ref()
            .ok_or_else(|| format!("line {}: a key before any [section]", i + 1))?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        out.entry(sec.clone())
            .or_default()
            .insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Interprets the file's text for profile `wanted`.
pub fn parse(text: &str, wanted: &str) -> Result<Spec, String> {
    let ini = parse_ini(text)?;
    let sec = ini
        .get(wanted)
        .ok_or_else(|| format!("no section [{wanted}]"))?;
    let need = |key: &str| {
        sec.get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| format!("[{wanted}]: missing key {key}"))
    };
    let kind = need("type")?;
    match kind.as_str() {
        "access_key" => Ok(Spec::AccessKey {
            id: need("access_key_id")?,
            secret: SecretString::from(need("access_key_secret")?),
            token: None,
        }),
        "ecs_ram_role" => Ok(Spec::EcsRamRole {
            role: need("role_name").ok(),
        }),
        "oidc_role_arn" => Ok(Spec::Oidc(OidcParams {
            role_arn: need("role_arn")?,
            oidc_provider_arn: need("oidc_provider_arn")?,
            token_file: PathBuf::from(need("oidc_token_file_path")?),
            role_session_name: need("role_session_name").ok(),
        })),
        other => Err(format!(
            "[{wanted}]: type {other:?} is not supported (use access_key, ecs_ram_role or oidc_role_arn)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const FILE: &str = "\
# comments and blank lines are fine
[default]
type = access_key
access_key_id = LTAIfile
access_key_secret = \"sec=with=equals\"

[vm]
type = ecs_ram_role
role_name = exporter-role

[k8s]
type = oidc_role_arn
role_arn = acs:ram::1:role/r
oidc_provider_arn = acs:ram::1:oidc-provider/p
oidc_token_file_path = /var/run/token
; role_session_name omitted

[assume]
type = ram_role_arn

[half]
type = access_key
access_key_id = LTAIhalf
";

    #[test]
    fn profiles() {
        match parse(FILE, "default").unwrap() {
            Spec::AccessKey { id, secret, token } => {
                assert_eq!(id, "LTAIfile");
                assert_eq!(secret.expose_secret(), "sec=with=equals");
                assert!(token.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse(FILE, "vm").unwrap(), Spec::EcsRamRole { role: Some(r) } if r == "exporter-role")
        );
        match parse(FILE, "k8s").unwrap() {
            Spec::Oidc(p) => {
                assert_eq!(p.token_file, PathBuf::from("/var/run/token"));
                assert!(p.role_session_name.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clear_errors() {
        assert_eq!(
            parse(FILE, "half").unwrap_err(),
            "[half]: missing key access_key_secret"
        );
        assert!(parse(FILE, "assume").unwrap_err().contains("not supported"));
        assert_eq!(parse(FILE, "nope").unwrap_err(), "no section [nope]");
        let e = parse(
            "[default]\ntype = access_key\naccess_key_secret hunter2\n",
            "default",
        )
        .unwrap_err();
        assert_eq!(e, "line 3: expected `key = value` or `[section]`");
        assert_eq!(
            parse("[default\n", "default").unwrap_err(),
            "line 1: malformed section header"
        );
        assert_eq!(
            parse("k = v\n", "default").unwrap_err(),
            "line 1: a key before any [section]"
        );
        assert_eq!(
            parse("[default]\n", "default").unwrap_err(),
            "[default]: missing key type"
        );
    }
}
