//! The journal: what operators look at and steer, shared by every listener and worker.
//! The deliveries received (with what was planned for them and why), each lane's jobs
//! from queued to started, ended or superseded, and the lanes paused. A SQLite file on
//! one machine (`sqlite.rs`), items of the `[ledger]` DynamoDB table on AWS
//! (`dynamodb.rs`), with the ledger's store: one place to look for what every instance
//! shares.
//!
//! The journal is a record, not a promise: the queue keeps the jobs. A journal that
//! cannot be written costs its views and supersede (a job whose newer ones are not on
//! record is started), never a delivery or a start; a paused lane is the one thing it
//! decides, and its pauses are read again every few seconds.

pub mod deferred;
pub mod dynamodb;
pub mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::BoxError;
use crate::execution::ExecutionRequest;

/// `[history]`: how long, and how many, deliveries and lane jobs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub keep_secs: i64,
    pub keep_count: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_secs: 7 * 24 * 3600,
            keep_count: 10_000,
        }
    }
}

/// One delivery as it was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// `github`, `codecommit`, `manual`.
    pub source: String,
    pub id: String,
    /// The provider's event name (`push`, `pull_request`, ...).
    pub event: String,
    pub repository: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The HTTP status answered, and the answer's `status`.
    pub status: u16,
    pub outcome: String,
    pub reason: Option<String>,
    /// The execution names planned.
    pub executions: Vec<String>,
    /// What `plan --explain` says, route by route.
    pub explanation: Vec<String>,
    pub received_at_ms: i64,
}

impl DeliveryRecord {
    /// The record of a delivery just received, of its first event (a CodeCommit
    /// notification may carry several, of one repository): what it was planned into
    /// and answered is filled in as it is.
    pub fn received(delivery: &str, event: Option<&crate::event::Event>) -> DeliveryRecord {
        use crate::event::EventKind;
        DeliveryRecord {
            source: event
                .map_or("github", |event| event.source.as_str())
                .to_string(),
            id: delivery.to_string(),
            event: event
                .map(|event| event.kind.name().to_string())
                .unwrap_or_default(),
            repository: event
                .map(|event| event.repository.clone())
                .unwrap_or_default(),
            git_ref: match event.map(|event| &event.kind) {
                Some(EventKind::Push(push)) => push.git_ref.as_str().to_string(),
                Some(EventKind::PullRequest(pull_request)) => {
                    pull_request.head_ref.as_str().to_string()
                }
                Some(EventKind::Manual(_)) | None => String::new(),
            },
            status: 0,
            outcome: String::new(),
            reason: None,
            executions: Vec::new(),
            explanation: Vec::new(),
            received_at_ms: now_ms(),
        }
    }
}

/// A lane: a pipeline and an environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Lane {
    pub pipeline: String,
    pub environment: String,
}

impl Lane {
    pub fn of(request: &ExecutionRequest) -> Lane {
        Lane {
            pipeline: request.pipeline.clone(),
            environment: request.environment.clone(),
        }
    }
}

/// A paused lane: starts nothing until resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    #[serde(flatten)]
    pub lane: Lane,
    pub reason: String,
    pub at_ms: i64,
}

/// A held lane: paused by an operator, or busy with an execution that ran longer than
/// a queue may hold its job, or both. Its start jobs received meanwhile are parked in
/// the journal (acknowledged off the queue), and put back on the queue, in queue order,
/// when nothing holds it any more: a hold may last any time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    #[serde(flatten)]
    pub lane: Lane,
    /// An operator's pause, while there is one.
    pub pause: Option<Pause>,
    /// The execution that holds the lane, while it runs.
    pub busy: Option<String>,
    /// How many jobs are parked.
    pub parked: u64,
    /// When the hold began: a job put back since is not parked again by it.
    pub since_ms: i64,
    /// The chain of `unpark` rounds putting a serial lane's parked jobs back, once
    /// nothing holds it: only that chain's rounds act, and only that chain ends the
    /// hold. `None` until the hold ends (or when a pause or a long execution holds the
    /// lane again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<String>,
    /// When that chain last went on (milliseconds since the epoch): a chain quiet for
    /// [`FENCE_STALE`] may be replaced by a new one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fence_at_ms: i64,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// How long a chain of `unpark` rounds may be quiet before a resume starts another
/// (its round was lost: a send that failed, a message dead-lettered).
pub const FENCE_STALE: std::time::Duration = std::time::Duration::from_secs(600);

impl Hold {
    /// Whether the lane starts nothing now.
    pub fn holds(&self) -> bool {
        self.pause.is_some() || self.busy.is_some()
    }

    /// Nothing holds the lane any more, but its parked jobs are still being put back
    /// (a serial lane's jobs received meanwhile are parked behind them).
    pub fn releasing(&self) -> bool {
        !self.holds()
    }
}

/// What ending a hold found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// The lane is free (or was).
    Ended,
    /// Something still holds it (a pause, a long execution): its jobs stay parked.
    Held,
    /// Jobs are parked still: put them back first.
    Parked,
    /// Another chain of `unpark` rounds is putting the lane's jobs back: it ends the
    /// hold.
    Fenced,
}

/// The most jobs one lane parks; beyond it, a held lane's jobs wait on the queue.
pub const MAX_PARKED: u64 = 5000;

/// The `status` an earlier release wrote, with `ended`, for a job that was
/// dead-lettered instead of started: read as [`JobState::Rejected`].
const DEAD_LETTERED: &str = "dead_lettered";

/// Where a lane's job is. A job moves only forward: waiting → started → ended, or
/// from waiting to superseded or rejected; [`JobState::may_become`] is the rule, and
/// every store applies it (a late "waiting" after the worker's "started" changes
/// nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// On the queue, not started.
    Waiting,
    /// Its execution was started (and, for a serial lane, has not ended yet).
    Started,
    /// A serial lane's execution ended (`status` says how).
    Ended,
    /// Not started: a newer job of its lane deploys the same project from the same ref
    /// (`supersede = true`); `status` names the job that carries it.
    Superseded,
    /// Never started: its start could not succeed and was dead-lettered (`status` says
    /// why).
    Rejected,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Started => "started",
            JobState::Ended => "ended",
            JobState::Superseded => "superseded",
            JobState::Rejected => "rejected",
        }
    }

    /// The state a store holds, with the status it holds beside it (an earlier
    /// release kept a rejection as `ended` with the status `dead_lettered`).
    pub fn parse(value: &str, status: Option<&str>) -> Option<JobState> {
        Some(match value {
            "waiting" => JobState::Waiting,
            "started" => JobState::Started,
            "ended" if status == Some(DEAD_LETTERED) => JobState::Rejected,
            "ended" => JobState::Ended,
            "superseded" => JobState::Superseded,
            "rejected" => JobState::Rejected,
            _ => return None,
        })
    }

    /// Whether a job in this state may move to `next`: only forward, and an end is
    /// for good. A move to the state a job is in already keeps it (and takes a newer
    /// status).
    pub fn may_become(self, next: JobState) -> bool {
        use JobState::*;
        match (self, next) {
            (Waiting, _) => true,
            (Started, Started | Ended) => true,
            (Started, _) => false,
            (Ended | Superseded | Rejected, next) => next == self,
        }
    }

    /// Whether nothing more happens to the job.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Ended | JobState::Superseded | JobState::Rejected
        )
    }
}

/// One start job of a lane, as the journal knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaneJob {
    pub name: String,
    #[serde(flatten)]
    pub lane: Lane,
    /// Where the job came from (`github`, `codecommit`, `manual`); empty on a record
    /// of an earlier release.
    #[serde(default)]
    pub source: String,
    /// `deploy` or `teardown`.
    #[serde(default = "deploy")]
    pub action: String,
    pub repository: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit: String,
    /// Queue order within the lane: the time it was queued, in microseconds, plus
    /// its place in its delivery.
    pub seq: i64,
    pub state: JobState,
    /// How a serial execution ended; with `Superseded`, the execution that superseded it.
    pub status: Option<String>,
    pub queued_at_ms: i64,
    pub updated_at_ms: i64,
    /// The execution this one runs again (a replay).
    pub replay_of: Option<String>,
    /// Parked in the journal, off the queue, while its lane is held.
    #[serde(default)]
    pub parked: bool,
    /// When it was last put back on the queue from a hold.
    #[serde(default)]
    pub released_at_ms: Option<i64>,
    /// The start job as queued (its wire form), to run it again.
    #[serde(skip_serializing, default)]
    pub job: String,
}

fn deploy() -> String {
    "deploy".to_string()
}

impl LaneJob {
    /// The record of a job queued now, `index`th of its delivery.
    pub fn queued(request: &ExecutionRequest, index: usize, replay_of: Option<String>) -> LaneJob {
        let now = now_ms();
        LaneJob {
            name: request.name.as_str().to_string(),
            lane: Lane::of(request),
            source: request.origin.source.as_str().to_string(),
            action: request.action.as_str().to_string(),
            repository: request.origin.repository.clone(),
            git_ref: request.origin.git_ref.as_str().to_string(),
            commit: request.origin.commit.as_str().to_string(),
            seq: now * 1000 + index.min(999) as i64,
            state: JobState::Waiting,
            status: None,
            queued_at_ms: now,
            updated_at_ms: now,
            replay_of,
            parked: false,
            released_at_ms: None,
            job: crate::job::Job::start(request.clone()).to_body(),
        }
    }

    /// The record a worker makes of a job it received with no record (the admission
    /// step's was lost in a crash, or is late): its place in the lane is when the queue
    /// took it (`sent_at_ms`, when the queue says), not when the worker came to it, so
    /// that it is put back, and compared for supersede, before the jobs queued after it
    /// (whose records are at their admission, after this one's send). Jobs sent in one
    /// call share that time; among them, the one the worker came to later (in tenths of
    /// a second since the send, up to 99.9 s) is later, as the queue handed them out.
    pub fn received(request: &ExecutionRequest, sent_at_ms: Option<i64>) -> LaneJob {
        let mut job = LaneJob::queued(request, 0, None);
        if let Some(sent_at) = sent_at_ms {
            let since_send = ((job.queued_at_ms - sent_at) / 100).clamp(0, 999);
            job.seq = sent_at * 1000 + since_send;
            job.queued_at_ms = sent_at;
        }
        job
    }

    /// The job as a store gives it back: a rejection an earlier release kept as
    /// `ended` reads as rejected.
    pub(crate) fn read_back(mut self) -> LaneJob {
        if let Some(state) = JobState::parse(self.state.as_str(), self.status.as_deref()) {
            self.state = state;
        }
        self
    }

    /// The request as it was queued; `None` if this release cannot read it.
    pub fn request(&self) -> Option<ExecutionRequest> {
        match crate::job::Job::read(&self.job) {
            crate::job::Read::Job(job) => match job.kind {
                crate::job::JobKind::Start { request } => Some(request),
                _ => None,
            },
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the journal is unavailable: {message}")]
pub struct JournalError {
    pub message: String,
    #[source]
    pub source: Option<BoxError>,
}

impl JournalError {
    pub fn new(message: impl Into<String>, source: impl Into<BoxError>) -> JournalError {
        JournalError {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// A signed-in session of the page, as kept: under the digest of its id (the cookie
/// holds the id itself), for the token it was opened with (by digest: removing the
/// token ends it), with its CSRF token, until `expires_at` (seconds since the epoch).
/// Kept where every listener sees it, so that signing out ends it everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id_digest: String,
    pub token_digest: String,
    pub csrf: String,
    pub expires_at: i64,
}

/// Which deliveries to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    /// Compared whatever its case.
    pub repository: Option<String>,
    pub since_ms: Option<i64>,
    pub limit: usize,
}

#[async_trait]
pub trait Journal: Send + Sync {
    /// Records a delivery as answered and, as [`Journal::queued`] does, the jobs it
    /// queued: one write for both.
    async fn record_delivery(
        &self,
        delivery: &DeliveryRecord,
        queued: &[LaneJob],
    ) -> Result<(), JournalError>;

    /// Newest first.
    async fn deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliveryRecord>, JournalError>;

    /// Every delivery of that id (one per source, at most).
    async fn delivery(&self, id: &str) -> Result<Vec<DeliveryRecord>, JournalError>;

    /// Records jobs just queued: a job already on record (the worker was quicker, or a
    /// redelivery) keeps what it says.
    async fn queued(&self, jobs: &[LaneJob]) -> Result<(), JournalError>;

    /// Moves a job on to `state` (never back); a job not on record is recorded as given.
    async fn advance(
        &self,
        job: &LaneJob,
        state: JobState,
        status: Option<&str>,
    ) -> Result<(), JournalError>;

    /// Every lane job kept, of one lane or of all, without its `job` body (empty; read
    /// one job whole with [`Journal::job`]).
    async fn lane_jobs(&self, lane: Option<&Lane>) -> Result<Vec<LaneJob>, JournalError>;

    async fn job(&self, name: &str) -> Result<Option<LaneJob>, JournalError>;

    /// Pauses a lane (a hold, kept or begun). A hold that was only putting its jobs back
    /// begins again: the jobs put back so far are parked again as they come, and the
    /// chain putting them back stops.
    async fn pause(&self, lane: &Lane, reason: &str) -> Result<Pause, JournalError>;

    /// Ends a lane's pause; whether it was paused. Its hold ends when nothing else
    /// holds it and no job is parked ([`Journal::end_hold`]).
    async fn resume(&self, lane: &Lane) -> Result<bool, JournalError>;

    /// Marks a lane busy with `execution` (a hold, kept or begun, as a pause is).
    async fn occupy(&self, lane: &Lane, execution: &str) -> Result<(), JournalError>;

    /// The lane is not busy any more.
    async fn vacate(&self, lane: &Lane) -> Result<(), JournalError>;

    /// Every held lane.
    async fn holds(&self) -> Result<Vec<Hold>, JournalError>;

    /// One lane's hold, as it is now (read consistently).
    async fn hold(&self, lane: &Lane) -> Result<Option<Hold>, JournalError>;

    /// Parks a start job of a held lane: kept with its body, counted on the hold. Only
    /// while the lane is held (for an `ordered` job, a serial lane's, also while its
    /// parked jobs are being put back: it must not overtake them), and not a job put
    /// back since the hold began (which runs); `false` then, and when the lane has
    /// MAX_PARKED jobs parked already.
    async fn park(&self, job: &LaneJob, ordered: bool) -> Result<bool, JournalError>;

    /// Names the chain of `unpark` rounds that puts a serial lane's parked jobs back:
    /// only while nothing holds the lane, and only when no other chain has gone on
    /// since `stale_before_ms` (or it is this one, going on). Whether it is this one's.
    async fn fence(
        &self,
        lane: &Lane,
        fence: &str,
        stale_before_ms: i64,
    ) -> Result<bool, JournalError>;

    /// The lane's parked jobs, whole (with their bodies), in queue order, at most
    /// `limit`.
    async fn parked(&self, lane: &Lane, limit: usize) -> Result<Vec<LaneJob>, JournalError>;

    /// Notes that these parked jobs are being put back, at their `released_at_ms`
    /// (before they are sent: a copy received meanwhile runs instead of being parked
    /// again).
    async fn releasing(&self, lane: &Lane, jobs: &[LaneJob]) -> Result<(), JournalError>;

    /// These jobs are back on the queue: not parked any more.
    async fn unparked(&self, lane: &Lane, jobs: &[LaneJob]) -> Result<(), JournalError>;

    /// Ends the lane's hold if nothing holds it, nothing is parked, and no chain of
    /// `unpark` rounds but `fence`'s is putting its jobs back.
    async fn end_hold(&self, lane: &Lane, fence: Option<&str>) -> Result<HoldEnd, JournalError>;

    /// The paused lanes (a view of [`Journal::holds`]).
    async fn pauses(&self) -> Result<Vec<Pause>, JournalError> {
        Ok(self
            .holds()
            .await?
            .into_iter()
            .filter_map(|hold| hold.pause)
            .collect())
    }

    /// Forgets what is older than the retention, or beyond its count (and sessions
    /// that expired).
    async fn prune(&self, retention: Retention) -> Result<(), JournalError>;

    async fn open_session(&self, session: &SessionRecord) -> Result<(), JournalError>;

    /// The session kept under `id_digest`, unless it ended or expired.
    async fn session(&self, id_digest: &str) -> Result<Option<SessionRecord>, JournalError>;

    async fn end_session(&self, id_digest: &str) -> Result<(), JournalError>;

    /// Ends every session opened with a token whose digest is not in `token_digests`
    /// (the tokens configured now); how many. Run at start and on every reload, so that
    /// a token removed ends its sessions for good, even if it comes back later.
    async fn end_sessions_except(&self, token_digests: &[String]) -> Result<usize, JournalError>;
}

/// Merges a job's new state into what is on record: states only move forward.
pub(crate) fn merged(
    on_record: Option<LaneJob>,
    job: &LaneJob,
    state: JobState,
    status: Option<&str>,
) -> LaneJob {
    let now = now_ms();
    match on_record {
        Some(mut known) => {
            if known.state.may_become(state) {
                known.state = state;
                if status.is_some() {
                    known.status = status.map(str::to_string);
                }
                known.updated_at_ms = now;
            }
            known
        }
        None => {
            let mut job = job.clone();
            job.state = state;
            job.status = status.map(str::to_string);
            job.updated_at_ms = now;
            job
        }
    }
}

pub use crate::clock::now_ms;
