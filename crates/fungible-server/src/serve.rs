//! Serving [`crate::app`] on a TCP listener, with bounds on what a client can hold.
//!
//! axum's own `serve` has no timeouts and no connection cap, so a client that opens
//! connections and never finishes a request (slowloris) holds a file descriptor with each,
//! for ever. Here hyper's HTTP/1.1 server serves each connection directly, and:
//!
//! - the accept loop first takes one of `max_connections` slots: at the cap, new connections
//!   wait in the kernel's listen backlog (costing this process no file descriptor) and are
//!   served in order as slots free up;
//! - [`TimedIo`] wraps the socket and closes a connection whose request head has not arrived
//!   `header_read_timeout` after the connection opened (on a kept-alive connection: after the
//!   head's first byte), one kept alive with no request for `idle_timeout`, and one whose
//!   client reads nothing of its response for `idle_timeout`. hyper's own
//!   `header_read_timeout` is not used: its clock also runs while a kept-alive connection
//!   waits for its next request, so it cannot be both a short header deadline and a longer
//!   keep-alive;
//! - [`DeadlineBody`] fails a request body that has not arrived whole `body_read_timeout`
//!   after its head, however slowly it trickles ([`crate::read_body`] answers 408);
//! - once `shutdown` resolves, the listener is closed, every connection finishes its
//!   in-flight request and closes (idle ones at once), and whatever is still open after
//!   `shutdown_timeout` is closed, so [`serve`] returns and the caller can flush the store.
//!
//! Only HTTP/1.1 is served: the SDKs speak it to a plain-HTTP endpoint, and HTTP/2 comes with
//! TLS, which a proxy in front terminates. (hyper-util's HTTP/1-or-2 server would also wait
//! for a silent connection's first bytes with no deadline at all.)

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use fungible_gateway::config::ConnectionLimits;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::AppState;

/// After a failed `accept` (out of file descriptors, say), wait this long before the next
/// rather than spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves `app(state)` on `addr` until `shutdown` resolves, then drains (see the module docs).
pub async fn serve(
    state: AppState,
    addr: SocketAddr,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let listener = bind(addr)?;
    tracing::info!("fungible listening on http://{}", listener.local_addr()?);
    serve_on(state, listener, limits, shutdown).await
}

/// Connections the kernel queues for `accept` (capped by `net.core.somaxconn`). Tokio's
/// default, 1,024, is less than what waits while every connection slot is taken under a
/// flood; past the backlog the kernel drops connection attempts.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with a backlog of [`LISTEN_BACKLOG`] (port 0: any free port).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Like [`serve`], on a listener the caller bound (tests and benchmarks use port 0).
pub async fn serve_on(
    state: AppState,
    listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let router = crate::app(state);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let next = async {
            let slot = slots.clone().acquire_owned().await.expect("the slots are never closed");
            (slot, listener.accept().await)
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            // A connection ended (its slot is free again): reaped so the set stays small.
            Some(_) = connections.join_next() => {}
            (slot, accepted) = next => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, router.clone(), limits, closing_rx.clone(), slot));
                }
                Err(e) => {
                    tracing::warn!("could not accept a connection: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
        }
    }
    drop(listener);
    closing.send_replace(true);
    if !connections.is_empty() {
        tracing::info!(connections = connections.len(), deadline_ms = limits.shutdown_timeout.as_millis() as u64, "draining connections");
    }
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(connections = connections.len(), "shutdown deadline reached: closing the connections still open");
        connections.shutdown().await;
    }
    Ok(())
}

/// Serves one connection until it closes, or until shutdown and its in-flight request ends.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: ConnectionLimits,
    mut closing: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    // Streams are many small writes: without TCP_NODELAY, Nagle's algorithm and delayed
    // ACKs add ~40 ms to each.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("could not set TCP_NODELAY: {e}");
    }
    let shared = Arc::new(Mutex::new(Shared { clock: ConnectionClock::opened(Instant::now()), idle_waker: None }));
    let io = TokioIo::new(TimedIo::new(stream, shared.clone(), limits));
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let in_flight = InFlight::start(&shared);
        let request = request.map(|body| Body::new(DeadlineBody::new(body, limits.body_read_timeout)));
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await.unwrap_or_else(|never| match never {});
            Ok::<_, Infallible>(response.map(|body| Tracked { body, _in_flight: in_flight }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // TimedIo keeps the deadlines (see the module docs).
    builder.header_read_timeout(None);
    let mut conn = pin!(builder.serve_connection(io, service));
    let shutdown = async move {
        // The sender outlives every connection; the guard it lends is dropped at once.
        let _ = closing.wait_for(|closing| *closing).await;
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("connection closed: {e}");
    }
}

/// Where one connection is in its life, which decides its read deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnectionClock {
    /// Requests handed to the router whose response has not been written whole.
    in_flight: usize,
    /// When the head being read began: the connection's opening, or a kept-alive
    /// connection's first byte after its last response.
    head_since: Option<Instant>,
    /// When the last response ended.
    idle_since: Instant,
}

impl ConnectionClock {
    fn opened(now: Instant) -> ConnectionClock {
        ConnectionClock { in_flight: 0, head_since: Some(now), idle_since: now }
    }

    fn request_started(&mut self) {
        self.in_flight += 1;
        self.head_since = None;
    }

    fn request_ended(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.idle_since = now;
        }
    }

    fn bytes_read(&mut self, now: Instant) {
        if self.in_flight == 0 && self.head_since.is_none() {
            self.head_since = Some(now);
        }
    }

    /// When a read that is still waiting fails; `None` while a request is in flight (its
    /// body has its own deadline, and the handler may wait on upstreams for long).
    fn read_deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        if self.in_flight > 0 {
            return None;
        }
        Some(match self.head_since {
            Some(since) => since + limits.header_read_timeout,
            None => self.idle_since + limits.idle_timeout,
        })
    }
}

/// A connection's clock, shared by its socket ([`TimedIo`]) and its requests ([`InFlight`]).
struct Shared {
    clock: ConnectionClock,
    /// The task of a read that waited with no deadline (a request was in flight), woken when
    /// the connection falls idle. hyper does not read again by itself once its last read
    /// found nothing, so without this an idle connection's deadline would never be set.
    idle_waker: Option<Waker>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One request in flight on a connection, from its head to its response's last byte.
struct InFlight(Arc<Mutex<Shared>>);

impl InFlight {
    fn start(shared: &Arc<Mutex<Shared>>) -> InFlight {
        lock(shared).clock.request_started();
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let idle_waker = {
            let mut shared = lock(&self.0);
            shared.clock.request_ended(Instant::now());
            if shared.clock.in_flight == 0 { shared.idle_waker.take() } else { None }
        };
        if let Some(waker) = idle_waker {
            waker.wake();
        }
    }
}

/// A response body that holds its request's [`InFlight`] until hyper has written it whole
/// (or the connection is gone), when hyper drops it.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A deadline that wakes the task when it passes.
#[derive(Default)]
struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
    deadline: Option<Instant>,
}

impl Timer {
    /// Whether `deadline` has passed; if not, the task is woken when it does.
    fn expired(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if self.deadline != Some(deadline) {
            sleep.as_mut().reset(deadline);
            self.deadline = Some(deadline);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// The socket, failing a read that waits past the connection's read deadline
/// ([`ConnectionClock::read_deadline`]) and a write that waits more than `idle_timeout` for
/// the client to read. hyper closes the connection on either error.
struct TimedIo {
    stream: TcpStream,
    shared: Arc<Mutex<Shared>>,
    limits: ConnectionLimits,
    read_timer: Timer,
    write_timer: Timer,
    write_waiting_since: Option<Instant>,
}

impl TimedIo {
    fn new(stream: TcpStream, shared: Arc<Mutex<Shared>>, limits: ConnectionLimits) -> TimedIo {
        TimedIo {
            stream,
            shared,
            limits,
            read_timer: Timer::default(),
            write_timer: Timer::default(),
            write_waiting_since: None,
        }
    }

    fn write_waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let since = *self.write_waiting_since.get_or_insert_with(Instant::now);
        if self.write_timer.expired(since + self.limits.idle_timeout, cx) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client read nothing of the response for idle_timeout_ms")));
        }
        Poll::Pending
    }

    fn written<T>(&mut self, result: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.write_waiting(cx),
            ready => {
                self.write_waiting_since = None;
                ready
            }
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => {
                let deadline = {
                    let mut shared = lock(&this.shared);
                    let deadline = shared.clock.read_deadline(&this.limits);
                    if deadline.is_none() {
                        match &mut shared.idle_waker {
                            Some(waker) if waker.will_wake(cx.waker()) => {}
                            slot => *slot = Some(cx.waker().clone()),
                        }
                    }
                    deadline
                };
                match deadline {
                    Some(deadline) if this.read_timer.expired(deadline, cx) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no whole request head within header_read_timeout_ms, or no request within idle_timeout_ms",
                    ))),
                    _ => Poll::Pending,
                }
            }
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    lock(&this.shared).clock.bytes_read(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.written(result, cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.written(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_flush(cx);
        this.written(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A request body ran past `[server] body_read_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} ms", .0.as_millis())]
pub(crate) struct BodyTimeout(Duration);

/// A request body that fails with [`BodyTimeout`] if it has not arrived whole `timeout` after
/// the request's head.
struct DeadlineBody {
    body: Incoming,
    timeout: Duration,
    deadline: Instant,
    timer: Timer,
}

impl DeadlineBody {
    fn new(body: Incoming, timeout: Duration) -> DeadlineBody {
        DeadlineBody { body, timeout, deadline: Instant::now() + timeout, timer: Timer::default() }
    }
}

impl hyper::body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.timer.expired(this.deadline, cx) {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Raises this process's soft limit on open files to its hard limit (the soft one is often
/// 1024), so that `max_connections`, not that default, bounds the clients served. Returns
/// the soft limit now in force, `None` when it is unlimited.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    match limit.maximum {
        Some(maximum) if maximum > current => {
            match setrlimit(Resource::Nofile, Rlimit { current: Some(maximum), maximum: Some(maximum) }) {
                Ok(()) => Some(maximum),
                Err(e) => {
                    tracing::debug!("could not raise the open file limit from {current} to {maximum}: {e}");
                    Some(current)
                }
            }
        }
        _ => Some(current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_deadline_follows_the_connection() {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..ConnectionLimits::default()
        };
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);

        // A new connection must send its head within the header timeout, first byte or not.
        let mut clock = ConnectionClock::opened(t0);
        assert_eq!(clock.read_deadline(&limits), Some(at(10)));
        clock.bytes_read(at(3));
        assert_eq!(clock.read_deadline(&limits), Some(at(10)));
        // No deadline while a request is in flight.
        clock.request_started();
        assert_eq!(clock.read_deadline(&limits), None);
        clock.bytes_read(at(20));
        assert_eq!(clock.read_deadline(&limits), None);
        // Kept alive: idle until a byte arrives, then the header timeout from that byte.
        clock.request_ended(at(30));
        assert_eq!(clock.read_deadline(&limits), Some(at(90)));
        clock.bytes_read(at(50));
        assert_eq!(clock.read_deadline(&limits), Some(at(60)));
        clock.bytes_read(at(55));
        assert_eq!(clock.read_deadline(&limits), Some(at(60)));
        clock.request_started();
        clock.request_ended(at(70));
        assert_eq!(clock.read_deadline(&limits), Some(at(130)));
    }
}
