//! The long-running roles: start the listener and/or the worker of an assembled
//! [`App`], supervise them, and shut down cleanly on a signal.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::{App, AppError, Compiled, OpenedQueue};
use crate::error::{BoxError, Chain};
use crate::server;

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

/// Why the daemon stopped other than on request.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("cannot listen on {address}")]
    Bind {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the {part} failed")]
    PartFailed {
        part: &'static str,
        #[source]
        source: BoxError,
    },
    #[error("the {0} stopped on its own")]
    PartStopped(&'static str),
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

/// A file size limit (`RLIMIT_FSIZE`, as a full disk would) must make the queue's writes
/// fail with an error it reports (503, not ready), not kill the daemon with SIGXFSZ.
/// Pipeline commands get the default back (see the local executor).
fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Descriptors kept for everything but client connections: the queue's and the
/// record's SQLite files, local executions' logs and pipes, connections to AWS.
const RESERVED_DESCRIPTORS: u64 = 256;

/// Raises the soft open-file limit to the hard one (systemd and most containers give
/// a soft 1,024 and a far higher hard limit), and returns the limit now in force.
fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// Keeps the connection limit under the open-file limit, so that clients can never
/// take the descriptors the queue and the worker need.
fn fit_connections_to_descriptors(compiled: &mut Compiled) {
    let Some(limit) = raise_open_file_limit() else {
        return;
    };
    let room = limit.saturating_sub(RESERVED_DESCRIPTORS).max(16) as usize;
    let server = &mut compiled.config.server;
    if server.max_connections > room {
        tracing::warn!(
            open_file_limit = limit,
            configured = server.max_connections,
            used = room,
            "server.max_connections is over what the open-file limit leaves for clients; raise the limit (LimitNOFILE, ulimit -n) to allow more."
        );
        server.max_connections = room;
    }
}

/// Large buffers (request bodies) are given back to the system when freed: glibc
/// would otherwise raise its mmap threshold after the first large free and keep every
/// later large body's memory in the heap for good.
fn return_large_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets an allocator parameter; it touches no memory of ours.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// What a supervised part ends with.
type PartResult = (&'static str, Result<(), BoxError>);

/// Reloads the configuration at `path`: a valid one replaces what can be replaced
/// while running (and the settings only a restart changes are said); an invalid one is
/// refused whole, every problem logged, and the running one goes on. Returns what to
/// answer a reload request with.
pub fn reload(app: &App, path: &std::path::Path) -> Result<String, String> {
    match crate::app::load(path) {
        Ok(compiled) => match app.reload(&compiled) {
            Ok(restart_only) if restart_only.is_empty() => {
                tracing::info!(config = %path.display(), "Reloaded the configuration.");
                Ok("reloaded".to_string())
            }
            Ok(restart_only) => {
                let keys = restart_only.join(", ");
                tracing::warn!(config = %path.display(), restart_needed = %keys, "Reloaded the configuration; some changes need a restart and were not taken.");
                Ok(format!("reloaded; a restart is needed for: {keys}"))
            }
            Err(error) => {
                tracing::error!(error = %Chain(&error), "Refused a reloaded configuration; the running one goes on.");
                Err(Chain(&error).to_string())
            }
        },
        Err(error) => {
            tracing::error!(error = %Chain(&error), "Refused a reloaded configuration; the running one goes on.");
            Err(Chain(&error).to_string())
        }
    }
}

/// Reloads on every SIGHUP until `shutdown`.
async fn reload_on_hangup(
    app: std::sync::Arc<App>,
    path: std::path::PathBuf,
    shutdown: CancellationToken,
) -> PartResult {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => return ("reloader", Err(error.into())),
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return ("reloader", Ok(())),
            _ = hangups.recv() => {}
        }
        let (app, path) = (app.clone(), path.clone());
        // Reading and compiling a file is blocking work.
        let _ = tokio::task::spawn_blocking(move || reload(&app, &path)).await;
    }
}

/// How often the journal's retention (`[history]`) is applied.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Applies the journal's retention at start and every PRUNE_EVERY until `shutdown`: its
/// lists stay as long as `[history]` says, on either backend. A failure is logged and
/// tried again next time; several workers pruning at once delete the same items.
async fn prune_periodically(
    journal: std::sync::Arc<dyn crate::journal::Journal>,
    retention: crate::journal::Retention,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(PRUNE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match journal.prune(retention).await {
            Ok(()) => tracing::debug!("Applied the journal's retention."),
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not apply the journal's retention; will try again.")
            }
        }
    }
}

/// Reloads for every `POST /v1/reload`, answering each with what became of it.
async fn reload_on_request(
    app: std::sync::Arc<App>,
    path: std::path::PathBuf,
    mut requests: tokio::sync::mpsc::Receiver<crate::server::ReloadRequest>,
    shutdown: CancellationToken,
) -> PartResult {
    loop {
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return ("reload requests", Ok(())),
            request = requests.recv() => match request {
                Some(answer) => answer,
                None => return ("reload requests", Ok(())),
            },
        };
        let (app, path) = (app.clone(), path.clone());
        let outcome = tokio::task::spawn_blocking(move || reload(&app, &path))
            .await
            .unwrap_or_else(|error| Err(error.to_string()));
        let _ = answer.send(outcome);
    }
}

/// Asks GitHub every `interval_secs` to redeliver what never got through in the last
/// `look_back_secs`. A failure is logged and tried again next time: it never stops the
/// daemon.
async fn redeliver_periodically(
    client: std::sync::Arc<crate::github::GithubClient>,
    config: crate::config::RedeliverConfig,
    shutdown: CancellationToken,
) -> PartResult {
    let mut ticker = tokio::time::interval(Duration::from_secs(config.interval_secs));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return ("redeliver", Ok(())),
            _ = ticker.tick() => {}
        }
        let since = std::time::SystemTime::now() - Duration::from_secs(config.look_back_secs);
        match crate::source::github::redeliver::redeliver_failed(
            &client,
            &config.hooks,
            since,
            false,
        )
        .await
        {
            Ok(found) if found.is_empty() => {
                tracing::debug!("No delivery to redeliver.");
            }
            Ok(found) => tracing::info!(
                redelivered = found.len(),
                "Asked GitHub to redeliver the deliveries that never got through."
            ),
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not look for deliveries to redeliver; will look again.")
            }
        }
    }
}

/// Runs `role` until `shutdown` is cancelled or a part stops on its own, in which case
/// the others are shut down too and the error names the part.
pub async fn run(
    mut compiled: Compiled,
    role: Role,
    shutdown: CancellationToken,
    config_path: Option<std::path::PathBuf>,
) -> Result<(), DaemonError> {
    ignore_file_size_signal();
    return_large_buffers_to_the_system();
    fit_connections_to_descriptors(&mut compiled);
    let listen = compiled.config.server.listen;
    let grace = Duration::from_secs(compiled.config.worker.shutdown_grace_secs);
    let app = std::sync::Arc::new(App::build(compiled, role.works()).await?);

    let mut parts: JoinSet<PartResult> = JoinSet::new();
    if let OpenedQueue::Embedded(embedded) = &app.queue {
        // The writer never stops while the process is sound; if it does, every
        // delivery would be refused: exit, so that a supervisor restarts the daemon.
        let embedded = embedded.clone();
        let shutdown = shutdown.clone();
        parts.spawn(async move {
            tokio::select! {
                reason = embedded.writer_stopped() => ("queue writer", Err(reason.into())),
                _ = shutdown.cancelled() => ("queue writer", Ok(())),
            }
        });
    }
    if let Some(worker) = app.worker() {
        if app.compiled.config.codepipeline.is_some() {
            let (worker, shutdown) = (worker.clone(), shutdown.clone());
            parts.spawn(async move {
                worker.poll_codepipeline(shutdown).await;
                ("codepipeline poll", Ok(()))
            });
        }
        let shutdown = shutdown.clone();
        parts.spawn(async move { ("worker", worker.run(shutdown).await.map_err(Into::into)) });
        tracing::info!(
            queue = app.compiled.config.queue.type_name(),
            executor = app.compiled.config.executor.type_name(),
            "Worker started."
        );
    }
    if let Some(path) = &config_path {
        parts.spawn(reload_on_hangup(
            app.clone(),
            path.clone(),
            shutdown.clone(),
        ));
    }
    if let (Some(redeliver), Some(client)) = (&app.compiled.config.github.redeliver, &app.github)
        && redeliver.interval_secs > 0
    {
        parts.spawn(redeliver_periodically(
            client.clone(),
            redeliver.clone(),
            shutdown.clone(),
        ));
    }
    if !role.listens()
        && let Some(address) = app.compiled.config.worker.metrics_listen
    {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| DaemonError::Bind { address, source })?;
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "Serving the worker's metrics.");
        }
        let (metrics, queue, shutdown) = (app.metrics.clone(), app.queue.queue(), shutdown.clone());
        parts.spawn(async move {
            (
                "metrics listener",
                server::serve_metrics(listener, metrics, queue, shutdown)
                    .await
                    .map_err(Into::into),
            )
        });
    }
    if role.works() {
        let (journal, shutdown) = (app.journal.clone(), shutdown.clone());
        let retention = app.compiled.config.history.retention();
        parts.spawn(async move {
            prune_periodically(journal, retention, shutdown).await;
            ("journal retention", Ok(()))
        });
    }
    if role.works()
        && let Some(reconciler) = app.reconciler()
        && reconciler.config.interval_secs > 0
    {
        let shutdown = shutdown.clone();
        parts.spawn(async move {
            crate::reconcile::periodically(reconciler, shutdown).await;
            ("reconcile", Ok(()))
        });
    }
    if role.listens() {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| DaemonError::Bind {
                address: listen,
                source,
            })?;
        if let Ok(address) = listener.local_addr() {
            let scheme = if app.compiled.config.server.tls.is_some() {
                "https"
            } else {
                "http"
            };
            tracing::info!(%address, scheme, "Listening for webhooks.");
        }
        // `POST /v1/reload` asks the same reloader as SIGHUP.
        let reloads = config_path.as_ref().map(|path| {
            let (requests, receiver) = tokio::sync::mpsc::channel(4);
            parts.spawn(reload_on_request(
                app.clone(),
                path.clone(),
                receiver,
                shutdown.clone(),
            ));
            requests
        });
        let state = app.listener_state(shutdown.clone(), reloads);
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
            Err(error) => ("task", Err(error.into())),
        };
        if !shutdown.is_cancelled() {
            let error = match result {
                Ok(()) => DaemonError::PartStopped(part),
                Err(source) => DaemonError::PartFailed { part, source },
            };
            tracing::error!(error = %Chain(&error), "Shutting down because a part stopped.");
            failure.get_or_insert(error);
            shutdown.cancel();
        } else if let Err(error) = result {
            tracing::error!(part, error = %Chain(error.as_ref()), "A part failed while stopping.");
        }
    }
    if !app.settle_journal(Duration::from_secs(5)).await {
        tracing::warn!(
            "Stopped before the journal wrote the records of every queued job; the jobs are on the queue, their records are lost."
        );
    }
    if let Some(executor) = &app.executor {
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
