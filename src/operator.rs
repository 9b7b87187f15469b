//! The operator API's answers, as types: what the console's routes send, the page shows
//! and the command line reads. One definition of each shape, so that a field renamed
//! on one side cannot be read as missing on the other.

use serde::{Deserialize, Serialize};

use crate::journal::{DeliveryRecord, LaneJob};

/// Any refusal of the API: a one-line reason (the status says the rest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub error: String,
}

/// `GET /v1/deliveries`, `GET /v1/deliveries/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliveries {
    pub deliveries: Vec<DeliveryRecord>,
}

/// `GET /v1/lanes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lanes {
    pub lanes: Vec<LaneView>,
}

/// What a lane is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LaneState {
    /// It starts its jobs.
    Running,
    /// An operator paused it: it starts nothing.
    Paused,
    /// An execution longer than its job may be held runs: its next jobs are parked.
    Busy,
    /// Its parked jobs are going back on the queue.
    Releasing,
}

impl LaneState {
    pub fn as_str(self) -> &'static str {
        match self {
            LaneState::Running => "running",
            LaneState::Paused => "paused",
            LaneState::Busy => "busy",
            LaneState::Releasing => "releasing",
        }
    }
}

/// One lane (pipeline and environment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaneView {
    pub pipeline: String,
    pub environment: String,
    pub state: LaneState,
    pub paused: Option<PauseView>,
    /// The long execution that holds it.
    pub busy: Option<String>,
    /// The executions running.
    pub running: Vec<String>,
    pub waiting: Waiting,
    pub superseded: usize,
    /// Dead-lettered instead of started.
    pub rejected: usize,
    /// Its latest jobs, newest first.
    pub recent: Vec<LaneJob>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseView {
    pub reason: String,
    pub at_ms: i64,
}

/// What waits in a lane.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Waiting {
    pub count: usize,
    /// Of those, parked in the journal.
    pub parked: usize,
    pub oldest: Option<JobRef>,
    pub newest: Option<JobRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    pub name: String,
    pub commit: String,
}

/// `POST /v1/lanes/{pipeline}/{environment}/pause` and `…/resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneChanged {
    pub pipeline: String,
    pub environment: String,
    pub state: LaneState,
    /// A pause's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A resume: whether the lane was paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub was_paused: Option<bool>,
    /// A resume: how many parked jobs go back on the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<usize>,
}

/// `POST /v1/replays`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replays {
    pub dry_run: bool,
    pub replays: Vec<Replayed>,
    /// Deploys not replayed: a newer deploy of the same projects and ref carries them.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replayed {
    /// The execution first run.
    pub original: String,
    /// The run replayed (the original, or a replay of it).
    pub replays: String,
    /// The replay's own name.
    pub name: String,
    /// Its number among the original's replays.
    pub replay: u32,
    pub commit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub original: String,
    pub commit: String,
    pub deployed_since_by: String,
}

/// `GET /v1/queue`: the queue's kind, depth and dead letters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueView {
    /// `embedded` or `sqs`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// An SQS queue's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub depth: Option<DepthView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_receives: Option<u32>,
    /// The embedded queue's dead letters (SQS's are listed in its console).
    pub dead_letters: Vec<DeadLetterView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepthView {
    pub visible: u64,
    pub in_flight: u64,
    pub dead: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterView {
    pub seq: i64,
    pub id: String,
    pub reason: String,
    pub receive_count: u32,
    pub dead_at_ms: i64,
}

/// `POST /v1/dead-letters/redrive`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redriven {
    pub redriven: usize,
}

/// `POST /v1/executions`: a run queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// The `Idempotency-Key`, or an id of its own.
    pub delivery: String,
    pub status: String,
    pub execution: String,
    pub executions: Vec<String>,
}

/// `GET /v1/executions/{name}`: how an execution is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionView {
    pub name: String,
    pub pipeline: String,
    /// The executor's id of it (a Step Functions execution's ARN).
    pub id: String,
    pub status: String,
    pub finished: bool,
    pub detail: Option<String>,
}

/// `POST /v1/reload`: what became of the reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    pub status: String,
}
