//! The ledger that keeps deliveries and reconcile from planning a commit twice: which
//! commit each lane (pipeline and environment) of a repository was planned for, and by
//! whom (a delivery, or reconcile), and the last commit planned for each ref. Used only
//! when `[github.reconcile]` is configured; shared by every listener and worker: a
//! SQLite file on one machine (`sqlite.rs`), a DynamoDB table on AWS (`dynamodb.rs`).
//!
//! Invariant: a commit is planned for a lane by deliveries or by reconcile, never both.
//! A delivery may claim what a delivery claimed (a redelivery, a new push of the same
//! commit); reconcile may claim only what nobody claimed, or what it claimed itself
//! under the same execution name (a second reconciler that saw the same gap). Claims
//! are conditional writes, so that this holds however many instances run.

pub mod dynamodb;
pub mod sqlite;

use async_trait::async_trait;

use crate::error::BoxError;
use crate::event::{CommitSha, Source};
use crate::execution::name::ExecutionName;
use crate::execution::{Action, ExecutionRequest};

/// Idempotency keys are forgotten after this long (a day, as payment APIs do).
pub const IDEMPOTENCY_LIFETIME_SECS: i64 = 24 * 3600;

/// Claims are forgotten after this long: a delivery of a reconciled commit can come
/// only while GitHub keeps it (3 days), and a new push of the same commit after that
/// deploys again.
pub const CLAIM_LIFETIME_SECS: i64 = 7 * 24 * 3600;

/// Who plans an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimant {
    Delivery,
    Reconcile,
}

impl Claimant {
    pub fn as_str(self) -> &'static str {
        match self {
            Claimant::Delivery => "delivery",
            Claimant::Reconcile => "reconcile",
        }
    }
}

/// One execution's claim on its lane's commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub repository: String,
    pub pipeline: String,
    pub environment: String,
    pub commit: CommitSha,
    pub name: ExecutionName,
}

impl Claim {
    /// The key the claim is held under (repositories compared whatever their case).
    pub fn key(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            self.repository.to_ascii_lowercase(),
            self.pipeline,
            self.environment,
            self.commit
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the ledger is unavailable: {message}")]
pub struct LedgerError {
    pub message: String,
    #[source]
    pub source: Option<BoxError>,
}

impl LedgerError {
    pub fn new(message: impl Into<String>, source: impl Into<BoxError>) -> LedgerError {
        LedgerError {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

#[async_trait]
pub trait Ledger: Send + Sync {
    /// Claims each commit for its execution on behalf of `by`; says, claim by claim,
    /// whether the execution may be planned.
    async fn claim(&self, claims: &[Claim], by: Claimant) -> Result<Vec<bool>, LedgerError>;

    /// Whether `by` could claim each commit now, without claiming it (a dry run).
    async fn peek(&self, claims: &[Claim], by: Claimant) -> Result<Vec<bool>, LedgerError>;

    /// Gives back claims `by` made and could not queue (those it still holds under
    /// their names), so that the commits may be planned again, by anyone.
    async fn release(&self, claims: &[Claim], by: Claimant) -> Result<(), LedgerError>;

    /// Records `digest` (of a request's body) under an idempotency `key`, unless a
    /// digest is recorded there already; returns the one recorded before, if any.
    async fn remember(&self, key: &str, digest: &str) -> Result<Option<String>, LedgerError>;

    /// The digest recorded under `key`, if any (and not expired).
    async fn recall(&self, key: &str) -> Result<Option<String>, LedgerError>;

    /// The last commit planned for a ref, if any.
    async fn head(&self, repository: &str, git_ref: &str)
    -> Result<Option<CommitSha>, LedgerError>;

    /// Records `commit` as the last planned for a ref.
    async fn advance(
        &self,
        repository: &str,
        git_ref: &str,
        commit: &CommitSha,
    ) -> Result<(), LedgerError>;
}

/// The claims a plan's requests make: deploys of GitHub branch pushes (what reconcile
/// plans too). Pull requests, tags and teardowns are never reconciled.
pub fn claims_of(requests: &[ExecutionRequest]) -> Vec<Claim> {
    requests
        .iter()
        .filter(|request| {
            request.action == Action::Deploy
                && request.origin.source == Source::Github
                && request.origin.git_ref.as_str().starts_with("refs/heads/")
        })
        .map(|request| Claim {
            repository: request.origin.repository.clone(),
            pipeline: request.pipeline.clone(),
            environment: request.environment.clone(),
            commit: request.origin.commit.clone(),
            name: request.name.clone(),
        })
        .collect()
}

/// Whether `by` may claim a commit held by `held` (claimant and name), as the
/// invariant says.
pub fn may_claim(held: Option<(Claimant, &str)>, by: Claimant, name: &ExecutionName) -> bool {
    match (held, by) {
        (None, _) => true,
        (Some((Claimant::Delivery, _)), Claimant::Delivery) => true,
        (Some((Claimant::Reconcile, held)), Claimant::Reconcile) => held == name.as_str(),
        _ => false,
    }
}

impl Claimant {
    pub fn parse(text: &str) -> Option<Claimant> {
        match text {
            "delivery" => Some(Claimant::Delivery),
            "reconcile" => Some(Claimant::Reconcile),
            _ => None,
        }
    }
}

use crate::clock::now_secs;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_and_reconcile_never_share_a_commit() {
        let name = ExecutionName::parse("build-ci-0123456-0123456789abcdef0123").unwrap();
        let other = "build-ci-0123456-ffffffffffffffffffff";
        assert!(may_claim(None, Claimant::Delivery, &name));
        assert!(may_claim(None, Claimant::Reconcile, &name));
        assert!(may_claim(
            Some((Claimant::Delivery, other)),
            Claimant::Delivery,
            &name
        ));
        assert!(!may_claim(
            Some((Claimant::Delivery, other)),
            Claimant::Reconcile,
            &name
        ));
        assert!(!may_claim(
            Some((Claimant::Reconcile, other)),
            Claimant::Delivery,
            &name
        ));
        assert!(!may_claim(
            Some((Claimant::Reconcile, other)),
            Claimant::Reconcile,
            &name
        ));
        assert!(may_claim(
            Some((Claimant::Reconcile, name.as_str())),
            Claimant::Reconcile,
            &name
        ));
    }
}
