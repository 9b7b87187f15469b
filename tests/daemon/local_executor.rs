//! The local executor with real processes and a real SQLite record: input on stdin,
//! names in the environment, idempotent starts, timeouts that take the whole process
//! group, failures, and executions a dead daemon left behind.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use gitdispatch::config::Config;
use gitdispatch::event::{
    Commit, CommitSha, DeliveryId, Event, EventKind, Occurrence, Push, RefName, Source,
};
use gitdispatch::execution::ExecutionRequest;
use gitdispatch::executor::local::{LocalExecutor, LocalPipeline, LocalSettings, RunStatus};
use gitdispatch::executor::{ExecutionStatus, Executor, ExecutorError, Started};
use gitdispatch::plan::Planner;
use gitdispatch::process::ProcessIdentity;

/// Two planned requests of pipeline `name`, from a push of two commits.
fn requests(name: &str) -> Vec<ExecutionRequest> {
    let text = format!(
        "[github]\nwebhook_secrets = [\"s\"]\n[[pipelines]]\nname = \"{name}\"\ncommand = [\"true\"]\n\
         [[routes]]\npipeline = \"{name}\"\nenvironment = \"feature/{{branch}}\"\n"
    );
    let planner = Planner::new(&Config::from_toml_str(&text, &|_| None).unwrap()).unwrap();
    let commits: Vec<Commit> = (1..=2u8)
        .map(|n| Commit {
            id: CommitSha::parse(&format!("{n:040x}")).unwrap(),
            message: format!("$(touch /tmp/pwned) `rm -rf /` ; commit {n}"),
            author: "a".into(),
            changed_paths: None,
        })
        .collect();
    let event = Event {
        source: Source::Github,
        delivery: DeliveryId::parse("d").unwrap(),
        occurrence: Occurrence::from_parts(&["d"]),
        repository: "acme/api".into(),
        kind: EventKind::Push(Push {
            git_ref: RefName::parse("refs/heads/x;echo$(touch-pwned)`id`").unwrap(),
            before: CommitSha::parse(&"f".repeat(40)).unwrap(),
            after: commits[1].id.clone(),
            commits,
            created: false,
            deleted: false,
            forced: false,
            commits_truncated: false,
            commits_listed: true,
            head_commit: None,
        }),
    };
    planner.plan(&event).unwrap().requests
}

fn settings(directory: &Path, command: &[&str], timeout: Duration) -> LocalSettings {
    LocalSettings {
        path: directory.join("executions.db"),
        log_dir: directory.join("log"),
        pipelines: HashMap::from([(
            "job".to_string(),
            LocalPipeline {
                command: command.iter().map(|part| part.to_string()).collect(),
                timeout,
            },
        )]),
        max_attempts: 3,
        details_url: None,
    }
}

async fn executor(directory: &Path, command: &[&str], timeout: Duration) -> LocalExecutor {
    LocalExecutor::open(settings(directory, command, timeout))
        .await
        .unwrap()
}

/// An executor whose command appends a line to a file for each run; and the file.
async fn counting_executor(directory: &Path) -> (LocalExecutor, std::path::PathBuf) {
    let counter = directory.join("count");
    let script = format!("echo run >> {}", counter.display());
    let executor = executor(directory, &["sh", "-c", &script], Duration::from_secs(30)).await;
    (executor, counter)
}

async fn wait_finished(executor: &LocalExecutor, request: &ExecutionRequest) -> ExecutionStatus {
    for _ in 0..200 {
        let execution = executor.describe("job", &request.name).await.unwrap();
        if execution.status.is_finished() {
            return execution.status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} did not finish", request.name);
}

#[tokio::test]
async fn the_command_gets_the_input_on_stdin_and_names_in_its_environment() {
    let directory = tempfile::tempdir().unwrap();
    // The command is configuration, not event data: safe to give to a shell.
    let out = directory.path().display();
    let script = format!("cat > {out}/input.json; env | grep ^GITDISPATCH_ | sort > {out}/env");
    let executor = executor(
        directory.path(),
        &["sh", "-c", &script],
        Duration::from_secs(30),
    )
    .await;
    let request = &requests("job")[0];
    let started = executor.start(request).await.unwrap();
    assert_eq!(started, Started::New(request.name.to_string()));
    assert_eq!(
        wait_finished(&executor, request).await,
        ExecutionStatus::Succeeded
    );
    let input = std::fs::read_to_string(directory.path().join("input.json")).unwrap();
    assert_eq!(input, request.input.as_str(), "byte for byte");
    let environment = std::fs::read_to_string(directory.path().join("env")).unwrap();
    // Each run has an id of its own, by which a restarted daemon finds its processes.
    let (run_id, environment): (Vec<&str>, Vec<&str>) = environment
        .lines()
        .partition(|line| line.starts_with("GITDISPATCH_RUN_ID="));
    assert_eq!(run_id.len(), 1);
    assert_eq!(run_id[0].len(), "GITDISPATCH_RUN_ID=".len() + 32);
    let environment: String = environment.iter().map(|line| format!("{line}\n")).collect();
    assert_eq!(
        environment,
        format!(
            "GITDISPATCH_ACTION=deploy\nGITDISPATCH_ATTEMPT=1\nGITDISPATCH_ENVIRONMENT=feature/x-echo-touch-pwned-id-\nGITDISPATCH_EXECUTION_NAME={name}\nGITDISPATCH_PIPELINE=job\nGITDISPATCH_PLANNED_NAME={name}\n",
            name = request.name
        )
    );
    assert!(
        !Path::new("/tmp/pwned").exists(),
        "a commit message ran as a command"
    );
    let records = executor.recent(10).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, RunStatus::Succeeded);
    assert_eq!(records[0].exit_code, Some(0));
    assert!(
        records[0]
            .log_path
            .ends_with(&format!("{}.log", request.name))
    );
}

#[tokio::test]
async fn a_second_start_of_a_name_runs_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let (executor, counter) = counting_executor(directory.path()).await;
    let request = &requests("job")[0];
    executor.start(request).await.unwrap();
    wait_finished(&executor, request).await;
    let again = executor.start(request).await.unwrap();
    assert_eq!(again, Started::Existing(request.name.to_string()));
    // The name is the key: every delivery of one event plans the same name, with inputs
    // that may differ in the delivery id.
    let mut other = requests("job")[1].clone();
    other.name = request.name.clone();
    assert_eq!(
        executor.start(&other).await.unwrap(),
        Started::Existing(request.name.to_string())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "run\n");
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let directory = tempfile::tempdir().unwrap();
    let marker = directory.path().join("survived");
    // The child of the shell would outlive a kill of the shell alone.
    let script = format!("(sleep 3; touch {}) & wait", marker.display());
    let executor = executor(
        directory.path(),
        &["sh", "-c", &script],
        Duration::from_millis(500),
    )
    .await;
    let request = &requests("job")[0];
    executor.start(request).await.unwrap();
    assert_eq!(
        wait_finished(&executor, request).await,
        ExecutionStatus::TimedOut
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !marker.exists(),
        "a process of the timed-out group kept running"
    );
}

#[tokio::test]
async fn failures_are_recorded_with_their_cause() {
    let directory = tempfile::tempdir().unwrap();
    let failing = executor(
        directory.path(),
        &["sh", "-c", "exit 3"],
        Duration::from_secs(30),
    )
    .await;
    let request = &requests("job")[0];
    failing.start(request).await.unwrap();
    assert_eq!(
        wait_finished(&failing, request).await,
        ExecutionStatus::Failed
    );
    let execution = failing.describe("job", &request.name).await.unwrap();
    assert_eq!(execution.detail.as_deref(), Some("exited with status 3"));

    let other = tempfile::tempdir().unwrap();
    let missing = executor(
        other.path(),
        &["/nonexistent/program"],
        Duration::from_secs(30),
    )
    .await;
    missing.start(request).await.unwrap();
    let execution = missing.describe("job", &request.name).await.unwrap();
    assert_eq!(execution.status, ExecutionStatus::Failed);
    assert!(execution.detail.unwrap().contains("cannot run"));

    assert!(matches!(
        missing.start(&requests("other")[0]).await,
        Err(ExecutorError::Permanent { .. })
    ));
}

/// A daemon that is gone: this process's identity with another start time, as a
/// process that had our pid before us would have.
fn gone_daemon() -> String {
    let mut identity = ProcessIdentity::current();
    identity.start_ticks += 1;
    identity.to_text()
}

/// Writes a run record as a daemon would have left it.
fn leave_run(
    directory: &Path,
    request: &ExecutionRequest,
    status: &str,
    owner: &str,
    pid: Option<(u32, u64)>,
    run_id: &str,
) {
    let connection = rusqlite::Connection::open(directory.join("executions.db")).unwrap();
    let log_path = directory.join("log").join(format!("{}.log", request.name));
    connection
        .execute(
            "INSERT INTO executions (name, planned_name, attempt, pipeline, environment, action,
                 status, input, started_at, log_path, owner_pid, owner, pid, pid_start, run_id)
             VALUES (?1, ?1, 1, 'job', ?2, 'deploy', ?3, ?4, 0, ?5, 0, ?6, ?7, ?8, ?9)",
            rusqlite::params![
                request.name.as_str(),
                request.environment,
                status,
                request.input.as_str(),
                log_path.display().to_string(),
                owner,
                pid.map(|(pid, _)| pid),
                pid.map(|(_, start)| start as i64),
                run_id,
            ],
        )
        .unwrap();
}

fn runs(directory: &Path) -> Vec<(String, u32, String)> {
    let connection = rusqlite::Connection::open(directory.join("executions.db")).unwrap();
    let mut statement = connection
        .prepare("SELECT name, attempt, status FROM executions ORDER BY attempt")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn a_run_recorded_but_never_started_runs_after_a_crash() {
    // A crash between the record and the process: the record says starting, no
    // process exists, and the log has no header.
    let directory = tempfile::tempdir().unwrap();
    let counter = directory.path().join("count");
    let script = format!("echo run >> {}", counter.display());
    let command = ["sh", "-c", script.as_str()];
    let request = &requests("job")[0];
    executor(directory.path(), &command, Duration::from_secs(30)).await;
    leave_run(
        directory.path(),
        request,
        "starting",
        &gone_daemon(),
        None,
        "run-never-started",
    );

    let restarted = executor(directory.path(), &command, Duration::from_secs(30)).await;
    let recovery = restarted.recover().await.unwrap();
    assert_eq!((recovery.never_started, recovery.interrupted), (1, 0));
    assert!(runs(directory.path()).is_empty(), "the record is gone");
    // Its job comes back and the command runs, under the planned name.
    assert_eq!(
        restarted.start(request).await.unwrap(),
        Started::New(request.name.to_string())
    );
    assert_eq!(
        wait_finished(&restarted, request).await,
        ExecutionStatus::Succeeded
    );
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "run\n");
}

#[tokio::test]
async fn a_run_left_behind_by_a_crash_is_stopped_and_runs_again_as_a_new_attempt() {
    let directory = tempfile::tempdir().unwrap();
    let counter = directory.path().join("count");
    let script = format!(
        "echo \"$GITDISPATCH_EXECUTION_NAME\" >> {}",
        counter.display()
    );
    let command = ["sh", "-c", script.as_str()];
    let request = &requests("job")[0];
    executor(directory.path(), &command, Duration::from_secs(30)).await;
    // What the crashed daemon's execution left: a process carrying its name, in a
    // group of its own, with its header in the log.
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut orphan = std::process::Command::new("sleep")
        .arg("60")
        .env("GITDISPATCH_RUN_ID", &run_id)
        .process_group(0)
        .spawn()
        .unwrap();
    // Another daemon on the machine runs the same execution name: not ours to stop.
    let mut namesake = std::process::Command::new("sleep")
        .arg("60")
        .env("GITDISPATCH_EXECUTION_NAME", request.name.as_str())
        .env("GITDISPATCH_RUN_ID", "another-daemons-run")
        .spawn()
        .unwrap();
    let orphan_start = gitdispatch::process::start_ticks(orphan.id()).unwrap();
    std::fs::create_dir_all(directory.path().join("log")).unwrap();
    std::fs::write(
        directory
            .path()
            .join("log")
            .join(format!("{}.log", request.name)),
        "[gitdispatch] header\n",
    )
    .unwrap();
    leave_run(
        directory.path(),
        request,
        "running",
        &gone_daemon(),
        Some((orphan.id(), orphan_start)),
        &run_id,
    );

    let restarted = executor(directory.path(), &command, Duration::from_secs(30)).await;
    let recovery = restarted.recover().await.unwrap();
    assert_eq!((recovery.interrupted, recovery.processes_stopped), (1, 1));
    assert!(
        orphan.try_wait().unwrap().is_some(),
        "the process it left was stopped before anything else ran"
    );
    assert!(
        namesake.try_wait().unwrap().is_none(),
        "another daemon's run of the same name was left alone"
    );
    namesake.kill().unwrap();
    namesake.wait().unwrap();
    assert_eq!(
        restarted
            .describe("job", &request.name)
            .await
            .unwrap()
            .status,
        ExecutionStatus::Interrupted
    );

    let second = request.name.attempt(2);
    assert_eq!(
        restarted.start(request).await.unwrap(),
        Started::New(second.to_string())
    );
    assert_eq!(
        wait_finished(&restarted, request).await,
        ExecutionStatus::Succeeded,
        "describe follows the latest attempt"
    );
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap(),
        format!("{second}\n")
    );
    assert_eq!(
        runs(directory.path()),
        vec![
            (request.name.to_string(), 1, "interrupted".to_string()),
            (second.to_string(), 2, "succeeded".to_string()),
        ],
        "the record keeps both attempts"
    );
    // Once ended, the name is done: another start runs nothing.
    assert_eq!(
        restarted.start(request).await.unwrap(),
        Started::Existing(second.to_string())
    );
}

#[tokio::test]
async fn a_reused_pid_is_not_taken_for_the_daemon_or_the_process_it_recorded() {
    let directory = tempfile::tempdir().unwrap();
    let request = &requests("job")[0];
    executor(directory.path(), &["true"], Duration::from_secs(30)).await;
    // The recorded daemon had our pid (or, in a container, pid 1) but is not us; the
    // recorded process's pid now belongs to an unrelated process.
    let mut unrelated = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let mut container_daemon = ProcessIdentity::current();
    container_daemon.pid = 1;
    container_daemon.start_ticks = gitdispatch::process::start_ticks(1).unwrap() + 1;
    for (request, owner) in [
        (&requests("job")[0], gone_daemon()),
        (&requests("job")[1], container_daemon.to_text()),
    ] {
        leave_run(
            directory.path(),
            request,
            "running",
            &owner,
            Some((unrelated.id(), 1)),
            &format!("run-{}", request.name),
        );
        std::fs::create_dir_all(directory.path().join("log")).unwrap();
        std::fs::write(
            directory
                .path()
                .join("log")
                .join(format!("{}.log", request.name)),
            "[gitdispatch] header\n",
        )
        .unwrap();
    }
    let restarted = executor(directory.path(), &["true"], Duration::from_secs(30)).await;
    let recovery = restarted.recover().await.unwrap();
    assert_eq!((recovery.interrupted, recovery.processes_stopped), (2, 0));
    assert!(
        gitdispatch::process::is_running(unrelated.id()),
        "an unrelated process with a recorded pid was left alone"
    );
    unrelated.kill().unwrap();
    unrelated.wait().unwrap();
    assert_eq!(
        restarted.start(request).await.unwrap(),
        Started::New(request.name.attempt(2).to_string())
    );
}

#[tokio::test]
async fn runs_of_a_live_daemon_are_left_alone() {
    let directory = tempfile::tempdir().unwrap();
    let request = &requests("job")[0];
    let first = executor(directory.path(), &["sleep", "2"], Duration::from_secs(30)).await;
    first.start(request).await.unwrap();
    // Another worker on the same file restarts: the run belongs to a daemon that lives.
    let second = executor(directory.path(), &["sleep", "2"], Duration::from_secs(30)).await;
    assert_eq!(second.recover().await.unwrap(), Default::default());
    assert_eq!(
        second.start(request).await.unwrap(),
        Started::Existing(request.name.to_string())
    );
    assert_eq!(
        wait_finished(&second, request).await,
        ExecutionStatus::Succeeded
    );
}

#[tokio::test]
async fn a_shutdown_interrupts_what_outlives_the_grace_period_and_it_runs_again_up_to_max_attempts()
{
    let directory = tempfile::tempdir().unwrap();
    let request = &requests("job")[0];
    for attempt in 1..=3u32 {
        let executor = executor(directory.path(), &["sleep", "60"], Duration::from_secs(90)).await;
        assert_eq!(
            executor.start(request).await.unwrap(),
            Started::New(request.name.attempt(attempt).to_string())
        );
        executor.shutdown(Duration::from_millis(200)).await;
        assert_eq!(
            executor
                .describe("job", &request.name)
                .await
                .unwrap()
                .status,
            ExecutionStatus::Interrupted
        );
    }
    let executor = executor(directory.path(), &["sleep", "60"], Duration::from_secs(90)).await;
    let Err(ExecutorError::Permanent {
        message: reason, ..
    }) = executor.start(request).await
    else {
        panic!("a fourth attempt started");
    };
    assert!(reason.contains("interrupted 3 time(s)"), "{reason}");
}

#[tokio::test]
async fn a_log_that_cannot_be_created_is_a_retryable_failure_that_leaves_no_record() {
    let directory = tempfile::tempdir().unwrap();
    let request = &requests("job")[0];
    let executor = executor(directory.path(), &["true"], Duration::from_secs(30)).await;
    // The log directory is replaced by a file: like a full disk or no descriptors
    // left, the machine's state, not the command's.
    std::fs::remove_dir_all(directory.path().join("log")).unwrap();
    std::fs::write(directory.path().join("log"), "").unwrap();
    assert!(matches!(
        executor.start(request).await,
        Err(ExecutorError::Retryable { message: reason, .. }) if reason.contains("cannot create log file")
    ));
    assert!(
        runs(directory.path()).is_empty(),
        "nothing ran, nothing is recorded"
    );
    std::fs::remove_file(directory.path().join("log")).unwrap();
    assert_eq!(
        executor.start(request).await.unwrap(),
        Started::New(request.name.to_string())
    );
    assert_eq!(
        wait_finished(&executor, request).await,
        ExecutionStatus::Succeeded
    );
}

#[tokio::test]
async fn a_start_whose_caller_stops_waiting_still_runs_to_its_end() {
    let directory = tempfile::tempdir().unwrap();
    let (executor, counter) = counting_executor(directory.path()).await;
    let request = &requests("job")[0];
    // Polled once, then dropped: a worker's shutdown cancelling a start in flight.
    let start = executor.start(request);
    let cancelled = tokio::time::timeout(Duration::ZERO, start).await;
    assert!(cancelled.is_err(), "the start was still in flight");
    for _ in 0..200 {
        if runs(directory.path())
            .first()
            .is_some_and(|run| run.2 == "succeeded")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        runs(directory.path()),
        vec![(request.name.to_string(), 1, "succeeded".to_string())]
    );
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "run\n");
}
