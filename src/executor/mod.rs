//! What runs a pipeline. The [`Executor`] trait has Step Functions semantics: a start
//! is idempotent by execution name, and an execution is described by its status.

pub mod local;
pub mod stepfunctions;

use async_trait::async_trait;

use crate::plan::ExecutionRequest;
use crate::plan::name::ExecutionName;

/// Where an execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionStatus {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Aborted,
}

impl ExecutionStatus {
    pub fn is_finished(self) -> bool {
        self != ExecutionStatus::Running
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Running => "running",
            ExecutionStatus::Succeeded => "succeeded",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::TimedOut => "timed_out",
            ExecutionStatus::Aborted => "aborted",
        }
    }
}

/// An execution as the executor describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// The executor's id for it (an ARN, or the name for the local executor).
    pub id: String,
    pub status: ExecutionStatus,
    /// Output on success, the error or cause otherwise, when there is one.
    pub detail: Option<String>,
}

/// The outcome of a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// A new execution, with its id.
    New(String),
    /// An execution of this name and input existed already (a repeated job).
    Existing(String),
}

impl Started {
    pub fn id(&self) -> &str {
        match self {
            Started::New(id) | Started::Existing(id) => id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutorError {
    /// Throttling, a timeout, a 5xx: try again later.
    #[error("{0}")]
    Retryable(String),
    /// Trying again cannot help (no such pipeline, invalid input, a name taken by
    /// another input).
    #[error("{0}")]
    Permanent(String),
}

#[async_trait]
pub trait Executor: Send + Sync {
    /// Starts an execution; starting a name that exists with the same input returns the
    /// existing one.
    async fn start(&self, request: &ExecutionRequest) -> Result<Started, ExecutorError>;

    async fn describe(
        &self,
        pipeline: &str,
        name: &ExecutionName,
    ) -> Result<Execution, ExecutorError>;
}
