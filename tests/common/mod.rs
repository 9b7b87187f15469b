//! Shared helpers for the integration tests: a real server on 127.0.0.1:0, signed
//! requests built from the fixtures, and what ended up queued.
#![allow(dead_code)]

pub mod aws;
pub mod codecommit;
pub mod codepipeline;
pub mod daemon;
pub mod github;
pub mod inprocess;
pub mod moto;
pub mod proxy;
pub mod sns;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gitdispatch::app::{App, OpenedQueue};
use gitdispatch::config::{Config, QueueConfig};
use gitdispatch::job::Job;
use gitdispatch::queue::embedded::EmbeddedQueue;
use gitdispatch::server;
use gitdispatch::source::github::sign;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "It's a Secret to Everybody";

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap_or_else(|error| panic!("fixture {name}: {error}"))
}

/// A push fixture as another push of the same commits would send it: the same body
/// with the repository's `pushed_at` moved on by `n` seconds.
pub fn push_variant(name: &str, n: u64) -> Vec<u8> {
    let text = String::from_utf8(fixture(&format!("github/{name}"))).unwrap();
    assert_eq!(
        text.matches("\"pushed_at\": 1700000000").count(),
        1,
        "{name} has one pushed_at"
    );
    text.replace(
        "\"pushed_at\": 1700000000",
        &format!("\"pushed_at\": {}", 1_700_000_000 + n),
    )
    .into_bytes()
}

/// A push of `count` commits to `git_ref` of acme/project-api-v2, listed in the
/// delivery, oldest first: commit `n` has id `first + n` (in hex, 40 digits) and
/// changes `src/{n}.rs`; the push's old head is `first - 1`.
pub fn push_listing(count: u64, first: u64, git_ref: &str) -> Vec<u8> {
    let commits: Vec<serde_json::Value> = (0..count)
        .map(|n| {
            serde_json::json!({
                "id": format!("{:040x}", first + n),
                "message": format!("Commit {n}"),
                "author": {"name": "Mary Doe", "username": "mary"},
                "added": [], "removed": [], "modified": [format!("src/{n}.rs")],
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "ref": git_ref,
        "before": format!("{:040x}", first - 1),
        "after": commits.last().unwrap()["id"],
        "created": false, "deleted": false, "forced": false,
        "commits": commits,
        "head_commit": commits.last().unwrap(),
        "repository": {"full_name": "acme/project-api-v2", "pushed_at": 1_800_000_000},
    }))
    .unwrap()
}

/// The example configuration with the test secret.
pub fn example_config() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gitdispatch.toml");
    let text = std::fs::read_to_string(path).unwrap();
    config_from(&text)
}

pub fn config_from(text: &str) -> Config {
    Config::from_toml_str(text, &|name| {
        (name == "GITHUB_WEBHOOK_SECRET").then(|| SECRET.to_string())
    })
    .unwrap_or_else(|error| panic!("test config: {error}"))
}

pub struct TestApp {
    pub address: String,
    pub queue: Arc<EmbeddedQueue>,
    queue_path: PathBuf,
    /// Holds the queue file for the life of the app.
    _directory: tempfile::TempDir,
    pub shutdown: CancellationToken,
    pub client: reqwest::Client,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The listener as the daemon assembles it (`App::build`, `server::run`), on
/// `127.0.0.1:0`, with the embedded queue in a directory of its own.
/// The runtime `config` makes, as a daemon starting with it has.
pub fn runtime_of(config: &Config) -> gitdispatch::runtime::Current {
    let planner = std::sync::Arc::new(gitdispatch::plan::Planner::new(config).unwrap());
    gitdispatch::runtime::Current::new(
        gitdispatch::runtime::Runtime::build(config, planner, None).unwrap(),
    )
}

pub async fn spawn_app(mut config: Config) -> TestApp {
    let directory = tempfile::tempdir().unwrap();
    let queue_path = directory.path().join("queue.db");
    config.queue = QueueConfig::Embedded {
        path: queue_path.clone(),
        visibility_timeout_secs: 30,
        max_receives: 5,
    };
    // The journal in the test's own directory, not the working directory's `var/`
    // that every test would share.
    if config.ledger == gitdispatch::config::LedgerConfig::default() {
        config.ledger = gitdispatch::config::LedgerConfig::Sqlite {
            path: directory.path().join("ledger.db"),
        };
    }
    let compiled = gitdispatch::app::compile(config).expect("the test config compiles");
    let app = App::build(compiled, false).await.unwrap();
    let OpenedQueue::Embedded(queue) = &app.queue else {
        unreachable!("the queue was set to the embedded one");
    };
    let queue = queue.clone();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(server::run(
        listener,
        app.listener_state(shutdown.clone(), None),
        shutdown.clone(),
    ));
    TestApp {
        address,
        queue,
        queue_path,
        _directory: directory,
        shutdown,
        client: reqwest::Client::new(),
    }
}

/// A GitHub-shaped delivery, signed with [`SECRET`] unless told otherwise.
pub struct Delivery {
    pub event: String,
    pub id: String,
    pub body: Vec<u8>,
    pub content_type: String,
    pub signature: Option<String>,
}

impl Delivery {
    pub fn new(event: &str, body: Vec<u8>) -> Delivery {
        let signature = Some(sign(SECRET.as_bytes(), &body));
        Delivery {
            event: event.to_string(),
            id: uuid::Uuid::new_v4().to_string(),
            body,
            content_type: "application/json".to_string(),
            signature,
        }
    }

    pub fn fixture(event: &str, name: &str) -> Delivery {
        Delivery::new(event, fixture(&format!("github/{name}")))
    }
}

impl Delivery {
    /// POSTs the delivery to `url` with GitHub's headers; an error when nothing
    /// answered.
    pub async fn post(
        &self,
        client: &reqwest::Client,
        url: &str,
    ) -> Result<Answer, reqwest::Error> {
        let mut request = client
            .post(url)
            .header("content-type", &self.content_type)
            .header("x-github-event", &self.event)
            .header("x-github-delivery", &self.id)
            .body(self.body.clone());
        if let Some(signature) = &self.signature {
            request = request.header("x-hub-signature-256", signature);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok(Answer { status, body })
    }
}

pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl TestApp {
    /// Every job waiting in the queue file, in send order, read straight from SQLite.
    pub fn queued_jobs(&self) -> Vec<Job> {
        let connection = rusqlite::Connection::open(&self.queue_path).unwrap();
        let mut statement = connection
            .prepare("SELECT body FROM jobs ORDER BY seq")
            .unwrap();
        statement
            .query_map([], |row| row.get::<_, String>(0))
            .unwrap()
            .map(|body| match Job::read(&body.unwrap()) {
                gitdispatch::job::Read::Job(job) => *job,
                other => panic!("not a job: {other:?}"),
            })
            .collect()
    }

    pub async fn post_github(&self, delivery: &Delivery) -> Answer {
        delivery
            .post(&self.client, &format!("{}/webhooks/github", self.address))
            .await
            .expect("the server answers")
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

/// Names an answer reports as queued.
pub fn executions(answer: &Answer) -> Vec<String> {
    answer.body["executions"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .map(|name| name.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}
