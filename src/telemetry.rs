//! Logs (tracing) and metrics (Prometheus text format).
//!
//! Metric names follow `gitdispatch_<noun>_<unit>_total`; label sets stay small and
//! never carry event data (branch names, messages) that a pusher controls.

use std::io::IsTerminal;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

/// Starts logging to stderr; `GITDISPATCH_LOG` (or `RUST_LOG`) sets the filter.
/// `GITDISPATCH_LOG_FORMAT=json` writes one JSON object per line, with each span's
/// fields (delivery, repository, ref, commit, execution), for log pipelines to index;
/// the default is text, coloured on a terminal.
pub fn init() {
    let filter = std::env::var("GITDISPATCH_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    let json = std::env::var("GITDISPATCH_LOG_FORMAT").is_ok_and(|format| format == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}

pub type Labels = Vec<(&'static str, String)>;

/// Every counter the daemon keeps.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Deliveries answered, by source and outcome (`queued`, `ignored`, `refused_401`, …).
    pub deliveries: Family<Labels, Counter>,
    /// Execution requests put on the queue, by pipeline.
    pub executions_planned: Family<Labels, Counter>,
    /// Commits a matching route chose not to run, by reason.
    pub commits_skipped: Family<Labels, Counter>,
    /// Events no route matched, by source.
    pub events_unrouted: Family<Labels, Counter>,
    /// Pushes whose commit list may be incomplete.
    pub commit_lists_truncated: Counter,
    /// Connections closed as they arrived, by reason (`total`, `per_address`).
    pub connections_refused: Family<Labels, Counter>,
    /// Connections closed after sitting idle, or with headers that never came whole.
    pub connections_timed_out: Family<Labels, Counter>,
    /// Request bodies refused before their signature was checked, by reason
    /// (`per_address`, `total`).
    pub bodies_refused: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let deliveries = Family::<Labels, Counter>::default();
        let executions_planned = Family::<Labels, Counter>::default();
        let commits_skipped = Family::<Labels, Counter>::default();
        let events_unrouted = Family::<Labels, Counter>::default();
        let commit_lists_truncated = Counter::default();
        let connections_refused = Family::<Labels, Counter>::default();
        let connections_timed_out = Family::<Labels, Counter>::default();
        let bodies_refused = Family::<Labels, Counter>::default();
        registry.register(
            "gitdispatch_connections_refused",
            "Connections closed as they arrived, by which limit",
            connections_refused.clone(),
        );
        registry.register(
            "gitdispatch_connections_timed_out",
            "Connections closed for sitting idle or trickling their headers",
            connections_timed_out.clone(),
        );
        registry.register(
            "gitdispatch_bodies_refused",
            "Request bodies refused before verification, by which budget",
            bodies_refused.clone(),
        );
        registry.register(
            "gitdispatch_deliveries",
            "Webhook deliveries answered, by source and outcome",
            deliveries.clone(),
        );
        registry.register(
            "gitdispatch_executions_planned",
            "Execution requests queued, by pipeline",
            executions_planned.clone(),
        );
        registry.register(
            "gitdispatch_commits_skipped",
            "Commits a matching route did not run, by reason",
            commits_skipped.clone(),
        );
        registry.register(
            "gitdispatch_events_unrouted",
            "Events that matched no route, by source",
            events_unrouted.clone(),
        );
        registry.register(
            "gitdispatch_commit_lists_truncated",
            "Pushes whose listed commits may be incomplete",
            commit_lists_truncated.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            deliveries,
            executions_planned,
            commits_skipped,
            events_unrouted,
            commit_lists_truncated,
            connections_refused,
            connections_timed_out,
            bodies_refused,
        }
    }
}

impl Metrics {
    /// Registers a histogram (the worker's start latency, for example).
    pub fn register_histogram(
        &self,
        name: &str,
        help: &str,
        histogram: prometheus_client::metrics::histogram::Histogram,
    ) {
        self.registry
            .lock()
            .expect("metrics registry lock")
            .register(name, help, histogram);
    }

    /// Registers a further counter family (the worker's, for example).
    pub fn register_family(&self, name: &str, help: &str, family: Family<Labels, Counter>) {
        self.registry
            .lock()
            .expect("metrics registry lock")
            .register(name, help, family);
    }

    /// The OpenMetrics text exposition of every counter.
    pub fn render(&self) -> String {
        let mut output = String::new();
        encode(
            &mut output,
            &self.registry.lock().expect("metrics registry lock"),
        )
        .expect("writing to a String cannot fail");
        output
    }
}

/// Label set helper: `labels(&[("source", "github")])`.
pub fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(key, value)| (*key, (*value).to_string()))
        .collect()
}
