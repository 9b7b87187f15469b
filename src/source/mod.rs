//! Sources: where events come from. Each one authenticates a delivery over its raw
//! bytes and only then decodes it into an [`crate::event::Event`].
//!
//! Invariant: this is the only module that sees raw request bytes.

pub mod codecommit;
pub mod codepipeline;
pub mod github;
pub mod manual;

use async_trait::async_trait;

use crate::error::BoxError;
use crate::event::{Commit, CommitSha};

/// Why a delivery was refused. `server` maps each variant to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// 401: no usable signature, or one that no configured secret produced.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: the secret that signed the delivery does not speak for its repository.
    #[error("{0}")]
    Forbidden(String),
    /// 415: a body type the source never sends.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 400: a missing header, or a body that is not what it claims to be.
    #[error("{0}")]
    Malformed(String),
    /// 422: well-formed, but not an event that can be acted on.
    #[error("{0}")]
    Unusable(String),
    /// 503: what verifying needs could not be had now (an SNS signing certificate).
    #[error("{0}")]
    Unavailable(String),
}

/// A source's record of commits, for a push whose delivery did not list them.
#[async_trait]
pub trait CommitHistory: Send + Sync {
    /// The commits that `after` adds to `before`, oldest first (as the source counts
    /// them: CodeCommit along first parents, GitHub as `git log before..after`), at most
    /// `max` of them (the newest), each with its changed paths when `paths` (fetching
    /// them can cost a call per commit: only when a route or project filters by path).
    async fn walk(
        &self,
        repository: &str,
        before: &CommitSha,
        after: &CommitSha,
        max: usize,
        paths: bool,
    ) -> Result<Walk, HistoryError>;
}

/// What a walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk {
    /// Oldest first.
    pub commits: Vec<Commit>,
    pub end: WalkEnd,
}

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkEnd {
    /// It reached the old head: `commits` are exactly the pushed ones.
    Reached,
    /// It stopped at the bound: `commits` are the newest ones.
    Bound,
    /// It reached the first commit without meeting the old head (a force-push): which
    /// commits are new cannot be told, and `commits` holds the new head only.
    Unreachable,
}

impl WalkEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            WalkEnd::Reached => "reached",
            WalkEnd::Bound => "bound",
            WalkEnd::Unreachable => "unreachable",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Throttling, a server fault, no answer: try again later.
    #[error("{message}")]
    Retryable {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// Trying again cannot help (no such repository or commit).
    #[error("{message}")]
    Permanent {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}
