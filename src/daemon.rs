//! The long-running roles: open the backends, start the listener and/or the worker,
//! supervise them, and shut down cleanly on a signal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ExecutorConfig, QueueConfig};
use crate::executor::local::{LocalExecutor, LocalPipeline};
use crate::plan::Planner;
use crate::queue::Queue;
use crate::queue::embedded::{EmbeddedQueue, EmbeddedSettings};
use crate::server::{self, AppState};
use crate::telemetry::Metrics;
use crate::worker::Worker;

/// Which parts a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Listener and worker in one process.
    Serve,
    Listen,
    Work,
}

impl Role {
    fn listens(self) -> bool {
        matches!(self, Role::Serve | Role::Listen)
    }

    fn works(self) -> bool {
        matches!(self, Role::Serve | Role::Work)
    }
}

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

/// Opens the configured queue.
pub async fn open_queue(config: &Config) -> anyhow::Result<Arc<EmbeddedQueue>> {
    match &config.queue {
        QueueConfig::Embedded {
            path,
            visibility_timeout_secs,
            max_receives,
        } => {
            let queue = EmbeddedQueue::open(EmbeddedSettings {
                path: path.clone(),
                visibility_timeout: Duration::from_secs(*visibility_timeout_secs),
                max_receives: *max_receives,
            })
            .await?;
            Ok(Arc::new(queue))
        }
    }
}

/// Opens the configured executor.
pub async fn open_executor(config: &Config) -> anyhow::Result<Arc<LocalExecutor>> {
    match &config.executor {
        ExecutorConfig::Local { log_dir, path } => {
            let pipelines: HashMap<String, LocalPipeline> = config
                .pipelines
                .iter()
                .filter_map(|pipeline| {
                    let command = pipeline.command.clone()?;
                    Some((
                        pipeline.name.clone(),
                        LocalPipeline {
                            command,
                            timeout: Duration::from_secs(pipeline.timeout_secs),
                        },
                    ))
                })
                .collect();
            let executor = LocalExecutor::open(path, log_dir, pipelines).await?;
            Ok(Arc::new(executor))
        }
    }
}

/// Runs `role` until `shutdown` is cancelled or a part stops on its own, in which case
/// the others are shut down too and the error names the part.
pub async fn run(config: Config, role: Role, shutdown: CancellationToken) -> anyhow::Result<()> {
    let planner = Arc::new(Planner::new(&config).map_err(|problems| {
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid configuration: {}", shown.join("; "))
    })?);
    let metrics = Arc::new(Metrics::default());
    let queue: Arc<dyn Queue> = open_queue(&config).await?;

    let mut parts: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let mut executor = None;
    if role.works() {
        let local = open_executor(&config).await?;
        executor = Some(local.clone());
        let worker = Arc::new(Worker::new(
            queue.clone(),
            local,
            config.worker.settings(),
            &metrics,
        ));
        let shutdown = shutdown.clone();
        parts.spawn(async move { ("worker", worker.run(shutdown).await.map_err(Into::into)) });
        tracing::info!(
            queue = config.queue.type_name(),
            executor = config.executor.type_name(),
            "Worker started."
        );
    }
    if role.listens() {
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        tracing::info!(address = %listener.local_addr()?, "Listening for webhooks.");
        let state = Arc::new(AppState::new(
            &config,
            planner,
            queue.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        let shutdown = shutdown.clone();
        parts.spawn(async move {
            (
                "listener",
                server::run(listener, state, shutdown)
                    .await
                    .map_err(Into::into),
            )
        });
    }

    let mut failure = None;
    while let Some(joined) = parts.join_next().await {
        let (part, result) = match joined {
            Ok(outcome) => outcome,
            Err(error) => ("a task", Err(anyhow::anyhow!("panicked: {error}"))),
        };
        if !shutdown.is_cancelled() {
            let error = match result {
                Ok(()) => anyhow::anyhow!("the {part} stopped on its own"),
                Err(error) => error.context(format!("the {part} failed")),
            };
            tracing::error!(error = %format!("{error:#}"), "Shutting down because a part stopped.");
            failure.get_or_insert(error);
            shutdown.cancel();
        } else if let Err(error) = result {
            tracing::error!(part, error = %format!("{error:#}"), "A part failed while stopping.");
        }
    }
    if let Some(executor) = executor {
        executor
            .shutdown(Duration::from_secs(config.worker.shutdown_grace_secs))
            .await;
    }
    tracing::info!("Stopped.");
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
