//! The CodePipeline job worker: a poll loop that turns the custom action's jobs into
//! starts, and the `follow` job that passes or fails each CodePipeline job with its
//! execution's outcome.
//!
//! A job is queued before it is acknowledged, under names that are a function of its
//! job id: a worker that crashes between the two leaves a job CodePipeline offers
//! again, and the second poll queues the same names, which start one execution. A job
//! whose trigger cannot be planned fails the action with the reason; one that cannot be
//! queued now is left unacknowledged, for CodePipeline to offer again. None is left
//! hanging. A result CodePipeline refuses because the job has one already (an
//! earlier copy of the follow job got there) counts as written: each job is passed or
//! failed once.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_codepipeline::types::FailureType;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::watch::watch_delay;
use super::{Handler, Run, Settle, Worker};
use crate::error::Chain;
use crate::event::EventKind;
use crate::execution::name::ExecutionName;
use crate::execution::report::Follow;
use crate::executor::ExecutionStatus;
use crate::job::Job;
use crate::journal::{DeliveryRecord, JobState};
use crate::queue::Received;
use crate::queue::enqueue;
use crate::retry::backoff;
use crate::source::codepipeline::{CodePipeline, CodePipelineError, Polled, PolledJob};

/// The longest wait between two looks at a followed execution.
const MAX_FOLLOW_DELAY: Duration = Duration::from_secs(60);

/// What the worker needs to serve a custom action.
pub struct Following {
    pub codepipeline: Arc<CodePipeline>,
    pub poll_interval: Duration,
    pub continue_after: Duration,
    pub start_timeout: Duration,
    /// The pipelines a job may name; any when empty.
    pub pipelines: Vec<String>,
}

/// What a polled job asks the admission step to queue: its starts, the follows that
/// watch them, and the journal's record of it (none for a job that follows on).
type Taken = crate::admission::Intake;

/// Why a polled job cannot run, and what the journal keeps of it, if anything.
struct Refused {
    reason: String,
    record: Option<DeliveryRecord>,
}

/// The continuation token a job is handed back with: what to follow, and since when.
#[derive(serde::Serialize, serde::Deserialize)]
struct Token {
    pipeline: String,
    execution: String,
    /// When the action execution's first job was taken (a token of an earlier release
    /// has none: its continuation counts from its own take).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since_ms: Option<i64>,
}

impl Handler for Follow {
    fn span(&self, _: &Received) -> tracing::Span {
        tracing::info_span!(
            "job",
            kind = "follow",
            codepipeline_job = %self.job_id,
            execution = %self.execution,
            look = self.look,
        )
    }

    async fn handle(&self, worker: &Worker, run: &Run<'_>) -> Settle {
        worker.follow(self, run.received.receive_count).await
    }
}

impl Worker {
    /// Polls for the action's jobs until `shutdown`: at once again after a poll that
    /// found some, after the poll interval otherwise.
    pub async fn poll_codepipeline(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(following) = &self.following else {
            return;
        };
        loop {
            let wait = match following.codepipeline.poll().await {
                Ok(jobs) if !jobs.is_empty() => {
                    for job in jobs {
                        let span = tracing::info_span!("codepipeline", job = %job.id);
                        self.take(following, job).instrument(span).await;
                    }
                    Duration::ZERO
                }
                Ok(_) => following.poll_interval,
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), "Could not poll CodePipeline for jobs.");
                    following.poll_interval
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Queues what a polled job asks, then acknowledges it; or fails it.
    async fn take(&self, following: &Following, job: PolledJob) {
        let outcome = match self.plan_job(following, &job).await {
            Ok(taken) => match self.admission.admit(taken).await {
                Ok(_) => Ok(()),
                Err(error) => {
                    // Left unacknowledged: CodePipeline offers it again, and it is
                    // queued then, under the same names.
                    tracing::warn!(error = %Chain(&error), "Could not queue a CodePipeline job's execution; it will be offered again.");
                    return;
                }
            },
            Err(refused) => Err(refused),
        };
        match following.codepipeline.acknowledge(&job).await {
            Ok(()) => {}
            Err(
                CodePipelineError::Gone { message } | CodePipelineError::NotInProgress { message },
            ) => {
                tracing::info!(%message, "Another worker took the CodePipeline job.");
                return;
            }
            Err(error) => {
                // Not acknowledged: CodePipeline offers it again, and the same names
                // are queued again.
                tracing::warn!(error = %Chain(&error), "Could not acknowledge a CodePipeline job; it will be offered again.");
                return;
            }
        }
        match outcome {
            Ok(()) => tracing::info!("Took a CodePipeline job."),
            Err(refused) => {
                // What the journal keeps of a refused job, as of a delivery: for the
                // page and `GET /v1/deliveries`.
                if let Some(mut record) = refused.record {
                    (record.status, record.outcome) = (422, "refused".into());
                    record.reason = Some(refused.reason.clone());
                    record.executions.clear();
                    self.admission.refused(&record).await;
                }
                self.fail_taken(following, &job, &refused.reason).await
            }
        }
    }

    /// The jobs to queue for a polled job, or why it cannot run.
    async fn plan_job(&self, following: &Following, job: &PolledJob) -> Result<Taken, Refused> {
        let now = self.clock.now_ms();
        let follow = |pipeline: String, execution, since_ms: Option<i64>| {
            Job::follow(Follow {
                job_id: job.id.clone(),
                pipeline,
                execution,
                taken_ms: now,
                since_ms: since_ms.unwrap_or(now),
                look: 0,
                not_before_ms: now + following.poll_interval.as_millis() as i64,
            })
        };
        let refused = |reason: String| Refused {
            reason,
            record: None,
        };
        let event = match &job.polled {
            Polled::Refused { reason } => return Err(refused(reason.clone())),
            Polled::Continue { token } => {
                let followed = serde_json::from_str::<Token>(token).ok().and_then(|token| {
                    let name = ExecutionName::parse(&token.execution).ok()?;
                    Some((token.pipeline, name, token.since_ms))
                });
                let Some((pipeline, name, since_ms)) = followed else {
                    return Err(refused(format!(
                        "the continuation token {token:?} is not one gitdispatch gave"
                    )));
                };
                // Its trigger was recorded when its first job was taken.
                return Ok(
                    crate::admission::Intake::new(None).jobs([follow(pipeline, name, since_ms)])
                );
            }
            Polled::Start { event } => event,
        };
        if let EventKind::Manual(manual) = &event.kind
            && !following.pipelines.is_empty()
            && !following.pipelines.contains(&manual.pipeline)
        {
            return Err(refused(format!(
                "pipeline {:?} is not one of codepipeline.pipelines",
                manual.pipeline
            )));
        }
        let mut event = event.as_ref().clone();
        self.find_source(following, &mut event).await;
        let mut record = DeliveryRecord::received(&job.id, Some(&event));
        let plan = match self.runtime.load().planner.plan(&event) {
            Ok(plan) if !plan.requests.is_empty() => plan,
            planned => {
                return Err(Refused {
                    reason: planned.map_or_else(
                        |error| error.to_string(),
                        |_| "the trigger planned no execution".to_string(),
                    ),
                    record: Some(record),
                });
            }
        };
        record.explanation = plan.trace;
        let follows: Vec<Job> = plan
            .requests
            .iter()
            .map(|request| follow(request.pipeline.clone(), request.name.clone(), None))
            .collect();
        Ok(crate::admission::Intake::new(None)
            .starts(plan.requests)
            .jobs(follows)
            .delivery(record, String::new()))
    }

    async fn fail_taken(&self, following: &Following, job: &PolledJob, reason: &str) {
        tracing::warn!(%reason, "Failing a CodePipeline job that cannot run.");
        if let Err(error) = following
            .codepipeline
            .fail(&job.id, FailureType::ConfigurationError, reason, None)
            .await
        {
            tracing::error!(error = %Chain(&error), "Could not fail a CodePipeline job; it will time out.");
        }
    }

    /// Fills in the repository and branch the job's artifact comes from, from the
    /// pipeline's declaration; without them (an S3 source, a call that failed) the job
    /// still runs, with its revision alone.
    async fn find_source(&self, following: &Following, event: &mut crate::event::Event) {
        let crate::event::EventKind::Manual(manual) = &mut event.kind else {
            return;
        };
        let Some(place) = manual.codepipeline.as_mut() else {
            return;
        };
        let Some(artifact) = place.artifact.clone() else {
            return;
        };
        match following
            .codepipeline
            .source_of(&place.pipeline, &artifact)
            .await
        {
            Ok(Some((repository, branch))) => {
                event.repository = repository.clone();
                place.repository = Some(repository);
                place.branch = Some(branch);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(error = %Chain(&error), pipeline = %place.pipeline, "Could not read the pipeline's source action; the job runs with its revision alone.");
            }
        }
    }

    /// Looks at a CodePipeline job's execution: passes or fails the job at its end,
    /// hands it back as in progress when it is old (running, or waiting to start in its
    /// lane), or looks again later.
    pub(super) async fn follow(&self, follow: &Follow, receive_count: u32) -> Settle {
        if let Some(wait) = self.not_due(follow.not_before_ms) {
            return Settle::Release(wait);
        }
        let Some(following) = &self.following else {
            return Settle::DeadLetter(
                "a CodePipeline job to follow, on a worker without [codepipeline]".into(),
            );
        };
        let codepipeline = &following.codepipeline;
        let now = self.clock.now_ms();
        let age = Duration::from_millis((now - follow.taken_ms).max(0) as u64);
        let waited = Duration::from_millis((now - follow.since_ms).max(0) as u64);
        // Hands the job back in progress; CodePipeline makes a new job for the action,
        // with this token, that the poll follows on. So no job outlives CodePipeline's
        // timeout for one, however long its execution runs or waits.
        let hand_back = |summary: String, external_id: Option<String>| async move {
            let token = serde_json::to_string(&Token {
                pipeline: follow.pipeline.clone(),
                execution: follow.execution.to_string(),
                since_ms: Some(follow.since_ms),
            })
            .expect("a token always serializes");
            codepipeline
                .succeed(
                    &follow.job_id,
                    &summary,
                    external_id.as_deref(),
                    Some(&token),
                )
                .await
        };
        let written = match self
            .executor
            .describe(&follow.pipeline, &follow.execution)
            .await
        {
            Ok(execution) if execution.status.is_finished() => {
                let link = Some(execution.id.as_str());
                let detail = execution.detail.as_deref().unwrap_or_default();
                if execution.status == ExecutionStatus::Succeeded {
                    let summary = format!("{} succeeded: {detail}", follow.execution);
                    codepipeline
                        .succeed(&follow.job_id, &summary, link, None)
                        .await
                } else {
                    let message = format!(
                        "{} {}: {detail}",
                        follow.execution,
                        execution.status.as_str()
                    );
                    codepipeline
                        .fail(&follow.job_id, FailureType::JobFailed, &message, link)
                        .await
                }
            }
            Ok(execution) if age >= following.continue_after => {
                hand_back(
                    format!("{} is running", follow.execution),
                    Some(execution.id),
                )
                .await
            }
            Ok(_) => return self.follow_later(follow).await,
            // Not started (yet): whether it ever will, and how long it has waited.
            Err(error) => match self.never_starts(follow).await {
                Some(reason) => {
                    codepipeline
                        .fail(&follow.job_id, FailureType::JobFailed, &reason, None)
                        .await
                }
                None if waited >= following.start_timeout => {
                    let reason = format!(
                        "{} did not start within {} s: {}",
                        follow.execution,
                        following.start_timeout.as_secs(),
                        Chain(&error)
                    );
                    codepipeline
                        .fail(&follow.job_id, FailureType::JobFailed, &reason, None)
                        .await
                }
                None if age >= following.continue_after => {
                    hand_back(
                        format!(
                            "{} waits in its lane (pipeline {}) to start",
                            follow.execution, follow.pipeline
                        ),
                        None,
                    )
                    .await
                }
                None => return self.follow_later(follow).await,
            },
        };
        match written {
            Ok(()) => {
                tracing::info!(job = %follow.job_id, execution = %follow.execution, "Told CodePipeline how its job went.");
                self.mark_result(&follow.job_id).await;
                Settle::Ack
            }
            Err(CodePipelineError::Gone { message }) => {
                tracing::info!(job = %follow.job_id, %message, "The CodePipeline job is gone.");
                Settle::Ack
            }
            Err(CodePipelineError::NotInProgress { message }) => {
                // Either another follow of the job gave its result (it says so in the
                // ledger), or the job is not acknowledged yet: its acknowledgement was
                // lost and CodePipeline offers it again, to be taken and followed.
                if self.result_marked(&follow.job_id).await {
                    tracing::info!(job = %follow.job_id, "The CodePipeline job has its result already.");
                    return Settle::Ack;
                }
                if waited >= following.start_timeout + following.continue_after {
                    tracing::warn!(job = %follow.job_id, %message, "CodePipeline has refused this job's result for longer than it can wait: giving up on it (it has its result, or timed out).");
                    return Settle::Ack;
                }
                // Looked at again by a message of its own: waiting for CodePipeline to
                // offer the job again uses up none of this one's receives.
                tracing::info!(job = %follow.job_id, %message, "CodePipeline does not take the result yet (the job is not acknowledged); will look again.");
                self.follow_later(follow).await
            }
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not tell CodePipeline how its job went; will try again.");
                Settle::Retry(backoff(
                    receive_count,
                    self.settings.retry_initial,
                    self.settings.retry_max,
                ))
            }
        }
    }

    /// The ledger's key that says a CodePipeline job has its result.
    fn result_key(job_id: &str) -> String {
        format!("codepipeline-result#{job_id}")
    }

    /// Records that the job has its result, for another follow of it to find.
    async fn mark_result(&self, job_id: &str) {
        let Some(ledger) = self.admission.ledger() else {
            return;
        };
        if let Err(error) = ledger.remember(&Self::result_key(job_id), "given").await {
            tracing::warn!(error = %Chain(&error), "Could not record that a CodePipeline job has its result; another follow of it waits until its timeout.");
        }
    }

    /// Whether a follow of the job recorded giving its result. Without a ledger, or
    /// when it cannot be read, a refused result is taken as given (as CodePipeline's
    /// refusal most often means).
    async fn result_marked(&self, job_id: &str) -> bool {
        let Some(ledger) = self.admission.ledger() else {
            return true;
        };
        match ledger.recall(&Self::result_key(job_id)).await {
            Ok(found) => found.is_some(),
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not read whether a CodePipeline job has its result; taking it as given.");
                true
            }
        }
    }

    /// Why the followed execution will never start, when the journal says so: its
    /// start was dead-lettered, or a newer job of its lane superseded it.
    async fn never_starts(&self, follow: &Follow) -> Option<String> {
        let lanes = self.lanes()?;
        let job = lanes
            .journal()
            .job(follow.execution.as_str())
            .await
            .ok()
            .flatten()?;
        match (job.state, job.status.as_deref()) {
            (JobState::Rejected, reason) => Some(format!(
                "{} could not be started ({}: see the queue's dead letters)",
                follow.execution,
                reason.unwrap_or("its start was dead-lettered")
            )),
            (JobState::Superseded, newer) => Some(format!(
                "{} was superseded by {} and did not run",
                follow.execution,
                newer.unwrap_or("a newer job of its lane")
            )),
            _ => None,
        }
    }

    /// Queues the next look at the job's execution: after a growing delay, but never
    /// past the moment the job is due to be handed back.
    async fn follow_later(&self, follow: &Follow) -> Settle {
        let look = follow.look + 1;
        let mut delay = watch_delay(self.settings.poll_interval, look).min(MAX_FOLLOW_DELAY);
        if let Some(following) = &self.following {
            let due_ms = follow.taken_ms + following.continue_after.as_millis() as i64;
            let until_due = due_ms - self.clock.now_ms();
            if until_due > 0 {
                delay = delay.min(Duration::from_millis(until_due as u64));
            }
        }
        let next = Follow {
            look,
            not_before_ms: self.clock.now_ms() + delay.as_millis() as i64,
            ..follow.clone()
        };
        match enqueue(self.queue.as_ref(), &[Job::follow(next)]).await {
            Ok(()) => Settle::Ack,
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not queue the next look at a CodePipeline job's execution; will look again.");
                Settle::Retry(Duration::from_secs(1))
            }
        }
    }
}
