//! What is told back to a source about an execution: a commit status (or check run) per
//! pipeline and environment on the commit, and for a pull request's preview
//! environment a deployment. The planner says where an execution is reported
//! ([`ReportTarget`]); the listener and the worker queue [`Report`]s as the execution
//! moves on; a reporter writes them. Reports are best effort for the pipeline: nothing
//! waits for them.

use sha2::{Digest, Sha256};

use super::Action;
use super::name::ExecutionName;
use crate::event::CommitSha;

/// Where an execution's progress is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportTarget {
    pub repository: String,
    pub commit: CommitSha,
    /// `gitdispatch/<pipeline>/<environment>`: one per pipeline and environment.
    pub context: String,
    /// A pull request's preview environment, shown as a deployment.
    pub deployment: Option<DeploymentTarget>,
}

/// A deployment of a pull request's head to its preview environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentTarget {
    pub environment: String,
    /// The environment's address, rendered from the route's template.
    pub url: Option<String>,
    /// Or a JSONPath into the execution's output that gives it.
    pub url_path: Option<String>,
}

/// How far an execution has come. A report never replaces one of a later stage for
/// the same execution (a retried `pending` arriving after the `success`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Queued,
    Started,
    Ended,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queued => "queued",
            Stage::Started => "started",
            Stage::Ended => "ended",
        }
    }

    pub fn parse(text: &str) -> Option<Stage> {
        match text {
            "queued" => Some(Stage::Queued),
            "started" => Some(Stage::Started),
            "ended" => Some(Stage::Ended),
            _ => None,
        }
    }
}

/// The state shown, in the words of GitHub's commit statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportState {
    Pending,
    Success,
    Failure,
    Error,
}

impl ReportState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportState::Pending => "pending",
            ReportState::Success => "success",
            ReportState::Failure => "failure",
            ReportState::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<ReportState> {
        match text {
            "pending" => Some(ReportState::Pending),
            "success" => Some(ReportState::Success),
            "failure" => Some(ReportState::Failure),
            "error" => Some(ReportState::Error),
            _ => None,
        }
    }
}

/// One state to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub target: ReportTarget,
    /// The execution it is about (its planned name); `None` for a commit a route
    /// skipped, which gets a final state without any execution.
    pub execution: Option<ExecutionName>,
    pub action: Action,
    pub stage: Stage,
    pub state: ReportState,
    /// A few words: "Queued", "Started", "Failed", "Skipped: paths".
    pub description: String,
    /// Where the execution can be looked at.
    pub details_url: Option<String>,
    /// The preview environment's address, once the deployment succeeded.
    pub environment_url: Option<String>,
    /// Tries before this one: a report GitHub could not take is queued again, as a
    /// message of its own, so that waiting for GitHub never uses up the receives of
    /// one message.
    pub attempt: u32,
    /// Not to be written before this time (milliseconds since the epoch); 0 at once.
    pub not_before_ms: i64,
}

impl Report {
    /// A report of `stage` about `execution`.
    pub fn new(
        target: ReportTarget,
        execution: Option<ExecutionName>,
        action: Action,
        stage: Stage,
        state: ReportState,
        description: impl Into<String>,
    ) -> Report {
        Report {
            target,
            execution,
            action,
            stage,
            state,
            description: description.into(),
            details_url: None,
            environment_url: None,
            attempt: 0,
            not_before_ms: 0,
        }
    }

    /// The queue deduplicates on it: one report per execution, context, stage and try.
    /// A report queued again differs from the message it replaces (its try or its due
    /// time), which is still queued while the copy is sent.
    pub fn id(&self) -> String {
        let mut digest = Sha256::new();
        for part in [
            self.target.repository.as_str(),
            self.target.commit.as_str(),
            self.target.context.as_str(),
            self.execution.as_ref().map_or("", ExecutionName::as_str),
            self.stage.as_str(),
            self.description.as_str(),
            &self.attempt.to_string(),
            &self.not_before_ms.to_string(),
        ] {
            digest.update(part.as_bytes());
            digest.update([0]);
        }
        format!("report-{}", &hex::encode(digest.finalize())[..40])
    }

    /// Reports of one context on one commit are written one at a time, in order.
    pub fn group(&self) -> String {
        format!(
            "report/{}/{}/{}",
            self.target.repository, self.target.commit, self.target.context
        )
    }
}

/// A started execution to follow until it ends, when nothing holds its job: looked at
/// again after a growing delay, by a job of its own each time, so that no worker slot is
/// held between looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub pipeline: String,
    pub execution: ExecutionName,
    pub action: Action,
    pub target: ReportTarget,
    /// Where the execution can be looked at.
    pub details_url: Option<String>,
    /// How many looks came before this one.
    pub look: u32,
    /// Not to be looked at before this time (milliseconds since the epoch).
    pub not_before_ms: i64,
}

impl Watch {
    pub fn id(&self) -> String {
        format!("watch-{}-{}", self.execution, self.look)
    }
}

/// A serial lane's execution that ran longer than its job may be held in flight: its
/// lane is busy (its next jobs parked) until this job, looked at after growing delays
/// as a watch is, sees it end; then it records and reports the end and puts the lane's
/// parked jobs back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The start whose execution holds the lane.
    pub request: super::ExecutionRequest,
    pub look: u32,
    pub not_before_ms: i64,
}

impl Release {
    pub fn id(&self) -> String {
        format!("release-{}-{}", self.request.name, self.look)
    }
}

/// A serial lane's parked jobs to put back on the queue, sent into the lane's own
/// ordering group when its hold ends, so that it is received only after every job of
/// the lane queued before it: those are parked first, and all of them put back behind
/// what is already on the queue, in order. A round that put some back sends the next
/// round behind them; a round that finds nothing parked ends the hold. Only the round
/// of the hold's current `fence` acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpark {
    pub pipeline: String,
    pub environment: String,
    /// The lane's ordering group.
    pub group: String,
    /// The chain of rounds this one belongs to, as the hold names it.
    pub fence: String,
    pub round: u32,
}

impl Unpark {
    pub fn id(&self) -> String {
        format!("unpark-{}-{}", self.fence, self.round)
    }
}

/// A CodePipeline job to pass or fail with its execution's outcome: looked at after
/// growing delays, as a watch is, by a job of its own each time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follow {
    /// The CodePipeline job (a continuation's job id after a hand-back).
    pub job_id: String,
    pub pipeline: String,
    pub execution: ExecutionName,
    /// When this CodePipeline job was taken (milliseconds since the epoch): it is
    /// handed back as in progress once it is `continue_after` old.
    pub taken_ms: i64,
    /// When the first job of its action execution was taken (a continuation carries it
    /// on): the execution must have started within `start_timeout` of it.
    pub since_ms: i64,
    pub look: u32,
    pub not_before_ms: i64,
}

impl Follow {
    /// Unique to one take of the job: a job CodePipeline offers again (its first
    /// acknowledgement lost) is followed under a new id, which SQS FIFO's five-minute
    /// deduplication of the first take's id cannot swallow. Two follows of one job then
    /// race to its result, which CodePipeline takes once.
    pub fn id(&self) -> String {
        format!("follow-{}-{}-{}", self.job_id, self.taken_ms, self.look)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_ordered_and_ids_tell_reports_apart() {
        assert!(Stage::Queued < Stage::Started && Stage::Started < Stage::Ended);
        let target = ReportTarget {
            repository: "acme/api".into(),
            commit: CommitSha::parse(&"a".repeat(40)).unwrap(),
            context: "gitdispatch/deploy/acceptance".into(),
            deployment: None,
        };
        let name = ExecutionName::parse("deploy-acceptance-aaaaaaa-0123456789abcdef0123").unwrap();
        let queued = Report::new(
            target.clone(),
            Some(name.clone()),
            Action::Deploy,
            Stage::Queued,
            ReportState::Pending,
            "Queued",
        );
        let started = Report::new(
            target,
            Some(name),
            Action::Deploy,
            Stage::Started,
            ReportState::Pending,
            "Started",
        );
        assert_ne!(queued.id(), started.id());
        assert_eq!(queued.id(), queued.clone().id());
        assert_eq!(queued.group(), started.group());
        for stage in [Stage::Queued, Stage::Started, Stage::Ended] {
            assert_eq!(Stage::parse(stage.as_str()), Some(stage));
        }
    }
}
