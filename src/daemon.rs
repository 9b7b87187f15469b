//! The long-running roles: start, supervise, and shut down on a signal.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::plan::Planner;
use crate::queue::MemorySink;
use crate::server::{self, AppState};
use crate::telemetry::Metrics;

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second signal exits at once.
pub fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        for count in 0.. {
            if wait_for_signal().await.is_err() {
                return;
            }
            if count == 0 {
                tracing::info!(
                    "Shutting down: finishing the work in flight (a second signal exits at once)."
                );
                shutdown.cancel();
            } else {
                tracing::warn!("Second signal: exiting now.");
                std::process::exit(130);
            }
        }
    });
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = terminate.recv() => Ok(()),
    }
}

/// `serve`: the listener, keeping planned jobs in memory (the durable queue and the
/// worker are not part of this release yet).
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let planner = Arc::new(Planner::new(&config).map_err(|problems| {
        anyhow::anyhow!(
            "invalid configuration: {}",
            problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?);
    let metrics = Arc::new(Metrics::default());
    let sink = Arc::new(MemorySink::default());
    let state = Arc::new(AppState::new(
        &config,
        planner,
        sink,
        metrics,
        shutdown.clone(),
    ));
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    tracing::info!(address = %listener.local_addr()?, "Listening for webhooks.");
    server::run(listener, state, shutdown).await?;
    Ok(())
}
