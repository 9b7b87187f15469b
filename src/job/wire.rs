//! The wire form of jobs, version 1. Every field is spelled out here rather than
//! borrowed from the types the planner and the worker use, so that changing those never
//! changes what is on the queue; reading parses every field back into its checked type.

use serde::{Deserialize, Serialize};

use super::{CURRENT_VERSION, Job, JobKind, Read};
use crate::event::{CommitSha, DeliveryId, Occurrence, RefName, Source};
use crate::execution::name::ExecutionName;
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
const KNOWN_TYPES: &[&str] = &["start", "expand"];

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
            },
        },
        JobKind::Start { request } => WireKind::Start {
            request: WireRequest {
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
        })
    }
}

impl WireRequest {
    fn parse(self) -> Result<ExecutionRequest, String> {
        let origin = self.origin;
        Ok(ExecutionRequest {
            name: ExecutionName::parse(&self.name).map_err(|error| error.to_string())?,
            action: Action::parse(&self.action)
                .ok_or_else(|| format!("action {:?} is unknown", self.action))?,
            input: Input::from_json(self.input).ok_or("the input is not JSON")?,
            origin: Origin {
                source: Source::parse(&origin.source)
                    .ok_or_else(|| format!("source {:?} is unknown", origin.source))?,
                delivery: DeliveryId::parse(&origin.delivery).map_err(|error| error.to_string())?,
                repository: origin.repository,
                git_ref: RefName::parse(&origin.git_ref).map_err(|error| error.to_string())?,
                commit: CommitSha::parse(&origin.commit).map_err(|error| error.to_string())?,
            },
            pipeline: self.pipeline,
            group: self.group,
            environment: self.environment,
        })
    }
}
