//! CodeCommit deliveries through a real socket: SNS notifications verified against a
//! certificate fetched over https from a local endpoint with its own CA, EventBridge API
//! destinations by key; every CodeCommit event shape planned; a push's commits read
//! from a CodeCommit API served by wiremock, and run one by one by the real binary.

use crate::common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::codecommit::{FakeRepository, serve, settings, sha};
use common::daemon::Daemon;
use common::sns::{Sns, post_sns};
use common::{TestApp, config_from, fixture, spawn_app};
use gitdispatch::event::CommitSha;
use gitdispatch::execution::{ExecutionRequest, Expansion};
use gitdispatch::job::{Job, JobKind};
use gitdispatch::source::codecommit::history::CodeCommitHistory;
use gitdispatch::source::{CommitHistory, HistoryError, WalkEnd};
use serde_json::{Value, json};

const API_KEY: &str = "eventbridge-connection-key-0001";
const NEXT_KEY: &str = "eventbridge-connection-key-0002";

/// A deploy pipeline with one CodeCommit project, and routes for every kind of event.
fn config_text(codecommit: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:8080"

{codecommit}

[queue]
type = "embedded"
path = "var/gitdispatch.db"

[executor]
type = "local"
log_dir = "var/log"
path = "var/executions.db"

[[pipelines]]
name = "deploy"
command = ["sh", "deploy/local/deploy.sh"]
concurrency = "serial"

[[pipelines.projects]]
name = "demo"
repository = "us-east-1/demo"
default_branch = "main"
skip_flag = "skip_demo"

[[routes]]
name = "every-commit"
pipeline = "deploy"
sources = ["codecommit"]
repository = "us-east-1/*"
events = ["push"]
branches = ["**"]
environment = "ci"
commits = "each"

[[routes]]
name = "branch-previews"
pipeline = "deploy"
sources = ["codecommit"]
repository = "us-east-1/demo"
events = ["push"]
branches = ["feature/**"]
environment = "branch-{{branch}}"
commits = "head"
teardown_on_delete = true

[[routes]]
name = "release"
pipeline = "deploy"
sources = ["codecommit"]
repository = "us-east-1/demo"
events = ["push"]
tags = ["v*"]
environment = "production"
commits = "head"

[[routes]]
name = "preview"
pipeline = "deploy"
sources = ["codecommit"]
repository = "us-east-1/demo"
events = ["pull_request"]
branches = ["main"]
environment = "pr-{{number}}"
"#
    )
}

fn keys_section() -> String {
    format!("[codecommit]\napi_keys = [\"{API_KEY}\", \"{NEXT_KEY}\"]\n")
}

async fn post_with_key(app: &TestApp, key: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut request = app
        .client
        .post(format!("{}/webhooks/codecommit", app.address))
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn starts(jobs: &[Job]) -> Vec<ExecutionRequest> {
    jobs.iter()
        .filter_map(|job| match &job.kind {
            JobKind::Start { request } => Some(request.clone()),
            _ => None,
        })
        .collect()
}

fn expansions(jobs: &[Job]) -> Vec<Expansion> {
    jobs.iter()
        .filter_map(|job| match &job.kind {
            JobKind::Expand { expansion } => Some(expansion.clone()),
            _ => None,
        })
        .collect()
}

fn input(request: &ExecutionRequest) -> Value {
    serde_json::from_str(request.input.as_str()).unwrap()
}

fn codecommit_url(app: &TestApp) -> String {
    format!("{}/webhooks/codecommit", app.address)
}

#[tokio::test]
async fn notifications_signed_by_sns_are_taken_in_both_signature_versions() {
    let sns = Sns::start().await;
    let app = spawn_app(config_from(&config_text(&sns.config_section("")))).await;
    let event = String::from_utf8(fixture("codecommit/reference_created.json")).unwrap();
    for version in ["1", "2"] {
        let message = sns.notification(&event, version);
        let (status, body) = post_sns(&app.client, &codecommit_url(&app), &message).await;
        assert_eq!(status, 202, "version {version}: {body}");
        assert_eq!(body["delivery"], message["MessageId"]);
        assert_eq!(body["executions"].as_array().unwrap().len(), 1, "{body}");
    }
    // The same push twice: one execution, by name.
    let queued = starts(&app.queued_jobs());
    assert_eq!(queued.len(), 1);
    let request = &queued[0];
    assert_eq!(request.origin.repository, "us-east-1/demo");
    assert_eq!(
        request.origin.git_ref.as_str(),
        "refs/heads/hotfix/important_patch"
    );
    assert_eq!(request.origin.commit.as_str(), sha_of('3'));
    let value = input(request);
    assert_eq!(value["environment"], "ci");
    assert_eq!(
        value["override_branches"],
        json!([{"project": "demo", "branch": "hotfix/important_patch"}])
    );
    assert_eq!(value["git"]["provider"], "codecommit");
    assert_eq!(
        sns.certificate_fetches.load(Ordering::SeqCst),
        1,
        "the signing certificate is fetched once"
    );
}

fn sha_of(digit: char) -> String {
    std::iter::repeat_n(digit, 40).collect()
}

#[tokio::test]
async fn what_sns_did_not_sign_is_refused_and_nothing_is_queued() {
    let sns = Sns::start().await;
    let app = spawn_app(config_from(&config_text(
        &sns.config_section(&format!("api_keys = [\"{API_KEY}\"]")),
    )))
    .await;
    let event = String::from_utf8(fixture("codecommit/reference_created.json")).unwrap();
    let url = codecommit_url(&app);
    let fresh = || sns.notification(&event, "2");
    let an_hour_ago =
        humantime::format_rfc3339_millis(std::time::SystemTime::now() - Duration::from_secs(3700))
            .to_string();
    let in_an_hour =
        humantime::format_rfc3339_millis(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string();
    // (what, the message, whether to sign it again after the change, status, reason)
    type Change<'a> = Box<dyn Fn(&mut Value) + 'a>;
    let cases: Vec<(&str, Change, bool, u16, &str)> = vec![
        (
            "a changed message",
            Box::new(|m| m["Message"] = json!(event.replace("hotfix", "feature"))),
            false,
            401,
            "does not match",
        ),
        (
            "a changed timestamp",
            Box::new(|m| m["Timestamp"] = json!("2026-11-23T12:00:00.001Z")),
            false,
            401,
            "",
        ),
        (
            "another topic",
            Box::new(|m| m["TopicArn"] = json!("arn:aws:sns:us-east-1:999999999999:other")),
            true,
            403,
            "not in codecommit.topic_arns",
        ),
        (
            "a stale message",
            Box::new(move |m| m["Timestamp"] = json!(an_hour_ago.clone())),
            true,
            401,
            "max_message_age_secs",
        ),
        (
            "a message from the future",
            Box::new(move |m| m["Timestamp"] = json!(in_an_hour.clone())),
            true,
            401,
            "max_message_age_secs",
        ),
        (
            "a certificate on another host",
            Box::new(|m| {
                m["SigningCertURL"] =
                    json!("https://sns.example.com/SimpleNotificationService-test.pem")
            }),
            true,
            401,
            "certificate_hosts",
        ),
        (
            "a certificate over http",
            Box::new(|m| {
                let url = m["SigningCertURL"]
                    .as_str()
                    .unwrap()
                    .replace("https:", "http:");
                m["SigningCertURL"] = json!(url);
            }),
            true,
            401,
            "not https",
        ),
        (
            "a certificate URL with a query",
            Box::new(|m| {
                let url = format!("{}?v=2", m["SigningCertURL"].as_str().unwrap());
                m["SigningCertURL"] = json!(url);
            }),
            true,
            401,
            "without a query",
        ),
        (
            "an unknown signature version",
            Box::new(|m| m["SignatureVersion"] = json!("3")),
            false,
            401,
            "SignatureVersion",
        ),
        (
            "a signature that is not base64",
            Box::new(|m| m["Signature"] = json!("not base64 at all!")),
            false,
            401,
            "not base64",
        ),
        (
            "an unknown message type",
            Box::new(|m| m["Type"] = json!("Surprise")),
            false,
            400,
            "unknown",
        ),
        (
            "no signature",
            Box::new(|m| {
                m.as_object_mut().unwrap().remove("Signature");
            }),
            false,
            400,
            "not an SNS message",
        ),
    ];
    for (what, change, sign_again, status, reason) in &cases {
        let mut message = fresh();
        change(&mut message);
        if *sign_again {
            sns.sign(&mut message);
        }
        let (answered, body) = post_sns(&app.client, &url, &message).await;
        assert_eq!(answered, *status, "{what}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{what}: {error}");
        assert!(!error.contains('\n'), "{what}: one line");
    }
    // Without the SNS header, the body is not taken for an SNS message.
    let message = fresh();
    let response = app
        .client
        .post(&url)
        .body(serde_json::to_vec(&message).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // An API destination's key in the wrong header value.
    let (status, body) =
        post_with_key(&app, Some("not-the-key-at-all"), event.clone().into_bytes()).await;
    assert_eq!(status, 401, "{body}");

    // Certificates on hosts that only look like SNS's (an S3 bucket named `sns`, a
    // domain that ends in another, credentials, a port, an address, even the stand-in's
    // own address, which serves a valid certificate): refused with 401, never fetched
    // (a fetch that failed would be a 503).
    let fetched = sns.certificate_fetches.load(Ordering::SeqCst);
    let port = sns.authority.rsplit_once(':').unwrap().1.to_string();
    for look_alike in [
        "https://sns.s3.amazonaws.com/SimpleNotificationService-test.pem".to_string(),
        "https://sns.evil.s3.us-east-1.amazonaws.com/SimpleNotificationService-test.pem".into(),
        "https://sns.us-east-1.amazonaws.com.example.org/SimpleNotificationService-test.pem".into(),
        "https://sns.us-east-1.amazonaws.com./SimpleNotificationService-test.pem".into(),
        "https://attacker@sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem".into(),
        "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-test.pem".into(),
        "https://s3.amazonaws.com/sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem"
            .into(),
        format!("https://127.0.0.1:{port}/SimpleNotificationService-test.pem"),
        "https://[::1]/SimpleNotificationService-test.pem".into(),
        format!(
            "https://localhost:{}/SimpleNotificationService-test.pem",
            port.parse::<u16>().unwrap() ^ 1
        ),
        format!("https://user@localhost:{port}/SimpleNotificationService-test.pem"),
    ] {
        let mut message = fresh();
        message["SigningCertURL"] = json!(look_alike);
        sns.sign(&mut message);
        let (answered, body) = post_sns(&app.client, &url, &message).await;
        assert_eq!(answered, 401, "{look_alike}: {body}");
    }
    assert_eq!(
        sns.certificate_fetches.load(Ordering::SeqCst),
        fetched,
        "no look-alike host was fetched from"
    );

    assert!(app.queued_jobs().is_empty(), "nothing refused was queued");
    // And the untouched message still goes through.
    let (status, body) = post_sns(&app.client, &url, &fresh()).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn a_certificate_that_cannot_be_fetched_is_a_503_so_sns_retries() {
    let sns = Sns::start().await;
    // A port nothing listens on, on an allowed host.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let app = spawn_app(config_from(&config_text(
        &sns.config_section_allowing(&format!("localhost:{port}"), ""),
    )))
    .await;
    let event = String::from_utf8(fixture("codecommit/reference_created.json")).unwrap();
    let mut message = sns.notification(&event, "2");
    message["SigningCertURL"] = json!(format!(
        "https://localhost:{port}/SimpleNotificationService-test.pem"
    ));
    let (status, body) = post_sns(&app.client, &codecommit_url(&app), &message).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot fetch the SNS signing certificate")
    );
    // A certificate that is not there: also not the message's fault.
    let mut message = sns.notification(&event, "2");
    message["SigningCertURL"] = json!(format!("{}/SimpleNotificationService-gone.pem", sns.base));
    let (status, body) = post_sns(&app.client, &codecommit_url(&app), &message).await;
    assert_eq!(status, 503, "{body}");
    assert!(app.queued_jobs().is_empty());
    // SNS's retry, once the certificate can be had, is taken.
    let (status, body) = post_sns(
        &app.client,
        &codecommit_url(&app),
        &sns.notification(&event, "2"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test]
async fn subscriptions_to_our_topics_are_confirmed_and_no_others() {
    let sns = Sns::start().await;
    let app = spawn_app(config_from(&config_text(&sns.config_section("")))).await;
    let url = codecommit_url(&app);
    let (status, body) = post_sns(&app.client, &url, &sns.subscription_confirmation()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "subscription_confirmed");
    assert_eq!(sns.confirmations.load(Ordering::SeqCst), 1);

    let mut other = sns.subscription_confirmation();
    other["TopicArn"] = json!("arn:aws:sns:us-east-1:999999999999:other");
    sns.sign(&mut other);
    let (status, _) = post_sns(&app.client, &url, &other).await;
    assert_eq!(status, 403);
    // A SubscribeURL elsewhere is never visited, even signed.
    let mut elsewhere = sns.subscription_confirmation();
    elsewhere["SubscribeURL"] = json!("https://sns.example.com/?Action=ConfirmSubscription");
    sns.sign(&mut elsewhere);
    let (status, body) = post_sns(&app.client, &url, &elsewhere).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(sns.confirmations.load(Ordering::SeqCst), 1);

    // Told not to confirm, it does not.
    let app = spawn_app(config_from(&config_text(
        &sns.config_section("confirm_subscriptions = false"),
    )))
    .await;
    let (status, body) = post_sns(
        &app.client,
        &codecommit_url(&app),
        &sns.subscription_confirmation(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "subscription_not_confirmed");
    assert_eq!(sns.confirmations.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn api_destination_deliveries_need_exactly_one_configured_key() {
    let app = spawn_app(config_from(&config_text(&keys_section()))).await;
    let body = fixture("codecommit/reference_created.json");
    let (status, answer) = post_with_key(&app, None, body.clone()).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("x-api-key"));
    let (status, _) =
        post_with_key(&app, Some("eventbridge-connection-key-0003"), body.clone()).await;
    assert_eq!(status, 401);
    let (status, _) = post_with_key(&app, Some(&API_KEY[..API_KEY.len() - 1]), body.clone()).await;
    assert_eq!(status, 401, "a prefix of the key is not the key");
    let response = app
        .client
        .post(codecommit_url(&app))
        .header("x-api-key", API_KEY)
        .header("x-api-key", "other")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401, "the header twice");
    assert!(app.queued_jobs().is_empty());
    // Either key, while one is rotated.
    for key in [API_KEY, NEXT_KEY] {
        let (status, answer) = post_with_key(&app, Some(key), body.clone()).await;
        assert_eq!(status, 202, "{answer}");
    }
    assert_eq!(
        starts(&app.queued_jobs()).len(),
        1,
        "the same event twice runs once"
    );

    // A daemon without [codecommit] says so.
    let without = spawn_app(common::example_config()).await;
    let (status, answer) = post_with_key(&without, Some(API_KEY), body).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("[codecommit]"));
}

#[tokio::test]
async fn every_codecommit_event_is_planned_like_its_github_counterpart() {
    let app = spawn_app(config_from(&config_text(&keys_section()))).await;
    let (one, three) = (sha_of('1'), sha_of('3'));
    let mut seen = 0;
    let mut post = async |name: &str| -> (u16, Value, Vec<Job>) {
        let (status, body) =
            post_with_key(&app, Some(API_KEY), fixture(&format!("codecommit/{name}"))).await;
        let jobs = app.queued_jobs();
        let new = jobs[seen..].to_vec();
        seen = jobs.len();
        (status, body, new)
    };

    // An updated branch: its commits are fetched first, by an expand job.
    let (status, body, jobs) = post("reference_updated.json").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["expansions"], 1);
    assert_eq!(body["executions"], json!([]));
    let expansion = &expansions(&jobs)[0];
    assert_eq!(jobs.len(), 1);
    assert_eq!(expansion.repository, "us-east-1/demo");
    assert_eq!(expansion.git_ref.as_str(), "refs/heads/main");
    assert_eq!(
        (expansion.before.as_str(), expansion.after.as_str()),
        (one.as_str(), three.as_str())
    );
    assert_eq!(
        jobs[0].group().as_deref(),
        Some("expand/us-east-1/demo/refs/heads/main")
    );

    // A new branch runs its head.
    let (status, body, jobs) = post("reference_created.json").await;
    assert_eq!(status, 202, "{body}");
    let queued = starts(&jobs);
    assert_eq!(queued.len(), 1);
    assert_eq!(input(&queued[0])["git"]["action"], "deploy");

    // A deleted branch tears its environment down, at the commit it pointed to.
    let (status, body, jobs) = post("reference_deleted.json").await;
    assert_eq!(status, 202, "{body}");
    let queued = starts(&jobs);
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].environment, "branch-feature-old");
    assert_eq!(input(&queued[0])["git"]["action"], "teardown");
    assert_eq!(queued[0].origin.commit.as_str(), one);
    assert_eq!(queued[0].origin.git_ref.as_str(), "refs/heads/feature/old");

    // A tag goes to its release route.
    let (status, body, jobs) = post("tag_created.json").await;
    assert_eq!(status, 202, "{body}");
    let queued = starts(&jobs);
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].environment, "production");
    assert_eq!(queued[0].origin.git_ref.as_str(), "refs/tags/v1.2.0");

    // Pull requests: up on open and on a push to the source branch, down on close and
    // on merge, in one lane.
    for (name, action) in [
        ("pull_request_created.json", "deploy"),
        ("pull_request_source_updated.json", "deploy"),
        ("pull_request_closed.json", "teardown"),
        ("pull_request_merged.json", "teardown"),
    ] {
        let (status, body, jobs) = post(name).await;
        assert_eq!(status, 202, "{name}: {body}");
        let queued = starts(&jobs);
        assert_eq!(queued.len(), 1, "{name}");
        assert_eq!(queued[0].environment, "pr-7", "{name}");
        assert_eq!(queued[0].group.as_deref(), Some("deploy/pr-7"), "{name}");
        let value = input(&queued[0]);
        assert_eq!(value["git"]["action"], action, "{name}");
        assert_eq!(value["git"]["pull_request"]["number"], 7, "{name}");
        assert_eq!(queued[0].origin.commit.as_str(), three, "{name}");
        assert_eq!(
            value["git"]["pull_request"]["merged"],
            name == "pull_request_merged.json",
            "{name}"
        );
    }
    // The same state change delivered again (SNS and EventBridge deliver at least
    // once) is the same occurrence: nothing new.
    let (status, body, jobs) = post("pull_request_closed.json").await;
    assert_eq!(status, 202, "{body}");
    assert!(jobs.is_empty(), "{jobs:?}");

    // An approval is not acted on.
    let (status, body, jobs) = post("pull_request_approved.json").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "ignored");
    assert!(jobs.is_empty());

    // A repository trigger names each ref's new commit only: each runs its head.
    let (status, body, jobs) = post("triggers.json").await;
    assert_eq!(status, 202, "{body}");
    let queued = starts(&jobs);
    let refs: Vec<(&str, &str)> = queued
        .iter()
        .map(|r| (r.origin.git_ref.as_str(), r.origin.commit.as_str()))
        .collect();
    assert_eq!(
        refs,
        [
            ("refs/heads/main", three.as_str()),
            ("refs/heads/release/1.0", one.as_str())
        ]
    );

    // Not a CodeCommit event: refused or ignored, with why.
    for (body, status) in [
        (br#"{"detail-type": "x"}"#.to_vec(), 422),
        (br#"{"id": "1", "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2", "region": "us-east-1", "detail": {}}"#.to_vec(), 202),
        (b"[1, 2".to_vec(), 400),
    ] {
        let (answered, answer) = post_with_key(&app, Some(API_KEY), body).await;
        assert_eq!(answered, status, "{answer}");
        assert!(answer.get("error").is_some() || answer["status"] == "ignored", "{answer}");
    }
    let before = app.queued_jobs().len();
    let broken = String::from_utf8(fixture("codecommit/reference_updated.json"))
        .unwrap()
        .replace(&three, "not-a-commit");
    let (status, answer) = post_with_key(&app, Some(API_KEY), broken.into_bytes()).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(app.queued_jobs().len(), before, "nothing half-queued");
}

fn commit(n: u32) -> CommitSha {
    CommitSha::parse(&sha(n)).unwrap()
}

#[tokio::test]
async fn a_walk_follows_first_parents_from_the_new_head_back_to_the_old() {
    let repository = Arc::new(Mutex::new(FakeRepository::default()));
    {
        let mut fake = repository.lock().unwrap();
        fake.chain(1, 6);
        // 7 merges a side branch (20, 21, off 3) into 6; 8 follows.
        fake.add(20, vec![sha(3)]);
        fake.add(21, vec![sha(20)]);
        fake.add(7, vec![sha(6), sha(21)]);
        fake.add(8, vec![sha(7)]);
        // A commit changing several paths (its differences come in pages).
        fake.commits.get_mut(&sha(5)).unwrap().paths =
            vec!["a.txt".into(), "b/c.txt".into(), "d.txt".into()];
    }
    let server = serve("demo", repository.clone()).await;
    let history = CodeCommitHistory::new(settings(&server).await);

    let walk = history
        .walk("us-east-1/demo", &commit(4), &commit(8), 100, true)
        .await
        .unwrap();
    assert_eq!(walk.end, WalkEnd::Reached);
    let ids: Vec<String> = walk.commits.iter().map(|c| c.id.to_string()).collect();
    assert_eq!(
        ids,
        [sha(5), sha(6), sha(7), sha(8)],
        "first parents, oldest first"
    );
    assert_eq!(
        walk.commits[0].changed_paths.as_deref().unwrap(),
        ["a.txt", "b/c.txt", "d.txt"]
    );
    assert_eq!(walk.commits[0].message, "commit 5");
    assert_eq!(walk.commits[0].author, "Mary");

    // At most `max`: the newest.
    let walk = history
        .walk("us-east-1/demo", &commit(1), &commit(8), 2, true)
        .await
        .unwrap();
    assert_eq!(walk.end, WalkEnd::Bound);
    let ids: Vec<String> = walk.commits.iter().map(|c| c.id.to_string()).collect();
    assert_eq!(ids, [sha(7), sha(8)]);

    // A force-push: the old head is not on the chain. Only the new head is known new.
    let walk = history
        .walk("us-east-1/demo", &commit(21), &commit(8), 100, true)
        .await
        .unwrap();
    assert_eq!(walk.end, WalkEnd::Unreachable);
    let ids: Vec<String> = walk.commits.iter().map(|c| c.id.to_string()).collect();
    assert_eq!(ids, [sha(8)]);
    let calls = repository.lock().unwrap().calls.len();
    assert!(calls > 0);
}

#[tokio::test]
async fn history_errors_say_whether_a_retry_can_help() {
    let repository = Arc::new(Mutex::new(FakeRepository::default()));
    repository.lock().unwrap().chain(1, 3);
    let server = serve("demo", repository.clone()).await;
    let history = CodeCommitHistory::new(settings(&server).await);

    repository.lock().unwrap().failures = 1;
    let error = history
        .walk("us-east-1/demo", &commit(1), &commit(3), 10, true)
        .await
        .unwrap_err();
    assert!(matches!(error, HistoryError::Retryable { .. }), "{error:?}");
    // Once the service answers again, the same walk succeeds.
    let walk = history
        .walk("us-east-1/demo", &commit(1), &commit(3), 10, true)
        .await
        .unwrap();
    assert_eq!(walk.commits.len(), 2);

    let error = history
        .walk("us-east-1/elsewhere", &commit(1), &commit(3), 10, true)
        .await
        .unwrap_err();
    assert!(matches!(error, HistoryError::Permanent { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("RepositoryDoesNotExistException"),
        "{error}"
    );
    let error = history
        .walk("us-east-1/demo", &commit(1), &commit(99), 10, true)
        .await
        .unwrap_err();
    assert!(matches!(error, HistoryError::Permanent { .. }), "{error:?}");
    let error = history
        .walk("demo", &commit(1), &commit(3), 10, true)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("<region>/<name>"), "{error}");
}

/// The real binary, on the embedded queue and the local executor, with CodeCommit's
/// API on wiremock: an updated branch runs each of its commits, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commit_of_an_updated_branch_runs_once_in_order() {
    let repository = Arc::new(Mutex::new(FakeRepository::default()));
    repository.lock().unwrap().chain(1, 6);
    let server = serve("demo", repository.clone()).await;
    let text = config_text(&keys_section()).replace(
        "[executor]",
        "[worker]\npoll_interval_secs = 2\nretry_initial_ms = 100\n\n[executor]",
    );
    let daemon = Daemon::start(
        &text,
        &[
            ("AWS_ENDPOINT_URL", &server.uri()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("RECORD_SLEEP", "0.2"),
        ],
    );
    let client = reqwest::Client::new();
    let url = format!("http://{}/webhooks/codecommit", daemon.address);
    let event = String::from_utf8(fixture("codecommit/reference_updated.json")).unwrap();
    let push = |before: u32, after: u32, id: &str| {
        event
            .replace(&sha_of('1'), &sha(before))
            .replace(&sha_of('3'), &sha(after))
            .replace("6f1d1a4e-0c5e-4a8e-9d1b-0a0000000001", id)
    };
    // Two pushes to main, the second delivered twice.
    for (before, after, id) in [
        (1, 4, "6f1d1a4e-0c5e-4a8e-9d1b-0a0000000101"),
        (4, 6, "6f1d1a4e-0c5e-4a8e-9d1b-0a0000000102"),
        (4, 6, "6f1d1a4e-0c5e-4a8e-9d1b-0a0000000102"),
    ] {
        let response = client
            .post(&url)
            .header("x-api-key", API_KEY)
            .body(push(before, after, id))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["expansions"], 1, "{body}");
    }
    daemon.wait_for(
        "five executions to end",
        Duration::from_secs(90),
        |daemon| daemon.completed().len() >= 5,
    );
    // A little longer: nothing more runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = daemon.runs();
    assert_eq!(runs.len(), 5, "{runs:?}\n{}", daemon.log());
    let mut lane: Vec<_> = runs.values().collect();
    lane.sort_by_key(|run| run.first_ns);
    let mut commits = Vec::new();
    for run in &lane {
        assert_eq!(run.starts, 1, "{} ran once", run.name);
        let recorded: Value = serde_json::from_str(
            &std::fs::read_to_string(daemon.records().join(format!("{}.input", run.planned)))
                .unwrap(),
        )
        .unwrap();
        commits.push(recorded["git"]["commit"].as_str().unwrap().to_string());
    }
    assert_eq!(
        commits,
        [sha(2), sha(3), sha(4), sha(5), sha(6)],
        "in commit order"
    );
    let overlapping = common::daemon::overlaps(&lane);
    assert!(overlapping.is_empty(), "{overlapping:?}");
    let metrics = reqwest::get(format!("http://{}/metrics", daemon.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gitdispatch_expansions_total{end=\"reached\"} 2"),
        "{metrics}"
    );
}

/// Through the binary: SNS messages whose certificate is on a look-alike host are
/// refused with 401 and nothing is fetched from it; the same message with SNS's (here,
/// the stand-in's configured) host is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_fetches_sns_certificates_only_from_sns_hosts() {
    let sns = Sns::start().await;
    let daemon = Daemon::start(&config_text(&sns.config_section("")), &[]);
    let url = format!("http://{}/webhooks/codecommit", daemon.address);
    let client = reqwest::Client::new();
    let event = String::from_utf8(fixture("codecommit/reference_created.json")).unwrap();
    let port = sns.authority.rsplit_once(':').unwrap().1.to_string();
    for look_alike in [
        "https://sns.s3.amazonaws.com/SimpleNotificationService-test.pem".to_string(),
        "https://sns.evil.s3.us-east-1.amazonaws.com/SimpleNotificationService-test.pem".into(),
        "https://sns.us-east-1.amazonaws.com.example.org/SimpleNotificationService-test.pem".into(),
        format!("https://127.0.0.1:{port}/SimpleNotificationService-test.pem"),
    ] {
        let mut message = sns.notification(&event, "2");
        message["SigningCertURL"] = json!(look_alike);
        sns.sign(&mut message);
        let (status, body) = post_sns(&client, &url, &message).await;
        assert_eq!(status, 401, "{look_alike}: {body}");
    }
    assert_eq!(sns.certificate_fetches.load(Ordering::SeqCst), 0);
    let (status, body) = post_sns(&client, &url, &sns.notification(&event, "2")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(sns.certificate_fetches.load(Ordering::SeqCst), 1);
}
