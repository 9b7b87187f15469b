//! The real binary on the embedded default: signed webhooks in, the SQLite queue in the
//! middle, the local executor running each planned execution exactly once; and a
//! kill -9 in the middle of a burst losing nothing that was acknowledged.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::daemon::{Daemon, binary};
use common::{Delivery, executions, fixture};
use serde_json::Value;

fn example_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gitdispatch.toml"))
        .unwrap()
}

/// The inputs `gitdispatch plan` gives for a payload under a delivery id, by name.
fn planned_inputs(
    config: &Path,
    event: &str,
    payload: &str,
    delivery: &str,
) -> HashMap<String, Value> {
    let output = binary()
        .args([
            "--config",
            config.to_str().unwrap(),
            "plan",
            "--event",
            event,
            "--payload",
            &format!("fixtures/github/{payload}"),
            "--delivery",
            delivery,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            (
                value["name"].as_str().unwrap().to_string(),
                value["input"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_planned_execution_runs_once_with_its_planned_input_and_serial_ones_in_order() {
    let daemon = Daemon::start(&example_text(), &[("RECORD_SLEEP", "0.3")]);
    let client = reqwest::Client::new();
    let mut expected: HashMap<String, Value> = HashMap::new();
    for (event, payload) in [
        ("push", "push_branch_commits.json"),
        ("pull_request", "pull_request_opened.json"),
        ("pull_request", "pull_request_synchronize.json"),
        ("pull_request", "pull_request_closed_merged.json"),
    ] {
        let delivery = Delivery::new(event, fixture(&format!("github/{payload}")));
        let answer = delivery.post(&client, &daemon.url()).await.unwrap();
        assert_eq!(answer.status, 202, "{payload}: {}", answer.body);
        let names = executions(&answer);
        let planned = planned_inputs(&daemon.config, event, payload, &delivery.id);
        let mut planned_names: Vec<&String> = planned.keys().collect();
        planned_names.sort();
        let mut answered: Vec<&String> = names.iter().collect();
        answered.sort();
        assert_eq!(
            answered, planned_names,
            "{payload}: the answer names the plan"
        );
        expected.extend(planned);
    }
    assert_eq!(
        expected.len(),
        9,
        "6 for the push, 1 per pull request event"
    );

    daemon.wait_for(
        "every execution to end",
        Duration::from_secs(90),
        |daemon| {
            let events = daemon.events();
            expected
                .keys()
                .all(|name| events.get(name).is_some_and(|lines| lines.len() >= 2))
        },
    );
    let events = daemon.events();
    for (name, input) in &expected {
        let lines = &events[name];
        assert_eq!(
            lines.iter().filter(|(kind, _, _)| kind == "start").count(),
            1,
            "{name} ran once"
        );
        let recorded =
            std::fs::read_to_string(daemon.records().join(format!("{name}.input"))).unwrap();
        let recorded: Value = serde_json::from_str(&recorded).unwrap();
        assert_eq!(&recorded, input, "{name} got its planned input on stdin");
    }
    assert_eq!(
        events.len(),
        expected.len(),
        "nothing ran that was not planned"
    );

    // Serial groups: executions never overlap, and run in commit (send) order.
    for environment in ["acceptance", "pr-42"] {
        let mut runs: Vec<(u128, u128, String)> = events
            .iter()
            .filter(|(_, lines)| lines[0].1 == environment)
            .map(|(name, lines)| {
                let start = lines.iter().find(|l| l.0 == "start").unwrap().2;
                let end = lines.iter().find(|l| l.0 == "end").unwrap().2;
                (start, end, name.clone())
            })
            .collect();
        runs.sort();
        for pair in runs.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{environment}: {} overlapped {}",
                pair[0].2,
                pair[1].2
            );
        }
        let order: Vec<Value> = runs
            .iter()
            .map(|(_, _, name)| expected[name]["git"]["commit"].clone())
            .collect();
        if environment == "acceptance" {
            assert_eq!(
                order,
                [
                    "a1b1c1d1e1f1a1b1c1d1e1f1a1b1c1d1e1f1a1b1",
                    "a2b2c2d2e2f2a2b2c2d2e2f2a2b2c2d2e2f2a2b2",
                    "a3b3c3d3e3f3a3b3c3d3e3f3a3b3c3d3e3f3a3b3"
                ]
            );
        } else {
            let actions: Vec<Value> = runs
                .iter()
                .map(|(_, _, name)| expected[name]["git"]["action"].clone())
                .collect();
            assert_eq!(
                actions,
                ["deploy", "deploy", "teardown"],
                "the teardown comes last"
            );
        }
    }

    // `gitdispatch executions` shows them, all succeeded.
    daemon.wait_for(
        "every execution recorded as ended",
        Duration::from_secs(30),
        |daemon| {
            let recorded = daemon.executions();
            expected.keys().all(|name| {
                recorded
                    .get(name)
                    .is_some_and(|status| status == "succeeded")
            })
        },
    );
    let output = binary()
        .args([
            "--config",
            daemon.config.to_str().unwrap(),
            "executions",
            "--json",
            "--limit",
            "50",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let listed: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(listed.len(), expected.len());
    for line in &listed {
        let name = line["name"].as_str().unwrap();
        assert_eq!(line["status"], "succeeded");
        assert_eq!(&line["input"], &expected[name]);
        let log = std::fs::read_to_string(line["log"].as_str().unwrap()).unwrap_or_default();
        assert!(log.is_empty() || !log.contains("error"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_webhook_does_not_run_twice() {
    let daemon = Daemon::start(&example_text(), &[]);
    let client = reqwest::Client::new();
    let delivery = Delivery::fixture("push", "push_branch_commits.json");
    let first = delivery.post(&client, &daemon.url()).await.unwrap();
    assert_eq!(first.status, 202);
    let names = executions(&first);
    daemon.wait_for(
        "the first delivery's executions",
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
    // GitHub's redelivery keeps the delivery id.
    assert_eq!(
        delivery.post(&client, &daemon.url()).await.unwrap().status,
        202
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = daemon.events();
    for name in &names {
        let starts = events[name].iter().filter(|l| l.0 == "start").count();
        assert_eq!(starts, 1, "{name} ran again after a redelivery");
    }
}

/// Only the parallel `build` pipeline, so a burst drains fast; jobs the killed daemon
/// held come back after 3 s instead of 30.
fn build_only() -> String {
    let text = example_text().replace(
        "visibility_timeout_secs = 30",
        "visibility_timeout_secs = 3",
    );
    let routes = text.find("[[routes]]").unwrap();
    let second_route = routes + 1 + text[routes + 1..].find("[[routes]]").unwrap();
    text[..second_route].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_burst_loses_nothing_acknowledged_and_runs_nothing_twice() {
    let mut daemon = Daemon::start(&build_only(), &[("RECORD_SLEEP", "0.05")]);
    let client = reqwest::Client::new();
    let url = daemon.url();
    let acknowledged: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Arc::default();
    let mut sends = Vec::new();
    for _ in 0..40 {
        let client = client.clone();
        let url = url.clone();
        let acknowledged = acknowledged.clone();
        sends.push(tokio::spawn(async move {
            let delivery = Delivery::fixture("push", "push_branch_commits.json");
            if let Ok(answer) = delivery.post(&client, &url).await {
                if (200..300).contains(&answer.status) {
                    let names = executions(&answer);
                    acknowledged.lock().unwrap().push(names);
                }
            }
        }));
    }
    // Kill once some deliveries were acknowledged and others are still in flight.
    for _ in 0..6000 {
        if acknowledged.lock().unwrap().len() >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.kill();
    for send in sends {
        send.await.unwrap();
    }
    let acknowledged: Vec<String> = acknowledged
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .cloned()
        .collect();
    assert!(
        acknowledged.len() >= 24,
        "at least 8 deliveries were acknowledged before the kill"
    );

    daemon.spawn(&[("RECORD_SLEEP", "0.05")]);
    daemon.wait_for(
        "every acknowledged execution after the restart",
        Duration::from_secs(120),
        |daemon| {
            let recorded = daemon.executions();
            acknowledged
                .iter()
                .all(|name| recorded.get(name).is_some_and(|status| status != "running"))
        },
    );
    let events = daemon.events();
    let recorded = daemon.executions();
    let mut ran = HashSet::new();
    for (name, lines) in &events {
        let starts = lines.iter().filter(|l| l.0 == "start").count();
        assert_eq!(starts, 1, "{name} started {starts} times");
        ran.insert(name.clone());
        assert!(recorded.contains_key(name), "{name} ran without a record");
    }
    for name in &acknowledged {
        assert!(
            recorded.contains_key(name),
            "acknowledged {name} has no execution"
        );
    }
    let interrupted = recorded
        .values()
        .filter(|status| *status == "interrupted")
        .count();
    let succeeded = recorded
        .values()
        .filter(|status| *status == "succeeded")
        .count();
    assert_eq!(interrupted + succeeded, recorded.len(), "{recorded:?}");
    assert!(succeeded >= acknowledged.len() - interrupted);
    assert!(daemon.terminate().success());
}
