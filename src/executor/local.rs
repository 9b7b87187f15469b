//! The local executor: runs a pipeline's `command` on this machine.
//!
//! The execution input goes to the command on stdin and its name, pipeline and
//! environment in `GITDISPATCH_*` variables; event data never reaches its command line.
//! Output goes to `<log_dir>/<execution name>.log` (names are `[A-Za-z0-9_-]`, so safe
//! as file names). Every execution is recorded in SQLite, keyed by name: the record is
//! written before the command starts, so a repeated start finds it and runs nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::task::JoinSet;

use super::{Execution, ExecutionStatus, Executor, ExecutorError, Started};
use crate::plan::ExecutionRequest;
use crate::plan::name::ExecutionName;

/// How one pipeline runs locally.
#[derive(Debug, Clone)]
pub struct LocalPipeline {
    /// Program and arguments.
    pub command: Vec<String>,
    /// The process group is killed after this long.
    pub timeout: Duration,
}

/// One recorded execution, as `gitdispatch executions` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionRecord {
    pub name: String,
    pub pipeline: String,
    pub environment: String,
    pub action: String,
    /// `running`, `succeeded`, `failed`, `timed_out`, `aborted` or `interrupted`.
    pub status: String,
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

/// Runs pipelines as local processes.
pub struct LocalExecutor {
    store: Arc<Mutex<Connection>>,
    pipelines: HashMap<String, LocalPipeline>,
    log_dir: PathBuf,
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
    work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, ExecutorError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let connection = store.lock().expect("local executor store lock");
        work(&connection)
    })
    .await
    .map_err(|error| ExecutorError::Retryable(format!("store task failed: {error}")))?
    .map_err(|error| ExecutorError::Retryable(format!("execution store: {error}")))
}

impl LocalExecutor {
    /// Opens the execution records and marks executions whose process is gone (a crash
    /// or a kill of a previous daemon) as `interrupted`.
    pub async fn open(
        path: &Path,
        log_dir: &Path,
        pipelines: HashMap<String, LocalPipeline>,
    ) -> Result<LocalExecutor, StoreError> {
        let store_error = |message: String| StoreError {
            path: path.to_path_buf(),
            message,
        };
        let owned_path = path.to_path_buf();
        let connection = tokio::task::spawn_blocking(move || open_store(&owned_path))
            .await
            .map_err(|error| store_error(error.to_string()))?
            .map_err(|error| store_error(error.to_string()))?;
        tokio::fs::create_dir_all(log_dir).await.map_err(|error| {
            store_error(format!("cannot create {}: {error}", log_dir.display()))
        })?;
        Ok(LocalExecutor {
            store: Arc::new(Mutex::new(connection)),
            pipelines,
            log_dir: log_dir.to_path_buf(),
            running: Mutex::new(JoinSet::new()),
        })
    }

    /// The most recent executions, newest first.
    pub async fn recent(&self, limit: usize) -> Result<Vec<ExecutionRecord>, ExecutorError> {
        with_store(&self.store, move |connection| recent(connection, limit)).await
    }

    /// Waits up to `grace` for running executions, then kills what still runs and
    /// records it as interrupted.
    pub async fn shutdown(&self, grace: Duration) {
        let mut running = std::mem::take(&mut *self.running.lock().expect("running lock"));
        let waited = tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                count = running.len(),
                "Stopping local executions that outlived the shutdown grace period."
            );
            // Aborting drops each task's process handle; the task's guard kills the
            // process group.
            running.shutdown().await;
            let pid = std::process::id();
            let result = with_store(&self.store, move |connection| {
                connection.execute(
                    "UPDATE executions SET status = 'interrupted', ended_at = ?2,
                         error = 'stopped by a daemon shutdown'
                     WHERE status = 'running' AND owner_pid = ?1",
                    params![pid, now_ms()],
                )
            })
            .await;
            if let Err(error) = result {
                tracing::error!(%error, "Could not record interrupted executions.");
            }
        }
    }

    fn log_path(&self, name: &ExecutionName) -> PathBuf {
        self.log_dir.join(format!("{}.log", name.as_str()))
    }
}

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
    // A running execution whose daemon is gone was interrupted: its process may have
    // died with it, and nothing will record its end.
    let owners: Vec<u32> = connection
        .prepare("SELECT DISTINCT owner_pid FROM executions WHERE status = 'running'")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for owner in owners {
        let alive = owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists();
        if !alive {
            let count = connection.execute(
                "UPDATE executions SET status = 'interrupted', ended_at = ?2,
                     error = 'the daemon running it stopped before it ended'
                 WHERE status = 'running' AND owner_pid = ?1",
                params![owner, now_ms()],
            )?;
            tracing::warn!(
                count,
                "Marked executions left running by a stopped daemon as interrupted."
            );
        }
    }
    Ok(connection)
}

fn recent(connection: &Connection, limit: usize) -> rusqlite::Result<Vec<ExecutionRecord>> {
    connection
        .prepare(
            "SELECT name, pipeline, environment, action, status, input, started_at, ended_at,
                    exit_code, error, log_path
             FROM executions ORDER BY started_at DESC, name LIMIT ?1",
        )?
        .query_map([limit as i64], |row| {
            Ok(ExecutionRecord {
                name: row.get(0)?,
                pipeline: row.get(1)?,
                environment: row.get(2)?,
                action: row.get(3)?,
                status: row.get(4)?,
                input: row.get(5)?,
                started_at_ms: row.get(6)?,
                ended_at_ms: row.get(7)?,
                exit_code: row.get(8)?,
                error: row.get(9)?,
                log_path: row.get(10)?,
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
            // SAFETY: kill(2) with a negative pid signals a process group; it touches
            // no memory of ours. The group is the child's own (process_group(0)).
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            }
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
        let Some(pipeline) = self.pipelines.get(&request.pipeline).cloned() else {
            return Err(ExecutorError::Permanent(format!(
                "pipeline {} has no local command",
                request.pipeline
            )));
        };
        let name = request.name.clone();
        let log_path = self.log_path(&name);
        let record = (
            name.to_string(),
            request.pipeline.clone(),
            request.environment.clone(),
            request.action.as_str().to_string(),
            request.input.as_str().to_string(),
            log_path.display().to_string(),
        );
        let existing_input = with_store(&self.store, move |connection| {
            let inserted = connection.execute(
                "INSERT OR IGNORE INTO executions
                     (name, pipeline, environment, action, status, input, started_at, log_path, owner_pid)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7, ?8)",
                params![record.0, record.1, record.2, record.3, record.4, now_ms(), record.5, std::process::id()],
            )?;
            if inserted == 1 {
                return Ok(None);
            }
            connection
                .query_row(
                    "SELECT input FROM executions WHERE name = ?1",
                    [&record.0],
                    |row| row.get::<_, String>(0),
                )
                .optional()
        })
        .await?;
        if let Some(input) = existing_input {
            return if input == request.input.as_str() {
                Ok(Started::Existing(name.to_string()))
            } else {
                Err(ExecutorError::Permanent(format!(
                    "execution {name} already exists with another input"
                )))
            };
        }

        let spawned = spawn_command(&pipeline, request, &log_path).await;
        let (mut child, mut stdin) = match spawned {
            Ok(spawned) => spawned,
            Err(message) => {
                tracing::error!(execution = %name, error = %message, "Could not start a local execution.");
                finish(&self.store, &name, "failed", None, Some(message)).await;
                return Ok(Started::New(name.to_string()));
            }
        };
        let store = self.store.clone();
        let input = request.input.as_str().to_string();
        let task_name = name.clone();
        let mut killer = GroupKiller { pid: child.id() };
        self.running
            .lock()
            .expect("running lock")
            .spawn(async move {
                // A command that does not read its input must not block us: a broken
                // pipe here is the command's business.
                if let Some(stdin) = stdin.as_mut() {
                    let _ = stdin.write_all(input.as_bytes()).await;
                }
                drop(stdin);
                let outcome = tokio::time::timeout(pipeline.timeout, child.wait()).await;
                let (status, code, error) = match outcome {
                    Ok(Ok(exit)) if exit.success() => ("succeeded", exit.code(), None),
                    Ok(Ok(exit)) => (
                        "failed",
                        exit.code(),
                        Some(match exit.code() {
                            Some(code) => format!("exited with status {code}"),
                            None => "killed by a signal".to_string(),
                        }),
                    ),
                    Ok(Err(error)) => {
                        ("failed", None, Some(format!("cannot wait for it: {error}")))
                    }
                    Err(_) => {
                        killer.kill();
                        let _ = child.wait().await;
                        (
                            "timed_out",
                            None,
                            Some(format!("ran longer than {} s", pipeline.timeout.as_secs())),
                        )
                    }
                };
                killer.disarm();
                tracing::info!(execution = %task_name, status, "A local execution ended.");
                finish(&store, &task_name, status, code, error).await;
            });
        Ok(Started::New(name.to_string()))
    }

    async fn describe(
        &self,
        _pipeline: &str,
        name: &ExecutionName,
    ) -> Result<Execution, ExecutorError> {
        let key = name.to_string();
        let row = with_store(&self.store, move |connection| {
            connection
                .query_row(
                    "SELECT status, error FROM executions WHERE name = ?1",
                    [&key],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?)),
                )
                .optional()
        })
        .await?;
        let Some((status, error)) = row else {
            return Err(ExecutorError::Permanent(format!(
                "no execution is named {name}"
            )));
        };
        let status = match status.as_str() {
            "running" => ExecutionStatus::Running,
            "succeeded" => ExecutionStatus::Succeeded,
            "timed_out" => ExecutionStatus::TimedOut,
            "aborted" | "interrupted" => ExecutionStatus::Aborted,
            _ => ExecutionStatus::Failed,
        };
        Ok(Execution {
            id: name.to_string(),
            status,
            detail: error,
        })
    }
}

/// Starts the command in its own process group with output to the log file.
async fn spawn_command(
    pipeline: &LocalPipeline,
    request: &ExecutionRequest,
    log_path: &Path,
) -> Result<(tokio::process::Child, Option<tokio::process::ChildStdin>), String> {
    let log = tokio::fs::File::create(log_path)
        .await
        .map_err(|error| format!("cannot create log file {}: {error}", log_path.display()))?
        .into_std()
        .await;
    let log_err = log
        .try_clone()
        .map_err(|error| format!("cannot share log file: {error}"))?;
    let mut child = Command::new(&pipeline.command[0])
        .args(&pipeline.command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .env("GITDISPATCH_EXECUTION_NAME", request.name.as_str())
        .env("GITDISPATCH_PIPELINE", &request.pipeline)
        .env("GITDISPATCH_ENVIRONMENT", &request.environment)
        .env("GITDISPATCH_ACTION", request.action.as_str())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot run {:?}: {error}", pipeline.command[0]))?;
    let stdin = child.stdin.take();
    Ok((child, stdin))
}

async fn finish(
    store: &Arc<Mutex<Connection>>,
    name: &ExecutionName,
    status: &'static str,
    code: Option<i32>,
    error: Option<String>,
) {
    let key = name.to_string();
    let result = with_store(store, move |connection| {
        connection.execute(
            "UPDATE executions SET status = ?2, exit_code = ?3, error = ?4, ended_at = ?5
             WHERE name = ?1",
            params![key, status, code, error, now_ms()],
        )
    })
    .await;
    if let Err(error) = result {
        tracing::error!(execution = %name, %error, "Could not record the end of an execution.");
    }
}
