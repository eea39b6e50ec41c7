//! Settings of the gRPC server itself: where it listens, its limits, its TLS identity and how
//! often readiness is probed. `startup` builds the server from them. `idle` closes connections
//! that send nothing; `caps` bounds how many there are.

pub mod caps;
pub mod idle;

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
    /// How often an HTTP/2 PING is sent on every connection (idle watch streams included).
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// A PING not answered within this closes the connection.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// A connection from which nothing arrives for this long is closed; `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A TLS handshake not finished within this is abandoned and the connection closed.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Concurrent HTTP/2 streams (calls, watch streams included) one connection may open.
    pub max_concurrent_streams: u32,
    /// Open connections at once; a TCP connection over it is closed as soon as it is accepted.
    pub max_connections: usize,
    /// TLS handshakes in progress at once; a TCP connection over it is closed at once.
    pub max_handshakes: usize,
    /// Largest request message accepted; a larger one is refused with RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
    /// How often the principals file, the TLS files and the CRL files are checked for changes
    /// ("0s": only on SIGHUP). See `reload`.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl ServerSettings {
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.http2_keepalive_interval.is_zero() || self.http2_keepalive_timeout.is_zero() {
            problems.push("http2_keepalive_interval and http2_keepalive_timeout must be above 0s");
        }
        // A live client answers each ping; with pings rarer than the idle timeout, an open
        // watch stream waiting for events would be cut as idle.
        if !self.idle_timeout.is_zero() && self.http2_keepalive_interval >= self.idle_timeout {
            problems.push("http2_keepalive_interval must be shorter than idle_timeout");
        }
        if self.tls_handshake_timeout.is_zero() {
            problems.push("tls_handshake_timeout must be above 0s");
        }
        if self.max_concurrent_streams == 0 {
            problems.push("max_concurrent_streams must be at least 1");
        }
        if self.max_connections == 0 || self.max_handshakes == 0 {
            problems.push("max_connections and max_handshakes must be at least 1");
        }
        if self.max_request_bytes < 1024 {
            problems.push("max_request_bytes must be at least 1024");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The idle timeout, unless turned off.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ServerSettings {
        ServerSettings {
            listen: "127.0.0.1:0".parse().expect("address"),
            concurrency_per_connection: 16,
            request_timeout: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(10),
            health_probe: Duration::from_secs(5),
            require_reachable_at_start: false,
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 128,
            max_connections: 10_000,
            max_handshakes: 256,
            max_request_bytes: 65_536,
            reload_interval: Duration::from_secs(10),
            drain_delay: Duration::ZERO,
        }
    }

    #[test]
    fn connection_limits_that_contradict_each_other_are_refused() {
        assert!(settings().validate().is_ok());
        // Pings rarer than the idle timeout would cut quiet watch streams.
        let mut s = settings();
        s.http2_keepalive_interval = Duration::from_secs(60);
        let e = s.validate().expect_err("refused");
        assert!(e.contains("shorter than idle_timeout"), "{e}");
        // Unless the idle timeout is off.
        s.idle_timeout = Duration::ZERO;
        assert!(s.validate().is_ok());
        assert_eq!(s.idle_timeout(), None);
        let mut s = settings();
        s.tls_handshake_timeout = Duration::ZERO;
        s.max_concurrent_streams = 0;
        s.max_connections = 0;
        s.max_request_bytes = 100;
        let e = s.validate().expect_err("refused");
        for key in [
            "tls_handshake_timeout",
            "max_concurrent_streams",
            "max_connections",
            "max_request_bytes",
        ] {
            assert!(e.contains(key), "{key} not named in {e}");
        }
    }
}
