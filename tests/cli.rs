//! The real binary: `plan`, `check-config`, `serve` and `send`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::SECRET;
use serde_json::Value;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gitdispatch"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("GITHUB_WEBHOOK_SECRET", SECRET)
        .env_remove("GITDISPATCH_CONFIG");
    command
}

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

/// Starts `serve` with a config listening on an ephemeral port; returns the child and
/// the address it logged.
fn start_serve(config: &Path) -> (Child, String) {
    let mut child = binary()
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("GITDISPATCH_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("serve logs its address before exiting")
            .unwrap();
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, address)
}

#[test]
fn send_signs_a_payload_and_serve_queues_it() {
    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("gitdispatch.toml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gitdispatch.toml"),
    )
    .unwrap()
    .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"");
    std::fs::write(&config, text).unwrap();
    let (mut child, address) = start_serve(&config);

    let output = binary()
        .args([
            "--config",
            config.to_str().unwrap(),
            "send",
            "--event",
            "push",
            "--payload",
            "fixtures/github/push_branch_commits.json",
            "--url",
            &format!("http://{address}/webhooks/github"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout} {:?}", output.stderr);
    assert!(stdout.starts_with("202 "), "{stdout}");
    let body: Value = serde_json::from_str(stdout.trim_start_matches("202 ")).unwrap();
    assert_eq!(body["executions"].as_array().unwrap().len(), 6);

    // SIGTERM: the daemon stops cleanly.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
