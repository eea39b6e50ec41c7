//! One typed configuration tree: embedded defaults, then an optional file, then environment
//! variables `ETK_<SECTION>__<KEY>`. Validated at start-up; secrets never printed.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

const DEFAULTS: &str = include_str!("../config/default.toml");
const ENV_PREFIX: &str = "ETK_";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub database: DatabaseConfig,
    pub privacy: PrivacyConfig,
    pub api: ApiConfig,
    pub engine: EngineSettings,
    pub connectors: ConnectorsConfig,
    pub simulated: SimulatedConfig,
    pub ldap: LdapConfig,
    pub smtp: SmtpConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    pub url: String,
    pub bind_dn: String,
    pub bind_password: Secret,
    pub base_dn: String,
    pub object_class: String,
    pub person_attribute: String,
    pub unit_attribute: String,
    pub end_date_attribute: String,
    pub removal: String,
    pub ca_file: PathBuf,
    pub allow_plain: bool,
    pub timeout_seconds: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: Secret,
    pub ca_file: PathBuf,
    pub allow_plain: bool,
    pub hello_name: String,
    pub from: String,
    pub service_desk: String,
    pub reply_instructions: String,
    pub timeout_seconds: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    pub workers: usize,
    pub batch_size: u32,
    pub lease_seconds: u64,
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_seconds: u64,
    pub idle_poll_ms: u64,
    pub poll_interval_seconds: f64,
    pub remind_after_seconds: f64,
    pub escalate_after_seconds: f64,
    pub reconcile_interval_seconds: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorsConfig {
    pub tjansteid: String,
    pub kiv: String,
    pub notifier: String,
    pub require_reachable_at_start: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedConfig {
    pub confirm_after_seconds: f64,
    pub latency_ms: u64,
    pub failure_rate: f64,
    pub kiv_auto_employ: bool,
    pub journal: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub concurrency_per_connection: usize,
    pub request_timeout_seconds: u64,
    pub shutdown_grace_seconds: u64,
    pub health_probe_seconds: f64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub principals_file: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub max_connections: u32,
    pub acquire_timeout_seconds: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    pub master_key_file: PathBuf,
    pub master_key: Secret,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub default_page_size: u32,
    pub max_page_size: u32,
}

/// A configuration value that must not be printed (passwords, keys, URLs with credentials).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<secret>"
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then `file` (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree: toml::Table = DEFAULTS.parse().map_err(|e: toml::de::Error| {
            ConfigError::Invalid(format!("embedded defaults: {e}"))
        })?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let overlay: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                ConfigError::Invalid(format!("{}: {e}", path.display()))
            })?;
            merge(&mut tree, overlay);
        }
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest == "CONFIG" {
                continue;
            }
            let Some((section, field)) = rest.split_once("__") else {
                continue;
            };
            let (section, field) = (section.to_ascii_lowercase(), field.to_ascii_lowercase());
            let Some(toml::Value::Table(t)) = tree.get_mut(&section) else {
                return Err(ConfigError::Invalid(format!(
                    "{key}: no section [{section}]"
                )));
            };
            let Some(old) = t.get(&field) else {
                return Err(ConfigError::Invalid(format!(
                    "{key}: no key {field} in [{section}]"
                )));
            };
            // Keep the default's type: numbers stay numbers, so serde sees the right shape.
            let new = match old {
                toml::Value::Integer(_) => value
                    .parse()
                    .map(toml::Value::Integer)
                    .map_err(|_| ConfigError::Invalid(format!("{key} must be an integer")))?,
                toml::Value::Float(_) => value
                    .parse()
                    .map(toml::Value::Float)
                    .map_err(|_| ConfigError::Invalid(format!("{key} must be a number")))?,
                toml::Value::Boolean(_) => value
                    .parse()
                    .map(toml::Value::Boolean)
                    .map_err(|_| ConfigError::Invalid(format!("{key} must be true or false")))?,
                _ => toml::Value::String(value),
            };
            t.insert(field, new);
        }
        toml::Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))
    }

    /// Checks what `serve` needs, naming every missing or invalid setting at once.
    pub fn validate_for_serve(&self) -> Result<(), ConfigError> {
        let mut missing: Vec<&str> = Vec::new();
        let mut invalid: Vec<String> = Vec::new();
        for (name, empty) in [
            ("tls.cert", self.tls.cert.as_os_str().is_empty()),
            ("tls.key", self.tls.key.as_os_str().is_empty()),
            ("tls.client_ca", self.tls.client_ca.as_os_str().is_empty()),
            (
                "auth.principals_file",
                self.auth.principals_file.as_os_str().is_empty(),
            ),
            ("database.url", self.database.url.is_empty()),
            (
                "privacy.master_key_file or privacy.master_key",
                self.privacy.master_key.is_empty()
                    && self.privacy.master_key_file.as_os_str().is_empty(),
            ),
        ] {
            if empty {
                missing.push(name);
            }
        }
        if self.api.max_page_size == 0
            || self.api.default_page_size == 0
            || self.api.default_page_size > self.api.max_page_size
        {
            invalid.push("api.default_page_size must be between 1 and api.max_page_size".into());
        }
        for (name, v, allowed) in [
            (
                "connectors.tjansteid",
                &self.connectors.tjansteid,
                &["simulated", "smtp"][..],
            ),
            (
                "connectors.kiv",
                &self.connectors.kiv,
                &["simulated", "ldap", "office"][..],
            ),
            (
                "connectors.notifier",
                &self.connectors.notifier,
                &["log", "smtp"][..],
            ),
        ] {
            if !allowed.contains(&v.as_str()) {
                invalid.push(format!(
                    "{name} = \"{v}\": choose one of {}",
                    allowed.join(", ")
                ));
            }
        }
        if self.connectors.kiv == "ldap" {
            let l = &self.ldap;
            for (n, empty) in [
                ("ldap.url", l.url.trim().is_empty()),
                ("ldap.base_dn", l.base_dn.trim().is_empty()),
                (
                    "ldap.person_attribute",
                    l.person_attribute.trim().is_empty(),
                ),
                ("ldap.unit_attribute", l.unit_attribute.trim().is_empty()),
                (
                    "ldap.bind_password (ldap.bind_dn is set)",
                    !l.bind_dn.is_empty() && l.bind_password.is_empty(),
                ),
            ] {
                if empty {
                    missing.push(n);
                }
            }
            if !["delete", "end_date"].contains(&l.removal.as_str()) {
                invalid.push("ldap.removal must be \"delete\" or \"end_date\"".into());
            }
        }
        if self.connectors.tjansteid == "smtp" || self.connectors.notifier == "smtp" {
            let m = &self.smtp;
            for (n, empty) in [
                ("smtp.host", m.host.trim().is_empty()),
                ("smtp.from", m.from.trim().is_empty()),
                (
                    "smtp.service_desk",
                    self.connectors.tjansteid == "smtp" && m.service_desk.trim().is_empty(),
                ),
                (
                    "smtp.password (smtp.username is set)",
                    !m.username.is_empty() && m.password.is_empty(),
                ),
            ] {
                if empty {
                    missing.push(n);
                }
            }
        }
        if !(0.0..=1.0).contains(&self.simulated.failure_rate) {
            invalid.push("simulated.failure_rate must be between 0.0 and 1.0".into());
        }
        let e = &self.engine;
        for (name, v) in [
            ("engine.poll_interval_seconds", e.poll_interval_seconds),
            ("engine.remind_after_seconds", e.remind_after_seconds),
            ("engine.escalate_after_seconds", e.escalate_after_seconds),
            (
                "engine.reconcile_interval_seconds",
                e.reconcile_interval_seconds,
            ),
        ] {
            if !(0.0..=1e9).contains(&v) {
                invalid.push(format!("{name} must be between 0 and 1e9"));
            }
        }
        if e.batch_size == 0 || e.max_attempts == 0 {
            invalid.push("engine.batch_size and engine.max_attempts must be at least 1".into());
        }
        if !missing.is_empty() {
            invalid.insert(
                0,
                format!(
                    "missing settings: {} (or run `serve --dev`)",
                    missing.join(", ")
                ),
            );
        }
        if invalid.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(invalid.join("; ")))
        }
    }

    pub fn engine_config(&self) -> crate::engine::EngineConfig {
        let e = &self.engine;
        crate::engine::EngineConfig {
            workers: e.workers,
            batch_size: e.batch_size,
            lease: Duration::from_secs(e.lease_seconds.max(1)),
            max_attempts: e.max_attempts,
            backoff_base: Duration::from_millis(e.backoff_base_ms),
            backoff_max: Duration::from_secs(e.backoff_max_seconds),
            idle_poll: Duration::from_millis(e.idle_poll_ms.max(1)),
            escalate_after: Duration::from_secs_f64(e.escalate_after_seconds),
            reconcile_interval: Duration::from_secs_f64(e.reconcile_interval_seconds),
        }
    }

    pub fn timing(&self, poll_outcome: bool) -> crate::storage::Timing {
        let e = &self.engine;
        crate::storage::Timing {
            poll_interval: Duration::from_secs_f64(e.poll_interval_seconds),
            remind_after: Duration::from_secs_f64(e.remind_after_seconds),
            escalate_after: Duration::from_secs_f64(e.escalate_after_seconds),
            poll_outcome,
        }
    }
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_defaults_and_keeps_types() {
        let c = Config::load_from(
            None,
            [
                (
                    "ETK_DATABASE__URL".to_owned(),
                    "postgres://u:pw@h/db".to_owned(),
                ),
                ("ETK_API__MAX_PAGE_SIZE".to_owned(), "50".to_owned()),
                ("OTHER".to_owned(), "x".to_owned()),
            ],
        )
        .unwrap();
        assert_eq!(c.database.url.expose(), "postgres://u:pw@h/db");
        assert_eq!(c.api.max_page_size, 50);
        assert!(!format!("{c:?}").contains("pw@"));
    }

    #[test]
    fn incomplete_connector_settings_are_named() {
        let env = |pairs: &[(&str, &str)]| {
            let mut v: Vec<(String, String)> = vec![
                ("ETK_TLS__CERT".into(), "c".into()),
                ("ETK_TLS__KEY".into(), "k".into()),
                ("ETK_TLS__CLIENT_CA".into(), "ca".into()),
                ("ETK_AUTH__PRINCIPALS_FILE".into(), "p".into()),
                ("ETK_DATABASE__URL".into(), "sqlite://x".into()),
                ("ETK_PRIVACY__MASTER_KEY".into(), "k".into()),
            ];
            v.extend(
                pairs
                    .iter()
                    .map(|(k, val)| ((*k).to_owned(), (*val).to_owned())),
            );
            Config::load_from(None, v).unwrap()
        };
        assert!(env(&[]).validate_for_serve().is_ok());
        let e = env(&[("ETK_CONNECTORS__KIV", "ldap")])
            .validate_for_serve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("ldap.url"), "{e}");
        let e = env(&[
            ("ETK_CONNECTORS__TJANSTEID", "smtp"),
            ("ETK_SMTP__HOST", "h"),
        ])
        .validate_for_serve()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("smtp.from") && e.contains("smtp.service_desk") && !e.contains("smtp.host"),
            "{e}"
        );
        let e = env(&[("ETK_CONNECTORS__KIV", "carrier-pigeon")])
            .validate_for_serve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("simulated, ldap, office"), "{e}");
        let c = env(&[
            ("ETK_CONNECTORS__KIV", "ldap"),
            ("ETK_LDAP__URL", "ldap://h"),
            ("ETK_LDAP__BIND_DN", "cn=x"),
            ("ETK_LDAP__BIND_PASSWORD", "hunter2"),
        ]);
        assert!(c.validate_for_serve().is_ok());
        assert!(!format!("{c:?}").contains("hunter2"), "secret printed");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err =
            Config::load_from(None, [("ETK_API__NOPE".to_owned(), "1".to_owned())]).unwrap_err();
        assert!(err.to_string().contains("no key nope"));
        assert!(
            Config::load_from(None, [])
                .unwrap()
                .validate_for_serve()
                .is_err()
        );
    }
}
