//! Executions: the request the planner produces and the worker hands to an executor,
//! with its parts (name, input, action, origin). A module of its own, below `plan`,
//! `job`, `worker` and `executor`, which all speak of it.

pub mod name;
pub mod report;

use sha2::{Digest, Sha256};

use crate::event::{CommitSha, DeliveryId, Occurrence, RefName, Source};
use name::ExecutionName;

/// Step Functions refuses larger inputs (bytes of UTF-8); the planner refuses to plan
/// them and executors check again.
pub const MAX_INPUT_BYTES: usize = 262_144;

/// What an execution does to its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Deploy,
    Teardown,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Teardown => "teardown",
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "deploy" => Some(Action::Deploy),
            "teardown" => Some(Action::Teardown),
            _ => None,
        }
    }
}

/// Where an execution request came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub source: Source,
    pub delivery: DeliveryId,
    pub repository: String,
    pub git_ref: RefName,
    pub commit: CommitSha,
}

/// Rendered execution input: JSON text, kept byte for byte as rendered, because Step
/// Functions compares inputs as strings, and queue messages carry it as a JSON string
/// (not embedded), so that no decoder re-renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input(String);

impl Input {
    /// Input as the planner rendered it; `None` when `text` is not JSON.
    pub fn from_json(text: String) -> Option<Input> {
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .is_ok()
            .then_some(Input(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One execution to start: what the planner produces, the queue carries (in the job's
/// own wire form) and the worker hands to an executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionRequest {
    pub pipeline: String,
    pub name: ExecutionName,
    /// Requests of one group run one at a time in order (`serial` pipelines).
    pub group: Option<String>,
    pub environment: String,
    pub action: Action,
    pub input: Input,
    pub origin: Origin,
    /// Where its progress is reported back to its source, when reporting is on.
    pub report: Option<report::ReportTarget>,
}

/// A push whose commits must be fetched from its source before they can be planned:
/// what the planner gives when a route takes every commit of a push whose source told
/// only its old and new heads (CodeCommit). The worker fetches the commits and plans
/// the push again, commits listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expansion {
    pub source: Source,
    pub delivery: DeliveryId,
    pub occurrence: Occurrence,
    pub repository: String,
    pub git_ref: RefName,
    pub before: CommitSha,
    pub after: CommitSha,
    /// Whether the commits' changed paths are needed (a route or project filters by
    /// path); fetching them can cost a call per commit.
    pub paths: bool,
}

impl Expansion {
    /// One per occurrence: every delivery of a push expands it once.
    pub fn id(&self) -> String {
        let digest = hex::encode(Sha256::digest(self.occurrence.as_str().as_bytes()));
        format!("expand-{}", &digest[..40])
    }

    /// Expansions of one ref run in push order, so the starts they queue keep it.
    pub fn group(&self) -> String {
        format!("expand/{}/{}", self.repository, self.git_ref)
    }
}
