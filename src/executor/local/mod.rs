//! The local executor: runs a pipeline's `command` on this machine.
//!
//! The execution input goes to the command on stdin and its name, pipeline and
//! environment in `GITDISPATCH_*` variables; event data never reaches its command line.
//! Output goes to `<log_dir>/<run name>.log` (names are `[A-Za-z0-9_-]`, so safe as
//! file names).
//!
//! Every run is recorded in SQLite before its process starts, and a repeated start of
//! a name finds the record and runs nothing. A run goes `starting` (recorded, the
//! process not yet known) → `running` (its pid and start time recorded) → an end. A
//! run that our own shutdown or a crash interrupted is `interrupted`; the next start of
//! its name runs it again as a new attempt with a name of its own
//! ([`ExecutionName::attempt`]), up to `max_attempts`.
//!
//! Invariant: a record never claims a run that did not happen, and a run never happens
//! without a record. The process writes a header line to its log before it executes
//! the command, so after a crash a `starting` record with an empty log is known never
//! to have run (it is deleted, and the name runs as if for the first time), while one
//! with a header ran and was interrupted. Processes left behind by a crashed daemon
//! are found by their run's id in their environment (which survives pid reuse) and
//! stopped before anything else of theirs runs, so two runs of one serial lane never
//! overlap.

mod recovery;
mod spawn;
mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use super::{Execution, Executor, ExecutorError, Started};
use crate::config::{Config, ExecutorConfig, Problem};
use crate::error::Chain;
use crate::execution::ExecutionRequest;
use crate::execution::name::ExecutionName;
use crate::process::{self, Liveness, ProcessIdentity};
use recovery::owner_liveness;
use spawn::{GroupKiller, Run, SpawnError, spawn_command};
pub use store::{ExecutionRecord, RunStatus, StoreError};
use store::{
    LATEST_RUN_COLUMNS, LatestRun, finish, latest_run, now_ms, open_store, recent, with_store,
};

/// What the local executor needs of the configuration: a command for every pipeline,
/// and at least one attempt.
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let ExecutorConfig::Local { max_attempts, .. } = &config.executor {
        if *max_attempts == 0 {
            problems.push(Problem::new("executor.max_attempts", "must be above 0"));
        }
    }
    for (index, pipeline) in config.pipelines.iter().enumerate() {
        let path = format!("pipelines[{index}].command");
        match &pipeline.command {
            None => problems.push(Problem::new(path, "is required by executor type \"local\"")),
            Some(command) if command.is_empty() || command[0].is_empty() => {
                problems.push(Problem::new(path, "must name a program to run"))
            }
            Some(_) => {}
        }
    }
    problems
}

/// How one pipeline runs locally.
#[derive(Debug, Clone)]
pub struct LocalPipeline {
    /// Program and arguments.
    pub command: Vec<String>,
    /// The process group is killed after this long.
    pub timeout: Duration,
}

/// Where the local executor keeps its state and what it runs.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// The SQLite record of executions.
    pub path: PathBuf,
    pub log_dir: PathBuf,
    pub pipelines: HashMap<String, LocalPipeline>,
    /// Runs of one name in all, when interruptions keep stopping it.
    pub max_attempts: u32,
    /// A base URL that, with an execution's name appended, shows it to a person.
    pub details_url: Option<String>,
}

/// What a restart found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Runs a stopped daemon left behind, now recorded as interrupted (their
    /// processes, if any were left, stopped).
    pub interrupted: usize,
    /// Runs recorded but never started: their records were removed, so that the next
    /// start of the name runs it.
    pub never_started: usize,
    /// Processes stopped.
    pub processes_stopped: usize,
}

/// Runs pipelines as local processes.
pub struct LocalExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    store: crate::sqlite::Shared,
    /// Replaced whole by a reload.
    pipelines: arc_swap::ArcSwap<HashMap<String, LocalPipeline>>,
    log_dir: PathBuf,
    max_attempts: u32,
    details_url: Option<String>,
    /// This daemon, as recorded in the runs it starts.
    identity: String,
    /// The tasks that wait for running processes, so shutdown can wait for them.
    running: Mutex<JoinSet<()>>,
}

/// What the record says a start should do.
enum Claim {
    /// Run `name` as attempt `attempt`; its `starting` record is written.
    Run {
        name: ExecutionName,
        attempt: u32,
        run_id: String,
    },
    /// The name exists (running or ended); nothing to run.
    Existing(String),
    /// The daemon running the latest run is gone: recover it first.
    Orphaned(LatestRun),
    /// Interrupted `attempts` times already.
    Exhausted { attempts: u32 },
}

impl LocalExecutor {
    /// Opens the execution records. Nothing is changed: a worker calls
    /// [`LocalExecutor::recover`] before it starts anything.
    pub async fn open(settings: LocalSettings) -> Result<LocalExecutor, StoreError> {
        let store_error = |message: String| StoreError {
            path: settings.path.clone(),
            message,
        };
        let owned_path = settings.path.clone();
        let connection = tokio::task::spawn_blocking(move || open_store(&owned_path))
            .await
            .map_err(|error| store_error(error.to_string()))?
            .map_err(|error| store_error(error.to_string()))?;
        tokio::fs::create_dir_all(&settings.log_dir)
            .await
            .map_err(|error| {
                store_error(format!(
                    "cannot create {}: {error}",
                    settings.log_dir.display()
                ))
            })?;
        Ok(LocalExecutor {
            inner: Arc::new(Inner {
                store: crate::sqlite::Shared::new(connection),
                pipelines: arc_swap::ArcSwap::from_pointee(settings.pipelines),
                log_dir: settings.log_dir,
                max_attempts: settings.max_attempts.max(1),
                details_url: settings.details_url,
                identity: ProcessIdentity::current().to_text(),
                running: Mutex::new(JoinSet::new()),
            }),
        })
    }

    /// Replaces what each pipeline runs (a reload); runs in progress keep theirs.
    pub fn set_pipelines(&self, pipelines: HashMap<String, LocalPipeline>) {
        self.inner.pipelines.store(Arc::new(pipelines));
    }

    /// Settles the runs that a stopped daemon left `starting` or `running`: stops any
    /// process of theirs that is still there, records them as interrupted (so their
    /// next start runs them again) or, when they never started, removes their record.
    /// Runs of a daemon that still lives (another worker on the same file) are left
    /// alone.
    pub async fn recover(&self) -> Result<Recovery, ExecutorError> {
        let unfinished = with_store(&self.inner.store, |connection| {
            connection
                .prepare(&format!(
                    "SELECT {LATEST_RUN_COLUMNS} FROM executions
                     WHERE status IN ('starting', 'running')"
                ))?
                .query_map([], latest_run)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await?;
        let mut recovery = Recovery::default();
        for run in unfinished {
            if owner_liveness(run.owner.as_deref()) != Liveness::Dead {
                continue;
            }
            let (stopped, never_started) = self.inner.recover_run(&run).await?;
            recovery.processes_stopped += stopped;
            if never_started {
                recovery.never_started += 1;
            } else {
                recovery.interrupted += 1;
            }
        }
        if recovery != Recovery::default() {
            tracing::warn!(
                interrupted = recovery.interrupted,
                never_started = recovery.never_started,
                processes_stopped = recovery.processes_stopped,
                "Settled the executions a stopped daemon left unfinished; interrupted ones run again when their jobs come back."
            );
        }
        Ok(recovery)
    }

    /// The most recent runs, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<ExecutionRecord>, ExecutorError> {
        with_store(&self.inner.store, move |connection| {
            recent(connection, limit)
        })
        .await
    }

    /// Waits up to `grace` for running executions, then kills what still runs and
    /// records it as interrupted, so that it runs again when its job comes back.
    pub async fn shutdown(&self, grace: Duration) {
        let mut running = std::mem::take(&mut *self.inner.running.lock().expect("running lock"));
        let waited = tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                count = running.len(),
                "Stopping local executions that outlived the shutdown grace period; they run again as new attempts when their jobs come back."
            );
            // Aborting drops each task's process handle; the task's guard kills the
            // process group.
            running.shutdown().await;
        }
        let identity = self.inner.identity.clone();
        let result = with_store(&self.inner.store, move |connection| {
            connection.execute(
                "UPDATE executions SET status = 'interrupted', ended_at = ?2,
                     error = 'stopped by a daemon shutdown'
                 WHERE status IN ('starting', 'running') AND owner = ?1",
                params![identity, now_ms()],
            )
        })
        .await;
        if let Err(error) = result {
            tracing::error!(error = %Chain(&error), "Could not record interrupted executions.");
        }
    }
}

impl Inner {
    fn log_path(&self, name: &ExecutionName) -> PathBuf {
        self.log_dir.join(format!("{}.log", name.as_str()))
    }

    /// Decides, in one transaction, what a start of `request` does.
    async fn claim(&self, request: &ExecutionRequest) -> Result<Claim, ExecutorError> {
        let planned = request.name.clone();
        let identity = self.identity.clone();
        let max_attempts = self.max_attempts;
        // Moved into the store's thread.
        let request = request.clone();
        let log_dir = self.log_dir.clone();
        with_store(&self.store, move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let latest = transaction
                .query_row(
                    &format!(
                        "SELECT {LATEST_RUN_COLUMNS} FROM executions WHERE planned_name = ?1
                         ORDER BY attempt DESC LIMIT 1"
                    ),
                    [planned.as_str()],
                    latest_run,
                )
                .optional()?;
            let attempt = match latest {
                None => 1,
                Some(run) => match run.status {
                    RunStatus::Starting | RunStatus::Running => {
                        let ours = run.owner.as_deref() == Some(identity.as_str());
                        return Ok(
                            if ours || owner_liveness(run.owner.as_deref()) != Liveness::Dead {
                                Claim::Existing(run.name)
                            } else {
                                Claim::Orphaned(run)
                            },
                        );
                    }
                    RunStatus::Succeeded | RunStatus::Failed | RunStatus::TimedOut => {
                        return Ok(Claim::Existing(run.name));
                    }
                    RunStatus::Interrupted if run.attempt >= max_attempts => {
                        return Ok(Claim::Exhausted {
                            attempts: run.attempt,
                        });
                    }
                    RunStatus::Interrupted => run.attempt + 1,
                },
            };
            let name = planned.attempt(attempt);
            let log_path = log_dir.join(format!("{}.log", name.as_str()));
            let run_id = uuid::Uuid::new_v4().simple().to_string();
            transaction.execute(
                "INSERT INTO executions
                     (name, planned_name, attempt, pipeline, environment, action, status, input,
                      started_at, log_path, owner_pid, owner, run_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'starting', ?7, ?8, ?9, 0, ?10, ?11)",
                params![
                    name.as_str(),
                    planned.as_str(),
                    attempt,
                    request.pipeline,
                    request.environment,
                    request.action.as_str(),
                    request.input.as_str(),
                    now_ms(),
                    log_path.display().to_string(),
                    identity,
                    run_id,
                ],
            )?;
            transaction.commit()?;
            Ok(Claim::Run {
                name,
                attempt,
                run_id,
            })
        })
        .await
    }

    /// Stops what is left of a run whose daemon is gone and records the outcome:
    /// interrupted, or (a `starting` run whose process never began) removed. Returns
    /// how many processes were stopped and whether the run never started.
    async fn start(self: Arc<Self>, request: ExecutionRequest) -> Result<Started, ExecutorError> {
        let Some(pipeline) = self.pipelines.load().get(&request.pipeline).cloned() else {
            return Err(ExecutorError::permanent(format!(
                "pipeline {} has no local command",
                request.pipeline
            )));
        };
        let (name, attempt, run_id) = loop {
            match self.claim(&request).await? {
                Claim::Run {
                    name,
                    attempt,
                    run_id,
                } => break (name, attempt, run_id),
                Claim::Existing(name) => return Ok(Started::Existing(name)),
                Claim::Exhausted { attempts } => {
                    return Err(ExecutorError::permanent(format!(
                        "execution {} was interrupted {attempts} time(s) (max_attempts = {}); it is not run again",
                        request.name, self.max_attempts
                    )));
                }
                Claim::Orphaned(run) => {
                    self.recover_run(&run).await?;
                }
            }
        };
        if attempt > 1 {
            tracing::warn!(execution = %request.name, run = %name, attempt, "Running an interrupted execution again.");
        }

        let log_path = self.log_path(&name);
        let run = Run {
            name: &name,
            attempt,
            run_id: &run_id,
            log_path: &log_path,
        };
        let spawned = spawn_command(&pipeline, &request, &run).await;
        let mut child = match spawned {
            Ok(child) => child,
            Err(SpawnError::Transient(message)) => {
                // Nothing ran: forget the record, so the retry runs this name.
                let key = name.to_string();
                with_store(&self.store, move |connection| {
                    connection.execute(
                        "DELETE FROM executions WHERE name = ?1 AND status = 'starting'",
                        [&key],
                    )
                })
                .await?;
                return Err(ExecutorError::retryable(format!(
                    "could not start {name}: {message}"
                )));
            }
            Err(SpawnError::Permanent(message)) => {
                tracing::error!(execution = %name, error = %message, "Could not start a local execution.");
                finish(&self.store, &name, RunStatus::Failed, None, Some(message)).await;
                return Ok(Started::New(name.to_string()));
            }
        };
        let pid = child.id();
        let pid_start = pid.and_then(process::start_ticks);
        let key = name.to_string();
        let recorded = with_store(&self.store, move |connection| {
            connection.execute(
                "UPDATE executions SET status = 'running', pid = ?2, pid_start = ?3
                 WHERE name = ?1 AND status = 'starting'",
                params![key, pid, pid_start.map(|ticks| ticks as i64)],
            )
        })
        .await;
        if let Err(error) = recorded {
            // The run is recorded as starting, with its header in the log: a restart
            // still finds its processes by name.
            tracing::warn!(execution = %name, error = %Chain(&error), "Could not record a local execution's process.");
        }

        let mut stdin = child.stdin.take();
        let store = self.store.clone();
        let input = request.input.as_str().to_string();
        let task_name = name.clone();
        let mut killer = GroupKiller { pid };
        let mut running = self.running.lock().expect("running lock");
        // Forget the tasks that ended, so the set holds only what runs.
        while running.try_join_next().is_some() {}
        running.spawn(async move {
            // A command that does not read its input must not block us: a broken pipe
            // here is the command's business.
            if let Some(stdin) = stdin.as_mut() {
                let _ = stdin.write_all(input.as_bytes()).await;
            }
            drop(stdin);
            let outcome = tokio::time::timeout(pipeline.timeout, child.wait()).await;
            let (status, code, error) = match outcome {
                Ok(Ok(exit)) if exit.success() => (RunStatus::Succeeded, exit.code(), None),
                Ok(Ok(exit)) => (
                    RunStatus::Failed,
                    exit.code(),
                    Some(match exit.code() {
                        Some(code) => format!("exited with status {code}"),
                        None => "killed by a signal".to_string(),
                    }),
                ),
                Ok(Err(error)) => (
                    RunStatus::Failed,
                    None,
                    Some(format!("cannot wait for it: {error}")),
                ),
                Err(_) => {
                    killer.kill();
                    let _ = child.wait().await;
                    (
                        RunStatus::TimedOut,
                        None,
                        Some(format!("ran longer than {} s", pipeline.timeout.as_secs())),
                    )
                }
            };
            killer.disarm();
            tracing::info!(execution = %task_name, status = status.as_str(), "A local execution ended.");
            finish(&store, &task_name, status, code, error).await;
        });
        Ok(Started::New(name.to_string()))
    }
}

#[async_trait]
impl Executor for LocalExecutor {
    async fn start(&self, request: &ExecutionRequest) -> Result<Started, ExecutorError> {
        // The start runs as a task of its own, so that a caller that stops waiting (a
        // worker shutting down) cannot leave a record half written: the record, the
        // process and the task that waits for it are all there, or none is.
        tokio::spawn(self.inner.clone().start(request.clone()))
            .await
            .map_err(|error| ExecutorError::retryable_from("the start task failed", error))?
    }

    fn outlives_this_process(&self) -> bool {
        false
    }

    fn link(&self, id: &str) -> Option<String> {
        self.inner
            .details_url
            .as_ref()
            .map(|base| format!("{base}{id}"))
    }

    async fn describe(
        &self,
        _pipeline: &str,
        name: &ExecutionName,
    ) -> Result<Execution, ExecutorError> {
        let key = name.to_string();
        let row = with_store(&self.inner.store, move |connection| {
            connection
                .query_row(
                    "SELECT name, status, error FROM executions WHERE planned_name = ?1
                     ORDER BY attempt DESC LIMIT 1",
                    [&key],
                    |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, Option<String>>(2)?,
                        ))
                    },
                )
                .optional()
        })
        .await?;
        let Some((run, status, error)) = row else {
            return Err(ExecutorError::not_found(format!(
                "no execution is named {name}"
            )));
        };
        Ok(Execution {
            id: run,
            status: RunStatus::parse(&status).execution_status(),
            detail: error,
        })
    }
}
