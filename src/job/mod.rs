//! Jobs: what waits on the queue for a worker. A [`Job`] is what the code works with;
//! its wire form (`wire`) is a type of its own, versioned and tagged
//! (`{"v": 1, "type": "start", ...}`), so that a field added to an execution request
//! never silently changes what is on the queue, and a message written by one release is
//! still read by the next.

mod wire;

use crate::execution::report::{Follow, Release, Report, Unpark, Watch};
use crate::execution::{ExecutionRequest, Expansion};

/// The message version this release writes.
pub const CURRENT_VERSION: u32 = 1;

/// One job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub kind: JobKind,
}

/// What a job asks a worker to do; one file of `worker/` per kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// Start one execution.
    Start { request: ExecutionRequest },
    /// Fetch a push's commits from its source, plan them and queue their starts.
    Expand { expansion: Expansion },
    /// Tell the source how an execution is doing.
    Report { report: Report },
    /// Look at a started execution; report its end, or look again later.
    Watch { watch: Watch },
    /// Look at the execution of a CodePipeline job; pass or fail the job at its end.
    Follow { follow: Follow },
    /// Look at the execution that holds a busy lane; at its end, put the lane's
    /// parked jobs back.
    Release { release: Release },
    /// Put a serial lane's parked jobs back on the queue, in order, behind every job of
    /// the lane queued before; end its hold when none is left.
    Unpark { unpark: Unpark },
}

/// What a message body turned out to be.
#[derive(Debug)]
pub enum Read {
    Job(Box<Job>),
    /// Written by a newer release (a higher version or an unknown type): a worker of
    /// that release may read it.
    Newer(String),
    /// Not a job at all, or a broken one.
    Invalid(String),
}

impl Job {
    pub fn start(request: ExecutionRequest) -> Job {
        Job {
            kind: JobKind::Start { request },
        }
    }

    pub fn expand(expansion: Expansion) -> Job {
        Job {
            kind: JobKind::Expand { expansion },
        }
    }

    pub fn report(report: Report) -> Job {
        Job {
            kind: JobKind::Report { report },
        }
    }

    pub fn watch(watch: Watch) -> Job {
        Job {
            kind: JobKind::Watch { watch },
        }
    }

    pub fn follow(follow: Follow) -> Job {
        Job {
            kind: JobKind::Follow { follow },
        }
    }

    pub fn release(release: Release) -> Job {
        Job {
            kind: JobKind::Release { release },
        }
    }

    pub fn unpark(unpark: Unpark) -> Job {
        Job {
            kind: JobKind::Unpark { unpark },
        }
    }

    /// The id the queue deduplicates on: the execution name, which is already a
    /// deterministic function of everything that makes the job distinct.
    pub fn id(&self) -> String {
        match &self.kind {
            JobKind::Start { request } => request.name.to_string(),
            JobKind::Expand { expansion } => expansion.id(),
            JobKind::Report { report } => report.id(),
            JobKind::Watch { watch } => watch.id(),
            JobKind::Follow { follow } => follow.id(),
            JobKind::Release { release } => release.id(),
            JobKind::Unpark { unpark } => unpark.id(),
        }
    }

    /// Jobs of one group run one at a time, in the order they were sent.
    pub fn group(&self) -> Option<String> {
        match &self.kind {
            JobKind::Start { request } => request.group.clone(),
            JobKind::Expand { expansion } => Some(expansion.group()),
            JobKind::Report { report } => Some(report.group()),
            JobKind::Unpark { unpark } => Some(unpark.group.clone()),
            JobKind::Watch { .. } | JobKind::Follow { .. } | JobKind::Release { .. } => None,
        }
    }

    /// The message body: the current wire version.
    pub fn to_body(&self) -> String {
        wire::write(self)
    }

    /// Reads a message body of this release's version or an earlier one.
    pub fn read(body: &str) -> Read {
        wire::read(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job read back from the queue must be the job that was written, input bytes
    /// included, and its wire form must not change by accident.
    #[test]
    fn jobs_round_trip_through_their_json() {
        let body = r#"{"v":1,"type":"start","request":{"pipeline":"deploy","name":"deploy-ci-0123456-0123456789abcdef0123","group":"deploy/ci","environment":"ci","action":"deploy","input":"{\"environment\":\"ci\",\"n\":1.0}","origin":{"source":"github","delivery":"d","repository":"acme/api","git_ref":"refs/heads/main","commit":"0123456789abcdef0123456789abcdef01234567"}}}"#;
        let Read::Job(job) = Job::read(body) else {
            panic!("not read");
        };
        assert_eq!(job.id(), "deploy-ci-0123456-0123456789abcdef0123");
        assert_eq!(job.group().as_deref(), Some("deploy/ci"));
        let JobKind::Start { request } = &job.kind else {
            panic!("a start job");
        };
        assert_eq!(request.input.as_str(), r#"{"environment":"ci","n":1.0}"#);
        assert_eq!(job.to_body(), body);
    }

    #[test]
    fn follows_round_trip_through_their_json_and_name_their_look() {
        let body = r#"{"v":1,"type":"follow","follow":{"job_id":"11111111-2222-3333-4444-555555555555","pipeline":"deploy","execution":"deploy-ci-0123456-0123456789abcdef0123","taken_ms":1700000000000,"since_ms":1699999000000,"look":2,"not_before_ms":1700000004000}}"#;
        let Read::Job(job) = Job::read(body) else {
            panic!("not read");
        };
        assert_eq!(
            job.id(),
            "follow-11111111-2222-3333-4444-555555555555-1700000000000-2"
        );
        assert_eq!(job.group(), None, "a follow waits behind nothing");
        assert_eq!(job.to_body(), body);
        // A follow of an earlier release, without since_ms: its action execution began
        // when it was taken.
        let earlier = body.replace("\"since_ms\":1699999000000,", "");
        let Read::Job(old) = Job::read(&earlier) else {
            panic!("not read");
        };
        let JobKind::Follow { follow } = &old.kind else {
            panic!("a follow");
        };
        assert_eq!(follow.since_ms, follow.taken_ms);
        let broken = body.replace("deploy-ci-0123456-0123456789abcdef0123", "not a name!");
        assert!(matches!(Job::read(&broken), Read::Invalid(_)));
    }

    #[test]
    fn expansions_round_trip_through_their_json() {
        let body = r#"{"v":1,"type":"expand","expansion":{"source":"codecommit","delivery":"d","occurrence":"k","repository":"us-east-1/demo","git_ref":"refs/heads/main","before":"0123456789abcdef0123456789abcdef01234567","after":"1123456789abcdef0123456789abcdef01234567"}}"#;
        let Read::Job(job) = Job::read(body) else {
            panic!("not read");
        };
        assert!(job.id().starts_with("expand-"));
        assert_eq!(
            job.group().as_deref(),
            Some("expand/us-east-1/demo/refs/heads/main")
        );
        assert_eq!(job.to_body(), body);
    }

    #[test]
    fn reports_watches_and_targeted_starts_round_trip_through_their_json() {
        let target = r#"{"repository":"acme/api","commit":"0123456789abcdef0123456789abcdef01234567","context":"gitdispatch/deploy/pr-42","deployment":{"environment":"pr-42","url":"https://pr-42.example.com"}}"#;
        let bodies = [
            format!(
                r#"{{"v":1,"type":"report","report":{{"target":{target},"execution":"deploy-pr-42-0123456-0123456789abcdef0123","action":"deploy","stage":"started","state":"pending","description":"Started","details_url":"https://ci.example.com/x"}}}}"#
            ),
            format!(
                r#"{{"v":1,"type":"report","report":{{"target":{target},"execution":null,"action":"deploy","stage":"ended","state":"success","description":"Skipped: paths"}}}}"#
            ),
            format!(
                r#"{{"v":1,"type":"watch","watch":{{"pipeline":"deploy","execution":"deploy-pr-42-0123456-0123456789abcdef0123","action":"teardown","target":{target},"look":3,"not_before_ms":1700000000000}}}}"#
            ),
            format!(
                r#"{{"v":1,"type":"start","request":{{"pipeline":"deploy","name":"deploy-ci-0123456-0123456789abcdef0123","group":null,"environment":"ci","action":"deploy","input":"{{}}","origin":{{"source":"github","delivery":"d","repository":"acme/api","git_ref":"refs/heads/main","commit":"0123456789abcdef0123456789abcdef01234567"}},"report":{target}}}}}"#
            ),
        ];
        for body in &bodies {
            let Read::Job(job) = Job::read(body) else {
                panic!("not read: {body}");
            };
            assert_eq!(&job.to_body(), body);
        }
        let Read::Job(job) = Job::read(&bodies[2]) else {
            unreachable!()
        };
        assert_eq!(
            job.id(),
            "watch-deploy-pr-42-0123456-0123456789abcdef0123-3"
        );
        assert_eq!(job.group(), None, "watches wait behind nothing");
        let Read::Job(job) = Job::read(&bodies[0]) else {
            unreachable!()
        };
        assert!(job.id().starts_with("report-"));
        assert_eq!(
            job.group().as_deref(),
            Some(
                "report/acme/api/0123456789abcdef0123456789abcdef01234567/gitdispatch/deploy/pr-42"
            )
        );
        assert!(matches!(
            Job::read(&bodies[0].replace("\"started\"", "\"later\"")),
            Read::Invalid(_)
        ));
    }

    #[test]
    fn unparks_round_trip_through_their_json_in_their_lane_s_group() {
        let body = r#"{"v":1,"type":"unpark","unpark":{"pipeline":"deploy","environment":"production","group":"deploy/production","fence":"f0","round":2}}"#;
        let Read::Job(job) = Job::read(body) else {
            panic!("not read");
        };
        assert_eq!(job.id(), "unpark-f0-2");
        assert_eq!(job.group().as_deref(), Some("deploy/production"));
        assert_eq!(job.to_body(), body);
    }

    #[test]
    fn bodies_are_told_apart() {
        assert!(matches!(Job::read("not json"), Read::Invalid(_)));
        assert!(matches!(
            Job::read(r#"{"v": 2, "type": "start"}"#),
            Read::Newer(_)
        ));
        assert!(matches!(
            Job::read(r#"{"v": 1, "type": "rebuild"}"#),
            Read::Newer(_)
        ));
        assert!(matches!(
            Job::read(r#"{"v": 1, "type": "expand", "expansion": {}}"#),
            Read::Invalid(_)
        ));
        assert!(matches!(
            Job::read(r#"{"v": 1, "type": "start", "request": 3}"#),
            Read::Invalid(_)
        ));
    }
}
