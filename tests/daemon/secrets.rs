//! Secrets never show: the real binary runs with known secrets (a webhook secret from
//! the environment, one written in the file, an API token) and is driven through every
//! error path it can reach at every log level; nothing it printed or answered holds a
//! secret. A file holding secrets that others may read is warned about.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::daemon::{Daemon, binary};
use common::{Delivery, SECRET, fixture};
use gitdispatch::source::github::sign;

const TOKEN: &str = "ghp_S3CRETtoken0000000000000000000000";
const SCOPED: &str = "literal-S3CRET-scoped-7f2a";

fn config_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gitdispatch.toml"))
        .unwrap()
        .replace(
            "webhook_secrets = [\"${GITHUB_WEBHOOK_SECRET}\"]",
            &format!(
                "webhook_secrets = [\"${{GITHUB_WEBHOOK_SECRET}}\", {{ secret = \"{SCOPED}\", repositories = [\"acme/billing-*\"] }}]\ntoken = \"${{GITHUB_TOKEN}}\""
            ),
        )
        .replace("per_second = 50", "per_second = 1")
        .replace("burst = 200", "burst = 40")
}

/// Everything a command printed.
fn run(command: &mut Command) -> String {
    let output = command.env("GITHUB_TOKEN", TOKEN).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [SECRET, TOKEN, SCOPED] {
        assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
    }
    // Nor the signature a secret makes of a known body (a keyed hash is no secret,
    // but there is no reason to print one either).
    assert!(
        !text.contains(&sign(SECRET.as_bytes(), b"{}")[7..]),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_shows_in_logs_answers_metrics_or_commands() {
    let daemon = Daemon::start(
        &config_text(),
        &[("GITDISPATCH_LOG", "trace"), ("GITHUB_TOKEN", TOKEN)],
    );
    std::fs::set_permissions(&daemon.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let client = reqwest::Client::new();
    let url = daemon.url();
    let mut answers = String::new();
    let push = fixture("github/push_branch_commits.json");

    let mut cases: Vec<Delivery> = Vec::new();
    cases.push(Delivery::new("push", push.clone()));
    cases.push(Delivery::new("ping", fixture("github/ping.json")));
    cases.push(Delivery::new(
        "issue_comment",
        fixture("github/issue_comment.json"),
    ));
    let mut wrong = Delivery::new("push", push.clone());
    wrong.signature = Some(sign(b"wrong", &push));
    cases.push(wrong);
    let mut unsigned = Delivery::new("push", push.clone());
    unsigned.signature = None;
    cases.push(unsigned);
    let billing = String::from_utf8(push.clone())
        .unwrap()
        .replace("acme/project-api-v2", "acme/project-web");
    let mut scoped = Delivery::new("push", billing.into_bytes());
    scoped.signature = Some(sign(SCOPED.as_bytes(), &scoped.body));
    cases.push(scoped);
    cases.push(Delivery::new("push", b"{not json".to_vec()));
    cases.push(Delivery::new("push", b"{}".to_vec()));
    let mut form = Delivery::new("push", b"nothing=here".to_vec());
    form.content_type = "application/x-www-form-urlencoded".into();
    form.signature = Some(sign(SECRET.as_bytes(), &form.body));
    cases.push(form);
    let mut text = Delivery::new("push", push.clone());
    text.content_type = "text/plain".into();
    cases.push(text);
    for delivery in &cases {
        let answer = delivery.post(&client, &url).await.unwrap();
        answers.push_str(&format!("{} {}\n", answer.status, answer.body));
    }
    // Over the rate limit.
    for _ in 0..60 {
        let answer = Delivery::new("ping", fixture("github/ping.json"))
            .post(&client, &url)
            .await
            .unwrap();
        answers.push_str(&format!("{} {}\n", answer.status, answer.body));
    }
    assert!(answers.contains("429"), "{answers}");
    for path in ["/metrics", "/healthz", "/readyz", "/nope"] {
        let response = client
            .get(format!("http://{}{path}", daemon.address))
            .send()
            .await
            .unwrap();
        answers.push_str(&response.text().await.unwrap());
    }
    assert_no_secret("the answers and /metrics", &answers);

    // The one-shot commands, on success and on failure.
    let config = daemon.config.to_str().unwrap();
    let check = run(binary().args(["--config", config, "check-config"]));
    assert!(
        check.contains("warning:") && check.contains("github.webhook_secrets[1]"),
        "a file others may read with a secret in it is warned about: {check}"
    );
    assert_no_secret("check-config", &check);
    let missing = run(binary()
        .args(["--config", config, "check-config"])
        .env_remove("GITHUB_WEBHOOK_SECRET"));
    assert!(
        missing.contains("GITHUB_WEBHOOK_SECRET is not set"),
        "{missing}"
    );
    assert_no_secret("check-config without a variable", &missing);
    for args in [
        vec![
            "plan",
            "--event",
            "push",
            "--payload",
            "fixtures/github/push_branch_commits.json",
            "--explain",
        ],
        vec!["plan", "--event", "push", "--payload", "/nonexistent"],
        vec![
            "send",
            "--event",
            "push",
            "--payload",
            "fixtures/github/push_branch_commits.json",
            "--url",
            "http://127.0.0.1:9/nothing",
        ],
        vec!["executions", "--json"],
        vec!["dlq", "list"],
    ] {
        let mut command = binary();
        command.args(["--config", config]).args(&args);
        let printed = run(&mut command);
        assert_no_secret(&args.join(" "), &printed);
    }

    // And the daemon's own log, at trace level, warning included.
    daemon.wait_for(
        "the push's executions",
        std::time::Duration::from_secs(60),
        |daemon| daemon.executions().len() >= 6,
    );
    let log = daemon.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the log was verbose"
    );
    assert!(log.contains("others than its owner may read it"), "{log}");
    assert_no_secret("the daemon's log", &log);
}
