//! What the ledger and the journal share of DynamoDB: attribute helpers, writes of many
//! items in transactions of up to 100 (several at once), and queries of one partition
//! of the table or of its `lists` index. No path scans the table.
//!
//! The table (`deploy/aws/gitdispatch.yaml`): the hash key `pk` (a string), the TTL
//! attribute `expires`, and one global secondary index, `lists`, keyed by `lpk` (the
//! list an item belongs to: a day's deliveries, a lane's jobs, the paused lanes) and
//! `lsk` (its order in the list), projecting `record` and `expires` and a lane hold's
//! fields (a job's body stays out of listings).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use tokio::task::JoinSet;

pub type Item = HashMap<String, AttributeValue>;

/// The index every list is a query of.
pub const LISTS: &str = "lists";

/// Items of one transaction at most (DynamoDB's limit).
const MAX_TRANSACTION_ITEMS: usize = 100;

/// Bytes of one transaction at most, with room under DynamoDB's 4 MB.
const MAX_TRANSACTION_BYTES: usize = 3 * 1024 * 1024;

/// Transactions written at once.
const CONCURRENCY: usize = 8;

/// Tries of a transaction that conflicts with another or is throttled.
const ATTEMPTS: u32 = 6;

/// Checks, at start, that the table answers and has the `lists` index this release
/// reads every list from; says what is wrong, naming the table.
pub async fn check_table(client: &Client, table: &str) -> Result<(), String> {
    let described = client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|error| {
            format!(
                "cannot describe DynamoDB table {table}: {}",
                crate::error::Chain(&aws_sdk_dynamodb::Error::from(error))
            )
        })?;
    let indexed = described
        .table()
        .map(|table| table.global_secondary_indexes())
        .unwrap_or_default()
        .iter()
        .any(|index| index.index_name() == Some(LISTS));
    if indexed {
        Ok(())
    } else {
        Err(format!(
            "DynamoDB table {table} has no global secondary index {LISTS:?} (lpk, lsk): update the stack of deploy/aws/gitdispatch.yaml, which adds it (README: Running on AWS)"
        ))
    }
}

pub fn text(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_string())
}

pub fn number(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub fn get_text(item: &Item, key: &str) -> Option<String> {
    item.get(key).and_then(|value| value.as_s().ok()).cloned()
}

pub fn get_number(item: &Item, key: &str) -> Option<i64> {
    item.get(key)
        .and_then(|value| value.as_n().ok())
        .and_then(|value| value.parse().ok())
}

/// An item to put, only if `condition` holds of what is there (with its names and
/// values), or whatever is there when it has none.
#[derive(Debug, Clone)]
pub struct Write {
    pub item: Item,
    pub condition: Option<String>,
    pub names: HashMap<String, String>,
    pub values: HashMap<String, AttributeValue>,
}

impl Write {
    pub fn put(item: Item) -> Write {
        Write {
            item,
            condition: None,
            names: HashMap::new(),
            values: HashMap::new(),
        }
    }

    pub fn when(mut self, condition: &str) -> Write {
        self.condition = Some(condition.to_string());
        self
    }

    pub fn name(mut self, placeholder: &str, name: &str) -> Write {
        self.names.insert(placeholder.to_string(), name.to_string());
        self
    }

    pub fn value(mut self, placeholder: &str, value: AttributeValue) -> Write {
        self.values.insert(placeholder.to_string(), value);
        self
    }

    fn size(&self) -> usize {
        self.item
            .iter()
            .map(|(key, value)| {
                key.len()
                    + match value {
                        AttributeValue::S(text) => text.len(),
                        AttributeValue::N(number) => number.len(),
                        _ => 64,
                    }
            })
            .sum()
    }

    fn transact_item(&self, table: &str) -> TransactWriteItem {
        let put = Put::builder()
            .table_name(table)
            .set_item(Some(self.item.clone()))
            .set_condition_expression(self.condition.clone())
            .set_expression_attribute_names((!self.names.is_empty()).then(|| self.names.clone()))
            .set_expression_attribute_values((!self.values.is_empty()).then(|| self.values.clone()))
            .build()
            .expect("a put has its table and item");
        TransactWriteItem::builder().put(put).build()
    }
}

/// Why a write of many items failed: the first error met (what was written before it
/// stays written).
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Service(#[from] aws_sdk_dynamodb::Error),
    /// Cancelled every time by conflicts with other transactions, or throttling.
    #[error("a transaction was cancelled {attempts} times ({codes})")]
    Cancelled { attempts: u32, codes: String },
}

/// Puts every item, each only if its condition holds, in transactions of up to 100
/// items, several at once; says, item by item, whether it was put (an item whose
/// condition failed is not; the others of its transaction are, in a transaction tried
/// again without it). Items must have distinct keys.
pub async fn put_all(
    client: &Client,
    table: &str,
    writes: Vec<Write>,
) -> Result<Vec<bool>, WriteError> {
    let mut chunks: Vec<Vec<(usize, Write)>> = Vec::new();
    let mut bytes = 0;
    for (index, write) in writes.into_iter().enumerate() {
        let size = write.size();
        let full = chunks.last().is_none_or(|chunk| {
            chunk.len() == MAX_TRANSACTION_ITEMS || bytes + size > MAX_TRANSACTION_BYTES
        });
        if full {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        chunks
            .last_mut()
            .expect("a chunk was pushed")
            .push((index, write));
    }
    let total: usize = chunks.iter().map(Vec::len).sum();
    let mut written = vec![false; total];
    let mut tasks = JoinSet::new();
    let mut chunks = chunks.into_iter();
    loop {
        while tasks.len() < CONCURRENCY {
            let Some(chunk) = chunks.next() else { break };
            let (client, table) = (client.clone(), table.to_string());
            tasks.spawn(async move { write_chunk(&client, &table, chunk).await });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let outcomes = done.expect("a write task does not panic")?;
        for (index, put) in outcomes {
            written[index] = put;
        }
    }
    Ok(written)
}

/// One transaction of items (tried again without those whose condition failed, and
/// after a conflict or throttling); the outcome of each, by its index.
async fn write_chunk(
    client: &Client,
    table: &str,
    mut chunk: Vec<(usize, Write)>,
) -> Result<Vec<(usize, bool)>, WriteError> {
    let mut outcomes = Vec::with_capacity(chunk.len());
    let mut attempt = 0;
    while !chunk.is_empty() {
        attempt += 1;
        let items: Vec<TransactWriteItem> = chunk
            .iter()
            .map(|(_, write)| write.transact_item(table))
            .collect();
        let result = client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        let reasons = match result {
            Ok(_) => {
                outcomes.extend(chunk.drain(..).map(|(index, _)| (index, true)));
                break;
            }
            Err(SdkError::ServiceError(service)) => match service.err() {
                TransactWriteItemsError::TransactionCanceledException(cancelled) => {
                    cancelled.cancellation_reasons().to_vec()
                }
                _ => {
                    return Err(
                        aws_sdk_dynamodb::Error::from(SdkError::ServiceError(service)).into(),
                    );
                }
            },
            Err(other) => return Err(aws_sdk_dynamodb::Error::from(other).into()),
        };
        let failed: Vec<bool> = reasons
            .iter()
            .map(|reason| reason.code() == Some("ConditionalCheckFailed"))
            .collect();
        if failed.iter().any(|failed| *failed) {
            // Those whose condition failed are refused; the rest go again.
            let mut kept = Vec::with_capacity(chunk.len());
            for ((index, write), failed) in chunk
                .into_iter()
                .zip(failed.iter().chain(std::iter::repeat(&false)))
            {
                if *failed {
                    outcomes.push((index, false));
                } else {
                    kept.push((index, write));
                }
            }
            chunk = kept;
            continue;
        }
        // Cancelled for another reason (a conflict with a concurrent transaction,
        // throttling): the whole transaction again, after a while.
        if attempt >= ATTEMPTS {
            let codes: Vec<&str> = reasons.iter().filter_map(|reason| reason.code()).collect();
            return Err(WriteError::Cancelled {
                attempts: attempt,
                codes: codes.join(", "),
            });
        }
        tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
    }
    Ok(outcomes)
}

/// Deletes items by key, 25 to a batch, several batches at once.
pub async fn delete_all(client: &Client, table: &str, keys: Vec<String>) -> Result<(), WriteError> {
    use aws_sdk_dynamodb::types::{DeleteRequest, WriteRequest};
    let mut tasks = JoinSet::new();
    let mut batches = keys
        .chunks(25)
        .map(<[String]>::to_vec)
        .collect::<Vec<_>>()
        .into_iter();
    loop {
        while tasks.len() < CONCURRENCY {
            let Some(batch) = batches.next() else { break };
            let (client, table) = (client.clone(), table.to_string());
            tasks.spawn(async move {
                let mut requests: Vec<WriteRequest> = batch
                    .iter()
                    .map(|key| {
                        WriteRequest::builder()
                            .delete_request(
                                DeleteRequest::builder()
                                    .key("pk", text(key))
                                    .build()
                                    .expect("a delete has its key"),
                            )
                            .build()
                    })
                    .collect();
                for attempt in 0..ATTEMPTS {
                    let output = client
                        .batch_write_item()
                        .request_items(&table, requests.clone())
                        .send()
                        .await
                        .map_err(aws_sdk_dynamodb::Error::from)
                        .map_err(WriteError::from)?;
                    requests = output
                        .unprocessed_items()
                        .and_then(|unprocessed| unprocessed.get(&table))
                        .cloned()
                        .unwrap_or_default();
                    if requests.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                }
                Ok::<(), WriteError>(())
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        done.expect("a delete task does not panic")?;
    }
    Ok(())
}

/// A query of one list of the `lists` index: its items in order (newest first when not
/// `forward`), at most `limit`, each kept only if `keep` says so (read on until
/// `limit` are kept or the list ends). Eventually consistent, as every index is.
pub async fn list(
    client: &Client,
    table: &str,
    list: &str,
    forward: bool,
    limit: usize,
    keep: impl Fn(&Item) -> bool,
) -> Result<Vec<Item>, aws_sdk_dynamodb::Error> {
    let mut kept = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let page = client
            .query()
            .table_name(table)
            .index_name(LISTS)
            .key_condition_expression("lpk = :list")
            .expression_attribute_values(":list", text(list))
            .scan_index_forward(forward)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(aws_sdk_dynamodb::Error::from)?;
        for item in page.items() {
            if keep(item) {
                kept.push(item.clone());
                if kept.len() >= limit {
                    return Ok(kept);
                }
            }
        }
        match page.last_evaluated_key() {
            Some(key) if !key.is_empty() => start = Some(key.clone()),
            _ => return Ok(kept),
        }
    }
}

/// Whether a call failed because its condition did not hold.
pub fn conditional_check_failed<E, R>(failure: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    failure
        .as_service_error()
        .and_then(|service| service.code())
        == Some("ConditionalCheckFailedException")
}
