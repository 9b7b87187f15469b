//! What operators read: the counters after a known sequence of requests, exactly; a
//! `work`-only process serving its own `/metrics` with the start latency; and JSON
//! log lines carrying each span's fields.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, binary, write_config};
use common::{Delivery, SECRET};
use serde_json::Value;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:8080"

[github]
webhook_secrets = ["${GITHUB_WEBHOOK_SECRET}"]

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
branches = ["hotfix/*"]
environment = "ci"
"#;

async fn scrape(address: &str) -> String {
    reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|number| number.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_after_a_known_sequence_are_exact() {
    let daemon = Daemon::start(CONFIG, &[("RECORD_SLEEP", "0")]);
    let client = reqwest::Client::new();
    let url = daemon.url();
    // Two pushes of three commits each, one ping, one bad signature, one push that no
    // route takes.
    for n in 0..2 {
        let answer = Delivery::new("push", common::push_variant("push_branch_commits.json", n))
            .post(&client, &url)
            .await
            .unwrap();
        assert_eq!(answer.status, 202);
    }
    assert_eq!(
        Delivery::fixture("ping", "ping.json")
            .post(&client, &url)
            .await
            .unwrap()
            .status,
        200
    );
    let mut forged = Delivery::fixture("push", "push_branch_commits.json");
    forged.signature = Some("sha256=00".into());
    assert_eq!(forged.post(&client, &url).await.unwrap().status, 401);
    let elsewhere = String::from_utf8(common::push_variant("push_branch_commits.json", 9))
        .unwrap()
        .replace("refs/heads/hotfix/important_patch", "refs/heads/main");
    assert_eq!(
        Delivery::new("push", elsewhere.into_bytes())
            .post(&client, &url)
            .await
            .unwrap()
            .status,
        200
    );
    daemon.wait_for("six executions", Duration::from_secs(60), |daemon| {
        daemon.completed().len() == 6
    });
    // The worker's counters settle once the last job is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = scrape(&daemon.address).await;
        if value(&metrics, "gitdispatch_jobs_total{outcome=\"acked\"}") == Some(6.0)
            || Instant::now() > deadline
        {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (series, expected) in [
        (
            "gitdispatch_deliveries_total{source=\"github\",outcome=\"queued\"}",
            2.0,
        ),
        (
            "gitdispatch_deliveries_total{source=\"github\",outcome=\"ping\"}",
            1.0,
        ),
        (
            "gitdispatch_deliveries_total{source=\"github\",outcome=\"refused_401\"}",
            1.0,
        ),
        (
            "gitdispatch_deliveries_total{source=\"github\",outcome=\"no_executions\"}",
            1.0,
        ),
        (
            "gitdispatch_executions_planned_total{pipeline=\"build\"}",
            6.0,
        ),
        ("gitdispatch_events_unrouted_total{source=\"github\"}", 1.0),
        ("gitdispatch_jobs_total{outcome=\"acked\"}", 6.0),
        (
            "gitdispatch_executions_started_total{pipeline=\"build\",outcome=\"new\"}",
            6.0,
        ),
        (
            "gitdispatch_executions_ended_total{pipeline=\"build\",status=\"succeeded\"}",
            6.0,
        ),
        ("gitdispatch_start_latency_seconds_count", 6.0),
    ] {
        assert_eq!(
            value(&metrics, series),
            Some(expected),
            "{series}\n{metrics}"
        );
    }
}

/// Starts `gitdispatch <role>` on `config`; its child, and its listen address if any.
fn start_role(
    config: &std::path::Path,
    role: &str,
    records: &std::path::Path,
) -> (std::process::Child, Option<String>) {
    let mut child = binary()
        .args(["--config", config.to_str().unwrap(), role])
        .env("GITDISPATCH_LOG", "info")
        .env("RECORD_DIR", records)
        .env("RECORD_SLEEP", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("address=").nth(1) {
                let _ = sender.send(rest.split_whitespace().next().unwrap().to_string());
            }
        }
    });
    let address = receiver.recv_timeout(Duration::from_secs(60)).ok();
    (child, address)
}

fn terminate(mut child: std::process::Child) -> bool {
    // SAFETY: kill(2) touches no memory of ours.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    child.wait().unwrap().success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_only_process_serves_its_own_metrics() {
    // A listener and a worker on one embedded queue, as two processes.
    let directory = tempfile::tempdir().unwrap();
    let records = directory.path().join("records");
    std::fs::create_dir_all(&records).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = CONFIG.replace(
        "[executor]",
        &format!("[worker]\nmetrics_listen = \"127.0.0.1:{port}\"\n\n[executor]"),
    );
    let config = write_config(directory.path(), &text);
    let (listener, listening) = start_role(&config, "listen", &records);
    let (worker, metrics_address) = start_role(&config, "work", &records);
    let address = format!("127.0.0.1:{port}");
    assert_eq!(metrics_address.as_deref(), Some(address.as_str()));
    let answer = Delivery::fixture("push", "push_branch_commits.json")
        .post(
            &reqwest::Client::new(),
            &format!("http://{}/webhooks/github", listening.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let metrics = scrape(&address).await;
        if value(&metrics, "gitdispatch_jobs_total{outcome=\"acked\"}") == Some(3.0) {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "the worker's metrics never showed 3 jobs: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        value(&metrics, "gitdispatch_start_latency_seconds_count"),
        Some(3.0),
        "{metrics}"
    );
    let health = reqwest::get(format!("http://{address}/healthz"))
        .await
        .unwrap();
    assert!(health.status().is_success());
    assert!(terminate(worker));
    assert!(terminate(listener));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_each_spans_fields_and_no_secret() {
    let directory = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(directory.path().join("records")).unwrap();
    let config = write_config(directory.path(), CONFIG);
    let mut daemon = binary()
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("GITDISPATCH_LOG", "info")
        .env("GITDISPATCH_LOG_FORMAT", "json")
        .env("RECORD_DIR", directory.path().join("records"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = daemon.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let address = loop {
        let line = received.recv_timeout(Duration::from_secs(60)).unwrap();
        let parsed: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        seen.push(parsed.clone());
        if let Some(address) = parsed["fields"]["address"].as_str() {
            break address.to_string();
        }
    };
    let delivery = Delivery::fixture("push", "push_branch_commits.json");
    let answer = delivery
        .post(
            &reqwest::Client::new(),
            &format!("http://{address}/webhooks/github"),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 202);
    let deadline = Instant::now() + Duration::from_secs(30);
    let queued = loop {
        let line = received.recv_timeout(Duration::from_secs(30)).unwrap();
        let parsed: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(!line.contains(SECRET), "a secret in the logs: {line}");
        if parsed["fields"]["message"] == "Queued an execution." {
            break parsed;
        }
        assert!(Instant::now() < deadline);
    };
    assert_eq!(queued["level"], "INFO");
    assert_eq!(queued["span"]["delivery"], delivery.id.as_str());
    assert_eq!(queued["span"]["source"], "github");
    assert!(
        queued["fields"]["execution"]
            .as_str()
            .unwrap()
            .starts_with("build-ci-")
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}
