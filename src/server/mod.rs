//! HTTP routes: webhooks in, small JSON answers out. `listener` accepts connections
//! under limits; `body` reads bodies under a budget.
//!
//! Invariant: a webhook is answered 2xx only after every job it produced is durable on
//! the queue ("answered only when durable"); any failure to enqueue is a 5xx.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;

mod api;
pub mod bodies;
mod body;
mod console;
mod error;
mod listener;
mod session;
mod ui;
mod webhooks;

pub use error::ApiError;
pub use listener::run;
use webhooks::{Answer, answer, codecommit_webhook, count_refusal, github_webhook};

use body::{BodyBudget, read_body};
use listener::ConnectionLimits;

use crate::config::Config;
use crate::error::Chain;
use crate::event::{Event, EventKind};
use crate::job::Job;
use crate::ledger;
use crate::plan::PlanError;
use crate::queue::{Queue, QueueError};
use crate::runtime::Current;
use crate::source::SourceError;
use crate::source::codecommit::{self};
use crate::source::github::{self, Decoded};
use crate::telemetry::{Metrics, labels};

/// Everything a request handler needs, shared by all requests.
pub struct AppState {
    /// What a reload replaces (SIGHUP, `POST /v1/reload`): routes and pipelines,
    /// secrets and tokens, networks, the certificate. A request works with the one it
    /// loaded first, whole.
    pub runtime: Current,
    /// Where planned jobs go; a 2xx means they are durable there.
    pub queue: Arc<dyn Queue>,
    /// How planned jobs get on the queue (claims, lane records, heads): the step every
    /// producer shares.
    pub admission: Arc<crate::admission::Admission>,
    pub metrics: Arc<Metrics>,
    /// Per-client-address limiter; keys are evicted by [`run`]'s housekeeping.
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    trusted_proxies: Vec<IpNet>,
    max_body_bytes: usize,
    request_timeout: Duration,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// Open connections, in all and per peer.
    connections: Arc<ConnectionLimits>,
    /// Body bytes held before verification, in all and per client.
    bodies: Arc<BodyBudget>,
    /// Cancelled when the daemon shuts down: `/readyz` then says so.
    shutdown: CancellationToken,
    /// Deliveries, lane jobs and pauses: what `/v1/deliveries`, `/v1/lanes` and the
    /// page show.
    pub journal: Option<Arc<dyn crate::journal::Journal>>,
    /// What operators see of the queue and ask of it (depth, dead letters, redrive).
    pub queue_admin: Option<Arc<dyn crate::queue::QueueAdmin>>,
    /// What `GET /v1/executions/{name}` asks.
    pub executor: Option<Arc<dyn crate::executor::Executor>>,
    /// Where `POST /v1/reload` asks for a reload (the daemon's reloader), when the
    /// daemon was started from a file it can read again.
    pub reloads: Option<tokio::sync::mpsc::Sender<ReloadRequest>>,
}

/// A reload asked for over the API: the answer says what became of it.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<String, String>>;

pub use crate::config::SurfaceNetworks;

/// What a request is to: each has its own allow-list, and its refusals their own
/// label in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    Github,
    CodeCommit,
    Operator,
}

impl Surface {
    fn of(path: &str) -> Surface {
        match path {
            "/webhooks/github" => Surface::Github,
            "/webhooks/codecommit" => Surface::CodeCommit,
            _ => Surface::Operator,
        }
    }

    /// The `source` label of the deliveries counter.
    fn label(self) -> &'static str {
        match self {
            Surface::Github => "github",
            Surface::CodeCommit => "codecommit",
            Surface::Operator => "manual",
        }
    }

    fn networks(self, networks: &SurfaceNetworks) -> &[IpNet] {
        match self {
            Surface::Github => &networks.github,
            Surface::CodeCommit => &networks.codecommit,
            Surface::Operator => &networks.operator,
        }
    }
}

impl AppState {
    /// Builds the state from a validated configuration and the runtime in force.
    pub fn new(
        config: &Config,
        runtime: Current,
        queue: Arc<dyn Queue>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> AppState {
        let rate = &config.server.rate_limit;
        let quota = Quota::per_second(NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN));
        AppState {
            runtime,
            admission: Arc::new(crate::admission::Admission::new(
                queue.clone(),
                None,
                None,
                metrics.clone(),
            )),
            queue,
            metrics,
            limiter: RateLimiter::keyed(quota),
            trusted_proxies: config.typed.trusted_proxies.clone(),
            max_body_bytes: config.server.max_body_bytes,
            request_timeout: config.server.request_timeout(),
            header_timeout: Duration::from_secs(config.server.header_timeout_secs),
            idle_timeout: Duration::from_secs(config.server.idle_timeout_secs),
            connections: Arc::new(ConnectionLimits::new(
                config.server.max_connections,
                config.server.max_connections_per_address,
                config.typed.trusted_proxies.clone(),
            )),
            bodies: BodyBudget::new(
                config.server.max_unverified_bytes,
                config.server.max_unverified_bytes_per_address,
            ),
            shutdown,
            journal: None,
            queue_admin: None,
            executor: None,
            reloads: None,
        }
    }
}

impl AppState {
    /// Drops the rate limiter's entries of clients not seen lately.
    fn forget_idle_clients(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The routes, with the address guard on the webhook endpoints.
pub fn router(state: Arc<AppState>) -> Router {
    let webhooks = Router::new()
        .route("/webhooks/github", post(github_webhook))
        .route("/webhooks/codecommit", post(codecommit_webhook))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    let api = Router::new()
        .route("/v1/executions", post(api::trigger))
        .route("/v1/executions/{name}", get(api::status))
        .route("/v1/reload", post(api::reload))
        .route("/v1/deliveries", get(console::deliveries))
        .route("/v1/deliveries/{id}", get(console::delivery))
        .route("/v1/lanes", get(console::lanes))
        .route(
            "/v1/lanes/{pipeline}/{environment}/{action}",
            post(console::lane_action),
        )
        .route("/v1/replays", post(console::replays))
        .route("/v1/queue", get(console::queue))
        .route("/v1/dead-letters/redrive", post(console::redrive))
        .route("/ui", get(ui::index))
        .route("/ui/login", get(ui::login_form).post(ui::login))
        .route("/ui/logout", post(ui::logout))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard));
    Router::new()
        .merge(webhooks)
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.request_timeout,
        ))
        .with_state(state)
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the nearest
/// untrusted address in `X-Forwarded-For`.
fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |address: &IpAddr| trusted.iter().any(|network| network.contains(address));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        for part in text.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(address) => hops.push(address),
                // An unreadable hop: trust nothing the header says.
                Err(_) => return peer,
            }
        }
    }
    // Walk back from the nearest hop; the first untrusted address is the client.
    let mut client = peer;
    for hop in hops.iter().rev() {
        if !is_trusted(hop) {
            return *hop;
        }
        client = *hop;
    }
    client
}

/// Refuses addresses outside the surface's allow-list (403) and clients over their
/// rate (429), before any other work.
async fn guard(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = client_address(peer.ip(), request.headers(), &state.trusted_proxies);
    let surface = Surface::of(request.uri().path());
    request.extensions_mut().insert(ClientAddress(client));
    let runtime = state.runtime.load();
    let allowed = surface.networks(&runtime.networks);
    if !allowed.is_empty() && !allowed.iter().any(|network| network.contains(&client)) {
        tracing::warn!(%client, surface = surface.label(), "Refused a request from an address outside the surface's allowed_networks.");
        count_refusal(
            &state,
            surface.label(),
            &ApiError::AddressNotAllowed(client),
        );
        return ApiError::AddressNotAllowed(client).into_response();
    }
    drop(runtime);
    if let Err(not_until) = state.limiter.check_key(&client) {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let error = ApiError::RateLimited(client, wait);
        count_refusal(&state, surface.label(), &error);
        return error.into_response();
    }
    next.run(request).await
}

/// The client's address as the guard found it, for the handlers.
#[derive(Debug, Clone, Copy)]
pub(super) struct ClientAddress(pub(super) IpAddr);

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    readiness(state.shutdown.is_cancelled(), state.queue.as_ref())
}

/// Ready: not shutting down, and the queue takes work.
fn readiness(shutting_down: bool, queue: &dyn Queue) -> Response {
    if shutting_down {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "shutting_down"})),
        )
            .into_response();
    }
    match queue.health() {
        Ok(()) => axum::Json(json!({"status": "ready"})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "queue_unavailable", "reason": reason})),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    render_metrics(&state.metrics)
}

fn render_metrics(metrics: &Metrics) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// `/metrics` and `/healthz` alone, for a process that works but does not listen for
/// webhooks (`[worker] metrics_listen`), so that its counters are scraped where they
/// are counted.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    queue: Arc<dyn Queue>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let ready = shutdown.clone();
    let router = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { render_metrics(&metrics) }
            }),
        )
        .route("/healthz", get(healthz))
        .route(
            "/readyz",
            get(move || {
                let (queue, ready) = (queue.clone(), ready.clone());
                async move { readiness(ready.is_cancelled(), queue.as_ref()) }
            }),
        );
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|text| crate::config::parse_network(text).unwrap())
            .collect()
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = networks(&["10.0.0.0/8"]);
        let outside: IpAddr = "203.0.113.9".parse().unwrap();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        // From an untrusted peer the header is ignored.
        assert_eq!(
            client_address(outside, &forwarded("1.2.3.4"), &trusted),
            outside
        );
        // From a trusted proxy the nearest untrusted hop is the client.
        assert_eq!(
            client_address(
                proxy,
                &forwarded("1.2.3.4, 198.51.100.7, 10.9.9.9"),
                &trusted
            ),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // A garbled header from a trusted proxy falls back to the peer.
        assert_eq!(
            client_address(proxy, &forwarded("nonsense"), &trusted),
            proxy
        );
        // No header: the peer.
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted), proxy);
    }
}
