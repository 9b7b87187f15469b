//! The ledger in a SQLite file, for one machine (any number of processes share it):
//! each claim is decided and written in one immediate transaction.

use std::path::Path;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    CLAIM_LIFETIME_SECS, Claim, Claimant, IDEMPOTENCY_LIFETIME_SECS, Ledger, LedgerError,
    may_claim, now_secs,
};
use crate::event::CommitSha;

pub struct SqliteLedger {
    connection: crate::sqlite::Shared,
}

impl SqliteLedger {
    pub fn open(path: &Path) -> Result<SqliteLedger, LedgerError> {
        let connection = crate::sqlite::open_durable(path)
            .and_then(|connection| {
                connection.execute_batch(
                    "CREATE TABLE IF NOT EXISTS claims (
                         key TEXT PRIMARY KEY,
                         claimant TEXT NOT NULL,
                         name TEXT NOT NULL,
                         at INTEGER NOT NULL
                     );
                     CREATE TABLE IF NOT EXISTS idempotency (
                         key TEXT PRIMARY KEY,
                         digest TEXT NOT NULL,
                         at INTEGER NOT NULL
                     );
                     CREATE TABLE IF NOT EXISTS heads (
                         repository TEXT NOT NULL,
                         git_ref TEXT NOT NULL,
                         sha TEXT NOT NULL,
                         at INTEGER NOT NULL,
                         PRIMARY KEY (repository, git_ref)
                     );",
                )?;
                Ok(connection)
            })
            .map_err(|error| LedgerError::new(format!("cannot open {}", path.display()), error))?;
        Ok(SqliteLedger {
            connection: crate::sqlite::Shared::new(connection),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, LedgerError> {
        self.connection
            .run(work)
            .await
            .map_err(|error| LedgerError::new("the ledger's task failed", error))?
            .map_err(|error| LedgerError::new("ledger file", error))
    }
}

#[async_trait]
impl Ledger for SqliteLedger {
    async fn claim(&self, claims: &[Claim], by: Claimant) -> Result<Vec<bool>, LedgerError> {
        let claims = claims.to_vec();
        self.with(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_secs();
            transaction.execute(
                "DELETE FROM claims WHERE at < ?1",
                [now - CLAIM_LIFETIME_SECS],
            )?;
            let mut allowed = Vec::with_capacity(claims.len());
            for claim in &claims {
                let key = claim.key();
                let held: Option<(String, String)> = transaction
                    .query_row(
                        "SELECT claimant, name FROM claims WHERE key = ?1",
                        [&key],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                let held = held
                    .as_ref()
                    .and_then(|(claimant, name)| Some((Claimant::parse(claimant)?, name.as_str())));
                let may = may_claim(held, by, &claim.name);
                if may {
                    transaction.execute(
                        "INSERT INTO claims (key, claimant, name, at) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (key) DO UPDATE SET name = ?3, at = ?4",
                        params![key, by.as_str(), claim.name.as_str(), now],
                    )?;
                }
                allowed.push(may);
            }
            transaction.commit()?;
            Ok(allowed)
        })
        .await
    }

    async fn peek(&self, claims: &[Claim], by: Claimant) -> Result<Vec<bool>, LedgerError> {
        let claims = claims.to_vec();
        self.with(move |connection| {
            let stale = now_secs() - CLAIM_LIFETIME_SECS;
            let mut allowed = Vec::with_capacity(claims.len());
            for claim in &claims {
                let held: Option<(String, String)> = connection
                    .query_row(
                        "SELECT claimant, name FROM claims WHERE key = ?1 AND at >= ?2",
                        params![claim.key(), stale],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                let held = held
                    .as_ref()
                    .and_then(|(claimant, name)| Some((Claimant::parse(claimant)?, name.as_str())));
                allowed.push(may_claim(held, by, &claim.name));
            }
            Ok(allowed)
        })
        .await
    }

    async fn release(&self, claims: &[Claim], by: Claimant) -> Result<(), LedgerError> {
        let claims = claims.to_vec();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            for claim in &claims {
                transaction.execute(
                    "DELETE FROM claims WHERE key = ?1 AND claimant = ?2 AND name = ?3",
                    params![claim.key(), by.as_str(), claim.name.as_str()],
                )?;
            }
            transaction.commit()
        })
        .await
    }

    async fn remember(&self, key: &str, digest: &str) -> Result<Option<String>, LedgerError> {
        let (key, digest) = (key.to_string(), digest.to_string());
        self.with(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_secs();
            transaction.execute(
                "DELETE FROM idempotency WHERE at < ?1",
                [now - IDEMPOTENCY_LIFETIME_SECS],
            )?;
            let known: Option<String> = transaction
                .query_row(
                    "SELECT digest FROM idempotency WHERE key = ?1",
                    [&key],
                    |row| row.get(0),
                )
                .optional()?;
            if known.is_none() {
                transaction.execute(
                    "INSERT INTO idempotency (key, digest, at) VALUES (?1, ?2, ?3)",
                    params![key, digest, now],
                )?;
            }
            transaction.commit()?;
            Ok(known)
        })
        .await
    }

    async fn recall(&self, key: &str) -> Result<Option<String>, LedgerError> {
        let key = key.to_string();
        self.with(move |connection| {
            connection
                .query_row(
                    "SELECT digest FROM idempotency WHERE key = ?1 AND at >= ?2",
                    params![key, now_secs() - IDEMPOTENCY_LIFETIME_SECS],
                    |row| row.get(0),
                )
                .optional()
        })
        .await
    }

    async fn head(
        &self,
        repository: &str,
        git_ref: &str,
    ) -> Result<Option<CommitSha>, LedgerError> {
        let (repository, git_ref) = (repository.to_ascii_lowercase(), git_ref.to_string());
        let sha: Option<String> = self
            .with(move |connection| {
                connection
                    .query_row(
                        "SELECT sha FROM heads WHERE repository = ?1 AND git_ref = ?2",
                        [&repository, &git_ref],
                        |row| row.get(0),
                    )
                    .optional()
            })
            .await?;
        Ok(sha.and_then(|sha| CommitSha::parse(&sha).ok()))
    }

    async fn advance(
        &self,
        repository: &str,
        git_ref: &str,
        commit: &CommitSha,
    ) -> Result<(), LedgerError> {
        let (repository, git_ref, sha) = (
            repository.to_ascii_lowercase(),
            git_ref.to_string(),
            commit.to_string(),
        );
        self.with(move |connection| {
            connection.execute(
                "INSERT INTO heads (repository, git_ref, sha, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (repository, git_ref) DO UPDATE SET sha = ?3, at = ?4",
                params![repository, git_ref, sha, now_secs()],
            )
        })
        .await?;
        Ok(())
    }
}
