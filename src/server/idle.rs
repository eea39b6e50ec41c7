//! The idle-connection timeout, enforced on the raw connection beneath TLS and HTTP/2: a
//! connection from which nothing has been received for the timeout is closed. That covers a
//! client that completes the TLS handshake and then sends nothing, one that opens TCP and never
//! starts TLS, and a peer gone silent. A live HTTP/2 client is never idle by this rule while
//! `http2_keepalive_interval` is shorter than the timeout: it answers the server's keepalive
//! pings, so an open watch stream without events stays open.
//!
//! It knows nothing of TLS: whichever acceptor wraps the connection, put this beneath it.
//! Tested from outside, over real sockets (`tests/it/connections.rs`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

/// A connection closed (reads fail with `TimedOut`) after `timeout` without a received byte.
#[derive(Debug)]
pub struct IdleTimeout<T> {
    inner: T,
    /// `None`: the timeout is off and the wrapper only passes through.
    timer: Option<Timer>,
}

#[derive(Debug)]
struct Timer {
    timeout: Duration,
    /// When the last byte arrived; the sleep is moved forward lazily, only when it fires.
    last_read: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl<T> IdleTimeout<T> {
    /// `timeout: None` turns it off.
    pub fn new(inner: T, timeout: Option<Duration>) -> Self {
        let now = Instant::now();
        Self {
            inner,
            timer: timeout.map(|timeout| Timer {
                timeout,
                last_read: now,
                sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
            }),
        }
    }
}

impl Timer {
    /// Ready once the connection has been idle for the timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let deadline = self.last_read + self.timeout;
            if self.sleep.deadline() != deadline {
                self.sleep.as_mut().reset(deadline);
            }
            match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) if deadline <= Instant::now() => return Poll::Ready(()),
                // Not yet due after all: wait again.
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        let Some(timer) = &mut this.timer else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                timer.last_read = Instant::now();
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match timer.poll_idle(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle: nothing received within the idle timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
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

/// The connection's own information (the peer's address), unchanged: the auth layer reads the
/// same `TlsConnectInfo<TcpConnectInfo>` as without the wrapper.
impl<T: Connected> Connected for IdleTimeout<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
