//! The journal as items of the `[ledger]` DynamoDB table, shared by every instance on
//! AWS, next to the ledger's own: `delivery#<source>#<id>`, `lanejob#<name>` and
//! `pause#<pipeline>#<environment>` under the hash key `pk`. Each item carries
//! `expires` for the table's TTL (and counts as absent once past it). Lists are scans
//! of one prefix: the journal keeps days, not years, of a team's deliveries.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::ledger::dynamodb::{number, text};

use super::{
    DeliveryFilter, DeliveryRecord, JobState, Journal, JournalError, Lane, LaneJob, Pause,
    Retention, SessionRecord, merged, now_ms,
};

/// How long an item lives at most (SQS keeps a message 14 days at most; deliveries
/// and ended jobs are pruned sooner by their retention).
const MAX_LIFETIME_SECS: i64 = 14 * 24 * 3600;

type Item = HashMap<String, AttributeValue>;

pub struct DynamoJournal {
    client: Client,
    table: String,
    retention: Retention,
}

fn get_text(item: &Item, key: &str) -> Option<String> {
    item.get(key).and_then(|value| value.as_s().ok()).cloned()
}

fn get_number(item: &Item, key: &str) -> Option<i64> {
    item.get(key)
        .and_then(|value| value.as_n().ok())
        .and_then(|value| value.parse().ok())
}

fn error(message: &str, source: impl Into<aws_sdk_dynamodb::Error>) -> JournalError {
    JournalError::new(message.to_string(), source.into())
}

fn job_key(name: &str) -> String {
    format!("lanejob#{name}")
}

fn pause_key(lane: &Lane) -> String {
    format!("pause#{}#{}", lane.pipeline, lane.environment)
}

fn job_item(job: &LaneJob, expires: i64) -> Item {
    let record = serde_json::to_string(job).expect("a lane job renders");
    HashMap::from([
        ("pk".to_string(), text(&job_key(&job.name))),
        ("record".to_string(), text(&record)),
        ("job".to_string(), text(&job.job)),
        ("expires".to_string(), number(expires)),
    ])
}

fn job_from(item: &Item) -> Option<LaneJob> {
    let mut job: LaneJob = serde_json::from_str(&get_text(item, "record")?).ok()?;
    job.job = get_text(item, "job").unwrap_or_default();
    Some(job.read_back())
}

impl DynamoJournal {
    pub fn new(client: Client, table: String, retention: Retention) -> DynamoJournal {
        DynamoJournal {
            client,
            table,
            retention,
        }
    }

    /// Every live item whose key starts with `prefix`, with every attribute, or with
    /// `pk`, `record` and `expires` only when `records_only`.
    async fn scan(&self, prefix: &str, records_only: bool) -> Result<Vec<Item>, JournalError> {
        let now = now_ms() / 1000;
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(pk, :prefix) AND expires > :now")
                .expression_attribute_values(":prefix", text(prefix))
                .expression_attribute_values(":now", number(now))
                .consistent_read(true)
                .set_projection_expression(records_only.then(|| "pk, #record, expires".to_string()))
                .set_expression_attribute_names(
                    records_only
                        .then(|| HashMap::from([("#record".to_string(), "record".to_string())])),
                )
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|source| error("the journal could not be read", source))?;
            items.extend(page.items().iter().cloned());
            match page.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(items),
            }
        }
    }

    async fn get(&self, pk: &str) -> Result<Option<Item>, JournalError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", text(pk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|source| error("the journal could not be read", source))?;
        Ok(item
            .item()
            .filter(|item| get_number(item, "expires").unwrap_or(0) > now_ms() / 1000)
            .cloned())
    }

    async fn put(&self, item: Item) -> Result<(), JournalError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|source| error("the journal could not be written", source))?;
        Ok(())
    }

    fn job_expires(&self, job: &LaneJob) -> i64 {
        let now = now_ms() / 1000;
        if job.state == JobState::Waiting {
            now + MAX_LIFETIME_SECS
        } else {
            now + self.retention.keep_secs.min(MAX_LIFETIME_SECS)
        }
    }
}

#[async_trait]
impl Journal for DynamoJournal {
    async fn record_delivery(
        &self,
        record: &DeliveryRecord,
        queued: &[LaneJob],
    ) -> Result<(), JournalError> {
        self.queued(queued).await?;
        let expires = record.received_at_ms / 1000 + self.retention.keep_secs;
        self.put(HashMap::from([
            (
                "pk".to_string(),
                text(&format!("delivery#{}#{}", record.source, record.id)),
            ),
            (
                "record".to_string(),
                text(&serde_json::to_string(record).expect("a delivery record renders")),
            ),
            ("expires".to_string(), number(expires)),
        ]))
        .await
    }

    async fn deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliveryRecord>, JournalError> {
        let mut records: Vec<DeliveryRecord> = self
            .scan("delivery#", false)
            .await?
            .iter()
            .filter_map(|item| serde_json::from_str(&get_text(item, "record")?).ok())
            .filter(|record: &DeliveryRecord| {
                filter
                    .repository
                    .as_ref()
                    .is_none_or(|name| name.eq_ignore_ascii_case(&record.repository))
                    && record.received_at_ms >= filter.since_ms.unwrap_or(0)
            })
            .collect();
        records.sort_by_key(|record| std::cmp::Reverse(record.received_at_ms));
        records.truncate(filter.limit.min(self.retention.keep_count));
        Ok(records)
    }

    async fn delivery(&self, id: &str) -> Result<Vec<DeliveryRecord>, JournalError> {
        let mut records: Vec<DeliveryRecord> = self
            .scan("delivery#", false)
            .await?
            .iter()
            .filter_map(|item| serde_json::from_str(&get_text(item, "record")?).ok())
            .filter(|record: &DeliveryRecord| record.id == id)
            .collect();
        records.sort_by(|a, b| a.source.cmp(&b.source));
        Ok(records)
    }

    async fn queued(&self, jobs: &[LaneJob]) -> Result<(), JournalError> {
        for job in jobs {
            // Only if the worker has not recorded it first.
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(job_item(job, self.job_expires(job))))
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await;
            if let Err(failure) = put {
                let conditional = failure
                    .as_service_error()
                    .is_some_and(|service| service.is_conditional_check_failed_exception());
                if !conditional {
                    return Err(error("the journal could not be written", failure));
                }
            }
        }
        Ok(())
    }

    async fn advance(
        &self,
        job: &LaneJob,
        state: JobState,
        status: Option<&str>,
    ) -> Result<(), JournalError> {
        let known = self
            .get(&job_key(&job.name))
            .await?
            .as_ref()
            .and_then(job_from);
        let next = merged(known, job, state, status);
        let expires = self.job_expires(&next);
        self.put(job_item(&next, expires)).await
    }

    async fn lane_jobs(&self, lane: Option<&Lane>) -> Result<Vec<LaneJob>, JournalError> {
        let mut jobs: Vec<LaneJob> = self
            // The jobs' bodies only a replay reads, by name.
            .scan("lanejob#", true)
            .await?
            .iter()
            .filter_map(job_from)
            .filter(|job| lane.is_none_or(|lane| job.lane == *lane))
            .collect();
        jobs.sort_by_key(|job| job.seq);
        Ok(jobs)
    }

    async fn job(&self, name: &str) -> Result<Option<LaneJob>, JournalError> {
        Ok(self.get(&job_key(name)).await?.as_ref().and_then(job_from))
    }

    async fn pause(&self, lane: &Lane, reason: &str) -> Result<Pause, JournalError> {
        let pause = Pause {
            lane: lane.clone(),
            reason: reason.to_string(),
            at_ms: now_ms(),
        };
        self.put(HashMap::from([
            ("pk".to_string(), text(&pause_key(lane))),
            ("pipeline".to_string(), text(&lane.pipeline)),
            ("environment".to_string(), text(&lane.environment)),
            ("reason".to_string(), text(reason)),
            ("at".to_string(), number(pause.at_ms)),
            // A pause lasts until it is resumed.
            ("expires".to_string(), number(i64::MAX / 2)),
        ]))
        .await?;
        Ok(pause)
    }

    async fn resume(&self, lane: &Lane) -> Result<bool, JournalError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", text(&pause_key(lane)))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|source| error("the journal could not be written", source))?;
        Ok(deleted.attributes().is_some_and(|old| !old.is_empty()))
    }

    async fn pauses(&self) -> Result<Vec<Pause>, JournalError> {
        let mut pauses: Vec<Pause> = self
            .scan("pause#", false)
            .await?
            .iter()
            .filter_map(|item| {
                Some(Pause {
                    lane: Lane {
                        pipeline: get_text(item, "pipeline")?,
                        environment: get_text(item, "environment")?,
                    },
                    reason: get_text(item, "reason").unwrap_or_default(),
                    at_ms: get_number(item, "at").unwrap_or_default(),
                })
            })
            .collect();
        pauses.sort_by(|a, b| a.lane.cmp(&b.lane));
        Ok(pauses)
    }

    /// Items expire by themselves (`expires`, the table's TTL); a count is not kept.
    async fn prune(&self, _retention: Retention) -> Result<(), JournalError> {
        Ok(())
    }

    async fn open_session(&self, session: &SessionRecord) -> Result<(), JournalError> {
        let record = serde_json::to_string(session).expect("a session renders");
        self.put(HashMap::from([
            (
                "pk".to_string(),
                text(&format!("session#{}", session.id_digest)),
            ),
            ("record".to_string(), text(&record)),
            ("expires".to_string(), number(session.expires_at)),
        ]))
        .await
    }

    async fn session(&self, id_digest: &str) -> Result<Option<SessionRecord>, JournalError> {
        Ok(self
            .get(&format!("session#{id_digest}"))
            .await?
            .and_then(|item| serde_json::from_str(&get_text(&item, "record")?).ok()))
    }

    async fn end_session(&self, id_digest: &str) -> Result<(), JournalError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("pk", text(&format!("session#{id_digest}")))
            .send()
            .await
            .map_err(|source| error("the journal could not be written", source))?;
        Ok(())
    }
}
