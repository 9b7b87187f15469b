//! Pushes GitHub could not list whole (it lists 2,048 commits at most): the listener
//! queues an expand job, the worker reads the commits from the compare API (paged) and
//! queues one start per commit, oldest first, under the names a complete payload would
//! have given them. Against a stand-in for GitHub's API (wiremock), through the app as
//! the daemon assembles it, with the embedded queue.

use crate::common;

use std::sync::{Arc, Mutex};

use common::SECRET;
use common::github::{self, FakeCommit, FakeGithub};
use common::inprocess::Harness;
use gitdispatch::event::{Commit, CommitSha, EventKind};
use gitdispatch::execution::ExecutionRequest;
use gitdispatch::source::github::{Decoded, decode_payload};
use serde_json::{Value, json};

fn sha(n: usize) -> String {
    format!("{:040x}", 0xc0ff_ee00_0000_u64 + n as u64)
}

/// A repository whose history is commits 0 to `count`: commit `n` changes
/// `src/<n>.rs` when `n` is even and `docs/<n>.md` when it is odd.
fn history(count: usize) -> Vec<FakeCommit> {
    (0..=count)
        .map(|n| FakeCommit {
            sha: sha(n),
            message: format!("Commit {n}"),
            files: vec![if n % 2 == 0 {
                format!("src/{n}.rs")
            } else {
                format!("docs/{n}.md")
            }],
        })
        .collect()
}

/// A push from commit `before` to `after` listing `listed` of its commits (the
/// newest), shaped as GitHub sends it.
fn push(before: usize, after: usize, listed: usize) -> Vec<u8> {
    let commit = |n: usize| {
        let file = if n % 2 == 0 {
            format!("src/{n}.rs")
        } else {
            format!("docs/{n}.md")
        };
        json!({
            "id": sha(n),
            "tree_id": sha(0),
            "distinct": true,
            "message": format!("Commit {n}"),
            "timestamp": "2026-12-01T10:00:00+00:00",
            "author": {"name": "Mary Doe", "email": "mary@example.com", "username": "mary"},
            "committer": {"name": "Mary Doe", "email": "mary@example.com", "username": "mary"},
            "added": [], "removed": [], "modified": [file],
        })
    };
    let first = (after + 1).saturating_sub(listed).max(before + 1);
    let commits: Vec<Value> = (first..=after).map(commit).collect();
    serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "before": sha(before),
        "after": sha(after),
        "created": false,
        "deleted": false,
        "forced": false,
        "base_ref": null,
        "compare": "https://github.com/acme/project-api-v2/compare/x...y",
        "commits": commits,
        "head_commit": commit(after),
        "repository": {
            "id": 1, "name": "project-api-v2", "full_name": "acme/project-api-v2",
            "owner": {"login": "acme"}, "pushed_at": 1_796_000_000,
            "default_branch": "main",
        },
        "pusher": {"name": "mary"},
        "sender": {"login": "mary"},
    }))
    .unwrap()
}

/// The listener and a worker as the daemon assembles them, reporting to and reading
/// from `server`, with `routes`.
async fn harness(server: &wiremock::MockServer, github_extra: &str, routes: &str) -> Harness {
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path().display();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[github]
webhook_secrets = ["${{GITHUB_WEBHOOK_SECRET}}"]
{github}
{github_extra}

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

{routes}
"#,
        github = github::token_section(server),
    );
    Harness::start(&text, directory.path().join("queue.db"))
        .await
        .owning(directory)
}

/// What planning the same push would have given had its payload listed commits
/// `1..=count`.
fn planned_in_full(harness: &Harness, body: &[u8], count: usize) -> Vec<ExecutionRequest> {
    let compiled =
        gitdispatch::app::from_toml_str(&harness.text, &|_| Some(SECRET.into())).unwrap();
    let delivery = gitdispatch::event::DeliveryId::parse("full").unwrap();
    let Decoded::Event(mut event) = decode_payload("push", &delivery, body).unwrap() else {
        panic!("a push");
    };
    let EventKind::Push(push) = &mut event.kind else {
        panic!("a push");
    };
    push.commits = (1..=count)
        .map(|n| Commit {
            id: CommitSha::parse(&sha(n)).unwrap(),
            message: format!("Commit {n}"),
            author: "mary".into(),
            changed_paths: None,
        })
        .collect();
    push.commits_listed = true;
    push.commits_truncated = false;
    compiled.planner.plan(&event).unwrap().requests
}

async fn post(harness: &Harness, body: Vec<u8>) -> Value {
    let (status, answer) = harness.post_push(body).await;
    assert_eq!(status, 202, "{answer}");
    answer
}

const EACH: &str = r#"
[[routes]]
pipeline = "build"
events = ["push"]
environment = "ci"
commits = "each"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_of_3000_commits_runs_each_in_order_under_the_names_a_full_payload_gives() {
    let github = Arc::new(Mutex::new(FakeGithub {
        history: history(3000),
        ..FakeGithub::default()
    }));
    let server = github::serve(github.clone()).await;
    let harness = harness(&server, "", EACH).await;
    let body = push(0, 3000, 2048);
    let answer = post(&harness, body.clone()).await;
    assert_eq!(answer["expansions"], 1, "{answer}");
    assert_eq!(answer["executions"], json!([]));
    assert_eq!(
        harness.queued().len(),
        1,
        "one expand job, nothing else yet"
    );

    assert_eq!(harness.worker.run_once().await.unwrap(), 1);
    let starts = harness.starts();
    assert_eq!(starts.len(), 3000);
    let commits: Vec<String> = starts
        .iter()
        .map(|request| request.origin.commit.to_string())
        .collect();
    let expected: Vec<String> = (1..=3000).map(sha).collect();
    assert_eq!(commits, expected, "every commit, oldest first");
    // The names a payload listing all 3,000 would have given.
    let full: Vec<String> = planned_in_full(&harness, &body, 3000)
        .iter()
        .map(|request| request.name.to_string())
        .collect();
    let names: Vec<String> = starts.iter().map(|r| r.name.to_string()).collect();
    assert_eq!(names, full);
    // Paged at 100 commits, no commit read one by one (no route needs paths).
    let fake = github.lock().unwrap();
    let compares = fake
        .calls
        .iter()
        .filter(|call| call.path.contains("/compare/"))
        .count();
    assert_eq!(compares, 30);
    assert!(!fake.calls.iter().any(|call| {
        call.path.starts_with("/repos/acme/project-api-v2/commits/")
            && !call.path.ends_with("/statuses")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_keeps_the_newest_commits_and_a_vanished_old_head_runs_the_new_one() {
    let github = Arc::new(Mutex::new(FakeGithub {
        history: history(2500),
        ..FakeGithub::default()
    }));
    let server = github::serve(github.clone()).await;
    let harness = harness(&server, "max_expanded_commits = 150", EACH).await;
    post(&harness, push(0, 2500, 2048)).await;
    harness.worker.run_once().await.unwrap();
    let commits: Vec<String> = harness
        .starts()
        .iter()
        .map(|request| request.origin.commit.to_string())
        .collect();
    let expected: Vec<String> = (2351..=2500).map(sha).collect();
    assert_eq!(commits, expected, "the newest 150, oldest first");

    // A force-push whose old head GitHub no longer has: only the new head is known.
    let harness = harness_again(&server).await;
    let mut body: Value = serde_json::from_slice(&push(0, 2400, 2048)).unwrap();
    body["before"] = json!("dead".repeat(10));
    body["forced"] = json!(true);
    post(&harness, serde_json::to_vec(&body).unwrap()).await;
    harness.worker.run_once().await.unwrap();
    let commits: Vec<String> = harness
        .starts()
        .iter()
        .map(|request| request.origin.commit.to_string())
        .collect();
    assert_eq!(commits, [sha(2400)]);
}

async fn harness_again(server: &wiremock::MockServer) -> Harness {
    harness(server, "", EACH).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_filters_hold_for_fetched_commits_as_for_listed_ones() {
    let github = Arc::new(Mutex::new(FakeGithub {
        history: history(2100),
        ..FakeGithub::default()
    }));
    let server = github::serve(github.clone()).await;
    let routes = format!("{EACH}paths = [\"src/**\"]\n");
    let harness = harness(&server, "", &routes).await;
    post(&harness, push(0, 2100, 2048)).await;
    harness.worker.run_once().await.unwrap();
    let commits: Vec<String> = harness
        .starts()
        .iter()
        .map(|request| request.origin.commit.to_string())
        .collect();
    let expected: Vec<String> = (1..=2100).filter(|n| n % 2 == 0).map(sha).collect();
    assert_eq!(commits, expected, "only the commits that change src/");
    let fake = github.lock().unwrap();
    let commit_reads = fake
        .calls
        .iter()
        .filter(|call| {
            call.path.starts_with("/repos/acme/project-api-v2/commits/")
                && !call.path.ends_with("/statuses")
        })
        .count();
    assert_eq!(commit_reads, 2100, "each commit's files read once");
}
