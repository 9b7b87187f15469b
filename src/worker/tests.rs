//! The worker against the embedded queue with paused time, and an executor scripted
//! to fail, run long or not be described yet.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::time::Instant;

use super::*;
use crate::config::Config;
use crate::event::{
    Commit, CommitSha, DeliveryId, Event, EventKind, Occurrence, Push, RefName, Source,
};
use crate::execution::ExecutionRequest;
use crate::execution::name::ExecutionName;
use crate::executor::{Execution, ExecutionStatus, ExecutorError, Started};
use crate::plan::Planner;
use crate::queue::embedded::{EmbeddedQueue, EmbeddedSettings};
use crate::queue::{Message, enqueue};

/// An executor that answers from a script: errors to give before a start succeeds,
/// and how long an execution runs. It stands in for a backend only here, to drive
/// the worker's retry and hold paths with paused time.
#[derive(Default)]
struct ScriptedExecutor {
    errors: Mutex<HashMap<String, VecDeque<ExecutorError>>>,
    attempts: Mutex<Vec<(String, Instant)>>,
    started: Mutex<Vec<(String, Instant)>>,
    runs_for: Duration,
    /// Answers to give to describes before the real one.
    describe_errors: Mutex<VecDeque<ExecutorError>>,
}

#[async_trait]
impl Executor for ScriptedExecutor {
    async fn start(&self, request: &ExecutionRequest) -> Result<Started, ExecutorError> {
        let name = request.name.to_string();
        self.attempts
            .lock()
            .unwrap()
            .push((name.clone(), Instant::now()));
        if let Some(error) = self
            .errors
            .lock()
            .unwrap()
            .get_mut(&name)
            .and_then(VecDeque::pop_front)
        {
            return Err(error);
        }
        let mut started = self.started.lock().unwrap();
        if started.iter().any(|(existing, _)| *existing == name) {
            return Ok(Started::Existing(name));
        }
        started.push((name.clone(), Instant::now()));
        Ok(Started::New(name))
    }

    async fn describe(
        &self,
        _pipeline: &str,
        name: &ExecutionName,
    ) -> Result<Execution, ExecutorError> {
        if let Some(error) = self.describe_errors.lock().unwrap().pop_front() {
            return Err(error);
        }
        let started = self.started.lock().unwrap();
        let (_, at) = started
            .iter()
            .find(|(existing, _)| existing == name.as_str())
            .ok_or_else(|| ExecutorError::permanent("unknown"))?;
        let status = if at.elapsed() >= self.runs_for {
            ExecutionStatus::Succeeded
        } else {
            ExecutionStatus::Running
        };
        Ok(Execution {
            id: name.to_string(),
            status,
            detail: None,
        })
    }
}

/// Plans a push of `commits` commits to a pipeline of the given concurrency.
fn requests(concurrency: &str, commits: u8) -> Vec<ExecutionRequest> {
    let text = format!(
        "[github]\nwebhook_secrets = [\"s\"]\n[[pipelines]]\nname = \"deploy\"\n\
         command = [\"true\"]\nconcurrency = \"{concurrency}\"\n\
         [[routes]]\npipeline = \"deploy\"\nenvironment = \"acceptance\"\n"
    );
    let config = Config::from_toml_str(&text, &|_| None).unwrap();
    let planner = Planner::new(&config).unwrap();
    let commits: Vec<Commit> = (1..=commits)
        .map(|n| Commit {
            id: CommitSha::parse(&format!("{n:040x}")).unwrap(),
            message: format!("commit {n}"),
            author: "a".into(),
            changed_paths: None,
        })
        .collect();
    let event = Event {
        source: Source::Github,
        delivery: DeliveryId::parse("d").unwrap(),
        occurrence: Occurrence::from_parts(&["d"]),
        repository: "acme/api".into(),
        kind: EventKind::Push(Push {
            git_ref: RefName::parse("refs/heads/main").unwrap(),
            before: CommitSha::parse(&"f".repeat(40)).unwrap(),
            after: commits.last().unwrap().id.clone(),
            commits,
            created: false,
            deleted: false,
            forced: false,
            commits_truncated: false,
            commits_listed: true,
            head_commit: None,
        }),
    };
    planner.plan(&event).unwrap().requests
}

fn settings() -> WorkerSettings {
    WorkerSettings {
        concurrency: 8,
        batch_size: 10,
        receive_wait: Duration::from_secs(1),
        starts_per_second: 1000,
        start_burst: 1000,
        poll_interval: Duration::from_secs(1),
        retry_initial: Duration::from_secs(2),
        retry_max: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(5),
        max_hold: Duration::from_secs(11 * 3600),
    }
}

/// A worker on an embedded queue of its own, driven by [`Worker::run_once`].
struct Harness {
    queue: Arc<EmbeddedQueue>,
    worker: Arc<Worker>,
    _directory: tempfile::TempDir,
}

impl Harness {
    async fn new(executor: Arc<ScriptedExecutor>, settings: WorkerSettings) -> Harness {
        let directory = tempfile::tempdir().unwrap();
        let queue = Arc::new(
            EmbeddedQueue::open(EmbeddedSettings {
                path: directory.path().join("queue.db"),
                visibility_timeout: Duration::from_secs(10),
                max_receives: 6,
            })
            .await
            .unwrap(),
        );
        let worker = Arc::new(Worker::new(
            WorkerParts::new(queue.clone(), executor, settings, runtime("")),
            &Metrics::default(),
        ));
        Harness {
            queue,
            worker,
            _directory: directory,
        }
    }

    async fn enqueue(&self, requests: Vec<ExecutionRequest>) {
        let jobs: Vec<Job> = requests.into_iter().map(Job::start).collect();
        enqueue(self.queue.as_ref(), &jobs).await.unwrap();
    }

    /// Runs the worker until the queue holds nothing, letting (paused) time pass while a
    /// released job waits out its backoff.
    async fn drain(&self) {
        loop {
            let handled = self.worker.run_once().await.unwrap();
            let depth = self.queue.depth().await.unwrap();
            if depth.visible + depth.in_flight == 0 {
                return;
            }
            if handled == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The worker's long-running loop, for what only it does (shutdown).
    fn run(
        &self,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<Result<(), QueueError>>,
    ) {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(self.worker.clone().run(shutdown.clone()));
        (shutdown, handle)
    }
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_are_retried_with_growing_backoff() {
    let requests = requests("parallel", 1);
    let name = requests[0].name.to_string();
    let executor = Arc::new(ScriptedExecutor::default());
    executor.errors.lock().unwrap().insert(
        name.clone(),
        (0..3)
            .map(|_| ExecutorError::retryable("throttled"))
            .collect(),
    );
    let harness = Harness::new(executor.clone(), settings()).await;
    harness.enqueue(requests).await;
    harness.drain().await;
    let attempts: Vec<Instant> = executor
        .attempts
        .lock()
        .unwrap()
        .iter()
        .map(|a| a.1)
        .collect();
    assert_eq!(attempts.len(), 4, "three failures, then the start");
    // Backoff after receive n is at least half of 2 s × 2^(n-1).
    for (index, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let at_least = Duration::from_secs(2) * 2u32.pow(index as u32) / 2;
        assert!(gap >= at_least, "retry {index}: {gap:?} < {at_least:?}");
    }
    assert_eq!(
        executor.started.lock().unwrap().len(),
        1,
        "started, then acked"
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_are_dead_lettered_with_the_reason() {
    let requests = requests("parallel", 2);
    let doomed = requests[0].name.to_string();
    let executor = Arc::new(ScriptedExecutor::default());
    executor.errors.lock().unwrap().insert(
        doomed.clone(),
        VecDeque::from([ExecutorError::permanent("state machine does not exist")]),
    );
    let harness = Harness::new(executor.clone(), settings()).await;
    harness.enqueue(requests).await;
    harness.drain().await;
    assert_eq!(executor.started.lock().unwrap().len(), 1);
    let dead = harness.queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, doomed);
    assert_eq!(dead[0].reason, "state machine does not exist");
}

#[tokio::test(start_paused = true)]
async fn serial_jobs_run_one_after_another_in_commit_order() {
    let requests = requests("serial", 4);
    let names: Vec<String> = requests.iter().map(|r| r.name.to_string()).collect();
    let executor = Arc::new(ScriptedExecutor {
        runs_for: Duration::from_secs(30),
        ..ScriptedExecutor::default()
    });
    let harness = Harness::new(executor.clone(), settings()).await;
    harness.enqueue(requests).await;
    harness.drain().await;
    let started = executor.started.lock().unwrap().clone();
    let order: Vec<String> = started.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(order, names, "commit order");
    for pair in started.windows(2) {
        assert!(
            pair[1].1 - pair[0].1 >= Duration::from_secs(30),
            "the next started before the previous ended"
        );
    }
    // Held for 30 s each, longer than the 10 s visibility timeout: the heartbeat
    // kept each job from being handed out twice.
    let attempts = executor.attempts.lock().unwrap().len();
    assert_eq!(attempts, 4);
}

#[tokio::test(start_paused = true)]
async fn a_held_execution_that_cannot_be_described_yet_is_not_dead_lettered() {
    // Step Functions' reads are eventually consistent: right after a start, the
    // execution may not show; a credential may expire meanwhile.
    let requests = requests("serial", 2);
    let executor = Arc::new(ScriptedExecutor {
        runs_for: Duration::from_secs(5),
        describe_errors: Mutex::new(VecDeque::from([
            ExecutorError::permanent("ExecutionDoesNotExist"),
            ExecutorError::permanent("ExecutionDoesNotExist"),
            ExecutorError::retryable("ExpiredTokenException"),
        ])),
        ..ScriptedExecutor::default()
    });
    let harness = Harness::new(executor.clone(), settings()).await;
    harness.enqueue(requests).await;
    harness.drain().await;
    let started = executor.started.lock().unwrap().clone();
    assert_eq!(started.len(), 2);
    assert!(
        started[1].1 - started[0].1 >= Duration::from_secs(5),
        "the second started only after the first ended"
    );
    assert!(harness.queue.dead_letters().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_lane_retries_its_head_in_place_and_dead_letters_it_after_max_receives() {
    let requests = requests("serial", 2);
    let head = requests[0].name.to_string();
    let executor = Arc::new(ScriptedExecutor::default());
    executor.errors.lock().unwrap().insert(
        head.clone(),
        (0..10)
            .map(|_| ExecutorError::retryable("throttled"))
            .collect(),
    );
    let harness = Harness::new(executor.clone(), settings()).await;
    harness.enqueue(requests).await;
    harness.drain().await;
    let dead = harness.queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, head);
    assert_eq!(dead[0].receive_count, 1, "retried in place, received once");
    assert!(dead[0].reason.contains("in 6 tries"), "{}", dead[0].reason);
    assert_eq!(
        executor.started.lock().unwrap().len(),
        1,
        "the next one ran"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_jobs_that_outlive_the_grace_period() {
    let requests = requests("serial", 1);
    let executor = Arc::new(ScriptedExecutor {
        runs_for: Duration::from_secs(3600),
        ..ScriptedExecutor::default()
    });
    let harness = Harness::new(executor.clone(), settings()).await;
    harness.enqueue(requests).await;
    let (shutdown, worker) = harness.run();
    while executor.started.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    let depth = harness.queue.depth().await.unwrap();
    assert_eq!(
        depth.visible, 1,
        "the held job is back on the queue at once"
    );
}

#[tokio::test(start_paused = true)]
async fn unreadable_jobs_are_dead_lettered_and_newer_ones_left_for_later() {
    let executor = Arc::new(ScriptedExecutor::default());
    let harness = Harness::new(executor, settings()).await;
    harness
        .queue
        .send(&[
            Message {
                id: "garbage".into(),
                group: None,
                body: "{]".into(),
            },
            Message {
                id: "future".into(),
                group: None,
                body: r#"{"v":2,"type":"start"}"#.into(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(harness.worker.run_once().await.unwrap(), 2);
    let dead = harness.queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.id, "garbage");
    let depth = harness.queue.depth().await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight),
        (0, 1),
        "the newer job waits, released"
    );
}

/// A history that answers from a script: errors first, then the walk. It stands in for
/// a source's API only here, to drive the expand job's retry and dead-letter paths.
struct ScriptedHistory {
    errors: Mutex<VecDeque<crate::source::HistoryError>>,
    commits: Vec<Commit>,
    calls: Mutex<usize>,
}

#[async_trait]
impl crate::source::CommitHistory for ScriptedHistory {
    async fn walk(
        &self,
        _repository: &str,
        _before: &CommitSha,
        _after: &CommitSha,
        max: usize,
        _paths: bool,
    ) -> Result<crate::source::Walk, crate::source::HistoryError> {
        *self.calls.lock().unwrap() += 1;
        if let Some(error) = self.errors.lock().unwrap().pop_front() {
            return Err(error);
        }
        let skip = self.commits.len().saturating_sub(max);
        Ok(crate::source::Walk {
            commits: self.commits[skip..].to_vec(),
            end: if skip > 0 {
                crate::source::WalkEnd::Bound
            } else {
                crate::source::WalkEnd::Reached
            },
        })
    }
}

fn expansion_of(after: u32) -> crate::execution::Expansion {
    crate::execution::Expansion {
        source: Source::CodeCommit,
        delivery: DeliveryId::parse("delivery-e").unwrap(),
        occurrence: Occurrence::from_parts(&["expand", &after.to_string()]),
        repository: "us-east-1/demo".to_string(),
        git_ref: RefName::parse("refs/heads/main").unwrap(),
        before: CommitSha::parse(&format!("{:040x}", 1)).unwrap(),
        after: CommitSha::parse(&format!("{after:040x}")).unwrap(),
        paths: true,
    }
}

async fn expanding_harness(
    executor: Arc<ScriptedExecutor>,
    history: Option<Arc<ScriptedHistory>>,
    max_commits: usize,
) -> Harness {
    let mut harness = Harness::new(executor.clone(), settings()).await;
    let text = "[[pipelines]]\nname = \"deploy\"\ncommand = [\"true\"]\nconcurrency = \"serial\"\n\
                [[routes]]\npipeline = \"deploy\"\nsources = [\"codecommit\"]\nenvironment = \"acceptance\"\n";
    let mut histories: HashMap<Source, Arc<dyn crate::source::CommitHistory>> = HashMap::new();
    if let Some(history) = history {
        histories.insert(Source::CodeCommit, history);
    }
    let mut parts = WorkerParts::new(harness.queue.clone(), executor, settings(), runtime(text));
    parts.histories = histories;
    parts.max_commits = HashMap::from([(Source::CodeCommit, max_commits)]);
    harness.worker = Arc::new(Worker::new(parts, &Metrics::default()));
    harness
}

/// The runtime of a configuration text.
fn runtime(text: &str) -> crate::runtime::Current {
    let config = Config::from_toml_str(text, &|_| None).unwrap();
    let planner = Arc::new(Planner::new(&config).unwrap());
    crate::runtime::Current::new(crate::runtime::Runtime::build(&config, planner, None).unwrap())
}

fn history_of(commits: u32, errors: Vec<crate::source::HistoryError>) -> Arc<ScriptedHistory> {
    Arc::new(ScriptedHistory {
        errors: Mutex::new(errors.into()),
        commits: (2..=commits + 1)
            .map(|n| Commit {
                id: CommitSha::parse(&format!("{n:x}").repeat(40)).unwrap(),
                message: format!("commit {n}"),
                author: "a".into(),
                changed_paths: Some(vec![format!("src/{n}.rs")]),
            })
            .collect(),
        calls: Mutex::new(0),
    })
}

fn started_commits(executor: &ScriptedExecutor) -> Vec<String> {
    executor
        .started
        .lock()
        .unwrap()
        .iter()
        .map(|(name, _)| name.split('-').nth(2).unwrap().to_string())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_expansion_retries_while_the_history_is_unavailable_then_starts_each_commit_in_order() {
    let executor = Arc::new(ScriptedExecutor::default());
    let retryable = || crate::source::HistoryError::Retryable {
        message: "throttled".into(),
        source: None,
    };
    let history = history_of(3, vec![retryable(), retryable()]);
    let harness = expanding_harness(executor.clone(), Some(history.clone()), 100).await;
    enqueue(harness.queue.as_ref(), &[Job::expand(expansion_of(4))])
        .await
        .unwrap();
    harness.drain().await;
    assert_eq!(
        *history.calls.lock().unwrap(),
        3,
        "two failures, then the walk"
    );
    assert_eq!(
        started_commits(&executor),
        ["2222222", "3333333", "4444444"],
        "each commit, oldest first"
    );
    assert!(harness.queue.dead_letters().await.unwrap().is_empty());

    // The bound keeps the newest.
    let executor = Arc::new(ScriptedExecutor::default());
    let harness = expanding_harness(executor.clone(), Some(history_of(3, vec![])), 2).await;
    enqueue(harness.queue.as_ref(), &[Job::expand(expansion_of(4))])
        .await
        .unwrap();
    harness.drain().await;
    assert_eq!(started_commits(&executor), ["3333333", "4444444"]);
}

#[tokio::test(start_paused = true)]
async fn an_expansion_that_cannot_be_read_is_dead_lettered_with_the_reason() {
    let executor = Arc::new(ScriptedExecutor::default());
    let history = history_of(
        3,
        vec![crate::source::HistoryError::Permanent {
            message: "RepositoryDoesNotExistException".into(),
            source: None,
        }],
    );
    let harness = expanding_harness(executor.clone(), Some(history), 100).await;
    enqueue(harness.queue.as_ref(), &[Job::expand(expansion_of(4))])
        .await
        .unwrap();
    harness.drain().await;
    let dead = harness.queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("RepositoryDoesNotExistException"));
    assert!(executor.started.lock().unwrap().is_empty());

    // A worker not told how to read the source's history says so.
    let harness = expanding_harness(executor.clone(), None, 100).await;
    enqueue(harness.queue.as_ref(), &[Job::expand(expansion_of(5))])
        .await
        .unwrap();
    harness.drain().await;
    let dead = harness.queue.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("no commit history"),
        "{}",
        dead[0].reason
    );
}

/// The names the executor was asked to start, in order, repeats included.
fn attempted(executor: &ScriptedExecutor) -> Vec<String> {
    executor
        .attempts
        .lock()
        .unwrap()
        .iter()
        .map(|(name, _)| name.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_expansion_run_again_after_a_lost_ack_queues_the_same_names_and_starts_nothing_twice() {
    let executor = Arc::new(ScriptedExecutor::default());
    let harness = expanding_harness(executor.clone(), Some(history_of(3, vec![])), 100).await;
    enqueue(harness.queue.as_ref(), &[Job::expand(expansion_of(4))])
        .await
        .unwrap();
    harness.drain().await;
    let first = attempted(&executor);
    assert_eq!(first.len(), 3);
    // The worker crashed after queueing the starts and before its ack: the expand job
    // comes back and is run again.
    enqueue(harness.queue.as_ref(), &[Job::expand(expansion_of(4))])
        .await
        .unwrap();
    harness.drain().await;
    let attempts = attempted(&executor);
    assert_eq!(
        attempts[3..],
        first[..],
        "the same names, in the same order"
    );
    assert_eq!(
        started_commits(&executor),
        ["2222222", "3333333", "4444444"],
        "each started once"
    );
}
