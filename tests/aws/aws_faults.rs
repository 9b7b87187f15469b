//! The promises under the faults AWS really produces, on moto behind a fault-injecting
//! proxy: a serial lane keeps commit order while its head is throttled; a started
//! execution that cannot be described yet (eventual consistency, an expired
//! credential) is never dead-lettered; a delivery SQS refuses half-way is answered as
//! a failure to retry, not as bad input; a lane waiting on a long deploy does not
//! starve the builds.

use crate::common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::aws::{
    aws_config_text, create_sample_state_machine, executions_of, plan, settings,
    wait_until_drained, wait_until_finished,
};
use common::moto;
use common::proxy::{self, Call, Fault, Proxy};
use gitdispatch::config::Config;
use gitdispatch::execution::ExecutionRequest;
use gitdispatch::executor::local::{LocalExecutor, LocalPipeline, LocalSettings, RunStatus};
use gitdispatch::executor::stepfunctions::StepFunctionsExecutor;
use gitdispatch::job::Job;
use gitdispatch::plan::Planner;
use gitdispatch::queue::sqs::SqsQueue;
use gitdispatch::queue::{Message, Queue, QueueError, enqueue};
use gitdispatch::telemetry::Metrics;
use gitdispatch::worker::{Worker, WorkerParts, WorkerSettings};
use tokio_util::sync::CancellationToken;

/// A Step Functions client whose calls go through `proxy`.
async fn sfn_through(proxy: &Proxy) -> aws_sdk_sfn::Client {
    let sdk = moto::sdk_config().await;
    aws_sdk_sfn::Client::from_conf(
        aws_sdk_sfn::config::Builder::from(&sdk)
            .endpoint_url(&proxy.url)
            .build(),
    )
}

/// Short polls: moto's long polls hand a waiting receiver messages of a group another
/// receive holds, which AWS never does.
fn short_polls() -> WorkerSettings {
    WorkerSettings {
        receive_wait: Duration::ZERO,
        ..settings()
    }
}

/// Runs a worker on `queue` until `done` holds, then stops it.
async fn drain(
    queue: Arc<dyn Queue>,
    executor: Arc<dyn gitdispatch::executor::Executor>,
    settings: WorkerSettings,
    done: impl std::future::Future<Output = ()>,
) {
    let runtime = common::runtime_of(&common::example_config());
    let worker = Arc::new(Worker::new(
        WorkerParts::new(queue, executor, settings, runtime),
        &Metrics::default(),
    ));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    done.await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

fn started_name(call: &Call) -> String {
    call.body["name"].as_str().unwrap_or_default().to_string()
}

/// A FIFO queue with its dead-letter queue.
struct Fifo {
    queue: Arc<dyn Queue>,
    url: String,
    dead_url: String,
}

/// The serial lane's three executions, in commit order, queued on a FIFO queue.
async fn serial_lane(sqs: &aws_sdk_sqs::Client, arn: &str) -> (Fifo, Vec<String>) {
    let (url, dead_url) = moto::create_queue(sqs, true, Duration::from_secs(5), 5).await;
    let queue: Arc<dyn Queue> = Arc::new(SqsQueue::open(sqs.clone(), &url).await.unwrap());
    let requests = plan(
        &aws_config_text(&url, arn),
        "push",
        "push_branch_commits.json",
        "serial-lane",
    );
    assert!(requests.iter().all(|request| request.group.is_some()));
    let names = requests.iter().map(|r| r.name.to_string()).collect();
    let jobs: Vec<Job> = requests.into_iter().map(Job::start).collect();
    enqueue(queue.as_ref(), &jobs).await.unwrap();
    (
        Fifo {
            queue,
            url,
            dead_url,
        },
        names,
    )
}

/// Checks that the executions ran one after the other, in the order of `names`.
async fn assert_ran_in_order(sfn: &aws_sdk_sfn::Client, arn: &str, names: &[String]) {
    let all = executions_of(sfn, arn).await;
    assert_eq!(all.len(), names.len(), "{all:?}");
    let mut previous_stop = None;
    for name in names {
        let described = sfn
            .describe_execution()
            .execution_arn(&all[name].1)
            .send()
            .await
            .unwrap();
        let start = described.start_date().as_secs_f64();
        if let Some(stop) = previous_stop {
            assert!(
                start >= stop,
                "{name} started before the one before it ended"
            );
        }
        previous_stop = Some(described.stop_date().unwrap().as_secs_f64());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_head_keeps_its_lane_in_commit_order() {
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let arn = create_sample_state_machine(&sfn).await;
    let (fifo, names) = serial_lane(&sqs, &arn).await;
    // SQS FIFO hands the worker all three jobs of the lane in one receive; the first
    // one's start is throttled three times.
    let head = names[0].clone();
    let proxy = Proxy::start(moto::url(), move |call| {
        let head_starts = call.is("StartExecution") && started_name(call) == head;
        if head_starts && call.index < 3 {
            let (status, body) = proxy::error(400, "ThrottlingException");
            return Fault::Answer(status, body);
        }
        Fault::Forward
    })
    .await;
    let executor = Arc::new(StepFunctionsExecutor::new(
        sfn_through(&proxy).await,
        HashMap::from([("deploy".to_string(), arn.clone())]),
    ));
    let done = async {
        wait_until_finished(&sfn, &arn, &names).await;
        wait_until_drained(&sqs, &fifo.url).await;
    };
    drain(fifo.queue.clone(), executor, short_polls(), done).await;

    let forwarded: Vec<String> = proxy
        .calls()
        .iter()
        .filter(|call| call.is("StartExecution") && call.forwarded)
        .map(started_name)
        .collect();
    assert_eq!(forwarded, names, "started in commit order");
    assert_ran_in_order(&sfn, &arn, &names).await;
    assert!(moto::dead_letter_ids(&sqs, &fifo.dead_url).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_that_cannot_be_described_yet_is_never_dead_lettered() {
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let arn = create_sample_state_machine(&sfn).await;
    let (fifo, names) = serial_lane(&sqs, &arn).await;
    // The first looks at an execution do not find it yet (Step Functions' reads are
    // eventually consistent); the second start meets an expired
    // token; and an access denial comes once while a policy is being fixed.
    let proxy = Proxy::start(moto::url(), |call| {
        let injected = if call.is("DescribeExecution") && call.index < 4 {
            Some(proxy::error(400, "ExecutionDoesNotExist"))
        } else if call.is("StartExecution") && call.index == 1 {
            Some(proxy::error(400, "ExpiredTokenException"))
        } else if call.is("StartExecution") && call.index == 3 {
            Some(proxy::error(400, "AccessDeniedException"))
        } else {
            None
        };
        match injected {
            Some((status, body)) => Fault::Answer(status, body),
            None => Fault::Forward,
        }
    })
    .await;
    let executor = Arc::new(StepFunctionsExecutor::new(
        sfn_through(&proxy).await,
        HashMap::from([("deploy".to_string(), arn.clone())]),
    ));
    let done = async {
        wait_until_finished(&sfn, &arn, &names).await;
        wait_until_drained(&sqs, &fifo.url).await;
    };
    drain(fifo.queue.clone(), executor, short_polls(), done).await;

    let calls = proxy.calls();
    assert!(
        calls
            .iter()
            .filter(|call| call.is("DescribeExecution") && !call.forwarded)
            .count()
            == 4,
        "faults were injected"
    );
    assert_ran_in_order(&sfn, &arn, &names).await;
    assert!(
        moto::dead_letter_ids(&sqs, &fifo.dead_url).await.is_empty(),
        "nothing dead-lettered"
    );
}

/// An SQS queue whose SendMessageBatch answers come from `answer` (given the call's
/// index and entry ids), when it gives one.
async fn queue_answering(
    answer: impl Fn(usize, &[String]) -> Option<serde_json::Value> + Send + Sync + 'static,
) -> Arc<SqsQueue> {
    let sdk = moto::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (url, _) = moto::create_queue(&sqs, true, Duration::from_secs(30), 5).await;
    let proxy = Proxy::start(moto::url(), move |call| {
        if !call.is("SendMessageBatch") {
            return Fault::Forward;
        }
        let ids: Vec<String> = call.body["Entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["Id"].as_str().unwrap().to_string())
            .collect();
        match answer(call.index, &ids) {
            Some(body) => Fault::Answer(200, body.to_string()),
            None => Fault::Forward,
        }
    })
    .await;
    let through = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&sdk)
            .endpoint_url(&proxy.url)
            .build(),
    );
    Arc::new(SqsQueue::open(through, &url).await.unwrap())
}

fn refused(id: &str) -> serde_json::Value {
    serde_json::json!({"Id": id, "SenderFault": true, "Code": "InvalidParameterValue",
                       "Message": "injected refusal"})
}

fn messages(count: usize) -> Vec<Message> {
    (0..count)
        .map(|n| Message {
            id: format!("job-{n}-{}", uuid::Uuid::new_v4().simple()),
            group: None,
            body: format!("{{\"n\":{n}}}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_part_of_a_delivery_went_in_is_a_failure_to_retry() {
    // Fifteen jobs of 40 KiB: the first call (an envelope of six) goes in, SQS refuses
    // the second as the sender's fault. The first six would run without the rest: the
    // delivery must fail (503, redelivered), not be refused (4xx, given up).
    let queue = queue_answering(|index, ids| {
        (index == 1).then(|| {
            serde_json::json!({"Successful": [], "Failed": ids.iter().map(|id| refused(id)).collect::<Vec<_>>()})
        })
    })
    .await;
    let big: Vec<Message> = messages(15)
        .into_iter()
        .map(|message| Message {
            body: format!(r#"{{"pad":"{}"}}"#, "x".repeat(40 * 1024)),
            ..message
        })
        .collect();
    let error = queue.send(&big).await.unwrap_err();
    assert!(
        matches!(&error, QueueError::Unavailable { message: reason, .. } if reason.contains("after other messages")),
        "{error}"
    );

    // Within one batch: one entry in, the next refused.
    let queue = queue_answering(|_, ids| {
        Some(serde_json::json!({
            "Successful": [{"Id": ids[0], "MessageId": uuid::Uuid::new_v4().to_string(),
                            "MD5OfMessageBody": "00000000000000000000000000000000"}],
            "Failed": ids[1..].iter().map(|id| refused(id)).collect::<Vec<_>>(),
        }))
    })
    .await;
    assert!(matches!(
        queue.send(&messages(3)).await,
        Err(QueueError::Unavailable { .. })
    ));

    // Refused before anything went in: the delivery itself is unusable (422).
    let queue = queue_answering(|_, ids| {
        Some(serde_json::json!({"Successful": [], "Failed": ids.iter().map(|id| refused(id)).collect::<Vec<_>>()}))
    })
    .await;
    assert!(matches!(
        queue.send(&messages(3)).await,
        Err(QueueError::Refused { .. })
    ));
}

/// Three slow deploys of one lane and three quick builds, the deploys queued first.
fn lane_and_builds() -> Vec<ExecutionRequest> {
    let text = "[github]\nwebhook_secrets = [\"s\"]\n\
        [[pipelines]]\nname = \"deploy\"\ncommand = [\"sleep\", \"4\"]\nconcurrency = \"serial\"\n\
        [[pipelines]]\nname = \"build\"\ncommand = [\"true\"]\n\
        [[routes]]\npipeline = \"deploy\"\nenvironment = \"acceptance\"\n\
        [[routes]]\npipeline = \"build\"\nenvironment = \"ci\"\n";
    let planner = Planner::new(&Config::from_toml_str(text, &|_| None).unwrap()).unwrap();
    let body = common::fixture("github/push_branch_commits.json");
    let delivery = gitdispatch::event::DeliveryId::parse("starve").unwrap();
    let gitdispatch::source::github::Decoded::Event(event) =
        gitdispatch::source::github::decode_payload("push", &delivery, &body).unwrap()
    else {
        panic!("not an event");
    };
    planner.plan(&event).unwrap().requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_waiting_on_a_long_deploy_does_not_starve_the_builds() {
    let sqs = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let (url, _) = moto::create_queue(&sqs, true, Duration::from_secs(30), 5).await;
    let queue: Arc<dyn Queue> = Arc::new(SqsQueue::open(sqs.clone(), &url).await.unwrap());
    let requests = lane_and_builds();
    assert_eq!(requests.len(), 6);
    let jobs: Vec<Job> = requests.iter().cloned().map(Job::start).collect();
    enqueue(queue.as_ref(), &jobs).await.unwrap();
    let directory = tempfile::tempdir().unwrap();
    let pipeline = |command: &[&str]| LocalPipeline {
        command: command.iter().map(|part| part.to_string()).collect(),
        timeout: Duration::from_secs(60),
    };
    let executor = Arc::new(
        LocalExecutor::open(LocalSettings {
            path: directory.path().join("executions.db"),
            log_dir: directory.path().join("log"),
            pipelines: HashMap::from([
                ("deploy".to_string(), pipeline(&["sleep", "4"])),
                ("build".to_string(), pipeline(&["true"])),
            ]),
            max_attempts: 3,
            details_url: None,
        })
        .await
        .unwrap(),
    );
    // Two permits: the lane takes one whatever number of its jobs one receive hands
    // out (SQS FIFO hands out several of a group at once); the builds get the other.
    let settings = WorkerSettings {
        concurrency: 2,
        ..short_polls()
    };
    let records = executor.clone();
    let done = async {
        for _ in 0..300 {
            let recent = records.recent(20).await.unwrap();
            let ended = recent
                .iter()
                .filter(|record| record.status == RunStatus::Succeeded)
                .count();
            if ended == 6 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not every execution ended");
    };
    drain(queue, executor.clone(), settings, done).await;
    let recent = executor.recent(20).await.unwrap();
    let first_deploy_end = recent
        .iter()
        .filter(|record| record.pipeline == "deploy")
        .filter_map(|record| record.ended_at_ms)
        .min()
        .unwrap();
    for build in recent.iter().filter(|record| record.pipeline == "build") {
        assert!(
            build.ended_at_ms.unwrap() < first_deploy_end,
            "build {} waited for the first deploy to end",
            build.name
        );
    }
}

/// The builds of a push of twelve commits (a parallel pipeline, so no ordering group):
/// more than one batch, so they go to SQS in one envelope.
fn twelve_builds() -> Vec<ExecutionRequest> {
    let text = "[github]\nwebhook_secrets = [\"s\"]\n\
        [[pipelines]]\nname = \"build\"\ncommand = [\"true\"]\n\
        [[routes]]\npipeline = \"build\"\nenvironment = \"ci\"\n";
    let planner = Planner::new(&Config::from_toml_str(text, &|_| None).unwrap()).unwrap();
    let body = common::push_listing(12, 0xb0_0000, "refs/heads/main");
    let delivery = gitdispatch::event::DeliveryId::parse("envelope-of-builds").unwrap();
    let gitdispatch::source::github::Decoded::Event(event) =
        gitdispatch::source::github::decode_payload("push", &delivery, &body).unwrap()
    else {
        panic!("not an event");
    };
    let requests = planner.plan(&event).unwrap().requests;
    assert_eq!(requests.len(), 12);
    assert!(requests.iter().all(|request| request.group.is_none()));
    requests
}

/// Twelve builds (a parallel pipeline) queued in one send go to SQS in one envelope:
/// they still run side by side, as many at once as the worker's concurrency, each
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_of_builds_runs_them_side_by_side() {
    let sqs = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let (url, _) = moto::create_queue(&sqs, true, Duration::from_secs(30), 5).await;
    let queue: Arc<dyn Queue> = Arc::new(SqsQueue::open(sqs.clone(), &url).await.unwrap());
    let requests = twelve_builds();
    let jobs: Vec<Job> = requests.iter().cloned().map(Job::start).collect();
    enqueue(queue.as_ref(), &jobs).await.unwrap();
    let first = queue.receive(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(first.len(), 12, "one envelope holds them all");
    for received in &first {
        queue
            .release(&received.receipt, Duration::ZERO)
            .await
            .unwrap();
    }

    let directory = tempfile::tempdir().unwrap();
    let executor = Arc::new(
        LocalExecutor::open(LocalSettings {
            path: directory.path().join("executions.db"),
            log_dir: directory.path().join("log"),
            pipelines: HashMap::from([(
                "build".to_string(),
                LocalPipeline {
                    command: vec!["sleep".into(), "1".into()],
                    timeout: Duration::from_secs(60),
                },
            )]),
            max_attempts: 3,
            details_url: None,
        })
        .await
        .unwrap(),
    );
    let settings = WorkerSettings {
        concurrency: 4,
        ..short_polls()
    };
    let records = executor.clone();
    let done = async {
        for _ in 0..300 {
            let recent = records.recent(20).await.unwrap();
            if recent
                .iter()
                .filter(|record| record.status == RunStatus::Succeeded)
                .count()
                == 12
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not every build ended");
    };
    drain(queue, executor.clone(), settings, done).await;
    let recent = executor.recent(20).await.unwrap();
    assert_eq!(recent.len(), 12, "each once");
    // How many ran at once, at the most: the worker's concurrency.
    let most = recent
        .iter()
        .map(|run| {
            let start = run.started_at_ms;
            recent
                .iter()
                .filter(|other| other.started_at_ms <= start && other.ended_at_ms.unwrap() > start)
                .count()
        })
        .max()
        .unwrap();
    let spans: Vec<(i64, Option<i64>)> = recent
        .iter()
        .map(|run| (run.started_at_ms, run.ended_at_ms))
        .collect();
    assert_eq!(most, 4, "{spans:?}");
}

/// Start failures spread over an envelope's builds, a few at each try: build i fails
/// its (i mod 3 + 1)-th start. Given back whole at each failure, the envelope would use up
/// the queue's three receives and be dead-lettered with builds never started; each
/// build retried in place instead, every build starts once and nothing is
/// dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_spread_over_an_envelope_are_retried_in_place() {
    let sdk = moto::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let arn = create_sample_state_machine(&sfn).await;
    let (url, dead_url) = moto::create_queue(&sqs, true, Duration::from_secs(5), 3).await;
    let queue: Arc<dyn Queue> = Arc::new(SqsQueue::open(sqs.clone(), &url).await.unwrap());
    let requests = twelve_builds();
    let names: Vec<String> = requests.iter().map(|r| r.name.to_string()).collect();
    let index: HashMap<String, usize> = names
        .iter()
        .enumerate()
        .map(|(index, name)| (name.clone(), index))
        .collect();
    let attempts: std::sync::Mutex<HashMap<String, usize>> = Default::default();
    let proxy = Proxy::start(moto::url(), move |call| {
        if !call.is("StartExecution") {
            return Fault::Forward;
        }
        let name = started_name(call);
        let mut attempts = attempts.lock().unwrap();
        let attempt = attempts.entry(name.clone()).or_default();
        *attempt += 1;
        if index.get(&name).is_some_and(|i| i % 3 == *attempt - 1) {
            // A denied call: the SDK does not retry it, the worker does.
            let (status, body) = proxy::error(400, "AccessDeniedException");
            Fault::Answer(status, body)
        } else {
            Fault::Forward
        }
    })
    .await;
    let executor = Arc::new(StepFunctionsExecutor::new(
        sfn_through(&proxy).await,
        HashMap::from([("build".to_string(), arn.clone())]),
    ));
    let jobs: Vec<Job> = requests.into_iter().map(Job::start).collect();
    enqueue(queue.as_ref(), &jobs).await.unwrap();
    drain(queue, executor, settings(), async {
        wait_until_finished(&sfn, &arn, &names).await;
    })
    .await;
    wait_until_drained(&sqs, &url).await;
    let all = executions_of(&sfn, &arn).await;
    let mut got: Vec<&String> = all.keys().collect();
    got.sort();
    let mut want: Vec<&String> = names.iter().collect();
    want.sort();
    assert_eq!(got, want, "every build, once");
    let failed = proxy
        .calls()
        .iter()
        .filter(|call| call.is("StartExecution") && !call.forwarded)
        .count();
    // Only the first starts of every third build failed: no build was started again
    // (as a whole envelope given back would have each of them).
    assert_eq!(failed, 4);
    assert!(
        moto::dead_letter_ids(&sqs, &dead_url).await.is_empty(),
        "nothing dead-lettered"
    );
}
