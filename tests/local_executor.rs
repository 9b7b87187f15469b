//! The local executor with real processes and a real SQLite record: input on stdin,
//! names in the environment, idempotent starts, timeouts that take the whole process
//! group, failures, and executions a dead daemon left behind.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use gitdispatch::config::Config;
use gitdispatch::event::{Commit, CommitSha, DeliveryId, Event, EventKind, Push, RefName, Source};
use gitdispatch::executor::local::{LocalExecutor, LocalPipeline};
use gitdispatch::executor::{ExecutionStatus, Executor, ExecutorError, Started};
use gitdispatch::plan::{ExecutionRequest, Planner};

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
        repository: "acme/api".into(),
        kind: EventKind::Push(Push {
            git_ref: RefName::parse("refs/heads/x; echo oops").unwrap(),
            before: CommitSha::parse(&"f".repeat(40)).unwrap(),
            after: commits[1].id.clone(),
            commits,
            created: false,
            deleted: false,
            forced: false,
            commits_truncated: false,
            head_commit: None,
        }),
    };
    planner.plan(&event).unwrap().requests
}

async fn executor(directory: &Path, command: &[&str], timeout: Duration) -> LocalExecutor {
    let pipelines = HashMap::from([(
        "job".to_string(),
        LocalPipeline {
            command: command.iter().map(|part| part.to_string()).collect(),
            timeout,
        },
    )]);
    LocalExecutor::open(
        &directory.join("executions.db"),
        &directory.join("log"),
        pipelines,
    )
    .await
    .unwrap()
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
    assert_eq!(
        environment,
        format!(
            "GITDISPATCH_ACTION=deploy\nGITDISPATCH_ENVIRONMENT=feature/x; echo oops\nGITDISPATCH_EXECUTION_NAME={}\nGITDISPATCH_PIPELINE=job\n",
            request.name
        )
    );
    assert!(
        !Path::new("/tmp/pwned").exists(),
        "a commit message ran as a command"
    );
    let records = executor.recent(10).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, "succeeded");
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
    let counter = directory.path().join("count");
    let script = format!("echo run >> {}", counter.display());
    let executor = executor(
        directory.path(),
        &["sh", "-c", &script],
        Duration::from_secs(30),
    )
    .await;
    let request = &requests("job")[0];
    executor.start(request).await.unwrap();
    wait_finished(&executor, request).await;
    let again = executor.start(request).await.unwrap();
    assert_eq!(again, Started::Existing(request.name.to_string()));
    let mut other = requests("job")[1].clone();
    other.name = request.name.clone();
    assert!(matches!(
        executor.start(&other).await,
        Err(ExecutorError::Permanent(message)) if message.contains("another input")
    ));
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
        Err(ExecutorError::Permanent(_))
    ));
}

#[tokio::test]
async fn executions_a_dead_daemon_left_running_are_marked_interrupted() {
    let directory = tempfile::tempdir().unwrap();
    {
        let executor = executor(directory.path(), &["sleep", "30"], Duration::from_secs(60)).await;
        executor.start(&requests("job")[0]).await.unwrap();
    }
    // Pretend the daemon that started it was a process that no longer exists.
    let connection = rusqlite::Connection::open(directory.path().join("executions.db")).unwrap();
    connection
        .execute("UPDATE executions SET owner_pid = 999999999", [])
        .unwrap();
    drop(connection);
    let reopened = executor(directory.path(), &["true"], Duration::from_secs(60)).await;
    let records = reopened.recent(10).await.unwrap();
    assert_eq!(records[0].status, "interrupted");
    let execution = reopened
        .describe("job", &requests("job")[0].name)
        .await
        .unwrap();
    assert_eq!(execution.status, ExecutionStatus::Aborted);
    // And it is not run again.
    assert!(matches!(
        reopened.start(&requests("job")[0]).await,
        Ok(Started::Existing(_))
    ));
}
