//! Reporting back to GitHub, against a stand-in for its API (wiremock, with the answer
//! shapes GitHub documents): commit statuses through an execution's life on the
//! embedded queue with the local executor, the final state of skipped commits, a pull
//! request's preview deployment from open to close, GitHub failing and rate-limiting
//! without any execution lost or held back, and authentication as a GitHub App.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::daemon::Daemon;
use common::github::{self, Failure, FakeGithub};
use common::{Delivery, executions, fixture};
use serde_json::Value;

const COMMITS: [&str; 3] = [
    "a1b1c1d1e1f1a1b1c1d1e1f1a1b1c1d1e1f1a1b1",
    "a2b2c2d2e2f2a2b2c2d2e2f2a2b2c2d2e2f2a2b2",
    "a3b3c3d3e3f3a3b3c3d3e3f3a3b3c3d3e3f3a3b3",
];

/// A daemon on the embedded default reporting to `server` with a token: `build`
/// records its runs, `broken` fails, `docs` runs only for changes under `src/` and
/// reports the commits it skips.
fn config(server: &wiremock::MockServer, extra_routes: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:8080"

[github]
webhook_secrets = ["${{GITHUB_WEBHOOK_SECRET}}"]
{github}

[queue]
type = "embedded"
path = "var/gitdispatch.db"

[worker]
poll_interval_secs = 1
retry_initial_ms = 100
retry_max_secs = 1

[executor]
type = "local"
log_dir = "var/log"
path = "var/executions.db"
details_url = "https://ci.example.com/runs/"

[[pipelines]]
name = "build"
command = ["sh", "deploy/local/deploy.sh"]

[[pipelines]]
name = "broken"
command = ["sh", "-c", "exit 3"]

[[pipelines]]
name = "docs"
command = ["sh", "deploy/local/deploy.sh"]

[[routes]]
pipeline = "build"
events = ["push"]
environment = "ci"

{extra_routes}
"#,
        github = github::token_section(server),
    )
}

fn states(github: &Arc<Mutex<FakeGithub>>, sha: &str, context: &str) -> Vec<String> {
    github
        .lock()
        .unwrap()
        .states(sha, context)
        .into_iter()
        .map(|(state, description)| format!("{state} {}", description.split(" (").next().unwrap()))
        .collect()
}

fn all_final(github: &Arc<Mutex<FakeGithub>>, contexts: &[(&str, &str)]) -> bool {
    contexts.iter().all(|(sha, context)| {
        states(github, sha, context)
            .last()
            .is_some_and(|last| !last.starts_with("pending"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_commit_shows_queued_started_then_its_outcome_and_skipped_commits_a_final_state() {
    let github = Arc::new(Mutex::new(FakeGithub::default()));
    let server = github::serve(github.clone()).await;
    let routes = r#"
[[routes]]
pipeline = "broken"
events = ["push"]
environment = "ci"

[[routes]]
pipeline = "docs"
events = ["push"]
environment = "docs"
paths = ["src/**"]
report_skipped = true
"#;
    let daemon = Daemon::start(&config(&server, routes), &[("RECORD_SLEEP", "0.3")]);
    let answer = Delivery::fixture("push", "push_branch_commits.json")
        .post(&reqwest::Client::new(), &daemon.url())
        .await
        .unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    // Three builds, three broken runs, two docs runs (the second commit changes
    // nothing under src/).
    assert_eq!(executions(&answer).len(), 8);
    let mut contexts = Vec::new();
    for sha in COMMITS {
        contexts.push((sha, "gitdispatch/build/ci"));
        contexts.push((sha, "gitdispatch/broken/ci"));
        contexts.push((sha, "gitdispatch/docs/docs"));
    }
    daemon.wait_for(
        "every context to show a final state",
        Duration::from_secs(90),
        |_| all_final(&github, &contexts),
    );
    for sha in COMMITS {
        assert_eq!(
            states(&github, sha, "gitdispatch/build/ci"),
            ["pending Queued", "pending Started", "success Succeeded"],
            "{sha}"
        );
        assert_eq!(
            states(&github, sha, "gitdispatch/broken/ci"),
            ["pending Queued", "pending Started", "failure Failed"],
            "{sha}"
        );
    }
    assert_eq!(
        states(&github, COMMITS[1], "gitdispatch/docs/docs"),
        ["success Skipped: paths"],
        "a skipped commit gets a final state, never a pending one"
    );
    assert_eq!(
        states(&github, COMMITS[2], "gitdispatch/docs/docs"),
        ["pending Queued", "pending Started", "success Succeeded"]
    );
    // Each status names its execution and links to it once it started.
    let fake = github.lock().unwrap();
    for status in &fake.statuses[COMMITS[0]] {
        let description = status["description"].as_str().unwrap();
        if description.starts_with("Started") || description.starts_with("Succeeded") {
            let url = status["target_url"].as_str().unwrap();
            assert!(url.starts_with("https://ci.example.com/runs/"), "{url}");
        }
        assert!(description.len() <= 140);
        assert!(
            description.ends_with(')') || description.starts_with("Skipped"),
            "{description}"
        );
    }
    // Authenticated with the token, on every call.
    assert!(fake.calls.iter().all(|call| {
        call.authorization.as_deref() == Some("Bearer ghp_test_token_for_reports")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_preview_is_deployed_on_open_and_push_and_made_inactive_on_close() {
    let github = Arc::new(Mutex::new(FakeGithub::default()));
    let server = github::serve(github.clone()).await;
    let routes = r#"
[[pipelines]]
name = "preview"
command = ["sh", "deploy/local/deploy.sh"]
concurrency = "serial"

[[routes]]
pipeline = "preview"
events = ["pull_request"]
environment = "pr-{number}"
environment_url = "https://pr-{number}.preview.example.com"
"#;
    let text = config(&server, routes).replace(
        "[[routes]]\npipeline = \"build\"\nevents = [\"push\"]\nenvironment = \"ci\"\n",
        "",
    );
    let daemon = Daemon::start(&text, &[("RECORD_SLEEP", "0.2")]);
    let client = reqwest::Client::new();
    let opened = String::from_utf8(fixture("github/pull_request_opened.json")).unwrap();
    let first_sha = serde_json::from_str::<Value>(&opened).unwrap()["pull_request"]["head"]["sha"]
        .as_str()
        .unwrap()
        .to_string();
    let second_sha = "f0e1d2c3b4a5f0e1d2c3b4a5f0e1d2c3b4a5f0e1".to_string();
    let synchronize = String::from_utf8(fixture("github/pull_request_synchronize.json"))
        .unwrap()
        .replace(&first_sha, &second_sha)
        .replace("2026-11-20T15:10:00Z", "2026-11-20T15:20:00Z");
    let closed = String::from_utf8(fixture("github/pull_request_closed_merged.json"))
        .unwrap()
        .replace(&first_sha, &second_sha)
        .replace("2026-11-20T15:10:00Z", "2026-11-20T15:30:00Z");

    let deployment_states = |sha: &str| -> Vec<String> {
        let fake = github.lock().unwrap();
        let Some(deployment) = fake.deployments.iter().find(|d| d["sha"] == sha) else {
            return Vec::new();
        };
        let id = deployment["id"].as_u64().unwrap();
        let mut states: Vec<String> = fake
            .deployment_statuses
            .get(&id)
            .into_iter()
            .flatten()
            .map(|status| status["state"].as_str().unwrap().to_string())
            .collect();
        states.reverse();
        states
    };
    for (body, sha) in [(&opened, &first_sha), (&synchronize, &second_sha)] {
        let answer = Delivery::new("pull_request", body.clone().into_bytes())
            .post(&client, &daemon.url())
            .await
            .unwrap();
        assert_eq!(answer.status, 202, "{}", answer.body);
        daemon.wait_for(
            "the preview's deployment to succeed",
            Duration::from_secs(60),
            |_| deployment_states(sha).last().map(String::as_str) == Some("success"),
        );
        assert_eq!(deployment_states(sha), ["in_progress", "success"]);
        assert_eq!(
            states(&github, sha, "gitdispatch/preview/pr-42"),
            ["pending Queued", "pending Started", "success Succeeded"]
        );
    }
    {
        let fake = github.lock().unwrap();
        assert_eq!(fake.deployments.len(), 2, "one deployment per deployed sha");
        for deployment in &fake.deployments {
            assert_eq!(deployment["environment"], "pr-42");
            assert_eq!(deployment["auto_merge"], false);
            assert_eq!(deployment["required_contexts"], Value::Array(vec![]));
            assert_eq!(deployment["transient_environment"], true);
            let id = deployment["id"].as_u64().unwrap();
            let success = &fake.deployment_statuses[&id][0];
            assert_eq!(
                success["environment_url"],
                "https://pr-42.preview.example.com"
            );
            assert!(
                success["log_url"]
                    .as_str()
                    .unwrap()
                    .starts_with("https://ci.example.com/runs/preview-pr-42-")
            );
        }
    }

    let answer = Delivery::new("pull_request", closed.into_bytes())
        .post(&client, &daemon.url())
        .await
        .unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    daemon.wait_for(
        "every deployment of the preview to be inactive",
        Duration::from_secs(60),
        |_| {
            [&first_sha, &second_sha]
                .iter()
                .all(|sha| deployment_states(sha).last().map(String::as_str) == Some("inactive"))
        },
    );
    // The teardown ran, and it changed no commit's status: the head keeps the state of
    // what was deployed from it.
    let runs = daemon.runs();
    assert!(
        runs.keys().any(|name| name.contains("-teardown-")),
        "{runs:?}"
    );
    assert_eq!(
        states(&github, &second_sha, "gitdispatch/preview/pr-42"),
        ["pending Queued", "pending Started", "success Succeeded"]
    );
}

/// A commit superseded in a serial lane shows pending until the execution that carries
/// it ends, then that execution's outcome, naming it: a failed deploy of the branch's
/// newest commit shows as failed on the commits it carried, never as a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_commit_shows_the_outcome_of_the_execution_that_carried_it() {
    let github = Arc::new(Mutex::new(FakeGithub::default()));
    let server = github::serve(github.clone()).await;
    let routes = r#"
[[pipelines]]
name = "deploy"
command = ["sh", "-c", "sleep 0.3; exit 3"]
concurrency = "serial"
supersede = true

[[routes]]
pipeline = "deploy"
events = ["push"]
environment = "production"
"#;
    let text = config(&server, routes)
        .replace(
            "[[routes]]\npipeline = \"build\"\nevents = [\"push\"]\nenvironment = \"ci\"\n",
            "",
        )
        .replace(
            "[queue]",
            "[api]\ntokens = [\"${GITDISPATCH_API_TOKEN}\"]\n\n[queue]",
        );
    let token = "reporting-operator-token-0001";
    let daemon = Daemon::start(&text, &[("GITDISPATCH_API_TOKEN", token)]);
    let client = reqwest::Client::new();
    let lane = |action: &str| {
        client
            .post(format!(
                "http://{}/v1/lanes/deploy/production/{action}",
                daemon.address
            ))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(r#"{"reason": "let the commits queue"}"#)
            .send()
    };
    assert_eq!(lane("pause").await.unwrap().status().as_u16(), 200);
    let answer = Delivery::fixture("push", "push_branch_commits.json")
        .post(&client, &daemon.url())
        .await
        .unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    let names = executions(&answer);
    assert_eq!(lane("resume").await.unwrap().status().as_u16(), 200);
    let context = "gitdispatch/deploy/production";
    let contexts: Vec<(&str, &str)> = COMMITS.iter().map(|sha| (*sha, context)).collect();
    daemon.wait_for(
        "every commit to show a final state",
        Duration::from_secs(60),
        |_| all_final(&github, &contexts),
    );
    assert_eq!(
        states(&github, COMMITS[2], context),
        ["pending Queued", "pending Started", "failure Failed"]
    );
    let carrier = &names[2];
    for sha in &COMMITS[..2] {
        assert_eq!(
            states(&github, sha, context),
            [
                "pending Queued".to_string(),
                format!("pending Superseded by {carrier}"),
                format!("failure Deployed by {carrier}: Failed"),
            ],
            "{sha}"
        );
    }
    let ran: Vec<String> = daemon.executions().into_keys().collect();
    assert_eq!(ran, std::slice::from_ref(carrier), "only the newest ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_failing_and_rate_limiting_holds_back_no_execution_and_loses_no_report() {
    let github = Arc::new(Mutex::new(FakeGithub {
        failing: Some(Failure::ServerError),
        ..FakeGithub::default()
    }));
    let server = github::serve(github.clone()).await;
    let daemon = Daemon::start(&config(&server, ""), &[("RECORD_SLEEP", "0.2")]);
    let answer = Delivery::fixture("push", "push_branch_commits.json")
        .post(&reqwest::Client::new(), &daemon.url())
        .await
        .unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    let names = executions(&answer);
    // While every call to GitHub fails, every execution still runs to its end.
    daemon.wait_for(
        "the executions to end while GitHub fails",
        Duration::from_secs(60),
        |daemon| {
            let completed = daemon.completed();
            names.iter().all(|name| completed.contains_key(name))
        },
    );
    {
        let fake = github.lock().unwrap();
        assert!(fake.statuses.is_empty());
        assert!(!fake.calls.is_empty(), "reports were tried");
    }
    // Then the secondary rate limit for a while, then GitHub recovers.
    github.lock().unwrap().failing = Some(Failure::SecondaryRateLimit);
    daemon.wait_for(
        "a report to meet the secondary rate limit",
        Duration::from_secs(30),
        |_| {
            let fake = github.lock().unwrap();
            fake.calls.len() > 3 && fake.statuses.is_empty()
        },
    );
    let limited_at = github.lock().unwrap().calls.len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    github.lock().unwrap().failing = None;
    let contexts: Vec<(&str, &str)> = COMMITS
        .iter()
        .map(|sha| (*sha, "gitdispatch/build/ci"))
        .collect();
    daemon.wait_for(
        "every report to land once GitHub answers again",
        Duration::from_secs(90),
        |_| all_final(&github, &contexts),
    );
    for sha in COMMITS {
        let shown = states(&github, sha, "gitdispatch/build/ci");
        // What was retried late never replaced the final state: it is the last.
        assert_eq!(shown.last().unwrap(), "success Succeeded", "{shown:?}");
        let first_final = shown
            .iter()
            .position(|state| !state.starts_with("pending"))
            .unwrap();
        assert_eq!(first_final, shown.len() - 1, "{shown:?}");
    }
    assert!(github.lock().unwrap().calls.len() > limited_at);
    let metrics = reqwest::get(format!("http://{}/metrics", daemon.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gitdispatch_reports_total{outcome=\"retried\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("outcome=\"given_up\""), "{metrics}");
}

/// The reporter as an App: a JWT signed with the App's key (its claims checked here),
/// the installation looked up for the repository, installation tokens exchanged and
/// renewed before they expire, and check runs created and then updated.
#[tokio::test]
async fn as_an_app_it_signs_a_jwt_finds_the_installation_renews_tokens_and_writes_check_runs() {
    use gitdispatch::config::{GithubAuth, GithubConfig};
    use gitdispatch::event::CommitSha;
    use gitdispatch::execution::Action;
    use gitdispatch::execution::name::ExecutionName;
    use gitdispatch::execution::report::{Report, ReportState, ReportTarget, Stage};
    use gitdispatch::github::GithubClient;
    use gitdispatch::report::Reporter;
    use gitdispatch::report::github::GithubReporter;

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let directory = tempfile::tempdir().unwrap();
    let key_path = directory.path().join("app.pem");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    let github = Arc::new(Mutex::new(FakeGithub {
        installation_id: 4242,
        // Shorter than octocrab's 30 s margin: every use renews it.
        token_lifetime_secs: 20,
        ..FakeGithub::default()
    }));
    let server = github::serve(github.clone()).await;
    let config = GithubConfig {
        app_id: Some(31337),
        private_key_path: Some(key_path),
        api_url: server.uri(),
        ..GithubConfig::default()
    };
    let client = GithubClient::from_config(&config, &GithubAuth::from_config(&config))
        .unwrap()
        .unwrap();
    assert!(client.uses_check_runs());
    let reporter = GithubReporter::new(Arc::new(client));

    let sha = CommitSha::parse(COMMITS[0]).unwrap();
    let target = ReportTarget {
        repository: "acme/project-api-v2".into(),
        commit: sha.clone(),
        context: "gitdispatch/deploy/acceptance".into(),
        deployment: None,
    };
    let name = ExecutionName::parse("deploy-acceptance-a1b1c1d-0123456789abcdef0123").unwrap();
    let report = |stage, state, words: &str| {
        Report::new(
            target.clone(),
            Some(name.clone()),
            Action::Deploy,
            stage,
            state,
            words,
        )
    };
    for (stage, state, words) in [
        (Stage::Queued, ReportState::Pending, "Queued"),
        (Stage::Started, ReportState::Pending, "Started"),
        (Stage::Ended, ReportState::Success, "Succeeded"),
        // A retried report of an earlier stage, late: shown state kept.
        (Stage::Started, ReportState::Pending, "Started"),
    ] {
        reporter.report(&report(stage, state, words)).await.unwrap();
    }

    {
        let fake = github.lock().unwrap();
        // One check run, created queued, then updated in place to completed.
        assert_eq!(fake.check_runs.len(), 1);
        let run = &fake.check_runs[0];
        assert_eq!(run["name"], "gitdispatch/deploy/acceptance");
        assert_eq!(run["external_id"], name.as_str());
        assert_eq!(run["head_sha"], sha.as_str());
        assert_eq!(run["status"], "completed");
        assert_eq!(run["conclusion"], "success");
        let writes: Vec<(String, String)> = fake
            .writes()
            .iter()
            .filter(|call| call.path.contains("check-runs"))
            .map(|call| {
                (
                    call.method.clone(),
                    call.body["status"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            writes,
            [
                ("POST".to_string(), "queued".to_string()),
                ("PATCH".to_string(), "in_progress".to_string()),
                ("PATCH".to_string(), "completed".to_string()),
            ],
            "the late report wrote nothing"
        );

        // The installation was looked up once, as the App (a JWT), for the repository.
        let lookups: Vec<_> = fake
            .calls
            .iter()
            .filter(|call| call.path == "/repos/acme/project-api-v2/installation")
            .collect();
        assert_eq!(lookups.len(), 1);
        let jwt = lookups[0]
            .authorization
            .as_deref()
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap();
        check_jwt(jwt, &key, 31337);
        let exchanges: Vec<_> = fake
            .calls
            .iter()
            .filter(|call| call.path == "/app/installations/4242/access_tokens")
            .collect();
        for exchange in &exchanges {
            check_jwt(
                exchange
                    .authorization
                    .as_deref()
                    .unwrap()
                    .strip_prefix("Bearer ")
                    .unwrap(),
                &key,
                31337,
            );
        }
        // Tokens about to expire are renewed: more than one exchange, and every call of
        // the installation used the token most recently handed out before it.
        assert!(exchanges.len() >= 2, "{} exchanges", exchanges.len());
        let mut exchanged = 0;
        for call in &fake.calls {
            if call.path.ends_with("/access_tokens") {
                exchanged += 1;
            } else if call.path.contains("check-runs") {
                assert_eq!(
                    call.authorization,
                    Some(format!("Bearer ghs_installation_4242_{exchanged}"))
                );
            }
        }
    }

    // With tokens that live an hour, one exchange serves many reports.
    let github = Arc::new(Mutex::new(FakeGithub {
        installation_id: 7,
        token_lifetime_secs: 3600,
        ..FakeGithub::default()
    }));
    let server = github::serve(github.clone()).await;
    let reporter = GithubReporter::new(Arc::new({
        let config = GithubConfig {
            api_url: server.uri(),
            installation_id: Some(7),
            ..config.clone()
        };
        GithubClient::from_config(&config, &GithubAuth::from_config(&config))
            .unwrap()
            .unwrap()
    }));
    for stage in [Stage::Queued, Stage::Started] {
        reporter
            .report(&report(stage, ReportState::Pending, "Queued"))
            .await
            .unwrap();
    }
    let fake = github.lock().unwrap();
    let exchanges = fake
        .calls
        .iter()
        .filter(|call| call.path == "/app/installations/7/access_tokens")
        .count();
    assert_eq!(exchanges, 1);
    assert!(
        !fake
            .calls
            .iter()
            .any(|call| call.path.ends_with("/installation")),
        "a configured installation is not looked up"
    );
}

/// Checks a GitHub App JWT: RS256, signed by `key`, issued by the App, issued at most a
/// minute ago (GitHub allows for clock drift) and expiring within ten minutes.
fn check_jwt(jwt: &str, key: &rcgen::KeyPair, app_id: u64) {
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let header: Value = serde_json::from_slice(&engine.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let claims: HashMap<String, Value> =
        serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
    // The App's id, as a number or a string.
    assert_eq!(
        claims["iss"].to_string().trim_matches('"'),
        app_id.to_string()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let iat = claims["iat"].as_i64().unwrap();
    let exp = claims["exp"].as_i64().unwrap();
    assert!(iat <= now && iat >= now - 120, "iat {iat}, now {now}");
    assert!(exp > now && exp <= now + 600, "exp {exp}, now {now}");
    let signature = engine.decode(parts[2]).unwrap();
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        key.public_key_raw(),
    )
    .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
    .expect("the JWT is signed with the App's key");
}

/// On SQS and Step Functions (moto): a parallel pipeline's job is acknowledged once its
/// execution started, and `watch` jobs follow it to its end; the end is reported with a
/// link to the execution in the Step Functions console, and a preview's address is
/// read from the execution's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_step_functions_watches_report_each_end_and_the_preview_address_from_the_output() {
    use common::moto;

    let github = Arc::new(Mutex::new(FakeGithub::default()));
    let server = github::serve(github.clone()).await;
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let machine = |definition: &'static str| {
        let sfn = sfn.clone();
        async move {
            sfn.create_state_machine()
                .name(moto::unique("report"))
                .definition(definition)
                .role_arn("arn:aws:iam::123456789012:role/gitdispatch-test")
                .send()
                .await
                .unwrap()
                .state_machine_arn()
                .to_string()
        }
    };
    let succeeds = machine(
        r#"{"StartAt": "Deploy", "States": {"Deploy": {"Type": "Pass",
            "Result": {"url": "https://pr-42.sfn.example.com"}, "End": true}}}"#,
    )
    .await;
    let fails = machine(
        r#"{"StartAt": "Break", "States": {"Break": {"Type": "Fail",
            "Error": "Broken", "Cause": "on purpose"}}}"#,
    )
    .await;
    let (queue_url, _) = moto::create_queue(&sqs, true, Duration::from_secs(5), 5).await;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:8080"

[github]
webhook_secrets = ["${{GITHUB_WEBHOOK_SECRET}}"]
{github}

[queue]
type = "sqs"
url = "{queue_url}"

[worker]
receive_wait_secs = 1
poll_interval_secs = 1
retry_initial_ms = 100
retry_max_secs = 1

[executor]
type = "stepfunctions"

[[pipelines]]
name = "build"
state_machine_arn = "{succeeds}"

[[pipelines]]
name = "broken"
state_machine_arn = "{fails}"

[[pipelines]]
name = "preview"
state_machine_arn = "{succeeds}"

[[routes]]
pipeline = "build"
events = ["push"]
environment = "ci"

[[routes]]
pipeline = "broken"
events = ["push"]
environment = "ci"

[[routes]]
pipeline = "preview"
events = ["pull_request"]
environment = "pr-{{number}}"
environment_url_path = "$.url"
"#,
        github = github::token_section(&server),
    );
    let environment = moto::environment();
    let environment: Vec<(&str, &str)> =
        environment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let daemon = Daemon::start(&text, &environment);
    let client = reqwest::Client::new();
    for delivery in [
        Delivery::fixture("push", "push_branch_commits.json"),
        Delivery::fixture("pull_request", "pull_request_opened.json"),
    ] {
        let answer = delivery.post(&client, &daemon.url()).await.unwrap();
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
    let opened: Value =
        serde_json::from_slice(&fixture("github/pull_request_opened.json")).unwrap();
    let head = opened["pull_request"]["head"]["sha"]
        .as_str()
        .unwrap()
        .to_string();
    let mut contexts: Vec<(&str, &str)> = Vec::new();
    for sha in COMMITS {
        contexts.push((sha, "gitdispatch/build/ci"));
        contexts.push((sha, "gitdispatch/broken/ci"));
    }
    contexts.push((&head, "gitdispatch/preview/pr-42"));
    // A preview's end is written on its commit, then on its deployment: wait for both.
    let deployed = |github: &Arc<Mutex<FakeGithub>>| {
        let fake = github.lock().unwrap();
        fake.deployments.first().is_some_and(|deployment| {
            let id = deployment["id"].as_u64().unwrap();
            fake.deployment_statuses
                .get(&id)
                .and_then(|statuses| statuses.first())
                .is_some_and(|status| status["state"] == "success")
        })
    };
    daemon.wait_for(
        "every execution's end to be reported",
        Duration::from_secs(120),
        |_| all_final(&github, &contexts) && deployed(&github),
    );
    for sha in COMMITS {
        assert_eq!(
            states(&github, sha, "gitdispatch/build/ci"),
            ["pending Queued", "pending Started", "success Succeeded"]
        );
        assert_eq!(
            states(&github, sha, "gitdispatch/broken/ci"),
            ["pending Queued", "pending Started", "failure Failed"]
        );
    }
    let fake = github.lock().unwrap();
    let ended = &fake.statuses[COMMITS[0]]
        .iter()
        .find(|status| status["state"] == "failure")
        .unwrap()["target_url"];
    let url = ended.as_str().unwrap();
    assert!(
        url.starts_with("https://us-east-1.console.aws.amazon.com/states/home?region=us-east-1#/v2/executions/details/arn:aws:states:us-east-1:"),
        "{url}"
    );
    let deployment = &fake.deployments[0];
    assert_eq!(deployment["sha"], head.as_str());
    let id = deployment["id"].as_u64().unwrap();
    let success = &fake.deployment_statuses[&id][0];
    assert_eq!(success["state"], "success");
    assert_eq!(success["environment_url"], "https://pr-42.sfn.example.com");
}
