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

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::task::JoinSet;

use super::{Execution, ExecutionStatus, Executor, ExecutorError, Started};
use crate::execution::ExecutionRequest;
use crate::execution::name::ExecutionName;
use crate::process::{self, Liveness, ProcessIdentity};

/// The environment variable that carries a run's own id (random, recorded with the
/// run) to its processes: how a restarted daemon finds the processes a crashed one left
/// behind, and only those (another daemon on the machine may run the same execution
/// names).
const RUN_ID_VARIABLE: &str = "GITDISPATCH_RUN_ID";

/// How long a restarted daemon waits for the processes it stopped to be gone.
const STOP_WAIT: Duration = Duration::from_secs(10);

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
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Recorded; the process is being started.
    Starting,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    /// Stopped by our shutdown or found orphaned after a crash; runs again.
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Starting => "starting",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Interrupted => "interrupted",
        }
    }

    fn parse(text: &str) -> RunStatus {
        match text {
            "starting" => RunStatus::Starting,
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "timed_out" => RunStatus::TimedOut,
            "interrupted" => RunStatus::Interrupted,
            // "failed", and "aborted" from an earlier release.
            _ => RunStatus::Failed,
        }
    }

    fn execution_status(self) -> ExecutionStatus {
        match self {
            RunStatus::Starting | RunStatus::Running => ExecutionStatus::Running,
            RunStatus::Succeeded => ExecutionStatus::Succeeded,
            RunStatus::Failed => ExecutionStatus::Failed,
            RunStatus::TimedOut => ExecutionStatus::TimedOut,
            RunStatus::Interrupted => ExecutionStatus::Interrupted,
        }
    }
}

/// One recorded run, as `gitdispatch executions` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionRecord {
    /// This run's name (the planned name for the first attempt).
    pub name: String,
    /// The name the planner gave the execution.
    pub planned_name: String,
    pub attempt: u32,
    pub pipeline: String,
    pub environment: String,
    pub action: String,
    pub status: RunStatus,
    pub input: String,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub log_path: String,
}

#[derive(Debug, thiserror::Error)]
#[error("local executor store {path}: {message}")]
pub struct StoreError {
    path: PathBuf,
    message: String,
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
    store: Arc<Mutex<Connection>>,
    pipelines: HashMap<String, LocalPipeline>,
    log_dir: PathBuf,
    max_attempts: u32,
    /// This daemon, as recorded in the runs it starts.
    identity: String,
    /// The tasks that wait for running processes, so shutdown can wait for them.
    running: Mutex<JoinSet<()>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// Runs a closure on the store off the async threads.
async fn with_store<T: Send + 'static>(
    store: &Arc<Mutex<Connection>>,
    work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, ExecutorError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let mut connection = store.lock().expect("local executor store lock");
        work(&mut connection)
    })
    .await
    .map_err(|error| ExecutorError::Retryable(format!("store task failed: {error}")))?
    .map_err(|error| ExecutorError::Retryable(format!("execution store: {error}")))
}

/// The latest run of a planned name, as the start and recovery paths need it.
#[derive(Debug, Clone)]
struct LatestRun {
    name: String,
    attempt: u32,
    status: RunStatus,
    owner: Option<String>,
    pid: Option<u32>,
    pid_start: Option<u64>,
    log_path: String,
    run_id: Option<String>,
}

const LATEST_RUN_COLUMNS: &str = "name, attempt, status, owner, pid, pid_start, log_path, run_id";

fn latest_run(row: &rusqlite::Row<'_>) -> rusqlite::Result<LatestRun> {
    Ok(LatestRun {
        name: row.get(0)?,
        attempt: row.get(1)?,
        status: RunStatus::parse(&row.get::<_, String>(2)?),
        owner: row.get(3)?,
        pid: row.get(4)?,
        pid_start: row.get::<_, Option<i64>>(5)?.map(|ticks| ticks as u64),
        log_path: row.get(6)?,
        run_id: row.get(7)?,
    })
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
                store: Arc::new(Mutex::new(connection)),
                pipelines: settings.pipelines,
                log_dir: settings.log_dir,
                max_attempts: settings.max_attempts.max(1),
                identity: ProcessIdentity::current().to_text(),
                running: Mutex::new(JoinSet::new()),
            }),
        })
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
            tracing::error!(%error, "Could not record interrupted executions.");
        }
    }
}

/// Whether the daemon that wrote a record still runs. Records of an earlier release
/// carry no identity: their daemon is gone if this one runs.
fn owner_liveness(owner: Option<&str>) -> Liveness {
    match owner.and_then(ProcessIdentity::parse) {
        Some(identity) => identity.liveness(),
        None => Liveness::Dead,
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
        let record = (
            request.pipeline.clone(),
            request.environment.clone(),
            request.action.as_str().to_string(),
            request.input.as_str().to_string(),
        );
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
                    record.0,
                    record.1,
                    record.2,
                    record.3,
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
    async fn recover_run(&self, run: &LatestRun) -> Result<(usize, bool), ExecutorError> {
        let leftover = run.clone();
        let (stopped, began) = tokio::task::spawn_blocking(move || stop_leftovers(&leftover))
            .await
            .map_err(|error| ExecutorError::Retryable(format!("recovery task failed: {error}")))?;
        let never_started = run_never_started(run.status, stopped, began);
        let name = run.name.clone();
        with_store(&self.store, move |connection| {
            if never_started {
                connection.execute(
                    "DELETE FROM executions WHERE name = ?1 AND status = 'starting'",
                    [&name],
                )?;
            } else {
                connection.execute(
                    "UPDATE executions SET status = 'interrupted', ended_at = ?2,
                         error = 'the daemon running it stopped before it ended'
                     WHERE name = ?1 AND status IN ('starting', 'running')",
                    params![name, now_ms()],
                )?;
            }
            Ok(())
        })
        .await?;
        if stopped > 0 {
            tracing::warn!(execution = %run.name, processes = stopped, "Stopped the processes of an execution a stopped daemon left behind.");
        }
        Ok((stopped, never_started))
    }

    async fn start(self: Arc<Self>, request: ExecutionRequest) -> Result<Started, ExecutorError> {
        let Some(pipeline) = self.pipelines.get(&request.pipeline).cloned() else {
            return Err(ExecutorError::Permanent(format!(
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
                    return Err(ExecutorError::Permanent(format!(
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
                return Err(ExecutorError::Retryable(format!(
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
            tracing::warn!(execution = %name, %error, "Could not record a local execution's process.");
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

/// Whether a run a stopped daemon left behind never began: it was still `starting`,
/// nothing of it was found running, and its process never wrote the header that
/// precedes the command.
fn run_never_started(status: RunStatus, stopped: usize, began: bool) -> bool {
    status == RunStatus::Starting && stopped == 0 && !began
}

/// Stops every process of a run that a gone daemon left behind and waits for them to
/// be gone. Returns how many were stopped, and whether the run's process ever began
/// (its log has the header line).
fn stop_leftovers(run: &LatestRun) -> (usize, bool) {
    let mut marked = match &run.run_id {
        Some(run_id) => process::marked_with(RUN_ID_VARIABLE, run_id),
        // A run of an earlier release: its processes carry no id.
        None => Vec::new(),
    };
    // The group leader, if it still is the process that was started (its start time
    // tells it from another process that got its pid since).
    let leader = match (run.pid, run.pid_start) {
        (Some(pid), Some(start)) if process::start_ticks(pid) == Some(start) => Some(pid),
        _ => None,
    };
    if let Some(leader) = leader {
        if !marked.contains(&leader) {
            marked.push(leader);
        }
        process::kill_group(leader);
    }
    for pid in &marked {
        // A process that stayed in the run's group goes with it; one that moved away
        // is stopped by itself.
        match (process::process_group(*pid), run.pid) {
            (Some(group), Some(leader)) if group == leader => process::kill_group(group),
            _ => process::kill(*pid),
        }
    }
    let deadline = std::time::Instant::now() + STOP_WAIT;
    while marked.iter().any(|pid| process::is_running(*pid)) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let began = std::fs::metadata(&run.log_path).is_ok_and(|metadata| metadata.len() > 0);
    (marked.len(), began)
}

/// The schema version this release writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

fn open_store(path: &Path) -> rusqlite::Result<Connection> {
    let connection = crate::sqlite::open_durable(path)?;
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS executions (
             name TEXT PRIMARY KEY,
             pipeline TEXT NOT NULL,
             environment TEXT NOT NULL,
             action TEXT NOT NULL,
             status TEXT NOT NULL,
             input TEXT NOT NULL,
             started_at INTEGER NOT NULL,
             ended_at INTEGER,
             exit_code INTEGER,
             error TEXT,
             log_path TEXT NOT NULL,
             owner_pid INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS executions_by_start ON executions (started_at);",
    )?;
    let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version < 2 {
        // Version 1 kept one run per name and knew the daemon by its pid only.
        connection.execute_batch(
            "BEGIN IMMEDIATE;
             ALTER TABLE executions ADD COLUMN planned_name TEXT;
             ALTER TABLE executions ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
             ALTER TABLE executions ADD COLUMN owner TEXT;
             ALTER TABLE executions ADD COLUMN pid INTEGER;
             ALTER TABLE executions ADD COLUMN pid_start INTEGER;
             ALTER TABLE executions ADD COLUMN run_id TEXT;
             UPDATE executions SET planned_name = name WHERE planned_name IS NULL;
             CREATE INDEX IF NOT EXISTS executions_by_planned_name
                 ON executions (planned_name, attempt);
             PRAGMA user_version = 2;
             COMMIT;",
        )?;
    } else if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the execution record was written by a newer release (schema {version}, this release knows {SCHEMA_VERSION})"
        )));
    }
    Ok(connection)
}

fn recent(connection: &Connection, limit: usize) -> rusqlite::Result<Vec<ExecutionRecord>> {
    connection
        .prepare(
            "SELECT name, planned_name, attempt, pipeline, environment, action, status, input,
                    started_at, ended_at, exit_code, error, log_path
             FROM executions ORDER BY started_at DESC, name LIMIT ?1",
        )?
        .query_map([limit as i64], |row| {
            Ok(ExecutionRecord {
                name: row.get(0)?,
                planned_name: row.get(1)?,
                attempt: row.get(2)?,
                pipeline: row.get(3)?,
                environment: row.get(4)?,
                action: row.get(5)?,
                status: RunStatus::parse(&row.get::<_, String>(6)?),
                input: row.get(7)?,
                started_at_ms: row.get(8)?,
                ended_at_ms: row.get(9)?,
                exit_code: row.get(10)?,
                error: row.get(11)?,
                log_path: row.get(12)?,
            })
        })?
        .collect()
}

/// Kills a process group when dropped, unless disarmed: a timed-out execution, or one
/// whose waiting task was aborted at shutdown, takes its children with it.
struct GroupKiller {
    pid: Option<u32>,
}

impl GroupKiller {
    /// The group leader ended on its own: there is no group left to kill by its pid.
    fn disarm(&mut self) {
        self.pid = None;
    }

    fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            // The group is the child's own (process_group(0)).
            process::kill_group(pid);
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
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
            .map_err(|error| ExecutorError::Retryable(format!("start task failed: {error}")))?
    }

    fn outlives_this_process(&self) -> bool {
        false
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
            return Err(ExecutorError::Permanent(format!(
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

/// Why a command could not be started.
enum SpawnError {
    /// The machine is short of something for now (file descriptors, processes,
    /// memory, disk): nothing ran, and a later start may succeed.
    Transient(String),
    /// The command itself cannot run (no such program, not executable).
    Permanent(String),
}

/// Whether a failure to start a process says something about the command (it will
/// fail the same way every time) rather than about the machine's state.
fn is_permanent_spawn_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::NotFound | ErrorKind::PermissionDenied
    ) || matches!(
        error.raw_os_error(),
        Some(libc::ENOEXEC | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG)
    )
}

/// Starts the command in its own process group with output to the log file. Before
/// the command executes, its process writes a header line to the log: the proof, after
/// a crash, that the run began.
/// One run to start.
struct Run<'a> {
    name: &'a ExecutionName,
    attempt: u32,
    run_id: &'a str,
    log_path: &'a Path,
}

async fn spawn_command(
    pipeline: &LocalPipeline,
    request: &ExecutionRequest,
    run: &Run<'_>,
) -> Result<tokio::process::Child, SpawnError> {
    let Run {
        name,
        attempt,
        run_id,
        log_path,
    } = *run;
    // Whatever keeps the log from being created (no descriptors, a full disk, a
    // missing directory) is the machine's state, not the command's.
    if let Some(parent) = log_path.parent() {
        let _ = tokio::fs::create_dir_all(parent).await;
    }
    let log = tokio::fs::File::create(log_path)
        .await
        .map_err(|error| {
            SpawnError::Transient(format!(
                "cannot create log file {}: {error}",
                log_path.display()
            ))
        })?
        .into_std()
        .await;
    let log_err = log
        .try_clone()
        .map_err(|error| SpawnError::Transient(format!("cannot share log file: {error}")))?;
    let header = format!(
        "[gitdispatch] {} attempt {attempt}: {}\n",
        name.as_str(),
        pipeline.command.join(" ")
    )
    .into_bytes();
    let mut command = Command::new(&pipeline.command[0]);
    command
        .args(&pipeline.command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .env("GITDISPATCH_EXECUTION_NAME", name.as_str())
        .env(RUN_ID_VARIABLE, run_id)
        .env("GITDISPATCH_PLANNED_NAME", request.name.as_str())
        .env("GITDISPATCH_ATTEMPT", attempt.to_string())
        .env("GITDISPATCH_PIPELINE", &request.pipeline)
        .env("GITDISPATCH_ENVIRONMENT", &request.environment)
        .env("GITDISPATCH_ACTION", request.action.as_str())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: one write(2) of a buffer prepared before the
    // fork, to the log file already set up as the child's stdout, and signal(2) to give
    // the command the default SIGXFSZ the daemon ignores for itself.
    unsafe {
        command.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_DFL);
            libc::write(1, header.as_ptr().cast(), header.len());
            Ok(())
        });
    }
    command.spawn().map_err(|error| {
        let message = format!("cannot run {:?}: {error}", pipeline.command[0]);
        if is_permanent_spawn_error(&error) {
            SpawnError::Permanent(message)
        } else {
            SpawnError::Transient(message)
        }
    })
}

/// Records how a run ended. The outcome is known only here, so a store that cannot be
/// written (a full disk) is tried again until it can: a run left `running` would hold
/// its lane for ever. A shutdown aborts the wait, and the run is then recorded as
/// interrupted.
async fn finish(
    store: &Arc<Mutex<Connection>>,
    name: &ExecutionName,
    status: RunStatus,
    code: Option<i32>,
    error: Option<String>,
) {
    let mut failures = 0;
    loop {
        let key = name.to_string();
        let error = error.clone();
        let result = with_store(store, move |connection| {
            connection.execute(
                "UPDATE executions SET status = ?2, exit_code = ?3, error = ?4, ended_at = ?5
                 WHERE name = ?1",
                params![key, status.as_str(), code, error, now_ms()],
            )
        })
        .await;
        match result {
            Ok(_) => return,
            Err(error) => {
                failures += 1;
                if failures == 1 {
                    tracing::error!(execution = %name, %error, "Could not record the end of an execution; trying again.");
                }
                tokio::time::sleep(crate::retry::backoff(
                    failures,
                    Duration::from_millis(100),
                    Duration::from_secs(5),
                ))
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_starting_run_with_no_trace_never_started() {
        assert!(run_never_started(RunStatus::Starting, 0, false));
        assert!(
            !run_never_started(RunStatus::Starting, 0, true),
            "its header is in the log"
        );
        assert!(
            !run_never_started(RunStatus::Starting, 1, false),
            "a process was found"
        );
        assert!(!run_never_started(RunStatus::Running, 0, false));
    }

    #[test]
    fn only_the_command_itself_makes_a_spawn_failure_permanent() {
        let permanent = std::io::Error::from(ErrorKind::NotFound);
        assert!(is_permanent_spawn_error(&permanent));
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::EAGAIN,
            libc::ENOMEM,
            libc::ENOSPC,
        ] {
            assert!(
                !is_permanent_spawn_error(&std::io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }
}
