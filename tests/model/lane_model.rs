//! A serial lane held against a plain model. Random interleavings of pushes to two
//! repositories and two branches, manual runs, replays, pauses and resumes, with
//! supersede on or off, executions ending in success or failure, and the worker
//! restarted or crashed in between, all through the real listener (HTTP on a socket),
//! the admission step, the embedded queue, the worker and the local executor, with
//! reports to a stand-in for GitHub. Then the lane is run dry and checked:
//!
//! - never two executions of the lane at once, and no execution started twice;
//! - every queued job runs, or is superseded by a job that runs and deploys the same
//!   project (repository) from the same ref, queued after it;
//! - the lane starts its jobs in the order they were queued;
//! - no commit shows success that no successful execution carried;
//! - a replay supersedes nothing and is superseded by nothing: the newest push of each
//!   repository and ref always runs.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::SECRET;
use common::github::{self, FakeGithub};
use gitdispatch::app::{App, OpenedQueue};
use gitdispatch::journal::{JobState, Lane};
use gitdispatch::source::github::sign;
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "lane-model-operator-token";
const REPOSITORIES: [&str; 2] = ["acme/api", "acme/web"];
const BRANCHES: [&str; 2] = ["main", "dev"];

#[derive(Debug, Clone)]
enum Op {
    Push {
        repository: usize,
        branch: usize,
        commits: usize,
    },
    Trigger,
    ReplayFailed,
    Pause,
    Resume,
    End {
        success: bool,
    },
    Restart,
    Crash,
    Wait,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..2usize, 1..=3usize).prop_map(|(repository, branch, commits)| Op::Push {
            repository,
            branch,
            commits
        }),
        1 => Just(Op::Trigger),
        1 => Just(Op::ReplayFailed),
        1 => Just(Op::Pause),
        2 => Just(Op::Resume),
        4 => any::<bool>().prop_map(|success| Op::End { success }),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
        2 => Just(Op::Wait),
    ]
}

/// The script every execution runs: it says when it starts, waits until the test
/// tells it how to end, then says so and ends that way.
fn script(control: &Path, log: &Path) -> String {
    format!(
        "echo \"start $GITDISPATCH_EXECUTION_NAME\" >> {log}; \
         while [ ! -e {control}/$GITDISPATCH_EXECUTION_NAME ]; do sleep 0.01; done; \
         code=$(cat {control}/$GITDISPATCH_EXECUTION_NAME); \
         echo \"end $GITDISPATCH_EXECUTION_NAME $code\" >> {log}; exit $code",
        control = control.display(),
        log = log.display()
    )
}

fn config(
    directory: &Path,
    server: &wiremock::MockServer,
    supersede: bool,
    worker: &str,
) -> String {
    let dir = directory.display();
    let script = script(&directory.join("control"), &directory.join("runs.log"));
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[github]
webhook_secrets = ["${{GITHUB_WEBHOOK_SECRET}}"]
{github}

[api]
tokens = ["{TOKEN}"]

[ledger]
type = "sqlite"
path = "{dir}/ledger.db"

[queue]
type = "embedded"
path = "{dir}/queue.db"
visibility_timeout_secs = 1
max_receives = 1000

[worker]
receive_wait_secs = 0
poll_interval_secs = 1
retry_initial_ms = 50
retry_max_secs = 1
shutdown_grace_secs = 0
{worker}

[executor]
type = "local"
log_dir = "{dir}/log"
path = "{dir}/executions.db"

[[pipelines]]
name = "deploy"
command = ["sh", "-c", {script}]
concurrency = "serial"
supersede = {supersede}

[[routes]]
pipeline = "deploy"
events = ["push"]
environment = "production"
commits = "each"
"#,
        github = github::token_section(server),
        script = Value::String(script),
    )
}

/// A start the model knows was queued.
#[derive(Debug, Clone)]
struct Queued {
    name: String,
    /// Repository and ref of a push; `None` for a manual run.
    pushed: Option<(String, String)>,
    commit: Option<String>,
    replay_of: Option<String>,
}

struct Lab {
    app: App,
    url: String,
    client: reqwest::Client,
    directory: PathBuf,
    github: Arc<Mutex<FakeGithub>>,
    worker: Option<(CancellationToken, JoinHandle<()>)>,
    shutdown: CancellationToken,
    queued: Vec<Queued>,
    pushes: usize,
    /// The last commit pushed to each repository and branch.
    heads: HashMap<(usize, usize), String>,
}

impl Lab {
    fn start_worker(&mut self) {
        let worker = self.app.worker().unwrap();
        let stop = CancellationToken::new();
        let handle = tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = worker.run(stop).await;
            }
        });
        self.worker = Some((stop, handle));
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.url))
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

    /// The lines the executions wrote: ("start" | "end", name, exit code).
    fn runs(&self) -> Vec<(String, String, Option<i32>)> {
        std::fs::read_to_string(self.directory.join("runs.log"))
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let mut parts = line.split(' ');
                (
                    parts.next().unwrap().to_string(),
                    parts.next().unwrap().to_string(),
                    parts.next().and_then(|code| code.parse().ok()),
                )
            })
            .collect()
    }

    /// Executions started and not ended.
    fn running(&self) -> Vec<String> {
        let mut running = Vec::new();
        for (what, name, _) in self.runs() {
            if what == "start" {
                running.push(name);
            } else {
                running.retain(|known| *known != name);
            }
        }
        running
    }

    fn end(&self, name: &str, success: bool) {
        let path = self.directory.join("control").join(name);
        if !path.exists() {
            std::fs::write(path, if success { "0" } else { "1" }).unwrap();
        }
    }

    async fn push(&mut self, repository: usize, branch: usize, commits: usize) {
        let before = self
            .heads
            .get(&(repository, branch))
            .cloned()
            .unwrap_or_else(|| {
                format!(
                    "{:040x}",
                    0xbef0_0000_u64 + (repository * 2 + branch) as u64
                )
            });
        let shas: Vec<String> = (0..commits)
            .map(|_| {
                self.pushes += 1;
                format!("{:040x}", 0xc0ff_ee00_0000_u64 + self.pushes as u64)
            })
            .collect();
        let commit = |sha: &String| {
            json!({"id": sha, "message": format!("Commit {sha}"),
                   "author": {"name": "Mary Doe", "username": "mary"},
                   "added": [], "removed": [], "modified": ["src/lib.rs"]})
        };
        let body = serde_json::to_vec(&json!({
            "ref": format!("refs/heads/{}", BRANCHES[branch]),
            "before": before,
            "after": shas.last().unwrap(),
            "created": false, "deleted": false, "forced": false,
            "commits": shas.iter().map(commit).collect::<Vec<_>>(),
            "head_commit": commit(shas.last().unwrap()),
            "repository": {"full_name": REPOSITORIES[repository], "pushed_at": 1_800_000_000 + self.pushes},
        }))
        .unwrap();
        let response = self
            .client
            .post(format!("{}/webhooks/github", self.url))
            .header("content-type", "application/json")
            .header("x-github-event", "push")
            .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
            .header("x-hub-signature-256", sign(SECRET.as_bytes(), &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        let names = answer["executions"].as_array().unwrap();
        assert_eq!(names.len(), commits, "{answer}");
        for (name, sha) in names.iter().zip(&shas) {
            self.queued.push(Queued {
                name: name.as_str().unwrap().to_string(),
                pushed: Some((
                    REPOSITORIES[repository].to_string(),
                    format!("refs/heads/{}", BRANCHES[branch]),
                )),
                commit: Some(sha.clone()),
                replay_of: None,
            });
        }
        self.heads
            .insert((repository, branch), shas.last().unwrap().clone());
    }

    async fn apply(&mut self, op: &Op) {
        match op {
            Op::Push {
                repository,
                branch,
                commits,
            } => self.push(*repository, *branch, *commits).await,
            Op::Trigger => {
                let (status, answer) = self
                    .post(
                        "/v1/executions",
                        json!({"pipeline": "deploy", "environment": "production"}),
                    )
                    .await;
                assert_eq!(status, 202, "{answer}");
                self.queued.push(Queued {
                    name: answer["execution"].as_str().unwrap().to_string(),
                    pushed: None,
                    commit: None,
                    replay_of: None,
                });
            }
            Op::ReplayFailed => {
                let since = "2000-01-01T00:00:00Z";
                let (status, answer) = self
                    .post(
                        "/v1/replays",
                        json!({"pipeline": "deploy", "since": since, "failed_only": true}),
                    )
                    .await;
                match status {
                    202 => {
                        for replay in answer["replays"].as_array().unwrap() {
                            let original = replay["original"].as_str().unwrap();
                            let commit = self
                                .queued
                                .iter()
                                .find(|known| known.name == original)
                                .and_then(|known| known.commit.clone());
                            self.queued.push(Queued {
                                name: replay["name"].as_str().unwrap().to_string(),
                                pushed: None,
                                commit,
                                replay_of: Some(original.to_string()),
                            });
                        }
                    }
                    422 => assert!(
                        answer["error"]
                            .as_str()
                            .unwrap()
                            .starts_with("nothing to replay"),
                        "{answer}"
                    ),
                    other => panic!("a replay answered {other}: {answer}"),
                }
            }
            Op::Pause => {
                let (status, answer) = self
                    .post(
                        "/v1/lanes/deploy/production/pause",
                        json!({"reason": "the model pauses"}),
                    )
                    .await;
                assert_eq!(status, 200, "{answer}");
            }
            Op::Resume => {
                let (status, answer) = self
                    .post("/v1/lanes/deploy/production/resume", json!({}))
                    .await;
                assert_eq!(status, 200, "{answer}");
            }
            Op::End { success } => {
                for name in self.running() {
                    self.end(&name, *success);
                }
            }
            Op::Restart => {
                if let Some((stop, handle)) = self.worker.take() {
                    stop.cancel();
                    handle.await.unwrap();
                }
                self.start_worker();
            }
            Op::Crash => {
                if let Some((_, handle)) = self.worker.take() {
                    handle.abort();
                    let _ = handle.await;
                }
                self.start_worker();
            }
            Op::Wait => tokio::time::sleep(Duration::from_millis(300)).await,
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    /// Resumes the lane and ends every execution that starts, with success, until the
    /// queue is empty and nothing runs.
    async fn run_dry(&mut self) {
        self.apply(&Op::Resume).await;
        let OpenedQueue::Embedded(queue) = &self.app.queue else {
            unreachable!("the model runs on the embedded queue");
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            for name in self.running() {
                self.end(&name, true);
            }
            let depth = queue.depth().await.unwrap();
            if depth.visible + depth.in_flight == 0 && self.running().is_empty() {
                // Twice, a moment apart: a report may be queued as the last job ends.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let depth = queue.depth().await.unwrap();
                if depth.visible + depth.in_flight == 0 && self.running().is_empty() {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the lane never ran dry: {depth:?}, running {:?}",
                self.running()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn check(&self, supersede: bool) -> Result<(), TestCaseError> {
        let runs = self.runs();
        // Never two at once, none started twice.
        let mut running: Option<String> = None;
        let mut started = HashSet::new();
        let mut outcome: HashMap<String, i32> = HashMap::new();
        for (what, name, code) in &runs {
            if what == "start" {
                prop_assert!(
                    running.is_none(),
                    "{name} started while {running:?} ran: {runs:?}"
                );
                prop_assert!(started.insert(name.clone()), "{name} started twice");
                running = Some(name.clone());
            } else {
                prop_assert_eq!(running.as_deref(), Some(name.as_str()), "{:?}", runs);
                running = None;
                outcome.insert(name.clone(), code.unwrap_or(-1));
            }
        }
        // In queue order.
        let first_starts: Vec<usize> = runs
            .iter()
            .filter(|(what, _, _)| what == "start")
            .filter_map(|(_, name, _)| self.queued.iter().position(|known| known.name == *name))
            .collect();
        prop_assert!(
            first_starts.windows(2).all(|pair| pair[0] < pair[1]),
            "started out of queue order: {:?}",
            runs
        );
        // Every queued job ran, or a newer job of its repository and ref that ran
        // carries it.
        let journal = self.app.journal.clone();
        let lane = Lane {
            pipeline: "deploy".into(),
            environment: "production".into(),
        };
        let jobs: HashMap<String, gitdispatch::journal::LaneJob> = journal
            .lane_jobs(Some(&lane))
            .await
            .unwrap()
            .into_iter()
            .map(|job| (job.name.clone(), job))
            .collect();
        let position = |name: &str| self.queued.iter().position(|known| known.name == name);
        let mut carried_by: HashMap<String, String> = HashMap::new();
        for queued in &self.queued {
            let job = jobs
                .get(&queued.name)
                .unwrap_or_else(|| panic!("{} is not in the journal", queued.name));
            if started.contains(&queued.name) {
                prop_assert_eq!(job.state, JobState::Ended, "{:?}", job);
                continue;
            }
            prop_assert!(supersede, "{} never ran, with supersede off", queued.name);
            prop_assert_eq!(job.state, JobState::Superseded, "{:?}", job);
            prop_assert!(queued.replay_of.is_none(), "a replay was superseded");
            prop_assert!(queued.pushed.is_some(), "a manual run was superseded");
            let mut carrier = job.status.clone().unwrap();
            // Follow the carriers to the one that ran.
            for _ in 0..self.queued.len() {
                if started.contains(&carrier) {
                    break;
                }
                carrier = jobs[&carrier].status.clone().unwrap();
            }
            prop_assert!(
                started.contains(&carrier),
                "{} carried by nothing that ran",
                queued.name
            );
            let carrier_queued = &self.queued[position(&carrier).unwrap()];
            prop_assert_eq!(
                &carrier_queued.pushed,
                &queued.pushed,
                "same project and ref"
            );
            prop_assert!(
                carrier_queued.replay_of.is_none(),
                "a replay carried a commit"
            );
            prop_assert!(
                position(&carrier) > position(&queued.name),
                "carried by a newer one"
            );
            carried_by.insert(queued.name.clone(), carrier);
        }
        // The newest push of each repository and ref ran.
        for head in self.heads.values() {
            let newest = self
                .queued
                .iter()
                .find(|known| known.commit.as_ref() == Some(head) && known.replay_of.is_none())
                .unwrap();
            prop_assert!(
                started.contains(&newest.name),
                "the newest push {} never ran",
                newest.name
            );
        }
        // A replay does not change which commit a lane deploys last: of each
        // repository and ref, the last execution to start deploys its newest push.
        let pushed_of = |queued: &Queued| match &queued.replay_of {
            Some(original) => self
                .queued
                .iter()
                .find(|known| known.name == *original)
                .and_then(|known| known.pushed.clone()),
            None => queued.pushed.clone(),
        };
        for ((repository, branch), head) in &self.heads {
            let wanted = Some((
                REPOSITORIES[*repository].to_string(),
                format!("refs/heads/{}", BRANCHES[*branch]),
            ));
            let last = runs
                .iter()
                .filter(|(what, _, _)| what == "start")
                .filter_map(|(_, name, _)| self.queued.iter().find(|known| known.name == *name))
                .rfind(|queued| pushed_of(queued) == wanted);
            let last_commit = last.and_then(|queued| queued.commit.clone());
            prop_assert_eq!(
                last_commit.as_ref(),
                Some(head),
                "{:?} ends on another commit than its newest: {:?}",
                wanted,
                runs
            );
        }
        // No success shown for a commit that no successful execution carried.
        let mut succeeded_commits: HashSet<String> = HashSet::new();
        for queued in &self.queued {
            let ran = carried_by.get(&queued.name).unwrap_or(&queued.name);
            if outcome.get(ran) == Some(&0)
                && let Some(commit) = &queued.commit
            {
                succeeded_commits.insert(commit.clone());
            }
        }
        let fake = self.github.lock().unwrap();
        for (sha, statuses) in &fake.statuses {
            let last = statuses
                .iter()
                .find(|status| status["context"] == "gitdispatch/deploy/production");
            if let Some(last) = last
                && last["state"] == "success"
            {
                prop_assert!(
                    succeeded_commits.contains(sha),
                    "{sha} shows success ({}) with no successful execution carrying it",
                    last["description"]
                );
            }
        }
        Ok(())
    }
}

/// The listener on a socket and the application, on the lane's configuration; no
/// worker yet.
async fn open_lab(directory: &Path, supersede: bool, worker: &str) -> Lab {
    std::fs::create_dir_all(directory.join("control")).unwrap();
    let github = Arc::new(Mutex::new(FakeGithub::default()));
    let server = github::serve(github.clone()).await;
    let text = config(directory, &server, supersede, worker);
    let compiled = gitdispatch::app::from_toml_str(&text, &|name| {
        (name == "GITHUB_WEBHOOK_SECRET").then(|| SECRET.to_string())
    })
    .unwrap_or_else(|error| panic!("{error}"));
    let app = App::build(compiled, true).await.unwrap();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(gitdispatch::server::run(
        listener,
        app.listener_state(shutdown.clone(), None),
        shutdown.clone(),
    ));
    Lab {
        app,
        url,
        client: reqwest::Client::new(),
        directory: directory.to_path_buf(),
        github,
        worker: None,
        shutdown,
        queued: Vec::new(),
        pushes: 0,
        heads: HashMap::new(),
    }
}

async fn run_case(ops: Vec<Op>, supersede: bool) -> Result<(), TestCaseError> {
    let directory = tempfile::tempdir().unwrap();
    let mut lab = open_lab(directory.path(), supersede, "").await;
    lab.start_worker();
    for op in &ops {
        lab.apply(op).await;
    }
    lab.run_dry().await;
    let checked = lab.check(supersede).await;
    if let Some((stop, handle)) = lab.worker.take() {
        stop.cancel();
        let _ = handle.await;
    }
    lab.shutdown.cancel();
    checked
}

/// A lane resumed while some of its jobs are parked and the rest still wait on the
/// queue: the parked ones must not be put back behind the others. The worker takes one
/// job at a time here, so that the first is parked while two wait behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_resumed_with_jobs_still_queued_keeps_its_order() {
    let directory = tempfile::tempdir().unwrap();
    let mut lab = open_lab(directory.path(), false, "batch_size = 1").await;
    lab.apply(&Op::Pause).await;
    lab.push(0, 0, 3).await;
    let worker = lab.app.worker().unwrap();
    assert_eq!(worker.run_once().await.unwrap(), 1, "one job taken: parked");
    let lane = Lane {
        pipeline: "deploy".into(),
        environment: "production".into(),
    };
    let parked = lab.app.journal.parked(&lane, 10).await.unwrap();
    assert_eq!(parked.len(), 1, "the first job is parked");
    assert_eq!(parked[0].name, lab.queued[0].name);
    lab.start_worker();
    lab.push(1, 0, 1).await;
    lab.run_dry().await;
    lab.check(false).await.unwrap();
    let starts: Vec<String> = lab
        .runs()
        .into_iter()
        .filter(|(what, _, _)| what == "start")
        .map(|(_, name, _)| name)
        .collect();
    let queued: Vec<String> = lab.queued.iter().map(|known| known.name.clone()).collect();
    assert_eq!(starts, queued);
    if let Some((stop, handle)) = lab.worker.take() {
        stop.cancel();
        let _ = handle.await;
    }
    lab.shutdown.cancel();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_serial_lane_runs_one_at_a_time_and_loses_no_commit(
        ops in proptest::collection::vec(op(), 4..24),
        supersede in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run_case(ops, supersede))?;
    }
}
