//! The HTTP server of every proxflow listener (the gateway's API, each service's ops endpoints):
//! one hyper HTTP/1 connection per socket, under the limits an edge facing untrusted clients needs.
//!
//! - **Connections** are capped ([`HttpLimits::max_connections`]). At the cap, the connection that
//!   has waited longest without a request in flight (an idle or slowloris client, or an idle
//!   keep-alive) is closed to make room, so clients that hold sockets without asking cannot lock out
//!   the ones that ask; only when every connection is serving a request does a newcomer get an
//!   immediate `503` naming the limit.
//! - **Headers** must arrive within [`HttpLimits::header_read_timeout`] (slowloris); a connection
//!   with no request in flight and no bytes moving for [`HttpLimits::idle_timeout`] is closed.
//!   Bodies are read by the handlers, under their own deadline and only for authenticated callers.
//! - **Shutdown** stops accepting at once, asks every connection to finish its request, and after
//!   `grace` drops whatever is left: a client stalled mid-request cannot keep the process alive.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// `[gateway.http]` (and the ops listeners' defaults): what one HTTP listener tolerates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Open connections at most. At the cap the longest-waiting connection with no request in
    /// flight is closed for a newcomer; with none, the newcomer is answered `503` and closed.
    pub max_connections: usize,
    /// Time a client has to send a request's whole header block.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's whole body (applied by the handlers that read one).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// A connection with no request in flight and nothing sent or received for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl HttpLimits {
    /// Checks the limits, naming the key (`<at>.max_connections`, ...) of the first bad one.
    pub fn validate_at(&self, at: &str) -> Result<(), crate::config::ConfigError> {
        if self.max_connections == 0 {
            return Err(crate::config::ConfigError::value(
                format!("{at}.max_connections"),
                "must be at least 1",
            ));
        }
        for (key, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_zero() || value > Duration::from_secs(3600) {
                return Err(crate::config::ConfigError::value(
                    format!("{at}.{key}"),
                    "must be more than 0 and at most 1h",
                ));
            }
        }
        Ok(())
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown`, then for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    limits: &HttpLimits,
    grace: Duration,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(OpenConnections::default());
    let finish = CancellationToken::new();
    let mut connections = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            // Reap finished connections as we go, so the set does not grow with every socket.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a reset before accept: the listener itself is fine.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => Some(permit),
            // Full: the longest-waiting connection without a request makes room, and hands over
            // its permit as it closes (awaited in the newcomer's task, not here).
            Err(_) if open.evict_oldest_idle() => None,
            Err(_) => {
                connections.spawn(refuse(stream, limits.max_connections));
                continue;
            }
        };
        let (router, limits, finish) = (router.clone(), limits.clone(), finish.clone());
        let (permits, open) = (Arc::clone(&permits), Arc::clone(&open));
        connections.spawn(async move {
            let permit = match permit {
                Some(permit) => permit,
                None => match tokio::time::timeout(EVICTION_WAIT, permits.acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => return refuse(stream, limits.max_connections).await,
                },
            };
            connection(stream, router, &limits, &open, finish).await;
            drop(permit);
        });
    }
    drop(listener);
    finish.cancel();
    if tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            left = connections.len(),
            "HTTP connections still open after the grace period; dropping them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Answers a connection over the cap with `503` (best effort, briefly) and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!(
        "{{\"error\":\"too many connections: the limit is {max} (gateway.http.max_connections)\"}}"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// How long a newcomer waits for the permit of the connection evicted for it.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// One open connection: what closes it to make room, and its requests in flight.
type Entry = (CancellationToken, Arc<AtomicUsize>);

/// The open connections, oldest first (ids only grow).
#[derive(Default)]
struct OpenConnections {
    next: AtomicU64,
    entries: Mutex<BTreeMap<u64, Entry>>,
}

impl OpenConnections {
    fn entries(&self) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
        // A poisoned map only means a panic elsewhere while it was held; its entries are intact.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, in_flight: &Arc<AtomicUsize>) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.entries()
            .insert(id, (token.clone(), Arc::clone(in_flight)));
        (id, token)
    }

    fn remove(&self, id: u64) {
        self.entries().remove(&id);
    }

    /// Closes the oldest connection with no request in flight; `false` when every one is serving.
    fn evict_oldest_idle(&self) -> bool {
        let mut entries = self.entries();
        let victim = entries
            .iter()
            .find(|(_, (_, in_flight))| in_flight.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id);
        match victim.and_then(|id| entries.remove(&id)) {
            Some((token, _)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// One connection: HTTP/1 with the header timeout, closed when idle, when evicted for a newcomer,
/// when `finish` asks (after the request in flight) or when the server drops it.
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: &HttpLimits,
    open: &OpenConnections,
    finish: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (id, evicted) = open.register(&in_flight);
    let counted = Arc::clone(&in_flight);
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let router = router.clone();
            let guard = InFlight::enter(&counted);
            async move {
                let response = router.oneshot(request.map(axum::body::Body::new)).await;
                drop(guard);
                response
            }
        });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let tick = (limits.idle_timeout / 4).max(Duration::from_millis(50));
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                open.remove(id);
                return;
            }
            () = evicted.cancelled(), if !closing => {
                // A request that began since the choice finishes first; otherwise the socket goes.
                if in_flight.load(Ordering::Acquire) == 0 {
                    tracing::debug!("connection without a request closed to make room");
                    return;
                }
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = finish.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(tick), if !closing => {
                if in_flight.load(Ordering::Acquire) == 0 && activity.idle() >= limits.idle_timeout {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// When bytes last moved on a connection.
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// Counts a request in flight on its connection while alive.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket that records when bytes move.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
