//! The listener through a real socket: signed GitHub deliveries built from the fixtures,
//! checked for their status, their plan and what was queued; every bad input refused
//! with nothing queued.

use crate::common;

use std::collections::HashSet;

use common::{
    Delivery, SECRET, config_from, example_config, executions, fixture, push_variant, spawn_app,
};
use gitdispatch::execution::{Action, ExecutionRequest};
use gitdispatch::job::{Job, JobKind};
use gitdispatch::source::github::sign;
use serde_json::{Value, json};

fn requests(jobs: &[Job]) -> Vec<ExecutionRequest> {
    jobs.iter()
        .map(|job| match &job.kind {
            JobKind::Start { request } => request.clone(),
            other => panic!("a listener queues starts only, with reporting off: {other:?}"),
        })
        .collect()
}

fn input(request: &ExecutionRequest) -> Value {
    serde_json::from_str(request.input.as_str()).unwrap()
}

#[tokio::test]
async fn ping_is_answered() {
    let app = spawn_app(example_config()).await;
    let answer = app
        .post_github(&Delivery::fixture("ping", "ping.json"))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["status"], "pong");
    assert!(app.queued_jobs().is_empty());
}

#[tokio::test]
async fn a_push_of_several_commits_queues_one_execution_per_commit_and_route() {
    let app = spawn_app(example_config()).await;
    let delivery = Delivery::fixture("push", "push_branch_commits.json");
    let answer = app.post_github(&delivery).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(answer.body["delivery"], delivery.id.as_str());
    let queued = requests(&app.queued_jobs());
    let names: Vec<String> = queued.iter().map(|r| r.name.to_string()).collect();
    assert_eq!(
        executions(&answer),
        names,
        "the answer names what was queued"
    );
    assert_eq!(queued.len(), 6, "3 commits × (build, hotfix deploy)");

    let commits = [
        "a1b1c1d1e1f1a1b1c1d1e1f1a1b1c1d1e1f1a1b1",
        "a2b2c2d2e2f2a2b2c2d2e2f2a2b2c2d2e2f2a2b2",
        "a3b3c3d3e3f3a3b3c3d3e3f3a3b3c3d3e3f3a3b3",
    ];
    let deploys: Vec<&ExecutionRequest> =
        queued.iter().filter(|r| r.pipeline == "deploy").collect();
    let deployed_commits: Vec<&str> = deploys.iter().map(|r| r.origin.commit.as_str()).collect();
    assert_eq!(deployed_commits, commits, "oldest first");
    for request in &deploys {
        assert_eq!(request.group.as_deref(), Some("deploy/acceptance"));
        let value = input(request);
        assert_eq!(value["environment"], "acceptance");
        assert_eq!(value["skip_api_v2"], false);
        assert_eq!(value["skip_console_v1"], true);
        assert_eq!(
            value["override_branches"],
            json!([{"project": "project-api-v2", "branch": "hotfix/important_patch"}])
        );
        assert_eq!(value["git"]["delivery"], delivery.id.as_str());
    }
    let builds = queued.iter().filter(|r| r.pipeline == "build").count();
    assert_eq!(builds, 3);
}

#[tokio::test]
async fn execution_names_come_from_signed_content_so_a_replay_plans_nothing_new() {
    let app = spawn_app(example_config()).await;
    let delivery = Delivery::fixture("push", "push_branch_commits.json");
    let first = app.post_github(&delivery).await;
    assert_eq!(first.status, 202);
    // GitHub's redelivery (same id), a captured body replayed under a new delivery id,
    // the same push from a second hook: the delivery id is not signed, so it names
    // nothing.
    let redelivered = app.post_github(&delivery).await;
    let replayed = app
        .post_github(&Delivery::fixture("push", "push_branch_commits.json"))
        .await;
    assert_eq!(executions(&first), executions(&redelivered));
    assert_eq!(executions(&first), executions(&replayed));
    // A new push of the same commits (pushed again after a force-push away and back)
    // is another occurrence and deploys again.
    let pushed_again = app
        .post_github(&Delivery::new(
            "push",
            push_variant("push_branch_commits.json", 1),
        ))
        .await;
    assert_eq!(pushed_again.status, 202);
    let again: HashSet<String> = executions(&pushed_again).into_iter().collect();
    assert!(
        executions(&first).iter().all(|name| !again.contains(name)),
        "a new push, new names"
    );

    // Pull requests: the same event replayed plans the same names; the pull request
    // updated (a new updated_at) or reopened plans new ones.
    let opened = Delivery::fixture("pull_request", "pull_request_opened.json");
    let first = executions(&app.post_github(&opened).await);
    let replayed = executions(
        &app.post_github(&Delivery::fixture(
            "pull_request",
            "pull_request_opened.json",
        ))
        .await,
    );
    assert_eq!(first.len(), 1);
    assert_eq!(first, replayed);
    let updated = String::from_utf8(fixture("github/pull_request_opened.json"))
        .unwrap()
        .replacen(
            "\"updated_at\": \"2026-11-20T15:10:00Z\"",
            "\"updated_at\": \"2026-11-21T09:00:00Z\"",
            1,
        );
    let updated = executions(
        &app.post_github(&Delivery::new("pull_request", updated.into_bytes()))
            .await,
    );
    assert_eq!(updated.len(), 1);
    assert_ne!(first, updated, "the pull request changed: a new occurrence");
}

#[tokio::test]
async fn tag_pushes_follow_the_tag_filters() {
    let config = config_from(
        &std::fs::read_to_string(common::fixture_path("../config/gitdispatch.toml"))
            .unwrap()
            .replace("branches = [\"**\"]", "tags = [\"v*\"]"),
    );
    let app = spawn_app(config).await;
    let answer = app
        .post_github(&Delivery::fixture("push", "push_tag.json"))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let queued = requests(&app.queued_jobs());
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].pipeline, "build");
    assert_eq!(queued[0].origin.git_ref.as_str(), "refs/tags/v2.4.0");
    assert_eq!(input(&queued[0])["git"]["branch"], Value::Null);

    // The default config builds branches only: a tag push matches nothing and says so.
    let app = spawn_app(example_config()).await;
    let answer = app
        .post_github(&Delivery::fixture("push", "push_tag.json"))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["status"], "no_executions");
    assert_eq!(answer.body["reason"], "no route matched the event");
}

#[tokio::test]
async fn a_new_branch_at_an_existing_commit_runs_that_commit() {
    let app = spawn_app(example_config()).await;
    let answer = app
        .post_github(&Delivery::fixture("push", "push_branch_created.json"))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let queued = requests(&app.queued_jobs());
    assert_eq!(queued.len(), 2, "build and hotfix deploy");
    for request in &queued {
        assert_eq!(
            request.origin.commit.as_str(),
            "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
        );
        assert_eq!(input(request)["git"]["message"], "Release 2.3.0");
    }
}

#[tokio::test]
async fn a_force_push_back_runs_the_new_head() {
    let app = spawn_app(example_config()).await;
    let answer = app
        .post_github(&Delivery::fixture("push", "push_forced.json"))
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let queued = requests(&app.queued_jobs());
    assert_eq!(queued.len(), 2);
    assert!(queued.iter().all(
        |request| request.origin.commit.as_str() == "a1b1c1d1e1f1a1b1c1d1e1f1a1b1c1d1e1f1a1b1"
    ));
}

#[tokio::test]
async fn a_deleted_branch_tears_down_only_where_asked() {
    let app = spawn_app(example_config()).await;
    let answer = app
        .post_github(&Delivery::fixture("push", "push_branch_deleted.json"))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["status"], "no_executions");
    assert!(answer.body["reason"].as_str().unwrap().contains("deleted"));
    assert!(app.queued_jobs().is_empty());

    let text = std::fs::read_to_string(common::fixture_path("../config/gitdispatch.toml"))
        .unwrap()
        .replace("teardown_on_delete = false", "teardown_on_delete = true");
    let app = spawn_app(config_from(&text)).await;
    let answer = app
        .post_github(&Delivery::fixture("push", "push_branch_deleted.json"))
        .await;
    assert_eq!(answer.status, 202);
    let queued = requests(&app.queued_jobs());
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].action, Action::Teardown);
    assert_eq!(
        queued[0].origin.commit.as_str(),
        "a3b3c3d3e3f3a3b3c3d3e3f3a3b3c3d3e3f3a3b3"
    );
}

#[tokio::test]
async fn pull_requests_deploy_a_preview_and_tear_it_down_when_closed() {
    let app = spawn_app(example_config()).await;
    for (fixture, action) in [
        ("pull_request_opened.json", Action::Deploy),
        ("pull_request_synchronize.json", Action::Deploy),
        ("pull_request_closed_merged.json", Action::Teardown),
    ] {
        let before = app.queued_jobs().len();
        let answer = app
            .post_github(&Delivery::fixture("pull_request", fixture))
            .await;
        assert_eq!(answer.status, 202, "{fixture}: {}", answer.body);
        let queued = requests(&app.queued_jobs()[before..]);
        assert_eq!(queued.len(), 1, "{fixture}");
        assert_eq!(queued[0].environment, "pr-42");
        assert_eq!(queued[0].group.as_deref(), Some("deploy/pr-42"));
        assert_eq!(queued[0].action, action, "{fixture}");
        let value = input(&queued[0]);
        assert_eq!(value["git"]["pull_request"]["number"], 42);
        assert_eq!(value["git"]["action"], action.as_str());
        assert_eq!(
            value["override_branches"][0]["branch"], "feature/preview-me",
            "{fixture}"
        );
    }
}

#[tokio::test]
async fn pull_requests_from_forks_and_drafts_are_not_deployed_by_default() {
    let app = spawn_app(example_config()).await;
    for (fixture, reason) in [
        ("pull_request_fork.json", "fork"),
        ("pull_request_draft.json", "draft"),
    ] {
        let answer = app
            .post_github(&Delivery::fixture("pull_request", fixture))
            .await;
        assert_eq!(answer.status, 200, "{fixture}");
        assert!(
            answer.body["reason"].as_str().unwrap().contains(reason),
            "{fixture}: {}",
            answer.body
        );
    }
    assert!(app.queued_jobs().is_empty());
}

#[tokio::test]
async fn form_encoded_deliveries_are_accepted() {
    let app = spawn_app(example_config()).await;
    let json = common::fixture("github/push_branch_commits.json");
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(&json).unwrap())
        .finish();
    let mut delivery = Delivery::new("push", body.into_bytes());
    delivery.content_type = "application/x-www-form-urlencoded".to_string();
    let answer = app.post_github(&delivery).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    assert_eq!(executions(&answer).len(), 6);
}

#[tokio::test]
async fn other_events_are_acknowledged_and_ignored() {
    let app = spawn_app(example_config()).await;
    let answer = app
        .post_github(&Delivery::fixture("issue_comment", "issue_comment.json"))
        .await;
    assert_eq!(answer.status, 202);
    assert_eq!(answer.body["status"], "ignored");
    assert!(app.queued_jobs().is_empty());
}

/// Each case: a delivery made bad in one way, the status and a word of the reason.
#[tokio::test]
async fn bad_input_is_refused_clearly_and_nothing_is_queued() {
    let app = spawn_app(example_config()).await;
    let good = || Delivery::fixture("push", "push_branch_commits.json");
    let mut cases: Vec<(&str, Delivery, u16, &str)> = Vec::new();

    let mut missing = good();
    missing.signature = None;
    cases.push(("no signature", missing, 401, "missing"));

    let mut wrong = good();
    wrong.signature = Some(sign(b"not the secret", &wrong.body));
    cases.push(("wrong secret", wrong, 401, "does not match"));

    let mut tampered = good();
    tampered.body[10] ^= 1;
    cases.push(("tampered body", tampered, 401, "does not match"));

    let mut garbled = good();
    garbled.signature = Some("sha256=zz".to_string());
    cases.push(("garbled signature", garbled, 401, "hexadecimal"));

    let mut text = good();
    text.content_type = "text/plain".to_string();
    cases.push(("content type", text, 415, "content type"));

    let mut no_delivery = good();
    no_delivery.id = String::new();
    cases.push(("empty delivery id", no_delivery, 400, "delivery"));

    cases.push((
        "not JSON",
        Delivery::new("push", b"{not json".to_vec()),
        400,
        "not valid JSON",
    ));
    cases.push((
        "JSON, but not a push",
        Delivery::new("push", br#"{"zen": "hi"}"#.to_vec()),
        422,
        "not usable",
    ));
    let bad_sha = String::from_utf8(common::fixture("github/push_branch_commits.json"))
        .unwrap()
        .replace("a3b3c3d3e3f3a3b3c3d3e3f3a3b3c3d3e3f3a3b3", "not-a-sha");
    cases.push((
        "bad commit id",
        Delivery::new("push", bad_sha.into_bytes()),
        422,
        "commit id",
    ));

    for (label, delivery, status, reason) in cases {
        let answer = app.post_github(&delivery).await;
        assert_eq!(answer.status, status, "{label}: {}", answer.body);
        let error = answer.body["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{label}: {error:?}");
        assert!(!error.contains(SECRET), "{label}: the secret leaked");
    }

    // Only the SHA-1 signature: refused, and the reason says why.
    let legacy = good();
    let answer = app
        .client
        .post(format!("{}/webhooks/github", app.address))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", "d-1")
        .header("x-hub-signature", "sha1=0123")
        .body(legacy.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    assert!(answer.text().await.unwrap().contains("SHA-1"));

    // No event header.
    let answer = app
        .client
        .post(format!("{}/webhooks/github", app.address))
        .header("content-type", "application/json")
        .header("x-github-delivery", "d-1")
        .header("x-hub-signature-256", legacy.signature.clone().unwrap())
        .body(legacy.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.unwrap().contains("X-GitHub-Event"));

    assert!(
        app.queued_jobs().is_empty(),
        "a refused delivery queued nothing"
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_413() {
    let text = std::fs::read_to_string(common::fixture_path("../config/gitdispatch.toml"))
        .unwrap()
        .replace("[server]\n", "[server]\nmax_body_bytes = 1024\n");
    let app = spawn_app(config_from(&text)).await;
    let answer = app
        .post_github(&Delivery::fixture("push", "push_branch_commits.json"))
        .await;
    assert_eq!(answer.status, 413);
    assert!(answer.body["error"].as_str().unwrap().contains("1024"));

    // A chunked body declares no length: the limit holds while reading.
    let body = common::fixture("github/push_branch_commits.json");
    let signature = sign(SECRET.as_bytes(), &body);
    let mut request = format!(
        "POST /webhooks/github HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         x-github-event: push\r\nx-github-delivery: chunked\r\nx-hub-signature-256: {signature}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(256) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let response = raw_request(&app.address, &request).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(app.queued_jobs().is_empty());
}

/// Writes bytes to the server as they are and reads the answer until it closes.
async fn raw_request(address: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address.trim_start_matches("http://"))
        .await
        .unwrap();
    // The server may answer and close before the whole body is written.
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn clients_over_their_rate_get_429() {
    let text = std::fs::read_to_string(common::fixture_path("../config/gitdispatch.toml"))
        .unwrap()
        .replace("per_second = 50\nburst = 200", "per_second = 1\nburst = 2");
    let app = spawn_app(config_from(&text)).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        // Unsigned: the limit applies before verification.
        let mut delivery = Delivery::fixture("ping", "ping.json");
        delivery.signature = None;
        statuses.push(app.post_github(&delivery).await.status);
    }
    assert_eq!(&statuses[..2], &[401, 401]);
    assert_eq!(statuses[3], 429);
    // Health checks are not limited.
    assert_eq!(app.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn addresses_outside_allowed_networks_get_403() {
    let text = std::fs::read_to_string(common::fixture_path("../config/gitdispatch.toml"))
        .unwrap()
        .replace(
            "[server]\n",
            "[server]\nallowed_networks = [\"192.0.2.0/24\"]\n",
        );
    let app = spawn_app(config_from(&text)).await;
    let answer = app
        .post_github(&Delivery::fixture("push", "push_branch_commits.json"))
        .await;
    assert_eq!(answer.status, 403);
    assert!(answer.body["error"].as_str().unwrap().contains("127.0.0.1"));
    assert!(app.queued_jobs().is_empty());

    // Behind a trusted proxy, the forwarded address is the one checked.
    let text = std::fs::read_to_string(common::fixture_path("../config/gitdispatch.toml"))
        .unwrap()
        .replace(
            "[server]\n",
            "[server]\nallowed_networks = [\"192.0.2.0/24\"]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        );
    let app = spawn_app(config_from(&text)).await;
    let delivery = Delivery::fixture("push", "push_branch_commits.json");
    let response = app
        .client
        .post(format!("{}/webhooks/github", app.address))
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", &delivery.id)
        .header("x-hub-signature-256", delivery.signature.clone().unwrap())
        .header("x-forwarded-for", "192.0.2.55")
        .body(delivery.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

#[tokio::test]
async fn a_scoped_secret_cannot_speak_for_other_repositories() {
    let text = std::fs::read_to_string(common::fixture_path("../config/gitdispatch.toml"))
        .unwrap()
        .replace(
            "webhook_secrets = [\"${GITHUB_WEBHOOK_SECRET}\"]",
            "webhook_secrets = [{ secret = \"billing-secret\", repositories = [\"acme/billing-*\"] }, \"${GITHUB_WEBHOOK_SECRET}\"]",
        );
    let app = spawn_app(config_from(&text)).await;
    let mut delivery = Delivery::fixture("push", "push_branch_commits.json");
    delivery.signature = Some(sign(b"billing-secret", &delivery.body));
    let answer = app.post_github(&delivery).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(
        answer.body["error"]
            .as_str()
            .unwrap()
            .contains("acme/project-api-v2")
    );
    assert!(app.queued_jobs().is_empty());
    // The organisation-wide secret still works for the same delivery.
    let delivery = Delivery::fixture("push", "push_branch_commits.json");
    assert_eq!(app.post_github(&delivery).await.status, 202);
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app(example_config()).await;
    assert_eq!(app.get("/healthz").await.0, 200);
    assert_eq!(app.get("/readyz").await.0, 200);
    app.post_github(&Delivery::fixture("push", "push_branch_commits.json"))
        .await;
    let mut unsigned = Delivery::fixture("push", "push_branch_commits.json");
    unsigned.signature = None;
    app.post_github(&unsigned).await;
    let (status, text) = app.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains(r#"gitdispatch_deliveries_total{source="github",outcome="queued"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"gitdispatch_deliveries_total{source="github",outcome="refused_401"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"gitdispatch_executions_planned_total{pipeline="deploy"} 3"#),
        "{text}"
    );
    app.shutdown.cancel();
}
