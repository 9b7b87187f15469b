//! The ledger in a DynamoDB table, shared by every instance on AWS: one item per claim
//! (`claim#<key>`) and per ref head (`head#<repository>#<ref>`) under the hash key
//! `pk`. A claim is a conditional put, so two instances can never both take a commit;
//! old claims carry `expires` for the table's TTL (and count as absent meanwhile).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{
    CLAIM_LIFETIME_SECS, Claim, Claimant, IDEMPOTENCY_LIFETIME_SECS, Ledger, LedgerError, now_secs,
};
use crate::event::CommitSha;

pub struct DynamoLedger {
    client: Client,
    table: String,
}

/// A string attribute (the journal's items use it too).
pub(crate) fn text(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_string())
}

/// A number attribute.
pub(crate) fn number(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn head_key(repository: &str, git_ref: &str) -> String {
    format!("head#{}#{git_ref}", repository.to_ascii_lowercase())
}

impl DynamoLedger {
    pub fn new(client: Client, table: String) -> DynamoLedger {
        DynamoLedger { client, table }
    }

    /// Checks that the table answers (at start, so that a wrong name is said at once).
    pub async fn check(&self) -> Result<(), LedgerError> {
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map(|_| ())
            .map_err(|error| {
                LedgerError::new(
                    format!("cannot describe DynamoDB table {}", self.table),
                    aws_sdk_dynamodb::Error::from(error),
                )
            })
    }
}

#[async_trait]
impl Ledger for DynamoLedger {
    async fn claim(&self, claims: &[Claim], by: Claimant) -> Result<Vec<bool>, LedgerError> {
        let now = now_secs();
        let mut allowed = Vec::with_capacity(claims.len());
        for claim in claims {
            let mut values = HashMap::from([
                (":stale".to_string(), number(now - CLAIM_LIFETIME_SECS)),
                (":by".to_string(), text(by.as_str())),
            ]);
            let condition = match by {
                Claimant::Delivery => "attribute_not_exists(pk) OR #at < :stale OR claimant = :by",
                Claimant::Reconcile => {
                    values.insert(":name".to_string(), text(claim.name.as_str()));
                    "attribute_not_exists(pk) OR #at < :stale OR (claimant = :by AND #name = :name)"
                }
            };
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", text(&format!("claim#{}", claim.key())))
                .item("claimant", text(by.as_str()))
                .item("name", text(claim.name.as_str()))
                .item("at", number(now))
                .item("expires", number(now + CLAIM_LIFETIME_SECS))
                .condition_expression(condition)
                .expression_attribute_names("#at", "at")
                .set_expression_attribute_values(Some(values));
            let put = if by == Claimant::Reconcile {
                put.expression_attribute_names("#name", "name")
            } else {
                put
            };
            match put.send().await {
                Ok(_) => allowed.push(true),
                Err(SdkError::ServiceError(service))
                    if matches!(
                        service.err(),
                        PutItemError::ConditionalCheckFailedException(_)
                    ) =>
                {
                    allowed.push(false)
                }
                Err(error) => {
                    return Err(LedgerError::new(
                        "a claim could not be written",
                        aws_sdk_dynamodb::Error::from(error),
                    ));
                }
            }
        }
        Ok(allowed)
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

    async fn release(&self, claims: &[Claim], by: Claimant) -> Result<(), LedgerError> {
        for claim in claims {
            let result = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key("pk", text(&format!("claim#{}", claim.key())))
                .condition_expression("claimant = :by AND #name = :name")
                .expression_attribute_names("#name", "name")
                .expression_attribute_values(":by", text(by.as_str()))
                .expression_attribute_values(":name", text(claim.name.as_str()))
                .send()
                .await;
            if let Err(error) = result {
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
        Ok(())
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
