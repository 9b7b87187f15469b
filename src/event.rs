//! The provider-neutral event model: what happened, whoever told us.
//!
//! Sources decode their payloads into these types at the edge, so code past `source/`
//! never re-checks a commit id or a ref name.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Github,
    CodeCommit,
    Manual,
    CodePipeline,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Github => "github",
            Source::CodeCommit => "codecommit",
            Source::Manual => "manual",
            Source::CodePipeline => "codepipeline",
        }
    }

    pub fn parse(text: &str) -> Option<Source> {
        match text {
            "github" => Some(Source::Github),
            "codecommit" => Some(Source::CodeCommit),
            "manual" => Some(Source::Manual),
            "codepipeline" => Some(Source::CodePipeline),
            _ => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a value from a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("commit id {0:?} is not a 40- or 64-character hexadecimal id")]
    CommitSha(String),
    #[error("ref {0:?} is not a full ref name (refs/heads/… or refs/tags/…)")]
    RefName(String),
    #[error("delivery id {0:?} must be 1 to 200 printable ASCII characters")]
    DeliveryId(String),
}

/// A Git object id: 40 (SHA-1) or 64 (SHA-256) lowercase hexadecimal characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommitSha(String);

impl CommitSha {
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let valid = (value.len() == 40 || value.len() == 64)
            && value.bytes().all(|byte| byte.is_ascii_hexdigit());
        if valid {
            Ok(CommitSha(value.to_ascii_lowercase()))
        } else {
            Err(ParseError::CommitSha(value.to_string()))
        }
    }

    /// The all-zero id GitHub uses for "no commit" (the `before` of a new branch, the
    /// `after` of a deleted one).
    pub fn is_zero(&self) -> bool {
        self.0.bytes().all(|byte| byte == b'0')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first seven characters, as Git shows a commit.
    pub fn short(&self) -> &str {
        &self.0[..7]
    }
}

impl TryFrom<String> for CommitSha {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        CommitSha::parse(&value)
    }
}

impl From<CommitSha> for String {
    fn from(value: CommitSha) -> Self {
        value.0
    }
}

impl fmt::Display for CommitSha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A full Git ref name such as `refs/heads/main` or `refs/tags/v1.2.0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RefName(String);

impl RefName {
    /// A branch, tag or pull-request ref that `git check-ref-format` accepts: no `..`,
    /// no `@{`, no control characters, spaces or `~ ^ : ? * [ \`, no component that
    /// starts with `.` or ends with `.lock`, no empty component, not ending in `/` or
    /// `.`, at most 1,024 bytes.
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let rest = value
            .strip_prefix("refs/heads/")
            .or_else(|| value.strip_prefix("refs/tags/"))
            .or_else(|| value.strip_prefix("refs/pull/"));
        let valid = matches!(rest, Some(rest) if !rest.is_empty())
            && value.len() <= 1024
            && git_accepts(value);
        if valid {
            Ok(RefName(value.to_string()))
        } else {
            Err(ParseError::RefName(value.to_string()))
        }
    }

    /// The ref of a branch name (`main` becomes `refs/heads/main`).
    pub fn branch(name: &str) -> Result<Self, ParseError> {
        RefName::parse(&format!("refs/heads/{name}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The branch name, for a `refs/heads/…` ref.
    pub fn branch_name(&self) -> Option<&str> {
        self.0.strip_prefix("refs/heads/")
    }

    /// The tag name, for a `refs/tags/…` ref.
    pub fn tag_name(&self) -> Option<&str> {
        self.0.strip_prefix("refs/tags/")
    }

    /// The name without its `refs/<kind>/` prefix.
    pub fn short_name(&self) -> &str {
        self.branch_name()
            .or_else(|| self.tag_name())
            .or_else(|| self.0.strip_prefix("refs/pull/"))
            .unwrap_or(&self.0)
    }
}

/// `git check-ref-format`'s rules for a full ref name.
fn git_accepts(value: &str) -> bool {
    let forbidden = |c: char| {
        c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\' | '\u{7f}')
    };
    !value.chars().any(forbidden)
        && !value.contains("..")
        && !value.contains("@{")
        && value != "@"
        && !value.ends_with('/')
        && !value.ends_with('.')
        && value.split('/').all(|component| {
            !component.is_empty() && !component.starts_with('.') && !component.ends_with(".lock")
        })
}

impl TryFrom<String> for RefName {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        RefName::parse(&value)
    }
}

impl From<RefName> for String {
    fn from(value: RefName) -> Self {
        value.0
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of one delivery (one HTTP request from a source). Redeliveries keep it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeliveryId(String);

impl DeliveryId {
    pub fn parse(value: &str) -> Result<Self, ParseError> {
        let valid = !value.is_empty()
            && value.len() <= 200
            && value.bytes().all(|byte| byte.is_ascii_graphic());
        if valid {
            Ok(DeliveryId(value.to_string()))
        } else {
            Err(ParseError::DeliveryId(value.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeliveryId {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        DeliveryId::parse(&value)
    }
}

impl From<DeliveryId> for String {
    fn from(value: DeliveryId) -> Self {
        value.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What tells one occurrence of an event from every other, built only from content
/// the source authenticated: every delivery of one push (GitHub's redelivery, the same
/// push from an organisation hook and a repository hook, a captured body posted again
/// under a new delivery id) has the same occurrence, while a new push of the same
/// commits (a force-push back, a re-opened pull request) has another. Execution names
/// are derived from it, never from an unsigned header.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Occurrence(String);

impl Occurrence {
    /// Joins the parts with their lengths, so that no two lists of parts give the same
    /// text.
    pub fn from_parts(parts: &[&str]) -> Occurrence {
        let mut text = String::new();
        for part in parts {
            text.push_str(&part.len().to_string());
            text.push(':');
            text.push_str(part);
        }
        Occurrence(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An occurrence key read back as written (from a queue message).
    pub fn from_key(key: String) -> Occurrence {
        Occurrence(key)
    }
}

/// What happened, in a form every source decodes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub source: Source,
    /// The request that told us; not authenticated, so it names nothing.
    pub delivery: DeliveryId,
    pub occurrence: Occurrence,
    /// `owner/name` for GitHub, the repository name for CodeCommit.
    pub repository: String,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    Push(Push),
    PullRequest(PullRequest),
    /// A run asked for through the API.
    Manual(Manual),
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Push(_) => "push",
            EventKind::PullRequest(_) => "pull_request",
            EventKind::Manual(_) => "manual",
        }
    }
}

/// A run asked for by hand (`POST /v1/executions`): it names its pipeline and
/// environment itself and goes through no route. The planner checks it against the
/// pipeline's projects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manual {
    pub pipeline: String,
    pub environment: String,
    /// The `skip_*` flags given, by name, in the order given.
    pub skips: Vec<(String, bool)>,
    /// Branches to deploy instead of the projects' default ones: (project, branch).
    pub overrides: Vec<(String, RefName)>,
    /// The commit to deploy, when one is named.
    pub commit: Option<CommitSha>,
    /// The CodePipeline job it comes from, for a trigger of that source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codepipeline: Option<PipelineJob>,
}

/// Where in CodePipeline a job comes from: what its input says of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineJob {
    pub job_id: String,
    pub pipeline: String,
    pub pipeline_execution_id: String,
    pub stage: String,
    pub action: String,
    /// The first input artifact's revision as CodePipeline gives it (a commit id for
    /// CodeCommit and GitHub sources, an object version for S3).
    pub revision: Option<String>,
    /// The first input artifact's name.
    pub artifact: Option<String>,
    /// The repository and branch of the source action that made the artifact
    /// (CodeCommit, GitHub), when the pipeline's declaration says.
    pub repository: Option<String>,
    pub branch: Option<String>,
}

/// One push of a ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    pub git_ref: RefName,
    /// The commit the ref pointed at before; all zeros when the ref was created.
    pub before: CommitSha,
    /// The commit the ref points at now; all zeros when the ref was deleted.
    pub after: CommitSha,
    /// The pushed commits, oldest first, as the source listed them.
    pub commits: Vec<Commit>,
    pub created: bool,
    pub deleted: bool,
    pub forced: bool,
    /// The source's list may be incomplete (GitHub lists at most 2,048 commits and
    /// carries no total), so commits between `before` and `after` can be missing.
    pub commits_truncated: bool,
    /// Whether the source listed the pushed commits. CodeCommit tells only the old and
    /// the new head: a route that takes every commit needs them fetched first (an
    /// expansion), and `commits` is empty until then.
    pub commits_listed: bool,
    /// The commit at `after` when the source described it (GitHub's `head_commit`);
    /// gives a message and author to a push that lists no commits.
    pub head_commit: Option<Commit>,
}

/// One commit of a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub id: CommitSha,
    pub message: String,
    pub author: String,
    /// Paths added, modified or removed by the commit; `None` when the source did not
    /// say, which path filters treat as "could be anything".
    pub changed_paths: Option<Vec<String>>,
}

/// What was done to a pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullRequestAction {
    Opened,
    Synchronize,
    Reopened,
    ReadyForReview,
    Closed,
    /// Every other action (`labeled`, `edited`, …), kept by name so a route can ask for it.
    Other(String),
}

impl PullRequestAction {
    pub fn parse(value: &str) -> Self {
        match value {
            "opened" => Self::Opened,
            "synchronize" => Self::Synchronize,
            "reopened" => Self::Reopened,
            "ready_for_review" => Self::ReadyForReview,
            "closed" => Self::Closed,
            other => Self::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Opened => "opened",
            Self::Synchronize => "synchronize",
            Self::Reopened => "reopened",
            Self::ReadyForReview => "ready_for_review",
            Self::Closed => "closed",
            Self::Other(other) => other,
        }
    }
}

/// One pull-request event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub number: u64,
    pub action: PullRequestAction,
    pub title: String,
    pub author: String,
    pub head_ref: RefName,
    pub head_sha: CommitSha,
    pub base_ref: RefName,
    pub base_sha: CommitSha,
    pub draft: bool,
    pub merged: bool,
    pub labels: Vec<String>,
    /// The head branch lives in another repository than the base; its code was
    /// written by someone without write access to the base repository.
    pub from_fork: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_follow_git_check_ref_format() {
        for good in [
            "refs/heads/main",
            "refs/heads/hotfix/important_patch",
            "refs/tags/v1.2.0",
            "refs/heads/x;echo$(id)`id`",
            "refs/heads/ünïcode",
        ] {
            assert!(RefName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "refs/heads/a..b",
            "refs/heads/../../etc/passwd",
            "refs/heads/a b",
            "refs/heads/a~1",
            "refs/heads/a^",
            "refs/heads/a:b",
            "refs/heads/a?",
            "refs/heads/a*",
            "refs/heads/a[b",
            "refs/heads/a\\b",
            "refs/heads/a@{1}",
            "refs/heads/.hidden",
            "refs/heads/a/.b",
            "refs/heads/a.lock",
            "refs/heads/a//b",
            "refs/heads/a/",
            "refs/heads/a.",
            "refs/heads/a\u{7}",
            "refs/heads/",
            "refs/remotes/origin/main",
        ] {
            assert!(RefName::parse(bad).is_err(), "{bad}");
        }
        assert!(RefName::parse(&format!("refs/heads/{}", "x".repeat(1100))).is_err());
    }
}
