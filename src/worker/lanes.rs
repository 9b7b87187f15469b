//! What holds a lane, as the worker honours it: a held lane (paused by an operator, or
//! busy with an execution that ran past what the queue may hold) starts nothing: its
//! jobs are parked in the journal, off the queue, and put back in order when the hold
//! ends; with `supersede = true` a serial lane's job is not started when
//! `crate::lanes` says a newer one carries it. The states themselves are
//! `crate::lanes`'s to move.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::Worker;
use super::report::{carried, superseded};
use crate::error::Chain;
use crate::execution::ExecutionRequest;
use crate::executor::Execution;
use crate::job::{Job, JobKind, Read};
use crate::journal::Lane;
use crate::lanes::{PAUSE_REFRESH, Park};
use crate::queue::Received;
use crate::telemetry::labels;

/// What becomes of a received job, as [`Worker::parking`] decides.
pub(super) enum Parking {
    Run,
    /// Parked in the journal: acknowledge it.
    Parked,
    /// Its lane is held and it could not be parked: hold it in flight.
    Hold(Lane),
}

impl Worker {
    /// What becomes of a received job whose lane may be held (paused, or busy with a
    /// long execution): run it, or park it in the journal (it is acknowledged off the
    /// queue, and put back in order when the hold ends), or, when it cannot be parked
    /// (the journal cannot be written, the lane has as many parked as it may keep),
    /// hold it in flight.
    pub(super) async fn parking(&self, received: &Received) -> Parking {
        let Some(lanes) = self.lanes() else {
            return Parking::Run;
        };
        let Read::Job(job) = Job::read(&received.message.body) else {
            return Parking::Run;
        };
        let JobKind::Start { request } = job.kind else {
            return Parking::Run;
        };
        let lane = Lane::of(&request);
        let held = match lanes.is_held(&request).await {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not read whether the lane is held; going by what was read last.");
                lanes.held().await.contains(&lane)
            }
        };
        if !held {
            return Parking::Run;
        }
        match lanes.park(&request, received.sent_at_ms).await {
            Ok(Park::Parked) => {
                tracing::info!(pipeline = %lane.pipeline, environment = %lane.environment, execution = %request.name, "Parked a job of a held lane; it is put back in order when the hold ends.");
                // A serial lane whose hold ended and whose parked jobs are going back:
                // this one follows them. Should the chain putting them back have been
                // lost, a new one begins.
                if let Err(error) = self.admission.release(&lane).await {
                    tracing::warn!(error = %Chain(&error), "Could not see to the lane's parked jobs going back; its next resume does.");
                }
                Parking::Parked
            }
            Ok(Park::Run) => Parking::Run,
            Ok(Park::Hold(why)) => {
                tracing::info!(execution = %request.name, why, "A job of a held lane is not parked; holding it on the queue instead.");
                Parking::Hold(lane)
            }
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not park a job of a held lane; holding it on the queue instead.");
                Parking::Hold(lane)
            }
        }
    }

    /// Holds a job of a held lane that could not be parked until it can be, or its
    /// lane is not held any more: invisible (the chain's heartbeat keeps it so, and its
    /// receive count does not grow) and without a permit, so that other lanes go on.
    /// The permit to go on with (`None` when the worker is stopping first), and what
    /// became of the job.
    pub(super) async fn hold_while_held(
        &self,
        lane: &Lane,
        received: &Received,
        permits: &Arc<Semaphore>,
        hard_stop: &CancellationToken,
    ) -> (Option<OwnedSemaphorePermit>, Parking) {
        tracing::info!(pipeline = %lane.pipeline, environment = %lane.environment, job = %received.message.id, "Holding a job of a held lane.");
        let parking = loop {
            tokio::select! {
                _ = hard_stop.cancelled() => return (None, Parking::Hold(lane.clone())),
                _ = tokio::time::sleep(PAUSE_REFRESH) => {}
            }
            match self.parking(received).await {
                Parking::Hold(_) => continue,
                decided => break decided,
            }
        };
        tracing::info!(pipeline = %lane.pipeline, environment = %lane.environment, "The held job is parked, or its lane is not held any more.");
        let permit = tokio::select! {
            _ = hard_stop.cancelled() => None,
            permit = permits.clone().acquire_owned() => permit.ok(),
        };
        (permit, parking)
    }

    /// Before a serial lane's job starts: waits while another job of its lane has an
    /// execution that runs (the journal says it started; the executor that it has not
    /// ended). The queue's ordering group keeps a lane to one job at a time; this keeps
    /// it so should a queue hand a group to two workers at once. An execution found
    /// ended is recorded so. `false` when the worker is stopping first.
    pub(super) async fn wait_for_lane(
        &self,
        request: &ExecutionRequest,
        hard_stop: &CancellationToken,
    ) -> bool {
        let Some(lanes) = self.lanes().filter(|_| request.group.is_some()) else {
            return true;
        };
        let lane = Lane::of(request);
        let mut said = false;
        loop {
            let others: Vec<crate::journal::LaneJob> =
                match lanes.journal().lane_jobs(Some(&lane)).await {
                    Ok(jobs) => jobs
                        .into_iter()
                        .filter(|job| {
                            job.state == crate::journal::JobState::Started
                                && job.name != request.name.as_str()
                        })
                        .collect(),
                    // Not knowing must not keep a lane from deploying: the queue's group
                    // still holds it to one at a time.
                    Err(_) => return true,
                };
            let mut running = None;
            for other in others {
                let Ok(name) = crate::execution::name::ExecutionName::parse(&other.name) else {
                    continue;
                };
                match self.executor.describe(&other.lane.pipeline, &name).await {
                    Ok(execution) if execution.status.is_finished() => {
                        let _ = lanes
                            .journal()
                            .advance(
                                &other,
                                crate::journal::JobState::Ended,
                                Some(execution.status.as_str()),
                            )
                            .await;
                    }
                    Ok(execution)
                        if execution.status == crate::executor::ExecutionStatus::Interrupted => {}
                    Ok(_) => running = Some(other.name),
                    Err(_) => {}
                }
            }
            let Some(running) = running else {
                return true;
            };
            if !said {
                tracing::warn!(running = %running, "Another execution of the lane runs: this one waits for its end.");
                said = true;
            }
            tokio::select! {
                _ = hard_stop.cancelled() => return false,
                _ = tokio::time::sleep(self.settings.poll_interval.min(std::time::Duration::from_secs(5))) => {}
            }
        }
    }

    /// Whether a newer job of the request's lane carries it (see `crate::lanes`): then
    /// it is recorded superseded, counted and (with reporting on) shown pending until
    /// its carrier ends, and the caller acknowledges it.
    pub(super) async fn superseded(&self, request: &ExecutionRequest) -> bool {
        let Some(lanes) = self.lanes() else {
            return false;
        };
        let runtime = self.runtime.load_full();
        let rules = &runtime.lane_rules;
        let executor = self.executor.as_ref();
        let newer = match lanes.supersede(rules, request, executor).await {
            Some(newer) => {
                tracing::info!(superseded_by = %newer.name, "Superseded: a newer job of the lane deploys the same project from the same ref; it carries this one.");
                newer
            }
            None => match lanes.overtaken_replay(rules, request, executor).await {
                Some(newer) => {
                    tracing::info!(superseded_by = %newer.name, "A replay not run: a newer deploy of the same projects from the same ref ran since its original; the lane stays on it.");
                    newer
                }
                None => return false,
            },
        };
        self.metrics
            .superseded
            .get_or_create(&labels(&[("pipeline", &request.pipeline)]))
            .inc();
        if let Some(target) = request.report.as_ref().filter(|_| self.reports()) {
            self.queue_reports(vec![superseded(request, target, &newer)])
                .await;
        }
        true
    }

    /// Reports, for every job `request` carries (superseded by it, or by one it carries),
    /// how `request`'s execution ended; `ended` is `None` when it was never started
    /// (`reason` says why).
    pub(super) async fn report_carried(
        &self,
        request: &ExecutionRequest,
        ended: Result<&Execution, &str>,
        details_url: Option<String>,
    ) {
        let Some(lanes) = self.lanes().filter(|_| self.reports()) else {
            return;
        };
        let carried_jobs = match lanes
            .carried_by(&Lane::of(request), request.name.as_str())
            .await
        {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not read which jobs this execution carries; their commits show it pending.");
                return;
            }
        };
        let reports = carried_jobs
            .iter()
            .filter_map(|job| job.request())
            .filter_map(|carried_request| {
                let target = carried_request.report.as_ref()?;
                Some(carried(
                    &carried_request,
                    target,
                    &request.name,
                    ended,
                    details_url.clone(),
                ))
            })
            .collect();
        self.queue_reports(reports).await;
    }
}
