//! The gRPC listener's TLS: the server certificate, the client-CA bundle and the CRLs in force,
//! combined into one rustls `ServerConfig` that is rebuilt whenever one of them is reloaded.
//! Each accepted connection is handshaken with the configuration current at that moment, so
//! a reload takes effect for new handshakes without a restart (`reload` drives it).
//!
//! `incoming` accepts TCP connections, handshakes each in its own task (bounded by a deadline)
//! and yields `tokio_rustls` streams, for which tonic provides `TlsConnectInfo`: handlers and
//! `rpc::AuthLayer` see the verified peer certificates exactly as with tonic's own TLS.
//!
//! Client certificates are verified by webpki (chain to the client-CA bundle, and, when CRLs
//! are configured, the end-entity certificate against its issuer's CRL) behind a
//! `RevocationGuard` that adds the explicit stale-CRL policy and logs and counts every
//! revocation refusal with the certificate's serial number and issuer (never its subject).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::crl::{CrlSet, CrlSettings, CrlStore, Freshness, Policy};
use crate::metrics::Metrics;
use crate::server::caps::{ConnectionCaps, Held};
use crate::server::idle::IdleTimeout;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server certificate chain and key from PEM, checked to belong together.
pub fn load_server_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if chain.is_empty() {
        return Err("certificate: no CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key: {e}"))?;
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| e.to_string())?;
    // `from_der` lets a key of unknown consistency through; a server key must match.
    key.keys_match().map_err(|e| e.to_string())?;
    Ok(Arc::new(key))
}

/// The client-CA bundle as trust anchors (at least one).
pub fn load_client_roots(cas: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(cas.iter().cloned());
    if added == 0 || ignored > 0 {
        return Err(format!(
            "{ignored} of {} certificates are not usable trust anchors",
            added + ignored
        ));
    }
    Ok(Arc::new(roots))
}

/// What the TLS configuration is built from.
#[derive(Debug)]
struct Parts {
    identity: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    crls: Arc<CrlSet>,
}

/// The TLS configuration in force, rebuilt from its parts on every reload.
#[derive(Debug)]
pub struct TlsState {
    parts: Mutex<Parts>,
    config: RwLock<Arc<ServerConfig>>,
    revocation: Option<Arc<CrlStore>>,
    metrics: Arc<Metrics>,
}

impl TlsState {
    /// `revocation`: the CRLs when revocation is checked (`None`: not checked); the set in
    /// force is `crls` until `set_crls`.
    pub fn new(
        identity: Arc<CertifiedKey>,
        roots: Arc<RootCertStore>,
        crls: Arc<CrlSet>,
        revocation: Option<Arc<CrlStore>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let parts = Parts {
            identity,
            roots,
            crls,
        };
        let config = build(&parts, revocation.as_ref(), &metrics)?;
        Ok(Self {
            parts: Mutex::new(parts),
            config: RwLock::new(config),
            revocation,
            metrics,
        })
    }

    /// The configuration new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set_identity(&self, identity: Arc<CertifiedKey>) -> Result<(), String> {
        self.update(|p| p.identity = identity)
    }

    pub fn set_roots(&self, roots: Arc<RootCertStore>) -> Result<(), String> {
        self.update(|p| p.roots = roots)
    }

    pub fn set_crls(&self, crls: Arc<CrlSet>) -> Result<(), String> {
        self.update(|p| p.crls = crls)
    }

    /// Applies `change` and rebuilds; on failure the previous parts and configuration stay.
    fn update(&self, change: impl FnOnce(&mut Parts)) -> Result<(), String> {
        let mut parts = self
            .parts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = Parts {
            identity: parts.identity.clone(),
            roots: parts.roots.clone(),
            crls: parts.crls.clone(),
        };
        change(&mut next);
        let config = build(&next, self.revocation.as_ref(), &self.metrics)?;
        *parts = next;
        *self
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        Ok(())
    }
}

fn build(
    parts: &Parts,
    revocation: Option<&Arc<CrlStore>>,
    metrics: &Arc<Metrics>,
) -> Result<Arc<ServerConfig>, String> {
    let mut verifier = WebPkiClientVerifier::builder_with_provider(parts.roots.clone(), provider());
    if revocation.is_some() {
        verifier = verifier
            .with_crls(parts.crls.ders())
            .only_check_end_entity_revocation();
        // Unknown status (no CRL of the issuer, or none whose scope covers the certificate)
        // refuses unless the policy accepts it; the guard logs and counts either way.
        if revocation.is_some_and(|r| r.settings().without_crl == Policy::Accept) {
            verifier = verifier.allow_unknown_revocation_status();
        }
    }
    let inner = verifier.build().map_err(|e| e.to_string())?;
    let guard = Arc::new(RevocationGuard {
        inner,
        crls: parts.crls.clone(),
        policy: revocation.map(|r| r.settings().clone()),
        store: revocation.cloned(),
        metrics: metrics.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(guard)
        .with_cert_resolver(Arc::new(Identity(parts.identity.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The one server certificate, whatever the client asks for.
#[derive(Debug)]
struct Identity(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Identity {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// webpki's verdict plus the stale-CRL and missing-CRL policies; every revocation refusal is
/// logged (serial number and issuer) and counted.
#[derive(Debug)]
struct RevocationGuard {
    inner: Arc<dyn ClientCertVerifier>,
    crls: Arc<CrlSet>,
    policy: Option<CrlSettings>,
    /// Where distribution points of certificates without a CRL are handed to be fetched.
    store: Option<Arc<CrlStore>>,
    metrics: Arc<Metrics>,
}

impl RevocationGuard {
    /// Hands the certificate's `http://` CRL distribution points to the store to fetch, when
    /// `distribution_points` is on. Only for certificates a trusted CA signed.
    fn learn_distribution_points(&self, end_entity: &CertificateDer<'_>) {
        if let (Some(policy), Some(store)) = (&self.policy, &self.store)
            && policy.distribution_points
        {
            for url in crate::crl::distribution_points(end_entity.as_ref()) {
                store.learn_url(&url);
            }
        }
    }

    fn refuse(
        &self,
        leaf: &CertificateDer<'_>,
        reason: &'static str,
        error: CertificateError,
    ) -> rustls::Error {
        let (serial, issuer) = match X509Certificate::from_der(leaf.as_ref()) {
            Ok((_, c)) => (c.raw_serial_as_string(), c.issuer().to_string()),
            Err(_) => ("?".into(), "?".into()),
        };
        tracing::warn!(serial = %serial, issuer = %issuer, reason,
            "client certificate refused at the handshake");
        self.metrics.client_certificate_refused(reason);
        rustls::Error::InvalidCertificate(error)
    }
}

fn system_time(now: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

impl ClientCertVerifier for RevocationGuard {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)) => {
                return Err(self.refuse(end_entity, "revoked", CertificateError::Revoked));
            }
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownRevocationStatus)) => {
                // Signed by a trusted CA, but no CRL covers it: learn where the CA publishes.
                self.learn_distribution_points(end_entity);
                return Err(self.refuse(
                    end_entity,
                    "no_crl",
                    CertificateError::UnknownRevocationStatus,
                ));
            }
            other => other?,
        };
        let Some(policy) = &self.policy else {
            return Ok(verified);
        };
        // The chain verified: judge the CRL of the end-entity certificate's issuer.
        let issuer = X509Certificate::from_der(end_entity.as_ref())
            .map(|(_, c)| c.issuer().as_raw().to_vec())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let freshness = self
            .crls
            .freshness(&issuer, system_time(now), policy.stale_grace);
        if freshness == Freshness::Missing {
            self.learn_distribution_points(end_entity);
        }
        match freshness {
            Freshness::Fresh => Ok(verified),
            Freshness::Stale if policy.when_stale == Policy::Accept => Ok(verified),
            Freshness::Stale => Err(self.refuse(
                end_entity,
                "crl_stale",
                CertificateError::ExpiredRevocationList,
            )),
            Freshness::Missing if policy.without_crl == Policy::Accept => Ok(verified),
            Freshness::Missing => Err(self.refuse(
                end_entity,
                "no_crl",
                CertificateError::UnknownRevocationStatus,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Accepts connections on `listener` and yields those whose TLS handshake (with the
/// configuration current when the connection arrived) completes within `handshake_timeout`;
/// the connection beneath it is closed after `idle` without a received byte (`server::idle`,
/// before and after the handshake). `caps` bounds them (`server::caps`): a connection over the
/// open-connection or handshake cap is closed as soon as it is accepted, one over its caller's
/// cap right after its handshake. Handshakes run in their own tasks, so a slow client delays no
/// one. The stream ends when its consumer (the server) drops it.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<TlsState>,
    handshake_timeout: Duration,
    idle: Option<Duration>,
    caps: Arc<ConnectionCaps>,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<TlsStream<Held<IdleTimeout<TcpStream>>>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Over a cap: dropped here, which closes it.
            let Some((open, handshaking)) = caps.admit() else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let tcp = Held::new(IdleTimeout::new(tcp, idle), open);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            let caps = caps.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
                drop(handshaking);
                match handshake {
                    Ok(Ok(mut stream)) => {
                        let (held, session) = stream.get_mut();
                        let key = session
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|leaf| crate::server::caps::caller_key(leaf.as_ref()))
                            .unwrap_or_default();
                        // Over its caller's cap: dropped, which closes it.
                        let Some(slot) = caps.slot(key) else {
                            return;
                        };
                        held.hold(slot);
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
