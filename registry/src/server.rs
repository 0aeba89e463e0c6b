//! Serving the router with hyper directly, so that a hostile or broken
//! client cannot hold the registry:
//!
//! - **header timeout**: a request head must arrive in full within
//!   `--header-timeout` of the connection starting to wait for it (first
//!   request and every keep-alive request after it), so slowloris
//!   connections and idle keep-alive connections are closed; a TLS
//!   handshake gets the same time.
//! - **idle timeout**: while a request is in progress, a connection on
//!   which no byte moves either way for `--idle-timeout` (a stalled upload,
//!   a client that stopped reading its download) is closed.
//! - **connection cap**: at most `--max-connections` connections. At the
//!   cap the server stops accepting, so newcomers wait in the kernel's
//!   accept queue (first come, first served), and makes room by closing
//!   the connection that has waited longest for a request head, once it has
//!   waited `EVICT_GRACE`. Slow clients are shed; normal ones, which send
//!   their request as soon as they are accepted, get through. When every
//!   connection is busy with a request, newcomers wait for one to finish.
//! - **bounded buffers**: a request head (and any read buffer) is at most
//!   `MAX_BUF` bytes, `MAX_HEADERS` headers.
//! - **graceful shutdown with a deadline**: on the shutdown signal the
//!   listener closes (new connections are refused), requests in flight
//!   finish, idle connections close, and whatever is still open after
//!   `--shutdown-timeout` is dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::metrics::{Metrics, Shed};

/// Largest request head (and connection read buffer), in bytes.
pub const MAX_BUF: usize = 64 << 10;
/// Most headers in a request.
pub const MAX_HEADERS: usize = 64;
/// A connection waiting for its request head is not evicted before this:
/// a normal client's request arrives within a round trip of the accept,
/// and the one just admitted must not be the next one evicted.
pub const EVICT_GRACE: Duration = Duration::from_millis(250);
/// Descriptors kept for everything but client connections (index, WAL,
/// listeners, stdio).
pub const FD_RESERVE: u64 = 64;

/// The connection-level settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error(
        "--max-connections {wanted} needs {need} file descriptors (two per connection, for the socket and a blob, plus {FD_RESERVE}), but this process may open {limit} (ulimit -n)"
    )]
    TooFewDescriptors { wanted: usize, need: u64, limit: u64 },
}

/// Raises the soft descriptor limit to the hard one and checks that
/// `wanted` connections fit. Without an explicit `wanted`, the default is
/// lowered to what fits (with the reason returned for a warning).
pub fn fit_connections(wanted: Option<usize>, default: usize) -> Result<(usize, Option<String>), LimitError> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = rustix::process::Rlimit { current: lim.maximum, maximum: lim.maximum };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            lim = raised;
        }
    }
    let limit = lim.current.unwrap_or(u64::MAX);
    let fits = (limit.saturating_sub(FD_RESERVE) / 2) as usize;
    let need = |n: usize| 2 * n as u64 + FD_RESERVE;
    match wanted {
        Some(n) if need(n) > limit => Err(LimitError::TooFewDescriptors { wanted: n, need: need(n), limit }),
        Some(n) => Ok((n, None)),
        None if need(default) > limit => Ok((
            fits.max(1),
            Some(format!(
                "only {limit} file descriptors may be open (ulimit -n): at most {} connections instead of {default}",
                fits.max(1)
            )),
        )),
        None => Ok((default, None)),
    }
}

/// What the server knows about one open connection.
#[derive(Debug)]
struct Conn {
    /// Requests in progress (until their response body is done or dropped).
    busy: AtomicUsize,
    /// Since when no request has been in progress (ms since `epoch`).
    idle_since: AtomicU64,
    /// When a byte last moved either way (ms since `epoch`).
    last_io: AtomicU64,
    /// Told to close: evicted.
    kill: Notify,
    epoch: Instant,
}

impl Conn {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
    fn touch(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }
}

/// Marks a request in progress on its connection while alive.
#[derive(Debug)]
struct Busy(Arc<Conn>);

impl Busy {
    fn new(conn: Arc<Conn>) -> Self {
        conn.busy.fetch_add(1, Ordering::SeqCst);
        Self(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in progress.
struct Tracked {
    inner: axum::body::Body,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when bytes move.
struct Watched {
    inner: TcpStream,
    conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The open connections, for the cap.
#[derive(Debug)]
struct Table {
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next: AtomicU64,
    epoch: Instant,
    max: usize,
    /// Told whenever a connection closes.
    freed: Notify,
}

enum Room {
    Free,
    /// Made by evicting this connection.
    Evicted(Arc<Conn>),
    Full,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        match self.conns.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Room for one more connection: free, or made by evicting the
    /// connection that has waited longest (past the grace) for a request
    /// head.
    fn make_room(&self) -> Room {
        let now = self.epoch.elapsed().as_millis() as u64;
        let mut conns = self.lock();
        if conns.len() < self.max {
            return Room::Free;
        }
        let grace = EVICT_GRACE.as_millis() as u64;
        let victim = conns
            .iter()
            .filter(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
            .map(|(k, c)| (*k, c.idle_since.load(Ordering::Relaxed)))
            .filter(|(_, since)| now.saturating_sub(*since) >= grace)
            .min_by_key(|(_, since)| *since);
        match victim.and_then(|(k, _)| conns.remove(&k)) {
            Some(old) => Room::Evicted(old),
            None => Room::Full,
        }
    }

    fn insert(&self) -> (u64, Arc<Conn>) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now),
            last_io: AtomicU64::new(now),
            kill: Notify::new(),
            epoch: self.epoch,
        });
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, conn.clone());
        (id, conn)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.freed.notify_one();
    }
}

/// Serves `router` on `listener` until `shutdown` turns true, then shuts
/// down gracefully within `settings.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServerSettings,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let table = Arc::new(Table {
        conns: Mutex::new(HashMap::new()),
        next: AtomicU64::new(0),
        epoch: Instant::now(),
        max: settings.max_connections.max(1),
        freed: Notify::new(),
    });
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut last_accept_warning: Option<Instant> = None;
    'serving: loop {
        // At the cap, accept nothing until there is room: newcomers wait in
        // the kernel's accept queue, in order.
        loop {
            if *shutdown.borrow() {
                break 'serving;
            }
            match table.make_room() {
                Room::Free => break,
                Room::Evicted(old) => {
                    metrics.shed(Shed::Evicted);
                    old.kill.notify_one();
                    break;
                }
                Room::Full => {
                    tokio::select! {
                        _ = table.freed.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(25)) => {}
                        changed = shutdown.changed() => if changed.is_err() { break 'serving },
                        Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                    }
                }
            }
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (id, conn) = table.insert();
                    let job = Job {
                        router: router.clone(),
                        settings: settings.clone(),
                        tls: tls.clone(),
                        metrics: metrics.clone(),
                        drain: drain_rx.clone(),
                        conn,
                    };
                    let table = table.clone();
                    tasks.spawn(async move {
                        job.metrics.connection_opened();
                        let metrics = job.metrics.clone();
                        job.run(stream).await;
                        metrics.connection_closed();
                        table.remove(id);
                    });
                }
                Err(e) => {
                    // Out of descriptors, or a connection that died in the
                    // backlog: never fatal, but do not spin on it.
                    if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                        tracing::warn!("accepting a connection: {e}");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let open = tasks.len();
    if open > 0 {
        tracing::info!(open, "shutting down: finishing requests in flight");
    }
    let drained =
        tokio::time::timeout(settings.shutdown_timeout, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(open = tasks.len(), timeout = ?settings.shutdown_timeout, "connections still open at the shutdown deadline; closing them");
        tasks.abort_all();
        let _ =
            tokio::time::timeout(Duration::from_secs(1), async { while tasks.join_next().await.is_some() {} }).await;
    }
}

/// One connection's work.
struct Job {
    router: Router,
    settings: ServerSettings,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: Arc<Metrics>,
    drain: watch::Receiver<bool>,
    conn: Arc<Conn>,
}

impl Job {
    async fn run(mut self, stream: TcpStream) {
        let io = Watched { inner: stream, conn: self.conn.clone() };
        let Some(acceptor) = self.tls.clone() else {
            return self.drive(TokioIo::new(io)).await;
        };
        let handshake = tokio::time::timeout(self.settings.header_timeout, acceptor.accept(io));
        let tls = tokio::select! {
            r = handshake => match r {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!("TLS handshake: {e}");
                    self.metrics.shed(Shed::Handshake);
                    return;
                }
                Err(_) => {
                    self.metrics.shed(Shed::Handshake);
                    return;
                }
            },
            _ = self.conn.kill.notified() => return,
            _ = self.drain.changed() => return,
        };
        self.drive(TokioIo::new(tls)).await
    }

    async fn drive<I>(&mut self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let router = self.router.clone();
        let conn = self.conn.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let router = router.clone();
            let busy = Busy::new(conn.clone());
            async move {
                let resp = match router.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(resp.map(|inner| Tracked { inner, _busy: busy }))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_timeout)
            .keep_alive(true)
            .max_buf_size(MAX_BUF)
            .max_header_size(MAX_BUF)
            .max_headers(MAX_HEADERS);
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let mut draining = *self.drain.borrow();
        if draining {
            connection.as_mut().graceful_shutdown();
        }
        let idle_ms = self.settings.idle_timeout.as_millis() as u64;
        let mut tick = tokio::time::interval(
            (self.settings.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        );
        loop {
            tokio::select! {
                r = connection.as_mut() => {
                    if let Err(e) = r {
                        if e.is_timeout() {
                            self.metrics.shed(Shed::HeaderTimeout);
                        } else {
                            tracing::debug!("connection: {e}");
                        }
                    }
                    return;
                }
                _ = self.conn.kill.notified() => return,
                _ = self.drain.changed(), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = tick.tick() => {
                    let c = &self.conn;
                    if c.busy.load(Ordering::SeqCst) > 0 && c.now().saturating_sub(c.last_io.load(Ordering::Relaxed)) > idle_ms {
                        self.metrics.shed(Shed::Stalled);
                        return;
                    }
                }
            }
        }
    }
}
