//! The ledger in a DynamoDB table, shared by every instance on AWS: one item per claim
//! (`claim#<key>`) and per ref head (`head#<repository>#<ref>`) under the hash key
//! `pk`. A claim is a conditional put, so two instances can never both take a commit;
//! old claims carry `expires` for the table's TTL (and count as absent meanwhile).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;

use crate::dynamo::{Write, number, put_all, text};

use super::{
    CLAIM_LIFETIME_SECS, Claim, Claimant, IDEMPOTENCY_LIFETIME_SECS, Ledger, LedgerError, now_secs,
};
use crate::event::CommitSha;

pub struct DynamoLedger {
    client: Client,
    table: String,
}

fn head_key(repository: &str, git_ref: &str) -> String {
    format!("head#{}#{git_ref}", repository.to_ascii_lowercase())
}

impl DynamoLedger {
    pub fn new(client: Client, table: String) -> DynamoLedger {
        DynamoLedger { client, table }
    }

    /// Checks that the table answers and has the index this release lists from (at
    /// start, so that a wrong name or an old table is said at once).
    pub async fn check(&self) -> Result<(), LedgerError> {
        crate::dynamo::check_table(&self.client, &self.table)
            .await
            .map_err(|message| LedgerError {
                message,
                source: None,
            })
    }
}

#[async_trait]
impl Ledger for DynamoLedger {
    /// Claims in transactions of up to 100 conditional puts, several at once: a push
    /// of thousands of commits costs tens of calls, not thousands.
    async fn claim(&self, claims: &[Claim], by: Claimant) -> Result<Vec<bool>, LedgerError> {
        let now = now_secs();
        // One write per key (two routes of one lane and commit make one claim).
        let mut keys: HashMap<String, usize> = HashMap::new();
        let mut writes = Vec::new();
        let mut position = Vec::with_capacity(claims.len());
        for claim in claims {
            let key = claim.key();
            if let Some(&index) = keys.get(&key) {
                position.push(index);
                continue;
            }
            position.push(keys.len());
            keys.insert(key.clone(), keys.len());
            let item = HashMap::from([
                ("pk".to_string(), text(&format!("claim#{key}"))),
                ("claimant".to_string(), text(by.as_str())),
                ("name".to_string(), text(claim.name.as_str())),
                ("at".to_string(), number(now)),
                ("expires".to_string(), number(now + CLAIM_LIFETIME_SECS)),
            ]);
            let write = Write::put(item)
                .name("#at", "at")
                .value(":stale", number(now - CLAIM_LIFETIME_SECS))
                .value(":by", text(by.as_str()));
            writes.push(match by {
                Claimant::Delivery => {
                    write.when("attribute_not_exists(pk) OR #at < :stale OR claimant = :by")
                }
                Claimant::Reconcile => write
                    .when("attribute_not_exists(pk) OR #at < :stale OR (claimant = :by AND #name = :name)")
                    .name("#name", "name")
                    .value(":name", text(claim.name.as_str())),
            });
        }
        let written = put_all(&self.client, &self.table, writes)
            .await
            .map_err(|error| LedgerError::new("claims could not be written", error))?;
        Ok(position.into_iter().map(|index| written[index]).collect())
    }

    async fn peek(&self, claims: &[Claim], by: Claimant) -> Result<Vec<bool>, LedgerError> {
        let stale = now_secs() - CLAIM_LIFETIME_SECS;
        let mut allowed = Vec::with_capacity(claims.len());
        for claim in claims {
            let item = self
                .client
                .get_item()
                .table_name(&self.table)
                .key("pk", text(&format!("claim#{}", claim.key())))
                .consistent_read(true)
                .send()
                .await
                .map_err(|error| {
                    LedgerError::new(
                        "a claim could not be read",
                        aws_sdk_dynamodb::Error::from(error),
                    )
                })?;
            let held = item.item().and_then(|item| {
                let at: i64 = item.get("at")?.as_n().ok()?.parse().ok()?;
                if at < stale {
                    return None;
                }
                let claimant = Claimant::parse(item.get("claimant")?.as_s().ok()?)?;
                Some((claimant, item.get("name")?.as_s().ok()?.clone()))
            });
            allowed.push(super::may_claim(
                held.as_ref()
                    .map(|(claimant, name)| (*claimant, name.as_str())),
                by,
                &claim.name,
            ));
        }
        Ok(allowed)
    }

    /// Gives back claims, each a conditional delete (only ours, under its name),
    /// sixteen at once.
    async fn release(&self, claims: &[Claim], by: Claimant) -> Result<(), LedgerError> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut claims = claims.iter();
        loop {
            while tasks.len() < 16 {
                let Some(claim) = claims.next() else { break };
                let delete = self
                    .client
                    .delete_item()
                    .table_name(&self.table)
                    .key("pk", text(&format!("claim#{}", claim.key())))
                    .condition_expression("claimant = :by AND #name = :name")
                    .expression_attribute_names("#name", "name")
                    .expression_attribute_values(":by", text(by.as_str()))
                    .expression_attribute_values(":name", text(claim.name.as_str()));
                tasks.spawn(async move { delete.send().await });
            }
            let Some(done) = tasks.join_next().await else {
                return Ok(());
            };
            if let Err(error) = done.expect("a delete does not panic") {
                let error = aws_sdk_dynamodb::Error::from(error);
                // Another claimant or name holds it now: it is not ours to give back.
                if !matches!(
                    error,
                    aws_sdk_dynamodb::Error::ConditionalCheckFailedException(_)
                ) {
                    return Err(LedgerError::new("a claim could not be released", error));
                }
            }
        }
    }

    async fn remember(&self, key: &str, digest: &str) -> Result<Option<String>, LedgerError> {
        let now = now_secs();
        let pk = format!("idempotency#{key}");
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", text(&pk))
            .item("digest", text(digest))
            .item("at", number(now))
            .item("expires", number(now + IDEMPOTENCY_LIFETIME_SECS))
            .condition_expression("attribute_not_exists(pk) OR #at < :stale")
            .expression_attribute_names("#at", "at")
            .expression_attribute_values(":stale", number(now - IDEMPOTENCY_LIFETIME_SECS))
            .send()
            .await;
        match put {
            Ok(_) => Ok(None),
            Err(SdkError::ServiceError(service))
                if matches!(
                    service.err(),
                    PutItemError::ConditionalCheckFailedException(_)
                ) =>
            {
                self.recall(key).await
            }
            Err(error) => Err(LedgerError::new(
                "an idempotency key could not be written",
                aws_sdk_dynamodb::Error::from(error),
            )),
        }
    }

    async fn recall(&self, key: &str) -> Result<Option<String>, LedgerError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", text(&format!("idempotency#{key}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|error| {
                LedgerError::new(
                    "an idempotency key could not be read",
                    aws_sdk_dynamodb::Error::from(error),
                )
            })?;
        let stale = now_secs() - IDEMPOTENCY_LIFETIME_SECS;
        Ok(item
            .item()
            .filter(|item| {
                item.get("at")
                    .and_then(|value| value.as_n().ok())
                    .and_then(|at| at.parse::<i64>().ok())
                    .is_some_and(|at| at >= stale)
            })
            .and_then(|item| item.get("digest"))
            .and_then(|value| value.as_s().ok())
            .cloned())
    }

    async fn head(
        &self,
        repository: &str,
        git_ref: &str,
    ) -> Result<Option<CommitSha>, LedgerError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", text(&head_key(repository, git_ref)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|error| {
                LedgerError::new(
                    "a ref's head could not be read",
                    aws_sdk_dynamodb::Error::from(error),
                )
            })?;
        Ok(item
            .item()
            .and_then(|item| item.get("sha"))
            .and_then(|value| value.as_s().ok())
            .and_then(|sha| CommitSha::parse(sha).ok()))
    }

    async fn advance(
        &self,
        repository: &str,
        git_ref: &str,
        commit: &CommitSha,
    ) -> Result<(), LedgerError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", text(&head_key(repository, git_ref)))
            .item("sha", text(commit.as_str()))
            .item("at", number(now_secs()))
            .send()
            .await
            .map_err(|error| {
                LedgerError::new(
                    "a ref's head could not be written",
                    aws_sdk_dynamodb::Error::from(error),
                )
            })?;
        Ok(())
    }
}
