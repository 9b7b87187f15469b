//! After a crash: what a stopped daemon left `starting` or `running` is settled before
//! anything else runs. Its processes are found by their run's id (which survives pid
//! reuse) and stopped; the run is recorded interrupted, or, when its command never
//! began, its record is removed.

use std::time::Duration;

use rusqlite::params;

use super::Inner;
use super::spawn::RUN_ID_VARIABLE;
use super::store::{LatestRun, RunStatus, now_ms, with_store};
use crate::executor::ExecutorError;
use crate::process::{self, Liveness, ProcessIdentity};

/// How long a restarted daemon waits for the processes it stopped to be gone.
pub(super) const STOP_WAIT: Duration = Duration::from_secs(10);

/// Whether the daemon that wrote a record still runs. Records of an earlier release
/// carry no identity: their daemon is gone if this one runs.
pub(super) fn owner_liveness(owner: Option<&str>) -> Liveness {
    match owner.and_then(ProcessIdentity::parse) {
        Some(identity) => identity.liveness(),
        None => Liveness::Dead,
    }
}

impl Inner {
    pub(super) async fn recover_run(
        &self,
        run: &LatestRun,
    ) -> Result<(usize, bool), ExecutorError> {
        let leftover = run.clone();
        let (stopped, began) = tokio::task::spawn_blocking(move || stop_leftovers(&leftover))
            .await
            .map_err(|error| ExecutorError::retryable_from("the recovery task failed", error))?;
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
}

/// Whether a run a stopped daemon left behind never began: it was still `starting`,
/// nothing of it was found running, and its process never wrote the header that
/// precedes the command.
pub(super) fn run_never_started(status: RunStatus, stopped: usize, began: bool) -> bool {
    status == RunStatus::Starting && stopped == 0 && !began
}

/// Stops every process of a run that a gone daemon left behind and waits for them to
/// be gone. Returns how many were stopped, and whether the run's process ever began
/// (its log has the header line).
pub(super) fn stop_leftovers(run: &LatestRun) -> (usize, bool) {
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
}
