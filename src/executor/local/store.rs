//! The record of runs: a SQLite file, one row per run (an attempt of an execution),
//! written before its process starts and when it ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::sqlite::Shared;
use rusqlite::{Connection, params};

use crate::error::Chain;
use crate::execution::name::ExecutionName;
use crate::executor::{ExecutionStatus, ExecutorError};

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

    pub(super) fn parse(text: &str) -> RunStatus {
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

    pub(super) fn execution_status(self) -> ExecutionStatus {
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
    pub(super) path: PathBuf,
    pub(super) message: String,
}

pub(super) use crate::clock::now_ms;

/// Runs a closure on the store off the async threads, its failures as the executor's.
pub(super) async fn with_store<T: Send + 'static>(
    store: &Shared,
    work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, ExecutorError> {
    store
        .run(work)
        .await
        .map_err(|error| ExecutorError::retryable_from("the execution store's task failed", error))?
        .map_err(|error| ExecutorError::retryable_from("execution store", error))
}

/// The latest run of a planned name, as the start and recovery paths need it.
#[derive(Debug, Clone)]
pub(super) struct LatestRun {
    pub(super) name: String,
    pub(super) attempt: u32,
    pub(super) status: RunStatus,
    pub(super) owner: Option<String>,
    pub(super) pid: Option<u32>,
    pub(super) pid_start: Option<u64>,
    pub(super) log_path: String,
    pub(super) run_id: Option<String>,
}

pub(super) const LATEST_RUN_COLUMNS: &str =
    "name, attempt, status, owner, pid, pid_start, log_path, run_id";

pub(super) fn latest_run(row: &rusqlite::Row<'_>) -> rusqlite::Result<LatestRun> {
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

/// The schema version this release writes (`PRAGMA user_version`).
pub(super) const SCHEMA_VERSION: i64 = 2;

pub(super) fn open_store(path: &Path) -> rusqlite::Result<Connection> {
    let connection = crate::sqlite::open_durable(path)?;
    // The tables are made, the version read and the file upgraded by one writer at a
    // time: processes opening a file together must neither add the same columns twice
    // nor find the file locked by a reader that became a writer.
    connection.execute_batch("BEGIN IMMEDIATE")?;
    let upgraded = (|| {
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
                "ALTER TABLE executions ADD COLUMN planned_name TEXT;
                 ALTER TABLE executions ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
                 ALTER TABLE executions ADD COLUMN owner TEXT;
                 ALTER TABLE executions ADD COLUMN pid INTEGER;
                 ALTER TABLE executions ADD COLUMN pid_start INTEGER;
                 ALTER TABLE executions ADD COLUMN run_id TEXT;
                 UPDATE executions SET planned_name = name WHERE planned_name IS NULL;
                 CREATE INDEX IF NOT EXISTS executions_by_planned_name
                     ON executions (planned_name, attempt);
                 PRAGMA user_version = 2;",
            )?;
        } else if version > SCHEMA_VERSION {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "the execution record was written by a newer release (schema {version}, this release knows {SCHEMA_VERSION})"
            )));
        }
        Ok(())
    })();
    match upgraded {
        Ok(()) => connection.execute_batch("COMMIT")?,
        Err(error) => {
            let _ = connection.execute_batch("ROLLBACK");
            return Err(error);
        }
    }
    Ok(connection)
}

pub(super) fn recent(
    connection: &Connection,
    limit: usize,
) -> rusqlite::Result<Vec<ExecutionRecord>> {
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

/// Records how a run ended. The outcome is known only here, so a store that cannot be
/// written (a full disk) is tried again until it can: a run left `running` would hold
/// its lane for ever. A shutdown aborts the wait, and the run is then recorded as
/// interrupted.
pub(super) async fn finish(
    store: &Shared,
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
                    tracing::error!(execution = %name, error = %Chain(&error), "Could not record the end of an execution; trying again.");
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
    /// Processes opening a new record together (a daemon restarted while its old
    /// process still stops) all open it: one upgrades it, the others find it upgraded.
    #[test]
    fn processes_opening_a_new_record_together_all_open_it() {
        for _ in 0..20 {
            let directory = tempfile::tempdir().unwrap();
            let path = directory.path().join("executions.db");
            let opening: Vec<_> = (0..4)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || super::open_store(&path).map(|_| ()))
                })
                .collect();
            for opened in opening {
                opened.join().unwrap().unwrap();
            }
        }
    }
}
