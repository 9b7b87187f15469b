//! Operating the lanes through the real binary and its API: delivery history with the
//! planner's explanation; a paused lane that starts nothing while its jobs wait, and
//! starts them in commit order on resume; supersede, where five waiting jobs start one
//! and record four; replays of a window, failed-only and dry-run; and the checks that
//! keep all of it behind a token (or the page's session and its CSRF token).

use crate::common;

use std::time::Duration;

use common::daemon::{Daemon, binary};
use common::{Delivery, SECRET, aws, moto, push_variant};
use serde_json::{Value, json};

const TOKEN: &str = "operator-token-for-tests-01";

fn config(directory: &std::path::Path, supersede: bool) -> String {
    let started = directory.join("started.txt");
    format!(
        r#"
[server]
listen = "127.0.0.1:8080"

[github]
webhook_secrets = ["${{GITHUB_WEBHOOK_SECRET}}"]

[api]
tokens = ["${{GITDISPATCH_API_TOKEN}}", "a-second-operator-token-02"]
session_hours = 1

[queue]
type = "embedded"
path = "var/gitdispatch.db"

[executor]
type = "local"
log_dir = "var/log"
path = "var/executions.db"

[[pipelines]]
name = "deploy"
command = ["sh", "-c", "echo $GITDISPATCH_EXECUTION_NAME >> {started}; sleep 0.3"]
concurrency = "serial"
supersede = {supersede}

[[pipelines]]
name = "broken"
command = ["sh", "-c", "exit 3"]

[[routes]]
pipeline = "deploy"
environment = "production"
events = ["push"]
branches = ["hotfix/*"]
commits = "head"

[[routes]]
pipeline = "broken"
environment = "ci"
events = ["push"]
branches = ["hotfix/*"]
commits = "head"
"#,
        started = started.display()
    )
}

struct Console {
    daemon: Daemon,
    _directory: tempfile::TempDir,
    started: std::path::PathBuf,
    client: reqwest::Client,
}

impl Console {
    fn start(supersede: bool) -> Console {
        let directory = tempfile::tempdir().unwrap();
        let daemon = Daemon::start(
            &config(directory.path(), supersede),
            &[("GITDISPATCH_API_TOKEN", TOKEN)],
        );
        Console {
            daemon,
            started: directory.path().join("started.txt"),
            _directory: directory,
            client: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.daemon.address)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        get_json(&self.client, &self.url(path)).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_str(&response.text().await.unwrap()).unwrap_or_default(),
        )
    }

    /// Sends a signed push to a hotfix branch, the `n`th, with a head commit of its
    /// own; its delivery id.
    async fn push(&self, n: u64) -> String {
        self.push_to("acme/project-api-v2", n).await
    }

    /// [`Console::push`] of another repository.
    async fn push_to(&self, repository: &str, n: u64) -> String {
        let head = format!("{:08x}e3f3a3b3c3d3e3f3a3b3c3d3e3f3a3b3", n * 0x1f3d5b7);
        let body = String::from_utf8(push_variant("push_branch_commits.json", n))
            .unwrap()
            .replace("a3b3c3d3e3f3a3b3c3d3e3f3a3b3c3d3e3f3a3b3", &head)
            .replace("acme/project-api-v2", repository)
            .into_bytes();
        let delivery = format!("delivery-{n}-{}", uuid_like(n));
        let response = self
            .client
            .post(self.url("/webhooks/github"))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", &delivery)
            .header(
                "x-hub-signature-256",
                gitdispatch::source::github::sign(SECRET.as_bytes(), &body),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            202,
            "{}",
            response.text().await.unwrap()
        );
        delivery
    }

    fn started(&self) -> Vec<String> {
        std::fs::read_to_string(&self.started)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    async fn lane(&self, pipeline: &str, environment: &str) -> Value {
        let (status, lanes) = self.get("/v1/lanes").await;
        assert_eq!(status, 200, "{lanes}");
        lane_of(&lanes, pipeline, environment)
    }

    async fn wait_for(&self, what: &str, mut condition: impl AsyncFnMut(&Console) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if condition(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "timed out waiting for {what}; daemon log:\n{}",
            self.daemon.log()
        );
    }
}

/// A GET of the API with the test's token: the status and the JSON answered.
async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).bearer_auth(TOKEN).send().await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        serde_json::from_str(&response.text().await.unwrap()).unwrap_or_default(),
    )
}

/// One lane of a `GET /v1/lanes` answer (null when it is not there).
fn lane_of(lanes: &Value, pipeline: &str, environment: &str) -> Value {
    lanes["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|lane| lane["pipeline"] == pipeline && lane["environment"] == environment)
        .cloned()
        .unwrap_or_default()
}

fn uuid_like(n: u64) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", n, n * 7919)
}

/// The execution names planned for the deploy lane by each delivery, in order.
async fn planned_deploys(console: &Console, deliveries: &[String]) -> Vec<String> {
    let mut names = Vec::new();
    for delivery in deliveries {
        let (status, found) = console.get(&format!("/v1/deliveries/{delivery}")).await;
        assert_eq!(status, 200, "{found}");
        let record = &found["deliveries"][0];
        for name in record["executions"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            if name.starts_with("deploy-") {
                names.push(name.to_string());
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_are_kept_with_their_plan_and_explanation() {
    let console = Console::start(false);
    let first = console.push(1).await;
    let second = console.push(2).await;

    let (status, listed) = console.get("/v1/deliveries").await;
    assert_eq!(status, 200, "{listed}");
    let listed = listed["deliveries"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 2, "{listed:?}");
    // Newest first.
    assert_eq!(listed[0]["id"], second);
    assert_eq!(listed[1]["id"], first);
    let record = &listed[1];
    assert_eq!(record["source"], "github");
    assert_eq!(record["event"], "push");
    assert_eq!(record["ref"], "refs/heads/hotfix/important_patch");
    assert_eq!(record["status"], 202);
    assert_eq!(record["outcome"], "queued");
    assert_eq!(
        record["executions"].as_array().unwrap().len(),
        2,
        "{record}"
    );
    let explanation = record["explanation"].as_array().unwrap();
    assert!(
        explanation
            .iter()
            .any(|line| line.as_str().unwrap().contains("deploy")),
        "the explanation names the routes: {explanation:?}"
    );

    let repository = record["repository"].as_str().unwrap().to_uppercase();
    let (_, filtered) = console
        .get(&format!("/v1/deliveries?repository={repository}&limit=1"))
        .await;
    assert_eq!(filtered["deliveries"].as_array().unwrap().len(), 1);
    let (_, none) = console.get("/v1/deliveries?repository=acme/other").await;
    assert!(none["deliveries"].as_array().unwrap().is_empty());
    let (status, bad) = console.get("/v1/deliveries?since=yesterday").await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("since"), "{bad}");
    let (status, missing) = console.get("/v1/deliveries/no-such-delivery").await;
    assert_eq!(status, 404, "{missing}");

    // The CLI lists the same.
    let output = binary()
        .args([
            "--config",
            console.daemon.config.to_str().unwrap(),
            "deliveries",
        ])
        .env("GITDISPATCH_TOKEN", TOKEN)
        .env("GITDISPATCH_API_TOKEN", TOKEN)
        .env("GITDISPATCH_URL", console.url(""))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&first) && stdout.contains(&second),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_lane_starts_nothing_and_resumes_in_commit_order() {
    let console = Console::start(false);
    let (status, refused) = console
        .post("/v1/lanes/deploy/production/pause", json!({}))
        .await;
    assert_eq!(status, 422, "a pause needs a reason: {refused}");
    let (status, paused) = console
        .post(
            "/v1/lanes/deploy/production/pause",
            json!({"reason": "incident 42: database failover"}),
        )
        .await;
    assert_eq!(status, 200, "{paused}");

    let mut deliveries = Vec::new();
    for n in 1..=3 {
        deliveries.push(console.push(n).await);
    }
    let planned = planned_deploys(&console, &deliveries).await;
    assert_eq!(planned.len(), 3);
    // Well past the worker's pause refresh: nothing of the lane started, while the
    // other lane (broken, ci) ran.
    console
        .wait_for("the ci lane to run", async |console| {
            console.lane("broken", "ci").await["recent"]
                .as_array()
                .is_some_and(|jobs| jobs.iter().filter(|job| job["state"] == "ended").count() == 3)
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(console.started().is_empty(), "{:?}", console.started());
    let lane = console.lane("deploy", "production").await;
    assert_eq!(lane["state"], "paused", "{lane}");
    assert_eq!(lane["paused"]["reason"], "incident 42: database failover");
    assert_eq!(lane["waiting"]["count"], 3, "{lane}");

    // The CLI resumes it.
    let output = binary()
        .args([
            "--config",
            console.daemon.config.to_str().unwrap(),
            "resume",
            "--pipeline",
            "deploy",
            "--environment",
            "production",
        ])
        .env("GITDISPATCH_TOKEN", TOKEN)
        .env("GITDISPATCH_API_TOKEN", TOKEN)
        .env("GITDISPATCH_URL", console.url(""))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    console
        .wait_for("the three deploys", async |console| {
            console.started().len() == 3
        })
        .await;
    assert_eq!(console.started(), planned, "in commit order");
    let queue = console.get("/v1/queue").await.1;
    assert_eq!(queue["depth"]["dead"], 0, "{queue}");
}

#[tokio::test(flavor = "multi_thread")]
async fn supersede_starts_the_newest_of_five_and_records_four() {
    let console = Console::start(true);
    console
        .post(
            "/v1/lanes/deploy/production/pause",
            json!({"reason": "let them queue"}),
        )
        .await;
    let mut deliveries = Vec::new();
    for n in 1..=5 {
        deliveries.push(console.push(n).await);
    }
    let planned = planned_deploys(&console, &deliveries).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _) = console
        .post("/v1/lanes/deploy/production/resume", json!({}))
        .await;
    assert_eq!(status, 200);
    console
        .wait_for("the newest deploy to end", async |console| {
            console.lane("deploy", "production").await["recent"]
                .as_array()
                .is_some_and(|jobs| jobs.iter().any(|job| job["state"] == "ended"))
        })
        .await;
    assert_eq!(
        console.started(),
        vec![planned[4].clone()],
        "only the newest started"
    );
    let lane = console.lane("deploy", "production").await;
    assert_eq!(lane["superseded"], 4, "{lane}");
    for job in lane["recent"].as_array().unwrap() {
        if job["name"] != planned[4] {
            assert_eq!(job["state"], "superseded", "{job}");
            assert_eq!(job["status"], planned[4], "superseded by the newest: {job}");
        }
    }
    // Asked after by name, a superseded job says it will never start, and what
    // carries it.
    let (status, execution) = console.get(&format!("/v1/executions/{}", planned[0])).await;
    assert_eq!(status, 200, "{execution}");
    assert_eq!(execution["status"], "SUPERSEDED", "{execution}");
    assert_eq!(execution["finished"], true, "{execution}");
    assert!(
        execution["detail"]
            .as_str()
            .unwrap()
            .contains(planned[4].as_str()),
        "{execution}"
    );
    let metrics = reqwest::get(console.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gitdispatch_executions_superseded_total{pipeline=\"deploy\"} 4"),
        "{metrics}"
    );

    // A replay of the window runs the deploy that ran again, under a new name that
    // links the original; a dry run queues nothing.
    let since = humantime::format_rfc3339(std::time::SystemTime::now() - Duration::from_secs(3600))
        .to_string();
    let (status, dry) = console
        .post(
            "/v1/replays",
            json!({"pipeline": "deploy", "since": since, "dry_run": true}),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    let replays = dry["replays"].as_array().unwrap();
    assert_eq!(replays.len(), 1, "{dry}");
    assert_eq!(replays[0]["original"], planned[4]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(console.started().len(), 1, "a dry run starts nothing");
    let (status, replayed) = console
        .post("/v1/replays", json!({"pipeline": "deploy", "since": since}))
        .await;
    assert_eq!(status, 202, "{replayed}");
    let name = replayed["replays"][0]["name"].as_str().unwrap().to_string();
    assert!(name.contains("-r1-"), "{name}");
    console
        .wait_for("the replay", async |console| console.started().len() == 2)
        .await;
    assert_eq!(console.started()[1], name);

    // Failed only: the broken pipeline's three runs, not the deploys.
    let (status, failed) = console
        .post(
            "/v1/replays",
            json!({"pipeline": "broken", "since": since, "failed_only": true, "dry_run": true}),
        )
        .await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(failed["replays"].as_array().unwrap().len(), 5, "{failed}");
    let (status, none) = console
        .post(
            "/v1/replays",
            json!({"pipeline": "deploy", "since": since, "failed_only": true, "dry_run": true}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(none["replays"].as_array().unwrap().is_empty(), "{none}");
    let (status, bad) = console
        .post("/v1/replays", json!({"pipeline": "nope", "since": since}))
        .await;
    assert_eq!(status, 422, "{bad}");
}

/// Supersede skips only an older commit of the same repository and branch: a waiting
/// commit of another repository of the pipeline runs, and a manual run is counted in
/// its lane, waits its turn and is never skipped.
#[tokio::test(flavor = "multi_thread")]
async fn supersede_runs_another_repositorys_commit_and_a_manual_run_and_skips_an_older_one() {
    let console = Console::start(true);
    let (status, _) = console
        .post(
            "/v1/lanes/deploy/production/pause",
            json!({"reason": "let them queue"}),
        )
        .await;
    assert_eq!(status, 200);
    let mut deliveries = vec![console.push_to("acme/project-api-v2", 1).await];
    deliveries.push(console.push_to("acme/project-web", 2).await);
    let (status, manual) = console
        .post(
            "/v1/executions",
            json!({"pipeline": "deploy", "environment": "production"}),
        )
        .await;
    assert_eq!(status, 202, "{manual}");
    let manual = manual["execution"].as_str().unwrap().to_string();
    deliveries.push(console.push_to("acme/project-api-v2", 3).await);
    let planned = planned_deploys(&console, &deliveries).await;
    let [api_1, web, api_2] = <[String; 3]>::try_from(planned).unwrap();

    let lane = console.lane("deploy", "production").await;
    assert_eq!(lane["state"], "paused", "{lane}");
    assert_eq!(
        lane["waiting"]["count"], 4,
        "the manual run is counted: {lane}"
    );
    assert_eq!(lane["waiting"]["oldest"]["name"], api_1.as_str(), "{lane}");
    assert_eq!(lane["waiting"]["newest"]["name"], api_2.as_str(), "{lane}");

    let (status, _) = console
        .post("/v1/lanes/deploy/production/resume", json!({}))
        .await;
    assert_eq!(status, 200);
    console
        .wait_for("three deploys to end", async |console| {
            console.lane("deploy", "production").await["recent"]
                .as_array()
                .is_some_and(|jobs| jobs.iter().filter(|job| job["state"] == "ended").count() == 3)
        })
        .await;
    assert_eq!(
        console.started(),
        vec![web.clone(), manual.clone(), api_2.clone()],
        "the other repository's commit and the manual run, in queue order, then the newest of the branch"
    );
    let lane = console.lane("deploy", "production").await;
    assert_eq!(lane["superseded"], 1, "{lane}");
    let recent = lane["recent"].as_array().unwrap();
    let superseded = recent
        .iter()
        .find(|job| job["name"] == api_1.as_str())
        .unwrap();
    assert_eq!(superseded["state"], "superseded", "{superseded}");
    assert_eq!(
        superseded["status"],
        api_2.as_str(),
        "carried by the newest: {superseded}"
    );
    for name in [&web, &manual, &api_2] {
        let job = recent
            .iter()
            .find(|job| job["name"] == name.as_str())
            .unwrap();
        assert_eq!(job["state"], "ended", "{job}");
    }
    // The manual run is in the history, as a delivery of the API.
    let (status, deliveries) = console.get("/v1/deliveries").await;
    assert_eq!(status, 200);
    assert!(
        deliveries["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |record| record["source"] == "manual" && record["executions"][0] == manual.as_str()
            ),
        "{deliveries}"
    );
}

/// In a pipeline of one repository's several projects (a monorepo, each project its
/// paths), a newer commit supersedes an older one only when it deploys every project the
/// older one does: a commit that changed only the web does not carry one that changed
/// the API, which runs; of two web commits, the newer carries the older.
#[tokio::test(flavor = "multi_thread")]
async fn supersede_never_drops_a_project_the_newer_commit_does_not_deploy() {
    let directory = tempfile::tempdir().unwrap();
    let text = config(directory.path(), true).replace(
        "supersede = true\n",
        "supersede = true\n\n[[pipelines.projects]]\nname = \"api\"\nrepository = \"acme/mono\"\nskip_flag = \"skip_api\"\npaths = [\"api/**\"]\n\n[[pipelines.projects]]\nname = \"web\"\nrepository = \"acme/mono\"\nskip_flag = \"skip_web\"\npaths = [\"web/**\"]\n",
    );
    let console = Console {
        daemon: Daemon::start(&text, &[("GITDISPATCH_API_TOKEN", TOKEN)]),
        started: directory.path().join("started.txt"),
        _directory: directory,
        client: reqwest::Client::new(),
    };
    let (status, _) = console
        .post(
            "/v1/lanes/deploy/production/pause",
            json!({"reason": "let them queue"}),
        )
        .await;
    assert_eq!(status, 200);
    let push = |n: u64, path: &str| {
        let before = format!("{:040x}", 0xbe00 + n - 1);
        let after = format!("{:040x}", 0xbe00 + n);
        let commit = json!({"id": after, "message": format!("Change {n}"),
            "author": {"name": "Mary Doe", "username": "mary"},
            "added": [], "removed": [], "modified": [path]});
        let body = serde_json::to_vec(&json!({
            "ref": "refs/heads/hotfix/mono", "before": before, "after": after,
            "created": false, "deleted": false, "forced": false,
            "commits": [commit.clone()], "head_commit": commit,
            "repository": {"full_name": "acme/mono", "pushed_at": 1_800_000_000 + n},
        }))
        .unwrap();
        let request = console
            .client
            .post(console.url("/webhooks/github"))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", format!("mono-{n}-{}", uuid_like(n)))
            .header(
                "x-hub-signature-256",
                gitdispatch::source::github::sign(SECRET.as_bytes(), &body),
            )
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), 202);
            let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            answer["executions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|name| name.as_str().unwrap().to_string())
                .find(|name| name.starts_with("deploy-"))
                .unwrap()
        }
    };
    let api = push(1, "api/src/main.rs").await;
    let web_1 = push(2, "web/index.html").await;
    let web_2 = push(3, "web/app.js").await;
    let (status, _) = console
        .post("/v1/lanes/deploy/production/resume", json!({}))
        .await;
    assert_eq!(status, 200);
    console
        .wait_for("two deploys to end", async |console| {
            console.lane("deploy", "production").await["recent"]
                .as_array()
                .is_some_and(|jobs| jobs.iter().filter(|job| job["state"] == "ended").count() == 2)
        })
        .await;
    assert_eq!(
        console.started(),
        vec![api.clone(), web_2.clone()],
        "the API's change runs; the newer web change carries the older"
    );
    let lane = console.lane("deploy", "production").await;
    let job = |name: &str| {
        lane["recent"]
            .as_array()
            .unwrap()
            .iter()
            .find(|job| job["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(job(&web_1)["state"], "superseded");
    assert_eq!(job(&web_1)["status"], web_2.as_str());
}

/// Two replays made at once never share a name, and a replay of a window in which
/// nothing ran is refused with the reason, queueing nothing.
#[tokio::test(flavor = "multi_thread")]
async fn replays_made_at_once_are_named_apart_and_an_empty_one_is_refused() {
    let console = Console::start(false);
    console.push(1).await;
    console
        .wait_for("the deploy", async |console| console.started().len() == 1)
        .await;
    console
        .wait_for("its end", async |console| {
            console.lane("deploy", "production").await["recent"]
                .as_array()
                .is_some_and(|jobs| jobs.iter().any(|job| job["state"] == "ended"))
        })
        .await;
    let since = humantime::format_rfc3339(std::time::SystemTime::now() - Duration::from_secs(3600))
        .to_string();
    let body = json!({"pipeline": "deploy", "since": since});
    let (first, second) = tokio::join!(
        console.post("/v1/replays", body.clone()),
        console.post("/v1/replays", body.clone())
    );
    assert_eq!((first.0, second.0), (202, 202), "{first:?} {second:?}");
    let first = first.1["replays"][0]["name"].as_str().unwrap().to_string();
    let second = second.1["replays"][0]["name"].as_str().unwrap().to_string();
    assert_ne!(first, second, "each replay runs under a name of its own");
    console
        .wait_for("both replays", async |console| console.started().len() == 3)
        .await;
    let started = console.started();
    assert!(
        started.contains(&first) && started.contains(&second),
        "{started:?}"
    );

    let future =
        humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string();
    let (status, refused) = console
        .post(
            "/v1/replays",
            json!({"pipeline": "deploy", "since": future}),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .starts_with("nothing to replay"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_of_it_answers_without_a_token_or_a_session_with_its_csrf_token() {
    let console = Console::start(false);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/v1/deliveries", "/v1/lanes", "/v1/queue"] {
        let status = client.get(console.url(path)).send().await.unwrap().status();
        assert_eq!(status.as_u16(), 401, "{path}");
        let status = client
            .get(console.url(path))
            .bearer_auth("not-the-token-at-all-000")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 401, "{path}");
    }
    let status = client
        .post(console.url("/v1/lanes/deploy/production/pause"))
        .header("content-type", "application/json")
        .body(json!({"reason": "x"}).to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401);
    // The page sends a stranger to its sign-in form.
    let page = client.get(console.url("/ui")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 303);
    assert_eq!(page.headers()["location"], "/ui/login");
    // The sign-in form may not be framed, and carries a CSRF token of its own.
    let form = client.get(console.url("/ui/login")).send().await.unwrap();
    assert_eq!(form.status().as_u16(), 200);
    assert!(
        form.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(form.headers()["x-frame-options"], "DENY");
    // Without the form's CSRF token (a cross-site sign-in), nobody is signed in.
    let forged = client
        .post(console.url("/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    assert!(forged.headers().get("set-cookie").is_none());
    // A wrong token signs nobody in.
    let (login_cookie, login_csrf) = login_form(&client, &console).await;
    let wrong = client
        .post(console.url("/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &login_cookie)
        .body(format!("csrf={login_csrf}&token=not-the-token-at-all-000"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    // The right one sets a secure, HTTP-only, same-site cookie, for the configured
    // lifetime.
    let (session, csrf, cookie) = sign_in(&client, &console, TOKEN).await;
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Max-Age=3600"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    // The session reads; it changes nothing without its CSRF token.
    let status = client
        .get(console.url("/v1/lanes"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 200);
    let forged = client
        .post(console.url("/v1/lanes/deploy/production/pause"))
        .header("cookie", &session)
        .header("content-type", "application/json")
        .body(json!({"reason": "forged"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    let lane = console.lane("deploy", "production").await;
    assert_ne!(lane["state"], "paused", "{lane}");
    let allowed = client
        .post(console.url("/v1/lanes/deploy/production/pause"))
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .header("content-type", "application/json")
        .body(json!({"reason": "from the page"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status().as_u16(), 200);
    assert_eq!(
        console.lane("deploy", "production").await["state"],
        "paused"
    );
    // A forged cookie is no session.
    let status = client
        .get(console.url("/v1/lanes"))
        .header("cookie", "gitdispatch_session=99999999999deadbeef")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401);

    // Signing out needs the session's CSRF token, and ends the session for good: its
    // cookie, kept, opens nothing after.
    let refused = client
        .post(console.url("/ui/logout"))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=not-this-sessions")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let lanes = |cookie: String| {
        let request = client
            .get(console.url("/v1/lanes"))
            .header("cookie", cookie);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        lanes(session.clone()).await,
        200,
        "a refused sign-out ends nothing"
    );
    let signed_out = client
        .post(console.url("/ui/logout"))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status().as_u16(), 303);
    assert_eq!(
        lanes(session.clone()).await,
        401,
        "a signed-out session opens nothing"
    );
    let page = client
        .get(console.url("/ui"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status().as_u16(),
        303,
        "the page asks to sign in again"
    );

    // A session ends when its token is removed from the file (a reload).
    let second = "a-second-operator-token-02";
    let (kept, _, _) = sign_in(&client, &console, TOKEN).await;
    let daemon_config = std::fs::read_to_string(&console.daemon.config)
        .unwrap()
        .replace("\"${GITDISPATCH_API_TOKEN}\", ", "");
    assert!(daemon_config.contains(&format!("tokens = [\"{second}\"]")));
    let (ended, _, _) = sign_in(&client, &console, TOKEN).await;
    assert_eq!(lanes(ended.clone()).await, 200);
    std::fs::write(&console.daemon.config, &daemon_config).unwrap();
    // SAFETY: kill(2) touches no memory of ours.
    unsafe {
        libc::kill(console.daemon.pid() as libc::pid_t, libc::SIGHUP);
    }
    console
        .wait_for("the reload", async |console| {
            console.daemon.log().contains("Reloaded the configuration.")
        })
        .await;
    let ended_again = ended.clone();
    assert_eq!(lanes(ended).await, 401, "the removed token's session ended");
    assert_eq!(lanes(kept).await, 401);
    let (other, _, _) = sign_in(&client, &console, second).await;
    assert_eq!(lanes(other).await, 200, "the token kept signs in");
    // Put back, the token signs in again, but what it opened before stays ended.
    let original = daemon_config.replace(
        &format!("tokens = [\"{second}\"]"),
        &format!("tokens = [\"${{GITDISPATCH_API_TOKEN}}\", \"{second}\"]"),
    );
    std::fs::write(&console.daemon.config, &original).unwrap();
    // SAFETY: kill(2) touches no memory of ours.
    unsafe {
        libc::kill(console.daemon.pid() as libc::pid_t, libc::SIGHUP);
    }
    console
        .wait_for("the second reload", async |console| {
            console
                .daemon
                .log()
                .matches("Reloaded the configuration.")
                .count()
                == 2
        })
        .await;
    let (fresh, _, _) = sign_in(&client, &console, TOKEN).await;
    assert_eq!(lanes(fresh).await, 200, "the token is back");
    assert_eq!(
        lanes(ended_again).await,
        401,
        "a session its removal ended does not come back with it"
    );
}

/// The sign-in form's CSRF cookie and token.
async fn login_form(client: &reqwest::Client, console: &Console) -> (String, String) {
    let form = client.get(console.url("/ui/login")).send().await.unwrap();
    let cookie = form.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let html = form.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("gitdispatch_login="), "{cookie}");
    (cookie, csrf)
}

/// Signs in through the form: the session's cookie (`name=value`), its CSRF token (read
/// off the page), and the whole `Set-Cookie` the sign-in answered.
async fn sign_in(
    client: &reqwest::Client,
    console: &Console,
    token: &str,
) -> (String, String, String) {
    let (login_cookie, login_csrf) = login_form(client, console).await;
    let signed_in = client
        .post(console.url("/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &login_cookie)
        .body(format!("csrf={login_csrf}&token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status().as_u16(), 303);
    let cookie = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap().to_string())
        .find(|value| value.starts_with("gitdispatch_session="))
        .unwrap();
    let session = cookie.split(';').next().unwrap().to_string();
    let page = client
        .get(console.url("/ui"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    (session, csrf, cookie)
}

/// Runs a phase of `tests/browser/page.mjs` in the headless browser; what it saw.
fn browse(phase: &str, arguments: Value) -> Value {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        directory.join("node_modules/playwright-core").is_dir(),
        "the page test needs playwright-core: scripts/browser.sh installs it (scripts/test runs it)"
    );
    let output = std::process::Command::new("node")
        .current_dir(&directory)
        .arg("page.mjs")
        .arg(phase)
        .arg(arguments.to_string())
        .output()
        .expect("node runs the page test: scripts/browser.sh installs what it needs");
    assert!(
        output.status.success(),
        "the browser's {phase}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("page.mjs prints what it saw")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_in_a_real_browser_pauses_and_resumes_a_lane() {
    let browser = std::env::var("GITDISPATCH_TEST_BROWSER")
        .unwrap_or_else(|_| "/usr/bin/chromium-headless-shell".to_string());
    assert!(
        std::path::Path::new(&browser).exists(),
        "no browser at {browser}: scripts/browser.sh installs chromium-headless-shell"
    );
    let console = Console::start(false);
    let delivery = console.push(1).await;
    let first = planned_deploys(&console, std::slice::from_ref(&delivery)).await;
    console
        .wait_for("the first deploy", async |console| {
            console.started().len() == 1
        })
        .await;
    let (_, found) = console.get(&format!("/v1/deliveries/{delivery}")).await;
    let explanation = found["deliveries"][0]["explanation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line.as_str().unwrap().to_string())
        .find(|line| line.contains("deploy"))
        .expect("the explanation names the deploy route");
    let reason = "incident 7: the database fails over";
    let common = json!({
        "url": console.url(""),
        "token": TOKEN,
        "browser": browser,
        "lane": "deploy/production",
        "reason": reason,
    });
    let mut arguments = common.clone();
    arguments["delivery"] = json!(delivery);
    arguments["explanation"] = json!(explanation);
    arguments["execution"] = json!(first[0]);
    let seen = browse("pause", arguments);
    assert_eq!(
        seen["cookie"],
        json!({"httpOnly": true, "secure": true, "sameSite": "Strict"}),
        "{seen}"
    );
    assert_eq!(seen["scriptSeesCookie"], false, "{seen}");
    // The click went through the API: the lane is paused for every worker, with the
    // reason typed.
    let lane = console.lane("deploy", "production").await;
    assert_eq!(lane["state"], "paused", "{lane}");
    assert_eq!(lane["paused"]["reason"], reason, "{lane}");

    // Two more commits wait behind the pause; nothing starts.
    let waiting = vec![console.push(2).await, console.push(3).await];
    let planned = planned_deploys(&console, &waiting).await;
    console
        .wait_for("two waiting jobs", async |console| {
            console.lane("deploy", "production").await["waiting"]["count"] == 2
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(console.started(), first, "a paused lane starts nothing");

    // Where the screenshot goes (relative to the repository, as docs/console.png).
    let screenshot = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(
            std::env::var("GITDISPATCH_SCREENSHOT")
                .unwrap_or_else(|_| format!("{}/console.png", env!("CARGO_TARGET_TMPDIR"))),
        )
        .display()
        .to_string();
    let _ = std::fs::remove_file(&screenshot);
    let mut arguments = common;
    arguments["waiting"] = json!(2);
    arguments["screenshot"] = json!(screenshot);
    let seen = browse("resume", arguments);
    assert!(
        seen["waiting"].as_str().unwrap().starts_with("2 ("),
        "{seen}"
    );
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a screenshot was taken");
    console
        .wait_for("the two waiting deploys", async |console| {
            console.started().len() == 3
        })
        .await;
    assert_eq!(console.started()[1..], planned, "in commit order");
    // Its hold ends with the round of putting back that follows them.
    console
        .wait_for("the lane's hold to end", async |console| {
            console.lane("deploy", "production").await["state"] == "running"
        })
        .await;
}

/// On SQS, a paused lane's jobs outwait the redrive policy: with `maxReceiveCount = 2`
/// and a 2-second visibility timeout, a worker that learns of the pause from the shared
/// journal (DynamoDB) of another process parks them there, off the queue, for five
/// timeouts; none is dead-lettered, none is in flight, and the resume puts them back
/// and starts them in commit order on Step Functions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lane_on_sqs_outwaits_the_redrive_policy_and_resumes_in_commit_order() {
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (queue_url, dead_url) = moto::create_queue(&sqs, true, Duration::from_secs(2), 2).await;
    let table = moto::ledger_table(&aws_sdk_dynamodb::Client::new(&sdk), "journal").await;
    let arn = aws::create_sample_state_machine(&sfn).await;
    let aws_text = aws::aws_config_text(&queue_url, &arn);
    let text = format!(
        "{aws_text}\n[api]\ntokens = [\"${{GITDISPATCH_API_TOKEN}}\"]\n\n[ledger]\ntype = \"dynamodb\"\ntable = \"{table}\"\n"
    );
    let mut environment: Vec<(&str, String)> = moto::environment();
    environment.push(("GITDISPATCH_API_TOKEN", TOKEN.to_string()));
    let environment: Vec<(&str, &str)> =
        environment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // A listener that takes the pause, and a worker apart that must honour it.
    let listener = Daemon::start_as("listen", &text, &environment);
    let worker = Daemon::start_as(
        "work",
        &text.replace("[worker]\n", "[worker]\nmetrics_listen = \"127.0.0.1:0\"\n"),
        &environment,
    );
    let client = reqwest::Client::new();
    let api = |path: &str| format!("http://{}{path}", listener.address);
    let paused = client
        .post(api("/v1/lanes/deploy/acceptance/pause"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(json!({"reason": "release freeze"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        paused.status().as_u16(),
        200,
        "{}",
        paused.text().await.unwrap()
    );

    let delivery = Delivery::fixture("push", "push_branch_commits.json");
    let answer = delivery.post(&client, &listener.url()).await.unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    let planned: Vec<String> =
        aws::plan(&aws_text, "push", "push_branch_commits.json", &delivery.id)
            .iter()
            .map(|request| request.name.to_string())
            .collect();
    assert_eq!(planned.len(), 3, "{planned:?}");

    // The worker parks the lane's jobs in the journal, off the queue: nothing of them
    // is left for SQS to count receives of, however long the pause (here five
    // visibility timeouts, with maxReceiveCount 2).
    let parked = || async {
        let (_, lanes) = get_json(&client, &api("/v1/lanes")).await;
        lane_of(&lanes, "deploy", "acceptance")["waiting"]["parked"]
            .as_u64()
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while parked().await < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never parked the jobs: {}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        aws::executions_of(&sfn, &arn).await.is_empty(),
        "a paused lane started an execution: {}",
        worker.log()
    );
    assert!(
        moto::dead_letter_ids(&sqs, &dead_url).await.is_empty(),
        "a parked job was dead-lettered: {}",
        worker.log()
    );
    let (_, lanes) = get_json(&client, &api("/v1/lanes")).await;
    let lane = lane_of(&lanes, "deploy", "acceptance");
    assert_eq!(lane["state"], "paused", "{lanes}");
    assert_eq!(lane["waiting"]["count"], 3, "{lanes}");
    assert_eq!(lane["waiting"]["parked"], 3, "{lanes}");
    // The queue's depth, as SQS counts it: nothing waits on it, nothing in flight,
    // nothing dead.
    let (_, queue) = get_json(&client, &api("/v1/queue")).await;
    assert_eq!(queue["type"], "sqs", "{queue}");
    assert_eq!(queue["max_receives"], 2, "{queue}");
    let depth = &queue["depth"];
    assert_eq!(depth["visible"], 0, "{queue}");
    assert_eq!(depth["in_flight"], 0, "{queue}");
    assert_eq!(depth["dead"], 0, "{queue}");

    let resumed = client
        .post(api("/v1/lanes/deploy/acceptance/resume"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status().as_u16(), 200);
    aws::wait_until_finished(&sfn, &arn, &planned).await;
    aws::wait_until_drained(&sqs, &queue_url).await;
    let mut started: Vec<(aws_sdk_sfn::primitives::DateTime, String)> = sfn
        .list_executions()
        .state_machine_arn(&arn)
        .send()
        .await
        .unwrap()
        .executions()
        .iter()
        .map(|execution| (*execution.start_date(), execution.name().to_string()))
        .collect();
    started.sort_by_key(|(date, _)| date.as_nanos());
    let started: Vec<String> = started.into_iter().map(|(_, name)| name).collect();
    assert_eq!(started, planned, "in commit order");
    assert!(moto::dead_letter_ids(&sqs, &dead_url).await.is_empty());
}

/// On Step Functions, a worker restarted while a serial lane's execution runs takes
/// that execution's job back and waits for it: the newer commit waiting behind it
/// supersedes the one between them, never the running one, and starts only once the
/// running one has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_a_lane_runs_never_starts_the_next_execution_beside_it() {
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (queue_url, _) = moto::create_queue(&sqs, true, Duration::from_secs(30), 5).await;
    let table = moto::ledger_table(&aws_sdk_dynamodb::Client::new(&sdk), "journal").await;
    // A deploy that takes a few seconds.
    let arn = sfn
        .create_state_machine()
        .name(moto::unique("slow-deploy"))
        .definition(r#"{"StartAt": "Deploy", "States": {"Deploy": {"Type": "Wait", "Seconds": 6, "End": true}}}"#)
        .role_arn("arn:aws:iam::123456789012:role/gitdispatch-sample")
        .send()
        .await
        .unwrap()
        .state_machine_arn()
        .to_string();
    let aws_text = aws::aws_config_text(&queue_url, &arn)
        .replace("shutdown_grace_secs = 30", "shutdown_grace_secs = 1")
        .replace(
            "concurrency = \"serial\"",
            "concurrency = \"serial\"\nsupersede = true",
        );
    let text = format!("{aws_text}\n[ledger]\ntype = \"dynamodb\"\ntable = \"{table}\"\n");
    let environment: Vec<(&str, String)> = moto::environment();
    let environment: Vec<(&str, &str)> =
        environment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut daemon = Daemon::start(&text, &environment);

    // A push of three commits: the newest runs (the two before it are superseded).
    let client = reqwest::Client::new();
    let push = |delivery: &Delivery| {
        aws::plan_body(&aws_text, "push", &delivery.body, &delivery.id)
            .iter()
            .map(|request| request.name.to_string())
            .collect::<Vec<String>>()
    };
    let first = Delivery::fixture("push", "push_branch_commits.json");
    let answer = first.post(&client, &daemon.url()).await.unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    let first = push(&first);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !aws::executions_of(&sfn, &arn).await.contains_key(&first[2]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the newest commit never started: {}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A second push of the branch waits behind it, three commits again.
    let second = Delivery::new(
        "push",
        String::from_utf8(push_variant("push_branch_commits.json", 7))
            .unwrap()
            .replace(
                "a3b3c3d3e3f3a3b3c3d3e3f3a3b3c3d3e3f3a3b3",
                "b7b7c3d3e3f3a3b3c3d3e3f3a3b3c3d3e3f3a3b3",
            )
            .into_bytes(),
    );
    let answer = second.post(&client, &daemon.url()).await.unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    let second = push(&second);

    // The worker stops (its grace is shorter than the deploy) and comes back.
    assert!(daemon.terminate().success(), "{}", daemon.log());
    daemon.spawn(&environment);
    aws::wait_until_finished(&sfn, &arn, &[first[2].clone(), second[2].clone()]).await;
    aws::wait_until_drained(&sqs, &queue_url).await;

    let executions = aws::runs_by_start(&sfn, &arn).await;
    let names: Vec<&str> = executions
        .iter()
        .map(|(_, _, name)| name.as_str())
        .collect();
    assert_eq!(
        names,
        [first[2].as_str(), second[2].as_str()],
        "the running one went on; the waiting push's newest carried the rest: {}",
        daemon.log()
    );
    assert!(
        executions[1].0 >= executions[0].1,
        "the newest started only after the running one ended: {executions:?}"
    );
}

/// Each surface takes requests from its own networks, and none holds another: GitHub's
/// list (set with the deprecated `[server]` key too) keeps the page and CodeCommit's
/// endpoint open; the operator surface's list holds the API and the page alone.
#[tokio::test(flavor = "multi_thread")]
async fn each_surface_takes_requests_only_from_its_own_networks() {
    let client_from = |address: &str| {
        reqwest::Client::builder()
            .local_address(address.parse::<std::net::IpAddr>().unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    let codecommit_key = "a-codecommit-api-key-0001";
    let event = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/codecommit/reference_created.json"),
    )
    .unwrap();
    for (github_key, api_networks) in [
        ("github.allowed_networks", Some("127.0.0.2/32")),
        ("server.allowed_networks", None),
    ] {
        let directory = tempfile::tempdir().unwrap();
        let mut text = config(directory.path(), false);
        let github_list = "allowed_networks = [\"192.0.2.0/24\"]\n";
        if github_key == "github.allowed_networks" {
            text = text.replace("[github]\n", &format!("[github]\n{github_list}"));
        } else {
            text = text.replace("[server]\n", &format!("[server]\n{github_list}"));
        }
        if let Some(list) = api_networks {
            text = text.replace(
                "session_hours = 1\n",
                &format!("session_hours = 1\nallowed_networks = [\"{list}\"]\n"),
            );
        }
        text.push_str(&format!(
            "\n[codecommit]\napi_keys = [\"{codecommit_key}\"]\n"
        ));
        let daemon = Daemon::start(&text, &[("GITDISPATCH_API_TOKEN", TOKEN)]);
        let url = |path: &str| format!("http://{}{path}", daemon.address);
        let outside = client_from("127.0.0.1");
        // GitHub's webhook: only from GitHub's networks.
        let answer = Delivery::fixture("push", "push_branch_commits.json")
            .post(&outside, &url("/webhooks/github"))
            .await
            .unwrap();
        assert_eq!(answer.status, 403, "{github_key}: {}", answer.body);
        // CodeCommit's endpoint is not held by GitHub's list.
        let codecommit = outside
            .post(url("/webhooks/codecommit"))
            .header("content-type", "application/json")
            .header("x-api-key", codecommit_key)
            .body(event.clone())
            .send()
            .await
            .unwrap();
        assert!(
            codecommit.status().is_success(),
            "{github_key}: {} {}",
            codecommit.status(),
            codecommit.text().await.unwrap()
        );
        let page = |client: &reqwest::Client| {
            let request = client.get(url("/ui/login"));
            async move { request.send().await.unwrap().status().as_u16() }
        };
        let lanes = |client: &reqwest::Client| {
            let request = client.get(url("/v1/lanes")).bearer_auth(TOKEN);
            async move { request.send().await.unwrap().status().as_u16() }
        };
        match api_networks {
            // The operator surface's own list holds the page and the API.
            Some(_) => {
                assert_eq!(page(&outside).await, 403);
                assert_eq!(lanes(&outside).await, 403);
                let inside = client_from("127.0.0.2");
                assert_eq!(page(&inside).await, 200);
                assert_eq!(lanes(&inside).await, 200);
                let answer = Delivery::fixture("push", "push_branch_commits.json")
                    .post(&inside, &url("/webhooks/github"))
                    .await
                    .unwrap();
                assert_eq!(answer.status, 403, "the operators' network is not GitHub's");
            }
            // GitHub's list alone keeps the page and the API open.
            None => {
                assert_eq!(page(&outside).await, 200);
                assert_eq!(lanes(&outside).await, 200);
                assert!(
                    daemon
                        .log()
                        .contains("server.allowed_networks is deprecated"),
                    "{}",
                    daemon.log()
                );
            }
        }
    }
}

/// A serial lane's execution that runs longer than its job may be held in flight
/// (`[worker] max_hold_secs`, 2 s here; SQS's limit is 12 hours) hands its lane over:
/// the job leaves the queue, the lane shows busy, the next commits are parked in the
/// journal; when the execution ends, they run, one at a time, in commit order, each
/// handed over in turn, none beside another, none dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_longer_than_a_job_may_be_held_keeps_its_lane_in_order() {
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let (queue_url, dead_url) = moto::create_queue(&sqs, true, Duration::from_secs(3), 2).await;
    let table = moto::ledger_table(&aws_sdk_dynamodb::Client::new(&sdk), "long").await;
    let arn = sfn
        .create_state_machine()
        .name(moto::unique("long-deploy"))
        .definition(r#"{"StartAt": "Deploy", "States": {"Deploy": {"Type": "Wait", "Seconds": 8, "End": true}}}"#)
        .role_arn("arn:aws:iam::123456789012:role/gitdispatch-sample")
        .send()
        .await
        .unwrap()
        .state_machine_arn()
        .to_string();
    // Each execution outlives the 2 s hold by 6 s: room for a loaded machine to hand
    // the lane over while the first still runs, which is what is looked at.
    let aws_text = aws::aws_config_text(&queue_url, &arn)
        .replace("[worker]\n", "[worker]\nmax_hold_secs = 2\n");
    let text = format!(
        "{aws_text}\n[api]\ntokens = [\"${{GITDISPATCH_API_TOKEN}}\"]\n\n[ledger]\ntype = \"dynamodb\"\ntable = \"{table}\"\n"
    );
    let mut environment: Vec<(&str, String)> = moto::environment();
    environment.push(("GITDISPATCH_API_TOKEN", TOKEN.to_string()));
    let environment: Vec<(&str, &str)> =
        environment.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let daemon = Daemon::start(&text, &environment);
    let client = reqwest::Client::new();
    let delivery = Delivery::fixture("push", "push_branch_commits.json");
    let answer = delivery.post(&client, &daemon.url()).await.unwrap();
    assert_eq!(answer.status, 202, "{}", answer.body);
    let planned: Vec<String> =
        aws::plan(&aws_text, "push", "push_branch_commits.json", &delivery.id)
            .iter()
            .map(|request| request.name.to_string())
            .collect();
    assert_eq!(planned.len(), 3);

    // While the first runs past the hold: nothing of the lane is in flight on SQS, the
    // lane is busy with it, the two after it parked.
    let api = |path: &str| format!("http://{}{path}", daemon.address);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let lane = loop {
        let (_, lanes) = get_json(&client, &api("/v1/lanes")).await;
        let lane = lane_of(&lanes, "deploy", "acceptance");
        if lane["state"] == "busy" && lane["waiting"]["parked"] == 2 {
            break lane;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lane was never handed over: {lanes}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(lane["busy"], planned[0].as_str(), "{lane}");
    // On the queue, once the hand-over is done (the lane shows busy a moment before
    // the start job that handed it over is acknowledged): at most the `release` job
    // that looks at the execution, waiting for its next look; none of the lane's three
    // starts, while the first execution still runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, queue) = get_json(&client, &api("/v1/queue")).await;
        let depth = &queue["depth"];
        if depth["visible"].as_u64().unwrap() + depth["in_flight"].as_u64().unwrap() <= 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{queue}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    aws::wait_until_finished(&sfn, &arn, &planned).await;
    aws::wait_until_drained(&sqs, &queue_url).await;
    let runs = aws::runs_by_start(&sfn, &arn).await;
    let names: Vec<&str> = runs.iter().map(|(_, _, name)| name.as_str()).collect();
    assert_eq!(names, planned, "in commit order: {}", daemon.log());
    for pair in runs.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "one at a time: {runs:?}");
    }
    assert!(moto::dead_letter_ids(&sqs, &dead_url).await.is_empty());
    // The lane is free again.
    let (_, lanes) = get_json(&client, &api("/v1/lanes")).await;
    let lane = lane_of(&lanes, "deploy", "acceptance");
    assert_eq!(lane["state"], "running", "{lane}");
    assert_eq!(lane["waiting"]["count"], 0, "{lane}");
}
