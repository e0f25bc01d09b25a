//! The byte stream under a node connection: opened here (TCP, TLS over TCP, or a Unix socket)
//! and read through a budget, so a reply larger than `das.max_body_bytes` is refused while it
//! arrives instead of after the Redis client has buffered all of it.
//!
//! redis-rs reads a reply whole before it hands it over and has no size limit of its own (only
//! the server's `proto-max-bulk-len`, 512 MB by default, bounds a bulk string). It does take any
//! `AsyncRead + AsyncWrite` as the connection, so the bound is put there: every byte the
//! connection reads is spent from a [`ReadBudget`] that each request tops up by what its reply
//! may take, and a read past it fails the connection with an I/O error.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use redis::ConnectionAddr;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, Take};

use crate::config::TlsFiles;
use crate::source::PollError;

/// What a connection may still read. Each request in flight holds a [`Grant`] for the bytes its
/// reply may take; the grants add up, and what is left over lapses when the last one ends, so
/// nothing the server sends unasked (between requests) can be read either.
#[derive(Debug, Default)]
pub(super) struct ReadBudget(Mutex<BudgetState>);

#[derive(Debug, Default)]
struct BudgetState {
    left: u64,
    in_flight: usize,
    exceeded: bool,
}

impl ReadBudget {
    fn state(&self) -> MutexGuard<'_, BudgetState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Allows `bytes` more to be read until the returned grant is dropped.
    pub(super) fn grant(self: &Arc<Self>, bytes: u64) -> Grant {
        let mut s = self.state();
        s.left = s.left.saturating_add(bytes);
        s.in_flight += 1;
        Grant(Arc::clone(self))
    }

    /// Whether a read went past the budget (the connection then fails; this tells why).
    pub(super) fn exceeded(&self) -> bool {
        self.state().exceeded
    }

    /// What is left to read.
    fn left(&self) -> u64 {
        self.state().left
    }

    /// Spends `n` bytes just read (never more than [`Self::left`] allowed).
    fn spend(&self, n: u64) {
        let mut s = self.state();
        s.left = s.left.saturating_sub(n);
    }

    fn mark_exceeded(&self) {
        self.state().exceeded = true;
    }
}

/// A request's share of the budget; see [`ReadBudget::grant`].
#[derive(Debug)]
pub(super) struct Grant(Arc<ReadBudget>);

impl Drop for Grant {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.left = 0;
        }
    }
}

/// A stream whose reads are spent from a [`ReadBudget`]. Reads go through tokio's [`Take`],
/// whose limit is set from the budget before each one, so no read takes more than is left;
/// once nothing is left, one more byte fails the stream. Writes pass through.
pub(super) struct Capped<S> {
    inner: Take<S>,
    budget: Arc<ReadBudget>,
}

impl<S: AsyncRead> Capped<S> {
    pub(super) fn new(stream: S, budget: Arc<ReadBudget>) -> Self {
        use tokio::io::AsyncReadExt;
        Self {
            inner: stream.take(0),
            budget,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let left = this.budget.left();
        if left > 0 {
            this.inner.set_limit(left);
            let before = buf.filled().len();
            let r = Pin::new(&mut this.inner).poll_read(cx, buf);
            this.budget.spend((buf.filled().len() - before) as u64);
            return r;
        }
        // Nothing may be read: a byte arriving now is past the budget, and only an end of
        // stream is fine. It is read aside so that `buf` is left untouched by the failed read.
        this.inner.set_limit(1);
        let mut one = [0u8; 1];
        let mut aside = ReadBuf::new(&mut one);
        match Pin::new(&mut this.inner).poll_read(cx, &mut aside) {
            Poll::Ready(Ok(())) if !aside.filled().is_empty() => {
                this.budget.mark_exceeded();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the reply exceeds its size cap",
                )))
            }
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner.get_mut()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner.get_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner.get_mut()).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.inner.get_mut()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.get_ref().is_write_vectored()
    }
}

/// Any of the streams [`open`] returns.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Opens the stream to `addr`, over TLS with the instance's `tls` files (or the system roots)
/// for a `rediss://` address. Failures are classified as the Redis client's own are: `tls` for
/// a refused handshake, `tls_files`/`config` for what the config gave, else `connection`.
pub(super) async fn open(
    addr: &ConnectionAddr,
    tls: &TlsFiles,
) -> Result<Box<dyn Stream>, PollError> {
    let config = |message: String| PollError::Other {
        code: "config",
        message,
    };
    match addr {
        ConnectionAddr::Tcp(host, port) => Ok(Box::new(tcp(host, *port).await?)),
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            ..
        } => {
            if *insecure {
                return Err(config(
                    "unverified TLS (#insecure) is not supported; give tls_ca_file instead".into(),
                ));
            }
            let name = ServerName::try_from(host.as_str())
                .map_err(|_| config(format!("{host:?} is not a valid TLS server name")))?
                .to_owned();
            let connector = tokio_rustls::TlsConnector::from(super::tls::client_config(tls)?);
            let s = connector
                .connect(name, tcp(host, *port).await?)
                .await
                .map_err(|e| io_error(&e))?;
            Ok(Box::new(s))
        }
        ConnectionAddr::Unix(path) => {
            let s = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| io_error(&e))?;
            Ok(Box::new(s))
        }
        other => Err(config(format!("unsupported address {other}"))),
    }
}

async fn tcp(host: &str, port: u16) -> Result<tokio::net::TcpStream, PollError> {
    let s = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| io_error(&e))?;
    // Requests are small and each waits for its reply: Nagle would only add latency.
    s.set_nodelay(true).map_err(|e| io_error(&e))?;
    Ok(s)
}

/// Whether rustls' own error is inside `e` (tokio-rustls hands its errors over that way, and
/// `io::Error` shows its inner error only through `get_ref`).
pub(super) fn holds_rustls_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// An I/O failure while opening: `tls` when rustls refused the handshake, else `connection`.
fn io_error(e: &io::Error) -> PollError {
    if holds_rustls_error(e) {
        return PollError::Other {
            code: "tls",
            message: e.to_string(),
        };
    }
    PollError::Connection(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn read_all(c: &mut Capped<tokio::io::DuplexStream>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.map(|_| out)
    }

    #[tokio::test]
    async fn reads_within_the_grant_pass() {
        let (mut server, client) = tokio::io::duplex(64);
        let budget = Arc::new(ReadBudget::default());
        let mut c = Capped::new(client, Arc::clone(&budget));
        let _g = budget.grant(10);
        server.write_all(b"0123456789").await.unwrap();
        drop(server);
        assert_eq!(read_all(&mut c).await.unwrap(), b"0123456789");
        assert!(!budget.exceeded());
    }

    #[tokio::test]
    async fn one_byte_past_the_grant_fails_the_read() {
        let (mut server, client) = tokio::io::duplex(64);
        let budget = Arc::new(ReadBudget::default());
        let mut c = Capped::new(client, Arc::clone(&budget));
        let _g = budget.grant(10);
        server.write_all(b"0123456789X").await.unwrap();
        drop(server);
        let err = read_all(&mut c).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(budget.exceeded());
    }

    #[tokio::test]
    async fn grants_add_up_and_lapse_when_the_last_ends() {
        let (mut server, client) = tokio::io::duplex(64);
        let budget = Arc::new(ReadBudget::default());
        let mut c = Capped::new(client, Arc::clone(&budget));
        let a = budget.grant(3);
        let b = budget.grant(3);
        server.write_all(b"abcdef").await.unwrap();
        let mut buf = [0u8; 6];
        c.read_exact(&mut buf).await.unwrap();
        drop(a);
        drop(b);
        // Nothing was asked for now: an unrequested byte is past the budget.
        let _later = budget.grant(0);
        server.write_all(b"!").await.unwrap();
        let err = c.read_u8().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_large_reply_is_not_read_past_the_grant() {
        // The server offers far more than the grant; the client never takes more than one byte
        // past it, whatever its read buffer could hold.
        let (mut server, client) = tokio::io::duplex(1 << 16);
        let budget = Arc::new(ReadBudget::default());
        let mut c = Capped::new(client, Arc::clone(&budget));
        let _g = budget.grant(100);
        server.write_all(&[b'x'; 1 << 16]).await.unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut taken = 0;
        let err = loop {
            match c.read(&mut buf).await {
                Ok(n) => taken += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(taken, 100);
    }
}
