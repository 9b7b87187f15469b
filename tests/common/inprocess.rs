//! The listener and a worker as the daemon assembles them (`App::build`), in the test's
//! process: deliveries go over a socket, jobs are drained with `run_once`, and what is
//! queued is read straight from the embedded queue's file.

use std::path::PathBuf;
use std::sync::Arc;

use gitdispatch::app::App;
use gitdispatch::execution::ExecutionRequest;
use gitdispatch::job::{Job, JobKind, Read};
use gitdispatch::worker::Worker;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Delivery, SECRET};

pub struct Harness {
    pub url: String,
    pub queue_path: PathBuf,
    pub worker: Arc<Worker>,
    pub app: App,
    pub text: String,
    shutdown: CancellationToken,
    /// The directory the configuration's files live in, when the harness owns it.
    directory: Option<tempfile::TempDir>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Harness {
    /// Assembles the configuration `text`, whose embedded queue is at `queue_path`.
    pub async fn start(text: &str, queue_path: PathBuf) -> Harness {
        let mut compiled = gitdispatch::app::from_toml_str(text, &|name| {
            (name == "GITHUB_WEBHOOK_SECRET").then(|| SECRET.to_string())
        })
        .unwrap_or_else(|error| panic!("{error}"));
        // The journal beside the queue, not in the working directory's `var/`.
        if compiled.config.ledger == gitdispatch::config::LedgerConfig::default() {
            compiled.config.ledger = gitdispatch::config::LedgerConfig::Sqlite {
                path: queue_path.with_file_name("ledger.db"),
            };
        }
        let app = App::build(compiled, true).await.unwrap();
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhooks/github", listener.local_addr().unwrap());
        tokio::spawn(gitdispatch::server::run(
            listener,
            app.listener_state(shutdown.clone(), None),
            shutdown.clone(),
        ));
        Harness {
            url,
            queue_path,
            worker: app.worker().unwrap(),
            app,
            text: text.to_string(),
            shutdown,
            directory: None,
        }
    }

    /// Keeps `directory` (where the configuration's files are) for the harness's life.
    pub fn owning(mut self, directory: tempfile::TempDir) -> Harness {
        self.directory = Some(directory);
        self
    }

    /// Every job waiting, in send order.
    pub fn queued(&self) -> Vec<Job> {
        let connection = rusqlite::Connection::open(&self.queue_path).unwrap();
        let mut statement = connection
            .prepare("SELECT body FROM jobs ORDER BY seq")
            .unwrap();
        statement
            .query_map([], |row| row.get::<_, String>(0))
            .unwrap()
            .map(|body| match Job::read(&body.unwrap()) {
                Read::Job(job) => *job,
                other => panic!("not a job: {other:?}"),
            })
            .collect()
    }

    /// The start jobs waiting, in send order.
    pub fn starts(&self) -> Vec<ExecutionRequest> {
        self.queued()
            .into_iter()
            .filter_map(|job| match job.kind {
                JobKind::Start { request } => Some(request),
                _ => None,
            })
            .collect()
    }

    /// Posts a push; the answer's status and body.
    pub async fn post_push(&self, body: Vec<u8>) -> (u16, Value) {
        let answer = Delivery::new("push", body)
            .post(&reqwest::Client::new(), &self.url)
            .await
            .unwrap();
        (answer.status, answer.body)
    }
}
