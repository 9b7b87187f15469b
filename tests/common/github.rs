//! The GitHub API as gitdispatch's reporter calls it, served by wiremock with state:
//! commit statuses, check runs, deployments and their statuses, an App's installation
//! and its tokens. Answers have the shapes GitHub documents; every call is recorded,
//! and the API can be told to fail for a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// One call the fake API took.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub body: Value,
}

/// How the fake API fails, while it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 500 to every call.
    ServerError,
    /// 403 with the secondary rate limit's message and `Retry-After: 1`.
    SecondaryRateLimit,
}

#[derive(Default)]
pub struct FakeGithub {
    pub calls: Vec<Call>,
    /// Statuses by commit, newest first.
    pub statuses: HashMap<String, Vec<Value>>,
    pub check_runs: Vec<Value>,
    pub deployments: Vec<Value>,
    /// Deployment statuses by deployment id, newest first.
    pub deployment_statuses: HashMap<u64, Vec<Value>>,
    /// Failing every call while set.
    pub failing: Option<Failure>,
    /// The App's installation for every repository.
    pub installation_id: u64,
    /// Installation tokens handed out, in order, and how long each lives.
    pub tokens: Vec<String>,
    pub token_lifetime_secs: i64,
    pub next_id: u64,
    /// The repository's history, oldest first: what the compare and commit APIs read.
    pub history: Vec<FakeCommit>,
    /// Webhook deliveries by their list's path, newest first.
    pub hook_deliveries: HashMap<String, Vec<Value>>,
    /// Redeliveries asked for: (deliveries path, delivery id).
    pub redeliveries: Vec<(String, u64)>,
    /// The repository's branches and their heads.
    pub branches: Vec<(String, String)>,
    /// Commits committed a moment ago (within any grace period).
    pub committed_now: Vec<String>,
}

/// One commit of the fake repository.
#[derive(Debug, Clone)]
pub struct FakeCommit {
    pub sha: String,
    pub message: String,
    pub files: Vec<String>,
}

/// When the fake's commits were committed: long before any test runs, unless a test
/// says otherwise (`FakeGithub::committed_now`).
const COMMITTED_AT: &str = "2026-01-01T10:00:00Z";

impl FakeCommit {
    fn to_json(&self, with_files: bool) -> Value {
        let mut value = json!({
            "sha": self.sha,
            "commit": {
                "message": self.message,
                "author": {"name": "Mary Doe", "email": "mary@example.com", "date": COMMITTED_AT},
                "committer": {"name": "Mary Doe", "email": "mary@example.com", "date": COMMITTED_AT},
            },
            "author": {"login": "mary"},
            "parents": [],
        });
        if with_files {
            value["files"] = Value::Array(
                self.files
                    .iter()
                    .map(|file| json!({"filename": file, "status": "modified"}))
                    .collect(),
            );
        }
        value
    }
}

impl FakeGithub {
    /// The states shown for `context` on `sha`, oldest first.
    pub fn states(&self, sha: &str, context: &str) -> Vec<(String, String)> {
        let mut states: Vec<(String, String)> = self
            .statuses
            .get(sha)
            .into_iter()
            .flatten()
            .filter(|status| status["context"] == context)
            .map(|status| {
                (
                    status["state"].as_str().unwrap().to_string(),
                    status["description"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        states.reverse();
        states
    }

    /// The writes taken (POST and PATCH), in order.
    pub fn writes(&self) -> Vec<&Call> {
        self.calls
            .iter()
            .filter(|call| call.method != "GET")
            .collect()
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        1000 + self.next_id
    }
}

struct Api(Arc<Mutex<FakeGithub>>);

fn ok(status: u16, body: Value) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("content-type", "application/json; charset=utf-8")
        .set_body_json(body)
}

fn not_found() -> ResponseTemplate {
    ok(
        404,
        json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
    )
}

fn query_value(query: &str, key: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.into_owned())
}

impl Respond for Api {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut github = self.0.lock().unwrap();
        let method = request.method.to_string();
        let path = request.url.path().to_string();
        let query = request.url.query().unwrap_or_default().to_string();
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        github.calls.push(Call {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            authorization: request
                .headers
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .map(str::to_string),
            body: body.clone(),
        });
        match github.failing {
            Some(Failure::ServerError) => {
                return ok(500, json!({"message": "Server Error"}));
            }
            Some(Failure::SecondaryRateLimit) => {
                return ok(
                    403,
                    json!({
                        "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                        "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
                    }),
                )
                .insert_header("retry-after", "1");
            }
            None => {}
        }
        if method == "GET" && github.hook_deliveries.contains_key(&path) {
            // Paged by an opaque cursor in the Link header, as GitHub does.
            let per_page: usize = query_value(&query, "per_page")
                .and_then(|value| value.parse().ok())
                .unwrap_or(30);
            let start: usize = query_value(&query, "cursor")
                .and_then(|value| value.strip_prefix("v1_").map(str::to_string))
                .and_then(|value| value.parse().ok())
                .unwrap_or(0);
            let all = &github.hook_deliveries[&path];
            let page: Vec<Value> = all.iter().skip(start).take(per_page).cloned().collect();
            let mut answer = ok(200, Value::Array(page));
            if start + per_page < all.len() {
                let mut next = request.url.clone();
                next.set_query(Some(&format!(
                    "per_page={per_page}&cursor=v1_{}",
                    start + per_page
                )));
                answer = answer.insert_header("link", format!("<{next}>; rel=\"next\"").as_str());
            }
            return answer;
        }
        if method == "POST"
            && let Some((list, rest)) = path.rsplit_once("/deliveries/")
            && let Some(id) = rest.strip_suffix("/attempts")
        {
            let list = format!("{list}/deliveries");
            if !github.hook_deliveries.contains_key(&list) {
                return not_found();
            }
            github
                .redeliveries
                .push((list, id.parse().unwrap_or_default()));
            return ok(202, json!({}));
        }
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("POST", ["app", "installations", id, "access_tokens"]) => {
                let token = format!("ghs_installation_{id}_{}", github.tokens.len() + 1);
                github.tokens.push(token.clone());
                let expires = chrono_like_now(github.token_lifetime_secs);
                ok(
                    201,
                    json!({"token": token, "expires_at": expires, "permissions": {"checks": "write", "statuses": "write", "deployments": "write"}, "repository_selection": "all"}),
                )
            }
            ("GET", ["repos", owner, repo, "installation"]) => ok(
                200,
                json!({"id": github.installation_id, "account": {"login": owner}, "app_id": 1, "target_type": "Organization", "repository": repo}),
            ),
            ("GET", ["repos", _, _, "commits", sha, "statuses"]) => {
                let list = github.statuses.get(*sha).cloned().unwrap_or_default();
                ok(200, Value::Array(list))
            }
            ("POST", ["repos", _, _, "statuses", sha]) => {
                let id = github.id();
                let status = json!({
                    "id": id,
                    "state": body["state"],
                    "description": body["description"],
                    "target_url": body.get("target_url").cloned().unwrap_or(Value::Null),
                    "context": body["context"],
                    "created_at": "2026-12-01T10:00:00Z",
                });
                github
                    .statuses
                    .entry(sha.to_string())
                    .or_default()
                    .insert(0, status.clone());
                ok(201, status)
            }
            ("GET", ["repos", _, _, "commits", sha, "check-runs"]) => {
                let name = query_value(&query, "check_name");
                let runs: Vec<Value> = github
                    .check_runs
                    .iter()
                    .filter(|run| run["head_sha"] == *sha)
                    .filter(|run| name.as_deref().is_none_or(|name| run["name"] == name))
                    .cloned()
                    .collect();
                ok(200, json!({"total_count": runs.len(), "check_runs": runs}))
            }
            ("POST", ["repos", _, _, "check-runs"]) => {
                let id = github.id();
                let mut run = body.clone();
                run["id"] = json!(id);
                github.check_runs.push(run.clone());
                ok(201, run)
            }
            ("PATCH", ["repos", _, _, "check-runs", id]) => {
                let id: u64 = id.parse().unwrap_or_default();
                let Some(run) = github.check_runs.iter_mut().find(|run| run["id"] == id) else {
                    return not_found();
                };
                for (key, value) in body.as_object().into_iter().flatten() {
                    run[key] = value.clone();
                }
                let run = run.clone();
                ok(200, run)
            }
            ("GET", ["repos", _, _, "deployments"]) => {
                let sha = query_value(&query, "sha");
                let environment = query_value(&query, "environment");
                let list: Vec<Value> = github
                    .deployments
                    .iter()
                    .rev()
                    .filter(|deployment| sha.as_deref().is_none_or(|sha| deployment["sha"] == sha))
                    .filter(|deployment| {
                        environment
                            .as_deref()
                            .is_none_or(|environment| deployment["environment"] == environment)
                    })
                    .cloned()
                    .collect();
                ok(200, Value::Array(list))
            }
            ("POST", ["repos", _, _, "deployments"]) => {
                let id = github.id();
                let deployment = json!({
                    "id": id,
                    "sha": body["ref"],
                    "ref": body["ref"],
                    "environment": body["environment"],
                    "payload": body["payload"],
                    "description": body["description"],
                    "transient_environment": body["transient_environment"],
                    "production_environment": body["production_environment"],
                    "auto_merge": body["auto_merge"],
                    "required_contexts": body["required_contexts"],
                    "created_at": "2026-12-01T10:00:00Z",
                });
                github.deployments.push(deployment.clone());
                ok(201, deployment)
            }
            ("GET", ["repos", _, _, "deployments", id, "statuses"]) => {
                let id: u64 = id.parse().unwrap_or_default();
                let list = github
                    .deployment_statuses
                    .get(&id)
                    .cloned()
                    .unwrap_or_default();
                ok(200, Value::Array(list))
            }
            ("POST", ["repos", _, _, "deployments", id, "statuses"]) => {
                let id: u64 = id.parse().unwrap_or_default();
                if !github
                    .deployments
                    .iter()
                    .any(|deployment| deployment["id"] == id)
                {
                    return not_found();
                }
                let status_id = github.id();
                let mut status = body.clone();
                status["id"] = json!(status_id);
                github
                    .deployment_statuses
                    .entry(id)
                    .or_default()
                    .insert(0, status.clone());
                ok(201, status)
            }
            ("GET", ["repos", _, _, "compare", range]) => {
                let Some((before, after)) = range.split_once("...") else {
                    return not_found();
                };
                let index = |sha: &str| github.history.iter().position(|c| c.sha == sha);
                let (Some(before), Some(after)) = (index(before), index(after)) else {
                    return not_found();
                };
                let per_page: usize = query_value(&query, "per_page")
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(250);
                let page: usize = query_value(&query, "page")
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(1);
                let ahead: Vec<&FakeCommit> = if after > before {
                    github.history[before + 1..=after].iter().collect()
                } else {
                    Vec::new()
                };
                let listed: Vec<Value> = ahead
                    .iter()
                    .skip((page - 1) * per_page)
                    .take(per_page)
                    .map(|commit| commit.to_json(false))
                    .collect();
                ok(
                    200,
                    json!({
                        "status": if after > before { "ahead" } else if after == before { "identical" } else { "behind" },
                        "ahead_by": ahead.len(),
                        "behind_by": before.saturating_sub(after),
                        "total_commits": ahead.len(),
                        "commits": listed,
                        "files": [],
                    }),
                )
            }
            ("GET", ["repos", _, _, "commits", sha]) => {
                match github.history.iter().find(|commit| commit.sha == *sha) {
                    Some(commit) => {
                        let mut value = commit.to_json(true);
                        if github.committed_now.iter().any(|now| now == sha) {
                            value["commit"]["committer"]["date"] =
                                json!(chrono_like_now(0));
                        }
                        ok(200, value)
                    }
                    None => not_found(),
                }
            }
            ("GET", ["repos", _, _, "branches"]) => ok(
                200,
                Value::Array(
                    github
                        .branches
                        .iter()
                        .map(|(name, sha)| json!({"name": name, "commit": {"sha": sha}, "protected": false}))
                        .collect(),
                ),
            ),
            _ => not_found(),
        }
    }
}

/// An ISO 8601 time `seconds` from now, as GitHub writes `expires_at`.
fn chrono_like_now(seconds: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs((now + seconds) as u64),
    )
    .to_string()
}

/// Serves a fake GitHub API; the state is the test's to read and change.
pub async fn serve(github: Arc<Mutex<FakeGithub>>) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(Api(github))
        .mount(&server)
        .await;
    server
}

/// The `[github]` lines that report to `server` with a token, with a rate limit that
/// a test's handful of reports never meets.
pub fn token_section(server: &MockServer) -> String {
    format!(
        "token = \"ghp_test_token_for_reports\"\napi_url = \"{}\"\nreports_per_minute = 6000\n",
        server.uri()
    )
}
