//! Queue messages. Versioned and tagged (`{"v": 1, "type": "start", ...}`) so that a
//! message written by one release is still read by the next.

use serde::{Deserialize, Serialize};

use crate::plan::ExecutionRequest;

/// The message version this release writes.
pub const CURRENT_VERSION: u32 = 1;

/// One queue message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub v: u32,
    #[serde(flatten)]
    pub kind: JobKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobKind {
    /// Start one execution.
    Start { request: ExecutionRequest },
}

impl Job {
    pub fn start(request: ExecutionRequest) -> Job {
        Job {
            v: CURRENT_VERSION,
            kind: JobKind::Start { request },
        }
    }

    /// The id the queue deduplicates on: the execution name, which is already a
    /// deterministic function of everything that makes the job distinct.
    pub fn id(&self) -> &str {
        match &self.kind {
            JobKind::Start { request } => request.name.as_str(),
        }
    }

    /// Jobs of one group run one at a time, in the order they were sent.
    pub fn group(&self) -> Option<&str> {
        match &self.kind {
            JobKind::Start { request } => request.group.as_deref(),
        }
    }
}
