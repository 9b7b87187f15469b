//! gitdispatch as the job worker of a CodePipeline custom action, through the real
//! binary: jobs from a CodePipeline stand-in (moto has none of the job calls), the
//! queue on SQS and the executions on Step Functions, both moto. A job is taken,
//! started with its revision in the input, followed and passed; a failing execution
//! fails its job with the cause; a job offered twice starts one execution; a worker
//! killed while the execution runs picks the job up again and it is passed once.

use crate::common;

use std::time::Duration;

use aws_sdk_sfn::types::ExecutionStatus;
use common::codepipeline::FakeCodePipeline;
use common::daemon::Daemon;
use common::{aws, moto};
use serde_json::{Value, json};

const TOKEN: &str = "operator-token-for-tests-01";
const REVISION: &str = "9fceb02d0ae598e95dc970b74767f19372d61af8";

const PASS: &str = r#"{"StartAt": "Deploy", "States": {"Deploy": {"Type": "Pass", "Result": {"deployed": true}, "End": true}}}"#;
const FAIL: &str = r#"{"StartAt": "Deploy", "States": {"Deploy": {"Type": "Fail", "Error": "ChangeSetRejected", "Cause": "the change set replaces the database"}}}"#;
const SLOW: &str = r#"{"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 6, "Next": "Deploy"}, "Deploy": {"Type": "Pass", "End": true}}}"#;

struct Setup {
    fake: FakeCodePipeline,
    sfn: aws_sdk_sfn::Client,
    /// The state machine of the `deploy` pipeline, and of `broken`.
    deploy: String,
    broken: String,
    text: String,
    environment: Vec<(&'static str, String)>,
}

async fn state_machine(sfn: &aws_sdk_sfn::Client, definition: &str) -> String {
    sfn.create_state_machine()
        .name(moto::unique("codepipeline"))
        .definition(definition)
        .role_arn("arn:aws:iam::123456789012:role/gitdispatch-sample")
        .send()
        .await
        .unwrap()
        .state_machine_arn()
        .to_string()
}

async fn setup(deploy_definition: &str, continue_after_secs: u64) -> Setup {
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (queue, _dead) = moto::create_queue(&sqs, true, Duration::from_secs(3), 5).await;
    let deploy = state_machine(&sfn, deploy_definition).await;
    let broken = state_machine(&sfn, FAIL).await;
    let fake = FakeCodePipeline::start().await;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:8080"

[github]
webhook_secrets = ["${{GITHUB_WEBHOOK_SECRET}}"]

[api]
tokens = ["${{GITDISPATCH_API_TOKEN}}"]

[queue]
type = "sqs"
url = "{queue}"

[worker]
receive_wait_secs = 1
poll_interval_secs = 1
retry_initial_ms = 200
retry_max_secs = 2

[executor]
type = "stepfunctions"

[codepipeline]
provider = "gitdispatch"
poll_interval_secs = 1
continue_after_secs = {continue_after_secs}
pipelines = ["deploy", "broken", "missing"]

[[pipelines]]
name = "deploy"
state_machine_arn = "{deploy}"
concurrency = "serial"

[[pipelines.projects]]
name = "project-api-v2"
repository = "acme/project-api-v2"
default_branch = "main"
skip_flag = "skip_api_v2"

[[pipelines]]
name = "broken"
state_machine_arn = "{broken}"

# Its state machine does not exist: its start is dead-lettered.
[[pipelines]]
name = "missing"
state_machine_arn = "{deploy}-missing"

# Not one CodePipeline may start.
[[pipelines]]
name = "other"
state_machine_arn = "{deploy}"

[[routes]]
pipeline = "deploy"
environment = "acceptance"
events = ["push"]
branches = ["main"]
"#
    );
    let mut environment = moto::environment();
    environment.push(("AWS_ENDPOINT_URL_CODEPIPELINE", fake.url()));
    environment.push(("GITDISPATCH_API_TOKEN", TOKEN.to_string()));
    Setup {
        fake,
        sfn,
        deploy,
        broken,
        text,
        environment,
    }
}

impl Setup {
    fn environment(&self) -> Vec<(&str, &str)> {
        self.environment
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect()
    }

    fn start(&self) -> Daemon {
        Daemon::start(&self.text, &self.environment())
    }

    fn restart(&self, daemon: &mut Daemon) {
        daemon.spawn(&self.environment());
    }

    async fn api(&self, daemon: &Daemon, path: &str) -> Value {
        let text = reqwest::Client::new()
            .get(format!("http://{}{path}", daemon.address))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}"))
    }

    async fn input_of(&self, execution_arn: &str) -> Value {
        let described = self
            .sfn
            .describe_execution()
            .execution_arn(execution_arn)
            .send()
            .await
            .unwrap();
        serde_json::from_str(described.input().unwrap()).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_taken_started_with_its_revision_followed_and_passed() {
    let setup = setup(PASS, 600).await;
    let daemon = setup.start();
    let job = setup.fake.add_job(
        json!({"Pipeline": "deploy", "Environment": "acceptance",
               "UserParameters": "{\"skip_api_v2\": true}"}),
        REVISION,
    );
    setup.fake.wait_until_settled(|| daemon.log()).await;

    let taken = setup.fake.job(&job);
    assert_eq!(taken.status, "Succeeded", "{taken:#?}");
    assert_eq!(taken.results.len(), 1, "passed once: {taken:#?}");
    let (operation, result) = &taken.results[0];
    assert_eq!(operation, "PutJobSuccessResult");
    assert!(result.get("continuationToken").is_none(), "{result}");
    let details = &result["executionDetails"];
    assert_eq!(details["percentComplete"], 100);
    assert!(
        details["summary"].as_str().unwrap().contains("succeeded"),
        "{details}"
    );
    // The external id is the execution's ARN: the action's link opens it.
    let arn = details["externalExecutionId"].as_str().unwrap();
    let executions = aws::executions_of(&setup.sfn, &setup.deploy).await;
    assert_eq!(executions.len(), 1, "{executions:?}");
    let (name, (status, execution_arn)) = executions.iter().next().unwrap();
    assert_eq!(execution_arn, arn);
    assert_eq!(*status, ExecutionStatus::Succeeded);
    assert!(name.starts_with("deploy-acceptance-"), "{name}");

    let input = setup.input_of(arn).await;
    assert_eq!(input["environment"], "acceptance");
    assert_eq!(input["skip_api_v2"], true);
    assert_eq!(input["git"]["provider"], "codepipeline");
    assert_eq!(input["git"]["commit"], REVISION);
    assert_eq!(input["codepipeline"]["job_id"], job.as_str());
    assert_eq!(input["codepipeline"]["pipeline"], "release");
    assert_eq!(input["codepipeline"]["stage"], "Deploy");
    assert_eq!(input["codepipeline"]["action"], "Acceptance");
    assert_eq!(input["codepipeline"]["revision"], REVISION);
    // Where the revision comes from, read off the pipeline's source action.
    assert_eq!(input["codepipeline"]["repository"], "project-api-v2");
    assert_eq!(input["codepipeline"]["branch"], "main");
    assert_eq!(input["git"]["repository"], "project-api-v2");
    assert_eq!(input["git"]["branch"], "main");

    // The job is in the history as a delivery, and its execution in its lane.
    let found = setup.api(&daemon, &format!("/v1/deliveries/{job}")).await;
    let record = &found["deliveries"][0];
    assert_eq!(record["source"], "codepipeline", "{found}");
    assert_eq!(record["outcome"], "queued", "{found}");
    assert_eq!(record["repository"], "project-api-v2", "{found}");
    assert_eq!(record["executions"], json!([name]), "{found}");
    assert!(
        record["explanation"][0]
            .as_str()
            .unwrap()
            .contains("codepipeline trigger"),
        "{found}"
    );
    let lanes = setup.api(&daemon, "/v1/lanes").await;
    let lane = lanes["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|lane| lane["pipeline"] == "deploy" && lane["environment"] == "acceptance")
        .unwrap_or_else(|| panic!("{lanes}"));
    assert_eq!(lane["recent"][0]["name"], name.as_str(), "{lanes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_execution_fails_its_job_with_the_cause_and_a_bad_job_is_failed_at_once() {
    let setup = setup(PASS, 600).await;
    let daemon = setup.start();
    let failing = setup.fake.add_job(
        json!({"Pipeline": "broken", "Environment": "acceptance"}),
        REVISION,
    );
    let unknown = setup.fake.add_job(
        json!({"Pipeline": "nonexistent", "Environment": "acceptance"}),
        REVISION,
    );
    let not_allowed = setup.fake.add_job(
        json!({"Pipeline": "other", "Environment": "acceptance"}),
        REVISION,
    );
    let never_started = setup.fake.add_job(
        json!({"Pipeline": "missing", "Environment": "acceptance"}),
        REVISION,
    );
    let bad_flag = setup.fake.add_job(
        json!({"Pipeline": "deploy", "Environment": "acceptance",
               "UserParameters": "{\"skip_nothing\": true}"}),
        REVISION,
    );
    setup.fake.wait_until_settled(|| daemon.log()).await;

    let failed = setup.fake.job(&failing);
    assert_eq!(failed.results.len(), 1, "{failed:#?}");
    let (operation, result) = &failed.results[0];
    assert_eq!(operation, "PutJobFailureResult");
    let details = &result["failureDetails"];
    assert_eq!(details["type"], "JobFailed");
    let message = details["message"].as_str().unwrap();
    assert!(
        message.contains("the change set replaces the database") && message.contains("failed"),
        "{message}"
    );
    let executions = aws::executions_of(&setup.sfn, &setup.broken).await;
    assert_eq!(executions.len(), 1);
    let arn = &executions.values().next().unwrap().1;
    assert_eq!(details["externalExecutionId"].as_str(), Some(arn.as_str()));

    // A start that can never succeed fails its job at once, not at the start timeout.
    let dead = setup.fake.job(&never_started);
    assert_eq!(dead.results.len(), 1, "{dead:#?}");
    assert_eq!(dead.results[0].0, "PutJobFailureResult");
    let message = dead.results[0].1["failureDetails"]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("could not be started"), "{message}");

    for (job, field) in [
        (unknown, "nonexistent"),
        (not_allowed, "codepipeline.pipelines"),
        (bad_flag, "skip_nothing"),
    ] {
        let refused = setup.fake.job(&job);
        assert_eq!(refused.results.len(), 1, "{refused:#?}");
        let (operation, result) = &refused.results[0];
        assert_eq!(operation, "PutJobFailureResult");
        assert_eq!(result["failureDetails"]["type"], "ConfigurationError");
        let message = result["failureDetails"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{message}");
    }
    assert!(
        aws::executions_of(&setup.sfn, &setup.deploy)
            .await
            .is_empty(),
        "a refused job starts nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_offered_twice_starts_one_execution_and_is_passed_once() {
    let setup = setup(PASS, 600).await;
    // The first acknowledgement fails (the SDK's three attempts at it): the worker has
    // queued the job's execution by then, and CodePipeline offers the job again.
    setup.fake.fail_acks(3);
    // And the first read of the pipeline's declaration fails: the second poll reads a
    // branch the first did not, which must not change the execution's name.
    setup.fake.fail_reads(3);
    let daemon = setup.start();
    let job = setup.fake.add_job(
        json!({"Pipeline": "deploy", "Environment": "acceptance"}),
        REVISION,
    );
    setup.fake.wait_until_settled(|| daemon.log()).await;
    let taken = setup.fake.job(&job);
    assert!(taken.offered >= 2, "offered twice: {taken:#?}");
    assert_eq!(taken.results.len(), 1, "{taken:#?}");
    assert_eq!(taken.results[0].0, "PutJobSuccessResult");
    let executions = aws::executions_of(&setup.sfn, &setup.deploy).await;
    assert_eq!(executions.len(), 1, "one execution: {executions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_the_execution_runs_picks_the_job_up_and_passes_it_once() {
    // A job older than 2 s is handed back in progress; the execution takes 6 s.
    let setup = setup(SLOW, 2).await;
    let mut daemon = setup.start();
    let job = setup.fake.add_job(
        json!({"Pipeline": "deploy", "Environment": "acceptance"}),
        REVISION,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let executions = aws::executions_of(&setup.sfn, &setup.deploy).await;
        if executions
            .values()
            .any(|(status, _)| *status == ExecutionStatus::Running)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never started: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    setup.restart(&mut daemon);
    setup.fake.wait_until_settled(|| daemon.log()).await;

    let executions = aws::executions_of(&setup.sfn, &setup.deploy).await;
    assert_eq!(executions.len(), 1, "one execution: {executions:?}");
    let (_, (status, arn)) = executions.iter().next().unwrap();
    assert_eq!(*status, ExecutionStatus::Succeeded);
    let jobs = setup.fake.jobs();
    // The job was handed back in progress at least once, and the action got exactly
    // one final result, a success, on the last job of the chain.
    assert!(
        jobs.len() >= 2,
        "handed back with a continuation: {jobs:#?}"
    );
    assert_eq!(jobs[0].id, job);
    let finals: Vec<&(String, Value)> = jobs
        .iter()
        .flat_map(|job| job.results.iter())
        .filter(|(_, result)| result.get("continuationToken").is_none())
        .collect();
    assert_eq!(finals.len(), 1, "passed once: {jobs:#?}");
    assert_eq!(finals[0].0, "PutJobSuccessResult");
    assert_eq!(
        finals[0].1["executionDetails"]["externalExecutionId"].as_str(),
        Some(arn.as_str())
    );
    for job in &jobs {
        assert_eq!(job.results.len(), 1, "each job has one result: {job:#?}");
    }
}

/// A worker killed while its acknowledgement of a job is in flight (CodePipeline never
/// took it): the restarted worker's follow of that take is refused (the job is not in
/// progress) and waits, CodePipeline offers the job again, and it is taken and followed
/// under a new id (SQS FIFO's five-minute window, which the suite's moto keeps, would
/// drop the first take's). Exactly one execution and one result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_the_acknowledgement_is_in_flight_ends_with_one_result() {
    let setup = setup(PASS, 600).await;
    setup.fake.hold_acks(1);
    let mut daemon = setup.start();
    let job = setup.fake.add_job(
        json!({"Pipeline": "deploy", "Environment": "acceptance"}),
        REVISION,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while setup.fake.held() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never acknowledged: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill();
    setup.restart(&mut daemon);
    setup.fake.wait_until_settled(|| daemon.log()).await;
    let taken = setup.fake.job(&job);
    assert!(taken.offered >= 2, "offered again: {taken:#?}");
    assert_eq!(taken.results.len(), 1, "one result: {taken:#?}");
    assert_eq!(taken.results[0].0, "PutJobSuccessResult");
    let executions = aws::executions_of(&setup.sfn, &setup.deploy).await;
    assert_eq!(executions.len(), 1, "one execution: {executions:?}");
    assert!(
        executions
            .values()
            .all(|(status, _)| *status == ExecutionStatus::Succeeded)
    );
}

/// A job whose execution waits behind a busy serial lane is handed back in progress
/// before `continue_after_secs` has passed twice, as a running one is, and its chain
/// ends with one final result once its execution ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_behind_a_busy_lane_is_handed_back_and_ends_with_one_result() {
    let setup = setup(SLOW, 2).await;
    let daemon = setup.start();
    // The first job's execution holds the lane for six seconds.
    setup.fake.add_job(
        json!({"Pipeline": "deploy", "Environment": "acceptance"}),
        REVISION,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while aws::executions_of(&setup.sfn, &setup.deploy)
        .await
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first never started: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waiting = setup.fake.add_job(
        json!({"Pipeline": "deploy", "Environment": "acceptance"}),
        "0123456789abcdef0123456789abcdef01234567",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while setup.fake.job(&waiting).status != "InProgress" {
        assert!(
            std::time::Instant::now() < deadline,
            "never taken: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let taken = std::time::Instant::now();
    while setup.fake.job(&waiting).results.is_empty() {
        assert!(
            taken.elapsed() < Duration::from_secs(4),
            "not handed back within twice continue_after_secs: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let handed = setup.fake.job(&waiting);
    let (operation, result) = &handed.results[0];
    assert_eq!(operation, "PutJobSuccessResult");
    assert!(result["continuationToken"].is_string(), "{result}");
    assert!(
        result["executionDetails"]["summary"]
            .as_str()
            .unwrap()
            .contains("waits in its lane"),
        "{result}"
    );
    setup.fake.wait_until_settled(|| daemon.log()).await;
    let jobs = setup.fake.jobs();
    for job in &jobs {
        assert_eq!(job.results.len(), 1, "each job has one result: {job:#?}");
    }
    let finals: Vec<&(String, Value)> = jobs
        .iter()
        .flat_map(|job| job.results.iter())
        .filter(|(_, result)| result.get("continuationToken").is_none())
        .collect();
    assert_eq!(finals.len(), 2, "each action passed once: {jobs:#?}");
    assert!(
        finals
            .iter()
            .all(|(operation, _)| operation == "PutJobSuccessResult")
    );
    let executions = aws::executions_of(&setup.sfn, &setup.deploy).await;
    assert_eq!(executions.len(), 2, "{executions:?}");
}
