//! The wire form of jobs, version 1. Every field is spelled out here rather than
//! borrowed from the types the planner and the worker use, so that changing those never
//! changes what is on the queue; reading parses every field back into its checked type.

use serde::{Deserialize, Serialize};

use super::{CURRENT_VERSION, Job, JobKind, Read};
use crate::event::{CommitSha, DeliveryId, Occurrence, RefName, Source};
use crate::execution::name::ExecutionName;
use crate::execution::report::{
    DeploymentTarget, Follow, Report, ReportState, ReportTarget, Stage, Unpark, Watch,
};
use crate::execution::{Action, ExecutionRequest, Expansion, Input, Origin};

#[derive(Serialize, Deserialize)]
struct WireJob {
    v: u32,
    #[serde(flatten)]
    kind: WireKind,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireKind {
    Start { request: WireRequest },
    Expand { expansion: WireExpansion },
    Report { report: WireReport },
    Watch { watch: WireWatch },
    Follow { follow: WireFollow },
    Release { release: WireRelease },
    Unpark { unpark: WireUnpark },
}

#[derive(Serialize, Deserialize)]
struct WireUnpark {
    pipeline: String,
    environment: String,
    group: String,
    fence: String,
    round: u32,
}

#[derive(Serialize, Deserialize)]
struct WireRelease {
    request: WireRequest,
    look: u32,
    not_before_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct WireTarget {
    repository: String,
    commit: String,
    context: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deployment: Option<WireDeployment>,
}

#[derive(Serialize, Deserialize)]
struct WireDeployment {
    environment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url_path: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct WireReport {
    target: WireTarget,
    execution: Option<String>,
    action: String,
    stage: String,
    state: String,
    description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    details_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    environment_url: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    attempt: u32,
    #[serde(default, skip_serializing_if = "is_zero_ms")]
    not_before_ms: i64,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn is_zero_ms(value: &i64) -> bool {
    *value == 0
}

#[derive(Serialize, Deserialize)]
struct WireWatch {
    pipeline: String,
    execution: String,
    action: String,
    target: WireTarget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    details_url: Option<String>,
    look: u32,
    not_before_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct WireFollow {
    job_id: String,
    pipeline: String,
    execution: String,
    taken_ms: i64,
    /// Written by this release on; a follow of an earlier one was taken when its
    /// action execution began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since_ms: Option<i64>,
    look: u32,
    not_before_ms: i64,
}

impl WireFollow {
    fn parse(self) -> Result<Follow, String> {
        Ok(Follow {
            job_id: self.job_id,
            pipeline: self.pipeline,
            execution: name(&self.execution)?,
            taken_ms: self.taken_ms,
            since_ms: self.since_ms.unwrap_or(self.taken_ms),
            look: self.look,
            not_before_ms: self.not_before_ms,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct WireExpansion {
    source: String,
    delivery: String,
    occurrence: String,
    repository: String,
    git_ref: String,
    before: String,
    after: String,
    /// Absent in messages of releases that always fetched the paths.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    paths: bool,
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

#[derive(Serialize, Deserialize)]
struct WireRequest {
    pipeline: String,
    name: String,
    group: Option<String>,
    environment: String,
    action: String,
    /// The input as a JSON string, so that no decoder re-renders it.
    input: String,
    origin: WireOrigin,
    /// Absent when reporting is off (and in messages of releases without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    report: Option<WireTarget>,
}

#[derive(Serialize, Deserialize)]
struct WireOrigin {
    source: String,
    delivery: String,
    repository: String,
    git_ref: String,
    commit: String,
}

/// The first fields of any version: enough to tell what a message is.
#[derive(Deserialize)]
struct Header {
    v: u32,
    #[serde(rename = "type")]
    kind: String,
}

/// The job types this release reads.
const KNOWN_TYPES: &[&str] = &[
    "start", "expand", "report", "watch", "follow", "release", "unpark",
];

pub(super) fn write(job: &Job) -> String {
    let kind = match &job.kind {
        JobKind::Expand { expansion } => WireKind::Expand {
            expansion: WireExpansion {
                source: expansion.source.as_str().to_string(),
                delivery: expansion.delivery.to_string(),
                occurrence: expansion.occurrence.as_str().to_string(),
                repository: expansion.repository.clone(),
                git_ref: expansion.git_ref.to_string(),
                before: expansion.before.to_string(),
                after: expansion.after.to_string(),
                paths: expansion.paths,
            },
        },
        JobKind::Start { request } => WireKind::Start {
            request: WireRequest::write(request),
        },
        JobKind::Release { release } => WireKind::Release {
            release: WireRelease {
                request: WireRequest::write(&release.request),
                look: release.look,
                not_before_ms: release.not_before_ms,
            },
        },
        JobKind::Unpark { unpark } => WireKind::Unpark {
            unpark: WireUnpark {
                pipeline: unpark.pipeline.clone(),
                environment: unpark.environment.clone(),
                group: unpark.group.clone(),
                fence: unpark.fence.clone(),
                round: unpark.round,
            },
        },
        JobKind::Report { report } => WireKind::Report {
            report: WireReport {
                target: WireTarget::write(&report.target),
                execution: report.execution.as_ref().map(ToString::to_string),
                action: report.action.as_str().to_string(),
                stage: report.stage.as_str().to_string(),
                state: report.state.as_str().to_string(),
                description: report.description.clone(),
                details_url: report.details_url.clone(),
                environment_url: report.environment_url.clone(),
                attempt: report.attempt,
                not_before_ms: report.not_before_ms,
            },
        },
        JobKind::Watch { watch } => WireKind::Watch {
            watch: WireWatch {
                pipeline: watch.pipeline.clone(),
                execution: watch.execution.to_string(),
                action: watch.action.as_str().to_string(),
                target: WireTarget::write(&watch.target),
                details_url: watch.details_url.clone(),
                look: watch.look,
                not_before_ms: watch.not_before_ms,
            },
        },
        JobKind::Follow { follow } => WireKind::Follow {
            follow: WireFollow {
                job_id: follow.job_id.clone(),
                pipeline: follow.pipeline.clone(),
                execution: follow.execution.to_string(),
                taken_ms: follow.taken_ms,
                since_ms: Some(follow.since_ms),
                look: follow.look,
                not_before_ms: follow.not_before_ms,
            },
        },
    };
    serde_json::to_string(&WireJob {
        v: CURRENT_VERSION,
        kind,
    })
    .expect("a job always serializes")
}

pub(super) fn read(body: &str) -> Read {
    let header: Header = match serde_json::from_str(body) {
        Ok(header) => header,
        Err(error) => return Read::Invalid(format!("not a job message: {error}")),
    };
    if header.v > CURRENT_VERSION {
        return Read::Newer(format!(
            "job version {} is newer than {CURRENT_VERSION}",
            header.v
        ));
    }
    if !KNOWN_TYPES.contains(&header.kind.as_str()) {
        return Read::Newer(format!(
            "job type {:?} is unknown to this release",
            header.kind
        ));
    }
    let wire: WireJob = match serde_json::from_str(body) {
        Ok(wire) => wire,
        Err(error) => {
            return Read::Invalid(format!("job of type {} is invalid: {error}", header.kind));
        }
    };
    match wire.kind {
        WireKind::Start { request } => match request.parse() {
            Ok(request) => Read::Job(Box::new(Job::start(request))),
            Err(reason) => Read::Invalid(format!("job of type start is invalid: {reason}")),
        },
        WireKind::Expand { expansion } => match expansion.parse() {
            Ok(expansion) => Read::Job(Box::new(Job::expand(expansion))),
            Err(reason) => Read::Invalid(format!("job of type expand is invalid: {reason}")),
        },
        WireKind::Report { report } => match report.parse() {
            Ok(report) => Read::Job(Box::new(Job::report(report))),
            Err(reason) => Read::Invalid(format!("job of type report is invalid: {reason}")),
        },
        WireKind::Watch { watch } => match watch.parse() {
            Ok(watch) => Read::Job(Box::new(Job::watch(watch))),
            Err(reason) => Read::Invalid(format!("job of type watch is invalid: {reason}")),
        },
        WireKind::Follow { follow } => match follow.parse() {
            Ok(follow) => Read::Job(Box::new(Job::follow(follow))),
            Err(reason) => Read::Invalid(format!("job of type follow is invalid: {reason}")),
        },
        WireKind::Release { release } => match release.request.parse() {
            Ok(request) => Read::Job(Box::new(Job::release(crate::execution::report::Release {
                request,
                look: release.look,
                not_before_ms: release.not_before_ms,
            }))),
            Err(reason) => Read::Invalid(format!("job of type release is invalid: {reason}")),
        },
        WireKind::Unpark { unpark } => Read::Job(Box::new(Job::unpark(Unpark {
            pipeline: unpark.pipeline,
            environment: unpark.environment,
            group: unpark.group,
            fence: unpark.fence,
            round: unpark.round,
        }))),
    }
}

fn action(text: &str) -> Result<Action, String> {
    Action::parse(text).ok_or_else(|| format!("action {text:?} is unknown"))
}

fn name(text: &str) -> Result<ExecutionName, String> {
    ExecutionName::parse(text).map_err(|error| error.to_string())
}

impl WireTarget {
    fn write(target: &ReportTarget) -> WireTarget {
        WireTarget {
            repository: target.repository.clone(),
            commit: target.commit.to_string(),
            context: target.context.clone(),
            deployment: target.deployment.as_ref().map(|deployment| WireDeployment {
                environment: deployment.environment.clone(),
                url: deployment.url.clone(),
                url_path: deployment.url_path.clone(),
            }),
        }
    }

    fn parse(self) -> Result<ReportTarget, String> {
        Ok(ReportTarget {
            repository: self.repository,
            commit: CommitSha::parse(&self.commit).map_err(|error| error.to_string())?,
            context: self.context,
            deployment: self.deployment.map(|deployment| DeploymentTarget {
                environment: deployment.environment,
                url: deployment.url,
                url_path: deployment.url_path,
            }),
        })
    }
}

impl WireReport {
    fn parse(self) -> Result<Report, String> {
        Ok(Report {
            target: self.target.parse()?,
            execution: self.execution.as_deref().map(name).transpose()?,
            action: action(&self.action)?,
            stage: Stage::parse(&self.stage)
                .ok_or_else(|| format!("stage {:?} is unknown", self.stage))?,
            state: ReportState::parse(&self.state)
                .ok_or_else(|| format!("state {:?} is unknown", self.state))?,
            description: self.description,
            details_url: self.details_url,
            environment_url: self.environment_url,
            attempt: self.attempt,
            not_before_ms: self.not_before_ms,
        })
    }
}

impl WireWatch {
    fn parse(self) -> Result<Watch, String> {
        Ok(Watch {
            execution: name(&self.execution)?,
            action: action(&self.action)?,
            target: self.target.parse()?,
            pipeline: self.pipeline,
            details_url: self.details_url,
            look: self.look,
            not_before_ms: self.not_before_ms,
        })
    }
}

impl WireExpansion {
    fn parse(self) -> Result<Expansion, String> {
        Ok(Expansion {
            source: Source::parse(&self.source)
                .ok_or_else(|| format!("source {:?} is unknown", self.source))?,
            delivery: DeliveryId::parse(&self.delivery).map_err(|error| error.to_string())?,
            occurrence: Occurrence::from_key(self.occurrence),
            repository: self.repository,
            git_ref: RefName::parse(&self.git_ref).map_err(|error| error.to_string())?,
            before: CommitSha::parse(&self.before).map_err(|error| error.to_string())?,
            after: CommitSha::parse(&self.after).map_err(|error| error.to_string())?,
            paths: self.paths,
        })
    }
}

impl WireRequest {
    fn write(request: &ExecutionRequest) -> WireRequest {
        WireRequest {
            pipeline: request.pipeline.clone(),
            name: request.name.to_string(),
            group: request.group.clone(),
            environment: request.environment.clone(),
            action: request.action.as_str().to_string(),
            input: request.input.as_str().to_string(),
            origin: WireOrigin {
                source: request.origin.source.as_str().to_string(),
                delivery: request.origin.delivery.to_string(),
                repository: request.origin.repository.clone(),
                git_ref: request.origin.git_ref.to_string(),
                commit: request.origin.commit.to_string(),
            },
            report: request.report.as_ref().map(WireTarget::write),
        }
    }

    fn parse(self) -> Result<ExecutionRequest, String> {
        let origin = self.origin;
        Ok(ExecutionRequest {
            name: name(&self.name)?,
            action: action(&self.action)?,
            input: Input::from_json(self.input).ok_or("the input is not JSON")?,
            origin: Origin {
                source: Source::parse(&origin.source)
                    .ok_or_else(|| format!("source {:?} is unknown", origin.source))?,
                delivery: DeliveryId::parse(&origin.delivery).map_err(|error| error.to_string())?,
                repository: origin.repository,
                git_ref: RefName::parse(&origin.git_ref).map_err(|error| error.to_string())?,
                commit: CommitSha::parse(&origin.commit).map_err(|error| error.to_string())?,
            },
            report: self.report.map(WireTarget::parse).transpose()?,
            pipeline: self.pipeline,
            group: self.group,
            environment: self.environment,
        })
    }
}
