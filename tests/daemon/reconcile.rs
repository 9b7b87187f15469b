//! Reconcile against a stand-in for GitHub's API (wiremock): it plans exactly the
//! commits of a branch that no delivery brought, nothing that a delivery planned
//! before or after it, a branch seen for the first time not at all, a head younger than
//! the grace period later, and nothing twice when two instances reconcile at once.

use crate::common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use common::daemon::binary;
use common::github::{self, FakeCommit, FakeGithub};
use common::inprocess::Harness;
use gitdispatch::reconcile::Outcome;
use serde_json::{Value, json};

fn sha(n: usize) -> String {
    format!("{:040x}", 0xbeef_0000_0000_u64 + n as u64)
}

fn history(count: usize) -> Vec<FakeCommit> {
    (0..=count)
        .map(|n| FakeCommit {
            sha: sha(n),
            message: format!("Commit {n}"),
            files: vec![format!("src/{n}.rs")],
        })
        .collect()
}

/// A push of commits `before+1..=after` to `branch`, as GitHub sends it.
fn push(branch: &str, before: usize, after: usize) -> Vec<u8> {
    let commit = |n: usize| {
        json!({
            "id": sha(n), "message": format!("Commit {n}"),
            "author": {"name": "Mary Doe", "username": "mary"},
            "added": [], "removed": [], "modified": [format!("src/{n}.rs")],
        })
    };
    serde_json::to_vec(&json!({
        "ref": format!("refs/heads/{branch}"),
        "before": sha(before),
        "after": sha(after),
        "created": false, "deleted": false, "forced": false,
        "commits": (before + 1..=after).map(commit).collect::<Vec<Value>>(),
        "head_commit": commit(after),
        "repository": {"full_name": "acme/project-api-v2", "pushed_at": 1_796_100_000 + after},
    }))
    .unwrap()
}

fn config(server: &wiremock::MockServer, directory: &std::path::Path, extra: &str) -> String {
    let dir = directory.display();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[github]
webhook_secrets = ["${{GITHUB_WEBHOOK_SECRET}}"]
{github}

[github.reconcile]
repositories = ["acme/project-api-v2"]
{extra}

[ledger]
type = "sqlite"
path = "{dir}/ledger.db"

[queue]
type = "embedded"
path = "{dir}/queue.db"

[executor]
type = "local"
log_dir = "{dir}/log"
path = "{dir}/executions.db"

[[pipelines]]
name = "build"
command = ["true"]

[[pipelines]]
name = "deploy"
command = ["true"]
concurrency = "serial"

[[routes]]
pipeline = "build"
events = ["push"]
environment = "ci"

[[routes]]
pipeline = "deploy"
events = ["push"]
branches = ["main"]
environment = "acceptance"
"#,
        github = github::token_section(server),
    )
}

fn planned(lines: &[gitdispatch::reconcile::Line]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|line| match &line.outcome {
            Outcome::Planned(name) => Some((line.commit.to_string(), name.to_string())),
            _ => None,
        })
        .collect()
}

fn start_commits(harness: &Harness) -> Vec<(String, String)> {
    harness
        .starts()
        .iter()
        .map(|request| {
            (
                request.origin.commit.to_string(),
                format!("{}/{}", request.pipeline, request.environment),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_plans_exactly_what_no_delivery_brought_and_deliveries_never_plan_it_again() {
    let github = Arc::new(Mutex::new(FakeGithub {
        history: history(30),
        branches: vec![("main".into(), sha(5))],
        ..FakeGithub::default()
    }));
    let server = github::serve(github.clone()).await;
    let directory = tempfile::tempdir().unwrap();
    let text = config(&server, directory.path(), "");
    let harness = Harness::start(&text, directory.path().join("queue.db")).await;
    let reconciler = harness.app.reconciler().unwrap();

    // A branch seen for the first time is recorded, not deployed.
    let lines = reconciler.run(None, false).await.unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].outcome, Outcome::Baseline);
    assert!(harness.starts().is_empty());

    // A delivered push; then pushes GitHub never delivered move main to 10.
    let (status, _) = harness.post_push(push("main", 5, 7)).await;
    assert_eq!(status, 202);
    let delivered = start_commits(&harness);
    assert_eq!(delivered.len(), 4, "2 commits × build and deploy");
    github.lock().unwrap().branches = vec![("main".into(), sha(10))];

    // A dry run says what it would plan and plans nothing.
    let lines = reconciler.run(None, true).await.unwrap();
    let would: Vec<String> = lines
        .iter()
        .filter(|line| matches!(line.outcome, Outcome::WouldPlan(_)))
        .map(|line| line.to_string())
        .collect();
    assert_eq!(would.len(), 6, "{lines:?}");
    assert!(would[0].starts_with("would plan build-ci-"), "{}", would[0]);
    assert_eq!(harness.starts().len(), 4);

    let lines = reconciler.run(None, false).await.unwrap();
    let planned_now = planned(&lines);
    let commits: HashSet<String> = planned_now
        .iter()
        .map(|(commit, _)| commit.clone())
        .collect();
    assert_eq!(
        commits,
        [8, 9, 10].into_iter().map(sha).collect::<HashSet<_>>(),
        "exactly the missed commits"
    );
    assert_eq!(planned_now.len(), 6, "each on both lanes");
    assert_eq!(harness.starts().len(), 10);

    // Nothing more to do.
    assert!(reconciler.run(None, false).await.unwrap().is_empty());

    // The lost deliveries arrive late (a redelivery): nothing is planned again.
    let (status, body) = harness.post_push(push("main", 7, 10)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("reconcile planned"),
        "{body}"
    );
    assert_eq!(harness.starts().len(), 10);

    // A push delivered before reconcile looks: reconcile plans nothing of it.
    let (status, _) = harness.post_push(push("main", 10, 12)).await;
    assert_eq!(status, 202);
    github.lock().unwrap().branches = vec![("main".into(), sha(12))];
    assert!(planned(&reconciler.run(None, false).await.unwrap()).is_empty());
    assert_eq!(harness.starts().len(), 14);

    // Every commit of main, on each lane, planned exactly once, by one or the other.
    let all = start_commits(&harness);
    let unique: HashSet<&(String, String)> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "{all:?}");
    for n in 6..=12 {
        for lane in ["build/ci", "deploy/acceptance"] {
            assert!(all.contains(&(sha(n), lane.to_string())), "{n} {lane}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_head_waits_for_its_webhook_and_two_reconcilers_plan_each_commit_once() {
    let github = Arc::new(Mutex::new(FakeGithub {
        history: history(30),
        branches: vec![("main".into(), sha(1))],
        ..FakeGithub::default()
    }));
    let server = github::serve(github.clone()).await;
    let directory = tempfile::tempdir().unwrap();
    let text = config(&server, directory.path(), "grace_secs = 600");
    // Two instances sharing the queue and the ledger.
    let first = Harness::start(&text, directory.path().join("queue.db")).await;
    let second = Harness::start(&text, directory.path().join("queue.db")).await;
    let one = first.app.reconciler().unwrap();
    let other = second.app.reconciler().unwrap();
    one.run(None, false).await.unwrap();

    // Just committed: left to its webhook for now.
    {
        let mut fake = github.lock().unwrap();
        fake.branches = vec![("main".into(), sha(6))];
        fake.committed_now = vec![sha(6)];
    }
    let lines = one.run(None, false).await.unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].outcome, Outcome::Waiting);
    assert!(first.starts().is_empty());

    // Once it is older than the grace period, both look at once.
    github.lock().unwrap().committed_now.clear();
    let (a, b) = tokio::join!(one.run(None, false), other.run(None, false));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(!planned(&a).is_empty() || !planned(&b).is_empty());
    let all = start_commits(&first);
    let unique: HashSet<&(String, String)> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "nothing twice: {all:?}");
    assert_eq!(all.len(), 10, "commits 2 to 6 on both lanes");
}

#[test]
fn the_reconcile_command_prints_a_line_per_commit_and_explains_itself() {
    let help = binary().args(["reconcile", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.contains("--dry-run") && help.contains("--repository"),
        "{help}"
    );

    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("gitdispatch.toml");
    std::fs::write(
        &path,
        "[github]\nwebhook_secrets = [\"x\"]\ntoken = \"t\"\n[[pipelines]]\nname = \"b\"\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let output = binary()
        .args(["--config", path.to_str().unwrap(), "reconcile", "--dry-run"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("[github.reconcile]"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_command_plans_from_the_shell() {
    let github = Arc::new(Mutex::new(FakeGithub {
        history: history(10),
        branches: vec![("main".into(), sha(2))],
        ..FakeGithub::default()
    }));
    let server = github::serve(github.clone()).await;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("gitdispatch.toml");
    std::fs::write(&path, config(&server, directory.path(), "")).unwrap();
    let run = |args: &[&str]| {
        let output = binary()
            .args(["--config", path.to_str().unwrap(), "reconcile"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let baseline = run(&[]);
    assert!(
        baseline.starts_with("recorded acme/project-api-v2 refs/heads/main at "),
        "{baseline}"
    );
    github.lock().unwrap().branches = vec![("main".into(), sha(4))];
    let dry = run(&["--dry-run", "--repository", "acme/*"]);
    assert_eq!(dry.lines().count(), 4, "{dry}");
    assert!(
        dry.lines().all(|line| line.starts_with("would plan ")),
        "{dry}"
    );
    let none = run(&["--dry-run", "--repository", "other/*"]);
    assert!(none.is_empty(), "{none}");
    let real = run(&[]);
    assert_eq!(real.lines().count(), 4, "{real}");
    assert!(
        real.lines().all(|line| line.starts_with("planned ")),
        "{real}"
    );
}

/// A reconcile whose queueing fails gives its claims back: the next run plans the same
/// commits (with the one pushed since), none of them "planned by a delivery".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_that_could_not_queue_plans_the_same_commits_next_time() {
    let github = Arc::new(Mutex::new(FakeGithub {
        history: history(10),
        branches: vec![("main".into(), sha(2))],
        ..FakeGithub::default()
    }));
    let server = github::serve(github.clone()).await;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("gitdispatch.toml");
    std::fs::write(&path, config(&server, directory.path(), "")).unwrap();
    let run = |args: &[&str]| {
        binary()
            .args(["--config", path.to_str().unwrap(), "reconcile"])
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&[]).status.success(), "the baseline");
    github.lock().unwrap().branches = vec![("main".into(), sha(4))];

    // Another process holds the queue's file for writing: queueing fails (after the
    // file's busy timeout), and the run says so.
    let blocker = rusqlite::Connection::open(directory.path().join("queue.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let failed = run(&[]);
    assert!(
        !failed.status.success(),
        "queueing failed, and the run says so"
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("queue"), "{stderr}");
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);

    // Another commit is pushed and its webhook lost too: the next run plans the whole
    // gap, the commits of the failed run among them.
    github.lock().unwrap().branches = vec![("main".into(), sha(5))];
    let again = run(&[]);
    let stdout = String::from_utf8(again.stdout).unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(stdout.lines().count(), 6, "3 commits, 2 routes: {stdout}");
    assert!(
        stdout.lines().all(|line| line.starts_with("planned ")),
        "{stdout}"
    );
    for n in 3..=5 {
        assert_eq!(stdout.matches(&sha(n)).count(), 2, "{stdout}");
    }
}

/// The daemon's worker reconciles and redelivers on its own when given an interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reconciles_and_redelivers_periodically() {
    use common::daemon::Daemon;
    let github = Arc::new(Mutex::new(FakeGithub {
        history: history(10),
        branches: vec![("main".into(), sha(1))],
        ..FakeGithub::default()
    }));
    let hook = "/repos/acme/project-api-v2/hooks/9/deliveries";
    github.lock().unwrap().hook_deliveries.insert(
        hook.to_string(),
        vec![json!({
            "id": 77, "guid": "lost", "status_code": 502, "event": "push",
            "delivered_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        })],
    );
    let server = github::serve(github.clone()).await;
    let ledger = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:8080"

[github]
webhook_secrets = ["${{GITHUB_WEBHOOK_SECRET}}"]
{github}

[github.redeliver]
hooks = [{{ repository = "acme/project-api-v2", id = 9 }}]
interval_secs = 1

[github.reconcile]
repositories = ["acme/project-api-v2"]
interval_secs = 1
grace_secs = 0

[ledger]
type = "sqlite"
path = "{ledger}/ledger.db"

[queue]
type = "embedded"
path = "var/gitdispatch.db"

[executor]
type = "local"
log_dir = "var/log"
path = "var/executions.db"

[[pipelines]]
name = "build"
command = ["sh", "deploy/local/deploy.sh"]

[[routes]]
pipeline = "build"
events = ["push"]
environment = "ci"
"#,
        github = github::token_section(&server),
        ledger = ledger.path().display(),
    );
    let daemon = Daemon::start(&text, &[]);
    daemon.wait_for(
        "the failed delivery to be redelivered and main recorded",
        std::time::Duration::from_secs(30),
        |_| {
            let fake = github.lock().unwrap();
            !fake.redeliveries.is_empty()
                && fake
                    .calls
                    .iter()
                    .any(|call| call.path.ends_with("/branches"))
        },
    );
    assert_eq!(
        github.lock().unwrap().redeliveries[0],
        (hook.to_string(), 77)
    );
    // The first reconcile records main before it moves.
    let ledger_file = ledger.path().join("ledger.db");
    daemon.wait_for(
        "main to be recorded",
        std::time::Duration::from_secs(30),
        |_| {
            rusqlite::Connection::open(&ledger_file)
                .and_then(|connection| {
                    connection.query_row("SELECT sha FROM heads", [], |row| row.get::<_, String>(0))
                })
                .is_ok_and(|head| head == sha(1))
        },
    );
    github.lock().unwrap().branches = vec![("main".into(), sha(3))];
    daemon.wait_for(
        "the commits GitHub never delivered to run",
        std::time::Duration::from_secs(60),
        |daemon| daemon.completed().len() == 2,
    );
    let inputs: HashSet<String> = daemon
        .completed()
        .keys()
        .map(|name| {
            let input: Value = serde_json::from_str(
                &std::fs::read_to_string(daemon.records().join(format!("{name}.input"))).unwrap(),
            )
            .unwrap();
            input["git"]["commit"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(inputs, [sha(2), sha(3)].into_iter().collect::<HashSet<_>>());
}
