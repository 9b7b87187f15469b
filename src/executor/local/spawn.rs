//! Starting a run's command: in its own process group, input on stdin, output to its
//! log, the run's id in its environment, and a header written to the log before the
//! command executes (the proof, after a crash, that the run began).

use std::io::ErrorKind;
use std::path::Path;
use std::process::Stdio;

use tokio::process::Command;

use super::LocalPipeline;
use crate::execution::ExecutionRequest;
use crate::execution::name::ExecutionName;
use crate::process;

/// The environment variable that carries a run's own id (random, recorded with the
/// run) to its processes: how a restarted daemon finds the processes a crashed one left
/// behind, and only those (another daemon on the machine may run the same execution
/// names).
pub(super) const RUN_ID_VARIABLE: &str = "GITDISPATCH_RUN_ID";

/// Kills a process group when dropped, unless disarmed: a timed-out execution, or one
/// whose waiting task was aborted at shutdown, takes its children with it.
pub(super) struct GroupKiller {
    pub(super) pid: Option<u32>,
}

impl GroupKiller {
    /// The group leader ended on its own: there is no group left to kill by its pid.
    pub(super) fn disarm(&mut self) {
        self.pid = None;
    }

    pub(super) fn kill(&mut self) {
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

/// Why a command could not be started.
pub(super) enum SpawnError {
    /// The machine is short of something for now (file descriptors, processes,
    /// memory, disk): nothing ran, and a later start may succeed.
    Transient(String),
    /// The command itself cannot run (no such program, not executable).
    Permanent(String),
}

/// Whether a failure to start a process says something about the command (it will
/// fail the same way every time) rather than about the machine's state.
pub(super) fn is_permanent_spawn_error(error: &std::io::Error) -> bool {
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
pub(super) struct Run<'a> {
    pub(super) name: &'a ExecutionName,
    pub(super) attempt: u32,
    pub(super) run_id: &'a str,
    pub(super) log_path: &'a Path,
}

pub(super) async fn spawn_command(
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

#[cfg(test)]
mod tests {
    use super::*;

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
