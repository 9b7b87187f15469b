//! The manual trigger API through the real binary: a bearer token or nothing; every
//! body that names what the pipeline lacks refused with the field named, and nothing
//! queued; a right one run through the queue and the local executor with the input a
//! webhook would give; retries with an Idempotency-Key starting nothing twice; and
//! `gitdispatch trigger --wait` following a run to its end.

use crate::common;

use std::time::Duration;

use common::daemon::{Daemon, binary};
use serde_json::{Value, json};

const TOKEN: &str = "api-token-for-tests-0001";

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8080"
max_body_bytes = 65536
max_unverified_bytes_per_address = 1048576

[github]
webhook_secrets = ["${GITHUB_WEBHOOK_SECRET}"]

[api]
tokens = ["${GITDISPATCH_API_TOKEN}", "api-token-being-rotated-0002"]

[queue]
type = "embedded"
path = "var/gitdispatch.db"

[executor]
type = "local"
log_dir = "var/log"
path = "var/executions.db"

[[pipelines]]
name = "deploy"
command = ["sh", "deploy/local/deploy.sh"]
concurrency = "serial"

[[pipelines.projects]]
name = "project-api-v2"
repository = "acme/project-api-v2"
skip_flag = "skip_api_v2"

[[pipelines.projects]]
name = "project-console-v1"
repository = "acme/project-console-v1"
skip_flag = "skip_console_v1"

[[pipelines]]
name = "broken"
command = ["sh", "-c", "exit 3"]
"#;

fn start() -> Daemon {
    Daemon::start(
        CONFIG,
        &[("GITDISPATCH_API_TOKEN", TOKEN), ("RECORD_SLEEP", "0.2")],
    )
}

fn api(daemon: &Daemon) -> String {
    format!("http://{}/v1/executions", daemon.address)
}

async fn post(
    daemon: &Daemon,
    token: Option<&str>,
    key: Option<&str>,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(api(daemon))
        .header("content-type", content_type)
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn trigger(daemon: &Daemon, key: Option<&str>, body: &Value) -> (u16, Value) {
    post(
        daemon,
        Some(TOKEN),
        key,
        "application/json",
        body.to_string(),
    )
    .await
}

fn queued(daemon: &Daemon) -> i64 {
    let connection = rusqlite::Connection::open(daemon.directory.path().join("queue.db")).unwrap();
    connection
        .query_row("SELECT COUNT(*) FROM jobs", [], |row| row.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_configured_token_may_trigger_and_every_bad_body_names_its_field() {
    let daemon = start();
    let body = json!({"pipeline": "deploy", "environment": "acceptance"});
    for token in [None, Some("wrong-token-000000000000")] {
        let (status, answer) =
            post(&daemon, token, None, "application/json", body.to_string()).await;
        assert_eq!(status, 401, "{answer}");
    }
    let bad: &[(Value, &str)] = &[
        (
            json!({"pipeline": "nope", "environment": "acceptance"}),
            "pipeline:",
        ),
        (json!({"environment": "acceptance"}), "pipeline:"),
        (json!({"pipeline": "deploy"}), "environment:"),
        (
            json!({"pipeline": "deploy", "environment": "a b"}),
            "environment:",
        ),
        (
            json!({"pipeline": "deploy", "environment": "acceptance", "skip_nope": true}),
            "skip_nope:",
        ),
        (
            json!({"pipeline": "deploy", "environment": "acceptance", "skip_api_v2": "yes"}),
            "skip_api_v2:",
        ),
        (
            json!({"pipeline": "deploy", "environment": "acceptance", "colour": "red"}),
            "colour:",
        ),
        (
            json!({"pipeline": "deploy", "environment": "acceptance", "commit": "abc"}),
            "commit:",
        ),
        (
            json!({"pipeline": "deploy", "environment": "acceptance",
                   "override_branches": [{"project": "project-nope", "branch": "main"}]}),
            "override_branches[0].project:",
        ),
        (
            json!({"pipeline": "deploy", "environment": "acceptance",
                   "override_branches": [{"project": "project-api-v2", "branch": "hotfix/../x"}]}),
            "override_branches[0].branch:",
        ),
    ];
    for (body, field) in bad {
        let (status, answer) = trigger(&daemon, None, body).await;
        assert_eq!(status, 422, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.starts_with(field), "{body}: {error}");
    }
    let (status, _) = post(&daemon, Some(TOKEN), None, "application/json", "{not json").await;
    assert_eq!(status, 400);
    let (status, _) = post(&daemon, Some(TOKEN), None, "text/plain", body.to_string()).await;
    assert_eq!(status, 415);
    let (status, _) = post(
        &daemon,
        Some(TOKEN),
        None,
        "application/json",
        vec![b' '; 65537],
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(queued(&daemon), 0, "nothing refused was queued");
    // The token being rotated in works as well.
    let (status, _) = post(
        &daemon,
        Some("api-token-being-rotated-0002"),
        None,
        "application/json",
        body.to_string(),
    )
    .await;
    assert_eq!(status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hotfix_runs_with_a_webhooks_input_and_a_retry_starts_nothing_twice() {
    let daemon = start();
    let body = json!({
        "pipeline": "deploy",
        "environment": "acceptance",
        "skip_console_v1": true,
        "override_branches": [{"project": "project-api-v2", "branch": "hotfix/important_patch"}],
    });
    let (status, first) = trigger(&daemon, Some("hotfix-1"), &body).await;
    assert_eq!(status, 202, "{first}");
    let name = first["execution"].as_str().unwrap().to_string();
    assert!(name.starts_with("deploy-acceptance-"), "{name}");
    // The same key and body: the same execution, answered again.
    let (status, again) = trigger(&daemon, Some("hotfix-1"), &body).await;
    assert_eq!(status, 202);
    assert_eq!(again["execution"], first["execution"]);
    // The same key with another body is refused.
    let mut other = body.clone();
    other["skip_api_v2"] = json!(true);
    let (status, answer) = trigger(&daemon, Some("hotfix-1"), &other).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("another body"));

    daemon.wait_for("the hotfix to run", Duration::from_secs(60), |daemon| {
        daemon.completed().contains_key(&name)
    });
    let input: Value = serde_json::from_str(
        &std::fs::read_to_string(daemon.records().join(format!("{name}.input"))).unwrap(),
    )
    .unwrap();
    assert_eq!(input["environment"], "acceptance");
    assert_eq!(input["skip_console_v1"], true);
    assert_eq!(input["skip_api_v2"], false);
    assert_eq!(
        input["override_branches"],
        json!([{"project": "project-api-v2", "branch": "hotfix/important_patch"}])
    );
    assert_eq!(input["git"]["provider"], "manual");
    assert_eq!(input["git"]["event"], "manual");
    assert_eq!(input["git"]["branch"], "hotfix/important_patch");
    assert_eq!(input["git"]["repository"], "acme/project-api-v2");
    assert_eq!(input["git"]["delivery"], "hotfix-1");

    // Its status, by name, once it ran; an unknown name is a 404.
    daemon.wait_for(
        "its end to be recorded",
        Duration::from_secs(30),
        |daemon| daemon.executions().get(&name).map(String::as_str) == Some("succeeded"),
    );
    let client = reqwest::Client::new();
    let status = |path: String| {
        let client = client.clone();
        async move {
            let response = client.get(path).bearer_auth(TOKEN).send().await.unwrap();
            let code = response.status().as_u16();
            let text = response.text().await.unwrap();
            (
                code,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    let (code, described) = status(format!("{}/{name}", api(&daemon))).await;
    assert_eq!(code, 200, "{described}");
    assert_eq!(described["status"], "succeeded");
    assert_eq!(described["finished"], true);
    let (code, _) = status(format!(
        "{}/deploy-acceptance-0000000-ffffffffffffffffffff",
        api(&daemon)
    ))
    .await;
    assert_eq!(code, 404);
    let unauthenticated = client
        .get(format!("{}/{name}", api(&daemon)))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(daemon.runs().len(), 1, "the retry started nothing");
}

fn trigger_command(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    binary()
        .args(["--config", daemon.config.to_str().unwrap(), "trigger"])
        .args(["--url", &format!("http://{}", daemon.address)])
        .args(args)
        .env("GITDISPATCH_TOKEN", TOKEN)
        .env("GITDISPATCH_API_TOKEN", TOKEN)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_wait_follows_a_run_to_its_end_and_says_how_it_went() {
    let daemon = start();
    let output = trigger_command(
        &daemon,
        &[
            "--pipeline",
            "deploy",
            "--environment",
            "acceptance",
            "--branch",
            "project-api-v2=hotfix/important_patch",
            "--skip",
            "console_v1",
            "--wait",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("queued deploy-acceptance-"), "{stdout}");
    assert!(
        stdout.lines().last().unwrap().starts_with("succeeded "),
        "{stdout}"
    );

    let output = trigger_command(
        &daemon,
        &[
            "--pipeline",
            "broken",
            "--environment",
            "ci",
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.lines().last().unwrap().starts_with("failed "),
        "{stdout}"
    );

    // A refusal is said, and the exit status says it too.
    let output = trigger_command(&daemon, &["--pipeline", "nope", "--environment", "ci"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("pipeline: no pipeline is named"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn without_tokens_there_is_no_api() {
    let app = common::spawn_app(common::example_config()).await;
    let response = app
        .client
        .post(format!("{}/v1/executions", app.address))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(json!({"pipeline": "deploy", "environment": "acceptance"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert!(response.text().await.unwrap().contains("[api]"));
}
