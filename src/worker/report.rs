//! The `report` job: tell the source how an execution is doing, and the reports the
//! other job kinds queue as an execution moves on (started, ended).
//!
//! Reporting is best effort for the pipeline and exact for the user: no execution
//! waits for a report; a report GitHub cannot take now is queued again, as a message
//! of its own after a backoff (or after the wait GitHub asked for), up to
//! REPORT_ATTEMPTS tries (about two hours with the default `retry_initial_ms`), then
//! logged and counted; a report never replaces a later state of the same execution
//! (the reporter checks).

use std::time::Duration;

use rand::Rng;

use super::{Handler, Run, Settle, Worker};
use crate::error::Chain;
use crate::execution::Action;
use crate::execution::ExecutionRequest;
use crate::execution::name::ExecutionName;
use crate::execution::report::{Report, ReportState, ReportTarget, Stage};
use crate::executor::{Execution, ExecutionStatus};
use crate::job::Job;
use crate::queue::Received;
use crate::queue::enqueue;

use crate::report::{ReportError, Reported, log_given_up};
use crate::retry::backoff;
use crate::telemetry::labels;

/// Tries of one report before it is given up.
pub(super) const REPORT_ATTEMPTS: u32 = 20;

/// Backoff between tries of a report: from the worker's `retry_initial_ms`, doubling
/// up to 10 minutes, so that a GitHub outage of an hour or two loses no report.
const REPORT_RETRY_MAX: Duration = Duration::from_secs(600);

impl Handler for Report {
    fn span(&self, _: &Received) -> tracing::Span {
        tracing::info_span!(
            "job",
            kind = "report",
            repository = %self.target.repository,
            commit = %self.target.commit,
            context = %self.target.context,
            stage = self.stage.as_str(),
            attempt = self.attempt,
        )
    }

    async fn handle(&self, worker: &Worker, _: &Run<'_>) -> Settle {
        worker.report(self).await
    }
}

impl Worker {
    pub(super) async fn report(&self, report: &Report) -> Settle {
        let Some(reporter) = &self.reporter else {
            tracing::warn!(
                "A report was queued, but this worker reports nowhere (no [github] token or App): dropped."
            );
            self.count_report("dropped");
            return Settle::Ack;
        };
        if let Some(wait) = self.not_due(report.not_before_ms) {
            return Settle::Release(wait);
        }
        match reporter.report(report).await {
            Ok(Reported::Written) => {
                tracing::info!("Reported to GitHub.");
                self.count_report("written");
                Settle::Ack
            }
            Ok(Reported::Stale) => {
                tracing::info!("A later state is shown already; reported nothing.");
                self.count_report("stale");
                Settle::Ack
            }
            Err(ReportError::Busy { retry_after }) => {
                // Not a try: come back once the limit allows, spread out so that the
                // reports waiting do not all come back at once.
                let spread = rand::rng().random_range(0..=5_000);
                self.count_report("delayed");
                self.report_later(
                    report,
                    report.attempt,
                    retry_after + Duration::from_millis(spread),
                )
                .await
            }
            Err(error @ ReportError::Retryable { .. }) => {
                let attempt = report.attempt + 1;
                if attempt >= REPORT_ATTEMPTS {
                    log_given_up(report, &error);
                    self.count_report("given_up");
                    return Settle::Ack;
                }
                let retry_after = match &error {
                    ReportError::Retryable { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let delay = backoff(attempt, self.settings.retry_initial, REPORT_RETRY_MAX)
                    .max(retry_after.unwrap_or_default());
                tracing::warn!(error = %Chain(&error), retry_in_ms = delay.as_millis() as u64, "Could not report to GitHub; will try again.");
                self.count_report("retried");
                self.report_later(report, attempt, delay).await
            }
            Err(error @ ReportError::Permanent { .. }) => {
                log_given_up(report, &error);
                self.count_report("failed");
                Settle::Ack
            }
        }
    }

    /// Queues the report again, as try `attempt`, not before `delay` from now.
    async fn report_later(&self, report: &Report, attempt: u32, delay: Duration) -> Settle {
        let mut again = report.clone();
        again.attempt = attempt;
        again.not_before_ms = self.clock.now_ms() + delay.as_millis() as i64;
        match enqueue(self.queue.as_ref(), &[Job::report(again)]).await {
            Ok(()) => Settle::Ack,
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not queue a report again; it comes back as it is.");
                Settle::Retry(delay)
            }
        }
    }

    fn count_report(&self, outcome: &str) {
        self.metrics
            .reports
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
    }

    /// Whether the worker reports at all.
    pub(super) fn reports(&self) -> bool {
        self.reporter.is_some()
    }

    /// Queues reports; what cannot be queued is logged, never waited for.
    pub(super) async fn queue_reports(&self, reports: Vec<Report>) {
        if reports.is_empty() || !self.reports() {
            return;
        }
        let jobs: Vec<Job> = reports.into_iter().map(Job::report).collect();
        if let Err(error) = enqueue(self.queue.as_ref(), &jobs).await {
            tracing::warn!(error = %Chain(&error), "Could not queue a report; the state shown may lag.");
        }
    }
}

/// The report that an execution started.
pub(super) fn started(
    request: &ExecutionRequest,
    target: &ReportTarget,
    details_url: Option<String>,
) -> Report {
    let mut report = Report::new(
        target.clone(),
        Some(request.name.clone()),
        request.action,
        Stage::Started,
        ReportState::Pending,
        "Started",
    );
    report.details_url = details_url;
    report
}

/// The report of how an execution ended.
pub(super) fn ended(
    name: &ExecutionName,
    action: Action,
    target: &ReportTarget,
    execution: &Execution,
    details_url: Option<String>,
) -> Report {
    let (state, words) = match execution.status {
        ExecutionStatus::Succeeded => (ReportState::Success, "Succeeded"),
        ExecutionStatus::Failed => (ReportState::Failure, "Failed"),
        ExecutionStatus::TimedOut => (ReportState::Error, "Timed out"),
        ExecutionStatus::Aborted => (ReportState::Error, "Aborted"),
        ExecutionStatus::Running | ExecutionStatus::Interrupted => {
            (ReportState::Pending, "Running")
        }
    };
    let mut report = Report::new(
        target.clone(),
        Some(name.clone()),
        action,
        Stage::Ended,
        state,
        words,
    );
    report.details_url = details_url;
    if state == ReportState::Success {
        report.environment_url = environment_url(target, execution);
    }
    report
}

/// The report that an execution could not be started at all (its job was
/// dead-lettered), so that its check does not wait for it forever.
pub(super) fn not_started(
    request: &ExecutionRequest,
    target: &ReportTarget,
    reason: &str,
) -> Report {
    Report::new(
        target.clone(),
        Some(request.name.clone()),
        request.action,
        Stage::Ended,
        ReportState::Error,
        format!("Could not start: {}", crate::text::cut(reason, 80)),
    )
}

/// The report that an execution was not started because a newer commit of its lane
/// waited (`supersede = true`): final, so that its check does not wait for it.
/// The report of a job superseded by `newer`: pending until `newer`, which deploys
/// its project from its ref, ends ([`carried`]).
pub(super) fn superseded(
    request: &ExecutionRequest,
    target: &ReportTarget,
    newer: &crate::journal::LaneJob,
) -> Report {
    Report::new(
        target.clone(),
        Some(request.name.clone()),
        request.action,
        Stage::Started,
        ReportState::Pending,
        format!(
            "Superseded by {} ({}), which deploys it: waiting for its outcome",
            newer.name,
            &newer.commit[..newer.commit.len().min(7)]
        ),
    )
}

/// The final report of a job that `carrier` carried (superseded it): `carrier`'s
/// outcome, naming it; or, when `carrier` never started, why.
pub(super) fn carried(
    request: &ExecutionRequest,
    target: &ReportTarget,
    carrier: &ExecutionName,
    outcome: Result<&Execution, &str>,
    details_url: Option<String>,
) -> Report {
    let mut report = match outcome {
        Ok(execution) => ended(
            &request.name,
            request.action,
            target,
            execution,
            details_url,
        ),
        Err(reason) => not_started(request, target, reason),
    };
    report.description = crate::text::cut(
        &format!("Deployed by {carrier}: {}", report.description),
        140,
    )
    .to_string();
    report
}

/// A preview's address: the route's rendered template, or what its JSONPath finds in
/// the execution's output.
fn environment_url(target: &ReportTarget, execution: &Execution) -> Option<String> {
    let deployment = target.deployment.as_ref()?;
    if let Some(url) = &deployment.url {
        return Some(url.clone());
    }
    let path = serde_json_path::JsonPath::parse(deployment.url_path.as_deref()?).ok()?;
    let output: serde_json::Value = serde_json::from_str(execution.detail.as_deref()?).ok()?;
    let found = path.query(&output).first()?.as_str()?.to_string();
    Some(found)
}
