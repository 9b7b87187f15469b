//! gitdispatch on AWS, against moto: the CloudFormation template deployed, the sample
//! state machine from deploy/ executed, the real binary in the middle; idempotency
//! when a delivery or a message comes twice; and every job ending in exactly one
//! execution while a stand-in between us and Step Functions throttles and fails calls.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sfn::types::ExecutionStatus;
use common::aws::{
    aws_config_text, create_sample_state_machine, executions_of, plan, plan_body, repository_file,
    settings, wait_until_drained, wait_until_finished,
};
use common::daemon::{Daemon, binary};
use common::proxy::{self, Fault, Proxy};
use common::{Delivery, config_from, executions, moto};
use gitdispatch::execution::ExecutionRequest;
use gitdispatch::executor::stepfunctions::StepFunctionsExecutor;
use gitdispatch::executor::{Executor, ExecutorError, Started};
use gitdispatch::job::Job;
use gitdispatch::queue::sqs::SqsQueue;
use gitdispatch::queue::{Queue, enqueue};
use gitdispatch::telemetry::Metrics;
use gitdispatch::worker::{Worker, WorkerParts};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn check_config(config: &Path) -> std::process::Output {
    let mut check = binary();
    check.args(["--config", config.to_str().unwrap(), "check-config"]);
    for (key, value) in moto::environment() {
        check.env(key, value);
    }
    check.output().unwrap()
}

#[test]
fn the_template_embeds_the_sample_state_machine_verbatim() {
    let template = repository_file("deploy/aws/gitdispatch.yaml");
    let start = template.find("      Definition:\n").unwrap() + "      Definition:\n".len();
    let end = template[start..].find("\n\nOutputs:").unwrap() + start;
    let embedded: Value = serde_json::from_str(&template[start..end]).unwrap();
    let file: Value =
        serde_json::from_str(&repository_file("deploy/stepfunctions/deploy.asl.json")).unwrap();
    assert_eq!(embedded, file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_step_functions_executor_starts_idempotently_and_describes() {
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let arn = create_sample_state_machine(&sfn).await;
    let text = aws_config_text("https://sqs.us-east-1.amazonaws.com/1/unused.fifo", &arn);
    let requests = plan(&text, "push", "push_branch_commits.json", "delivery-sfn");
    let executor = StepFunctionsExecutor::new(
        sfn.clone(),
        HashMap::from([("deploy".to_string(), arn.clone())]),
    );

    let first = executor.start(&requests[0]).await.unwrap();
    assert!(matches!(first, Started::New(_)), "{first:?}");
    let name = requests[0].name.clone();
    for _ in 0..100 {
        let execution = executor.describe("deploy", &name).await.unwrap();
        if execution.status.is_finished() {
            assert_eq!(
                execution.status,
                gitdispatch::executor::ExecutionStatus::Succeeded
            );
            let output: Value = serde_json::from_str(execution.detail.as_deref().unwrap()).unwrap();
            assert_eq!(output["action"], "deploy");
            let components = output["components"].as_array().unwrap();
            assert_eq!(components[0]["deployed"], true);
            assert_eq!(components[0]["branch"], "hotfix/important_patch");
            assert_eq!(
                components[1]["deployed"], false,
                "console is skipped: skip_console_v1"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Again, after it ended: the same execution, not a second one.
    let again = executor.start(&requests[0]).await.unwrap();
    assert_eq!(again, Started::Existing(first.id().to_string()));
    // The name is the key: another delivery of the same event (another delivery id in
    // the input) finds the same execution.
    let mut other = requests[0].clone();
    other.origin.delivery = gitdispatch::event::DeliveryId::parse("another-delivery").unwrap();
    let mut input: Value = serde_json::from_str(other.input.as_str()).unwrap();
    input["git"]["delivery"] = "another-delivery".into();
    other.input = gitdispatch::execution::Input::from_json(input.to_string()).unwrap();
    assert_ne!(other.input, requests[0].input);
    assert_eq!(
        executor.start(&other).await.unwrap(),
        Started::Existing(first.id().to_string())
    );
    // A state machine that does not exist is a permanent failure.
    let missing = StepFunctionsExecutor::new(
        sfn.clone(),
        HashMap::from([("deploy".to_string(), format!("{arn}-missing"))]),
    );
    assert!(matches!(
        missing.start(&requests[1]).await,
        Err(ExecutorError::Permanent { .. })
    ));
    assert_eq!(executions_of(&sfn, &arn).await.len(), 1);
}

/// Deploys deploy/aws/gitdispatch.yaml to moto's CloudFormation and returns the
/// stack's outputs. The sample state machine is created apart: moto runs only state
/// machines made through its Step Functions API.
async fn deploy_template() -> HashMap<String, String> {
    let name = moto::unique("gd");
    deploy_stack(
        "deploy/aws/gitdispatch.yaml",
        &[
            ("Name", &name),
            ("CreateSampleStateMachine", "false"),
            ("CreateLedger", "true"),
            ("VisibilityTimeout", "5"),
        ],
    )
    .await
}

/// Deploys a template of deploy/aws with its parameters; the stack's outputs.
async fn deploy_stack(template: &str, parameters: &[(&str, &str)]) -> HashMap<String, String> {
    let stack = moto::unique("stack");
    let body = repository_file(template);
    let (stack, body) = (stack.as_str(), body.as_str());
    // CloudFormation speaks the query protocol; a plain form POST is all it takes.
    let client = reqwest::Client::new();
    let mut form = vec![
        ("Action".to_string(), "CreateStack".to_string()),
        ("Version".to_string(), "2010-05-15".to_string()),
        ("StackName".to_string(), stack.to_string()),
        ("TemplateBody".to_string(), body.to_string()),
        (
            "Capabilities.member.1".to_string(),
            "CAPABILITY_IAM".to_string(),
        ),
    ];
    for (index, (key, value)) in parameters.iter().enumerate() {
        let n = index + 1;
        form.push((
            format!("Parameters.member.{n}.ParameterKey"),
            key.to_string(),
        ));
        form.push((
            format!("Parameters.member.{n}.ParameterValue"),
            value.to_string(),
        ));
    }
    let encoded: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let authorization = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/cloudformation/aws4_request, SignedHeaders=host, Signature=0";
    let response = client
        .post(moto::url())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", authorization)
        .body(encoded)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
    let describe: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("Action", "DescribeStacks"),
            ("Version", "2010-05-15"),
            ("StackName", stack),
        ])
        .finish();
    let text = client
        .post(moto::url())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", authorization)
        .body(describe)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("CREATE_COMPLETE"), "{text}");
    let mut outputs = HashMap::new();
    for output in text.split("<member>").skip(1) {
        let field = |tag: &str| {
            let open = format!("<{tag}>");
            let start = output.find(&open)? + open.len();
            let end = output[start..].find(&format!("</{tag}>"))? + start;
            Some(output[start..end].to_string())
        };
        if let (Some(key), Some(value)) = (field("OutputKey"), field("OutputValue")) {
            outputs.insert(key, value);
        }
    }
    outputs
}

/// One EventBridge call (JSON 1.1), as moto takes it.
async fn eventbridge(target: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(moto::url())
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("AWSEvents.{target}"))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/events/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{target}: {}",
        response.status()
    );
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// deploy/aws/codecommit.yaml (its SNS form; moto's CloudFormation has no API
/// destinations) deploys, sends its rule's events to the topic it outputs, and its
/// pattern lets through exactly the CodeCommit events gitdispatch acts on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codecommit_template_routes_exactly_the_events_acted_on() {
    let outputs = deploy_stack(
        "deploy/aws/codecommit.yaml",
        &[
            (
                "Endpoint",
                "https://gitdispatch.example.com/webhooks/codecommit",
            ),
            ("Delivery", "sns"),
        ],
    )
    .await;
    let topic = &outputs["TopicArn"];
    assert!(outputs.contains_key("HistoryPolicyArn"), "{outputs:?}");
    let rules = eventbridge("ListRules", serde_json::json!({})).await;
    let mut found = None;
    for rule in rules["Rules"].as_array().unwrap() {
        let targets = eventbridge(
            "ListTargetsByRule",
            serde_json::json!({"Rule": rule["Name"]}),
        )
        .await;
        if targets["Targets"][0]["Arn"] == topic.as_str() {
            found = Some(rule.clone());
        }
    }
    let rule = found.expect("a rule sending to the topic");
    // The rule's pattern on a rule of the test's own, sending to a queue to read.
    let sqs = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let (queue_url, _) = moto::create_queue(&sqs, false, Duration::from_secs(30), 5).await;
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    let probe = moto::unique("probe");
    eventbridge(
        "PutRule",
        serde_json::json!({"Name": probe, "EventPattern": rule["EventPattern"], "State": "ENABLED"}),
    )
    .await;
    eventbridge(
        "PutTargets",
        serde_json::json!({"Rule": probe, "Targets": [{"Id": "probe", "Arn": queue_arn}]}),
    )
    .await;
    // And the stack's own rule stops sending to SNS (moto fails a call with an SNS
    // target), so that only the probe's copy is made.
    eventbridge(
        "RemoveTargets",
        serde_json::json!({"Rule": rule["Name"], "Ids": ["gitdispatch"]}),
    )
    .await;

    let fixtures = [
        ("reference_updated.json", true),
        ("reference_created.json", true),
        ("reference_deleted.json", true),
        ("tag_created.json", true),
        ("pull_request_created.json", true),
        ("pull_request_source_updated.json", true),
        ("pull_request_closed.json", true),
        ("pull_request_merged.json", true),
        ("pull_request_approved.json", false),
    ];
    for (name, _) in &fixtures {
        let event: Value =
            serde_json::from_slice(&common::fixture(&format!("codecommit/{name}"))).unwrap();
        let answer = eventbridge(
            "PutEvents",
            serde_json::json!({"Entries": [{
                "Source": event["source"],
                "DetailType": event["detail-type"],
                "Detail": event["detail"].to_string(),
                "Resources": event["resources"],
            }]}),
        )
        .await;
        assert_eq!(answer["FailedEntryCount"], 0, "{name}: {answer}");
    }
    let mut delivered = Vec::new();
    for _ in 0..20 {
        let received = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for message in received.messages() {
            let event: Value = serde_json::from_str(message.body().unwrap()).unwrap();
            delivered.push(event["detail"]["event"].as_str().unwrap().to_string());
        }
        if received.messages().is_empty() && !delivered.is_empty() {
            break;
        }
    }
    let mut expected: Vec<String> = fixtures
        .iter()
        .filter(|(_, acted_on)| *acted_on)
        .map(|(name, _)| {
            let event: Value =
                serde_json::from_slice(&common::fixture(&format!("codecommit/{name}"))).unwrap();
            event["detail"]["event"].as_str().unwrap().to_string()
        })
        .collect();
    expected.sort();
    delivered.sort();
    assert_eq!(delivered, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_through_sqs_become_step_functions_executions() {
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let outputs = deploy_template().await;
    let queue_url = outputs["QueueUrl"].clone();
    assert!(queue_url.ends_with(".fifo"));
    assert!(outputs.contains_key("DaemonPolicyArn"));
    // The ledger reconcile shares answers as the daemon will ask it.
    let ledger = gitdispatch::ledger::dynamodb::DynamoLedger::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        outputs["LedgerTable"].clone(),
    );
    ledger.check().await.unwrap();
    let arn = create_sample_state_machine(&sfn).await;
    let text = aws_config_text(&queue_url, &arn);

    // check-config reads the queue and sees its redrive policy.
    let directory = tempfile::tempdir().unwrap();
    let config_path = directory.path().join("aws.toml");
    std::fs::write(
        &config_path,
        text.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\""),
    )
    .unwrap();
    let output = check_config(&config_path);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("sqs queue: FIFO, visibility timeout 5 s"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dead letters: after 5 receives"),
        "{stdout}"
    );

    let environment = moto::environment();
    let environment: Vec<(&str, &str)> =
        environment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let daemon = Daemon::start(&text, &environment);
    let client = reqwest::Client::new();
    let mut planned: HashMap<String, ExecutionRequest> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let push = Delivery::fixture("push", "push_branch_commits.json");
    let push_id = push.id.clone();
    for (event, fixture, delivery) in [
        ("push", "push_branch_commits.json", push),
        (
            "pull_request",
            "pull_request_opened.json",
            Delivery::fixture("pull_request", "pull_request_opened.json"),
        ),
        (
            "pull_request",
            "pull_request_closed_merged.json",
            Delivery::fixture("pull_request", "pull_request_closed_merged.json"),
        ),
    ] {
        let answer = delivery.post(&client, &daemon.url()).await.unwrap();
        assert_eq!(answer.status, 202, "{fixture}: {}", answer.body);
        let requests = plan(&text, event, fixture, &delivery.id);
        let names: Vec<String> = requests.iter().map(|r| r.name.to_string()).collect();
        assert_eq!(executions(&answer), names, "{fixture}");
        order.extend(names);
        planned.extend(requests.into_iter().map(|r| (r.name.to_string(), r)));
    }
    assert_eq!(planned.len(), 5);
    wait_until_finished(&sfn, &arn, &order).await;

    // The same delivery again (GitHub's redelivery keeps its id): no new execution.
    let again = Delivery {
        id: push_id,
        ..Delivery::fixture("push", "push_branch_commits.json")
    };
    assert_eq!(
        again.post(&client, &daemon.url()).await.unwrap().status,
        202
    );
    wait_until_drained(&sqs, &queue_url).await;

    let all = executions_of(&sfn, &arn).await;
    assert_eq!(
        all.len(),
        planned.len(),
        "one execution per planned name: {all:?}"
    );
    let mut runs = Vec::new();
    for name in &order {
        let (status, execution_arn) = &all[name];
        assert_eq!(*status, ExecutionStatus::Succeeded, "{name}");
        let described = sfn
            .describe_execution()
            .execution_arn(execution_arn)
            .send()
            .await
            .unwrap();
        let input: Value = serde_json::from_str(described.input().unwrap()).unwrap();
        let expected: Value = serde_json::from_str(planned[name].input.as_str()).unwrap();
        assert_eq!(input, expected, "{name} got its planned input");
        let output: Value = serde_json::from_str(described.output().unwrap()).unwrap();
        match planned[name].action {
            gitdispatch::execution::Action::Teardown => {
                assert_eq!(output["action"], "teardown", "the teardown path was taken");
                assert_eq!(output["environment"], "pr-42");
            }
            gitdispatch::execution::Action::Deploy => {
                assert_eq!(output["action"], "deploy");
                let components = output["components"].as_array().unwrap();
                assert_eq!(components[0]["deployed"], true, "api-v2 deployed");
                assert_eq!(components[1]["deployed"], false, "console skipped");
            }
        }
        runs.push((
            planned[name].environment.clone(),
            described.start_date().secs() as f64
                + f64::from(described.start_date().subsec_nanos()) / 1e9,
            described
                .stop_date()
                .map(|stop| stop.secs() as f64 + f64::from(stop.subsec_nanos()) / 1e9)
                .unwrap(),
        ));
    }
    // Serial: within an environment, each execution started after the previous ended,
    // in commit order.
    for environment in ["acceptance", "pr-42"] {
        let in_order: Vec<&(String, f64, f64)> =
            runs.iter().filter(|run| run.0 == environment).collect();
        for pair in in_order.windows(2) {
            assert!(
                pair[1].1 >= pair[0].2,
                "{environment}: overlapping or out of order: {in_order:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_received_twice_starts_one_execution() {
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let arn = create_sample_state_machine(&sfn).await;
    let (url, _) = moto::create_queue(&sqs, true, Duration::from_secs(2), 5).await;
    let queue: Arc<dyn Queue> = Arc::new(SqsQueue::open(sqs.clone(), &url).await.unwrap());
    let executor = Arc::new(StepFunctionsExecutor::new(
        sfn.clone(),
        HashMap::from([("deploy".to_string(), arn.clone())]),
    ));
    let text = aws_config_text(&url, &arn);
    let requests = plan(&text, "push", "push_branch_commits.json", "delivery-twice");
    let jobs: Vec<Job> = requests.iter().cloned().map(Job::start).collect();
    enqueue(queue.as_ref(), &jobs).await.unwrap();

    // A worker that started the first job and died before acknowledging it.
    let received = queue.receive(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(received[0].message.id, requests[0].name.as_str());
    executor.start(&requests[0]).await.unwrap();

    // The next worker receives it again once its visibility runs out.
    let worker = Arc::new(Worker::new(
        WorkerParts::new(
            queue.clone(),
            executor,
            settings(),
            common::runtime_of(&common::example_config()),
        ),
        &Metrics::default(),
    ));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let names: Vec<String> = requests.iter().map(|r| r.name.to_string()).collect();
    wait_until_finished(&sfn, &arn, &names).await;
    wait_until_drained(&sqs, &url).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let all = executions_of(&sfn, &arn).await;
    assert_eq!(all.len(), 3, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_ends_in_exactly_one_execution_despite_throttling_and_failures() {
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let arn = create_sample_state_machine(&sfn).await;
    let (url, dead_url) = moto::create_queue(&sqs, true, Duration::from_secs(5), 10).await;
    let queue: Arc<dyn Queue> = Arc::new(SqsQueue::open(sqs.clone(), &url).await.unwrap());
    // Of every four StartExecution calls: one throttled, one that happens but whose
    // answer is lost, one failing, one through.
    let proxy = Proxy::start(moto::url(), |call| {
        if !call.is("StartExecution") {
            return Fault::Forward;
        }
        match call.index % 4 {
            0 => {
                let (status, body) = proxy::error(400, "ThrottlingException");
                Fault::Answer(status, body)
            }
            1 => {
                let (status, body) = proxy::error(500, "InternalServerError");
                Fault::ForwardThenAnswer(status, body)
            }
            2 => {
                let (status, body) = proxy::error(500, "InternalServerError");
                Fault::Answer(status, body)
            }
            _ => Fault::Forward,
        }
    })
    .await;
    let through_proxy = aws_sdk_sfn::Client::from_conf(
        aws_sdk_sfn::config::Builder::from(&sdk)
            .endpoint_url(&proxy.url)
            .build(),
    );
    let executor = Arc::new(StepFunctionsExecutor::new(
        through_proxy,
        HashMap::from([("deploy".to_string(), arn.clone())]),
    ));

    // Parallel jobs: plan a parallel version of the pipeline, several deliveries.
    let text = aws_config_text(&url, &arn)
        .replace("concurrency = \"serial\"", "concurrency = \"parallel\"");
    let mut names = Vec::new();
    for push in 0..4 {
        let requests = plan_body(
            &text,
            "push",
            &common::push_variant("push_branch_commits.json", push),
            &format!("faulty-{push}"),
        );
        names.extend(requests.iter().map(|r| r.name.to_string()));
        let jobs: Vec<Job> = requests.into_iter().map(Job::start).collect();
        enqueue(queue.as_ref(), &jobs).await.unwrap();
    }
    let worker = Arc::new(Worker::new(
        WorkerParts::new(
            queue.clone(),
            executor,
            settings(),
            common::runtime_of(&common::example_config()),
        ),
        &Metrics::default(),
    ));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    wait_until_finished(&sfn, &arn, &names).await;
    wait_until_drained(&sqs, &url).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let all = executions_of(&sfn, &arn).await;
    let got: HashSet<&String> = all.keys().collect();
    let want: HashSet<&String> = names.iter().collect();
    assert_eq!(got, want, "exactly one execution per job");
    let starts = proxy
        .calls()
        .iter()
        .filter(|call| call.is("StartExecution"))
        .count();
    assert!(
        starts >= 2 * names.len(),
        "faults were injected: {starts} StartExecution calls for {} jobs",
        names.len()
    );
    assert!(
        moto::dead_letter_ids(&sqs, &dead_url).await.is_empty(),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_warns_about_a_queue_without_a_redrive_policy() {
    let sqs = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let url = sqs
        .create_queue()
        .queue_name(format!("{}.fifo", moto::unique("no-redrive")))
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("aws.toml");
    std::fs::write(
        &path,
        aws_config_text(
            &url,
            "arn:aws:states:us-east-1:123456789012:stateMachine:deploy-x",
        ),
    )
    .unwrap();
    let output = check_config(&path);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("warning: the queue has no redrive policy"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_cannot_be_queued_gets_a_5xx() {
    let sqs = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let (url, _) = moto::create_queue(&sqs, true, Duration::from_secs(30), 5).await;
    let queue: Arc<dyn Queue> = Arc::new(SqsQueue::open(sqs.clone(), &url).await.unwrap());
    let config = config_from(&aws_config_text(
        &url,
        "arn:aws:states:us-east-1:123456789012:stateMachine:deploy-x",
    ));
    let shutdown = CancellationToken::new();
    let state = Arc::new(gitdispatch::server::AppState::new(
        &config,
        common::runtime_of(&config),
        queue,
        Arc::new(Metrics::default()),
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}/webhooks/github", listener.local_addr().unwrap());
    tokio::spawn(gitdispatch::server::run(listener, state, shutdown.clone()));

    // The queue goes away between start and delivery.
    sqs.delete_queue().queue_url(&url).send().await.unwrap();
    let answer = Delivery::fixture("push", "push_branch_commits.json")
        .post(&reqwest::Client::new(), &address)
        .await
        .unwrap();
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        answer.body["error"]
            .as_str()
            .unwrap()
            .starts_with("could not queue the jobs")
    );
    shutdown.cancel();
}

/// The sample state machine of deploy/, run on moto, takes each documented path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_state_machine_takes_each_documented_path() {
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let arn = create_sample_state_machine(&sfn).await;
    let input = |action: &str, skip_console: bool, overrides: Value| {
        serde_json::json!({
            "environment": "acceptance",
            "skip_api_v2": false,
            "skip_console_v1": skip_console,
            "override_branches": overrides,
            "git": {"provider": "github", "action": action, "commit": "a".repeat(40)},
        })
    };
    let cases = [
        (
            "override",
            input(
                "deploy",
                true,
                serde_json::json!([{"project": "project-api-v2", "branch": "hotfix/important_patch"}]),
            ),
        ),
        ("no-override", input("deploy", true, serde_json::json!([]))),
        // deploy_all_projects: every component deploys; only the pushed repository's
        // project has an override.
        (
            "all-projects",
            input(
                "deploy",
                false,
                serde_json::json!([{"project": "project-api-v2", "branch": "feature/x"}]),
            ),
        ),
        ("teardown", input("teardown", false, serde_json::json!([]))),
        ("unknown", input("rollback", false, serde_json::json!([]))),
    ];
    let mut arns = HashMap::new();
    for (case, input) in &cases {
        let started = sfn
            .start_execution()
            .state_machine_arn(&arn)
            .name(moto::unique(case))
            .input(input.to_string())
            .send()
            .await
            .unwrap();
        arns.insert(*case, started.execution_arn().to_string());
    }
    let mut ended = HashMap::new();
    for _ in 0..100 {
        for (case, execution) in &arns {
            let described = sfn
                .describe_execution()
                .execution_arn(execution)
                .send()
                .await
                .unwrap();
            if *described.status() != ExecutionStatus::Running {
                ended.insert(*case, described);
            }
        }
        if ended.len() == arns.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let output = |case: &str| -> Value {
        let described = &ended[case];
        assert_eq!(
            *described.status(),
            ExecutionStatus::Succeeded,
            "{case}: {:?} {:?}",
            described.error(),
            described.cause()
        );
        serde_json::from_str(described.output().unwrap()).unwrap()
    };
    let component = |output: &Value, index: usize| output["components"][index].clone();

    let overridden = output("override");
    assert_eq!(overridden["action"], "deploy");
    assert_eq!(
        component(&overridden, 0)["branch"],
        "hotfix/important_patch"
    );
    assert_eq!(
        component(&overridden, 1)["deployed"],
        false,
        "console skipped"
    );

    let defaulted = output("no-override");
    assert_eq!(
        component(&defaulted, 0)["branch"],
        "main",
        "the default branch"
    );

    let all = output("all-projects");
    assert_eq!(component(&all, 0)["branch"], "feature/x");
    assert_eq!(component(&all, 1)["deployed"], true);
    assert_eq!(component(&all, 1)["branch"], "main");

    assert_eq!(output("teardown")["action"], "teardown");
    let unknown = &ended["unknown"];
    assert_eq!(*unknown.status(), ExecutionStatus::Failed);
    assert_eq!(unknown.error(), Some("UnknownAction"));
}

/// A push listing 2,000 commits, to a serial deploy route and a parallel build route,
/// on SQS and with the ledger and journal on DynamoDB 5 ms away (a proxy in front of
/// moto): its 4,000 claims and journal records go in transactions of up to 100, several
/// at once, so it is answered 202 in tens of DynamoDB calls, not thousands (the daemon's
/// request timeout is raised to 30 s here, GitHub Enterprise's, so that a loaded
/// machine cannot make moto's own Python the failure). Prints how long it took, for
/// BENCHMARKS.md.
/// The AWS configuration with a parallel build route beside its serial deploys: every
/// push to a branch of acme/* is built in `ci`.
fn with_builds(queue_url: &str, arn: &str) -> String {
    aws_config_text(queue_url, arn)
        + &format!(
            r#"
[[pipelines]]
name = "build"
state_machine_arn = "{arn}"

[[routes]]
pipeline = "build"
repository = "acme/*"
events = ["push"]
environment = "ci"
"#
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_of_two_thousand_commits_is_answered_in_tens_of_dynamodb_calls() {
    let sdk = moto::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let (queue_url, _) = moto::create_queue(&sqs, true, Duration::from_secs(30), 5).await;
    let table = moto::ledger_table(&aws_sdk_dynamodb::Client::new(&sdk), "big-push").await;
    let arn = create_sample_state_machine(&sfn).await;
    let proxy = Proxy::start(moto::url(), |call| {
        if call.operation.starts_with("DynamoDB_") {
            Fault::Delay(Duration::from_millis(5))
        } else {
            Fault::Forward
        }
    })
    .await;
    let text = (with_builds(&queue_url, &arn)
        + &format!(
            r#"
[api]
tokens = ["a-token-that-opens-the-ledger-01"]

[ledger]
type = "dynamodb"
table = "{table}"
"#
        ))
        .replace("[server]\n", "[server]\nrequest_timeout_secs = 30\n");
    let mut environment: Vec<(&str, String)> = moto::environment();
    environment.push(("AWS_ENDPOINT_URL_DYNAMODB", proxy.url.clone()));
    let environment: Vec<(&str, &str)> =
        environment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let daemon = Daemon::start_as("listen", &text, &environment);

    let body = common::push_listing(2000, 0xb16_0000, "refs/heads/hotfix/big");
    let before = proxy.calls().len();
    let started = std::time::Instant::now();
    let answer = Delivery::new("push", body)
        .post(&reqwest::Client::new(), &daemon.url())
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let timeline: Vec<String> = proxy
        .calls()
        .iter()
        .skip(before)
        .map(|call| {
            format!(
                "{} at {} ms",
                call.operation,
                call.at.duration_since(started).as_millis()
            )
        })
        .collect();
    assert_eq!(answer.status, 202, "{}\n{timeline:#?}", answer.body);
    assert_eq!(executions(&answer).len(), 4000);
    let calls = proxy.calls().len() - before;
    println!(
        "a push of 2,000 commits to two routes, DynamoDB 5 ms away: answered 202 in {} ms, {calls} DynamoDB calls",
        elapsed.as_millis()
    );
    assert!(calls <= 120, "{calls} DynamoDB calls for one delivery");
    // Every start is on the queue, and in the journal's lanes.
    let lanes: Value = serde_json::from_str(
        &reqwest::Client::new()
            .get(format!("http://{}/v1/lanes", daemon.address))
            .bearer_auth("a-token-that-opens-the-ledger-01")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let waiting: u64 = lanes["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|lane| lane["waiting"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(waiting, 4000, "{}", lanes["lanes"]);
}

/// A push of more commits than one SQS batch takes goes out in envelopes (a serial
/// lane's in one group, a parallel lane's in any order), to two workers; one is killed
/// while the serial lane's envelope is half done. Every commit still runs exactly once, the
/// serial lane's in commit order and one at a time, and nothing is left on the queue or
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_sent_in_envelopes_runs_every_commit_once_in_order_across_a_crash() {
    let sdk = moto::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let (queue_url, dead_url) = moto::create_queue(&sqs, true, Duration::from_secs(5), 5).await;
    let arn = create_sample_state_machine(&sfn).await;
    let text = with_builds(&queue_url, &arn);
    let environment = moto::environment();
    let environment: Vec<(&str, &str)> =
        environment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon = Daemon::start(&text, &environment);
    // A second worker on the same queue, which takes the envelope over when the first
    // is killed.
    let _other = Daemon::start_as(
        "work",
        &text.replace("[worker]\n", "[worker]\nmetrics_listen = \"127.0.0.1:0\"\n"),
        &environment,
    );

    let body = common::push_listing(16, 0xe4_0000, "refs/heads/hotfix/envelopes");
    let delivery = Delivery::new("push", body.clone());
    let answer = delivery
        .post(&reqwest::Client::new(), &daemon.url())
        .await
        .unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    let names = executions(&answer);
    assert_eq!(names.len(), 32);
    let planned = plan_body(&text, "push", &body, &delivery.id);
    let serial: Vec<String> = planned
        .iter()
        .filter(|request| request.pipeline == "deploy")
        .map(|request| request.name.to_string())
        .collect();
    assert_eq!(serial.len(), 16);

    // Killed once the serial lane is a few commits in: its envelope is in flight.
    for _ in 0..300 {
        let started = common::aws::runs_by_start(&sfn, &arn)
            .await
            .iter()
            .filter(|run| serial.contains(&run.2))
            .count();
        if started >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.kill();
    daemon.spawn(&environment);

    wait_until_finished(&sfn, &arn, &names).await;
    wait_until_drained(&sqs, &queue_url).await;
    let all = executions_of(&sfn, &arn).await;
    let got: HashSet<&String> = all.keys().collect();
    let want: HashSet<&String> = names.iter().collect();
    assert_eq!(got, want, "exactly one execution per commit and lane");
    let runs: Vec<(i64, i64, String)> = common::aws::runs_by_start(&sfn, &arn)
        .await
        .into_iter()
        .filter(|run| serial.contains(&run.2))
        .collect();
    let order: Vec<&String> = runs.iter().map(|run| &run.2).collect();
    assert_eq!(order, serial.iter().collect::<Vec<_>>(), "commit order");
    for pair in runs.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "one at a time: {pair:?}");
    }
    assert!(
        moto::dead_letter_ids(&sqs, &dead_url).await.is_empty(),
        "nothing dead-lettered"
    );
}

/// Builds of one envelope that cannot start (Step Functions denies every start) are
/// dead-lettered one by one; the worker is killed half way, and after the restart
/// every start is allowed. The envelope comes back whole: a build dead-lettered from
/// it before is dead-lettered again, not started (the journal says it was), the others
/// start, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_dead_lettered_from_an_envelope_stays_so_after_a_crash() {
    let sdk = moto::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let (queue_url, dead_url) = moto::create_queue(&sqs, true, Duration::from_secs(5), 3).await;
    let table = moto::ledger_table(&aws_sdk_dynamodb::Client::new(&sdk), "dead-again").await;
    let arn = create_sample_state_machine(&sfn).await;
    let deny = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let denying = deny.clone();
    let proxy = Proxy::start(moto::url(), move |call| {
        if call.is("StartExecution") && denying.load(std::sync::atomic::Ordering::SeqCst) {
            let (status, body) = proxy::error(400, "AccessDeniedException");
            Fault::Answer(status, body)
        } else {
            Fault::Forward
        }
    })
    .await;
    let text = (with_builds(&queue_url, &arn)
        + &format!("\n[ledger]\ntype = \"dynamodb\"\ntable = \"{table}\"\n"))
        .replace("concurrency = 32", "concurrency = 2")
        .replace("retry_initial_ms = 1000", "retry_initial_ms = 200")
        .replace("retry_max_secs = 300", "retry_max_secs = 1");
    let mut environment: Vec<(&str, String)> = moto::environment();
    environment.push(("AWS_ENDPOINT_URL_SFN", proxy.url.clone()));
    let environment: Vec<(&str, &str)> =
        environment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon = Daemon::start(&text, &environment);
    let body = common::push_listing(12, 0xdd_0000, "refs/heads/feature/denied");
    let answer = Delivery::new("push", body)
        .post(&reqwest::Client::new(), &daemon.url())
        .await
        .unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    let names = executions(&answer);
    assert_eq!(names.len(), 12, "builds only");

    let mut dead = Vec::new();
    for _ in 0..300 {
        dead = moto::dead_letter_ids(&sqs, &dead_url).await;
        if dead.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.kill();
    assert!(
        dead.len() >= 2 && dead.len() < 12,
        "killed with some dead-lettered and some not: {dead:?}"
    );
    deny.store(false, std::sync::atomic::Ordering::SeqCst);
    daemon.spawn(&environment);
    wait_until_drained(&sqs, &queue_url).await;

    let dead = moto::dead_letter_ids(&sqs, &dead_url).await;
    let started: HashSet<String> = executions_of(&sfn, &arn).await.into_keys().collect();
    for name in &dead {
        assert!(
            !started.contains(name),
            "{name} is a dead letter, and it ran"
        );
    }
    let mut accounted: Vec<&String> = dead.iter().chain(started.iter()).collect();
    accounted.sort();
    let mut expected: Vec<&String> = names.iter().collect();
    expected.sort();
    assert_eq!(
        accounted, expected,
        "every build started or dead-lettered, once"
    );
}

/// The operator token of the test that pauses a lane.
const TOKEN: &str = "operator-token-for-tests-01";

/// A `GET` of the operator API, as JSON.
async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).bearer_auth(TOKEN).send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap_or_default(),
    )
}

/// How many jobs of deploy/acceptance a `GET /v1/lanes` answer says are parked.
fn parked(lanes: &Value) -> u64 {
    lanes["lanes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|lane| lane["pipeline"] == "deploy" && lane["environment"] == "acceptance")
        .and_then(|lane| lane["waiting"]["parked"].as_u64())
        .unwrap_or(0)
}

/// Envelopes meet a paused lane with supersede, on SQS with a DynamoDB journal and the
/// listener and worker apart: a push of eleven commits (one envelope) and then one of
/// one, both while the lane is paused, are parked; on resume they go back (in an
/// envelope again) and only the newest deploys, every other commit recorded superseded
/// by it. Nothing is left on the queue or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lane_with_supersede_takes_envelopes_and_deploys_only_the_newest() {
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (queue_url, dead_url) = moto::create_queue(&sqs, true, Duration::from_secs(5), 3).await;
    let table = moto::ledger_table(&aws_sdk_dynamodb::Client::new(&sdk), "journal").await;
    let arn = create_sample_state_machine(&sfn).await;
    let aws_text = aws_config_text(&queue_url, &arn).replace(
        "concurrency = \"serial\"",
        "concurrency = \"serial\"\nsupersede = true",
    );
    let text = format!(
        "{aws_text}\n[api]\ntokens = [\"${{GITDISPATCH_API_TOKEN}}\"]\n\n[ledger]\ntype = \"dynamodb\"\ntable = \"{table}\"\n"
    );
    let mut environment: Vec<(&str, String)> = moto::environment();
    environment.push(("GITDISPATCH_API_TOKEN", TOKEN.to_string()));
    let environment: Vec<(&str, &str)> =
        environment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let listener = Daemon::start_as("listen", &text, &environment);
    let worker = Daemon::start_as(
        "work",
        &text.replace("[worker]\n", "[worker]\nmetrics_listen = \"127.0.0.1:0\"\n"),
        &environment,
    );
    let client = reqwest::Client::new();
    let api = |path: &str| format!("http://{}{path}", listener.address);
    let lane_action = |action: &'static str| {
        client
            .post(api(&format!("/v1/lanes/deploy/acceptance/{action}")))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(serde_json::json!({"reason": "release freeze"}).to_string())
            .send()
    };
    assert_eq!(lane_action("pause").await.unwrap().status().as_u16(), 200);
    let mut names = Vec::new();
    for (count, first) in [(11, 0xe5_0000), (1, 0xe5_0000 + 11)] {
        let body = common::push_listing(count, first, "refs/heads/hotfix/meet");
        let answer = Delivery::new("push", body)
            .post(&client, &listener.url())
            .await
            .unwrap();
        assert_eq!(answer.status, 202, "{}", answer.body);
        names.extend(executions(&answer));
    }
    assert_eq!(names.len(), 12);

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, lanes) = get_json(&client, &api("/v1/lanes")).await;
        if parked(&lanes) == 12 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never parked the jobs: {lanes} {}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(executions_of(&sfn, &arn).await.is_empty());

    assert_eq!(lane_action("resume").await.unwrap().status().as_u16(), 200);
    let newest = names.last().unwrap().clone();
    wait_until_finished(&sfn, &arn, std::slice::from_ref(&newest)).await;
    wait_until_drained(&sqs, &queue_url).await;
    let ran: Vec<String> = executions_of(&sfn, &arn).await.into_keys().collect();
    assert_eq!(
        ran,
        std::slice::from_ref(&newest),
        "only the newest deploys"
    );
    for name in &names[..11] {
        let (_, execution) = get_json(&client, &api(&format!("/v1/executions/{name}"))).await;
        assert_eq!(execution["status"], "SUPERSEDED", "{name}: {execution}");
        assert!(
            execution["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(&newest),
            "{name}: {execution}"
        );
    }
    assert!(moto::dead_letter_ids(&sqs, &dead_url).await.is_empty());
}
