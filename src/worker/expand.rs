//! The `expand` job: a push whose source told only its old and new heads. Its commits
//! are fetched from the source's history (first parents, oldest first, at most a
//! bound), planned as if the delivery had listed them, and their starts admitted; the
//! job is acknowledged only once every start is on the queue. A crash in between
//! expands again into the same names, which start nothing twice.

use super::{Handler, Run, Settle, Worker};
use crate::error::Chain;
use crate::event::{Event, EventKind, Push};
use crate::execution::Expansion;
use crate::ledger::Claimant;
use crate::queue::Received;
use crate::source::{HistoryError, WalkEnd};
use crate::telemetry::labels;

impl Handler for Expansion {
    fn span(&self, received: &Received) -> tracing::Span {
        tracing::info_span!(
            "job",
            kind = "expand",
            delivery = %self.delivery,
            repository = %self.repository,
            git_ref = %self.git_ref,
            before = %self.before,
            after = %self.after,
            receive_count = received.receive_count,
        )
    }

    async fn handle(&self, worker: &Worker, run: &Run<'_>) -> Settle {
        worker.expand(run.received, self).await
    }
}

impl Worker {
    pub(super) async fn expand(&self, received: &Received, expansion: &Expansion) -> Settle {
        let Some(history) = self.histories.get(&expansion.source) else {
            return Settle::DeadLetter(format!(
                "no commit history is configured for {} pushes",
                expansion.source
            ));
        };
        let retry = || self.retry_delay(received);
        let walk = match history
            .walk(
                &expansion.repository,
                &expansion.before,
                &expansion.after,
                self.max_commits
                    .get(&expansion.source)
                    .copied()
                    .unwrap_or(1),
                expansion.paths,
            )
            .await
        {
            Ok(walk) => walk,
            Err(error @ HistoryError::Retryable { .. }) => {
                let delay = retry();
                tracing::warn!(error = %Chain(&error), retry_in_ms = delay.as_millis() as u64, "Could not fetch the push's commits; will retry.");
                return Settle::Retry(delay);
            }
            Err(error @ HistoryError::Permanent { .. }) => {
                return Settle::DeadLetter(Chain(&error).to_string());
            }
        };
        self.metrics
            .expansions
            .get_or_create(&labels(&[("end", walk.end.as_str())]))
            .inc();
        match walk.end {
            WalkEnd::Reached => {}
            WalkEnd::Bound => tracing::warn!(
                commits = walk.commits.len(),
                "The push has more commits than its source's bound (codecommit.max_commits, github.max_expanded_commits): only the newest are planned."
            ),
            WalkEnd::Unreachable => tracing::warn!(
                "The push's old head is not an ancestor of its new one (a force-push): only the new head is planned."
            ),
        }
        let event = Event {
            source: expansion.source,
            delivery: expansion.delivery.clone(),
            occurrence: expansion.occurrence.clone(),
            repository: expansion.repository.clone(),
            kind: EventKind::Push(Push {
                git_ref: expansion.git_ref.clone(),
                before: expansion.before.clone(),
                after: expansion.after.clone(),
                created: false,
                deleted: false,
                forced: walk.end == WalkEnd::Unreachable,
                commits_truncated: walk.end == WalkEnd::Bound,
                commits_listed: true,
                head_commit: walk.commits.last().cloned(),
                commits: walk.commits,
            }),
        };
        let plan = match self.runtime.load().planner.plan(&event) {
            Ok(plan) => plan,
            Err(error) => return Settle::DeadLetter(error.to_string()),
        };
        // The push came in a delivery: its commits are claimed as a delivery's are, and
        // its starts queued with what reporting shows of them at once.
        let intake = crate::admission::Intake::new(Some(Claimant::Delivery))
            .starts(plan.requests)
            .reports(plan.reports);
        match self.admission.admit(intake).await {
            Ok(admitted) => {
                tracing::info!(
                    starts = admitted.queued.len(),
                    "Expanded a push into its commits' starts."
                );
                Settle::Ack
            }
            Err(error) => {
                let delay = retry();
                tracing::warn!(error = %Chain(&error), retry_in_ms = delay.as_millis() as u64, "Could not queue the push's starts; will expand again.");
                Settle::Retry(delay)
            }
        }
    }
}
