//! Where `etkctl` connects and as whom: the gateway's address, the operator's client
//! certificate and key, and the CA that signed the gateway's certificate.
//!
//! Each value is taken from the first source that sets it: a flag, its `ETKCTL_*` environment
//! variable (both through clap), the profile file, and last the dev data directory that
//! `etjanstekort-gateway serve --dev` creates (its operator identity and the default listen
//! address), so that `etkctl` needs no flags next to a dev gateway.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::devcerts::DevPaths;

/// `serve --dev`'s listen address (the embedded default of `server.listen`).
pub const DEV_ADDRESS: &str = "https://127.0.0.1:50051";

/// How long a call may take before `etkctl` gives up (a stream's messages each get this long).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection flags, as clap read them (flag, then `ETKCTL_*`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TargetArgs {
    /// The gateway's gRPC address, e.g. https://gateway.example:50051.
    #[arg(long, env = "ETKCTL_ADDRESS", global = true)]
    pub address: Option<String>,
    /// PEM client certificate of an operator principal.
    #[arg(long, env = "ETKCTL_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "ETKCTL_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// PEM CA bundle that signed the gateway's server certificate.
    #[arg(long, env = "ETKCTL_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// The name the gateway's certificate must carry (default: the address's host).
    #[arg(long, env = "ETKCTL_TLS_NAME", global = true)]
    pub tls_name: Option<String>,
    /// Profile file (TOML with address, cert, key, ca, tls_name); default
    /// $XDG_CONFIG_HOME/etkctl/profile.toml or ~/.config/etkctl/profile.toml, if it exists.
    #[arg(long, env = "ETKCTL_PROFILE", global = true)]
    pub profile: Option<PathBuf>,
    /// The dev data directory of `serve --dev`, for whatever nothing else sets.
    #[arg(
        long,
        env = "ETKCTL_DEV_DATA_DIR",
        global = true,
        default_value = "./dev-data"
    )]
    pub dev_data_dir: PathBuf,
}

/// A profile file: any of the connection values. Relative paths are relative to the file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub address: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub tls_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("invalid profile {path}: {message}")]
    Profile { path: String, message: String },
    #[error("invalid address {address}: {message}")]
    Address { address: String, message: String },
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
}

/// The resolved connection: every value set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub address: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub tls_name: Option<String>,
}

impl TargetArgs {
    /// Flags and environment first, then the profile, then the dev data directory.
    pub fn resolve(&self) -> Result<Target, TargetError> {
        self.resolve_with(default_profile_path())
    }

    /// `resolve` with the default profile's place given (tests point it elsewhere).
    fn resolve_with(&self, default_profile: Option<PathBuf>) -> Result<Target, TargetError> {
        let profile = match &self.profile {
            Some(path) => read_profile(path)?,
            None => match default_profile.filter(|p| p.exists()) {
                Some(path) => read_profile(&path)?,
                None => Profile::default(),
            },
        };
        let dev = DevPaths::new(&self.dev_data_dir);
        let certs = self.dev_data_dir.join("certs");
        Ok(Target {
            address: self
                .address
                .clone()
                .or(profile.address)
                .unwrap_or_else(|| DEV_ADDRESS.to_owned()),
            cert: self
                .cert
                .clone()
                .or(profile.cert)
                .unwrap_or_else(|| certs.join("operator.pem")),
            key: self
                .key
                .clone()
                .or(profile.key)
                .unwrap_or_else(|| certs.join("operator.key")),
            ca: self.ca.clone().or(profile.ca).unwrap_or(dev.ca),
            tls_name: self.tls_name.clone().or(profile.tls_name),
        })
    }
}

fn default_profile_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("etkctl").join("profile.toml"))
}

fn read_profile(path: &Path) -> Result<Profile, TargetError> {
    let text = read("profile", path)?;
    let mut profile: Profile = toml::from_str(&text).map_err(|e| TargetError::Profile {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    for p in [&mut profile.cert, &mut profile.key, &mut profile.ca]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    }
    Ok(profile)
}

fn read(what: &'static str, path: &Path) -> Result<String, TargetError> {
    std::fs::read_to_string(path).map_err(|source| TargetError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

impl Target {
    /// An mTLS channel to the gateway, connected (so a wrong address or certificate fails here).
    pub async fn connect(&self) -> Result<Channel, TargetError> {
        let address = if self.address.contains("://") {
            self.address.clone()
        } else {
            format!("https://{}", self.address)
        };
        let bad = |message: String| TargetError::Address {
            address: self.address.clone(),
            message,
        };
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("CA bundle", &self.ca)?))
            .identity(Identity::from_pem(
                read("client certificate", &self.cert)?,
                read("client key", &self.key)?,
            ));
        if let Some(name) = &self.tls_name {
            tls = tls.domain_name(name.clone());
        }
        let endpoint = Endpoint::from_shared(address)
            .map_err(|e| bad(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        endpoint
            .connect()
            .await
            .map_err(|source| TargetError::Connect {
                address: self.address.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> TargetArgs {
        TargetArgs {
            dev_data_dir: PathBuf::from("/dev-dir"),
            // A profile path that does not exist would fail: point at none by default.
            ..TargetArgs::default()
        }
    }

    #[test]
    fn flags_win_over_the_profile_and_the_profile_over_dev() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("p.toml");
        std::fs::write(
            &profile,
            "address = \"https://gw.example:443\"\ncert = \"op.pem\"\nkey = \"/abs/op.key\"\n",
        )
        .unwrap();
        let t = TargetArgs {
            profile: Some(profile),
            key: Some(PathBuf::from("/flag.key")),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(t.address, "https://gw.example:443");
        assert_eq!(t.cert, dir.path().join("op.pem"), "relative to the profile");
        assert_eq!(t.key, PathBuf::from("/flag.key"), "the flag wins");
        assert_eq!(
            t.ca,
            PathBuf::from("/dev-dir/certs/ca.pem"),
            "dev fills the rest"
        );
    }

    #[test]
    fn nothing_set_means_the_dev_gateway_and_its_operator() {
        let t = TargetArgs {
            profile: Some(PathBuf::from("/nonexistent/profile.toml")),
            ..args()
        }
        .resolve();
        assert!(
            matches!(t, Err(TargetError::Read { .. })),
            "a named profile must exist"
        );
        // No profile named; the default place is looked at, and used only if it exists.
        let home = tempfile::tempdir().unwrap();
        let default = home.path().join("profile.toml");
        let dev = Target {
            address: DEV_ADDRESS.into(),
            cert: "/dev-dir/certs/operator.pem".into(),
            key: "/dev-dir/certs/operator.key".into(),
            ca: "/dev-dir/certs/ca.pem".into(),
            tls_name: None,
        };
        assert_eq!(args().resolve_with(Some(default.clone())).unwrap(), dev);
        std::fs::write(&default, "tls_name = \"gw\"\n").unwrap();
        let t = args().resolve_with(Some(default)).unwrap();
        assert_eq!(t.tls_name.as_deref(), Some("gw"));
    }

    #[test]
    fn unknown_profile_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("p.toml");
        std::fs::write(&profile, "adress = \"x\"\n").unwrap();
        let r = TargetArgs {
            profile: Some(profile),
            ..args()
        }
        .resolve();
        assert!(matches!(r, Err(TargetError::Profile { .. })), "{r:?}");
    }
}
