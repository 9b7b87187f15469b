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

#[cfg(test)]
mod tests {
    use super::*;

    /// A job read back from the queue must be the job that was written, input bytes
    /// included.
    #[test]
    fn jobs_round_trip_through_their_json() {
        let body = r#"{"v":1,"type":"start","request":{"pipeline":"deploy","name":"deploy-ci-0123456-0123456789abcdef0123","group":"deploy/ci","environment":"ci","action":"deploy","input":"{\"environment\":\"ci\",\"n\":1.0}","origin":{"source":"github","delivery":"d","repository":"acme/api","git_ref":"refs/heads/main","commit":"0123456789abcdef0123456789abcdef01234567"}}}"#;
        let job: Job = serde_json::from_str(body).unwrap();
        assert_eq!(job.id(), "deploy-ci-0123456-0123456789abcdef0123");
        assert_eq!(job.group(), Some("deploy/ci"));
        let JobKind::Start { request } = &job.kind;
        assert_eq!(request.input.as_str(), r#"{"environment":"ci","n":1.0}"#);
        assert_eq!(serde_json::to_string(&job).unwrap(), body);
    }
}
