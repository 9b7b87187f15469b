//! What the AWS tests share: the sample state machine of deploy/ created in moto,
//! config/aws.toml pointed at moto's queue and state machine, plans made as the
//! listener makes them, and waits on what Step Functions and SQS hold.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use aws_sdk_sfn::types::ExecutionStatus;
use gitdispatch::execution::ExecutionRequest;
use gitdispatch::plan::Planner;
use gitdispatch::source::github::{self, Decoded};
use gitdispatch::worker::WorkerSettings;

use super::{config_from, moto};

pub fn repository_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// Creates the sample deployment state machine of deploy/stepfunctions in moto.
pub async fn create_sample_state_machine(client: &aws_sdk_sfn::Client) -> String {
    client
        .create_state_machine()
        .name(moto::unique("deploy-sample"))
        .definition(repository_file("deploy/stepfunctions/deploy.asl.json"))
        .role_arn("arn:aws:iam::123456789012:role/gitdispatch-sample")
        .send()
        .await
        .unwrap()
        .state_machine_arn()
        .to_string()
}

/// `config/aws.toml`, pointed at the given queue and state machine.
pub fn aws_config_text(queue_url: &str, state_machine_arn: &str) -> String {
    repository_file("config/aws.toml")
        .replace(
            "url = \"https://sqs.us-east-1.amazonaws.com/123456789012/gitdispatch.fifo\"",
            &format!("url = \"{queue_url}\""),
        )
        .replace(
            "state_machine_arn = \"arn:aws:states:us-east-1:123456789012:stateMachine:deploy-sample\"",
            &format!("state_machine_arn = \"{state_machine_arn}\""),
        )
        .replace("listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:8080\"")
        .replace("poll_interval_secs = 5", "poll_interval_secs = 1")
}

/// Plans a fixture the way the listener would, under a given delivery id.
pub fn plan(
    config_text: &str,
    event: &str,
    fixture: &str,
    delivery: &str,
) -> Vec<ExecutionRequest> {
    plan_body(
        config_text,
        event,
        &super::fixture(&format!("github/{fixture}")),
        delivery,
    )
}

/// Plans a payload the way the listener would, under a given delivery id.
pub fn plan_body(
    config_text: &str,
    event: &str,
    body: &[u8],
    delivery: &str,
) -> Vec<ExecutionRequest> {
    let config = config_from(config_text);
    let planner = Planner::new(&config).unwrap();
    let delivery = gitdispatch::event::DeliveryId::parse(delivery).unwrap();
    let Decoded::Event(event) = github::decode_payload(event, &delivery, body).unwrap() else {
        panic!("not an event");
    };
    planner.plan(&event).unwrap().requests
}

/// Every execution of a state machine, by name, with its status.
pub async fn executions_of(
    client: &aws_sdk_sfn::Client,
    arn: &str,
) -> HashMap<String, (ExecutionStatus, String)> {
    let mut all = HashMap::new();
    let mut token = None;
    loop {
        let page = client
            .list_executions()
            .state_machine_arn(arn)
            .set_next_token(token)
            .send()
            .await
            .unwrap();
        for execution in page.executions() {
            let previous = all.insert(
                execution.name().to_string(),
                (
                    execution.status().clone(),
                    execution.execution_arn().to_string(),
                ),
            );
            assert!(
                previous.is_none(),
                "two executions named {}",
                execution.name()
            );
        }
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            return all;
        }
    }
}

/// The state machine's executions as (start, stop, name), in the order they started;
/// a running one stops at `i64::MAX`. What order and overlap checks read.
pub async fn runs_by_start(client: &aws_sdk_sfn::Client, arn: &str) -> Vec<(i64, i64, String)> {
    let mut runs: Vec<(i64, i64, String)> = client
        .list_executions()
        .state_machine_arn(arn)
        .send()
        .await
        .unwrap()
        .executions()
        .iter()
        .map(|execution| {
            (
                execution.start_date().as_nanos() as i64,
                execution
                    .stop_date()
                    .map_or(i64::MAX, |date| date.as_nanos() as i64),
                execution.name().to_string(),
            )
        })
        .collect();
    runs.sort();
    runs
}

pub async fn wait_until_finished(client: &aws_sdk_sfn::Client, arn: &str, names: &[String]) {
    for _ in 0..600 {
        let all = executions_of(client, arn).await;
        if names.iter().all(|name| {
            all.get(name)
                .is_some_and(|(status, _)| *status != ExecutionStatus::Running)
        }) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "executions did not finish: {:?}",
        executions_of(client, arn).await
    );
}

/// Runs `gitdispatch check-config` against moto.
/// Waits until no message is on the queue, visible or in flight.
pub async fn wait_until_drained(sqs: &aws_sdk_sqs::Client, url: &str) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let mut left = 0;
    for _ in 0..600 {
        let output = sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let attributes = output.attributes().unwrap();
        left = [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        ]
        .iter()
        .map(|key| attributes[key].parse::<u32>().unwrap())
        .sum::<u32>();
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{left} message(s) still on the queue");
}

pub fn settings() -> WorkerSettings {
    WorkerSettings {
        concurrency: 8,
        batch_size: 10,
        receive_wait: Duration::from_secs(1),
        starts_per_second: 100,
        start_burst: 100,
        poll_interval: Duration::from_millis(200),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(2),
        shutdown_grace: Duration::from_secs(5),
        max_hold: Duration::from_secs(11 * 3600),
    }
}
