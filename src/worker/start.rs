//! The `start` job: start one execution and, when its job must be held (a serial
//! lane, or an executor whose executions die with this process), follow it to its end,
//! starting it again when it was interrupted.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{End, Settle, Worker};
use crate::error::Chain;
use crate::execution::ExecutionRequest;
use crate::executor::{ExecutionStatus, ExecutorError, Started};
use crate::queue::Received;
use crate::retry::backoff;
use crate::telemetry::labels;

/// How long a started execution may fail to be described before its job is released
/// to be looked at again later (never dead-lettered: the execution exists).
const DESCRIBE_PATIENCE: Duration = Duration::from_secs(300);

impl Worker {
    /// Starts one execution and, when its job must be held (a serial lane, or an
    /// executor whose executions die with this process), waits until it ends, starting
    /// it again when it was interrupted.
    pub(super) async fn start(
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
                Err(error @ ExecutorError::Retryable { .. }) => {
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
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Could not start the execution; will retry, holding the lane.");
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
                        return End::Unknown(Chain(&error).to_string());
                    }
                    tracing::warn!(error = %Chain(&error), "Could not describe the execution; will look again.");
                }
            }
            tokio::select! {
                _ = hard_stop.cancelled() => return End::Stopped,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(self.settings.poll_interval);
        }
    }
}
