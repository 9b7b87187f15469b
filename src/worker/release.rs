//! The `release` job: a serial lane's execution ran longer than its job may be held in
//! flight, so its lane was marked busy (its next jobs parked in the journal) and its
//! job acknowledged. This job looks at the execution after growing delays, each look a
//! message of its own (waiting uses up no receives); at its end, it records and reports
//! the end, marks the lane free and puts its parked jobs back on the queue, in order.

use std::time::Duration;

use super::report::ended;
use super::watch::watch_delay;
use super::{Handler, Run, Settle, Worker};
use crate::error::Chain;
use crate::execution::report::Release;
use crate::job::Job;
use crate::journal::Lane;
use crate::queue::Received;
use crate::queue::enqueue;
use crate::telemetry::labels;

/// The longest wait between two looks.
const MAX_RELEASE_DELAY: Duration = Duration::from_secs(60);

impl Handler for Release {
    fn span(&self, _: &Received) -> tracing::Span {
        tracing::info_span!(
            "job",
            kind = "release",
            execution = %self.request.name,
            pipeline = %self.request.pipeline,
            look = self.look,
        )
    }

    async fn handle(&self, worker: &Worker, run: &Run<'_>) -> Settle {
        worker.release(self, run.received.receive_count).await
    }
}

impl Worker {
    pub(super) async fn release(&self, release: &Release, receive_count: u32) -> Settle {
        if let Some(wait) = self.not_due(release.not_before_ms) {
            return Settle::Release(wait);
        }
        let request = &release.request;
        let execution = match self
            .executor
            .describe(&request.pipeline, &request.name)
            .await
        {
            Ok(execution) if execution.status.is_finished() => execution,
            Ok(_) => return self.release_later(release).await,
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not describe the execution that holds the lane; will look again.");
                return self.release_later(release).await;
            }
        };
        self.metrics
            .executions_ended
            .get_or_create(&labels(&[
                ("pipeline", &request.pipeline),
                ("status", execution.status.as_str()),
            ]))
            .inc();
        let lane = Lane::of(request);
        if let Some(lanes) = self.lanes() {
            lanes.ended(request, execution.status.as_str()).await;
        }
        let details_url = self.executor.link(&execution.id);
        if let Some(target) = request.report.as_ref().filter(|_| self.reports()) {
            self.queue_reports(vec![ended(
                &request.name,
                request.action,
                target,
                &execution,
                details_url.clone(),
            )])
            .await;
        }
        self.report_carried(request, Ok(&execution), details_url)
            .await;
        if let Some(lanes) = self.lanes()
            && let Err(error) = lanes.journal().vacate(&lane).await
        {
            tracing::warn!(error = %Chain(&error), "Could not mark the lane free; will try again.");
            return self.release_later(release).await;
        }
        match self.admission.release(&lane).await {
            Ok(released) => {
                tracing::info!(
                    status = execution.status.as_str(),
                    released,
                    "The long execution ended: its lane is free, its parked jobs back on the queue."
                );
                Settle::Ack
            }
            Err(error) => {
                tracing::warn!(error = %Chain(&error), receive_count, "Could not put the lane's parked jobs back; will try again.");
                self.release_later(release).await
            }
        }
    }

    /// Looks again later, as a message of its own.
    async fn release_later(&self, release: &Release) -> Settle {
        let look = release.look + 1;
        let delay = watch_delay(self.settings.poll_interval, look).min(MAX_RELEASE_DELAY);
        let next = Release {
            look,
            not_before_ms: self.clock.now_ms() + delay.as_millis() as i64,
            ..release.clone()
        };
        match enqueue(self.queue.as_ref(), &[Job::release(next)]).await {
            Ok(()) => Settle::Ack,
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not queue the next look at a long execution; will look again.");
                Settle::Retry(Duration::from_secs(1))
            }
        }
    }
}
