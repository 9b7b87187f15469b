//! The `unpark` job: a round of putting a serial lane's parked jobs back on the queue
//! once nothing holds the lane. It travels in the lane's ordering group, so it is
//! received only after every job of the lane queued before it; those were parked as
//! they came (the lane's hold lasts until the chain ends it). It puts every parked job
//! back, in queue order, and sends the next round behind them; a round that finds
//! nothing parked ends the hold. Only the round of the chain the hold names acts: a
//! pause or a long execution stops the chain, a stale one is replaced.

use super::{Handler, Run, Settle, Worker};
use crate::error::Chain;
use crate::execution::report::Unpark;
use crate::job::Job;
use crate::journal::{HoldEnd, Lane};
use crate::queue::Received;
use crate::queue::enqueue;

impl Handler for Unpark {
    fn span(&self, _: &Received) -> tracing::Span {
        tracing::info_span!(
            "job",
            kind = "unpark",
            pipeline = %self.pipeline,
            environment = %self.environment,
            fence = %self.fence,
            round = self.round,
        )
    }

    async fn handle(&self, worker: &Worker, run: &Run<'_>) -> Settle {
        worker.unpark(self, run.received.receive_count).await
    }
}

impl Worker {
    pub(super) async fn unpark(&self, unpark: &Unpark, receive_count: u32) -> Settle {
        let Some(lanes) = self.lanes() else {
            return Settle::Ack;
        };
        let journal = lanes.journal();
        let lane = Lane {
            pipeline: unpark.pipeline.clone(),
            environment: unpark.environment.clone(),
        };
        let retry = |what: &str, error: &(dyn std::error::Error + 'static)| {
            let delay = self.retry_after(receive_count);
            tracing::warn!(error = %Chain(error), retry_in_ms = delay.as_millis() as u64, "Could not {what}; will try again.");
            Settle::Retry(delay)
        };
        match journal.hold(&lane).await {
            Ok(Some(hold)) if !hold.holds() && hold.fence.as_deref() == Some(&unpark.fence) => {}
            // The hold ended, or the lane is held again (its next resume sends a
            // chain of its own), or another chain took over.
            Ok(_) => return Settle::Ack,
            Err(error) => return retry("read the lane's hold", &error),
        }
        let put_back = match self.admission.put_back(&lane).await {
            Ok(put_back) => put_back,
            Err(error) => return retry("put the lane's parked jobs back", &error),
        };
        if put_back == 0 {
            match journal.end_hold(&lane, Some(&unpark.fence)).await {
                Ok(HoldEnd::Parked) => {}
                Ok(_) => {
                    tracing::info!(
                        round = unpark.round,
                        "Every parked job of the lane is back on the queue: its hold ended."
                    );
                    return Settle::Ack;
                }
                Err(error) => return retry("end the lane's hold", &error),
            }
        }
        // Jobs queued after this round and before those it put back are behind it and
        // ahead of them: the next round, behind them all, parks and puts those back.
        match journal.fence(&lane, &unpark.fence, i64::MIN).await {
            Ok(true) => {}
            Ok(false) => return Settle::Ack,
            Err(error) => return retry("note the lane's next round", &error),
        }
        let next = Unpark {
            round: unpark.round + 1,
            ..unpark.clone()
        };
        match enqueue(self.queue.as_ref(), &[Job::unpark(next)]).await {
            Ok(()) => {
                tracing::info!(
                    round = unpark.round,
                    put_back,
                    "Put a lane's parked jobs back; the next round follows them."
                );
                Settle::Ack
            }
            Err(error) => retry("queue the lane's next round", &error),
        }
    }
}
