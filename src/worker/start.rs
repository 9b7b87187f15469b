//! The `start` job: start one execution and, when its job must be held (a serial
//! lane, or an executor whose executions die with this process), follow it to its end,
//! starting it again when it was interrupted.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::report::{ended, not_started, started as started_report};
use super::watch::watch_delay;
use super::{End, Handler, Run, Settle, Worker};
use crate::error::Chain;
use crate::execution::ExecutionRequest;
use crate::execution::report::Watch;
use crate::executor::{ExecutionStatus, ExecutorError, Started};
use crate::job::Job;
use crate::queue::{Received, enqueue};
use crate::retry::backoff;
use crate::telemetry::labels;

/// How long a started execution may fail to be described before its job is released
/// to be looked at again later (never dead-lettered: the execution exists).
const DESCRIBE_PATIENCE: Duration = Duration::from_secs(300);

impl Handler for ExecutionRequest {
    fn span(&self, received: &Received) -> tracing::Span {
        tracing::info_span!(
            "job",
            execution = %self.name,
            pipeline = %self.pipeline,
            delivery = %self.origin.delivery,
            repository = %self.origin.repository,
            git_ref = %self.origin.git_ref,
            commit = %self.origin.commit,
            receive_count = received.receive_count,
        )
    }

    async fn handle(&self, worker: &Worker, run: &Run<'_>) -> Settle {
        worker
            .start(run.received, self, run.held_since, run.hard_stop)
            .await
    }
}

impl Worker {
    /// Starts one execution (see [`Worker::run_start`]); a start that can never succeed
    /// is reported as an error, so that its check does not wait forever.
    pub(super) async fn start(
        &self,
        received: &Received,
        request: &ExecutionRequest,
        held_since: tokio::time::Instant,
        hard_stop: &CancellationToken,
    ) -> Settle {
        if let Some(reason) = self.dead_lettered_before(received, request).await {
            tracing::warn!(%reason, "This job was dead-lettered from its envelope before the envelope came back; it is dead-lettered again, not tried again.");
            return Settle::DeadLetter(reason);
        }
        let settle = self
            .run_start(received, request, held_since, hard_stop)
            .await;
        if let Settle::DeadLetter(reason) = &settle {
            // Not waiting any more: it must not supersede an older job run later.
            if let Some(lanes) = self.lanes() {
                lanes.rejected(request, reason).await;
            }
            if let Some(target) = &request.report {
                self.queue_reports(vec![not_started(request, target, reason)])
                    .await;
            }
            self.report_carried(request, Err(reason), None).await;
        }
        settle
    }

    /// Whether a job of an envelope given back whole (its worker stopped before it was
    /// done) was dead-lettered from it before, as the journal says: the reason then.
    /// Such a job goes to the dead letters again (a FIFO dead-letter queue keeps it
    /// once; a standard one may hold it twice) rather than being tried again, and
    /// perhaps run, while a dead letter says it failed.
    async fn dead_lettered_before(
        &self,
        received: &Received,
        request: &ExecutionRequest,
    ) -> Option<String> {
        if !received.shared || received.receive_count < 2 {
            return None;
        }
        let job = self
            .lanes()?
            .journal()
            .job(request.name.as_str())
            .await
            .ok()??;
        (job.state == crate::journal::JobState::Rejected)
            .then(|| job.status.unwrap_or_else(|| "dead-lettered before".into()))
    }

    /// Starts one execution and, when its job must be held (a serial lane, or an
    /// executor whose executions die with this process), waits until it ends, starting
    /// it again when it was interrupted. With reporting on, the start and the end are
    /// reported; an execution nothing holds is followed by a `watch` job.
    async fn run_start(
        &self,
        received: &Received,
        request: &ExecutionRequest,
        held_since: tokio::time::Instant,
        hard_stop: &CancellationToken,
    ) -> Settle {
        if self.superseded(request).await {
            return Settle::Ack;
        }
        if !self.wait_for_lane(request, hard_stop).await {
            return Settle::Release(Duration::ZERO);
        }
        let hold = request.group.is_some() || !self.executor.outlives_this_process();
        // A lane's job retries in place rather than going back to the queue: the later
        // jobs of the lane, handed out with it, would otherwise be received again with
        // it every time, and dead-lettered by the queue's receive count for waiting. So
        // does a job of an envelope, for the jobs that share its message.
        let retry_in_place = request.group.is_some() || received.shared;
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
                Err(error @ (ExecutorError::Retryable { .. } | ExecutorError::NotFound { .. })) => {
                    let error = Chain(&error).to_string();
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
                    if request.group.is_some() {
                        tracing::warn!(%error, tries, retry_in_ms = delay.as_millis() as u64, "Could not start the execution; will retry, holding the lane.");
                    } else {
                        tracing::warn!(%error, tries, retry_in_ms = delay.as_millis() as u64, "Could not start the execution; will retry in place, beside the other jobs of its envelope.");
                    }
                    tries += 1;
                    tokio::select! {
                        _ = hard_stop.cancelled() => return Settle::Release(Duration::ZERO),
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
                Err(error @ ExecutorError::Permanent { .. }) => {
                    return Settle::DeadLetter(Chain(&error).to_string());
                }
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
                if let Some(sent_at) = received.sent_at_ms {
                    let waited = (self.clock.now_ms() - sent_at).max(0) as f64 / 1000.0;
                    self.metrics.start_latency.observe(waited);
                }
            }
            if let Some(lanes) = self.lanes() {
                lanes.started(request, received.sent_at_ms).await;
            }
            let details_url = self.executor.link(started.id());
            let target = request.report.as_ref().filter(|_| self.reports());
            if !hold {
                let Some(target) = target else {
                    return Settle::Ack;
                };
                // The start is acknowledged only once its report and the job that
                // follows the execution are queued; a failure starts it again, which
                // finds it by name.
                let watch = Watch {
                    pipeline: request.pipeline.clone(),
                    execution: request.name.clone(),
                    action: request.action,
                    target: target.clone(),
                    details_url: details_url.clone(),
                    look: 0,
                    not_before_ms: self.clock.now_ms()
                        + watch_delay(self.settings.poll_interval, 0).as_millis() as i64,
                };
                let jobs = [
                    Job::report(started_report(request, target, details_url)),
                    Job::watch(watch),
                ];
                return self
                    .queue_or_retry(received, &jobs, "the report of a start")
                    .await;
            }
            if let Some(target) = target {
                self.queue_reports(vec![started_report(request, target, details_url.clone())])
                    .await;
            }
            // A serial lane's job on an executor whose executions outlive the worker is
            // held only so long: then its lane is marked busy (its next jobs parked)
            // and a `release` job follows the execution instead.
            let hand_over = (request.group.is_some()
                && self.executor.outlives_this_process()
                && self.lanes().is_some())
            .then_some(held_since + self.settings.max_hold);
            match self.wait_for_end(request, hand_over, hard_stop).await {
                End::Finished(execution) => {
                    if let Some(lanes) = self.lanes() {
                        lanes.ended(request, execution.status.as_str()).await;
                    }
                    self.report_carried(request, Ok(&execution), details_url.clone())
                        .await;
                    let Some(target) = target else {
                        return Settle::Ack;
                    };
                    let report = ended(
                        &request.name,
                        request.action,
                        target,
                        &execution,
                        details_url,
                    );
                    // The end is acknowledged once its report is queued: a check left
                    // pending would hold merges. A failure goes round again, finding
                    // the ended execution by name.
                    return self
                        .queue_or_retry(received, &[Job::report(report)], "the report of an end")
                        .await;
                }
                End::Interrupted => {
                    tracing::warn!("The execution was interrupted; starting it again.");
                    continue;
                }
                End::Stopped => return Settle::Release(Duration::ZERO),
                End::HeldTooLong => return self.hand_over(request, received).await,
                End::Unknown(error) => {
                    let delay = self.retry_delay(received);
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Could not tell whether the execution ended; will look again.");
                    return Settle::Retry(delay);
                }
            }
        }
    }

    /// Hands a long execution's lane over from its held job to a `release` job: the lane
    /// is marked busy in the journal (its next jobs are parked there, however long it
    /// runs), the release job queued, and the start job acknowledged. A failure keeps
    /// holding the job (it is released to be taken up again: the start finds the
    /// execution by name, and tries again).
    async fn hand_over(&self, request: &ExecutionRequest, received: &Received) -> Settle {
        let Some(lanes) = self.lanes() else {
            return Settle::Release(Duration::ZERO);
        };
        let lane = crate::journal::Lane::of(request);
        let retry = || self.retry_delay(received);
        if let Err(error) = lanes.journal().occupy(&lane, request.name.as_str()).await {
            tracing::warn!(error = %Chain(&error), "Could not mark the lane busy; its job goes back to the queue, to be held again.");
            return Settle::Release(retry());
        }
        let release = crate::execution::report::Release {
            request: request.clone(),
            look: 0,
            not_before_ms: self.clock.now_ms() + self.settings.poll_interval.as_millis() as i64,
        };
        match enqueue(self.queue.as_ref(), &[Job::release(release)]).await {
            Ok(()) => {
                tracing::info!(
                    max_hold_secs = self.settings.max_hold.as_secs(),
                    "The execution runs longer than its job may be held: the lane is busy, its next jobs are parked until it ends."
                );
                Settle::Ack
            }
            Err(error) => {
                // Busy with nothing to end it would park the lane for good: undone.
                if let Err(vacate) = lanes.journal().vacate(&lane).await {
                    tracing::error!(error = %Chain(&vacate), "Could not undo a lane's busy mark; it stays held until a resume of it.");
                }
                tracing::warn!(error = %Chain(&error), "Could not queue the job that follows a long execution; its job goes back to the queue.");
                Settle::Release(retry())
            }
        }
    }

    /// Follows a started execution until it ends. Look soon at first (most executions
    /// of a quick pipeline are over in a moment), then every poll_interval. A failure
    /// to describe it is never taken for its end: the execution was started, so it is
    /// looked at again (Step Functions' reads are eventually consistent, and an
    /// expired credential gets renewed) for up to DESCRIBE_PATIENCE.
    async fn wait_for_end(
        &self,
        request: &ExecutionRequest,
        hand_over: Option<tokio::time::Instant>,
        hard_stop: &CancellationToken,
    ) -> End {
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
                    return End::Finished(execution);
                }
                Ok(execution) if execution.status == ExecutionStatus::Interrupted => {
                    return End::Interrupted;
                }
                Ok(_) if hand_over.is_some_and(|at| tokio::time::Instant::now() >= at) => {
                    return End::HeldTooLong;
                }
                Ok(_) => failing_since = None,
                Err(error) => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= DESCRIBE_PATIENCE {
                        return End::Unknown(Chain(&error).to_string());
                    }
                    tracing::warn!(error = %Chain(&error), "Could not describe the execution; will look again.");
                }
            }
            let until_hand_over = hand_over.map_or(wait, |at| {
                at.saturating_duration_since(tokio::time::Instant::now())
                    .max(Duration::from_millis(10))
            });
            tokio::select! {
                _ = hard_stop.cancelled() => return End::Stopped,
                _ = tokio::time::sleep(wait.min(until_hand_over)) => {}
            }
            wait = (wait * 2).min(self.settings.poll_interval);
        }
    }
}
