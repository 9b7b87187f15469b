//! Reconcile: planning what GitHub never delivered. GitHub fires no webhook for a push
//! of more than three tags or a payload over 25 MB, never redelivers by itself, and
//! keeps deliveries three days; a push lost that way is found here: each watched
//! branch's head on GitHub is compared with the last commit planned for it (the
//! ledger), and the commits between are planned as a push would have planned them.
//!
//! Invariant: reconcile never plans a commit that a delivery planned for the same
//! pipeline and environment, whichever comes first and however many instances run:
//! both claim their commits in the ledger first, conditionally. A branch seen for the
//! first time is only recorded (its history is not deployed), and a head committed
//! within `grace_secs` is left to its webhook, which is likely on its way.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use globset::GlobMatcher;
use serde::Deserialize;

use crate::admission::{Admission, AdmissionError, Head, Intake};
use crate::config::ReconcileConfig;
use crate::error::Chain;
use crate::event::{CommitSha, DeliveryId, Event, EventKind, Occurrence, Push, RefName, Source};
use crate::execution::name::ExecutionName;
use crate::github::{CallError, GithubClient};
use crate::ledger::{Claimant, Ledger, LedgerError, claims_of};
use crate::plan::PlanError;
use crate::source::github::history::GithubHistory;
use crate::source::{CommitHistory, HistoryError, WalkEnd};

/// Branches per page (GitHub's maximum).
const PER_PAGE: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("GitHub refused")]
    Github(#[from] CallError),
    #[error("cannot read a branch's commits")]
    History(#[from] HistoryError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// What reconcile found on one branch, or did for one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A branch seen for the first time: its head is recorded, nothing planned.
    Baseline,
    /// A head committed within the grace period: left to its webhook for now.
    Waiting,
    /// An execution planned for a commit GitHub never delivered.
    Planned(ExecutionName),
    /// What a dry run would plan.
    WouldPlan(ExecutionName),
    /// A delivery planned the commit already.
    PlannedByDelivery(ExecutionName),
}

/// One line of what reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub repository: String,
    pub git_ref: String,
    pub commit: CommitSha,
    /// `pipeline/environment`, for an execution.
    pub lane: Option<String>,
    pub outcome: Outcome,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lane = self.lane.as_deref().unwrap_or_default();
        let (repository, git_ref, commit) = (&self.repository, &self.git_ref, &self.commit);
        match &self.outcome {
            Outcome::Baseline => write!(
                f,
                "recorded {repository} {git_ref} at {commit} (first seen: nothing planned)"
            ),
            Outcome::Waiting => write!(
                f,
                "waiting on {repository} {git_ref}: its head {commit} is newer than the grace period"
            ),
            Outcome::Planned(name) => {
                write!(
                    f,
                    "planned {name} for {commit} on {repository} {git_ref} ({lane})"
                )
            }
            Outcome::WouldPlan(name) => {
                write!(
                    f,
                    "would plan {name} for {commit} on {repository} {git_ref} ({lane})"
                )
            }
            Outcome::PlannedByDelivery(name) => write!(
                f,
                "already planned for {commit} on {repository} {git_ref} ({lane}) by a delivery, not as {name}"
            ),
        }
    }
}

/// What reconcile works with.
pub struct Reconciler {
    pub client: Arc<GithubClient>,
    /// The planner in force (a reload replaces it).
    pub runtime: crate::runtime::Current,
    pub ledger: Arc<dyn Ledger>,
    /// Where what reconcile plans is claimed and queued.
    pub admission: Arc<Admission>,
    pub config: ReconcileConfig,
    /// Commits of one gap read at most (`github.max_expanded_commits`).
    pub max_commits: usize,
}

#[derive(Deserialize)]
struct Branch {
    name: String,
    commit: BranchCommit,
}

#[derive(Deserialize)]
struct BranchCommit {
    sha: String,
}

#[derive(Deserialize)]
struct HeadCommit {
    commit: HeadDetail,
}

#[derive(Deserialize)]
struct HeadDetail {
    committer: Option<Committer>,
}

#[derive(Deserialize)]
struct Committer {
    date: String,
}

impl Reconciler {
    /// Reconciles every configured repository (those `only` matches, when given).
    pub async fn run(
        &self,
        only: Option<&GlobMatcher>,
        dry_run: bool,
    ) -> Result<Vec<Line>, ReconcileError> {
        let mut lines = Vec::new();
        for repository in &self.config.repositories {
            if only.is_some_and(|glob| !glob.is_match(repository)) {
                continue;
            }
            self.repository(repository, dry_run, &mut lines).await?;
        }
        Ok(lines)
    }

    async fn repository(
        &self,
        repository: &str,
        dry_run: bool,
        lines: &mut Vec<Line>,
    ) -> Result<(), ReconcileError> {
        let client = self.client.for_repository(repository).await?;
        let mut next = Some(format!("/repos/{repository}/branches?per_page={PER_PAGE}"));
        let mut branches = Vec::new();
        while let Some(page) = next.take() {
            let answer = self.client.get(&client, &page).await?;
            let listed: Vec<Branch> = answer.parse("the branches")?;
            branches.extend(listed);
            next = answer.next_page().map(|next| self.client.relative(&next));
        }
        for branch in branches {
            let (Ok(git_ref), Ok(head)) = (
                RefName::parse(&format!("refs/heads/{}", branch.name)),
                CommitSha::parse(&branch.commit.sha),
            ) else {
                continue;
            };
            let probe = push_event(
                repository,
                &git_ref,
                &head,
                &head,
                Vec::new(),
                WalkEnd::Reached,
            );
            if !self.runtime.load().planner.takes(&probe) {
                continue;
            }
            let line = |outcome, lane: Option<String>, commit: &CommitSha| Line {
                repository: repository.to_string(),
                git_ref: git_ref.to_string(),
                commit: commit.clone(),
                lane,
                outcome,
            };
            let Some(last) = self.ledger.head(repository, git_ref.as_str()).await? else {
                if !dry_run {
                    self.ledger
                        .advance(repository, git_ref.as_str(), &head)
                        .await?;
                }
                lines.push(line(Outcome::Baseline, None, &head));
                continue;
            };
            if last == head {
                continue;
            }
            if self.within_grace(&client, repository, &head).await? {
                lines.push(line(Outcome::Waiting, None, &head));
                continue;
            }
            // Plan the gap as a push from `last` to `head` would have been planned.
            let planner = self.runtime.load_full().planner.clone();
            let deferred = planner.plan(&{
                let mut event = push_event(
                    repository,
                    &git_ref,
                    &last,
                    &head,
                    Vec::new(),
                    WalkEnd::Reached,
                );
                if let EventKind::Push(push) = &mut event.kind {
                    push.commits_listed = false;
                }
                event
            })?;
            let paths = deferred
                .expansion
                .as_ref()
                .is_some_and(|expansion| expansion.paths);
            let walk = GithubHistory::new(self.client.clone())
                .walk(repository, &last, &head, self.max_commits, paths)
                .await?;
            if walk.end == WalkEnd::Bound {
                tracing::warn!(%repository, git_ref = %git_ref, "The gap has more commits than github.max_expanded_commits: only the newest are planned.");
            }
            let event = push_event(repository, &git_ref, &last, &head, walk.commits, walk.end);
            let plan = planner.plan(&event)?;
            let lane = |name: &ExecutionName| plan_lane(&plan.requests, name);
            if dry_run {
                let claims = claims_of(&plan.requests);
                let allowed = self.ledger.peek(&claims, Claimant::Reconcile).await?;
                for (claim, allowed) in claims.iter().zip(allowed) {
                    let outcome = if allowed {
                        Outcome::WouldPlan(claim.name.clone())
                    } else {
                        Outcome::PlannedByDelivery(claim.name.clone())
                    };
                    lines.push(line(outcome, lane(&claim.name), &claim.commit));
                }
                continue;
            }
            let all: Vec<(ExecutionName, CommitSha, Option<String>)> = plan
                .requests
                .iter()
                .map(|request| {
                    (
                        request.name.clone(),
                        request.origin.commit.clone(),
                        lane(&request.name),
                    )
                })
                .collect();
            // Claimed as reconcile's, queued, recorded, the head advanced; or, when
            // queueing fails, the claims given back so that the next run plans the
            // same commits.
            let intake = Intake::new(Some(Claimant::Reconcile))
                .starts(plan.requests)
                .reports(plan.reports)
                .heads([Head {
                    repository: repository.to_string(),
                    git_ref: git_ref.clone(),
                    commit: head.clone(),
                }]);
            let admitted = self.admission.admit(intake).await?;
            for (name, commit, lane) in all {
                let outcome = if admitted.refused.contains(&name) {
                    Outcome::PlannedByDelivery(name)
                } else {
                    tracing::info!(execution = %name, %repository, git_ref = %git_ref, commit = %commit, "Reconcile planned a commit GitHub never delivered.");
                    Outcome::Planned(name)
                };
                lines.push(line(outcome, lane, &commit));
            }
        }
        Ok(())
    }

    /// Whether the head was committed within the grace period.
    async fn within_grace(
        &self,
        client: &crate::github::RepositoryClient,
        repository: &str,
        head: &CommitSha,
    ) -> Result<bool, ReconcileError> {
        if self.config.grace_secs == 0 {
            return Ok(false);
        }
        let answer = self
            .client
            .get(client, &format!("/repos/{repository}/commits/{head}"))
            .await?;
        let commit: HeadCommit = answer.parse("the head commit")?;
        let Some(at) = commit
            .commit
            .committer
            .and_then(|committer| humantime::parse_rfc3339_weak(&committer.date).ok())
        else {
            return Ok(false);
        };
        let grace = Duration::from_secs(self.config.grace_secs);
        Ok(SystemTime::now()
            .duration_since(at)
            .is_ok_and(|age| age < grace)
            || at > SystemTime::now())
    }
}

fn plan_lane(
    requests: &[crate::execution::ExecutionRequest],
    name: &ExecutionName,
) -> Option<String> {
    requests
        .iter()
        .find(|request| request.name == *name)
        .map(|request| format!("{}/{}", request.pipeline, request.environment))
}

/// A push from `before` to `after` as reconcile plans it: its occurrence names the gap,
/// so that two reconcilers that saw the same gap plan the same names.
fn push_event(
    repository: &str,
    git_ref: &RefName,
    before: &CommitSha,
    after: &CommitSha,
    commits: Vec<crate::event::Commit>,
    end: WalkEnd,
) -> Event {
    Event {
        source: Source::Github,
        delivery: DeliveryId::parse("reconcile").expect("a valid delivery id"),
        occurrence: Occurrence::from_parts(&[
            "github",
            "reconcile",
            &repository.to_ascii_lowercase(),
            git_ref.as_str(),
            before.as_str(),
            after.as_str(),
        ]),
        repository: repository.to_string(),
        kind: EventKind::Push(Push {
            git_ref: git_ref.clone(),
            before: before.clone(),
            after: after.clone(),
            head_commit: commits.last().cloned(),
            commits,
            created: false,
            deleted: false,
            forced: end == WalkEnd::Unreachable,
            commits_truncated: end == WalkEnd::Bound,
            commits_listed: true,
        }),
    }
}

/// Reconciles every `interval_secs` until `shutdown`; a failure is logged and tried
/// again next time.
pub async fn periodically(reconciler: Reconciler, shutdown: tokio_util::sync::CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(reconciler.config.interval_secs));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match reconciler.run(None, false).await {
            Ok(lines) => {
                let planned = lines
                    .iter()
                    .filter(|line| matches!(line.outcome, Outcome::Planned(_)))
                    .count();
                if planned > 0 {
                    tracing::warn!(planned, "Reconcile planned commits GitHub never delivered.");
                }
            }
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "Could not reconcile; will try again.")
            }
        }
    }
}
