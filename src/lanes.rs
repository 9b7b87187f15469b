//! A lane's jobs and their states, in one place. A lane is one pipeline and
//! environment; each of its start jobs moves, only forward, from waiting to started and
//! ended, or from waiting to superseded or rejected ([`JobState::may_become`]). The
//! admission step records a job waiting; the worker records it started, ended or
//! rejected, and asks here whether it may be skipped for a newer one (supersede) and
//! whether its lane is held: paused by an operator, or busy with an execution that ran
//! past what a queue may hold its job. A held lane's jobs are parked in the journal,
//! off the queue, and put back in queue order when the hold ends, however long it
//! lasts. The journal keeps what is recorded here; nothing else writes a lane job's
//! state.
//!
//! Invariant: supersede skips a job only when (a) its execution has not started (the
//! journal has no start of it and the executor knows no execution of its name), and
//! (b) a newer job waits in its lane that deploys the same project from the same ref,
//! queued after it ([`supersedes`]). Every other job runs. A replay, a manual run and a
//! CodePipeline job neither supersede nor are superseded.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::Chain;
use crate::event::Source;
use crate::execution::{Action, ExecutionRequest};
use crate::executor::{Executor, ExecutorError};
use crate::journal::{DeliveryRecord, Hold, JobState, Journal, JournalError, Lane, LaneJob};

/// How often the pauses are read again: a pause or a resume takes effect within this.
pub const PAUSE_REFRESH: Duration = Duration::from_secs(1);

/// How many supersedes deep [`Lanes::carried_by`] follows (a job superseded by one that
/// was superseded in turn, and so on); far more than a lane ever stacks.
const MAX_CARRY_DEPTH: usize = 64;

/// Whether `newer` may be started in place of `older` (rule (b) of the invariant): both
/// of one lane, `newer` queued after `older` and still waiting, both deploys pushed by a
/// source to the same repository and ref, neither a replay.
pub fn supersedes(newer: &LaneJob, older: &LaneJob) -> bool {
    let pushed = |job: &LaneJob| {
        job.replay_of.is_none()
            && job.action == Action::Deploy.as_str()
            && (job.source == Source::Github.as_str() || job.source == Source::CodeCommit.as_str())
    };
    newer.lane == older.lane
        && newer.name != older.name
        && newer.state == JobState::Waiting
        && newer.seq > older.seq
        && pushed(newer)
        && pushed(older)
        && newer.source == older.source
        && newer.repository.eq_ignore_ascii_case(&older.repository)
        && newer.git_ref == older.git_ref
}

/// Whether `newer`, a deploy queued after `older` in their lane that ran, runs or
/// waits to, deploys over it: both deploys of the same source's repository and ref (a
/// replay counts as its original's).
pub fn overwrites(newer: &LaneJob, older: &LaneJob) -> bool {
    let pushed = |job: &LaneJob| {
        job.action == Action::Deploy.as_str()
            && (job.source == Source::Github.as_str() || job.source == Source::CodeCommit.as_str())
    };
    newer.lane == older.lane
        && newer.name != older.name
        && matches!(
            newer.state,
            JobState::Waiting | JobState::Started | JobState::Ended
        )
        && newer.seq > older.seq
        && newer.replay_of.is_none()
        && pushed(newer)
        && pushed(older)
        && newer.source == older.source
        && newer.repository.eq_ignore_ascii_case(&older.repository)
        && newer.git_ref == older.git_ref
}

/// What the configuration says of lanes; a reload replaces it.
#[derive(Debug, Clone, Default)]
pub struct LaneRules {
    /// The pipelines with `supersede = true`.
    pub supersede: HashSet<String>,
    /// Each pipeline's projects' skip flags (`skip_flag`): the input keys set `true`
    /// when an event leaves that project alone.
    pub skip_flags: HashMap<String, Vec<String>>,
}

impl LaneRules {
    pub fn from_config(config: &crate::config::Config) -> LaneRules {
        LaneRules {
            supersede: config
                .pipelines
                .iter()
                .filter(|pipeline| pipeline.supersede)
                .map(|pipeline| pipeline.name.clone())
                .collect(),
            skip_flags: config
                .pipelines
                .iter()
                .map(|pipeline| {
                    (
                        pipeline.name.clone(),
                        pipeline
                            .projects
                            .iter()
                            .filter_map(|project| project.skip_flag.clone())
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    /// Whether `newer` deploys every project `older` deploys (both of one pipeline): it
    /// sets none of the pipeline's skip flags that `older` leaves unset. A pipeline
    /// without skip flags deploys all its projects every time.
    pub fn deploys_all_of(&self, newer: &ExecutionRequest, older: &ExecutionRequest) -> bool {
        let Some(flags) = self.skip_flags.get(&older.pipeline) else {
            return true;
        };
        let input = |request: &ExecutionRequest| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(
                request.input.as_str(),
            )
            .unwrap_or_default()
        };
        let (newer, older) = (input(newer), input(older));
        let skips = |input: &serde_json::Map<String, serde_json::Value>, flag: &String| {
            input.get(flag) == Some(&serde_json::Value::Bool(true))
        };
        flags
            .iter()
            .all(|flag| !skips(&newer, flag) || skips(&older, flag))
    }
}

/// The owner of lane jobs' states: the journal they are kept in. The rules it applies
/// (which pipelines supersede) are the runtime's: a reload replaces them.
pub struct Lanes {
    journal: Arc<dyn Journal>,
    /// The lanes held (paused, or busy with a long execution) when last read, and when
    /// that was.
    held: Mutex<(Option<Instant>, HashSet<Lane>)>,
}

impl Lanes {
    pub fn new(journal: Arc<dyn Journal>) -> Lanes {
        Lanes {
            journal,
            held: Mutex::new((None, HashSet::new())),
        }
    }

    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.journal
    }

    /// Records jobs just queued as waiting (one on record keeps what it says), with
    /// the delivery that queued them, in one write.
    pub async fn admitted(
        &self,
        delivery: Option<&DeliveryRecord>,
        jobs: &[LaneJob],
    ) -> Result<(), JournalError> {
        match delivery {
            Some(record) => self.journal.record_delivery(record, jobs).await,
            None if jobs.is_empty() => Ok(()),
            None => self.journal.queued(jobs).await,
        }
    }

    /// The job's execution was started (or found started); `sent_at_ms`, when the
    /// queue took the job, places it in its lane should it have no record.
    pub async fn started(&self, request: &ExecutionRequest, sent_at_ms: Option<i64>) {
        let job = LaneJob::received(request, sent_at_ms);
        self.advance(&job, JobState::Started, None).await;
    }

    /// The job's execution ended, as `status` says.
    pub async fn ended(&self, request: &ExecutionRequest, status: &str) {
        self.mark(request, JobState::Ended, Some(status)).await;
    }

    /// The job's start could not succeed and was dead-lettered.
    pub async fn rejected(&self, request: &ExecutionRequest, reason: &str) {
        let reason = crate::text::one_line(reason, 200);
        self.mark(request, JobState::Rejected, Some(&reason)).await;
    }

    /// Moves a job on; a journal that cannot be written is logged (it costs the views
    /// and supersede, which then starts the job: never a start).
    async fn mark(&self, request: &ExecutionRequest, state: JobState, status: Option<&str>) {
        self.advance(&LaneJob::queued(request, 0, None), state, status)
            .await;
    }

    async fn advance(&self, job: &LaneJob, state: JobState, status: Option<&str>) {
        if let Err(error) = self.journal.advance(job, state, status).await {
            tracing::warn!(error = %Chain(&error), state = state.as_str(), "Could not record a job's state in the journal.");
        }
    }

    /// With `supersede = true` on the request's serial pipeline (as `rules` say): the newer waiting job
    /// that carries this one, when the invariant lets this one be skipped; it is then
    /// recorded superseded. `None` means: start it. Whatever cannot be known (the
    /// journal or the executor cannot be asked) starts it.
    pub async fn supersede(
        &self,
        rules: &LaneRules,
        request: &ExecutionRequest,
        executor: &dyn Executor,
    ) -> Option<LaneJob> {
        if request.group.is_none() || !rules.supersede.contains(&request.pipeline) {
            return None;
        }
        let lookup = async {
            let Some(me) = self.journal.job(request.name.as_str()).await? else {
                return Ok(None);
            };
            if me.state != JobState::Waiting {
                return Ok(None);
            }
            let candidates: Vec<LaneJob> = self
                .journal
                .lane_jobs(Some(&me.lane))
                .await?
                .into_iter()
                .filter(|newer| supersedes(newer, &me))
                .collect();
            self.newest_covering(rules, candidates, request).await
        };
        self.skip_for(request, lookup.await, executor).await
    }

    /// A replay of a serial lane's deploy that a newer deploy of the same projects and
    /// ref, queued after the replay's original, ran over before the replay's turn
    /// (started or ended): skipped, recorded superseded by it, so that the lane never
    /// ends on the older commit. Replays are planned without such a deploy (the
    /// console leaves them out); this catches one the journal did not know of then
    /// (its record lost in a crash before it was written, recorded when it started).
    /// `None` means: start it; so does whatever cannot be known.
    pub async fn overtaken_replay(
        &self,
        rules: &LaneRules,
        request: &ExecutionRequest,
        executor: &dyn Executor,
    ) -> Option<LaneJob> {
        // Only a serial lane's.
        request.group.as_ref()?;
        let lookup = async {
            let Some(me) = self.journal.job(request.name.as_str()).await? else {
                return Ok(None);
            };
            let (JobState::Waiting, Some(original)) = (me.state, me.replay_of.as_deref()) else {
                return Ok(None);
            };
            let Some(original) = self.journal.job(original).await? else {
                return Ok(None);
            };
            let jobs = self.journal.lane_jobs(Some(&me.lane)).await?;
            // A newer deploy that is replayed too (a replay of it waits, and runs after
            // this one) leaves the lane on itself: this replay runs.
            let replayed: HashSet<&str> = jobs
                .iter()
                .filter(|job| job.name != me.name && job.state == JobState::Waiting)
                .filter_map(|job| job.replay_of.as_deref())
                .collect();
            let ran: Vec<LaneJob> = jobs
                .iter()
                .filter(|newer| {
                    newer.name != me.name
                        && matches!(newer.state, JobState::Started | JobState::Ended)
                        && !replayed.contains(newer.name.as_str())
                        && overwrites(newer, &original)
                })
                .cloned()
                .collect();
            self.newest_covering(rules, ran, request).await
        };
        self.skip_for(request, lookup.await, executor).await
    }

    /// The newest of `candidates` that deploys every project `request` deploys (a
    /// monorepo's pipeline skips the projects a commit's paths leave alone), each read
    /// whole from the journal.
    async fn newest_covering(
        &self,
        rules: &LaneRules,
        mut candidates: Vec<LaneJob>,
        request: &ExecutionRequest,
    ) -> Result<Option<LaneJob>, JournalError> {
        candidates.sort_by_key(|newer| std::cmp::Reverse(newer.seq));
        for newer in candidates {
            let covers = self
                .journal
                .job(&newer.name)
                .await?
                .and_then(|whole| whole.request())
                .is_some_and(|carrier| rules.deploys_all_of(&carrier, request));
            if covers {
                return Ok(Some(newer));
            }
        }
        Ok(None)
    }

    /// Records `request` superseded by `newer`, the job found to carry it, and returns
    /// it, unless its execution exists (a job taken back after a restart may have
    /// started before the journal heard of it: only an execution the executor does not
    /// know may be skipped), or that cannot be told, or the journal could not be read
    /// (not knowing must never keep a commit from deploying).
    async fn skip_for(
        &self,
        request: &ExecutionRequest,
        newer: Result<Option<LaneJob>, JournalError>,
        executor: &dyn Executor,
    ) -> Option<LaneJob> {
        let newer = match newer {
            Ok(newer) => newer?,
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not read the lane's jobs; starting this one.");
                return None;
            }
        };
        match executor.describe(&request.pipeline, &request.name).await {
            Err(ExecutorError::NotFound { .. }) => {}
            Ok(_) => {
                tracing::info!(
                    "A newer job of the lane carries this one, but this one's execution exists: it runs."
                );
                return None;
            }
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not tell whether this job's execution exists; starting it rather than skipping it.");
                return None;
            }
        }
        self.mark(request, JobState::Superseded, Some(&newer.name))
            .await;
        Some(newer)
    }

    /// The jobs `name` carries: those superseded by it, and by those, and so on, each
    /// read whole (with its body), oldest first.
    pub async fn carried_by(&self, lane: &Lane, name: &str) -> Result<Vec<LaneJob>, JournalError> {
        let jobs = self.journal.lane_jobs(Some(lane)).await?;
        let mut carriers = vec![name.to_string()];
        let mut carried: Vec<&LaneJob> = Vec::new();
        for _ in 0..MAX_CARRY_DEPTH {
            let found: Vec<&LaneJob> = jobs
                .iter()
                .filter(|job| {
                    job.state == JobState::Superseded
                        && job
                            .status
                            .as_ref()
                            .is_some_and(|carrier| carriers.contains(carrier))
                        && !carried.iter().any(|known| known.name == job.name)
                })
                .collect();
            if found.is_empty() {
                break;
            }
            carriers = found.iter().map(|job| job.name.clone()).collect();
            carried.extend(found);
        }
        carried.sort_by_key(|job| job.seq);
        let mut whole = Vec::with_capacity(carried.len());
        for job in carried {
            if let Some(job) = self.journal.job(&job.name).await? {
                whole.push(job);
            }
        }
        Ok(whole)
    }

    /// The lanes held (paused by an operator, or busy with an execution that ran past
    /// what a queue may hold) as of at most PAUSE_REFRESH ago; nearly always none. A
    /// journal that cannot be read keeps what was read last.
    pub async fn held(&self) -> HashSet<Lane> {
        let mut held = self.held.lock().await;
        if held.0.is_none_or(|at| at.elapsed() >= PAUSE_REFRESH) {
            match self.journal.holds().await {
                Ok(holds) => {
                    held.1 = holds
                        .into_iter()
                        .filter(Hold::holds)
                        .map(|hold| hold.lane)
                        .collect();
                }
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), "Could not read the held lanes; keeping what was read last.");
                }
            }
            held.0 = Some(Instant::now());
        }
        held.1.clone()
    }

    /// Whether the request's lane is held now: for a serial lane read from the journal
    /// at once (its running execution may have just made it busy, and the next job must
    /// not start beside it), and held until its parked jobs are all put back (the next
    /// job must not overtake them); for another from what was read last.
    pub async fn is_held(&self, request: &ExecutionRequest) -> Result<bool, JournalError> {
        let lane = Lane::of(request);
        if request.group.is_some() {
            return Ok(self.journal.hold(&lane).await?.is_some());
        }
        Ok(self.held().await.contains(&lane))
    }

    /// Parks a start job of a held lane in the journal, to be put back in queue order
    /// when the hold ends; what became of it.
    pub async fn park(
        &self,
        request: &ExecutionRequest,
        sent_at_ms: Option<i64>,
    ) -> Result<Park, JournalError> {
        // The admission step records a job just after it is queued; a worker may
        // receive it before. Its place in the lane (the order it is put back in, and
        // what it may supersede) is that record's: wait a little for it rather than
        // record a place of our own. A serial lane's job whose record has not come
        // (late, or lost in a crash) is not parked: it is held in flight, and so is
        // the rest of its ordering group behind it, until it can be parked or the
        // lane is not held; a place of its own could put it behind newer commits.
        let mut recorded = false;
        for _ in 0..RECORD_WAIT_TRIES {
            if self.journal.job(request.name.as_str()).await?.is_some() {
                recorded = true;
                break;
            }
            tokio::time::sleep(RECORD_WAIT).await;
        }
        let ordered = request.group.is_some();
        if !recorded && ordered {
            return Ok(Park::Hold("its record in its lane has not come yet"));
        }
        let job = LaneJob::received(request, sent_at_ms);
        if self.journal.park(&job, ordered).await? {
            return Ok(Park::Parked);
        }
        // Not parked: the lane is not held any more, or the job was put back since
        // the hold began (it runs), or the lane keeps as many parked as it may (it
        // waits on the queue).
        let full = self.journal.hold(&job.lane).await?.is_some_and(|hold| {
            (hold.holds() || ordered) && hold.parked >= crate::journal::MAX_PARKED
        });
        Ok(if full {
            Park::Hold("its lane keeps as many parked jobs as it may")
        } else {
            Park::Run
        })
    }
}

/// What became of a job of a held lane that the worker asked to park.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Park {
    /// Parked in the journal: acknowledge it.
    Parked,
    /// Its lane is not held any more, or it was put back since the hold began: run it.
    Run,
    /// Neither parked nor to run, for the reason given: hold it in flight.
    Hold(&'static str),
}

/// How long a job waits, at most, for the admission step's record of it before it is
/// parked under a record of its own.
const RECORD_WAIT: Duration = Duration::from_millis(100);
const RECORD_WAIT_TRIES: usize = 30;

/// The most jobs put back in one round of [`crate::admission::Admission::release`].
pub const RELEASE_BATCH: usize = 100;

/// The record of each request queued, waiting, in queue order.
pub fn waiting(requests: &[(ExecutionRequest, Option<String>)]) -> Vec<LaneJob> {
    requests
        .iter()
        .enumerate()
        .map(|(index, (request, replay_of))| LaneJob::queued(request, index, replay_of.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, seq: i64, repository: &str, git_ref: &str) -> LaneJob {
        LaneJob {
            name: name.into(),
            lane: Lane {
                pipeline: "deploy".into(),
                environment: "production".into(),
            },
            source: "github".into(),
            action: "deploy".into(),
            repository: repository.into(),
            git_ref: git_ref.into(),
            commit: "0".repeat(40),
            seq,
            state: JobState::Waiting,
            status: None,
            queued_at_ms: 0,
            updated_at_ms: 0,
            replay_of: None,
            parked: false,
            released_at_ms: None,
            job: String::new(),
        }
    }

    #[test]
    fn only_a_newer_push_of_the_same_repository_and_ref_supersedes() {
        let older = job("a", 1, "acme/api", "refs/heads/main");
        let newer = job("b", 2, "Acme/API", "refs/heads/main");
        assert!(supersedes(&newer, &older));
        assert!(!supersedes(&older, &newer), "never an older one");
        assert!(
            !supersedes(&job("b", 2, "acme/web", "refs/heads/main"), &older),
            "another repository of the pipeline deploys another project"
        );
        assert!(
            !supersedes(&job("b", 2, "acme/api", "refs/heads/hotfix/x"), &older),
            "another ref"
        );
        let mut started = newer.clone();
        started.state = JobState::Started;
        assert!(!supersedes(&started, &older), "only a waiting job carries");
        let mut replay = newer.clone();
        replay.replay_of = Some("x".into());
        assert!(!supersedes(&replay, &older), "a replay supersedes nothing");
        let mut replayed = older.clone();
        replayed.replay_of = Some("x".into());
        assert!(!supersedes(&newer, &replayed), "nor is superseded");
        let mut manual = newer.clone();
        manual.source = "manual".into();
        assert!(!supersedes(&manual, &older), "a manual run is its own");
        let mut manual_older = older.clone();
        manual_older.source = "manual".into();
        assert!(!supersedes(&newer, &manual_older));
        let mut teardown = newer.clone();
        teardown.action = "teardown".into();
        assert!(!supersedes(&teardown, &older), "a teardown deploys nothing");
        let mut other_lane = newer.clone();
        other_lane.lane.environment = "staging".into();
        assert!(!supersedes(&other_lane, &older));
        let mut unknown = older.clone();
        unknown.source = String::new();
        assert!(
            !supersedes(&newer, &unknown),
            "a record of an earlier release says too little"
        );
    }

    /// Three waiting jobs of one branch on a real journal and local executor: the
    /// oldest is skipped for the newest only while no execution of it exists.
    #[tokio::test]
    async fn a_job_whose_execution_exists_is_never_superseded() {
        let directory = tempfile::tempdir().unwrap();
        let journal: Arc<dyn Journal> = Arc::new(
            crate::journal::sqlite::SqliteJournal::open(&directory.path().join("ledger.db"))
                .unwrap(),
        );
        let lanes = Lanes::new(journal.clone());
        let rules = LaneRules {
            supersede: HashSet::from(["deploy".to_string()]),
            ..LaneRules::default()
        };
        let executor = local_executor(directory.path()).await;
        let requests: Vec<ExecutionRequest> = (1..=3).map(request).collect();
        let queued: Vec<(ExecutionRequest, Option<String>)> = requests
            .iter()
            .cloned()
            .map(|request| (request, None))
            .collect();
        lanes.admitted(None, &waiting(&queued)).await.unwrap();

        // The oldest's execution was started (a worker that stopped before it
        // recorded so): it runs, whatever waits behind it.
        executor.start(&requests[0]).await.unwrap();
        assert!(
            lanes
                .supersede(&rules, &requests[0], &executor)
                .await
                .is_none()
        );
        // The next one has no execution: the newest carries it.
        let carrier = lanes
            .supersede(&rules, &requests[1], &executor)
            .await
            .unwrap();
        assert_eq!(carrier.name, requests[2].name.as_str());
        // The newest has nothing newer behind it.
        assert!(
            lanes
                .supersede(&rules, &requests[2], &executor)
                .await
                .is_none()
        );
        let lane = Lane::of(&requests[0]);
        let carried = lanes
            .carried_by(&lane, requests[2].name.as_str())
            .await
            .unwrap();
        assert_eq!(carried.len(), 1);
        assert_eq!(carried[0].request(), Some(requests[1].clone()));
    }

    /// A replay planned while the journal did not know of a newer deploy of its ref
    /// (its record lost in a crash) is not run once that deploy has run: recorded when
    /// it started, it is found, and the replay is skipped, carried by it. A replay whose
    /// newer deploy has not run, or is of another ref, runs.
    #[tokio::test]
    async fn a_replay_is_not_run_over_a_newer_deploy_that_ran_since_its_original() {
        let directory = tempfile::tempdir().unwrap();
        let journal: Arc<dyn Journal> = Arc::new(
            crate::journal::sqlite::SqliteJournal::open(&directory.path().join("ledger.db"))
                .unwrap(),
        );
        let lanes = Lanes::new(journal.clone());
        let rules = LaneRules::default();
        let executor = local_executor(directory.path()).await;
        // The original ran and ended.
        let original = request(1);
        lanes
            .admitted(None, &waiting(&[(original.clone(), None)]))
            .await
            .unwrap();
        lanes.started(&original, None).await;
        lanes.ended(&original, "SUCCEEDED").await;
        // Its replay is queued; a newer commit of the same ref was queued before it,
        // but its record never reached the journal.
        let mut replay = request(1);
        replay.name = crate::execution::name::ExecutionName::parse(
            "deploy-production-r1-00000000000000000001",
        )
        .unwrap();
        lanes
            .admitted(
                None,
                &waiting(&[(replay.clone(), Some(original.name.to_string()))]),
            )
            .await
            .unwrap();
        let newer = request(2);
        // While the newer deploy has not run, the replay runs.
        assert!(
            lanes
                .overtaken_replay(&rules, &replay, &executor)
                .await
                .is_none()
        );
        // The newer deploy starts (and is recorded then): the replay is skipped,
        // unless the newer one is replayed too (its replay runs after this one).
        lanes.started(&newer, None).await;
        let mut newer_replay = request(2);
        newer_replay.name = crate::execution::name::ExecutionName::parse(
            "deploy-production-r1-00000000000000000002",
        )
        .unwrap();
        lanes
            .admitted(
                None,
                &waiting(&[(newer_replay.clone(), Some(newer.name.to_string()))]),
            )
            .await
            .unwrap();
        assert!(
            lanes
                .overtaken_replay(&rules, &replay, &executor)
                .await
                .is_none(),
            "replayed together, both run"
        );
        lanes.started(&newer_replay, None).await;
        lanes.ended(&newer_replay, "SUCCEEDED").await;
        let carrier = lanes
            .overtaken_replay(&rules, &replay, &executor)
            .await
            .expect("the replay is overtaken");
        assert_eq!(carrier.name, newer.name.as_str());
        let skipped = journal.job(replay.name.as_str()).await.unwrap().unwrap();
        assert_eq!(skipped.state, JobState::Superseded);
        assert_eq!(skipped.status.as_deref(), Some(newer.name.as_str()));

        // Another ref's newer deploy does not overtake a replay.
        let mut other = request(3);
        other.origin.git_ref = crate::event::RefName::parse("refs/heads/other").unwrap();
        other.name = crate::execution::name::ExecutionName::parse(
            "deploy-production-r1-00000000000000000003",
        )
        .unwrap();
        let mut other_original = request(4);
        other_original.origin.git_ref = crate::event::RefName::parse("refs/heads/other").unwrap();
        lanes
            .admitted(None, &waiting(&[(other_original.clone(), None)]))
            .await
            .unwrap();
        lanes.ended(&other_original, "SUCCEEDED").await;
        lanes
            .admitted(
                None,
                &waiting(&[(other.clone(), Some(other_original.name.to_string()))]),
            )
            .await
            .unwrap();
        // A newer deploy of main ran since.
        lanes.started(&request(5), None).await;
        assert!(
            lanes
                .overtaken_replay(&rules, &other, &executor)
                .await
                .is_none()
        );
    }

    /// A serial lane's job whose admission record has not come (late, or lost in a
    /// crash right after its delivery's answer) is not parked under a place of its
    /// own, which could be behind newer commits: parking it fails (the worker holds it
    /// in flight, its group behind it) until the record comes; then it is parked at
    /// the record's place, in commit order.
    #[tokio::test]
    async fn a_job_without_a_record_is_parked_only_at_its_recorded_place() {
        let directory = tempfile::tempdir().unwrap();
        let journal: Arc<dyn Journal> = Arc::new(
            crate::journal::sqlite::SqliteJournal::open(&directory.path().join("ledger.db"))
                .unwrap(),
        );
        let lanes = Lanes::new(journal.clone());
        let (first, late, last) = (request(1), request(2), request(3));
        let lane = Lane::of(&first);
        journal.pause(&lane, "release freeze").await.unwrap();
        lanes
            .admitted(None, &waiting(&[(first.clone(), None)]))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let late_record = waiting(&[(late.clone(), None)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        lanes
            .admitted(None, &waiting(&[(last.clone(), None)]))
            .await
            .unwrap();
        assert_eq!(lanes.park(&first, None).await.unwrap(), Park::Parked);
        assert_eq!(lanes.park(&last, None).await.unwrap(), Park::Parked);
        assert!(
            matches!(
                lanes
                    .park(&late, Some(crate::clock::now_ms()))
                    .await
                    .unwrap(),
                Park::Hold(_)
            ),
            "parked under a place of its own"
        );
        lanes.admitted(None, &late_record).await.unwrap();
        assert_eq!(
            lanes
                .park(&late, Some(crate::clock::now_ms()))
                .await
                .unwrap(),
            Park::Parked
        );
        let parked: Vec<String> = journal
            .parked(&lane, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|job| job.name)
            .collect();
        let in_order: Vec<String> = [&first, &late, &last]
            .iter()
            .map(|request| request.name.to_string())
            .collect();
        assert_eq!(parked, in_order);
    }

    /// A paused lane that keeps as many parked jobs as it may: the next one is held
    /// on the queue, never run (it was run before: "not parked" read as "not held").
    #[tokio::test]
    async fn a_job_beyond_what_a_held_lane_may_park_is_held_not_run() {
        let directory = tempfile::tempdir().unwrap();
        let journal: Arc<dyn Journal> = Arc::new(
            crate::journal::sqlite::SqliteJournal::open(&directory.path().join("ledger.db"))
                .unwrap(),
        );
        let lanes = Lanes::new(journal.clone());
        let lane = Lane::of(&request(1));
        journal.pause(&lane, "release freeze").await.unwrap();
        let numbered = |n: u64| {
            let mut job = request(1);
            job.name =
                crate::execution::name::ExecutionName::parse(&format!("deploy-production-{n:020}"))
                    .unwrap();
            job
        };
        let all: Vec<(ExecutionRequest, Option<String>)> = (0..=crate::journal::MAX_PARKED)
            .map(|n| (numbered(n), None))
            .collect();
        lanes.admitted(None, &waiting(&all)).await.unwrap();
        for (job, _) in &all[..crate::journal::MAX_PARKED as usize] {
            assert!(
                journal
                    .park(&LaneJob::received(job, None), true)
                    .await
                    .unwrap()
            );
        }
        let (beyond, _) = all.last().unwrap();
        assert!(matches!(
            lanes.park(beyond, None).await.unwrap(),
            Park::Hold(_)
        ));
        // Resumed, its parked jobs go back first: it does not overtake them.
        journal.resume(&lane).await.unwrap();
        assert!(matches!(
            lanes.park(beyond, None).await.unwrap(),
            Park::Hold(_)
        ));
    }

    /// A local executor of the `deploy` pipeline, its record in `directory`.
    async fn local_executor(directory: &std::path::Path) -> crate::executor::local::LocalExecutor {
        use crate::executor::local::{LocalExecutor, LocalPipeline, LocalSettings};
        LocalExecutor::open(LocalSettings {
            path: directory.join("executions.db"),
            log_dir: directory.join("log"),
            pipelines: std::collections::HashMap::from([(
                "deploy".to_string(),
                LocalPipeline {
                    command: vec!["true".into()],
                    timeout: Duration::from_secs(10),
                },
            )]),
            max_attempts: 3,
            details_url: None,
        })
        .await
        .unwrap()
    }

    fn request(n: u8) -> ExecutionRequest {
        use crate::event::{CommitSha, DeliveryId, RefName};
        use crate::execution::name::ExecutionName;
        use crate::execution::{Input, Origin};
        ExecutionRequest {
            pipeline: "deploy".into(),
            name: ExecutionName::parse(&format!("deploy-production-{n:020}")).unwrap(),
            group: Some("deploy/production".into()),
            environment: "production".into(),
            action: Action::Deploy,
            input: Input::from_json("{}".into()).unwrap(),
            origin: Origin {
                source: Source::Github,
                delivery: DeliveryId::parse("d").unwrap(),
                repository: "acme/api".into(),
                git_ref: RefName::parse("refs/heads/main").unwrap(),
                commit: CommitSha::parse(&format!("{n:040x}")).unwrap(),
            },
            report: None,
        }
    }

    #[test]
    fn a_newer_commit_carries_an_older_one_only_if_it_deploys_its_projects() {
        let with_input = |n: u8, input: &str| {
            let mut request = request(n);
            request.input = crate::execution::Input::from_json(input.into()).unwrap();
            request
        };
        let api_only = with_input(1, r#"{"skip_api":false,"skip_web":true}"#);
        let web_only = with_input(2, r#"{"skip_api":true,"skip_web":false}"#);
        let both = with_input(3, r#"{"skip_api":false,"skip_web":false}"#);
        let web_again = with_input(4, r#"{"skip_web":false,"skip_api":true}"#);
        let rules = LaneRules {
            supersede: HashSet::from(["deploy".to_string()]),
            skip_flags: HashMap::from([(
                "deploy".to_string(),
                vec!["skip_api".to_string(), "skip_web".to_string()],
            )]),
        };
        assert!(
            !rules.deploys_all_of(&web_only, &api_only),
            "the API's change would be lost"
        );
        assert!(rules.deploys_all_of(&both, &api_only));
        assert!(rules.deploys_all_of(&both, &web_only));
        assert!(rules.deploys_all_of(&web_again, &web_only));
        assert!(!rules.deploys_all_of(&web_again, &both));
        assert!(
            LaneRules::default().deploys_all_of(&web_only, &api_only),
            "a pipeline without skip flags deploys all its projects every time"
        );
    }

    #[test]
    fn states_only_move_forward() {
        use JobState::*;
        let all = [Waiting, Started, Ended, Superseded, Rejected];
        for from in all {
            assert!(from.may_become(from), "{from:?} stays");
        }
        for to in all {
            assert!(Waiting.may_become(to));
        }
        assert!(Started.may_become(Ended));
        for to in [Waiting, Superseded, Rejected] {
            assert!(!Started.may_become(to), "started → {to:?}");
        }
        for from in [Ended, Superseded, Rejected] {
            for to in all {
                assert_eq!(from.may_become(to), from == to, "{from:?} → {to:?}");
            }
        }
    }
}
