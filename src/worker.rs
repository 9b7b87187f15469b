//! The worker: drains the queue into executions.
//!
//! It receives in batches, runs jobs with bounded concurrency, rate-limits starts,
//! retries what can be retried with exponential backoff and jitter, dead-letters what
//! cannot succeed, and holds the jobs of `serial` pipelines until their execution ends.
//!
//! Invariant: a job leaves the queue only after its effect is durable (DESIGN
//! invariant 3): acked after the start succeeded (and, in an ordering group, after the
//! execution ended); released for a retry otherwise. The worker knows the queue and
//! the executor only through their traits.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rand::Rng;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::executor::{ExecutionStatus, Executor, ExecutorError, Started};
use crate::job::{CURRENT_VERSION, Job, JobKind};
use crate::plan::ExecutionRequest;
use crate::queue::{Queue, QueueError, Receipt, Received};
use crate::telemetry::{Metrics, labels};

/// A job this release cannot read (written by a newer one) waits this long before it
/// is offered again, to a worker that may read it.
const NEWER_JOB_DELAY: Duration = Duration::from_secs(60);

/// With short polls (`receive_wait_secs = 0`), how long an empty receive waits before
/// the next one.
const EMPTY_POLL_PAUSE: Duration = Duration::from_millis(200);

/// How long a started execution may fail to be described before its job is released
/// to be looked at again later (never dead-lettered: the execution exists).
const DESCRIBE_PATIENCE: Duration = Duration::from_secs(300);

/// How the worker drains the queue (`[worker]`).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Jobs in progress at once.
    pub concurrency: usize,
    /// Messages asked for per receive.
    pub batch_size: usize,
    /// How long one receive waits for messages.
    pub receive_wait: Duration,
    /// Sustained executions started per second, and the burst allowed above it.
    pub starts_per_second: u32,
    pub start_burst: u32,
    /// How often a held (serial) execution is described.
    pub poll_interval: Duration,
    /// Backoff of the first retry; doubles each receive up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How long shutdown lets jobs in progress finish before releasing them.
    pub shutdown_grace: Duration,
}

/// The worker's counters.
#[derive(Clone, Default)]
struct WorkerMetrics {
    /// Jobs handled, by outcome (`acked`, `retried`, `dead_lettered`, `released`).
    jobs: Family<Vec<(&'static str, String)>, Counter>,
    /// Starts, by pipeline and whether the execution was new or existed already.
    starts: Family<Vec<(&'static str, String)>, Counter>,
    /// Ended executions of held jobs, by pipeline and status.
    executions_ended: Family<Vec<(&'static str, String)>, Counter>,
}

/// Drains a queue into an executor.
pub struct Worker {
    queue: Arc<dyn Queue>,
    executor: Arc<dyn Executor>,
    limiter: DefaultDirectRateLimiter,
    settings: WorkerSettings,
    metrics: WorkerMetrics,
}

/// What a message body turned out to be.
enum Decoded {
    Job(Box<Job>),
    /// Written by a newer release (a higher version or an unknown type).
    Newer(String),
    Invalid(String),
}

#[derive(Deserialize)]
struct Header {
    v: u32,
    #[serde(rename = "type")]
    kind: String,
}

fn decode(body: &str) -> Decoded {
    let header: Header = match serde_json::from_str(body) {
        Ok(header) => header,
        Err(error) => return Decoded::Invalid(format!("not a job message: {error}")),
    };
    if header.v > CURRENT_VERSION {
        return Decoded::Newer(format!(
            "job version {} is newer than {CURRENT_VERSION}",
            header.v
        ));
    }
    match serde_json::from_str::<Job>(body) {
        Ok(job) => Decoded::Job(Box::new(job)),
        Err(_) if !matches!(header.kind.as_str(), "start") => Decoded::Newer(format!(
            "job type {:?} is unknown to this release",
            header.kind
        )),
        Err(error) => Decoded::Invalid(format!("job of type {} is invalid: {error}", header.kind)),
    }
}

impl Worker {
    pub fn new(
        queue: Arc<dyn Queue>,
        executor: Arc<dyn Executor>,
        settings: WorkerSettings,
        metrics: &Metrics,
    ) -> Worker {
        let quota = Quota::per_second(
            NonZeroU32::new(settings.starts_per_second).unwrap_or(NonZeroU32::MIN),
        )
        .allow_burst(NonZeroU32::new(settings.start_burst).unwrap_or(NonZeroU32::MIN));
        let worker_metrics = WorkerMetrics::default();
        metrics.register_family(
            "gitdispatch_jobs",
            "Jobs handled by the worker, by outcome",
            worker_metrics.jobs.clone(),
        );
        metrics.register_family(
            "gitdispatch_executions_started",
            "Execution starts, by pipeline and whether the execution was new",
            worker_metrics.starts.clone(),
        );
        metrics.register_family(
            "gitdispatch_executions_ended",
            "Ends of held executions, by pipeline and status",
            worker_metrics.executions_ended.clone(),
        );
        Worker {
            queue,
            executor,
            limiter: RateLimiter::direct(quota),
            settings,
            metrics: worker_metrics,
        }
    }

    /// Runs until `shutdown` is cancelled; then lets jobs in progress finish for the
    /// grace period and releases the rest, so nothing received is lost.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), QueueError> {
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let hard_stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut failures: u32 = 0;
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let mut held = vec![first];
            while held.len() < self.settings.batch_size {
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => held.push(permit),
                    Err(_) => break,
                }
            }
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.queue.receive(held.len(), self.settings.receive_wait) => received,
            };
            let batch = match received {
                Ok(batch) => {
                    failures = 0;
                    batch
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let pause = backoff(
                        failures,
                        Duration::from_millis(500),
                        Duration::from_secs(30),
                    );
                    tracing::error!(%error, retry_in_ms = pause.as_millis() as u64, "Could not receive jobs.");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            };
            if batch.is_empty() && self.settings.receive_wait.is_zero() {
                // Short polls: do not ask again at once when there was nothing.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(EMPTY_POLL_PAUSE) => {}
                }
            }
            // One permit per chain: a lane waiting behind its running execution holds
            // one, however many of its jobs came in this receive. The permits of the
            // rest go back at once.
            for chain in chains(batch) {
                let permit = held
                    .pop()
                    .expect("a batch never has more chains than messages");
                tasks.spawn(self.clone().run_chain(chain, permit, hard_stop.clone()));
            }
            drop(held);
            while tasks.try_join_next().is_some() {}
        }

        if !tasks.is_empty() {
            tracing::info!(
                jobs = tasks.len(),
                "Waiting for jobs in progress before stopping."
            );
        }
        let drained = tokio::time::timeout(self.settings.shutdown_grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                jobs = tasks.len(),
                "Releasing jobs still in progress at the end of the grace period."
            );
            hard_stop.cancel();
            while tasks.join_next().await.is_some() {}
        }
        Ok(())
    }

    /// Runs the jobs of one chain (one ordering group, or a single ungrouped job) one
    /// after the other, keeping the waiting ones invisible meanwhile. The chain stops at
    /// the first job that is not settled for good (released for later, or stopped by a
    /// shutdown) and gives the rest back in order: a later commit never overtakes an
    /// earlier one.
    async fn run_chain(
        self: Arc<Self>,
        chain: Vec<Received>,
        _permit: OwnedSemaphorePermit,
        hard_stop: CancellationToken,
    ) {
        let waiting: Arc<Mutex<Vec<Receipt>>> = Arc::new(Mutex::new(
            chain
                .iter()
                .map(|received| received.receipt.clone())
                .collect(),
        ));
        let forget = |receipt: &Receipt| {
            waiting
                .lock()
                .expect("waiting receipts lock")
                .retain(|waiting| waiting != receipt);
        };
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(
            self.clone()
                .heartbeat(waiting.clone(), heartbeat_stop.clone()),
        );
        let mut jobs = chain.into_iter();
        while let Some(received) = jobs.next() {
            let settle = if hard_stop.is_cancelled() {
                Settle::Release(Duration::ZERO)
            } else {
                self.handle(&received, &hard_stop).await
            };
            let for_good = settle.is_for_good();
            self.settle(&received, settle).await;
            forget(&received.receipt);
            if !for_good {
                let rest: Vec<Received> = jobs.by_ref().collect();
                if !rest.is_empty() {
                    tracing::info!(
                        jobs = rest.len(),
                        "Gave back the later jobs of a lane, in order, behind one that is not done."
                    );
                }
                for later in rest {
                    self.settle(&later, Settle::Release(Duration::ZERO)).await;
                    forget(&later.receipt);
                }
            }
        }
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
    }

    /// Extends the visibility of every receipt in `waiting` at half the timeout, so a
    /// long job (or one waiting behind it) is not handed to another worker.
    async fn heartbeat(
        self: Arc<Self>,
        waiting: Arc<Mutex<Vec<Receipt>>>,
        stop: CancellationToken,
    ) {
        let visibility = self.queue.visibility_timeout();
        let period = (visibility / 2).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let receipts = waiting.lock().expect("waiting receipts lock").clone();
            for receipt in receipts {
                if let Err(error) = self.queue.extend(&receipt, visibility).await {
                    tracing::warn!(%error, "Could not extend a job's visibility.");
                }
            }
        }
    }

    async fn handle(&self, received: &Received, hard_stop: &CancellationToken) -> Settle {
        let job = match decode(&received.message.body) {
            Decoded::Job(job) => job,
            Decoded::Newer(reason) => {
                tracing::warn!(job = %received.message.id, %reason, "Left a job for a newer release.");
                return Settle::Release(NEWER_JOB_DELAY);
            }
            Decoded::Invalid(reason) => return Settle::DeadLetter(reason),
        };
        match job.kind {
            JobKind::Start { request } => {
                let span = tracing::info_span!(
                    "job",
                    execution = %request.name,
                    pipeline = %request.pipeline,
                    delivery = %request.origin.delivery,
                    repository = %request.origin.repository,
                    git_ref = %request.origin.git_ref,
                    commit = %request.origin.commit,
                    receive_count = received.receive_count,
                );
                self.start(received, &request, hard_stop)
                    .instrument(span)
                    .await
            }
        }
    }

    /// Starts one execution and, when its job must be held (a serial lane, or an
    /// executor whose executions die with this process), waits until it ends, starting
    /// it again when it was interrupted.
    async fn start(
        &self,
        received: &Received,
        request: &ExecutionRequest,
        hard_stop: &CancellationToken,
    ) -> Settle {
        let hold = request.group.is_some() || !self.executor.outlives_this_process();
        // A lane's job retries in place rather than going back to the queue: the later
        // jobs of the lane, handed out with it, would otherwise be received again with
        // it every time, and dead-lettered by the queue's receive count for waiting.
        let retry_in_place = request.group.is_some();
        let mut tries = received.receive_count;
        loop {
            tokio::select! {
                _ = hard_stop.cancelled() => return Settle::Release(Duration::ZERO),
                _ = self.limiter.until_ready() => {}
            }
            // Cancelling a start in flight is safe: the execution may exist, and the
            // next attempt finds it by name.
            let started = tokio::select! {
                _ = hard_stop.cancelled() => return Settle::Release(Duration::ZERO),
                started = self.executor.start(request) => started,
            };
            let started = match started {
                Ok(started) => started,
                Err(ExecutorError::Retryable(error)) => {
                    let delay =
                        backoff(tries, self.settings.retry_initial, self.settings.retry_max);
                    if !retry_in_place {
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Could not start the execution; will retry.");
                        return Settle::Retry(delay);
                    }
                    if self.queue.max_receives().is_some_and(|max| tries >= max) {
                        return Settle::DeadLetter(format!(
                            "could not start the execution in {tries} tries: {error}"
                        ));
                    }
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Could not start the execution; will retry, holding the lane.");
                    tries += 1;
                    tokio::select! {
                        _ = hard_stop.cancelled() => return Settle::Release(Duration::ZERO),
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
                Err(ExecutorError::Permanent(error)) => return Settle::DeadLetter(error),
            };
            let existed = matches!(started, Started::Existing(_));
            self.metrics
                .starts
                .get_or_create(&labels(&[
                    ("pipeline", &request.pipeline),
                    ("outcome", if existed { "existing" } else { "new" }),
                ]))
                .inc();
            if existed {
                tracing::info!(id = started.id(), "The execution existed already.");
            } else {
                tracing::info!(id = started.id(), "Started an execution.");
            }
            if !hold {
                return Settle::Ack;
            }
            match self.wait_for_end(request, hard_stop).await {
                End::Finished => return Settle::Ack,
                End::Interrupted => {
                    tracing::warn!("The execution was interrupted; starting it again.");
                    continue;
                }
                End::Stopped => return Settle::Release(Duration::ZERO),
                End::Unknown(error) => {
                    let delay = backoff(
                        received.receive_count,
                        self.settings.retry_initial,
                        self.settings.retry_max,
                    );
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Could not tell whether the execution ended; will look again.");
                    return Settle::Retry(delay);
                }
            }
        }
    }

    /// Follows a started execution until it ends. Look soon at first (most executions
    /// of a quick pipeline are over in a moment), then every poll_interval. A failure
    /// to describe it is never taken for its end: the execution was started, so it is
    /// looked at again (Step Functions' reads are eventually consistent, and an
    /// expired credential gets renewed) for up to DESCRIBE_PATIENCE.
    async fn wait_for_end(&self, request: &ExecutionRequest, hard_stop: &CancellationToken) -> End {
        let mut wait = Duration::from_millis(100);
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            match self
                .executor
                .describe(&request.pipeline, &request.name)
                .await
            {
                Ok(execution) if execution.status.is_finished() => {
                    self.metrics
                        .executions_ended
                        .get_or_create(&labels(&[
                            ("pipeline", &request.pipeline),
                            ("status", execution.status.as_str()),
                        ]))
                        .inc();
                    if execution.status == ExecutionStatus::Succeeded {
                        tracing::info!("The execution succeeded.");
                    } else {
                        tracing::warn!(
                            status = execution.status.as_str(),
                            detail = execution.detail.as_deref(),
                            "The execution did not succeed."
                        );
                    }
                    return End::Finished;
                }
                Ok(execution) if execution.status == ExecutionStatus::Interrupted => {
                    return End::Interrupted;
                }
                Ok(_) => failing_since = None,
                Err(error) => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= DESCRIBE_PATIENCE {
                        return End::Unknown(error.to_string());
                    }
                    tracing::warn!(%error, "Could not describe the execution; will look again.");
                }
            }
            tokio::select! {
                _ = hard_stop.cancelled() => return End::Stopped,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(self.settings.poll_interval);
        }
    }

    /// Acks, releases or dead-letters a message, and counts it.
    async fn settle(&self, received: &Received, settle: Settle) {
        let (outcome, result) = match &settle {
            Settle::Ack => ("acked", self.queue.ack(&received.receipt).await),
            Settle::Retry(delay) => (
                "retried",
                self.queue.release(&received.receipt, *delay).await,
            ),
            Settle::Release(delay) => (
                "released",
                self.queue.release(&received.receipt, *delay).await,
            ),
            Settle::DeadLetter(reason) => {
                tracing::error!(job = %received.message.id, %reason, "Dead-lettered a job that cannot succeed.");
                (
                    "dead_lettered",
                    self.queue.dead_letter(received, reason).await,
                )
            }
        };
        if let Err(error) = result {
            // The message comes back after its visibility timeout; the start is
            // idempotent by name, so a repeat is harmless.
            tracing::error!(%error, outcome, "Could not settle a job; it will be received again.");
        }
        self.metrics
            .jobs
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
    }
}

/// How a held execution's wait ended.
enum End {
    /// It ended for good (succeeded or not).
    Finished,
    /// Our shutdown or crash interrupted it: start it again.
    Interrupted,
    /// The worker is stopping.
    Stopped,
    /// It could not be described for DESCRIBE_PATIENCE.
    Unknown(String),
}

/// What becomes of a handled message.
#[derive(Debug)]
enum Settle {
    Ack,
    /// A retryable failure: back later, after the backoff.
    Retry(Duration),
    /// Not handled here (shutdown, a newer job): back after the delay.
    Release(Duration),
    DeadLetter(String),
}

impl Settle {
    /// Whether the job is done with: acknowledged, or dead-lettered. A job released for
    /// later comes back, so nothing after it in its lane may run first.
    fn is_for_good(&self) -> bool {
        matches!(self, Settle::Ack | Settle::DeadLetter(_))
    }
}

/// Splits a batch into chains: one per ordering group (in receive order, which is send
/// order within a group), one per ungrouped message.
fn chains(batch: Vec<Received>) -> Vec<Vec<Received>> {
    let mut chains: Vec<Vec<Received>> = Vec::new();
    let mut by_group: HashMap<String, usize> = HashMap::new();
    for received in batch {
        match received.message.group.clone() {
            Some(group) => match by_group.get(&group) {
                Some(&index) => chains[index].push(received),
                None => {
                    by_group.insert(group, chains.len());
                    chains.push(vec![received]);
                }
            },
            None => chains.push(vec![received]),
        }
    }
    chains
}

/// Exponential backoff with jitter: `initial × 2^(attempt-1)`, capped at `max`, of
/// which a random half is kept so that retries of many jobs spread out.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let full = initial.saturating_mul(1u32 << exponent).min(max);
    let half = full / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use async_trait::async_trait;
    use tokio::time::Instant;

    use super::*;
    use crate::config::Config;
    use crate::event::{
        Commit, CommitSha, DeliveryId, Event, EventKind, Occurrence, Push, RefName, Source,
    };
    use crate::executor::Execution;
    use crate::plan::Planner;
    use crate::plan::name::ExecutionName;
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
                .ok_or_else(|| ExecutorError::Permanent("unknown".into()))?;
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
        }
    }

    struct Running {
        queue: Arc<EmbeddedQueue>,
        shutdown: CancellationToken,
        worker: tokio::task::JoinHandle<Result<(), QueueError>>,
        _directory: tempfile::TempDir,
    }

    impl Running {
        async fn enqueue(&self, requests: Vec<ExecutionRequest>) {
            let jobs: Vec<Job> = requests.into_iter().map(Job::start).collect();
            enqueue(self.queue.as_ref(), &jobs).await.unwrap();
        }
    }

    async fn start_worker(executor: Arc<ScriptedExecutor>, settings: WorkerSettings) -> Running {
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
            queue.clone(),
            executor,
            settings,
            &Metrics::default(),
        ));
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(worker.run(shutdown.clone()));
        Running {
            queue,
            shutdown,
            worker: handle,
            _directory: directory,
        }
    }

    async fn until(mut condition: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the condition never held");
    }

    /// The dead letters, once there are any.
    async fn first_dead_letters(queue: &EmbeddedQueue) -> Vec<crate::queue::embedded::DeadLetter> {
        for _ in 0..10_000 {
            let dead = queue.dead_letters().await.unwrap();
            if !dead.is_empty() {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Vec::new()
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_with_growing_backoff() {
        let requests = requests("parallel", 1);
        let name = requests[0].name.to_string();
        let executor = Arc::new(ScriptedExecutor::default());
        executor.errors.lock().unwrap().insert(
            name.clone(),
            (0..3)
                .map(|_| ExecutorError::Retryable("throttled".into()))
                .collect(),
        );
        let running = start_worker(executor.clone(), settings()).await;
        running.enqueue(requests).await;
        until(|| !executor.started.lock().unwrap().is_empty()).await;
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
        running.shutdown.cancel();
        running.worker.await.unwrap().unwrap();
        assert_eq!(running.queue.depth().await.unwrap().visible, 0, "acked");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_dead_lettered_with_the_reason() {
        let requests = requests("parallel", 2);
        let doomed = requests[0].name.to_string();
        let executor = Arc::new(ScriptedExecutor::default());
        executor.errors.lock().unwrap().insert(
            doomed.clone(),
            VecDeque::from([ExecutorError::Permanent(
                "state machine does not exist".into(),
            )]),
        );
        let running = start_worker(executor.clone(), settings()).await;
        running.enqueue(requests).await;
        until(|| executor.started.lock().unwrap().len() == 1).await;
        let queue = running.queue.clone();
        let dead = first_dead_letters(&queue).await;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].message.id, doomed);
        assert_eq!(dead[0].reason, "state machine does not exist");
        running.shutdown.cancel();
        running.worker.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn serial_jobs_run_one_after_another_in_commit_order() {
        let requests = requests("serial", 4);
        let names: Vec<String> = requests.iter().map(|r| r.name.to_string()).collect();
        let executor = Arc::new(ScriptedExecutor {
            runs_for: Duration::from_secs(30),
            ..ScriptedExecutor::default()
        });
        let running = start_worker(executor.clone(), settings()).await;
        running.enqueue(requests).await;
        until(|| executor.started.lock().unwrap().len() == 4).await;
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
        running.shutdown.cancel();
        running.worker.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_execution_that_cannot_be_described_yet_is_not_dead_lettered() {
        // Step Functions' reads are eventually consistent: right after a start, the
        // execution may not show; a credential may expire meanwhile.
        let requests = requests("serial", 2);
        let executor = Arc::new(ScriptedExecutor {
            runs_for: Duration::from_secs(5),
            describe_errors: Mutex::new(VecDeque::from([
                ExecutorError::Permanent("ExecutionDoesNotExist".into()),
                ExecutorError::Permanent("ExecutionDoesNotExist".into()),
                ExecutorError::Retryable("ExpiredTokenException".into()),
            ])),
            ..ScriptedExecutor::default()
        });
        let running = start_worker(executor.clone(), settings()).await;
        running.enqueue(requests).await;
        until(|| executor.started.lock().unwrap().len() == 2).await;
        let started = executor.started.lock().unwrap().clone();
        assert!(
            started[1].1 - started[0].1 >= Duration::from_secs(5),
            "the second started only after the first ended"
        );
        running.shutdown.cancel();
        running.worker.await.unwrap().unwrap();
        assert!(running.queue.dead_letters().await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_retries_its_head_in_place_and_dead_letters_it_after_max_receives() {
        let requests = requests("serial", 2);
        let head = requests[0].name.to_string();
        let executor = Arc::new(ScriptedExecutor::default());
        executor.errors.lock().unwrap().insert(
            head.clone(),
            (0..10)
                .map(|_| ExecutorError::Retryable("throttled".into()))
                .collect(),
        );
        let running = start_worker(executor.clone(), settings()).await;
        running.enqueue(requests).await;
        let queue = running.queue.clone();
        let dead = first_dead_letters(&queue).await;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].message.id, head);
        assert_eq!(dead[0].receive_count, 1, "retried in place, received once");
        assert!(dead[0].reason.contains("in 6 tries"), "{}", dead[0].reason);
        until(|| executor.started.lock().unwrap().len() == 1).await;
        running.shutdown.cancel();
        running.worker.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_releases_jobs_that_outlive_the_grace_period() {
        let requests = requests("serial", 1);
        let executor = Arc::new(ScriptedExecutor {
            runs_for: Duration::from_secs(3600),
            ..ScriptedExecutor::default()
        });
        let running = start_worker(executor.clone(), settings()).await;
        running.enqueue(requests).await;
        until(|| executor.started.lock().unwrap().len() == 1).await;
        running.shutdown.cancel();
        running.worker.await.unwrap().unwrap();
        let depth = running.queue.depth().await.unwrap();
        assert_eq!(
            depth.visible, 1,
            "the held job is back on the queue at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unreadable_jobs_are_dead_lettered_and_newer_ones_left_for_later() {
        let executor = Arc::new(ScriptedExecutor::default());
        let running = start_worker(executor, settings()).await;
        running
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
        let queue = running.queue.clone();
        let dead = first_dead_letters(&queue).await;
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].message.id, "garbage");
        let depth = queue.depth().await.unwrap();
        assert_eq!(
            (depth.visible, depth.in_flight),
            (0, 1),
            "the newer job waits, released"
        );
        running.shutdown.cancel();
        running.worker.await.unwrap().unwrap();
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let initial = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for attempt in 1..=12 {
            let full = (initial * 2u32.pow(attempt - 1)).min(max);
            for _ in 0..50 {
                let delay = backoff(attempt, initial, max);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "attempt {attempt}: {delay:?}"
                );
            }
        }
        assert!(backoff(u32::MAX, initial, max) <= max);
    }

    #[test]
    fn bodies_are_told_apart() {
        assert!(matches!(decode("not json"), Decoded::Invalid(_)));
        assert!(matches!(
            decode(r#"{"v": 2, "type": "start"}"#),
            Decoded::Newer(_)
        ));
        assert!(matches!(
            decode(r#"{"v": 1, "type": "watch"}"#),
            Decoded::Newer(_)
        ));
        assert!(matches!(
            decode(r#"{"v": 1, "type": "start", "request": 3}"#),
            Decoded::Invalid(_)
        ));
    }
}
