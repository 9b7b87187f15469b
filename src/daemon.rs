//! The long-running roles: open the backends, start the listener and/or the worker,
//! supervise them, and shut down cleanly on a signal.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ExecutorConfig, QueueConfig};
use crate::executor::Executor;
use crate::executor::local::{LocalExecutor, LocalPipeline, LocalSettings};
use crate::executor::stepfunctions::StepFunctionsExecutor;
use crate::plan::Planner;
use crate::queue::Queue;
use crate::queue::embedded::{EmbeddedQueue, EmbeddedSettings};
use crate::queue::sqs::SqsQueue;
use crate::server::{self, AppState};
use crate::telemetry::Metrics;
use crate::worker::{Worker, WorkerSettings};

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

/// Loads the AWS settings the usual way (environment, profile, instance role), when a
/// part of the configuration is on AWS.
pub async fn aws_settings(config: &Config) -> Option<SdkConfig> {
    let needed = matches!(config.queue, QueueConfig::Sqs { .. })
        || matches!(config.executor, ExecutorConfig::Stepfunctions {});
    if !needed {
        return None;
    }
    // A long poll waits up to 20 s: each attempt may take longer than that.
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(30))
        .operation_timeout(Duration::from_secs(90))
        .build();
    Some(
        aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .load()
            .await,
    )
}

/// The configured queue, by backend.
pub enum OpenedQueue {
    Embedded(Arc<EmbeddedQueue>),
    Sqs(Arc<SqsQueue>),
}

impl OpenedQueue {
    pub fn queue(&self) -> Arc<dyn Queue> {
        match self {
            OpenedQueue::Embedded(queue) => queue.clone(),
            OpenedQueue::Sqs(queue) => queue.clone(),
        }
    }
}

/// Opens the configured queue.
pub async fn open_queue(config: &Config, aws: Option<&SdkConfig>) -> anyhow::Result<OpenedQueue> {
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
            Ok(OpenedQueue::Embedded(Arc::new(queue)))
        }
        QueueConfig::Sqs { url } => {
            let aws = aws.context("the SQS queue needs AWS settings")?;
            let queue = SqsQueue::open(aws_sdk_sqs::Client::new(aws), url).await?;
            let facts = queue.facts();
            match &facts.dead_letter {
                Some((dead_letter_url, max_receives)) => tracing::info!(
                    fifo = facts.fifo,
                    visibility_timeout_secs = facts.visibility_timeout.as_secs(),
                    max_receives,
                    dead_letter_queue = %dead_letter_url,
                    "Opened the SQS queue."
                ),
                None => tracing::warn!(
                    url = %url,
                    "The SQS queue has no redrive policy: a job that keeps failing is received for ever and never dead-lettered."
                ),
            }
            Ok(OpenedQueue::Sqs(Arc::new(queue)))
        }
    }
}

/// The configured executor, by backend.
pub enum OpenedExecutor {
    Local(Arc<LocalExecutor>),
    StepFunctions(Arc<StepFunctionsExecutor>),
}

impl OpenedExecutor {
    pub fn executor(&self) -> Arc<dyn Executor> {
        match self {
            OpenedExecutor::Local(executor) => executor.clone(),
            OpenedExecutor::StepFunctions(executor) => executor.clone(),
        }
    }

    /// Lets local executions finish within `grace`; Step Functions executions run on
    /// without us.
    pub async fn shutdown(&self, grace: Duration) {
        if let OpenedExecutor::Local(executor) = self {
            executor.shutdown(grace).await;
        }
    }
}

/// Opens the configured executor.
pub async fn open_executor(
    config: &Config,
    aws: Option<&SdkConfig>,
) -> anyhow::Result<OpenedExecutor> {
    match &config.executor {
        ExecutorConfig::Local {
            log_dir,
            path,
            max_attempts,
        } => {
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
            let executor = LocalExecutor::open(LocalSettings {
                path: path.clone(),
                log_dir: log_dir.clone(),
                pipelines,
                max_attempts: *max_attempts,
            })
            .await?;
            Ok(OpenedExecutor::Local(Arc::new(executor)))
        }
        ExecutorConfig::Stepfunctions {} => {
            let aws = aws.context("the Step Functions executor needs AWS settings")?;
            let state_machines: HashMap<String, String> = config
                .pipelines
                .iter()
                .filter_map(|pipeline| {
                    Some((pipeline.name.clone(), pipeline.state_machine_arn.clone()?))
                })
                .collect();
            Ok(OpenedExecutor::StepFunctions(Arc::new(
                StepFunctionsExecutor::new(aws_sdk_sfn::Client::new(aws), state_machines),
            )))
        }
    }
}

/// A file size limit (`RLIMIT_FSIZE`, as a full disk would) must make the queue's writes
/// fail with an error it reports (503, not ready), not kill the daemon with SIGXFSZ.
/// Pipeline commands get the default back (see the local executor).
fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Runs `role` until `shutdown` is cancelled or a part stops on its own, in which case
/// the others are shut down too and the error names the part.
pub async fn run(config: Config, role: Role, shutdown: CancellationToken) -> anyhow::Result<()> {
    ignore_file_size_signal();
    let planner = Arc::new(Planner::new(&config).map_err(|problems| {
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid configuration: {}", shown.join("; "))
    })?);
    let metrics = Arc::new(Metrics::default());
    let aws = aws_settings(&config).await;
    let opened_queue = open_queue(&config, aws.as_ref()).await?;
    let queue: Arc<dyn Queue> = opened_queue.queue();

    let mut parts: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    if let OpenedQueue::Embedded(embedded) = &opened_queue {
        // The writer never stops while the process is sound; if it does, every
        // delivery would be refused: exit, so that a supervisor restarts the daemon.
        let embedded = embedded.clone();
        let shutdown = shutdown.clone();
        parts.spawn(async move {
            tokio::select! {
                reason = embedded.writer_stopped() => ("queue writer", Err(anyhow::anyhow!(reason))),
                _ = shutdown.cancelled() => ("queue writer", Ok(())),
            }
        });
    }
    let mut executor = None;
    if role.works() {
        let opened = open_executor(&config, aws.as_ref()).await?;
        if let OpenedExecutor::Local(local) = &opened {
            // Before anything runs: what a crashed daemon left running must be
            // stopped and recorded, or it would overlap what comes next.
            local
                .recover()
                .await
                .context("cannot settle the executions a stopped daemon left")?;
        }
        let worker = Arc::new(Worker::new(
            queue.clone(),
            opened.executor(),
            WorkerSettings::from_config(&config.worker),
            &metrics,
        ));
        executor = Some(opened);
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

    // Shutdown has one deadline: what the worker's grace period leaves is what local
    // executions get.
    let stop_requested = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tokio::time::Instant::now()
        })
    };
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
        let grace = Duration::from_secs(config.worker.shutdown_grace_secs);
        let left = match stop_requested.await {
            Ok(requested) => grace.saturating_sub(requested.elapsed()),
            Err(_) => Duration::ZERO,
        };
        executor.shutdown(left).await;
    }
    tracing::info!("Stopped.");
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}
