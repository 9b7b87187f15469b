//! The application assembled from its configuration, in one place that `main`, the
//! daemon's roles, the one-shot commands and the tests all use: the configuration
//! compiled once ([`compile`]: every section's, backend's and the planner's problems
//! reported together), then the backends it names opened ([`App::build`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, ExecutorConfig, LoadError, Problem, QueueConfig};
use crate::event::Source;
use crate::executor::local::{LocalExecutor, LocalPipeline, LocalSettings, StoreError};
use crate::executor::stepfunctions::StepFunctionsExecutor;
use crate::executor::{Executor, ExecutorError};
use crate::github::{GithubClient, SetupError as GithubError};
use crate::plan::Planner;
use crate::queue::embedded::{EmbeddedQueue, EmbeddedSettings};
use crate::queue::sqs::SqsQueue;
use crate::queue::{Queue, QueueError};
use crate::report::Reporter;
use crate::report::github::GithubReporter;
use crate::runtime::{Current, Runtime, RuntimeError};
use crate::server::AppState;
use crate::source::CommitHistory;
use crate::source::codecommit::history::CodeCommitHistory;
use crate::source::github::history::GithubHistory;
use crate::telemetry::Metrics;
use crate::worker::{Worker, WorkerParts, WorkerSettings};

mod open;
#[cfg(test)]
mod tests;

pub use open::{
    OpenedExecutor, OpenedQueue, aws_settings, needs_ledger, open_executor, open_journal,
    open_ledger, open_queue,
};

/// A configuration checked whole and compiled: what everything starts from.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub config: Config,
    pub planner: Arc<Planner>,
}

/// Checks a decoded configuration whole (each section, the configured backends, the
/// routes and pipelines) and compiles its routes; every problem is reported at once.
pub fn compile(mut config: Config) -> Result<Compiled, Vec<Problem>> {
    let mut problems = config.validate();
    config.typed = config.typed(&mut problems);
    problems.extend(crate::queue::check(&config));
    problems.extend(crate::executor::check(&config));
    let planner = Planner::new(&config).map_err(|more| problems.extend(more));
    match planner {
        Ok(planner) if problems.is_empty() => Ok(Compiled {
            config,
            planner: Arc::new(planner),
        }),
        _ => Err(problems),
    }
}

/// Reads, interpolates, decodes and compiles a configuration file.
pub fn load(path: &Path) -> Result<Compiled, ConfigError> {
    let config = Config::read(path)?;
    compile(config).map_err(|problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// Compiles a configuration text; `env` looks up `${NAME}` references.
pub fn from_toml_str(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Compiled, LoadError> {
    compile(Config::parse(text, env)?).map_err(LoadError::Invalid)
}

/// Why the application could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the queue")]
    Queue(#[from] QueueError),
    #[error("cannot open the local executor's record")]
    Store(#[from] StoreError),
    #[error("cannot settle the executions a stopped daemon left")]
    Recovery(#[source] ExecutorError),
    #[error("{0} needs AWS settings, and none were loaded")]
    NoAwsSettings(&'static str),
    #[error("cannot set up calls to GitHub")]
    Github(#[from] GithubError),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("only a restart can take this configuration: {0}")]
    RestartNeeded(String),
}

/// The assembled application: the compiled configuration, the metrics every part
/// counts in, the queue, and (for a role that works) the executor.
pub struct App {
    pub compiled: Compiled,
    pub metrics: Arc<Metrics>,
    pub queue: OpenedQueue,
    /// Present when built to work: its recovery has run.
    pub executor: Option<OpenedExecutor>,
    /// The sources whose pushes' commits are read from their history.
    histories: HashMap<Source, Arc<dyn CommitHistory>>,
    /// Where the worker reports; `None` when reporting is off.
    reporter: Option<Arc<dyn Reporter>>,
    /// GitHub's API, when `[github]` can call it.
    pub github: Option<Arc<GithubClient>>,
    /// The record of planned commits, when `[github.reconcile]` is configured.
    pub ledger: Option<Arc<dyn crate::ledger::Ledger>>,
    /// Deliveries, lane jobs and pauses, for operators: `deferred`, over the backend.
    pub journal: Arc<dyn crate::journal::Journal>,
    /// The journal whose admission records are written after the answer.
    deferred: Arc<crate::journal::deferred::Deferred>,
    /// What a reload replaces: the planner, lane rules, secrets, tokens, networks and
    /// certificate, shared by the listener and the worker.
    pub runtime: Current,
    /// How every producer's planned starts get on the queue: the listener's
    /// deliveries, the API, replays, the worker's expansions and CodePipeline jobs,
    /// reconcile.
    pub admission: Arc<crate::admission::Admission>,
    /// What the API asks about executions, when it is on.
    describer: Option<Arc<dyn Executor>>,
    /// The custom action's job calls, when `[codepipeline]` is configured and this
    /// process works.
    codepipeline: Option<Arc<crate::source::codepipeline::CodePipeline>>,
    /// Whether this process listens (its listener's state was made): a reload then
    /// ends the sessions of tokens it removed.
    listening: std::sync::atomic::AtomicBool,
}

impl App {
    /// Opens the configured backends. With `work`, also the executor, after settling
    /// what a crashed daemon left running (before anything runs: it would overlap what
    /// comes next).
    pub async fn build(compiled: Compiled, work: bool) -> Result<App, AppError> {
        let aws = aws_settings(&compiled.config).await;
        let queue = open_queue(&compiled.config, aws.as_ref()).await?;
        let executor = if work {
            let opened = open_executor(&compiled.config, aws.as_ref()).await?;
            if let OpenedExecutor::Local(local) = &opened {
                local.recover().await.map_err(AppError::Recovery)?;
            }
            Some(opened)
        } else {
            None
        };
        // The API says how an execution is doing, wherever it listens: a listener
        // without a worker opens the executor to ask it (and runs nothing on it).
        let describer = match &executor {
            Some(opened) => Some(opened.executor()),
            None if compiled.config.api.enabled() => Some(
                open_executor(&compiled.config, aws.as_ref())
                    .await?
                    .executor(),
            ),
            None => None,
        };
        let mut histories: HashMap<Source, Arc<dyn CommitHistory>> = HashMap::new();
        if compiled.config.codecommit.is_some() {
            let aws = aws.clone().ok_or(AppError::NoAwsSettings("CodeCommit"))?;
            histories.insert(Source::CodeCommit, Arc::new(CodeCommitHistory::new(aws)));
        }
        let runtime = Current::new(Runtime::build(
            &compiled.config,
            compiled.planner.clone(),
            None,
        )?);
        let ledger = open_ledger(&compiled.config, aws.as_ref()).await?;
        let metrics = Arc::new(Metrics::default());
        let lost = prometheus_client::metrics::family::Family::default();
        metrics.register_family(
            "gitdispatch_journal_records_lost",
            "Records of queued jobs the journal could not keep (its queue of records full, or the write failed), by reason",
            lost.clone(),
        );
        let deferred = Arc::new(crate::journal::deferred::Deferred::new(
            open_journal(&compiled.config, aws.as_ref()).await?,
            lost,
        ));
        let journal: Arc<dyn crate::journal::Journal> = deferred.clone();
        let github =
            GithubClient::from_config(&compiled.config.github, &compiled.config.typed.github_auth)?
                .map(Arc::new);
        let reporter: Option<Arc<dyn Reporter>> = match (&github, work) {
            (Some(client), true) => {
                tracing::info!(
                    api = %compiled.config.github.api_url,
                    with = if client.uses_check_runs() { "check runs" } else { "commit statuses" },
                    "Reporting to GitHub."
                );
                // The same client reads a large push's commits.
                histories.insert(Source::Github, Arc::new(GithubHistory::new(client.clone())));
                Some(Arc::new(GithubReporter::new(client.clone())))
            }
            (None, true) => {
                tracing::info!(
                    "Reporting to GitHub is off: [github] has neither a token nor an App."
                );
                None
            }
            (_, false) => None,
        };
        let codepipeline = match (&compiled.config.codepipeline, work) {
            (Some(config), true) => {
                let aws = aws.clone().ok_or(AppError::NoAwsSettings("CodePipeline"))?;
                tracing::info!(
                    category = %config.category,
                    provider = %config.provider,
                    version = %config.version,
                    "Serving a CodePipeline custom action."
                );
                Some(Arc::new(crate::source::codepipeline::CodePipeline::new(
                    aws_sdk_codepipeline::Client::new(&aws),
                    config,
                )))
            }
            _ => None,
        };
        let lanes = Arc::new(crate::lanes::Lanes::new(journal.clone()));
        let admission = Arc::new(crate::admission::Admission::new(
            queue.queue(),
            ledger.clone(),
            Some(lanes),
            metrics.clone(),
        ));
        Ok(App {
            admission,
            codepipeline,
            compiled,
            metrics,
            queue,
            executor,
            histories,
            reporter,
            github,
            ledger,
            journal,
            deferred,
            runtime,
            describer,
            listening: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// What the listener's request handlers share. `reloads` is where `POST
    /// /v1/reload` asks for a reload, when the daemon can read its file again.
    pub fn listener_state(
        &self,
        shutdown: CancellationToken,
        reloads: Option<tokio::sync::mpsc::Sender<crate::server::ReloadRequest>>,
    ) -> Arc<AppState> {
        let mut state = AppState::new(
            &self.compiled.config,
            self.runtime.clone(),
            self.queue.queue(),
            self.metrics.clone(),
            shutdown,
        );
        state.admission = self.admission.clone();
        state.journal = Some(self.journal.clone());
        state.queue_admin = Some(self.queue.admin());
        state.executor = self.describer.clone();
        state.reloads = reloads;
        self.listening
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.end_revoked_sessions(&self.compiled.config);
        Arc::new(state)
    }

    /// Ends, in the background, the page's sessions opened with a token `config` does
    /// not have (any more): removing a token ends its sessions for good.
    fn end_revoked_sessions(&self, config: &Config) {
        let digests = crate::source::manual::ManualSource::from_config(&config.api)
            .map(|source| source.digests())
            .unwrap_or_default();
        let journal = self.journal.clone();
        tokio::spawn(async move {
            match journal.end_sessions_except(&digests).await {
                Ok(0) => {}
                Ok(ended) => {
                    tracing::info!(
                        ended,
                        "Ended the page's sessions of tokens no longer configured."
                    )
                }
                Err(error) => {
                    tracing::warn!(error = %crate::error::Chain(&error), "Could not end the page's sessions of tokens no longer configured; they are refused while their token is not configured.")
                }
            }
        });
    }

    /// Takes a reloaded configuration: its routes, pipelines, webhook secrets, API
    /// tokens and CodeCommit keys replace the running ones at once (a request in flight
    /// finishes with what it started with). What only a restart can change is not
    /// taken; each such setting that differs is returned, to be said.
    pub fn reload(&self, compiled: &Compiled) -> Result<Vec<String>, AppError> {
        let new = &compiled.config;
        // What a configuration turns on that needs a store opened at start: refused
        // whole, not half taken.
        if needs_ledger(new) && self.ledger.is_none() {
            return Err(AppError::RestartNeeded(
                "[api], [codepipeline] or [github.reconcile] needs the ledger, which is opened at start".into(),
            ));
        }
        // One runtime, built whole before anything is swapped: a certificate that
        // cannot be read refuses the whole reload.
        let runtime = Runtime::build(new, compiled.planner.clone(), Some(&self.runtime.load()))?;
        self.runtime.replace(runtime);
        if let Some(executor) = &self.executor {
            executor.reload(new);
        }
        if self.listening.load(std::sync::atomic::Ordering::Relaxed) {
            self.end_revoked_sessions(new);
        }
        Ok(restart_only_changes(&self.compiled.config, new))
    }

    /// Waits, for at most `patience`, until the journal has written the records of
    /// everything admitted (what a stopping daemon does last); whether it has.
    pub async fn settle_journal(&self, patience: Duration) -> bool {
        self.deferred.settle_within(patience).await
    }

    /// Reconcile, when `[github.reconcile]` is configured.
    pub fn reconciler(&self) -> Option<crate::reconcile::Reconciler> {
        let config = &self.compiled.config;
        Some(crate::reconcile::Reconciler {
            client: self.github.clone()?,
            runtime: self.runtime.clone(),
            ledger: self.ledger.clone()?,
            admission: self.admission.clone(),
            config: config.github.reconcile.clone()?,
            max_commits: config.github.max_expanded_commits,
        })
    }

    /// The worker, when built to work.
    pub fn worker(&self) -> Option<Arc<Worker>> {
        let executor = self.executor.as_ref()?;
        let config = &self.compiled.config;
        let mut max_commits = HashMap::from([(Source::Github, config.github.max_expanded_commits)]);
        if let Some(codecommit) = &config.codecommit {
            max_commits.insert(Source::CodeCommit, codecommit.max_commits);
        }
        let mut parts = WorkerParts::new(
            self.queue.queue(),
            executor.executor(),
            WorkerSettings::from_config(&config.worker),
            self.runtime.clone(),
        );
        parts.admission = self.admission.clone();
        parts.histories = self.histories.clone();
        parts.max_commits = max_commits;
        parts.reporter = self.reporter.clone();
        parts.codepipeline = self.following();
        Some(Arc::new(Worker::new(parts, &self.metrics)))
    }
}

impl App {
    /// What the worker needs to serve the custom action, when there is one.
    fn following(&self) -> Option<crate::worker::codepipeline::Following> {
        let (client, config) = (
            self.codepipeline.as_ref()?,
            self.compiled.config.codepipeline.as_ref()?,
        );
        Some(crate::worker::codepipeline::Following {
            codepipeline: client.clone(),
            poll_interval: Duration::from_secs(config.poll_interval_secs),
            continue_after: Duration::from_secs(config.continue_after_secs),
            start_timeout: Duration::from_secs(config.start_timeout_secs),
            pipelines: config.pipelines.clone(),
        })
    }
}

/// The settings a reload cannot change that differ between `old` and `new`, by key.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    // Certificates are reread on reload; HTTPS is turned on or off by a restart.
    // GitHub's allow-list (still spelled in [server] by earlier files) is taken on
    // reload, with every surface's.
    let server = |config: &Config| crate::config::ServerConfig {
        tls: None,
        allowed_networks: Vec::new(),
        ..config.server.clone()
    };
    // How GitHub is called: the client is made at start.
    let github = |config: &Config| {
        let github = &config.github;
        (
            config.typed.github_auth.clone(),
            github.api_url.clone(),
            github.reports_per_minute,
            github.redeliver.clone(),
            github.reconcile.clone(),
        )
    };
    [
        (
            "server (listen, limits, proxies)",
            server(old) != server(new),
        ),
        (
            "server.tls (on or off)",
            old.server.tls.is_some() != new.server.tls.is_some(),
        ),
        ("queue", old.queue != new.queue),
        ("worker", old.worker != new.worker),
        ("executor", old.executor != new.executor),
        ("ledger", old.ledger != new.ledger),
        (
            "github (token, App, api_url, redeliver, reconcile)",
            github(old) != github(new),
        ),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(key, _)| key.to_string())
    .collect()
}
