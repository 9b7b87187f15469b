//! The real binary: `plan`, `check-config`, `serve` and `send`.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::daemon::{Daemon, binary, write_config};
use gitdispatch::queue::embedded::{EmbeddedQueue, EmbeddedSettings};
use gitdispatch::queue::{Message, Queue};
use serde_json::Value;

#[test]
fn plan_prints_only_json_lines_and_explains_on_stderr() {
    let output = binary()
        .args([
            "plan",
            "--event",
            "push",
            "--payload",
            "fixtures/github/push_branch_commits.json",
            "--explain",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("every stdout line is JSON"))
        .collect();
    assert_eq!(lines.len(), 6);
    for line in &lines {
        let keys: Vec<&str> = line
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["pipeline", "name", "group", "input"]);
    }
    let deploy = lines
        .iter()
        .find(|line| line["pipeline"] == "deploy")
        .unwrap();
    assert_eq!(deploy["group"], "deploy/acceptance");
    assert_eq!(deploy["input"]["environment"], "acceptance");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("route hotfix-to-acceptance: matched; 3 execution(s)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("route preview: no match: push events are not taken"),
        "{stderr}"
    );

    // The same payload planned twice gives the same lines.
    let again = binary()
        .args([
            "plan",
            "--event",
            "push",
            "--payload",
            "fixtures/github/push_branch_commits.json",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap(), stdout);
    assert!(
        again.stderr.is_empty(),
        "nothing on stderr without --explain"
    );
}

#[test]
fn plan_refuses_a_payload_that_is_not_an_event() {
    let output = binary()
        .args([
            "plan",
            "--event",
            "pull_request",
            "--payload",
            "fixtures/github/ping.json",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("error: cannot decode"), "{stderr}");
}

#[test]
fn check_config_summarises_a_valid_file() {
    let output = binary().arg("check-config").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("config/gitdispatch.toml is valid"));
    assert!(stdout.contains("deploy (serial), projects: project-api-v2, project-console-v1"));
    assert!(stdout.contains(
        "preview: any source pull_request in acme/*, branches [main] -> deploy @ pr-{number}"
    ));
}

#[test]
fn check_config_reports_every_problem_at_once_and_exits_non_zero() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[github]
webhook_secrets = ["${GITHUB_WEBHOOK_SECRET}"]
[[pipelines]]
name = "deploy"
[[routes]]
pipeline = "deploy"
environment = "pr-{number}"
branches = ["["]
[[routes]]
pipeline = "missing"
environment = "x"
"#,
    )
    .unwrap();
    let output = binary()
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    for expected in [
        "pipelines[0].command: is required by executor type \"local\"",
        "routes[0].branches[0]:",
        "routes[0].environment: uses {number}",
        "routes[1].pipeline: no pipeline is named \"missing\"",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in {stderr}"
        );
    }

    // A missing secret variable names the key and the variable.
    let output = binary()
        .env_remove("GITHUB_WEBHOOK_SECRET")
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains(
            "github.webhook_secrets[0]: environment variable GITHUB_WEBHOOK_SECRET is not set"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_signs_a_payload_and_serve_runs_it() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gitdispatch.toml"),
    )
    .unwrap();
    let mut daemon = Daemon::start(&text, &[]);
    let output = binary()
        .args([
            "--config",
            daemon.config.to_str().unwrap(),
            "send",
            "--event",
            "push",
            "--payload",
            "fixtures/github/push_branch_commits.json",
            "--url",
            &daemon.url(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout} {:?}", output.stderr);
    assert!(stdout.starts_with("202 "), "{stdout}");
    let body: Value = serde_json::from_str(stdout.trim_start_matches("202 ")).unwrap();
    let names: Vec<String> = body["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 6);
    daemon.wait_for(
        "the sent executions to succeed",
        Duration::from_secs(60),
        |daemon| {
            let recorded = daemon.executions();
            names.iter().all(|name| {
                recorded
                    .get(name)
                    .is_some_and(|status| status == "succeeded")
            })
        },
    );

    // `executions` lists them with their log file.
    let output = binary()
        .args(["--config", daemon.config.to_str().unwrap(), "executions"])
        .output()
        .unwrap();
    let listing = String::from_utf8(output.stdout).unwrap();
    for name in &names {
        let line = listing
            .lines()
            .find(|line| line.starts_with(name.as_str()))
            .unwrap();
        assert!(line.contains("succeeded"), "{line}");
        assert!(line.contains(&format!("{name}.log")), "{line}");
    }

    // SIGTERM: the daemon stops cleanly.
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    assert!(daemon.log().contains("Stopped."));
}

#[tokio::test]
async fn dlq_lists_and_redrives_dead_letters() {
    let directory = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gitdispatch.toml"),
    )
    .unwrap();
    let config = write_config(directory.path(), &text);
    let queue = EmbeddedQueue::open(EmbeddedSettings {
        path: directory.path().join("queue.db"),
        visibility_timeout: Duration::from_secs(30),
        max_receives: 5,
    })
    .await
    .unwrap();
    queue
        .send(&[Message {
            id: "broken-job".into(),
            group: Some("deploy/acceptance".into()),
            body: "{]".into(),
        }])
        .await
        .unwrap();
    let received = queue.receive(1, Duration::ZERO).await.unwrap();
    queue
        .dead_letter(&received[0], "job is not valid JSON")
        .await
        .unwrap();

    let output = binary()
        .args(["--config", config.to_str().unwrap(), "dlq", "list"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let listing = String::from_utf8(output.stdout).unwrap();
    assert!(
        listing.starts_with("1  broken-job  group deploy/acceptance  received 1 times"),
        "{listing}"
    );
    assert!(
        listing.contains("reason: job is not valid JSON"),
        "{listing}"
    );

    let output = binary()
        .args(["--config", config.to_str().unwrap(), "dlq", "redrive", "1"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "1 job(s) put back on the queue\n"
    );
    let depth = queue.depth().await.unwrap();
    assert_eq!((depth.visible, depth.dead), (1, 0));
    let again = queue.receive(1, Duration::ZERO).await.unwrap();
    assert_eq!(again[0].message.id, "broken-job");
    assert_eq!(
        again[0].receive_count, 1,
        "a redriven job starts its count again"
    );
}
