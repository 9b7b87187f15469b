//! What operators decide about lanes, as the worker honours it: a paused lane starts
//! nothing (its jobs are held, invisible, their receive counts untouched, and start in
//! order on resume), and with `supersede = true` a serial lane's job is not started
//! when a newer job of the lane waits. The journal keeps both (`crate::journal`).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Worker;
use super::report::superseded;
use crate::error::Chain;
use crate::execution::ExecutionRequest;
use crate::job::{Job, JobKind, Read};
use crate::journal::{JobState, Journal, Lane, LaneJob, newer_waiting};
use crate::queue::Received;
use crate::telemetry::labels;

/// How often the pauses are read again: a pause or a resume takes effect within this.
pub(super) const PAUSE_REFRESH: Duration = Duration::from_secs(1);

pub(super) struct Lanes {
    pub(super) journal: Arc<dyn Journal>,
    pub(super) supersede: Arc<RwLock<HashSet<String>>>,
    /// The lanes paused when last read, and when that was.
    paused: Mutex<(Option<Instant>, HashSet<Lane>)>,
}

impl Lanes {
    pub(super) fn new(journal: Arc<dyn Journal>, supersede: Arc<RwLock<HashSet<String>>>) -> Lanes {
        Lanes {
            journal,
            supersede,
            paused: Mutex::new((None, HashSet::new())),
        }
    }

    /// The lanes paused as of at most PAUSE_REFRESH ago. A journal that cannot be read
    /// keeps what was read last.
    async fn paused(&self) -> tokio::sync::MappedMutexGuard<'_, HashSet<Lane>> {
        let mut paused = self.paused.lock().await;
        if paused.0.is_none_or(|at| at.elapsed() >= PAUSE_REFRESH) {
            match self.journal.pauses().await {
                Ok(pauses) => {
                    paused.1 = pauses.into_iter().map(|pause| pause.lane).collect();
                }
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), "Could not read the paused lanes; keeping what was read last.");
                }
            }
            paused.0 = Some(Instant::now());
        }
        tokio::sync::MutexGuard::map(paused, |paused| &mut paused.1)
    }
}

impl Worker {
    /// Lets the worker honour pauses and supersede, and keep each start job's state in
    /// the journal.
    pub fn journaling(
        mut self,
        journal: Option<Arc<dyn Journal>>,
        supersede: Arc<RwLock<HashSet<String>>>,
    ) -> Worker {
        self.lanes = journal.map(|journal| Arc::new(Lanes::new(journal, supersede)));
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

    /// Records where a start job is; a journal that cannot be written is logged.
    pub(super) async fn record(
        &self,
        request: &ExecutionRequest,
        state: JobState,
        status: Option<&str>,
    ) {
        let Some(lanes) = &self.lanes else { return };
        let job = LaneJob::queued(request, 0, None);
        if let Err(error) = lanes.journal.advance(&job, state, status).await {
            tracing::warn!(error = %Chain(&error), state = state.as_str(), "Could not record a job's state in the journal.");
        }
    }

    /// With `supersede = true` on the request's serial pipeline: the newer waiting job
    /// of its lane that supersedes it, if the journal knows one. Recorded, counted and
    /// (with reporting on) reported; the caller acknowledges the job.
    pub(super) async fn superseded_by(&self, request: &ExecutionRequest) -> Option<String> {
        let lanes = self.lanes.as_ref()?;
        request.group.as_ref()?;
        if !lanes
            .supersede
            .read()
            .expect("supersede lock")
            .contains(&request.pipeline)
        {
            return None;
        }
        let lookup = async {
            let me = lanes.journal.job(request.name.as_str()).await?;
            let Some(me) = me else { return Ok(None) };
            let jobs = lanes.journal.lane_jobs(Some(&me.lane)).await?;
            Ok::<_, crate::journal::JournalError>(
                newer_waiting(&me, &jobs).map(|newer| (newer.name.clone(), newer.commit.clone())),
            )
        };
        let (newer, commit) = match lookup.await {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(error) => {
                // Not knowing what waits must never keep a commit from deploying.
                tracing::warn!(error = %Chain(&error), "Could not read the lane's waiting jobs; starting this one.");
                return None;
            }
        };
        tracing::info!(superseded_by = %newer, "Superseded: a newer job of the lane waits; only the newest starts.");
        self.record(request, JobState::Superseded, Some(&newer))
            .await;
        self.metrics
            .superseded
            .get_or_create(&labels(&[("pipeline", &request.pipeline)]))
            .inc();
        if let Some(target) = request.report.as_ref().filter(|_| self.reports()) {
            self.queue_reports(vec![superseded(request, target, &commit)])
                .await;
        }
        Some(newer)
    }
}
