//! CodePipeline's job calls for a custom action, which moto does not serve: a wiremock
//! server with state that speaks CodePipeline's JSON protocol (`X-Amz-Target:
//! CodePipeline_20150709.<Operation>`), reached through
//! `AWS_ENDPOINT_URL_CODEPIPELINE`. Jobs are offered by `PollForJobs` until
//! acknowledged with their nonce; a result is taken once, for a job in progress
//! (`InvalidJobStateException` otherwise, as CodePipeline answers); a success with a
//! continuation token makes a new job for the same action that carries it.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

#[derive(Debug, Clone)]
pub struct FakeJob {
    pub id: String,
    pub nonce: String,
    pub data: Value,
    /// Created, InProgress, Succeeded, Failed.
    pub status: String,
    /// Every result call taken for it: (operation, body).
    pub results: Vec<(String, Value)>,
    /// How many polls handed it out.
    pub offered: u32,
    /// Not offered again before this: a job handed out and not acknowledged is
    /// dispatched, and CodePipeline offers it again only once that times out.
    pub dispatched_until: Option<std::time::Instant>,
}

/// How long a job whose acknowledgement never arrived stays dispatched (CodePipeline's
/// is minutes; a test's few seconds are enough for every follow of the lost take to
/// look first).
const DISPATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Default)]
struct State {
    jobs: Vec<FakeJob>,
    /// Acknowledgements to answer with a 500 before taking one.
    failing_acks: u32,
    /// Acknowledgements to leave unanswered (for a minute) and untaken: what a worker
    /// killed with its acknowledgement in flight leaves.
    held_acks: u32,
    /// Acknowledgements held so far.
    held: u32,
    /// GetPipeline calls to answer with a 500 before answering one.
    failing_reads: u32,
    /// Result calls refused because the job had one: (operation, job id).
    refused: Vec<(String, String)>,
    next_nonce: u32,
}

#[derive(Clone)]
pub struct FakeCodePipeline {
    state: Arc<Mutex<State>>,
    pub server: Arc<MockServer>,
}

fn answer(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.to_string(), "application/x-amz-json-1.1")
}

fn error(status: u16, kind: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(
        json!({"__type": kind, "message": message}).to_string(),
        "application/x-amz-json-1.1",
    )
}

struct Responder(Arc<Mutex<State>>);

impl Respond for Responder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let target = request
            .headers
            .get("x-amz-target")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let operation = target.rsplit('.').next().unwrap_or_default().to_string();
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let mut state = self.0.lock().unwrap();
        match operation.as_str() {
            "PollForJobs" => {
                let max = body["maxBatchSize"].as_u64().unwrap_or(1) as usize;
                let mut jobs = Vec::new();
                let now = std::time::Instant::now();
                for job in state.jobs.iter_mut().filter(|job| {
                    job.status == "Created" && job.dispatched_until.is_none_or(|until| until <= now)
                }) {
                    if jobs.len() == max {
                        break;
                    }
                    job.offered += 1;
                    jobs.push(json!({"id": job.id, "nonce": job.nonce, "accountId": "123456789012", "data": job.data}));
                }
                answer(json!({"jobs": jobs}))
            }
            "GetPipeline" => {
                if state.failing_reads > 0 {
                    state.failing_reads -= 1;
                    return error(500, "InternalFailure", "try again");
                }
                if body["name"] != "release" {
                    return error(400, "PipelineNotFoundException", "no such pipeline");
                }
                answer(release_pipeline())
            }
            "AcknowledgeJob" => {
                if state.failing_acks > 0 {
                    state.failing_acks -= 1;
                    return error(500, "InternalFailure", "try again");
                }
                if state.held_acks > 0 {
                    state.held_acks -= 1;
                    state.held += 1;
                    let id = body["jobId"].as_str().unwrap_or_default().to_string();
                    if let Some(job) = state.jobs.iter_mut().find(|job| job.id == id) {
                        job.dispatched_until = Some(std::time::Instant::now() + DISPATCH_TIMEOUT);
                    }
                    return answer(json!({"status": "InProgress"}))
                        .set_delay(std::time::Duration::from_secs(60));
                }
                let (id, nonce) = (body["jobId"].as_str(), body["nonce"].as_str());
                let Some(job) = state
                    .jobs
                    .iter_mut()
                    .find(|job| Some(job.id.as_str()) == id)
                else {
                    return error(400, "JobNotFoundException", "no such job");
                };
                if Some(job.nonce.as_str()) != nonce || job.status != "Created" {
                    return error(400, "InvalidNonceException", "the nonce is not the job's");
                }
                job.status = "InProgress".into();
                answer(json!({"status": "InProgress"}))
            }
            "PutJobSuccessResult" | "PutJobFailureResult" => {
                let id = body["jobId"].as_str().unwrap_or_default().to_string();
                let Some(index) = state.jobs.iter().position(|job| job.id == id) else {
                    return error(400, "JobNotFoundException", "no such job");
                };
                if state.jobs[index].status != "InProgress" {
                    state.refused.push((operation.clone(), id));
                    return error(
                        400,
                        "InvalidJobStateException",
                        "the job is not in progress",
                    );
                }
                let continuation = body["continuationToken"].as_str().map(str::to_string);
                let job = &mut state.jobs[index];
                job.results.push((operation.clone(), body.clone()));
                job.status = if operation == "PutJobFailureResult" {
                    "Failed".into()
                } else {
                    "Succeeded".into()
                };
                if let Some(token) = continuation {
                    let mut data = job.data.clone();
                    data["continuationToken"] = json!(token);
                    let next = format!("{}-c{}", job.id, index + 1);
                    state.next_nonce += 1;
                    let nonce = state.next_nonce.to_string();
                    state.jobs.push(FakeJob {
                        id: next,
                        nonce,
                        data,
                        status: "Created".into(),
                        results: Vec::new(),
                        offered: 0,
                        dispatched_until: None,
                    });
                }
                ResponseTemplate::new(200).set_body_raw("{}", "application/x-amz-json-1.1")
            }
            other => error(
                400,
                "UnknownOperationException",
                &format!("not faked: {other}"),
            ),
        }
    }
}

/// The declaration of the pipeline every job comes from: a CodeCommit source stage
/// whose output is the deploy stage's input.
fn release_pipeline() -> Value {
    json!({
        "pipeline": {
            "name": "release",
            "roleArn": "arn:aws:iam::123456789012:role/release",
            "artifactStore": {"type": "S3", "location": "artifacts"},
            "stages": [
                {"name": "Source", "actions": [{
                    "name": "Source",
                    "actionTypeId": {"category": "Source", "owner": "AWS", "provider": "CodeCommit", "version": "1"},
                    "configuration": {"RepositoryName": "project-api-v2", "BranchName": "main"},
                    "outputArtifacts": [{"name": "SourceOutput"}],
                }]},
                {"name": "Deploy", "actions": [{
                    "name": "Acceptance",
                    "actionTypeId": {"category": "Deploy", "owner": "Custom", "provider": "gitdispatch", "version": "1"},
                    "configuration": {"Pipeline": "deploy", "Environment": "acceptance"},
                    "inputArtifacts": [{"name": "SourceOutput"}],
                }]},
            ],
            "version": 1,
        },
        "metadata": {"pipelineArn": "arn:aws:codepipeline:us-east-1:123456789012:release"},
    })
}

impl FakeCodePipeline {
    pub async fn start() -> FakeCodePipeline {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(State::default()));
        Mock::given(wiremock::matchers::method("POST"))
            .respond_with(Responder(state.clone()))
            .mount(&server)
            .await;
        FakeCodePipeline {
            state,
            server: Arc::new(server),
        }
    }

    pub fn url(&self) -> String {
        self.server.uri()
    }

    /// Adds a job for the action, with the action's configuration and the first input
    /// artifact's revision; its id.
    pub fn add_job(&self, configuration: Value, revision: &str) -> String {
        let mut state = self.state.lock().unwrap();
        state.next_nonce += 1;
        let id = uuid::Uuid::new_v4().to_string();
        let data = json!({
            "actionTypeId": {"category": "Deploy", "owner": "Custom", "provider": "gitdispatch", "version": "1"},
            "actionConfiguration": {"configuration": configuration},
            "pipelineContext": {
                "pipelineName": "release",
                "pipelineExecutionId": "4f1a7b3c-0000-4000-8000-000000000001",
                "stage": {"name": "Deploy"},
                "action": {"name": "Acceptance", "actionExecutionId": "a-1"},
            },
            "inputArtifacts": [{"name": "SourceOutput", "revision": revision,
                "location": {"type": "S3", "s3Location": {"bucketName": "artifacts", "objectKey": "release/SourceOutput/abc"}}}],
            "outputArtifacts": [],
        });
        let nonce = state.next_nonce.to_string();
        state.jobs.push(FakeJob {
            id: id.clone(),
            nonce,
            data,
            status: "Created".into(),
            results: Vec::new(),
            offered: 0,
            dispatched_until: None,
        });
        id
    }

    /// The next `count` reads of the pipeline's declaration fail with a 500.
    pub fn fail_reads(&self, count: u32) {
        self.state.lock().unwrap().failing_reads = count;
    }

    /// The next `count` acknowledgements fail with a 500.
    pub fn fail_acks(&self, count: u32) {
        self.state.lock().unwrap().failing_acks = count;
    }

    /// The next `count` acknowledgements are never answered (within a minute) and
    /// not taken.
    pub fn hold_acks(&self, count: u32) {
        self.state.lock().unwrap().held_acks = count;
    }

    /// How many acknowledgements were held.
    pub fn held(&self) -> u32 {
        self.state.lock().unwrap().held
    }

    pub fn jobs(&self) -> Vec<FakeJob> {
        self.state.lock().unwrap().jobs.clone()
    }

    pub fn job(&self, id: &str) -> FakeJob {
        self.jobs().into_iter().find(|job| job.id == id).unwrap()
    }

    pub fn refused(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().refused.clone()
    }

    /// Waits until no job of the action is open (created or in progress).
    pub async fn wait_until_settled(&self, log: impl Fn() -> String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let jobs = self.jobs();
            if !jobs.is_empty()
                && jobs
                    .iter()
                    .all(|job| job.status == "Succeeded" || job.status == "Failed")
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "CodePipeline jobs still open: {jobs:#?}\n{}",
                log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}
