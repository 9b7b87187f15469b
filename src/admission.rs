//! The admission step: how every planned start gets on the queue. Deliveries of every
//! source, the trigger API, replays, `expand` jobs, CodePipeline jobs and reconcile all
//! hand their planned requests here; their own code only authenticates, decodes, plans
//! and answers.
//!
//! One sequence, in one place: claim the requests' commits in the ledger (for a
//! claimant: deliveries and reconcile), queue the starts with the jobs that go with
//! them in one send, record each start waiting in its lane (with the delivery, in one
//! write), advance the ledger's heads. Anything that fails after the claims gives them
//! back.
//!
//! Invariant: claims are given back whenever their jobs were not queued, also when
//! the caller stops waiting (a request that timed out, a task cancelled): the sequence
//! runs as a task of its own that its caller only waits for, so a caller that goes
//! away cannot cut it between the send and its outcome; and the claims are held by a
//! guard that gives them back if the task itself dies.

use std::sync::Arc;

use tracing::Instrument;

use crate::error::Chain;
use crate::event::{CommitSha, RefName};
use crate::execution::ExecutionRequest;
use crate::execution::name::ExecutionName;
use crate::execution::report::{Report, Unpark};
use crate::job::{Job, JobKind};
use crate::journal::{DeliveryRecord, FENCE_STALE, HoldEnd, Lane};
use crate::lanes::{Lanes, RELEASE_BATCH, waiting};
use crate::ledger::{Claim, Claimant, Ledger, LedgerError, claims_of};
use crate::queue::{Message, Queue, QueueError, enqueue};
use crate::telemetry::{Metrics, labels};

/// Why planned work was not admitted; nothing of it is on the queue, no claim held.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("could not queue the jobs: {0}")]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The admission's task died (a panic): nothing is known to be queued.
    #[error("the admission of the jobs failed: {0}")]
    Failed(String),
}

/// The last commit planned for a ref, to record once its starts are queued.
#[derive(Debug, Clone)]
pub struct Head {
    pub repository: String,
    pub git_ref: RefName,
    pub commit: CommitSha,
}

/// What a producer hands to the admission step.
#[derive(Debug, Default)]
pub struct Intake {
    /// The starts, in queue order, each with the execution it replays, if it is a
    /// replay.
    starts: Vec<(ExecutionRequest, Option<String>)>,
    /// Jobs queued with the starts, after them (expansions, CodePipeline follows).
    jobs: Vec<Job>,
    /// What reporting shows at once (queued, skipped); those about a start that is not
    /// admitted are dropped.
    reports: Vec<Report>,
    /// Who claims the starts' commits in the ledger, if anyone does.
    claimant: Option<Claimant>,
    heads: Vec<Head>,
    /// The delivery the jobs came in, recorded with them.
    delivery: Option<DeliveryRecord>,
    /// Why nothing was planned, said when nothing is queued.
    nothing_because: Option<String>,
}

impl Intake {
    /// Starts claimed by `claimant` (deliveries and reconcile), or by nobody.
    pub fn new(claimant: Option<Claimant>) -> Intake {
        Intake {
            claimant,
            ..Intake::default()
        }
    }

    pub fn starts(mut self, requests: impl IntoIterator<Item = ExecutionRequest>) -> Intake {
        self.starts
            .extend(requests.into_iter().map(|request| (request, None)));
        self
    }

    /// Replays: new runs of executions that ran, each named with its original.
    pub fn replays(
        mut self,
        requests: impl IntoIterator<Item = (ExecutionRequest, String)>,
    ) -> Intake {
        self.starts.extend(
            requests
                .into_iter()
                .map(|(request, original)| (request, Some(original))),
        );
        self
    }

    pub fn jobs(mut self, jobs: impl IntoIterator<Item = Job>) -> Intake {
        self.jobs.extend(jobs);
        self
    }

    pub fn reports(mut self, reports: impl IntoIterator<Item = Report>) -> Intake {
        self.reports.extend(reports);
        self
    }

    pub fn heads(mut self, heads: impl IntoIterator<Item = Head>) -> Intake {
        self.heads.extend(heads);
        self
    }

    /// The delivery to record with the jobs; its status is filled in as admitted.
    pub fn delivery(mut self, record: DeliveryRecord, nothing_because: String) -> Intake {
        self.delivery = Some(record);
        self.nothing_because = Some(nothing_because);
        self
    }

    /// Whether there is nothing to queue at all.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty() && self.jobs.is_empty() && self.reports.is_empty()
    }
}

/// What was admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The starts queued, in order.
    pub queued: Vec<ExecutionName>,
    /// Expansions queued (commits to fetch and plan).
    pub expansions: usize,
    /// Starts not queued: the other claimant planned their commits already.
    pub refused: Vec<ExecutionName>,
    /// Why nothing was queued, when nothing was.
    pub nothing_because: Option<String>,
}

impl Admitted {
    /// Whether any execution will come of it.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.expansions == 0
    }
}

/// The admission step, shared by every producer of a process.
pub struct Admission {
    queue: Arc<dyn Queue>,
    /// With reconcile or the API on: who planned which commit.
    ledger: Option<Arc<dyn Ledger>>,
    /// Where a start's state is kept; `None` keeps no record.
    lanes: Option<Arc<Lanes>>,
    metrics: Arc<Metrics>,
}

impl Admission {
    pub fn new(
        queue: Arc<dyn Queue>,
        ledger: Option<Arc<dyn Ledger>>,
        lanes: Option<Arc<Lanes>>,
        metrics: Arc<Metrics>,
    ) -> Admission {
        Admission {
            queue,
            ledger,
            lanes,
            metrics,
        }
    }

    pub fn lanes(&self) -> Option<&Arc<Lanes>> {
        self.lanes.as_ref()
    }

    pub fn ledger(&self) -> Option<&Arc<dyn Ledger>> {
        self.ledger.as_ref()
    }

    /// Admits what `intake` holds; returns once it is durable on the queue, or nothing
    /// of it is and no claim is held.
    pub async fn admit(self: &Arc<Self>, intake: Intake) -> Result<Admitted, AdmissionError> {
        let admission = self.clone();
        // A task of its own: a caller that stops waiting does not cut the sequence. It
        // logs in its caller's span (the delivery's, the job's).
        let span = tracing::Span::current();
        tokio::spawn(async move { admission.run(intake).await }.instrument(span))
            .await
            .unwrap_or_else(|error| Err(AdmissionError::Failed(error.to_string())))
    }

    /// Records a delivery that was refused before anything was admitted.
    pub async fn refused(&self, record: &DeliveryRecord) {
        if let Some(lanes) = &self.lanes
            && let Err(error) = lanes.admitted(Some(record), &[]).await
        {
            tracing::warn!(error = %Chain(&error), "Could not record the delivery in the journal.");
        }
    }

    async fn run(&self, intake: Intake) -> Result<Admitted, AdmissionError> {
        let Intake {
            mut starts,
            jobs,
            mut reports,
            claimant,
            heads,
            mut delivery,
            nothing_because,
        } = intake;
        let mut held = Held::none();
        let mut refused = Vec::new();
        if let (Some(ledger), Some(by)) = (&self.ledger, claimant) {
            let requests: Vec<ExecutionRequest> = starts
                .iter()
                .filter(|(_, replay_of)| replay_of.is_none())
                .map(|(request, _)| request.clone())
                .collect();
            let claims = claims_of(&requests);
            if !claims.is_empty() {
                let allowed = ledger.claim(&claims, by).await?;
                let mut made = Vec::new();
                for (claim, allowed) in claims.into_iter().zip(allowed) {
                    if allowed {
                        made.push(claim);
                    } else {
                        let other = match by {
                            Claimant::Delivery => "Reconcile",
                            Claimant::Reconcile => "A delivery",
                        };
                        tracing::info!(execution = %claim.name, "{other} planned this commit already; it is not planned again.");
                        refused.push(claim.name);
                    }
                }
                held = Held::new(ledger.clone(), made, by);
                starts.retain(|(request, _)| !refused.contains(&request.name));
                reports.retain(|report| {
                    report
                        .execution
                        .as_ref()
                        .is_none_or(|name| !refused.contains(name))
                });
            }
        }
        let expansions = jobs
            .iter()
            .filter(|job| matches!(job.kind, JobKind::Expand { .. }))
            .count();
        let queued: Vec<ExecutionName> = starts
            .iter()
            .map(|(request, _)| request.name.clone())
            .collect();
        let lane_jobs = if self.lanes.is_some() {
            waiting(&starts)
        } else {
            Vec::new()
        };
        let sending: Vec<Job> = starts
            .iter()
            .map(|(request, _)| Job::start(request.clone()))
            .chain(jobs)
            .chain(reports.into_iter().map(Job::report))
            .collect();
        if !sending.is_empty()
            && let Err(error) = enqueue(self.queue.as_ref(), &sending).await
        {
            // Nothing of it may stand in anyone's way if it is never sent again.
            held.give_back().await;
            return Err(error.into());
        }
        held.keep();
        let admitted = Admitted {
            nothing_because: (queued.is_empty() && expansions == 0).then(|| {
                if refused.is_empty() {
                    nothing_because.unwrap_or_default()
                } else {
                    format!(
                        "reconcile planned these commits already ({} executions)",
                        refused.len()
                    )
                }
            }),
            queued,
            expansions,
            refused,
        };
        if let Some(record) = &mut delivery {
            record.executions = admitted.queued.iter().map(ToString::to_string).collect();
            (record.status, record.outcome, record.reason) = if admitted.is_empty() {
                (
                    200,
                    "no_executions".into(),
                    admitted.nothing_because.clone(),
                )
            } else {
                (202, "queued".into(), None)
            };
        }
        if let Some(lanes) = &self.lanes
            && let Err(error) = lanes.admitted(delivery.as_ref(), &lane_jobs).await
        {
            tracing::warn!(error = %Chain(&error), "Could not record the queued jobs in the journal.");
        }
        if let Some(ledger) = &self.ledger {
            for head in &heads {
                if let Err(error) = ledger
                    .advance(&head.repository, head.git_ref.as_str(), &head.commit)
                    .await
                {
                    tracing::warn!(error = %Chain(&error), "Could not record the last commit planned for a ref; reconcile may look at it again.");
                }
            }
        }
        for (request, _) in &starts {
            tracing::info!(
                execution = %request.name,
                pipeline = %request.pipeline,
                environment = %request.environment,
                commit = %request.origin.commit,
                "Queued an execution."
            );
            self.metrics
                .executions_planned
                .get_or_create(&labels(&[("pipeline", &request.pipeline)]))
                .inc();
        }
        Ok(admitted)
    }
}

impl Admission {
    /// Ends a lane's hold once nothing holds it (what resume and the end of a long
    /// execution call): its parked jobs go back on the queue in queue order. A serial
    /// lane's are put back by a chain of `unpark` rounds sent into its ordering group,
    /// behind every job of the lane already on the queue (see [`Unpark`]): put back at
    /// once, they would land behind jobs queued after them and not yet received. Another
    /// lane's are put back at once. How many were parked. A chain already at it is left
    /// to it, unless it has been quiet for [`FENCE_STALE`] (its round was lost).
    pub async fn release(&self, lane: &Lane) -> Result<usize, AdmissionError> {
        let Some(lanes) = &self.lanes else {
            return Ok(0);
        };
        let journal = lanes.journal();
        let Some(hold) = journal.hold(lane).await? else {
            return Ok(0);
        };
        if hold.holds() {
            return Ok(0);
        }
        let stale_before = crate::clock::now_ms() - FENCE_STALE.as_millis() as i64;
        if hold.fence.is_some() && hold.fence_at_ms >= stale_before {
            return Ok(hold.parked as usize);
        }
        let first = journal.parked(lane, 1).await?;
        let group = first
            .first()
            .and_then(|job| job.request())
            .and_then(|request| request.group);
        let Some(group) = group else {
            // Nothing parked, or a lane whose jobs run in any order: put back at once.
            let mut released = 0;
            for _ in 0..10 {
                released += self.put_back(lane).await?;
                match journal.end_hold(lane, hold.fence.as_deref()).await? {
                    HoldEnd::Parked => continue,
                    HoldEnd::Ended | HoldEnd::Held | HoldEnd::Fenced => break,
                }
            }
            return Ok(released);
        };
        let fence = uuid::Uuid::new_v4().to_string();
        if !journal.fence(lane, &fence, stale_before).await? {
            // Held again, or another chain began meanwhile.
            return Ok(hold.parked as usize);
        }
        let unpark = Unpark {
            pipeline: lane.pipeline.clone(),
            environment: lane.environment.clone(),
            group,
            fence,
            round: 0,
        };
        enqueue(self.queue.as_ref(), &[Job::unpark(unpark)]).await?;
        tracing::info!(pipeline = %lane.pipeline, environment = %lane.environment, parked = hold.parked, "The lane's hold ended: its parked jobs go back on the queue behind its queued ones.");
        Ok(hold.parked as usize)
    }

    /// Puts a lane's parked jobs back on the queue, in queue order, a batch at a time,
    /// until none is parked; how many it put back. Each batch is noted as being put back
    /// before it is sent (a copy received meanwhile runs rather than being parked again)
    /// and unparked after (a crash in between sends it again: the names start nothing
    /// twice). Stops, the rest parked, when the lane is held again.
    pub async fn put_back(&self, lane: &Lane) -> Result<usize, AdmissionError> {
        let Some(lanes) = &self.lanes else {
            return Ok(0);
        };
        let journal = lanes.journal();
        let mut released = 0;
        // A bound, so that a journal that contradicts itself cannot spin this for ever.
        for _ in 0..(crate::journal::MAX_PARKED as usize / RELEASE_BATCH + 10) {
            let mut parked = journal.parked(lane, RELEASE_BATCH).await?;
            if parked.is_empty() {
                return Ok(released);
            }
            if journal.hold(lane).await?.is_some_and(|hold| hold.holds()) {
                return Ok(released);
            }
            let round = crate::clock::now_ms();
            for job in &mut parked {
                job.released_at_ms = Some(round);
            }
            journal.releasing(lane, &parked).await?;
            let messages: Vec<Message> = parked
                .iter()
                .filter_map(|job| match Job::read(&job.job) {
                    crate::job::Read::Job(read) => {
                        let mut message = Message::from_job(&read);
                        // A deduplication id of its own: SQS FIFO drops an id sent
                        // again within five minutes of its first send.
                        message.id = format!("{}-u{round}", message.id);
                        Some(message)
                    }
                    _ => {
                        tracing::error!(job = %job.name, "A parked job cannot be read back: it is not put back.");
                        None
                    }
                })
                .collect();
            self.queue.send(&messages).await?;
            journal.unparked(lane, &parked).await?;
            released += parked.len();
            tracing::info!(pipeline = %lane.pipeline, environment = %lane.environment, jobs = parked.len(), "Put parked jobs back on the queue, in order.");
        }
        Err(AdmissionError::Failed(format!(
            "the parked jobs of {}/{} could not all be put back",
            lane.pipeline, lane.environment
        )))
    }
}

/// Claims made and not yet known to be queued: given back unless kept, also when the
/// task holding them dies.
struct Held {
    ledger: Option<Arc<dyn Ledger>>,
    claims: Vec<Claim>,
    by: Claimant,
}

impl Held {
    fn none() -> Held {
        Held {
            ledger: None,
            claims: Vec::new(),
            by: Claimant::Delivery,
        }
    }

    fn new(ledger: Arc<dyn Ledger>, claims: Vec<Claim>, by: Claimant) -> Held {
        Held {
            ledger: Some(ledger),
            claims,
            by,
        }
    }

    /// Their jobs are queued: the claims stand.
    fn keep(&mut self) {
        self.claims.clear();
    }

    async fn give_back(&mut self) {
        let claims = std::mem::take(&mut self.claims);
        if let Some(ledger) = &self.ledger {
            release(ledger.as_ref(), &claims, self.by).await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let claims = std::mem::take(&mut self.claims);
        let Some(ledger) = self.ledger.take() else {
            return;
        };
        if claims.is_empty() {
            return;
        }
        let by = self.by;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { release(ledger.as_ref(), &claims, by).await });
            }
            Err(_) => tracing::warn!(
                claims = claims.len(),
                "Could not give back the claims of jobs that were not queued: no runtime is left."
            ),
        }
    }
}

async fn release(ledger: &dyn Ledger, claims: &[Claim], by: Claimant) {
    if claims.is_empty() {
        return;
    }
    if let Err(error) = ledger.release(claims, by).await {
        tracing::warn!(error = %Chain(&error), claims = claims.len(), "Could not give back the claims of jobs that were not queued.");
    }
}
