//! Accepting connections under discipline: a cap on open connections in all and per
//! peer address, a deadline for a request's headers, and a deadline for a connection
//! that sits idle. Anyone can open a connection before any signature is checked, so
//! none of these may be left to the client's good will.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{AppState, router};
use crate::telemetry::labels;

/// After a failed accept (the process is out of descriptors, say), wait this long
/// before the next, rather than spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A refusal is logged at most this often; it is counted every time.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The open connections, in all and per peer address. At the total limit, a new
/// connection takes the place of the one that has sat idle the longest (no request in
/// progress: silent, between requests, or still trickling its headers), so that idle
/// connections, however many addresses they come from, cannot keep new deliveries out.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_address: usize,
    /// Peers not limited per address: proxies everyone is behind.
    unlimited: Vec<IpNet>,
    open: Mutex<Open>,
    last_logged: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    connections: HashMap<u64, Connection>,
    by_address: HashMap<IpAddr, usize>,
}

/// What the limits know of one open connection.
struct Connection {
    peer: IpAddr,
    activity: Arc<Mutex<Activity>>,
    /// Cancelled to close the connection (to make room for another).
    close: CancellationToken,
}

impl Open {
    fn remove(&mut self, id: u64) -> bool {
        let Some(connection) = self.connections.remove(&id) else {
            return false;
        };
        if let Some(count) = self.by_address.get_mut(&connection.peer) {
            *count -= 1;
            if *count == 0 {
                self.by_address.remove(&connection.peer);
            }
        }
        true
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every place is taken by a connection with a request in progress.
    Total,
    PerAddress,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Total => "total",
            Refusal::PerAddress => "per_address",
        }
    }
}

/// An admitted connection; dropping it frees its place.
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    id: u64,
    pub activity: Arc<Mutex<Activity>>,
    /// Cancelled when the connection must close to make room.
    pub close: CancellationToken,
    /// Whether a connection was closed to make room for this one.
    pub evicted: bool,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits
            .open
            .lock()
            .expect("connection counts lock")
            .remove(self.id);
    }
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_address: usize, unlimited: Vec<IpNet>) -> Self {
        ConnectionLimits {
            max_total,
            max_per_address,
            unlimited,
            open: Mutex::new(Open::default()),
            last_logged: Mutex::new(None),
        }
    }

    /// Takes a place for a connection from `peer`, closing the longest idle one when
    /// every place is taken.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admitted, Refusal> {
        let mut open = self.open.lock().expect("connection counts lock");
        let limited = !self.unlimited.iter().any(|network| network.contains(&peer));
        let from_peer = open.by_address.get(&peer).copied().unwrap_or(0);
        if limited && from_peer >= self.max_per_address {
            return Err(Refusal::PerAddress);
        }
        let mut evicted = false;
        if open.connections.len() >= self.max_total {
            let longest_idle = open
                .connections
                .iter()
                .filter_map(|(id, connection)| {
                    let activity = connection.activity.lock().expect("activity lock");
                    (activity.in_flight == 0).then_some((*id, activity.idle_since))
                })
                .min_by_key(|(_, idle_since)| *idle_since)
                .map(|(id, _)| id);
            let Some(id) = longest_idle else {
                return Err(Refusal::Total);
            };
            if let Some(connection) = open.connections.get(&id) {
                connection.close.cancel();
            }
            open.remove(id);
            evicted = true;
        }
        let id = open.next_id;
        open.next_id += 1;
        let activity = Arc::new(Mutex::new(Activity {
            in_flight: 0,
            idle_since: Instant::now(),
        }));
        let close = CancellationToken::new();
        open.connections.insert(
            id,
            Connection {
                peer,
                activity: activity.clone(),
                close: close.clone(),
            },
        );
        *open.by_address.entry(peer).or_insert(0) += 1;
        Ok(Admitted {
            limits: self.clone(),
            id,
            activity,
            close,
            evicted,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .expect("connection counts lock")
            .connections
            .len()
    }

    /// Whether a refusal should be logged now (at most once per LOG_EVERY).
    fn should_log(&self) -> bool {
        let mut last = self.last_logged.lock().expect("log clock lock");
        let now = Instant::now();
        if last.is_some_and(|at| now - at < LOG_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Whether a connection has a request in progress, and since when it has had none.
pub struct Activity {
    in_flight: usize,
    idle_since: Instant,
}

/// Serves until `shutdown` is cancelled, then finishes the requests in flight (for
/// up to the request timeout) and closes idle connections at once.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // The rate limiter keeps one entry per client address; drop the idle ones now and
    // then so that a scan from many addresses does not grow memory for ever.
    let housekeeping = {
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => state.forget_idle_clients(),
                }
            }
        })
    };
    let router = router(state.clone());
    let graceful = GracefulShutdown::new();
    let limits = state.connections.clone();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                if limits.should_log() {
                    tracing::warn!(%error, "Could not accept a connection.");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                }
            }
        };
        let admitted = match limits.admit(peer.ip()) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                state
                    .metrics
                    .connections_refused
                    .get_or_create(&labels(&[("reason", refusal.as_str())]))
                    .inc();
                if limits.should_log() {
                    tracing::warn!(
                        peer = %peer.ip(),
                        limit = refusal.as_str(),
                        open = limits.open(),
                        "Closed a connection over the connection limit (logged once per 10 s, counted in gitdispatch_connections_refused_total)."
                    );
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if admitted.evicted {
            state
                .metrics
                .connections_timed_out
                .get_or_create(&labels(&[("reason", "evicted_idle")]))
                .inc();
        }
        let activity = admitted.activity.clone();
        let close = admitted.close.clone();
        let service = {
            let router = router.clone();
            let activity = activity.clone();
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let router = router.clone();
                let activity = activity.clone();
                async move {
                    activity.lock().expect("activity lock").in_flight += 1;
                    let mut request = request.map(axum::body::Body::new);
                    request
                        .extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(peer));
                    let response = router.oneshot(request).await;
                    let mut activity = activity.lock().expect("activity lock");
                    activity.in_flight -= 1;
                    activity.idle_since = Instant::now();
                    response
                }
            })
        };
        let builder = {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(state.header_timeout)
                .keep_alive(true);
            builder
        };
        let watcher = graceful.watcher();
        let idle_timeout = state.idle_timeout;
        let header_timeout = state.header_timeout;
        let metrics = state.metrics.clone();
        let tls = state.runtime.load().tls.clone();
        tokio::spawn(async move {
            let _admitted = admitted;
            let serve = async {
                match tls {
                    None => {
                        serve(
                            builder.serve_connection(TokioIo::new(stream), service),
                            watcher,
                            &metrics,
                        )
                        .await
                    }
                    Some(acceptor) => {
                        // The handshake is part of what a client must finish in time.
                        match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                serve(
                                    builder.serve_connection(TokioIo::new(stream), service),
                                    watcher,
                                    &metrics,
                                )
                                .await
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%error, "A TLS handshake failed.");
                            }
                            Err(_) => {
                                metrics
                                    .connections_timed_out
                                    .get_or_create(&labels(&[("reason", "headers")]))
                                    .inc();
                            }
                        }
                    }
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = idle_for(activity, idle_timeout) => {
                    metrics
                        .connections_timed_out
                        .get_or_create(&labels(&[("reason", "idle")]))
                        .inc();
                }
                // Closed to make room for a new connection.
                _ = close.cancelled() => {}
            }
        });
    }
    drop(listener);
    housekeeping.abort();
    let deadline = state.request_timeout + Duration::from_secs(1);
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("Closed connections still busy at the end of the request timeout.");
    }
    Ok(())
}

/// Serves one connection to its end (or the daemon's graceful shutdown), counting a
/// header timeout.
async fn serve<C>(
    connection: C,
    watcher: hyper_util::server::graceful::Watcher,
    metrics: &crate::telemetry::Metrics,
) where
    C: hyper_util::server::graceful::GracefulConnection<Error = hyper::Error>,
{
    if let Err(error) = watcher.watch(connection).await {
        if error.is_timeout() {
            metrics
                .connections_timed_out
                .get_or_create(&labels(&[("reason", "headers")]))
                .inc();
        }
        tracing::debug!(%error, "A connection ended with an error.");
    }
}

/// Resolves once the connection has had no request in progress for `timeout`.
async fn idle_for(activity: Arc<Mutex<Activity>>, timeout: Duration) {
    loop {
        let wake_at = {
            let activity = activity.lock().expect("activity lock");
            if activity.in_flight == 0 && activity.idle_since.elapsed() >= timeout {
                return;
            }
            if activity.in_flight == 0 {
                activity.idle_since + timeout
            } else {
                Instant::now() + timeout
            }
        };
        tokio::time::sleep_until(wake_at).await;
    }
}
