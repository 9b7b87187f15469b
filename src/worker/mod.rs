//! The worker: drains the queue into executions.
//!
//! It receives in batches, runs jobs with bounded concurrency, rate-limits starts,
//! retries what can be retried with exponential backoff and jitter, dead-letters what
//! cannot succeed, and holds the jobs of `serial` pipelines until their execution ends.
//!
//! Invariant ("ack after effect"): a job leaves the queue only after its effect is
//! durable: acked after the start succeeded (and, in an ordering group or when the
//! executor's executions die with this process, after the execution ended); released
//! for a retry otherwise. The worker knows the queue and the executor only through
//! their traits; each job kind has a file of its own (`start`, `expand`, `watch`,
//! `report`).

pub mod codepipeline;
mod expand;
mod lanes;
mod release;
mod report;
mod start;
mod unpark;
mod watch;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::admission::Admission;
use crate::clock::Clock;
use crate::config::WorkerConfig;
use crate::error::Chain;
use crate::event::Source;
use crate::executor::Executor;
use crate::job::{Job, JobKind, Read};
use crate::queue::{Queue, QueueError, Receipt, Received, enqueue};
use crate::report::Reporter;
use crate::retry::backoff;
use crate::runtime::Current;
use crate::source::CommitHistory;
use crate::telemetry::{Metrics, labels};

/// A job this release cannot read (written by a newer one) waits this long before it
/// is offered again, to a worker that may read it.
const NEWER_JOB_DELAY: Duration = Duration::from_secs(60);

/// A dead letter's reason is kept to this many bytes, on one line.
const MAX_REASON: usize = 500;

/// With short polls (`receive_wait_secs = 0`), how long an empty receive waits before
/// the next one.
const EMPTY_POLL_PAUSE: Duration = Duration::from_millis(200);

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
    /// How long a serial lane's job is held in flight before its lane is marked busy
    /// and the job acknowledged (executions that outlive the worker only).
    pub max_hold: Duration,
}

impl WorkerSettings {
    /// The settings `[worker]` gives.
    pub fn from_config(config: &WorkerConfig) -> WorkerSettings {
        WorkerSettings {
            concurrency: config.concurrency,
            batch_size: config.batch_size,
            receive_wait: Duration::from_secs(config.receive_wait_secs),
            starts_per_second: config.starts_per_second,
            start_burst: config.start_burst,
            poll_interval: Duration::from_secs(config.poll_interval_secs),
            retry_initial: Duration::from_millis(config.retry_initial_ms),
            retry_max: Duration::from_secs(config.retry_max_secs),
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
            max_hold: Duration::from_secs(config.max_hold_secs),
        }
    }
}

/// The worker's counters.
#[derive(Clone)]
struct WorkerMetrics {
    /// Jobs handled, by outcome (`acked`, `retried`, `dead_lettered`, `released`).
    jobs: Family<Vec<(&'static str, String)>, Counter>,
    /// Starts, by pipeline and whether the execution was new or existed already.
    starts: Family<Vec<(&'static str, String)>, Counter>,
    /// Ended executions of held jobs, by pipeline and status.
    executions_ended: Family<Vec<(&'static str, String)>, Counter>,
    /// Expansions, by how their walk ended (`reached`, `bound`, `unreachable`).
    expansions: Family<Vec<(&'static str, String)>, Counter>,
    /// Reports, by outcome (`written`, `stale`, `retried`, `delayed`, `given_up`,
    /// `failed`, `dropped`).
    reports: Family<Vec<(&'static str, String)>, Counter>,
    /// Start jobs superseded by a newer one of their lane, by pipeline.
    superseded: Family<Vec<(&'static str, String)>, Counter>,
    /// From a start job's sending (the delivery's answer) to its execution's start.
    start_latency: prometheus_client::metrics::histogram::Histogram,
}

impl WorkerMetrics {
    /// Registers the counters in `metrics`.
    fn register(&self, metrics: &Metrics) {
        let families = [
            (
                "gitdispatch_jobs",
                "Jobs handled by the worker, by outcome",
                &self.jobs,
            ),
            (
                "gitdispatch_executions_started",
                "Execution starts, by pipeline and whether the execution was new",
                &self.starts,
            ),
            (
                "gitdispatch_executions_ended",
                "Ends of held executions, by pipeline and status",
                &self.executions_ended,
            ),
            (
                "gitdispatch_expansions",
                "Pushes whose commits were fetched, by how the walk ended",
                &self.expansions,
            ),
            (
                "gitdispatch_reports",
                "Reports to the source, by outcome",
                &self.reports,
            ),
            (
                "gitdispatch_executions_superseded",
                "Start jobs not started because a newer job of their serial lane waited, by pipeline",
                &self.superseded,
            ),
        ];
        for (name, help, family) in families {
            metrics.register_family(name, help, family.clone());
        }
        metrics.register_histogram(
            "gitdispatch_start_latency_seconds",
            "From a delivery's jobs being queued to their executions' starts",
            self.start_latency.clone(),
        );
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            jobs: Family::default(),
            starts: Family::default(),
            executions_ended: Family::default(),
            expansions: Family::default(),
            reports: Family::default(),
            superseded: Family::default(),
            // 10 ms to about 3 hours: a lane can hold a job behind long deploys.
            start_latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.01, 4.0, 12),
            ),
        }
    }
}

/// What a worker is made of: one value, so that a worker is whole when it is made.
pub struct WorkerParts {
    pub queue: Arc<dyn Queue>,
    pub executor: Arc<dyn Executor>,
    pub settings: WorkerSettings,
    /// How what the worker plans (expanded pushes, CodePipeline jobs) gets on the
    /// queue; its lanes (when it has a journal) keep each start's state, and pauses
    /// and supersede read them.
    pub admission: Arc<Admission>,
    /// The planner and lane rules in force; a reload replaces them.
    pub runtime: Current,
    /// Each source's commit history, for `expand` jobs (a source without one
    /// dead-letters them), and how many commits one push may expand to.
    pub histories: HashMap<Source, Arc<dyn CommitHistory>>,
    pub max_commits: HashMap<Source, usize>,
    /// Where reports go; `None` when reporting is off.
    pub reporter: Option<Arc<dyn Reporter>>,
    /// The CodePipeline custom action this worker serves, when `[codepipeline]` is
    /// configured.
    pub codepipeline: Option<codepipeline::Following>,
}

impl WorkerParts {
    /// A worker that starts what it receives, with no journal, history, reporting or
    /// custom action: what the queue and executor alone make.
    pub fn new(
        queue: Arc<dyn Queue>,
        executor: Arc<dyn Executor>,
        settings: WorkerSettings,
        runtime: Current,
    ) -> WorkerParts {
        WorkerParts {
            admission: Arc::new(Admission::new(
                queue.clone(),
                None,
                None,
                Arc::new(Metrics::default()),
            )),
            queue,
            executor,
            settings,
            runtime,
            histories: HashMap::new(),
            max_commits: HashMap::new(),
            reporter: None,
            codepipeline: None,
        }
    }
}

/// Drains a queue into an executor.
pub struct Worker {
    queue: Arc<dyn Queue>,
    executor: Arc<dyn Executor>,
    limiter: DefaultDirectRateLimiter,
    settings: WorkerSettings,
    metrics: WorkerMetrics,
    admission: Arc<Admission>,
    runtime: Current,
    histories: HashMap<Source, Arc<dyn CommitHistory>>,
    max_commits: HashMap<Source, usize>,
    reporter: Option<Arc<dyn Reporter>>,
    following: Option<codepipeline::Following>,
    clock: Clock,
}

impl Worker {
    pub fn new(parts: WorkerParts, metrics: &Metrics) -> Worker {
        let settings = parts.settings;
        let quota = Quota::per_second(
            NonZeroU32::new(settings.starts_per_second).unwrap_or(NonZeroU32::MIN),
        )
        .allow_burst(NonZeroU32::new(settings.start_burst).unwrap_or(NonZeroU32::MIN));
        let worker_metrics = WorkerMetrics::default();
        worker_metrics.register(metrics);
        Worker {
            queue: parts.queue,
            executor: parts.executor,
            limiter: RateLimiter::direct(quota),
            settings,
            metrics: worker_metrics,
            admission: parts.admission,
            runtime: parts.runtime,
            histories: parts.histories,
            max_commits: parts.max_commits,
            reporter: parts.reporter,
            following: parts.codepipeline,
            clock: Clock::new(),
        }
    }

    /// The lanes whose states the worker keeps and honours; `None` without a journal.
    fn lanes(&self) -> Option<&Arc<crate::lanes::Lanes>> {
        self.admission.lanes()
    }

    /// How long until `not_before_ms`, when that is still ahead.
    fn not_due(&self, not_before_ms: i64) -> Option<Duration> {
        let ahead = not_before_ms - self.clock.now_ms();
        (ahead > 0).then(|| Duration::from_millis(ahead as u64))
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
            // As many as there is room for now, the others' permits left free during
            // the receive: a chain already running (an envelope's builds, side by
            // side) takes them as it needs them.
            let room = (1 + permits.available_permits()).min(self.settings.batch_size);
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.queue.receive(room, self.settings.receive_wait) => received,
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
                    tracing::error!(error = %Chain(&error), retry_in_ms = pause.as_millis() as u64, "Could not receive jobs.");
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
            // one, however many of its jobs came in this receive. The first chain has
            // the permit the receive was made with; the others wait for theirs in
            // their own tasks (their jobs kept invisible meanwhile), and the next
            // receive waits behind them.
            let mut first = Some(first);
            for chain in chains(batch) {
                tasks.spawn(self.clone().run_chain(
                    chain,
                    first.take(),
                    permits.clone(),
                    hard_stop.clone(),
                ));
            }
            drop(first);
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

    /// Receives one batch (without waiting for one) and runs it to the end: every job
    /// of it acknowledged, released or dead-lettered. Returns how many jobs it had. What
    /// tests and one-shot drains use instead of [`Worker::run`].
    pub async fn run_once(self: &Arc<Self>) -> Result<usize, QueueError> {
        let batch = self
            .queue
            .receive(self.settings.batch_size, Duration::ZERO)
            .await?;
        let count = batch.len();
        let chains = chains(batch);
        let permits = Arc::new(Semaphore::new(chains.len()));
        let hard_stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for chain in chains {
            let permit = permits
                .clone()
                .try_acquire_owned()
                .expect("one permit per chain");
            tasks.spawn(self.clone().run_chain(
                chain,
                Some(permit),
                permits.clone(),
                hard_stop.clone(),
            ));
        }
        while tasks.join_next().await.is_some() {}
        Ok(count)
    }

    /// Runs the jobs of one chain, keeping the waiting ones invisible meanwhile: one
    /// ordering group's one after the other, stopping at the first job that is not
    /// settled for good (released for later, or stopped by a shutdown) and giving the
    /// rest back in order, so that a later commit never overtakes an earlier one; an
    /// envelope of ungrouped jobs side by side.
    async fn run_chain(
        self: Arc<Self>,
        chain: Vec<Received>,
        permit: Option<OwnedSemaphorePermit>,
        permits: Arc<Semaphore>,
        hard_stop: CancellationToken,
    ) {
        // The receipts still to settle (see `settle_waiting`).
        let waiting: Arc<tokio::sync::Mutex<Vec<Receipt>>> = Arc::new(tokio::sync::Mutex::new(
            chain
                .iter()
                .map(|received| received.receipt.clone())
                .collect(),
        ));
        let heartbeat_stop = CancellationToken::new();
        // Ends with the chain, however the chain ends: a heartbeat left behind would
        // keep its jobs invisible for ever.
        let heartbeat = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
            self.clone()
                .heartbeat(waiting.clone(), heartbeat_stop.clone()),
        ));
        // The chain's jobs were all received now: none may be held in flight past
        // max_hold from here (SQS lets a message be in flight 12 hours at most).
        let held_since = tokio::time::Instant::now();
        let chained = Chained {
            waiting,
            permits,
            hard_stop,
            held_since,
        };
        let permit = match permit {
            Some(permit) => Some(permit),
            None => tokio::select! {
                _ = chained.hard_stop.cancelled() => None,
                permit = chained.permits.clone().acquire_owned() => permit.ok(),
            },
        };
        let Some(permit) = permit else {
            // Stopped before there was room for it: given back, in order.
            for received in chain {
                self.settle_waiting(&chained.waiting, received, Settle::Release(Duration::ZERO))
                    .await;
            }
            heartbeat_stop.cancel();
            let _ = heartbeat.await;
            return;
        };
        if chain.len() > 1
            && chain
                .iter()
                .all(|received| received.message.group.is_none())
        {
            self.run_side_by_side(chain, permit, chained).await;
        } else {
            self.run_in_order(chain, permit, &chained).await;
        }
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
    }

    /// A chain of one ordering group: its jobs one after the other. The chain stops at
    /// the first job that is not settled for good and gives the rest back in order.
    async fn run_in_order(
        self: &Arc<Self>,
        chain: Vec<Received>,
        permit: OwnedSemaphorePermit,
        chained: &Chained,
    ) {
        let mut permit = Some(permit);
        let mut jobs = chain.into_iter();
        while let Some(received) = jobs.next() {
            let settle;
            (settle, permit) = self.step(&received, permit, chained).await;
            let for_good = settle.is_for_good();
            self.settle_waiting(&chained.waiting, received, settle)
                .await;
            if !for_good {
                let rest: Vec<Received> = jobs.by_ref().collect();
                if !rest.is_empty() {
                    tracing::info!(
                        jobs = rest.len(),
                        "Gave back the later jobs of a lane, in order, behind one that is not done."
                    );
                }
                for later in rest {
                    self.settle_waiting(&chained.waiting, later, Settle::Release(Duration::ZERO))
                        .await;
                }
            }
        }
        drop(permit);
    }

    /// An envelope of jobs that run in any order: side by side, as they would had they
    /// come one by one, each with a permit of its own (the chain's is the first's).
    async fn run_side_by_side(
        self: &Arc<Self>,
        chain: Vec<Received>,
        permit: OwnedSemaphorePermit,
        chained: Chained,
    ) {
        let chained = Arc::new(chained);
        let mut first = Some(permit);
        let mut running = JoinSet::new();
        let mut jobs = chain.into_iter();
        while let Some(received) = jobs.next() {
            let permit = match first.take() {
                Some(permit) => permit,
                None => tokio::select! {
                    _ = chained.hard_stop.cancelled() => {
                        for job in std::iter::once(received).chain(jobs.by_ref()) {
                            self.settle_waiting(&chained.waiting, job, Settle::Release(Duration::ZERO))
                                .await;
                        }
                        break;
                    }
                    permit = chained.permits.clone().acquire_owned() => {
                        permit.expect("the semaphore is never closed")
                    }
                },
            };
            let (worker, chained) = (self.clone(), chained.clone());
            running.spawn(async move {
                let (settle, permit) = worker.step(&received, Some(permit), &chained).await;
                worker
                    .settle_waiting(&chained.waiting, received, settle)
                    .await;
                drop(permit);
            });
        }
        while running.join_next().await.is_some() {}
    }

    /// One job of a chain: parked if its lane is held (held in flight, without a
    /// permit, while it cannot be), else handled. What becomes of it, and the permit to
    /// go on with.
    async fn step(
        &self,
        received: &Received,
        mut permit: Option<OwnedSemaphorePermit>,
        chained: &Chained,
    ) -> (Settle, Option<OwnedSemaphorePermit>) {
        let mut parking = self.parking(received).await;
        if let lanes::Parking::Hold(lane) = &parking {
            drop(permit.take());
            (permit, parking) = self
                .hold_while_held(lane, received, &chained.permits, &chained.hard_stop)
                .await;
        }
        let settle = if chained.hard_stop.is_cancelled() {
            Settle::Release(Duration::ZERO)
        } else if let lanes::Parking::Parked = parking {
            Settle::Ack
        } else {
            self.handle_in_place(received, chained).await
        };
        (settle, permit)
    }

    /// Handles a job; one that shares its message (an envelope's) and fails is tried
    /// again in place after its backoff, each try counted as a receive, and
    /// dead-lettered alone once it has had as many as the queue gives: giving the
    /// message back would count a receive against every job of it, and the queue would
    /// dead-letter them all for the failures of a few.
    async fn handle_in_place(&self, received: &Received, chained: &Chained) -> Settle {
        if !received.shared {
            return self
                .handle(received, chained.held_since, &chained.hard_stop)
                .await;
        }
        let mut attempt = received.clone();
        loop {
            let settle = self
                .handle(&attempt, chained.held_since, &chained.hard_stop)
                .await;
            let Settle::Retry(delay) = settle else {
                return settle;
            };
            let tries = attempt.receive_count;
            if self.queue.max_receives().is_some_and(|max| tries >= max) {
                return Settle::DeadLetter(format!(
                    "failed {tries} tries in a row (the worker's log says why)"
                ));
            }
            tokio::select! {
                _ = chained.hard_stop.cancelled() => return Settle::Release(Duration::ZERO),
                _ = tokio::time::sleep(delay) => {}
            }
            attempt.receive_count += 1;
        }
    }

    /// Settles a job of a chain and stops extending its receipt. Settling and
    /// extending never interleave (one lock, held across both): a heartbeat that
    /// extended a receipt just released would hide the job again, and SQS FIFO would
    /// then hand out a later job of its group first.
    async fn settle_waiting(
        &self,
        waiting: &tokio::sync::Mutex<Vec<Receipt>>,
        received: Received,
        settle: Settle,
    ) {
        let mut waiting = waiting.lock().await;
        self.settle(&received, settle).await;
        // One of its receipt: an envelope's jobs share theirs.
        if let Some(index) = waiting.iter().position(|r| *r == received.receipt) {
            waiting.remove(index);
        }
    }

    /// Extends the visibility of every receipt in `waiting` at a third of the timeout,
    /// all at once, so a long job (or one waiting behind it) is not handed to another
    /// worker: a slow queue must take two periods in a row to let one lapse, and a
    /// chain's receipts lapse together if they do. (A lapse can reorder a FIFO group
    /// on moto, which skips a job while a later one of its group still counts as in
    /// flight, then hands out the later one.)
    async fn heartbeat(
        self: Arc<Self>,
        waiting: Arc<tokio::sync::Mutex<Vec<Receipt>>>,
        stop: CancellationToken,
    ) {
        let visibility = self.queue.visibility_timeout();
        let period = (visibility / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let receipts = waiting.lock().await;
            let mut extends = JoinSet::new();
            let mut extended = std::collections::HashSet::new();
            for receipt in receipts
                .iter()
                .filter(|receipt| extended.insert(&receipt.0))
            {
                let (queue, receipt) = (self.queue.clone(), receipt.clone());
                extends.spawn(async move { queue.extend(&receipt, visibility).await });
            }
            while let Some(extended) = extends.join_next().await {
                if let Ok(Err(error)) = extended {
                    tracing::warn!(error = %Chain(&error), "Could not extend a job's visibility.");
                }
            }
            drop(receipts);
        }
    }

    async fn handle(
        &self,
        received: &Received,
        held_since: tokio::time::Instant,
        hard_stop: &CancellationToken,
    ) -> Settle {
        let job = match Job::read(&received.message.body) {
            Read::Job(job) => job,
            Read::Newer(reason) => {
                tracing::warn!(job = %received.message.id, %reason, "Left a job for a newer release.");
                return Settle::Release(NEWER_JOB_DELAY);
            }
            Read::Invalid(reason) => return Settle::DeadLetter(reason),
        };
        let run = Run {
            received,
            held_since,
            hard_stop,
        };
        match &job.kind {
            JobKind::Start { request } => self.dispatch(request, &run).await,
            JobKind::Expand { expansion } => self.dispatch(expansion, &run).await,
            JobKind::Report { report } => self.dispatch(report, &run).await,
            JobKind::Watch { watch } => self.dispatch(watch, &run).await,
            JobKind::Release { release } => self.dispatch(release, &run).await,
            JobKind::Unpark { unpark } => self.dispatch(unpark, &run).await,
            JobKind::Follow { follow } => self.dispatch(follow, &run).await,
        }
    }

    /// Runs one job in its kind's span.
    async fn dispatch<H: Handler>(&self, handler: &H, run: &Run<'_>) -> Settle {
        handler
            .handle(self, run)
            .instrument(handler.span(run.received))
            .await
    }

    /// The backoff before a failed job is tried again, growing with its receives.
    fn retry_delay(&self, received: &Received) -> Duration {
        self.retry_after(received.receive_count)
    }

    /// The backoff before a job received `receive_count` times is tried again.
    fn retry_after(&self, receive_count: u32) -> Duration {
        backoff(
            receive_count,
            self.settings.retry_initial,
            self.settings.retry_max,
        )
    }

    /// Queues `jobs`, what a handled job leaves to do: the job is acknowledged once
    /// they are on the queue, or retried after the backoff (handling it again is safe:
    /// starts are found by name, reports and follows are idempotent). `what` says, in
    /// the log, what could not be queued.
    async fn queue_or_retry(&self, received: &Received, jobs: &[Job], what: &str) -> Settle {
        match enqueue(self.queue.as_ref(), jobs).await {
            Ok(()) => Settle::Ack,
            Err(error) => {
                let delay = self.retry_delay(received);
                tracing::warn!(error = %Chain(&error), retry_in_ms = delay.as_millis() as u64, "Could not queue {what}; will try again.");
                Settle::Retry(delay)
            }
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
                // One line: a cause's raw response must not become the reason.
                let reason = crate::text::one_line(reason, MAX_REASON);
                tracing::error!(job = %received.message.id, %reason, "Dead-lettered a job that cannot succeed.");
                (
                    "dead_lettered",
                    self.queue.dead_letter(received, &reason).await,
                )
            }
        };
        if let Err(error) = result {
            // The message comes back after its visibility timeout; the start is
            // idempotent by name, so a repeat is harmless.
            tracing::error!(error = %Chain(&error), outcome, "Could not settle a job; it will be received again.");
        }
        self.metrics
            .jobs
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
    }
}

/// What the jobs of a chain share.
struct Chained {
    /// The receipts still to settle, which the chain's heartbeat extends.
    waiting: Arc<tokio::sync::Mutex<Vec<Receipt>>>,
    permits: Arc<Semaphore>,
    /// Cancelled when the grace period of a shutdown is over.
    hard_stop: CancellationToken,
    /// When the chain was received: a lane's job is held in flight only so long.
    held_since: tokio::time::Instant,
}

/// What a job is handled with, besides its own fields.
struct Run<'a> {
    received: &'a Received,
    /// When its chain was received: a lane's job is held in flight only so long.
    held_since: tokio::time::Instant,
    /// Cancelled when the grace period of a shutdown is over.
    hard_stop: &'a CancellationToken,
}

/// A job kind: its own fields, the span its work logs in, and how a worker handles it
/// (each kind's in its own file). One dispatch, [`Worker::handle`], runs them all.
trait Handler {
    fn span(&self, received: &Received) -> tracing::Span;
    async fn handle(&self, worker: &Worker, run: &Run<'_>) -> Settle;
}

/// How a held execution's wait ended.
pub(crate) enum End {
    /// It ended for good (succeeded or not), as described.
    Finished(crate::executor::Execution),
    /// Our shutdown or crash interrupted it: start it again.
    Interrupted,
    /// The worker is stopping.
    Stopped,
    /// It could not be described for DESCRIBE_PATIENCE.
    Unknown(String),
    /// It still runs, and its job has been held as long as it may be.
    HeldTooLong,
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
/// order within a group), one per ungrouped message, or per envelope of them (its
/// messages share a receipt, and settle it together): as many chains as the queue
/// handed out messages, at most.
fn chains(batch: Vec<Received>) -> Vec<Vec<Received>> {
    let mut chains: Vec<Vec<Received>> = Vec::new();
    let mut by_key: HashMap<(bool, String), usize> = HashMap::new();
    for received in batch {
        let key = match &received.message.group {
            Some(group) => (true, group.clone()),
            None => (false, received.receipt.0.clone()),
        };
        match by_key.get(&key) {
            Some(&index) => chains[index].push(received),
            None => {
                by_key.insert(key, chains.len());
                chains.push(vec![received]);
            }
        }
    }
    chains
}

#[cfg(test)]
mod tests;
