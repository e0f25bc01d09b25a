//! The HTTP front door's connection discipline: how many connections are held, which one makes
//! room when all are taken, and how long each may open, idle, be served and linger at shutdown.
//!
//! hyper parses and writes HTTP/1; *when* a connection is closed is decided here, on one clock
//! swept by one task. hyper's own `header_read_timeout` is not used: it also runs while a
//! keep-alive connection sits idle between requests (hyper 1.x re-arms it as soon as a response
//! is written), so it would cut every keep-alive connection at the header timeout and make
//! `idle_timeout` meaningless; it does not cover a TLS handshake either. Nothing in hyper or
//! tower limits the number of connections or evicts one, which is the rest of this module.
//!
//! A connection is in one of four phases:
//!
//! | phase | entered | deadline | evictable |
//! |---|---|---|---|
//! | opening | accepted (TLS handshake included) | `header_read_timeout` | yes |
//! | idle | its last response fully written (keep-alive) | `idle_timeout` | yes |
//! | reading head | the first byte of its next request | `header_read_timeout` from that byte | yes |
//! | serving | a complete request head | `request_timeout` until the response is fully written | never |
//!
//! "Evictable" is the rule: when all `max_connections` are taken and another arrives,
//! the connection that has waited longest without a complete request head is closed to make
//! room; a connection in the middle of a request or response is never closed for that. When
//! every connection is serving, the next one waits accepted (its socket only: no task, no
//! buffer) and the rest in the kernel's accept queue.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The `[server]` settings this module applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl From<&crate::config::ServerConfig> for Limits {
    fn from(c: &crate::config::ServerConfig) -> Self {
        Self {
            max_connections: c.max_connections,
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.idle_timeout,
            request_timeout: c.request_timeout,
            shutdown_timeout: c.shutdown_timeout,
        }
    }
}

/// The largest request head accepted (request line and headers); a larger one gets 431. Heads
/// of scrapes are a few hundred bytes; this bounds the read buffer of every connection.
const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Connections the kernel queues for `accept` (it caps this at `net.core.somaxconn`). A burst
/// larger than the queue is dropped by the kernel before any limit here applies (or, with SYN
/// cookies, left half-open on the client's side only), so the queue is as deep as Go's
/// listeners make it rather than tokio's 1,024.
const ACCEPT_BACKLOG: u32 = 4096;

/// Binds the listening socket.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do: a restart must not wait for the old sockets' TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Serves `router` on `listener` (through `tls` when given) under `limits` until `shutdown`;
/// then stops accepting, closes every connection that is not serving, gives the others
/// `shutdown_timeout` to finish, and closes what is left.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    // A handler that has not answered gets a 503 rather than a dropped connection. The sweep
    // below drops whatever is not written by request_timeout, counted from the request head, so
    // the handler gets nine tenths of it: the rest is for the 503 to be written before that.
    let router = router.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::SERVICE_UNAVAILABLE,
        limits.request_timeout.mul_f64(0.9),
    ));
    let table = Arc::new(Table::new(limits));
    let sweeping = CancellationToken::new();
    let sweeper = tokio::spawn(sweep(table.clone(), sweeping.clone()));
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let conn = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = table.admit() => c,
        };
        tasks.spawn(connection(
            tcp,
            peer,
            tls.clone(),
            router.clone(),
            conn,
            table.clone(),
            shutdown.clone(),
        ));
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);

    table.drain();
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            connections = table.len(),
            "responses still in flight after server.shutdown_timeout; closing them"
        );
        table.close_all();
        while tasks.join_next().await.is_some() {}
    }
    sweeping.cancel();
    let _ = sweeper.await;
    Ok(())
}

/// One connection, from the TLS handshake to the last byte; its slot is freed on return.
async fn connection(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    conn: Arc<Conn>,
    table: Arc<Table>,
    shutdown: CancellationToken,
) {
    let _slot = Slot(table, conn.clone());
    match tls {
        None => http(tcp, router, &conn, shutdown).await,
        Some(acceptor) => {
            let stream = tokio::select! {
                _ = conn.close.cancelled() => {
                    if conn.state().closing == Some(Closed::TimedOut) {
                        tracing::debug!(%peer, "TLS handshake timed out");
                    } else {
                        conn.log_closed(peer);
                    }
                    return;
                }
                s = acceptor.accept(tcp) => s,
            };
            match stream {
                Ok(stream) => http(stream, router, &conn, shutdown).await,
                // Scanners and misconfigured clients: worth a debug line, not a warning.
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            }
        }
    }
    conn.log_closed(peer);
}

async fn http<S>(io: S, router: Router, conn: &Arc<Conn>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = Service {
        router,
        conn: conn.clone(),
    };
    let io = TokioIo::new(Io {
        inner: io,
        conn: conn.clone(),
    });
    let http = hyper::server::conn::http1::Builder::new()
        // Off: see the module docs; the sweep enforces the timeouts.
        .header_read_timeout(None)
        .max_header_size(MAX_HEAD_BYTES)
        .serve_connection(io, service);
    tokio::pin!(http);
    tokio::select! {
        _ = http.as_mut() => return,
        _ = conn.close.cancelled() => return,
        _ = shutdown.cancelled() => {}
    }
    // Finish the response under way, then close instead of keeping the connection alive.
    http.as_mut().graceful_shutdown();
    tokio::select! {
        _ = http => {}
        _ = conn.close.cancelled() => {}
    }
}

/// Frees a connection's slot whatever way its task ends.
struct Slot(Arc<Table>, Arc<Conn>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.remove(&self.1);
    }
}

/// Closes connections whose deadline has passed. The tick is a tenth of the shortest timeout
/// (between 20 ms and 1 s): a timeout fires at most that late, never early.
async fn sweep(table: Arc<Table>, stop: CancellationToken) {
    let l = table.limits;
    let shortest = l
        .header_read_timeout
        .min(l.idle_timeout)
        .min(l.request_timeout);
    let tick = (shortest / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => table.expire(Instant::now()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Opening,
    Idle,
    ReadingHead,
    Serving,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// When it began waiting for a request head: the eviction order.
    waiting_since: Instant,
    deadline: Instant,
    /// Responses not yet handed whole to hyper (HTTP/1 serves one at a time).
    in_flight: u32,
    /// Every response handed to hyper is whole; the connection turns idle at the next flush.
    bodies_done: bool,
    /// Told to close, and why; its task is on its way out.
    closing: Option<Closed>,
}

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// Its phase's deadline passed.
    TimedOut,
    /// It made room for a new connection.
    Evicted,
    /// Shutdown: it was waiting for a request, or `shutdown_timeout` ran out.
    Shutdown,
}

/// What the table, the I/O wrapper and the service share about one connection.
#[derive(Debug)]
struct Conn {
    id: u64,
    close: CancellationToken,
    state: Mutex<State>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    limits: Limits,
    /// Signalled when a slot frees or a connection becomes evictable; the accept loop waits on
    /// it when every connection is serving.
    room: Notify,
    /// Set once shutdown begins: a connection that turns idle is closed at once.
    draining: AtomicBool,
}

impl Conn {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the connection's task to drop the connection now.
    fn close_now(&self, why: Closed) {
        self.state().closing.get_or_insert(why);
        self.close.cancel();
    }

    /// Logs why the server closed this connection (debug: a flood must not flood the log).
    fn log_closed(&self, peer: std::net::SocketAddr) {
        let s = self.state();
        let timeout = match s.phase {
            Phase::Opening | Phase::ReadingHead => "server.header_read_timeout",
            Phase::Idle => "server.idle_timeout",
            Phase::Serving => "server.request_timeout",
        };
        match s.closing {
            Some(Closed::TimedOut) => tracing::debug!(%peer, timeout, "connection timed out"),
            Some(Closed::Evicted) => {
                tracing::debug!(%peer, "connection closed to make room for a new one")
            }
            Some(Closed::Shutdown) | None => {}
        }
    }

    /// A complete request head arrived.
    fn request_started(&self) {
        let mut s = self.state();
        if s.in_flight == 0 {
            s.deadline = Instant::now() + self.shared.limits.request_timeout;
        }
        s.phase = Phase::Serving;
        s.in_flight += 1;
        s.bodies_done = false;
    }

    /// A response body was handed whole to hyper (or dropped).
    fn body_done(&self) {
        let mut s = self.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.bodies_done = s.in_flight == 0;
    }

    /// hyper flushed everything it had buffered: when every body is done, the response is
    /// fully written and the connection waits for its next request.
    fn flushed(&self) {
        let mut s = self.state();
        if s.phase != Phase::Serving || !s.bodies_done {
            return;
        }
        let now = Instant::now();
        s.phase = Phase::Idle;
        s.bodies_done = false;
        s.waiting_since = now;
        s.deadline = now + self.shared.limits.idle_timeout;
        drop(s);
        if self.shared.draining.load(Ordering::Acquire) {
            self.close_now(Closed::Shutdown);
        }
        self.shared.room.notify_one();
    }

    /// Bytes arrived from the client.
    fn read_some(&self) {
        let mut s = self.state();
        if s.phase == Phase::Idle {
            s.phase = Phase::ReadingHead;
            s.deadline = Instant::now() + self.shared.limits.header_read_timeout;
        }
    }
}

/// Every connection whose task is alive, by id. A connection told to close stays counted until
/// its task has ended and dropped the socket, so no more than `max_connections` ever hold a task
/// or a buffer, even while a burst is being evicted.
#[derive(Debug)]
struct Table {
    limits: Limits,
    shared: Arc<Shared>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
}

impl Table {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            shared: Arc::new(Shared {
                limits,
                room: Notify::new(),
                draining: AtomicBool::new(false),
            }),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        self.conns().len()
    }

    /// A slot for a connection just accepted: a free one, else the one of the connection that
    /// has waited longest for a request head, once that connection is gone. Waits while every
    /// connection is serving.
    async fn admit(&self) -> Arc<Conn> {
        loop {
            if let Some(c) = self.try_admit(Instant::now()) {
                return c;
            }
            // A signal sent since try_admit looked is kept by Notify, so none is lost.
            self.shared.room.notified().await;
        }
    }

    /// Admits when a slot is free; otherwise closes the longest-waiting connection (unless one
    /// is already closing) and returns `None`: the slot frees when its task ends.
    fn try_admit(&self, now: Instant) -> Option<Arc<Conn>> {
        let mut conns = self.conns();
        if conns.len() >= self.limits.max_connections {
            let mut oldest: Option<(Instant, &Arc<Conn>)> = None;
            for c in conns.values() {
                let s = c.state();
                if s.closing.is_some() {
                    return None;
                }
                if s.phase != Phase::Serving && oldest.is_none_or(|(t, _)| s.waiting_since < t) {
                    oldest = Some((s.waiting_since, c));
                }
            }
            if let Some((since, c)) = oldest {
                c.close_now(Closed::Evicted);
                tracing::debug!(
                    waited = ?now.saturating_duration_since(since),
                    "all server.max_connections taken: closing the connection waiting longest for a request head"
                );
            }
            return None;
        }
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            close: CancellationToken::new(),
            state: Mutex::new(State {
                phase: Phase::Opening,
                waiting_since: now,
                deadline: now + self.limits.header_read_timeout,
                in_flight: 0,
                bodies_done: false,
                closing: None,
            }),
            shared: self.shared.clone(),
        });
        conns.insert(conn.id, conn.clone());
        Some(conn)
    }

    /// The connection's task has ended: its slot is free.
    fn remove(&self, conn: &Conn) {
        if self.conns().remove(&conn.id).is_some() {
            self.shared.room.notify_one();
        }
    }

    /// Closes every connection whose deadline is past.
    fn expire(&self, now: Instant) {
        for c in self.conns().values() {
            if c.state().deadline <= now {
                c.close_now(Closed::TimedOut);
            }
        }
    }

    /// Shutdown begins: connections waiting for a request close now; serving ones when their
    /// response is written.
    fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
        for c in self.conns().values() {
            if c.state().phase != Phase::Serving {
                c.close_now(Closed::Shutdown);
            }
        }
    }

    fn close_all(&self) {
        for c in self.conns().values() {
            c.close_now(Closed::Shutdown);
        }
    }
}

/// The socket as hyper sees it: reads and flushes tell the connection's state what happened.
struct Io<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Io<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.read_some();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Io<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// hyper flushes the socket only once its own buffer is empty, so a flush after the last
    /// body frame means the response is fully written.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.conn.flushed();
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as hyper calls it: marks the start of each request and the end of its body.
#[derive(Clone)]
struct Service {
    router: Router,
    conn: Arc<Conn>,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.conn.request_started();
        // Created now, so a request abandoned before its response still counts as done.
        let done = BodyDone(Some(self.conn.clone()));
        let mut router = self.router.clone();
        Box::pin(async move {
            let resp = tower_service::Service::call(&mut router, req).await?;
            Ok(resp.map(|inner| TrackedBody { inner, done }))
        })
    }
}

/// Tells the connection when its response body has been handed whole to hyper.
struct BodyDone(Option<Arc<Conn>>);

impl BodyDone {
    fn fire(&mut self) {
        if let Some(c) = self.0.take() {
            c.body_done();
        }
    }
}

impl Drop for BodyDone {
    fn drop(&mut self) {
        self.fire();
    }
}

/// A response body that reports its end.
struct TrackedBody {
    inner: Body,
    done: BodyDone,
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) {
            self.done.fire();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> Limits {
        Limits {
            max_connections: max,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    fn phase(c: &Conn) -> Phase {
        c.state().phase
    }

    /// The response of a request on `c` handed whole to hyper and flushed.
    fn answered(c: &Conn) {
        c.body_done();
        c.flushed();
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_evicts_the_longest_waiting_connection_never_a_serving_one() {
        let t = Table::new(limits(3));
        let serving = t.try_admit(Instant::now()).unwrap();
        serving.request_started();
        tokio::time::advance(Duration::from_secs(1)).await;
        let older = t.try_admit(Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let newer = t.try_admit(Instant::now()).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;

        // Full: the oldest waiting one is told to close, and still counts until its task ends.
        assert!(t.try_admit(Instant::now()).is_none());
        assert!(older.close.is_cancelled());
        assert!(!serving.close.is_cancelled() && !newer.close.is_cancelled());
        assert_eq!(t.len(), 3);
        // While one is closing, nobody else is evicted for the same arrival.
        assert!(t.try_admit(Instant::now()).is_none());
        assert!(!newer.close.is_cancelled());
        t.remove(&older);
        let fourth = t.try_admit(Instant::now()).expect("the freed slot");

        // A keep-alive connection idle since just now waits less than `newer`, which goes next.
        serving.body_done();
        serving.flushed();
        assert_eq!(phase(&serving), Phase::Idle);
        assert!(t.try_admit(Instant::now()).is_none());
        assert!(newer.close.is_cancelled());
        assert!(!serving.close.is_cancelled() && !fourth.close.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_connection_serving_a_new_one_waits_for_a_slot() {
        let t = Arc::new(Table::new(limits(2)));
        let a = t.try_admit(Instant::now()).unwrap();
        let b = t.try_admit(Instant::now()).unwrap();
        a.request_started();
        b.request_started();
        let waiting = tokio::spawn({
            let t = t.clone();
            async move { t.admit().await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !waiting.is_finished(),
            "admitted while every slot was serving"
        );
        assert!(!a.close.is_cancelled() && !b.close.is_cancelled());
        // a's response is written: a turns idle, so it is evicted for the waiting arrival.
        answered(&a);
        tokio::task::yield_now().await;
        assert!(a.close.is_cancelled());
        t.remove(&a);
        let c = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("admitted once a slot freed")
            .unwrap();
        assert_eq!(phase(&c), Phase::Opening);
        assert!(!b.close.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn each_phase_has_its_deadline() {
        let l = limits(10);
        let t = Table::new(l);
        let c = t.try_admit(Instant::now()).unwrap();
        let expired_after = |c: &Conn| {
            let now = Instant::now();
            c.state().deadline.saturating_duration_since(now)
        };
        assert_eq!(expired_after(&c), l.header_read_timeout);
        tokio::time::advance(Duration::from_secs(2)).await;
        // Bytes of a first head do not extend it.
        c.read_some();
        assert_eq!(
            expired_after(&c),
            l.header_read_timeout - Duration::from_secs(2)
        );

        c.request_started();
        assert_eq!(expired_after(&c), l.request_timeout);
        tokio::time::advance(Duration::from_secs(5)).await;
        // A flush before the body is done (the head alone) changes nothing.
        c.flushed();
        assert_eq!(phase(&c), Phase::Serving);
        c.body_done();
        assert_eq!(phase(&c), Phase::Serving, "written only at the next flush");
        c.flushed();
        assert_eq!(phase(&c), Phase::Idle);
        assert_eq!(expired_after(&c), l.idle_timeout);

        // Idle for a while, then the first byte of the next head: header_read_timeout from it.
        tokio::time::advance(Duration::from_secs(50)).await;
        c.read_some();
        assert_eq!(phase(&c), Phase::ReadingHead);
        assert_eq!(expired_after(&c), l.header_read_timeout);
        tokio::time::advance(Duration::from_secs(3)).await;
        c.read_some();
        assert_eq!(
            expired_after(&c),
            l.header_read_timeout - Duration::from_secs(3)
        );

        t.expire(Instant::now());
        assert!(!c.close.is_cancelled());
        tokio::time::advance(l.header_read_timeout).await;
        t.expire(Instant::now());
        assert!(c.close.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_closes_waiting_connections_now_and_serving_ones_after_their_response() {
        let t = Table::new(limits(10));
        let opening = t.try_admit(Instant::now()).unwrap();
        let idle = t.try_admit(Instant::now()).unwrap();
        idle.request_started();
        answered(&idle);
        let serving = t.try_admit(Instant::now()).unwrap();
        serving.request_started();
        t.drain();
        assert!(opening.close.is_cancelled() && idle.close.is_cancelled());
        assert!(!serving.close.is_cancelled());
        answered(&serving);
        assert!(serving.close.is_cancelled());
    }

    /// Bytes of the `/big` response: far more than loopback socket buffers hold, so a client
    /// that does not read keeps it from being written.
    const BIG: usize = 64 << 20;

    /// The real server on a loopback socket: a router whose `/slow` answers only when told to,
    /// and whose `/big` answers with [`BIG`] bytes.
    async fn server(l: Limits) -> (SocketAddr, Arc<Notify>, CancellationToken) {
        let release = Arc::new(Notify::new());
        let r = release.clone();
        let big = bytes::Bytes::from(vec![b'x'; BIG]);
        let router = Router::new()
            .route("/ok", axum::routing::get(|| async { "ok" }))
            .route("/big", axum::routing::get(move || async move { big }))
            .route(
                "/slow",
                axum::routing::get(move || {
                    let r = r.clone();
                    async move {
                        r.notified().await;
                        "slow"
                    }
                }),
            );
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, router, None, l, stop.clone()));
        (addr, release, stop)
    }

    async fn closed_by_peer(s: &mut TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    use std::net::SocketAddr;

    #[tokio::test]
    async fn a_connection_in_mid_request_is_never_evicted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, release, stop) = server(limits(2)).await;
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Let the head be read before the next arrivals.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Full: each arrival closes the connection waiting longest, never the busy one.
        let mut newer = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_by_peer(&mut idle).await,
            "the idle connection makes room"
        );
        newer
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        newer.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
            "{out}"
        );
        release.notify_one();
        let mut b = vec![0u8; 4096];
        let n = busy.read(&mut b).await.unwrap();
        let text = String::from_utf8_lossy(&b[..n]);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("slow"),
            "{text}"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_keep_alive_connection_that_starts_a_head_has_header_read_timeout_to_finish_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = Limits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(30),
            ..limits(10)
        };
        let (addr, _release, stop) = server(l).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = vec![0u8; 4096];
        let n = c.read(&mut b).await.unwrap();
        assert!(String::from_utf8_lossy(&b[..n]).ends_with("ok"));
        // Idle past header_read_timeout: still open, idle_timeout applies.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let started = std::time::Instant::now();
        c.write_all(b"GET /ok HTTP/1.1\r\nX-Slow: ").await.unwrap();
        assert!(
            closed_by_peer(&mut c).await,
            "the started head is never cut off"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "closed {:?} after the head started: idle_timeout, not header_read_timeout",
            started.elapsed()
        );
        stop.cancel();
    }

    /// `request_timeout` bounds a request from its complete head to the last byte written: a
    /// handler that has not answered by then gets a 503, and a response still being written
    /// (its reader stopped reading) is dropped with the connection.
    #[tokio::test]
    async fn a_response_not_written_within_request_timeout_is_dropped() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = Limits {
            request_timeout: Duration::from_secs(2),
            ..limits(10)
        };
        let (addr, _release, stop) = server(l).await;

        let mut stuck = TcpStream::connect(addr).await.unwrap();
        stuck
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut b = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stuck.read(&mut b))
            .await
            .expect("an answer within request_timeout")
            .unwrap();
        let head = String::from_utf8_lossy(&b[..n]);
        assert!(head.starts_with("HTTP/1.1 503"), "{head}");

        let mut reader = TcpStream::connect(addr).await.unwrap();
        reader
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        // Not reading until well past the deadline, then taking whatever arrives.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the connection was not closed");
        assert!(
            got < BIG,
            "the whole response was written ({got} bytes) after request_timeout"
        );
        stop.cancel();
    }
}
