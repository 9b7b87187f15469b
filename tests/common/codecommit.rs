//! The CodeCommit API as gitdispatch calls it (`BatchGetCommits`, `GetDifferences`,
//! JSON 1.1 over HTTP), served by wiremock from a repository graph the test builds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

/// One commit of the fake repository.
#[derive(Debug, Clone)]
pub struct FakeCommit {
    pub parents: Vec<String>,
    pub message: String,
    pub paths: Vec<String>,
}

/// A repository's commits by id, and what the API was asked.
#[derive(Default)]
pub struct FakeRepository {
    pub commits: HashMap<String, FakeCommit>,
    /// `x-amz-target` of each call, in order.
    pub calls: Vec<String>,
    /// Calls still to answer with a 500 before answering properly.
    pub failures: usize,
}

/// A commit id from a small number: distinct, forty hex digits.
pub fn sha(n: u32) -> String {
    format!("{n:040x}")
}

impl FakeRepository {
    /// A chain of commits `sha(from)` .. `sha(to)`, each the parent of the next and
    /// changing `src/<n>.rs`; `sha(1)` is the root, any other `from` has `sha(from - 1)`
    /// as its parent.
    pub fn chain(&mut self, from: u32, to: u32) {
        for n in from..=to {
            let parents = if n == 1 { Vec::new() } else { vec![sha(n - 1)] };
            self.add(n, parents);
        }
    }

    pub fn add(&mut self, n: u32, parents: Vec<String>) {
        self.commits.insert(
            sha(n),
            FakeCommit {
                parents,
                message: format!("commit {n}"),
                paths: vec![format!("src/{n}.rs")],
            },
        );
    }
}

struct Api {
    repository: Arc<Mutex<FakeRepository>>,
    name: String,
}

fn error(kind: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(400)
        .insert_header("content-type", "application/x-amz-json-1.1")
        .set_body_json(json!({"__type": kind, "message": message}))
}

impl Respond for Api {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let target = request
            .headers
            .get("x-amz-target")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let mut repository = self.repository.lock().unwrap();
        repository.calls.push(target.clone());
        if repository.failures > 0 {
            repository.failures -= 1;
            return ResponseTemplate::new(500)
                .set_body_json(json!({"__type": "InternalFailure", "message": "try again"}));
        }
        if body["repositoryName"] != self.name.as_str() {
            return error("RepositoryDoesNotExistException", "no such repository");
        }
        let ok = |value: Value| {
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/x-amz-json-1.1")
                .set_body_json(value)
        };
        match target.as_str() {
            "CodeCommit_20150413.BatchGetCommits" => {
                let mut commits = Vec::new();
                let mut errors = Vec::new();
                for id in body["commitIds"].as_array().into_iter().flatten() {
                    let id = id.as_str().unwrap_or_default();
                    match repository.commits.get(id) {
                        Some(commit) => commits.push(json!({
                            "commitId": id,
                            "treeId": sha(0),
                            "parents": commit.parents,
                            "message": commit.message,
                            "author": {"name": "Mary", "email": "mary@example.com", "date": "1700000000 +0000"},
                            "committer": {"name": "Mary", "email": "mary@example.com", "date": "1700000000 +0000"},
                        })),
                        None => errors.push(json!({
                            "commitId": id,
                            "errorCode": "CommitDoesNotExistException",
                            "errorMessage": "no such commit",
                        })),
                    }
                }
                ok(json!({"commits": commits, "errors": errors}))
            }
            "CodeCommit_20150413.GetDifferences" => {
                let after = body["afterCommitSpecifier"].as_str().unwrap_or_default();
                let Some(commit) = repository.commits.get(after) else {
                    return error("CommitDoesNotExistException", "no such commit");
                };
                // One page per path, so that paging is exercised.
                let index: usize = body["NextToken"]
                    .as_str()
                    .and_then(|token| token.parse().ok())
                    .unwrap_or(0);
                let Some(path) = commit.paths.get(index) else {
                    return ok(json!({"differences": []}));
                };
                let mut answer = json!({"differences": [{
                    "afterBlob": {"blobId": sha(1), "path": path, "mode": "100644"},
                    "changeType": "A",
                }]});
                if index + 1 < commit.paths.len() {
                    answer["NextToken"] = json!((index + 1).to_string());
                }
                ok(answer)
            }
            other => error("InvalidActionException", &format!("{other} is not served")),
        }
    }
}

/// Serves `repository` as the CodeCommit repository `name` (in any region).
pub async fn serve(name: &str, repository: Arc<Mutex<FakeRepository>>) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(matchers::method("POST"))
        .respond_with(Api {
            repository,
            name: name.to_string(),
        })
        .mount(&server)
        .await;
    server
}

/// AWS settings that reach `server` with test credentials and no retries.
pub async fn settings(server: &MockServer) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(server.uri())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_codecommit::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .load()
        .await
}
