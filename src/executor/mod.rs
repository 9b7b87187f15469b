//! What runs a pipeline. The [`Executor`] trait has Step Functions semantics: a start
//! is idempotent by execution name, and an execution is described by its status.

pub mod local;
pub mod stepfunctions;

use crate::config::{Config, ExecutorConfig, Problem};
use crate::error::BoxError;

/// What the configured executor needs of the configuration.
pub fn check(config: &Config) -> Vec<Problem> {
    match &config.executor {
        ExecutorConfig::Local { .. } => local::check(config),
        ExecutorConfig::StepFunctions {} => stepfunctions::check(config),
    }
}

use async_trait::async_trait;

use crate::execution::ExecutionRequest;
use crate::execution::name::ExecutionName;

/// Where an execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionStatus {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Aborted,
    /// Stopped by our own shutdown or crash before it ended: not finished, and the next
    /// start of its name runs it again as a new attempt.
    Interrupted,
}

impl ExecutionStatus {
    /// Ended for good: nothing will run it again.
    pub fn is_finished(self) -> bool {
        !matches!(
            self,
            ExecutionStatus::Running | ExecutionStatus::Interrupted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Running => "running",
            ExecutionStatus::Succeeded => "succeeded",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::TimedOut => "timed_out",
            ExecutionStatus::Aborted => "aborted",
            ExecutionStatus::Interrupted => "interrupted",
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

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// Throttling, a timeout, a 5xx, a machine short of something: try again later.
    #[error("{message}")]
    Retryable {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Trying again cannot help (no such pipeline or state machine, an invalid input).
    #[error("{message}")]
    Permanent {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A describe found no execution of that name: none was started, or (Step
    /// Functions' reads being eventually consistent) one started a moment ago does not
    /// show yet.
    #[error("{message}")]
    NotFound { message: String },
}

impl ExecutorError {
    pub fn retryable(message: impl Into<String>) -> ExecutorError {
        ExecutorError::Retryable {
            message: message.into(),
            source: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> ExecutorError {
        ExecutorError::Permanent {
            message: message.into(),
            source: None,
        }
    }

    pub fn not_found(message: impl Into<String>) -> ExecutorError {
        ExecutorError::NotFound {
            message: message.into(),
        }
    }

    /// Retryable because of `source`, which the error keeps.
    pub fn retryable_from(
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> ExecutorError {
        ExecutorError::Retryable {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

#[async_trait]
pub trait Executor: Send + Sync {
    /// Starts an execution; starting a name that exists already returns the existing
    /// execution (the name is the idempotency key: every delivery of one event plans
    /// the same names). A name whose last run was interrupted is run again as a new
    /// attempt, under a name of its own.
    ///
    /// Cancelling the returned future is safe: the execution may or may not exist
    /// afterwards, and the next start of the name finds it.
    async fn start(&self, request: &ExecutionRequest) -> Result<Started, ExecutorError>;

    /// Whether a started execution goes on whatever happens to this process (Step
    /// Functions), so that its job can be acknowledged once it started. When it runs
    /// inside this process (the local executor), a crash would take it along: its job
    /// is held until it ends, so that the queue hands it out again after a crash.
    fn outlives_this_process(&self) -> bool {
        true
    }

    /// Where a person can look at the execution with id `id` (as `start` gave it), for
    /// the links reports carry; `None` when there is no such place.
    fn link(&self, _id: &str) -> Option<String> {
        None
    }

    async fn describe(
        &self,
        pipeline: &str,
        name: &ExecutionName,
    ) -> Result<Execution, ExecutorError>;
}
