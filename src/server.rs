//! Settings of the gRPC server itself: where it listens, its limits, its TLS identity and how
//! often readiness is probed. `startup` builds the server from them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::crl::CrlSettings;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Port 0 picks a free port (the bound address is logged).
    pub listen: SocketAddr,
    /// Requests in flight per connection before the server pushes back.
    pub concurrency_per_connection: usize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Time to drain on shutdown: in-flight requests and the steps the workers hold finish
    /// within it; leases still held after it are released.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// On shutdown, how long the server keeps accepting connections after readiness turned
    /// false (load balancers and Kubernetes endpoints take a moment to stop sending); the
    /// grace starts after it. `WatchDeregistration` streams end at once, with UNAVAILABLE
    /// `SHUTTING_DOWN`, so watchers move to another replica.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// How often the database (readiness) and the connectors' servers are probed.
    #[serde(with = "humantime_serde")]
    pub health_probe: Duration,
    /// Refuse to start when a connector's server cannot be reached (otherwise start; cases
    /// wait until it can be reached).
    pub require_reachable_at_start: bool,
    /// How often the principals file, the TLS files and the CRL files are checked for changes
    /// ("0s": only on SIGHUP). See `reload`.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

/// The server's certificate and the CAs whose client certificates it accepts (mutual TLS).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM bundle of accepted client CAs.
    pub client_ca: PathBuf,
    /// The CRLs client certificates are checked against (off while no source is configured).
    pub revocation: CrlSettings,
}

impl TlsSettings {
    pub fn validate(&self) -> Result<(), String> {
        self.revocation.validate()
    }
}
