//! The real binary on the embedded default: signed webhooks in, the SQLite queue in the
//! middle, the local executor running each planned execution to its end exactly once;
//! a kill -9 in the middle of a burst losing nothing that was acknowledged; a SIGTERM
//! or a kill -9 during a serial deployment neither losing it nor letting the next one
//! of its lane overlap it.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::daemon::{Daemon, Run, binary, overlaps};
use common::{Delivery, executions, fixture, push_variant};
use serde_json::Value;

fn example_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gitdispatch.toml"))
        .unwrap()
}

/// The inputs `gitdispatch plan` gives for a payload, by name.
fn planned_inputs(config: &Path, event: &str, payload: &str) -> HashMap<String, Value> {
    let output = binary()
        .args([
            "--config",
            config.to_str().unwrap(),
            "plan",
            "--event",
            event,
            "--payload",
            &format!("fixtures/github/{payload}"),
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

/// Checks the lanes: within each environment of a serial pipeline, no two runs
/// overlapped in time.
fn assert_no_overlap(runs: &HashMap<String, Run>, environments: &[&str]) {
    for environment in environments {
        let lane: Vec<&Run> = runs
            .values()
            .filter(|run| run.environment == *environment)
            .collect();
        let found = overlaps(&lane);
        assert!(
            found.is_empty(),
            "{environment}: overlapping runs {found:?}"
        );
    }
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
        let planned = planned_inputs(&daemon.config, event, payload);
        let mut planned_names: Vec<&String> = planned.keys().collect();
        planned_names.sort();
        let mut answered: Vec<&String> = names.iter().collect();
        answered.sort();
        assert_eq!(
            answered, planned_names,
            "{payload}: the answer names the plan"
        );
        for (name, mut input) in planned {
            // The input names the delivery that planned it; `plan` used its own id.
            input["git"]["delivery"] = Value::String(delivery.id.clone());
            expected.insert(name, input);
        }
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
            let completed = daemon.completed();
            expected.keys().all(|name| completed.contains_key(name))
        },
    );
    let runs = daemon.runs();
    for (name, input) in &expected {
        let run = &runs[name];
        assert_eq!(run.starts, 1, "{name} ran once");
        let recorded =
            std::fs::read_to_string(daemon.records().join(format!("{name}.input"))).unwrap();
        let recorded: Value = serde_json::from_str(&recorded).unwrap();
        assert_eq!(&recorded, input, "{name} got its planned input on stdin");
    }
    assert_eq!(
        runs.len(),
        expected.len(),
        "nothing ran that was not planned"
    );

    // Serial lanes: executions never overlap, and run in commit (send) order.
    assert_no_overlap(&runs, &["acceptance", "pr-42"]);
    for environment in ["acceptance", "pr-42"] {
        let mut lane: Vec<&Run> = runs
            .values()
            .filter(|run| run.environment == environment)
            .collect();
        lane.sort_by_key(|run| run.first_ns);
        if environment == "acceptance" {
            let order: Vec<&Value> = lane
                .iter()
                .map(|run| &expected[&run.planned]["git"]["commit"])
                .collect();
            assert_eq!(
                order,
                [
                    "a1b1c1d1e1f1a1b1c1d1e1f1a1b1c1d1e1f1a1b1",
                    "a2b2c2d2e2f2a2b2c2d2e2f2a2b2c2d2e2f2a2b2",
                    "a3b3c3d3e3f3a3b3c3d3e3f3a3b3c3d3e3f3a3b3"
                ]
            );
        } else {
            let actions: Vec<&Value> = lane
                .iter()
                .map(|run| &expected[&run.planned]["git"]["action"])
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
        assert_eq!(line["attempt"], 1);
        assert_eq!(&line["input"], &expected[name]);
        let log = std::fs::read_to_string(line["log"].as_str().unwrap()).unwrap();
        assert!(log.starts_with("[gitdispatch] "), "{log}");
        assert!(!log.contains("error"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_or_replayed_webhook_does_not_run_twice() {
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
    // GitHub's redelivery keeps the delivery id; a replay of the captured body comes
    // with a new one.
    for again in [
        delivery,
        Delivery::fixture("push", "push_branch_commits.json"),
    ] {
        let answer = again.post(&client, &daemon.url()).await.unwrap();
        assert_eq!(answer.status, 202);
        assert_eq!(executions(&answer), names);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs = daemon.runs();
    assert_eq!(runs.len(), names.len(), "nothing ran again: {runs:?}");
    for name in &names {
        assert_eq!(runs[name].starts, 1, "{name} ran again");
    }
}

/// Only the parallel `build` pipeline, so a burst drains fast; jobs the killed daemon
/// held come back after 3 s instead of 30.
fn build_only() -> String {
    let text = short_visibility(&example_text());
    let routes = text.find("[[routes]]").unwrap();
    let second_route = routes + 1 + text[routes + 1..].find("[[routes]]").unwrap();
    text[..second_route].to_string()
}

fn short_visibility(text: &str) -> String {
    text.replace(
        "visibility_timeout_secs = 30",
        "visibility_timeout_secs = 3",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_a_burst_loses_nothing_acknowledged_and_runs_nothing_twice() {
    let mut daemon = Daemon::start(&build_only(), &[("RECORD_SLEEP", "0.2")]);
    // A request cut off by the kill must end (as not acknowledged), never wait: a
    // connection pool's waiter for a connection that died with the daemon can hang.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let url = daemon.url();
    let acknowledged: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Arc::default();
    let mut sends = Vec::new();
    for n in 0..40 {
        let client = client.clone();
        let url = url.clone();
        let acknowledged = acknowledged.clone();
        sends.push(tokio::spawn(async move {
            // Forty pushes of their own (a delivery of the same push would plan the
            // same names).
            let delivery = Delivery::new("push", push_variant("push_branch_commits.json", n));
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

    daemon.spawn(&[("RECORD_SLEEP", "0.2")]);
    // Every acknowledged execution runs to its end, and so does every run the kill cut
    // short (as a second attempt), whether or not its delivery's answer got out before
    // the kill: a job that was durable is run either way.
    daemon.wait_for(
        "every acknowledged or interrupted execution to run to its end",
        Duration::from_secs(180),
        |daemon| {
            let completed = daemon.completed();
            let recorded = daemon.executions();
            acknowledged.iter().all(|name| {
                completed.contains_key(name)
                    && recorded.get(name).is_some_and(|status| status != "running")
            }) && daemon
                .runs()
                .values()
                .filter(|run| !run.ended)
                .all(|run| completed.contains_key(&run.planned))
        },
    );
    let runs = daemon.runs();
    let recorded = daemon.executions();
    let mut interrupted_runs = 0;
    for (name, run) in &runs {
        assert_eq!(run.starts, 1, "{name} started {} times", run.starts);
        if !run.ended {
            interrupted_runs += 1;
        }
    }
    let completed = daemon.completed();
    let statuses = daemon.attempt_statuses();
    for name in &acknowledged {
        // Exactly once as the daemon recorded it. A run whose command wrote its end
        // just before the kill, before the daemon recorded that end, is recorded as
        // interrupted and runs again as the next attempt (the README's limit: at least
        // once across crashes, exactly once per attempt name).
        let succeeded: Vec<&str> = completed[name]
            .iter()
            .filter(|run| {
                let status = statuses.get(&run.name).map(String::as_str);
                assert!(
                    matches!(status, Some("succeeded" | "interrupted")),
                    "{} ended, recorded as {status:?}",
                    run.name
                );
                status == Some("succeeded")
            })
            .map(|run| run.name.as_str())
            .collect();
        assert_eq!(
            succeeded.len(),
            1,
            "{name} ran to its end exactly once: {succeeded:?}"
        );
        assert_eq!(recorded.get(name).map(String::as_str), Some("succeeded"));
    }
    // Only the kill interrupts: a run cut short has a later attempt that ended.
    for run in runs.values().filter(|run| !run.ended) {
        assert!(
            completed.contains_key(&run.planned),
            "{} was cut short and never ran again",
            run.name
        );
    }
    println!("runs cut short by the kill: {interrupted_runs}");
    assert!(daemon.terminate().success());
}

/// The example with a slow serial lane: each deploy runs `RECORD_SLEEP` seconds, jobs
/// come back 3 s after a kill, and shutdown waits 1 s before it interrupts.
fn slow_lane() -> String {
    short_visibility(&example_text()).replace("shutdown_grace_secs = 30", "shutdown_grace_secs = 1")
}

/// The deploy runs of the acceptance lane, by when they began.
fn acceptance_lane(daemon: &Daemon) -> Vec<Run> {
    let mut lane: Vec<Run> = daemon
        .runs()
        .into_values()
        .filter(|run| run.environment == "acceptance")
        .collect();
    lane.sort_by_key(|run| run.first_ns);
    lane
}

fn acceptance_planned(daemon: &Daemon) -> Vec<String> {
    planned_inputs(&daemon.config, "push", "push_branch_commits.json")
        .into_iter()
        .filter(|(_, input)| input["environment"] == "acceptance")
        .map(|(name, input)| (input["git"]["commit"].as_str().unwrap().to_string(), name))
        .collect::<std::collections::BTreeMap<_, _>>()
        // Commits a1…, a2…, a3… sort in commit order.
        .into_values()
        .collect()
}

/// After an interruption of the first deploy of the lane: every deploy ran to its end
/// in commit order, the first one twice (cut short, then as attempt 2), and no two
/// runs of the lane overlapped.
fn assert_lane_recovered(daemon: &Daemon, planned: &[String]) {
    let lane = acceptance_lane(daemon);
    let order: Vec<(&str, bool)> = lane
        .iter()
        .map(|run| (run.planned.as_str(), run.ended))
        .collect();
    assert_eq!(
        order,
        vec![
            (planned[0].as_str(), false),
            (planned[0].as_str(), true),
            (planned[1].as_str(), true),
            (planned[2].as_str(), true),
        ],
        "cut short, run again, then the rest in commit order: {lane:?}"
    );
    assert!(lane[1].name.contains("-a2-"), "{}", lane[1].name);
    let refs: Vec<&Run> = lane.iter().collect();
    assert_eq!(overlaps(&refs), Vec::<(String, String)>::new());
    let recorded = daemon.executions();
    for name in planned {
        assert_eq!(recorded.get(name).map(String::as_str), Some("succeeded"));
    }
}

/// Starts the daemon again, with quick deploys, and checks how the lane recovered.
fn restart_and_finish_the_lane(daemon: &mut Daemon, planned: &[String]) {
    daemon.spawn(&[("RECORD_SLEEP", "0.5")]);
    daemon.wait_for(
        "the lane to finish after the restart",
        Duration::from_secs(90),
        |daemon| {
            // The script writes its last line a moment before the daemon sees it
            // exit and records the end: wait for both.
            let recorded = daemon.executions();
            acceptance_lane(daemon)
                .iter()
                .filter(|run| run.ended)
                .count()
                == 3
                && planned
                    .iter()
                    .all(|name| recorded.get(name).is_some_and(|status| status != "running"))
        },
    );
    assert_lane_recovered(daemon, planned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_serial_deploy_runs_it_again_before_the_rest_of_its_lane() {
    let mut daemon = Daemon::start(&slow_lane(), &[("RECORD_SLEEP", "3")]);
    let planned = acceptance_planned(&daemon);
    let answer = Delivery::fixture("push", "push_branch_commits.json")
        .post(&reqwest::Client::new(), &daemon.url())
        .await
        .unwrap();
    assert_eq!(answer.status, 202);
    daemon.wait_for(
        "the first deploy to start",
        Duration::from_secs(30),
        |daemon| !acceptance_lane(daemon).is_empty(),
    );
    // A routine restart: SIGTERM, the grace period runs out, the deploy is stopped.
    assert!(daemon.terminate().success());
    let recorded = daemon.executions();
    assert_eq!(
        recorded.get(&planned[0]).map(String::as_str),
        Some("interrupted")
    );

    restart_and_finish_the_lane(&mut daemon, &planned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_the_deploy_left_running_is_stopped_before_its_lane_goes_on() {
    let mut daemon = Daemon::start(&slow_lane(), &[("RECORD_SLEEP", "30")]);
    let planned = acceptance_planned(&daemon);
    let answer = Delivery::fixture("push", "push_branch_commits.json")
        .post(&reqwest::Client::new(), &daemon.url())
        .await
        .unwrap();
    assert_eq!(answer.status, 202);
    daemon.wait_for(
        "the first deploy to run for a while",
        Duration::from_secs(30),
        |daemon| {
            daemon
                .lines()
                .iter()
                .filter(|line| line.environment == "acceptance" && line.kind == "tick")
                .count()
                >= 3
        },
    );
    // kill -9: the deploy's process group is not ours to take down any more; it keeps
    // writing ticks until the restarted daemon stops it.
    daemon.kill();
    let ticks = |daemon: &Daemon| {
        daemon
            .lines()
            .iter()
            .filter(|line| line.kind == "tick")
            .count()
    };
    let before = ticks(&daemon);
    std::thread::sleep(Duration::from_millis(500));
    assert!(ticks(&daemon) > before, "the orphan runs on after the kill");

    restart_and_finish_the_lane(&mut daemon, &planned);
    let log = daemon.log();
    assert!(
        log.contains("Stopped the processes of an execution a stopped daemon left behind"),
        "{log}"
    );
    let runs: HashSet<String> = daemon.runs().into_keys().collect();
    assert!(runs.contains(&planned[0]));
}
