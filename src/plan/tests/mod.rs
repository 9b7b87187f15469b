//! The planner's rules as a table of cases: each builds an event, plans it against a
//! small configuration and checks the requests (and the skips) it gives.

mod inputs;
mod pull_requests;
mod pushes;
mod reports;

use serde_json::Value;

use super::*;
use crate::config::Config;
use crate::event::{
    Commit, CommitSha, DeliveryId, Occurrence, PullRequest, PullRequestAction, Push, RefName,
    Source,
};
use crate::execution::ExecutionRequest;

pub(super) const SECRET_ENV: &str = "[github]\nwebhook_secrets = [\"x\"]\n";

pub(super) fn planner(routes_and_pipelines: &str) -> Planner {
    let text = format!("{SECRET_ENV}\n{routes_and_pipelines}");
    let config = Config::from_toml_str(&text, &|_| None).unwrap_or_else(|error| panic!("{error}"));
    Planner::new(&config).unwrap()
}

pub(super) const PIPELINES: &str = r#"
[[pipelines]]
name = "deploy"
command = ["true"]
concurrency = "serial"

[[pipelines.projects]]
name = "project-api-v2"
repository = "acme/project-api-v2"
skip_flag = "skip_api_v2"

[[pipelines.projects]]
name = "project-console-v1"
repository = "acme/project-console-v1"
skip_flag = "skip_console_v1"

[[pipelines.projects]]
name = "project-docs"
repository = "acme/project-api-v2"
skip_flag = "skip_docs"
paths = ["docs/**"]

[[pipelines]]
name = "build"
command = ["true"]
"#;

pub(super) fn sha(seed: u8) -> CommitSha {
    CommitSha::parse(&format!("{:040x}", u128::from(seed) + 0xabc0_0000)).unwrap()
}

pub(super) fn zero() -> CommitSha {
    CommitSha::parse(&"0".repeat(40)).unwrap()
}

pub(super) fn commit(seed: u8, message: &str, paths: &[&str]) -> Commit {
    Commit {
        id: sha(seed),
        message: message.to_string(),
        author: "Ada".to_string(),
        changed_paths: Some(paths.iter().map(|p| p.to_string()).collect()),
    }
}

pub(super) fn push(git_ref: &str, commits: Vec<Commit>) -> Event {
    let after = commits.last().map_or_else(|| sha(99), |c| c.id.clone());
    let head_commit = commits.last().cloned();
    Event {
        source: Source::Github,
        delivery: DeliveryId::parse("delivery-1").unwrap(),
        occurrence: Occurrence::from_parts(&["push-1"]),
        repository: "acme/project-api-v2".to_string(),
        kind: EventKind::Push(Push {
            git_ref: RefName::parse(git_ref).unwrap(),
            before: sha(1),
            after,
            commits,
            created: false,
            deleted: false,
            forced: false,
            commits_truncated: false,
            commits_listed: true,
            head_commit,
        }),
    }
}

pub(super) fn pull_request(action: &str, edit: impl FnOnce(&mut PullRequest)) -> Event {
    let mut pull_request = PullRequest {
        number: 42,
        action: PullRequestAction::parse(action),
        title: "Add the thing".to_string(),
        author: "octocat".to_string(),
        head_ref: RefName::parse("refs/heads/feature/thing").unwrap(),
        head_sha: sha(7),
        base_ref: RefName::parse("refs/heads/main").unwrap(),
        base_sha: sha(6),
        draft: false,
        merged: false,
        labels: vec![],
        from_fork: false,
    };
    edit(&mut pull_request);
    Event {
        source: Source::Github,
        delivery: DeliveryId::parse("delivery-pr").unwrap(),
        occurrence: Occurrence::from_parts(&["pull-request-1"]),
        repository: "acme/project-api-v2".to_string(),
        kind: EventKind::PullRequest(pull_request),
    }
}

pub(super) fn input(request: &ExecutionRequest) -> Value {
    serde_json::from_str(request.input.as_str()).unwrap()
}

pub(super) fn commits_of(plan: &Plan) -> Vec<CommitSha> {
    plan.requests
        .iter()
        .map(|request| request.origin.commit.clone())
        .collect()
}

pub(super) fn edit_push(mut event: Event, edit: impl FnOnce(&mut Push)) -> Event {
    if let EventKind::Push(push) = &mut event.kind {
        edit(push);
    }
    event
}

pub(super) const HOTFIX_ROUTE: &str = r#"
[[routes]]
name = "hotfix"
pipeline = "deploy"
repository = "acme/*"
branches = ["hotfix/*"]
environment = "acceptance"
"#;
