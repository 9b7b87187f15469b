//! The embedded default when its disk fills up: the queue file cannot be written, so
//! the daemon says it is not ready and answers deliveries 503 (GitHub shows them as
//! failed, to be redelivered); nothing it acknowledged before is lost, and it is ready
//! again as soon as the disk is.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::daemon::Daemon;
use common::{Delivery, executions, push_variant};

fn example_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gitdispatch.toml"))
        .unwrap()
}

async fn readiness(client: &reqwest::Client, daemon: &Daemon) -> (u16, serde_json::Value) {
    let response = client
        .get(format!("http://{}/readyz", daemon.address))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_daemon_unready_and_refuse_deliveries_until_it_has_room() {
    let daemon = Daemon::start(&example_text(), &[]);
    let client = reqwest::Client::new();
    let before = Delivery::new("push", push_variant("push_branch_commits.json", 1))
        .post(&client, &daemon.url())
        .await
        .unwrap();
    assert_eq!(before.status, 202);
    let acknowledged = executions(&before);
    daemon.wait_for("the first push to run", Duration::from_secs(60), |daemon| {
        let completed = daemon.completed();
        acknowledged.iter().all(|name| completed.contains_key(name))
    });

    // No write past the first byte of any file succeeds any more.
    daemon.limit_file_size(Some(1));
    let during = Delivery::new("push", push_variant("push_branch_commits.json", 2));
    let answer = during.post(&client, &daemon.url()).await.unwrap();
    assert_eq!(answer.status, 503, "{}", answer.body);
    let mut unready = None;
    for _ in 0..100 {
        let (status, body) = readiness(&client, &daemon).await;
        if status == 503 {
            unready = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unready = unready.expect("readiness reports the full disk");
    assert_eq!(unready["status"], "queue_unavailable");
    assert!(
        unready["reason"]
            .as_str()
            .unwrap()
            .contains("cannot be written"),
        "{unready}"
    );

    // Room again: ready again without any delivery to prompt it, and the refused
    // delivery, redelivered, runs.
    daemon.limit_file_size(None);
    let mut ready = false;
    for _ in 0..100 {
        if readiness(&client, &daemon).await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again once the disk has room");
    let redelivered = during.post(&client, &daemon.url()).await.unwrap();
    assert_eq!(redelivered.status, 202, "{}", redelivered.body);
    let names = executions(&redelivered);
    daemon.wait_for(
        "the redelivered push to run",
        Duration::from_secs(60),
        |daemon| {
            let completed = daemon.completed();
            names.iter().all(|name| completed.contains_key(name))
        },
    );
    let recorded = daemon.executions();
    for name in acknowledged.iter().chain(&names) {
        assert_eq!(
            recorded.get(name).map(String::as_str),
            Some("succeeded"),
            "{name}"
        );
    }
}
