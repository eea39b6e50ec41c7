//! Bounds on connections, enforced by `tls::incoming`: at most `server.max_handshakes` TLS
//! handshakes and `server.max_connections` open connections at once (a TCP connection over
//! either is closed as soon as it is accepted), and at most `limits.connections_per_principal`
//! open connections per caller, counted right after the handshake by the client certificate's
//! HSA-id (issuer and serial number when it has none). Every refusal is counted in
//! `etk_connections_refused_total{reason}`.
//!
//! What a connection holds (its place among the open connections, its caller's slot) travels
//! with it in `Held` and is given back when the connection is dropped.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

use crate::metrics::Metrics;

/// The caps, shared by every accepted connection.
#[derive(Debug)]
pub struct ConnectionCaps {
    handshakes: Arc<Semaphore>,
    open: Arc<Semaphore>,
    per_caller: usize,
    callers: Arc<Mutex<HashMap<Vec<u8>, usize>>>,
    metrics: Arc<Metrics>,
}

impl ConnectionCaps {
    pub fn new(
        max_handshakes: usize,
        max_connections: usize,
        per_caller: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            handshakes: Arc::new(Semaphore::new(max_handshakes)),
            open: Arc::new(Semaphore::new(max_connections)),
            per_caller,
            callers: Arc::default(),
            metrics,
        }
    }

    /// A place for a connection just accepted and the right to handshake it, or `None` (counted)
    /// when either cap is reached: the caller closes the connection.
    pub fn admit(&self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let Ok(open) = self.open.clone().try_acquire_owned() else {
            self.refused("max_connections");
            return None;
        };
        let Ok(handshake) = self.handshakes.clone().try_acquire_owned() else {
            self.refused("max_handshakes");
            return None;
        };
        Some((open, handshake))
    }

    /// A slot for one more connection of the caller `key`, or `None` (counted) when it already
    /// holds `connections_per_principal`.
    pub fn slot(&self, key: Vec<u8>) -> Option<CallerSlot> {
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        let held = callers.entry(key.clone()).or_insert(0);
        if *held >= self.per_caller {
            drop(callers);
            self.refused("per_principal");
            return None;
        }
        *held += 1;
        Some(CallerSlot {
            key,
            callers: self.callers.clone(),
        })
    }

    fn refused(&self, reason: &'static str) {
        tracing::debug!(reason, "connection refused: a connection limit is reached");
        self.metrics.connection_refused(reason);
    }

    /// Open connections of the caller `key` (for tests).
    #[cfg(test)]
    fn held(&self, key: &[u8]) -> usize {
        self.callers
            .lock()
            .expect("lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// One open connection of a caller; given back when dropped (the entry goes with the last).
#[derive(Debug)]
pub struct CallerSlot {
    key: Vec<u8>,
    callers: Arc<Mutex<HashMap<Vec<u8>, usize>>>,
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = callers.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                callers.remove(&self.key);
            }
        }
    }
}

/// The key a caller's connections are counted by: the certificate's HSA-id, or its issuer and
/// serial number when it has none.
pub fn caller_key(certificate: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    if let Some(hsa_id) = crate::auth::hsa_id_from_certificate(certificate) {
        let mut key = b"hsa:".to_vec();
        key.extend_from_slice(hsa_id.as_str().as_bytes());
        return key;
    }
    let mut key = b"cert:".to_vec();
    match X509Certificate::from_der(certificate) {
        Ok((_, c)) => {
            key.extend_from_slice(c.issuer().as_raw());
            key.push(0);
            key.extend_from_slice(c.raw_serial());
        }
        Err(_) => key.extend_from_slice(certificate),
    }
    key
}

/// A connection with what it holds: its place among the open connections and, once its
/// handshake is done, its caller's slot.
#[derive(Debug)]
pub struct Held<T> {
    inner: T,
    _open: OwnedSemaphorePermit,
    slot: Option<CallerSlot>,
}

impl<T> Held<T> {
    pub fn new(inner: T, open: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            _open: open,
            slot: None,
        }
    }

    pub fn hold(&mut self, slot: CallerSlot) {
        self.slot = Some(slot);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Held<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Held<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: Connected> Connected for Held<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_slots_are_capped_and_given_back_when_dropped() {
        let caps = ConnectionCaps::new(1, 1, 2, Arc::new(Metrics::new()));
        let a = caps.slot(b"a".to_vec()).expect("first");
        let a2 = caps.slot(b"a".to_vec()).expect("second");
        assert!(caps.slot(b"a".to_vec()).is_none(), "over the cap");
        let _b = caps.slot(b"b".to_vec()).expect("another caller");
        drop(a);
        assert_eq!(caps.held(b"a"), 1);
        let _a3 = caps.slot(b"a".to_vec()).expect("a slot was given back");
        drop(a2);
        drop(_a3);
        assert!(
            !caps
                .callers
                .lock()
                .expect("lock")
                .contains_key(b"a".as_slice()),
            "no entry left for a caller without connections"
        );
    }

    #[test]
    fn connections_and_handshakes_are_capped() {
        let caps = ConnectionCaps::new(1, 2, 1, Arc::new(Metrics::new()));
        let (open, handshake) = caps.admit().expect("first");
        assert!(caps.admit().is_none(), "one handshake at a time");
        drop(handshake);
        let (_open2, _h) = caps.admit().expect("handshake done");
        drop(_h);
        assert!(caps.admit().is_none(), "two connections open");
        drop(open);
        assert!(
            caps.admit().is_some(),
            "a closed connection frees its place"
        );
        let m = caps.metrics.render();
        assert!(
            m.contains("etk_connections_refused_total{reason=\"max_connections\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("etk_connections_refused_total{reason=\"max_handshakes\"} 1"),
            "{m}"
        );
    }
}
