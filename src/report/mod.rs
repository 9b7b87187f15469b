//! Telling a source what became of its events. The [`Reporter`] trait writes one
//! [`Report`]; `github.rs` writes them as commit statuses or check runs, and
//! deployments, with octocrab.
//!
//! Invariant: a report never replaces the state of a later stage of the same execution
//! (a retried `pending` arriving after the `success`): a reporter reads what is shown
//! before it writes, and answers [`Reported::Stale`] instead.

pub mod github;

use std::time::Duration;

use async_trait::async_trait;

use crate::error::{BoxError, Chain};
use crate::execution::report::Report;

/// What became of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    Written,
    /// A later state of the same execution is shown already; nothing was written.
    Stale,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The service is failing, limiting us or unreachable: try again, not before
    /// `retry_after` when it said so.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
        #[source]
        source: Option<BoxError>,
    },
    /// Not tried: our own rate limit, or a pause GitHub asked for, says to come back
    /// after `retry_after`. Not a failed try.
    #[error("reporting waits {} ms for the rate limit", retry_after.as_millis())]
    Busy { retry_after: Duration },
    /// Trying again cannot help (no such repository, a refused request).
    #[error("{message}")]
    Permanent {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl ReportError {
    pub fn retryable(message: impl Into<String>, retry_after: Option<Duration>) -> ReportError {
        ReportError::Retryable {
            message: message.into(),
            retry_after,
            source: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> ReportError {
        ReportError::Permanent {
            message: message.into(),
            source: None,
        }
    }
}

impl From<crate::github::CallError> for ReportError {
    fn from(error: crate::github::CallError) -> ReportError {
        use crate::github::CallError;
        match error {
            CallError::Retryable {
                message,
                retry_after,
                source,
            } => ReportError::Retryable {
                message,
                retry_after,
                source,
            },
            CallError::Busy { retry_after } => ReportError::Busy { retry_after },
            CallError::Permanent { message, source } => ReportError::Permanent { message, source },
        }
    }
}

/// Writes reports to a source.
#[async_trait]
pub trait Reporter: Send + Sync {
    async fn report(&self, report: &Report) -> Result<Reported, ReportError>;
}

/// Logs a report that could not be written, once it is given up.
pub fn log_given_up(report: &Report, error: &ReportError) {
    tracing::error!(
        repository = %report.target.repository,
        commit = %report.target.commit,
        context = %report.target.context,
        stage = report.stage.as_str(),
        error = %Chain(error),
        "Gave up reporting to GitHub."
    );
}
