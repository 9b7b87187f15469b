//! What operators decide about lanes, as the worker honours it: a paused lane starts
//! nothing (its jobs are held, invisible, their receive counts untouched, and start in
//! order on resume), and with `supersede = true` a serial lane's job is not started
//! when `crate::lanes` says a newer one carries it. The states themselves are
//! `crate::lanes`'s to move.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::Worker;
use super::report::{carried, superseded};
use crate::admission::Admission;
use crate::error::Chain;
use crate::execution::ExecutionRequest;
use crate::executor::Execution;
use crate::job::{Job, JobKind, Read};
use crate::journal::Lane;
use crate::lanes::PAUSE_REFRESH;
use crate::queue::Received;
use crate::telemetry::labels;

impl Worker {
    /// Has the worker queue what it plans (`expand`, CodePipeline jobs) through the
    /// admission step, and keep, honour and report its lanes' states through that
    /// step's lanes.
    pub fn admitting(mut self, admission: Arc<Admission>) -> Worker {
        self.lanes = admission.lanes().cloned();
        self.admission = admission;
        self
    }

    /// The lane of a start job that is paused now, if `received` is one. With no lane
    /// paused (nearly always), the job is not read here.
    pub(super) async fn paused_lane(&self, received: &Received) -> Option<Lane> {
        let paused = self.lanes.as_ref()?.paused().await;
        if paused.is_empty() {
            return None;
        }
        let Read::Job(job) = Job::read(&received.message.body) else {
            return None;
        };
        let JobKind::Start { request } = job.kind else {
            return None;
        };
        let lane = Lane::of(&request);
        paused.contains(&lane).then_some(lane)
    }

    /// Holds a paused lane's job until its lane is resumed: invisible (the chain's
    /// heartbeat keeps it so, and its receive count does not grow) and without a
    /// permit, so that other lanes go on. The permit to go on with, once resumed;
    /// `None` when the worker is stopping first.
    pub(super) async fn hold_while_paused(
        &self,
        lane: &Lane,
        received: &Received,
        permits: &Arc<Semaphore>,
        hard_stop: &CancellationToken,
    ) -> Option<OwnedSemaphorePermit> {
        tracing::info!(pipeline = %lane.pipeline, environment = %lane.environment, job = %received.message.id, "Holding a job of a paused lane.");
        loop {
            tokio::select! {
                _ = hard_stop.cancelled() => return None,
                _ = tokio::time::sleep(PAUSE_REFRESH) => {}
            }
            if self.paused_lane(received).await.is_none() {
                break;
            }
        }
        tracing::info!(pipeline = %lane.pipeline, environment = %lane.environment, "The lane was resumed.");
        tokio::select! {
            _ = hard_stop.cancelled() => None,
            permit = permits.clone().acquire_owned() => permit.ok(),
        }
    }

    /// Whether a newer job of the request's lane carries it (see `crate::lanes`): then
    /// it is recorded superseded, counted and (with reporting on) shown pending until
    /// its carrier ends, and the caller acknowledges it.
    pub(super) async fn superseded(&self, request: &ExecutionRequest) -> bool {
        let Some(lanes) = &self.lanes else {
            return false;
        };
        let Some(newer) = lanes.supersede(request, self.executor.as_ref()).await else {
            return false;
        };
        tracing::info!(superseded_by = %newer.name, "Superseded: a newer job of the lane deploys the same project from the same ref; it carries this one.");
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
        let Some(lanes) = self.lanes.as_ref().filter(|_| self.reports()) else {
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
