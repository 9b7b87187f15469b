//! The `watch` job: follow an execution whose job was acknowledged once it started
//! (a parallel pipeline on Step Functions) until it ends, then queue the report of its
//! end. Each look is a job of its own, due after a growing delay, so that no worker
//! slot or concurrency permit is held between looks; a failure to describe the
//! execution is one more look later, never a dead letter.

use std::time::Duration;

use super::report::ended;
use super::{Handler, Run, Settle, Worker};
use crate::error::Chain;
use crate::execution::report::Watch;
use crate::job::Job;
use crate::queue::Received;
use crate::queue::enqueue;

/// The longest wait between two looks.
const MAX_WATCH_DELAY: Duration = Duration::from_secs(300);

impl Handler for Watch {
    fn span(&self, _: &Received) -> tracing::Span {
        tracing::info_span!(
            "job",
            kind = "watch",
            execution = %self.execution,
            pipeline = %self.pipeline,
            look = self.look,
        )
    }

    async fn handle(&self, worker: &Worker, run: &Run<'_>) -> Settle {
        worker.watch(self, run.received.receive_count).await
    }
}

impl Worker {
    pub(super) async fn watch(&self, watch: &Watch, receive_count: u32) -> Settle {
        if let Some(wait) = self.not_due(watch.not_before_ms) {
            return Settle::Release(wait);
        }
        let retry = || self.retry_after(receive_count);
        match self
            .executor
            .describe(&watch.pipeline, &watch.execution)
            .await
        {
            Ok(execution) if execution.status.is_finished() => {
                let report = ended(
                    &watch.execution,
                    watch.action,
                    &watch.target,
                    &execution,
                    watch.details_url.clone(),
                );
                match enqueue(self.queue.as_ref(), &[Job::report(report)]).await {
                    Ok(()) => {
                        tracing::info!(
                            status = execution.status.as_str(),
                            "The watched execution ended."
                        );
                        Settle::Ack
                    }
                    Err(error) => {
                        tracing::warn!(error = %Chain(&error), "Could not queue the report of an end; will look again.");
                        Settle::Retry(retry())
                    }
                }
            }
            outcome => {
                if let Err(error) = &outcome {
                    tracing::warn!(error = %Chain(error), "Could not describe the watched execution; will look again.");
                }
                let look = watch.look + 1;
                let delay = watch_delay(self.settings.poll_interval, look);
                let next = Watch {
                    look,
                    not_before_ms: self.clock.now_ms() + delay.as_millis() as i64,
                    ..watch.clone()
                };
                match enqueue(self.queue.as_ref(), &[Job::watch(next)]).await {
                    Ok(()) => Settle::Ack,
                    Err(error) => {
                        tracing::warn!(error = %Chain(&error), "Could not queue the next look at an execution; will look again.");
                        Settle::Retry(retry())
                    }
                }
            }
        }
    }
}

/// How long after look `look` (from 0) the next one comes: `poll_interval`, doubling,
/// up to MAX_WATCH_DELAY.
pub(super) fn watch_delay(poll_interval: Duration, look: u32) -> Duration {
    let base = poll_interval.max(Duration::from_secs(1));
    base.saturating_mul(1u32 << look.min(16))
        .min(MAX_WATCH_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_grow_apart_up_to_a_bound() {
        let poll = Duration::from_secs(2);
        assert_eq!(watch_delay(poll, 0), Duration::from_secs(2));
        assert_eq!(watch_delay(poll, 3), Duration::from_secs(16));
        assert_eq!(watch_delay(poll, 40), MAX_WATCH_DELAY);
        assert_eq!(watch_delay(Duration::ZERO, 0), Duration::from_secs(1));
    }
}
