//! Reads the configuration: embedded defaults (`config/default.toml`), then a file (`--config`
//! or `ETK_CONFIG`), then the environment (`ETK_<SECTION>__<KEY>`), layered by figment.
//!
//! Each section's type, defaults for optional keys and semantic checks belong to the component
//! that uses it; this module only names the sections, combines them, and reports every problem
//! at once — every missing key, not just the first serde meets.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::admin::AdminSettings;
use crate::api::Paging;
use crate::auth::AuthSettings;
use crate::connectors::simulated::SimulatedSettings;
use crate::connectors::smtp::SmtpSettings;
use crate::connectors::{
    KivSettings, NotifierSettings, RevocationCheckSettings, TjansteIdSettings,
};
use crate::console::ConsoleSettings;
use crate::engine::EngineSettings;
use crate::privacy::PrivacySettings;
use crate::retention::RetentionSettings;
use crate::rpc::LimitSettings;
use crate::server::{ServerSettings, TlsSettings};
use crate::storage::DatabaseSettings;
use crate::telemetry::TelemetrySettings;

mod extract;

use extract::extract;

const DEFAULTS: &str = include_str!("../config/default.toml");
const ENV_PREFIX: &str = "ETK_";

/// The whole configuration: one section per component.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerSettings,
    pub tls: TlsSettings,
    pub auth: AuthSettings,
    pub database: DatabaseSettings,
    pub privacy: PrivacySettings,
    pub api: Paging,
    pub engine: EngineSettings,
    pub retention: RetentionSettings,
    pub tjansteid: TjansteIdSettings,
    pub kiv: KivSettings,
    pub notifier: NotifierSettings,
    #[serde(default)]
    pub revocation_check: RevocationCheckSettings,
    /// The relay for the `smtp` kinds of `tjansteid` and `notifier`; required by them only.
    #[serde(default)]
    pub smtp: Option<SmtpSettings>,
    pub simulated: SimulatedSettings,
    pub admin: AdminSettings,
    pub console: ConsoleSettings,
    pub telemetry: TelemetrySettings,
    pub limits: LimitSettings,
    pub audit: crate::verifier::AuditSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Defaults, then `file` (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Layers::new(file)?.config()
    }
}

/// The layered sources, before they are read into a `Config`.
pub struct Layers(Figment);

impl std::fmt::Debug for Layers {
    // Figment's own Debug prints every value, secrets included.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Layers(..)")
    }
}

impl Layers {
    /// Embedded defaults, then `file`, then `ETK_<SECTION>__<KEY>` variables of this process.
    pub fn new(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Self::defaults().0;
        if let Some(path) = file {
            // figment treats a missing file as empty; a named file that cannot be read is an error.
            std::fs::metadata(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        // `ETK_CONFIG` and variables of other tools (`ETK_TEST_…`) carry no `__`.
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        Ok(Self(figment.merge(env)))
    }

    /// The embedded defaults alone (tests set the rest explicitly).
    pub fn defaults() -> Self {
        Self(Figment::from(Toml::string(DEFAULTS)))
    }

    /// Sets `key` (dotted, e.g. `server.listen`) over every layer.
    pub fn set(self, key: &str, value: impl serde::Serialize) -> Self {
        Self(self.0.merge(Serialized::default(key, value)))
    }

    /// Sets `key` only where no layer sets it (`serve --dev` fills its paths this way).
    pub fn fill(self, key: &str, value: impl serde::Serialize) -> Self {
        Self(self.0.join(Serialized::default(key, value)))
    }

    /// The whole configuration, checked; every problem is named in the error.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let (config, mut problems) = extract::<Config>(self.0.clone(), "");
        let Some(c) = config else {
            return Err(ConfigError::Invalid(problems.into_messages()));
        };
        if (c.tjansteid.uses_smtp() || c.notifier.uses_smtp()) && c.smtp.is_none() {
            // Name what the absent section needs, as if it were present but empty.
            let (_, smtp) = extract::<SmtpSettings>(Figment::new(), "smtp");
            problems.absorb(smtp);
        }
        let checks = [
            ("server", c.server.validate()),
            ("limits", c.limits.validate()),
            ("api", c.api.validate()),
            ("console", c.console.validate()),
            ("database", c.database.validate()),
            ("engine", c.engine.validate()),
            ("privacy", c.privacy.validate()),
            ("retention", c.retention.validate()),
            ("simulated", c.simulated.validate()),
            ("revocation_check", c.revocation_check.validate()),
            ("tls", c.tls.validate()),
        ];
        // After a wrong value its placeholder stands in the tree, and the checks would judge
        // it; only the privacy check (two optional keys, never stood in for) still applies.
        let placeholders_in_tree = !problems.invalid.is_empty();
        for (section, result) in checks {
            if placeholders_in_tree && section != "privacy" {
                continue;
            }
            if let Err(e) = result {
                problems.invalid.push(format!("{section}: {e}"));
            }
        }
        if problems.is_empty() {
            Ok(c)
        } else {
            Err(ConfigError::Invalid(problems.into_messages()))
        }
    }

    /// One section alone, e.g. `database` for `migrate`, which needs no TLS or connectors.
    pub fn section<T: DeserializeOwned>(&self, key: &str) -> Result<T, ConfigError> {
        let (value, problems) = extract::<T>(self.0.focus(key), key);
        match value {
            Some(v) if problems.is_empty() => Ok(v),
            _ => Err(ConfigError::Invalid(problems.into_messages())),
        }
    }
}

#[cfg(test)]
// `Jail`'s closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::Jail;
    use secrecy::ExposeSecret;

    use super::*;

    /// The settings `serve` needs beyond the defaults, as environment variables.
    fn required_env(jail: &mut Jail) {
        jail.set_env("ETK_TLS__CERT", "c.pem");
        jail.set_env("ETK_TLS__KEY", "k.pem");
        jail.set_env("ETK_TLS__CLIENT_CA", "ca.pem");
        jail.set_env("ETK_AUTH__PRINCIPALS_FILE", "p.toml");
        jail.set_env("ETK_DATABASE__URL", "postgres://u:hunter2@h/db");
        jail.set_env("ETK_PRIVACY__MASTER_KEY", "a2V5");
    }

    fn error(r: Result<Config, ConfigError>) -> String {
        match r {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_and_environment_combine_with_their_types() {
        Jail::expect_with(|jail| {
            required_env(jail);
            jail.set_env("ETK_API__MAX_PAGE_SIZE", "50");
            jail.set_env("ETK_ENGINE__RETRY__BACKOFF_BASE", "250ms");
            jail.set_env("ETK_ENGINE__TIMERS__REMIND_AFTER", "2d");
            jail.set_env("ETK_SERVER__REQUIRE_REACHABLE_AT_START", "true");
            // Not ours: ignored, as is ETK_CONFIG.
            jail.set_env("ETK_TEST_POSTGRES_URL", "x");
            jail.set_env("ETK_CONFIG", "nowhere.toml");
            let c = Config::load(None).expect("loads");
            assert_eq!(c.api.max_size, 50);
            assert_eq!(c.api.default_size, 20, "default kept");
            assert_eq!(
                c.engine.retry.backoff_base,
                std::time::Duration::from_millis(250)
            );
            assert_eq!(
                c.engine.timers.remind_after,
                std::time::Duration::from_secs(2 * 86_400)
            );
            assert!(c.server.require_reachable_at_start);
            assert_eq!(c.database.url.expose_secret(), "postgres://u:hunter2@h/db");
            assert!(matches!(c.kiv, KivSettings::Simulated(_)));
            Ok(())
        });
    }

    #[test]
    fn a_file_is_laid_over_the_defaults_and_under_the_environment() {
        Jail::expect_with(|jail| {
            required_env(jail);
            jail.create_file(
                "gateway.toml",
                r#"
                [api]
                max_page_size = 40
                default_page_size = 10

                [kiv]
                kind = "ldap"
                url = "ldaps://kiv.example.se"
                base_dn = "ou=Personal,o=VGR"
                bind = { dn = "cn=gw", password = "from-file" }
                removal = "end_date"
                "#,
            )?;
            jail.set_env("ETK_API__MAX_PAGE_SIZE", "30");
            jail.set_env("ETK_KIV__BIND__PASSWORD", "from-env");
            let c = Config::load(Some(Path::new("gateway.toml"))).expect("loads");
            assert_eq!((c.api.default_size, c.api.max_size), (10, 30));
            let KivSettings::Ldap(l) = &c.kiv else {
                panic!("kind = ldap: {:?}", c.kiv)
            };
            assert_eq!(l.url, "ldaps://kiv.example.se");
            assert_eq!(l.removal, crate::connectors::ldap::Removal::EndDate);
            assert_eq!(
                l.person_attribute, "hsaPersonIdentityNumber",
                "code default"
            );
            let bind = l.bind.as_ref().expect("bind");
            assert_eq!(bind.password.expose_secret(), "from-env");
            let missing = Config::load(Some(Path::new("absent.toml"))).unwrap_err();
            assert!(missing.to_string().contains("absent.toml"), "{missing}");
            Ok(())
        });
    }

    #[test]
    fn every_missing_key_is_named_at_once() {
        Jail::expect_with(|jail| {
            jail.set_env("ETK_KIV__KIND", "ldap");
            jail.set_env("ETK_KIV__BIND__DN", "cn=gw");
            let e = error(Config::load(None));
            for key in [
                "tls.cert",
                "tls.key",
                "tls.client_ca",
                "auth.principals_file",
                "database.url",
                "kiv.url",
                "kiv.base_dn",
                "kiv.bind.password",
            ] {
                assert!(e.contains(key), "{key} not named: {e}");
            }
            assert!(!e.contains("kiv.person_attribute"), "optional: {e}");
            Ok(())
        });
    }

    #[test]
    fn wrong_values_and_missing_keys_are_named_together() {
        Jail::expect_with(|jail| {
            jail.set_env("ETK_ENGINE__LEASE", "30");
            jail.set_env("ETK_KIV__KIND", "carrier-pigeon");
            let e = error(Config::load(None));
            for part in ["engine.lease", "carrier-pigeon", "tls.cert", "database.url"] {
                assert!(e.contains(part), "{part} not named: {e}");
            }
            Ok(())
        });
    }

    #[test]
    fn an_smtp_kind_needs_the_relay_and_its_own_keys() {
        Jail::expect_with(|jail| {
            required_env(jail);
            jail.set_env("ETK_TJANSTEID__KIND", "smtp");
            let e = error(Config::load(None));
            for key in ["tjansteid.service_desk", "smtp.host", "smtp.from"] {
                assert!(e.contains(key), "{key} not named: {e}");
            }
            jail.set_env("ETK_TJANSTEID__SERVICE_DESK", "desk@example.se");
            jail.set_env("ETK_SMTP__HOST", "mail.example.se");
            let e = error(Config::load(None));
            assert!(e.contains("smtp.from") && !e.contains("smtp.host"), "{e}");
            jail.set_env("ETK_SMTP__FROM", "gw@example.se");
            jail.set_env("ETK_NOTIFIER__KIND", "smtp");
            let c = Config::load(None).expect("complete");
            assert!(c.notifier.uses_smtp() && c.tjansteid.uses_smtp());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_impossible_kinds_are_refused_by_name() {
        Jail::expect_with(|jail| {
            required_env(jail);
            jail.set_env("ETK_API__NOPE", "1");
            let e = error(Config::load(None));
            assert!(e.contains("nope"), "{e}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            required_env(jail);
            jail.set_env("ETK_KIV__KIND", "carrier-pigeon");
            let e = error(Config::load(None));
            assert!(e.contains("carrier-pigeon"), "{e}");
            assert!(
                e.contains("simulated") && e.contains("ldap") && e.contains("office"),
                "{e}"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            required_env(jail);
            // A simulated KIV has no URL: settings of another kind do not fit.
            jail.set_env("ETK_KIV__URL", "ldap://h");
            let e = error(Config::load(None));
            assert!(e.contains("url"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn semantic_checks_of_the_components_are_collected() {
        Jail::expect_with(|jail| {
            required_env(jail);
            jail.set_env("ETK_API__DEFAULT_PAGE_SIZE", "500");
            jail.set_env("ETK_SIMULATED__FAILURE_RATE", "1.5");
            jail.set_env("ETK_ENGINE__RETRY__MAX_ATTEMPTS", "0");
            jail.set_env("ETK_DATABASE__LISTEN_CHECK", "0s");
            let e = error(Config::load(None));
            assert!(e.contains("api: default_page_size"), "{e}");
            assert!(e.contains("database: listen_check"), "{e}");
            assert!(e.contains("simulated: failure_rate"), "{e}");
            assert!(e.contains("engine: retry.max_attempts"), "{e}");
            jail.set_env("ETK_ENGINE__RETRY__MAX_ATTEMPTS", "3");
            jail.set_env("ETK_DATABASE__LISTEN_CHECK", "30s");
            jail.set_env("ETK_ENGINE__RETRY__BACKOFF_BASE", "10m");
            jail.set_env("ETK_ENGINE__TIMERS__POLL_INTERVAL", "0s");
            jail.set_env("ETK_ENGINE__TIMERS__ESCALATE_AFTER", "1d");
            let e = error(Config::load(None));
            assert!(e.contains("retry.backoff_base"), "{e}");
            assert!(e.contains("timers.poll_interval"), "{e}");
            assert!(e.contains("timers.escalate_after"), "{e}");
            jail.set_env("ETK_ENGINE__RETRY__BACKOFF_BASE", "500ms");
            jail.set_env("ETK_ENGINE__TIMERS__POLL_INTERVAL", "1s");
            jail.set_env("ETK_ENGINE__TIMERS__ESCALATE_AFTER", "10d");
            jail.set_env("ETK_API__DEFAULT_PAGE_SIZE", "20");
            jail.set_env("ETK_SIMULATED__FAILURE_RATE", "0.5");
            jail.set_env("ETK_ENGINE__RETRY__MAX_ATTEMPTS", "1");
            jail.set_env("ETK_PRIVACY__MASTER_KEY", "");
            Config::load(None).expect("an empty key is still a key; the vault refuses it");
            Ok(())
        });
    }

    #[test]
    fn revocation_settings_default_to_fail_closed_and_are_checked() {
        Jail::expect_with(|jail| {
            required_env(jail);
            let c = Config::load(None).expect("loads");
            let r = &c.tls.revocation;
            assert!(!r.enabled(), "no CRL source by default");
            assert_eq!(r.when_stale, crate::crl::Policy::Refuse);
            assert_eq!(r.without_crl, crate::crl::Policy::Refuse);
            assert_eq!(c.server.reload_interval.as_secs(), 10);
            jail.set_env("ETK_TLS__REVOCATION__FETCH_ATTEMPTS", "0");
            jail.set_env(
                "ETK_TLS__REVOCATION__URLS",
                "[\"https://crl.example.se/x.crl\"]",
            );
            let e = error(Config::load(None));
            assert!(e.contains("tls: revocation.fetch_attempts"), "{e}");
            jail.set_env("ETK_TLS__REVOCATION__FETCH_ATTEMPTS", "3");
            let e = error(Config::load(None));
            assert!(
                e.contains("revocation.urls") && e.contains("http://"),
                "{e}"
            );
            jail.set_env("ETK_TLS__REVOCATION__URLS", "[]");
            jail.set_env("ETK_TLS__REVOCATION__WHEN_STALE", "shrug");
            let e = error(Config::load(None));
            assert!(e.contains("tls.revocation.when_stale"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn durations_are_written_as_people_write_them() {
        Jail::expect_with(|jail| {
            required_env(jail);
            jail.set_env("ETK_TJANSTEID__CONFIRM_AFTER", "never");
            jail.set_env("ETK_SERVER__SHUTDOWN_GRACE", "1m 30s");
            let c = Config::load(None).expect("loads");
            let TjansteIdSettings::Simulated(t) = c.tjansteid else {
                panic!("simulated")
            };
            assert_eq!(t.confirm_after.delay(), None);
            assert_eq!(c.server.shutdown_grace.as_secs(), 90);
            jail.set_env("ETK_SERVER__SHUTDOWN_GRACE", "10");
            let e = error(Config::load(None));
            assert!(e.contains("server.shutdown_grace"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn secrets_are_never_printed() {
        Jail::expect_with(|jail| {
            required_env(jail);
            jail.set_env("ETK_KIV__KIND", "ldap");
            jail.set_env("ETK_KIV__URL", "ldap://h");
            jail.set_env("ETK_KIV__BASE_DN", "o=x");
            jail.set_env("ETK_KIV__BIND__DN", "cn=x");
            jail.set_env("ETK_KIV__BIND__PASSWORD", "s3cret-pw");
            let c = Config::load(None).expect("loads");
            let printed = format!("{c:?} {:?}", Layers::new(None));
            assert!(!printed.contains("s3cret-pw"), "{printed}");
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(!printed.contains("a2V5"), "{printed}");
            // An all-digit secret is read as a number: refused, and not echoed either.
            jail.set_env("ETK_KIV__BIND__PASSWORD", "20242024");
            let e = error(Config::load(None));
            assert!(e.contains("kiv") && !e.contains("20242024"), "{e}");
            jail.set_env("ETK_KIV__BIND__PASSWORD", "\"20242024\"");
            let KivSettings::Ldap(l) = Config::load(None).expect("quoted").kiv else {
                panic!("ldap")
            };
            let bind = l.bind.expect("bind");
            assert_eq!(bind.password.expose_secret(), "20242024");
            Ok(())
        });
    }

    #[test]
    fn migrate_reads_its_sections_alone() {
        Jail::expect_with(|jail| {
            jail.set_env("ETK_DATABASE__URL", "sqlite://x?mode=rwc");
            let layers = Layers::new(None).expect("layers");
            let db: DatabaseSettings = layers.section("database").expect("database");
            assert_eq!(db.url.expose_secret(), "sqlite://x?mode=rwc");
            assert!(layers.config().is_err(), "serve needs more");
            let e = Layers::defaults()
                .section::<DatabaseSettings>("database")
                .unwrap_err()
                .to_string();
            assert!(e.contains("database.url"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn dev_mode_fills_only_what_is_not_set() {
        Jail::expect_with(|jail| {
            required_env(jail);
            let c = Layers::new(None)
                .expect("layers")
                .fill("tls.cert", "dev.pem")
                .fill("database.max_connections", 99)
                .config()
                .expect("loads");
            assert_eq!(c.tls.cert, Path::new("c.pem"));
            assert_eq!(
                c.database.max_connections, 10,
                "the default is a setting too"
            );
            Ok(())
        });
    }
}
