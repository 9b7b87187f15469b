//! Reloading a running daemon (SIGHUP, or `gitdispatch reload` through the API) while
//! deliveries flow: a valid configuration's routes, pipelines and secrets take effect at
//! once and no request fails; an invalid one is refused whole, every problem logged, and
//! the running one goes on; a setting only a restart can change is said, not taken.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::daemon::{Daemon, binary, write_config};
use common::{Delivery, executions};

const TOKEN: &str = "api-token-for-reload-0001";
const NEW_SECRET: &str = "the-secret-rotated-in";

fn config(extra_secret: &str, extra_route: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:8080"

[github]
webhook_secrets = ["${{GITHUB_WEBHOOK_SECRET}}"{extra_secret}]

[api]
tokens = ["{TOKEN}"]

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
{extra_route}
"#
    )
}

const SECOND_ROUTE: &str = r#"
[[pipelines]]
name = "lint"
command = ["sh", "deploy/local/deploy.sh"]

[[routes]]
pipeline = "lint"
events = ["push"]
environment = "ci"
"#;

fn hangup(daemon: &Daemon) {
    // SAFETY: kill(2) touches no memory of ours.
    unsafe {
        libc::kill(daemon.pid() as libc::pid_t, libc::SIGHUP);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_takes_effect_at_once_and_fails_no_request() {
    let daemon = Daemon::start(&config("", ""), &[("RECORD_SLEEP", "0")]);
    let url = daemon.url();
    // Deliveries flow the whole time; every one must be answered 202.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let flow = {
        let (stop, sent, url) = (stop.clone(), sent.clone(), url.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut failures = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let delivery =
                    Delivery::new("push", common::push_variant("push_branch_commits.json", n));
                match delivery.post(&client, &url).await {
                    Ok(answer) if answer.status == 202 => {}
                    Ok(answer) => failures.push(format!("{} {}", answer.status, answer.body)),
                    Err(error) => failures.push(error.to_string()),
                }
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        })
    };
    let names_of_a_push = || async {
        let answer = Delivery::new(
            "push",
            common::push_variant("push_branch_commits.json", 1_000_000 + rand_n()),
        )
        .post(&reqwest::Client::new(), &url)
        .await
        .unwrap();
        executions(&answer)
    };
    assert!(
        names_of_a_push()
            .await
            .iter()
            .all(|name| name.starts_with("build-"))
    );

    // A second pipeline and route, and a secret rotated in: taken on SIGHUP.
    write_config(
        daemon.directory.path(),
        &config(&format!(", \"{NEW_SECRET}\""), SECOND_ROUTE),
    );
    hangup(&daemon);
    daemon.wait_for("the reload", Duration::from_secs(20), |daemon| {
        daemon.log().contains("Reloaded the configuration.")
    });
    let names = names_of_a_push().await;
    assert!(
        names.iter().any(|name| name.starts_with("lint-")),
        "{names:?}"
    );
    let mut signed = Delivery::new("push", common::push_variant("push_branch_commits.json", 7));
    signed.signature = Some(gitdispatch::source::github::sign(
        NEW_SECRET.as_bytes(),
        &signed.body,
    ));
    let answer = signed.post(&reqwest::Client::new(), &url).await.unwrap();
    assert_eq!(
        answer.status, 202,
        "the rotated-in secret is taken: {}",
        answer.body
    );

    // An invalid configuration is refused whole; the running one goes on.
    let broken = config("", "").replace("[queue]", "[queue]\nno_such_key = 1")
        + "\n[[routes]]\npipeline = \"nope\"\nenvironment = \"x\"\n";
    write_config(daemon.directory.path(), &broken);
    hangup(&daemon);
    daemon.wait_for("the refusal", Duration::from_secs(20), |daemon| {
        daemon.log().contains("Refused a reloaded configuration")
    });
    let log = daemon.log();
    assert!(log.contains("no_such_key"), "{log}");
    let names = names_of_a_push().await;
    assert!(
        names.iter().any(|name| name.starts_with("lint-")),
        "still the last good one"
    );

    // Through the API: what a restart would change is said, and not taken.
    write_config(
        daemon.directory.path(),
        &config(&format!(", \"{NEW_SECRET}\""), SECOND_ROUTE)
            .replace("[worker]", "")
            .replace("[queue]", "[worker]\nconcurrency = 3\n\n[queue]"),
    );
    let output = binary()
        .args(["--config", daemon.config.to_str().unwrap(), "reload"])
        .args(["--url", &format!("http://{}", daemon.address)])
        .env("GITDISPATCH_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("a restart is needed for: worker"),
        "{stdout}"
    );

    // Let the flow go on across the reloads for a while before it stops.
    while sent.load(Ordering::SeqCst) < 30 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let failures = flow.await.unwrap();
    assert!(
        failures.is_empty(),
        "requests failed during reloads: {failures:?}"
    );
}

fn rand_n() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// A reload that turns on what needs a store the daemon did not open at start (the API,
/// whose idempotency keys live in the ledger) is refused whole with the reason, never
/// half taken: the daemon goes on without the API, and answers every delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turning_on_the_api_without_its_ledger_is_refused_as_restart_only() {
    let without_api = config("", "").replace(&format!("[api]\ntokens = [\"{TOKEN}\"]\n"), "");
    let daemon = Daemon::start(&without_api, &[("RECORD_SLEEP", "0")]);
    let client = reqwest::Client::new();
    let answer = Delivery::new("push", common::push_variant("push_branch_commits.json", 2))
        .post(&client, &daemon.url())
        .await
        .unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    write_config(daemon.directory.path(), &config("", ""));
    hangup(&daemon);
    daemon.wait_for("the refusal", Duration::from_secs(20), |daemon| {
        daemon.log().contains("Refused a reloaded configuration")
    });
    let log = daemon.log();
    assert!(log.contains("only a restart can take"), "{log}");
    let trigger = client
        .post(format!("http://{}/v1/executions", daemon.address))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .header("idempotency-key", "k-1")
        .body(r#"{"pipeline": "build", "environment": "ci"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(trigger.status().as_u16(), 404, "the API stays off");
    let answer = Delivery::new("push", common::push_variant("push_branch_commits.json", 3))
        .post(&client, &daemon.url())
        .await
        .unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
}
