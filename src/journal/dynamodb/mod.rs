//! The journal as items of the `[ledger]` DynamoDB table, shared by every instance on
//! AWS, next to the ledger's own. Every lookup is a GetItem of its key, every list a
//! Query of one partition of the table's `lists` index (`crate::dynamo`); nothing
//! scans. Each item carries `expires` for the table's TTL (and counts as absent once
//! past it):
//!
//! | item | key (`pk`) | list (`lpk`), order (`lsk`) |
//! |---|---|---|
//! | a delivery | `delivery#<source>#<id>` | `deliveries#<day>`, time received |
//! | the same, for its repository | `deliveryrepo#<repository>#<ms>#<source>#<id>` | `repository#<repository>`, time received |
//! | a lane job (its body beside it, not listed) | `lanejob#<name>` | `lane#<pipeline>#<environment>`, queue order |
//! | a lane that has jobs | `lane#<pipeline>#<environment>` | `lanes`, the lane |
//! | a paused lane | `pause#<pipeline>#<environment>` | `pauses`, the lane |
//! | a page's session | `session#<digest>` | `sessions`, its digest |
//!
//! A delivery and the jobs it queued are written in transactions of up to 100 items,
//! several at once; a job already on record (the worker was quicker) keeps what it
//! says.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::KeysAndAttributes;

use super::{
    DeliveryFilter, DeliveryRecord, Hold, HoldEnd, JobState, Journal, JournalError, Lane, LaneJob,
    Pause, Retention, SessionRecord, merged, now_ms,
};
mod holds;

use crate::dynamo::{Item, Write, delete_all, get_number, get_text, list, number, put_all, text};

/// How long an item lives at most (SQS keeps a message 14 days at most; deliveries
/// and ended jobs are pruned sooner by their retention).
const MAX_LIFETIME_SECS: i64 = 14 * 24 * 3600;

/// Every source a delivery can come from: a delivery is looked up by id under each.
const SOURCES: [&str; 4] = ["github", "codecommit", "manual", "codepipeline"];

const DAY_MS: i64 = 24 * 3600 * 1000;

pub struct DynamoJournal {
    client: Client,
    table: String,
    retention: Retention,
}

fn error(message: &str, source: impl Into<aws_sdk_dynamodb::Error>) -> JournalError {
    JournalError::new(message.to_string(), source.into())
}

fn job_key(name: &str) -> String {
    format!("lanejob#{name}")
}

fn lane_list(lane: &Lane) -> String {
    format!("lane#{}#{}", lane.pipeline, lane.environment)
}

fn pause_key(lane: &Lane) -> String {
    format!("pause#{}#{}", lane.pipeline, lane.environment)
}

fn delivery_key(source: &str, id: &str) -> String {
    format!("delivery#{source}#{id}")
}

fn day_list(at_ms: i64) -> String {
    format!("deliveries#{}", at_ms.div_euclid(DAY_MS))
}

fn repository_list(repository: &str) -> String {
    format!("repository#{}", repository.to_ascii_lowercase())
}

/// Where a delivery is in its lists: by time received, then by source and id.
fn delivery_order(record: &DeliveryRecord) -> String {
    format!(
        "{:013}#{}#{}",
        record.received_at_ms.max(0),
        record.source,
        record.id
    )
}

fn repository_key(record: &DeliveryRecord) -> String {
    format!(
        "deliveryrepo#{}#{}",
        record.repository.to_ascii_lowercase(),
        delivery_order(record)
    )
}

fn delivery_items(record: &DeliveryRecord, expires: i64) -> [Item; 2] {
    let text_record = serde_json::to_string(record).expect("a delivery record renders");
    let order = delivery_order(record);
    [
        HashMap::from([
            (
                "pk".to_string(),
                text(&delivery_key(&record.source, &record.id)),
            ),
            ("record".to_string(), text(&text_record)),
            ("expires".to_string(), number(expires)),
            ("lpk".to_string(), text(&day_list(record.received_at_ms))),
            ("lsk".to_string(), text(&order)),
        ]),
        HashMap::from([
            ("pk".to_string(), text(&repository_key(record))),
            ("record".to_string(), text(&text_record)),
            ("expires".to_string(), number(expires)),
            (
                "lpk".to_string(),
                text(&repository_list(&record.repository)),
            ),
            ("lsk".to_string(), text(&order)),
        ]),
    ]
}

fn job_item(job: &LaneJob, expires: i64) -> Item {
    let record = serde_json::to_string(job).expect("a lane job renders");
    let mut item = HashMap::from([
        ("pk".to_string(), text(&job_key(&job.name))),
        ("record".to_string(), text(&record)),
        ("job".to_string(), text(&job.job)),
        ("expires".to_string(), number(expires)),
        ("lpk".to_string(), text(&lane_list(&job.lane))),
        ("lsk".to_string(), text(&format!("{:020}", job.seq.max(0)))),
    ]);
    if let Some(at) = job.released_at_ms {
        // Parking compares it with a hold's beginning.
        item.insert("released_at".to_string(), number(at));
    }
    item
}

/// The item that lists a lane among those with jobs.
fn lane_item(lane: &Lane, expires: i64) -> Item {
    let record = serde_json::to_string(lane).expect("a lane renders");
    HashMap::from([
        ("pk".to_string(), text(&lane_list(lane))),
        ("record".to_string(), text(&record)),
        ("expires".to_string(), number(expires)),
        ("lpk".to_string(), text("lanes")),
        (
            "lsk".to_string(),
            text(&format!("{}#{}", lane.pipeline, lane.environment)),
        ),
    ])
}

fn job_from(item: &Item) -> Option<LaneJob> {
    let mut job: LaneJob = serde_json::from_str(&get_text(item, "record")?).ok()?;
    job.job = get_text(item, "job").unwrap_or_default();
    Some(job.read_back())
}

/// A hold as its item has it.
fn hold_from(item: &Item) -> Option<Hold> {
    let lane = Lane {
        pipeline: get_text(item, "pipeline")?,
        environment: get_text(item, "environment")?,
    };
    let pause = (get_number(item, "paused").unwrap_or(0) == 1).then(|| Pause {
        lane: lane.clone(),
        reason: get_text(item, "reason").unwrap_or_default(),
        at_ms: get_number(item, "at").unwrap_or_default(),
    });
    Some(Hold {
        pause,
        busy: get_text(item, "busy"),
        parked: get_number(item, "parked").unwrap_or(0).max(0) as u64,
        since_ms: get_number(item, "since").unwrap_or(0),
        fence: get_text(item, "fence"),
        fence_at_ms: get_number(item, "fence_at").unwrap_or(0),
        lane,
    })
}

fn record_of<T: serde::de::DeserializeOwned>(item: &Item) -> Option<T> {
    serde_json::from_str(&get_text(item, "record")?).ok()
}

/// Whether an item is still alive (its TTL may not have removed it yet).
fn live(item: &Item) -> bool {
    get_number(item, "expires").unwrap_or(0) > now_ms() / 1000
}

impl DynamoJournal {
    pub fn new(client: Client, table: String, retention: Retention) -> DynamoJournal {
        DynamoJournal {
            client,
            table,
            retention,
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
        Ok(item.item().filter(|item| live(item)).cloned())
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

    /// The live items of one list, in order (newest first when not `forward`), at most
    /// `limit` of those `keep` keeps.
    async fn list(
        &self,
        name: &str,
        forward: bool,
        limit: usize,
        keep: impl Fn(&Item) -> bool,
    ) -> Result<Vec<Item>, JournalError> {
        list(&self.client, &self.table, name, forward, limit, |item| {
            live(item) && keep(item)
        })
        .await
        .map_err(|source| error("the journal could not be read", source))
    }

    fn job_expires(&self, job: &LaneJob) -> i64 {
        let now = now_ms() / 1000;
        if job.state == JobState::Waiting {
            now + MAX_LIFETIME_SECS
        } else {
            now + self.retention.keep_secs.min(MAX_LIFETIME_SECS)
        }
    }

    /// The writes that record jobs just queued (each only if not on record already),
    /// with their lanes'.
    fn queued_writes(&self, jobs: &[LaneJob]) -> Vec<Write> {
        let mut seen = BTreeSet::new();
        let mut lanes = BTreeSet::new();
        let mut writes = Vec::new();
        let lane_expires = now_ms() / 1000 + MAX_LIFETIME_SECS;
        for job in jobs {
            if !seen.insert(job.name.clone()) {
                continue;
            }
            if lanes.insert(job.lane.clone()) {
                writes.push(Write::put(lane_item(&job.lane, lane_expires)));
            }
            writes.push(
                Write::put(job_item(job, self.job_expires(job)))
                    .when("attribute_not_exists(pk) OR expires < :now")
                    .value(":now", number(now_ms() / 1000)),
            );
        }
        writes
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), JournalError> {
        put_all(&self.client, &self.table, writes)
            .await
            .map(|_| ())
            .map_err(|source| JournalError::new("the journal could not be written", source))
    }

    /// A hold that was only putting its jobs back begins again (now), and the chain
    /// putting them back stops: what a pause or a long execution does to it.
    async fn restart_releasing(&self, lane: &Lane) -> Result<(), JournalError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", text(&pause_key(lane)))
            .update_expression("SET since = :now REMOVE fence, fence_at")
            .condition_expression(
                "attribute_exists(pk) AND paused = :zero AND attribute_not_exists(busy)",
            )
            .expression_attribute_values(":now", number(now_ms()))
            .expression_attribute_values(":zero", number(0))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(failure) if crate::dynamo::conditional_check_failed(&failure) => Ok(()),
            Err(failure) => Err(error("the journal could not be written", failure)),
        }
    }

    /// Updates a lane's hold with `set` (an UpdateExpression's SET clause and its
    /// values), beginning it if there is none.
    async fn update_hold(
        &self,
        lane: &Lane,
        set: &str,
        mut values: HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
    ) -> Result<(), JournalError> {
        let now = now_ms();
        values.extend([
            (":pipeline".to_string(), text(&lane.pipeline)),
            (":environment".to_string(), text(&lane.environment)),
            (":now".to_string(), number(now)),
            (":zero".to_string(), number(0)),
            // A hold lasts until it ends.
            (":forever".to_string(), number(i64::MAX / 2)),
            (":list".to_string(), text("pauses")),
            (
                ":order".to_string(),
                text(&format!("{}#{}", lane.pipeline, lane.environment)),
            ),
        ]);
        // What `set` does not set keeps its value, or starts as a new hold's.
        let defaults = [
            "since = if_not_exists(since, :now)",
            "parked = if_not_exists(parked, :zero)",
            "paused = if_not_exists(paused, :zero)",
        ]
        .into_iter()
        .filter(|default| {
            let attribute = default.split(' ').next().unwrap_or_default();
            !set.contains(&format!("{attribute} ="))
        })
        .collect::<Vec<_>>()
        .join(", ");
        let expression = format!(
            "{set}, pipeline = :pipeline, environment = :environment, {defaults}, \
             expires = :forever, lpk = :list, lsk = :order"
        );
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", text(&pause_key(lane)))
            .update_expression(expression)
            .set_expression_attribute_values(Some(values));
        if set.contains("#at") {
            update = update.expression_attribute_names("#at", "at");
        }
        update
            .send()
            .await
            .map_err(|source| error("the journal could not be written", source))?;
        Ok(())
    }

    /// Every lane with jobs on record.
    async fn lanes(&self) -> Result<Vec<Lane>, JournalError> {
        Ok(self
            .list("lanes", true, usize::MAX, |_| true)
            .await?
            .iter()
            .filter_map(record_of)
            .collect())
    }
}

#[async_trait]
impl Journal for DynamoJournal {
    async fn record_delivery(
        &self,
        record: &DeliveryRecord,
        queued: &[LaneJob],
    ) -> Result<(), JournalError> {
        let expires = record.received_at_ms / 1000 + self.retention.keep_secs;
        let mut writes: Vec<Write> = delivery_items(record, expires)
            .into_iter()
            .map(Write::put)
            .collect();
        writes.extend(self.queued_writes(queued));
        self.write(writes).await
    }

    async fn deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliveryRecord>, JournalError> {
        let since = filter.since_ms.unwrap_or(0);
        let limit = filter.limit.min(self.retention.keep_count);
        let keep = |item: &Item| {
            record_of::<DeliveryRecord>(item).is_some_and(|record| record.received_at_ms >= since)
        };
        let items = match &filter.repository {
            Some(repository) => {
                self.list(&repository_list(repository), false, limit, keep)
                    .await?
            }
            None => {
                // Day by day, from today back to `since` (or as far as deliveries are
                // kept).
                let now = now_ms();
                let oldest = since.max(now - self.retention.keep_secs * 1000 - DAY_MS);
                let mut items = Vec::new();
                let mut day = now;
                while items.len() < limit && day >= oldest - DAY_MS {
                    let more = self
                        .list(&day_list(day), false, limit - items.len(), keep)
                        .await?;
                    items.extend(more);
                    day -= DAY_MS;
                }
                items
            }
        };
        let mut records: Vec<DeliveryRecord> = items.iter().filter_map(record_of).collect();
        records.sort_by_key(|record| std::cmp::Reverse(record.received_at_ms));
        records.truncate(limit);
        Ok(records)
    }

    async fn delivery(&self, id: &str) -> Result<Vec<DeliveryRecord>, JournalError> {
        let mut keys = KeysAndAttributes::builder().consistent_read(true);
        for source in SOURCES {
            keys = keys.keys(HashMap::from([(
                "pk".to_string(),
                text(&delivery_key(source, id)),
            )]));
        }
        let keys = keys.build().expect("keys are given");
        let output = self
            .client
            .batch_get_item()
            .request_items(&self.table, keys)
            .send()
            .await
            .map_err(|source| error("the journal could not be read", source))?;
        let mut records: Vec<DeliveryRecord> = output
            .responses()
            .and_then(|responses| responses.get(&self.table))
            .into_iter()
            .flatten()
            .filter(|item| live(item))
            .filter_map(record_of)
            .collect();
        records.sort_by(|a, b| a.source.cmp(&b.source));
        Ok(records)
    }

    async fn queued(&self, jobs: &[LaneJob]) -> Result<(), JournalError> {
        self.write(self.queued_writes(jobs)).await
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
        let lanes = match lane {
            Some(lane) => vec![lane.clone()],
            None => self.lanes().await?,
        };
        let mut jobs = Vec::new();
        for lane in &lanes {
            // The index projects no job bodies: only a replay reads one, by name.
            jobs.extend(
                self.list(&lane_list(lane), true, usize::MAX, |_| true)
                    .await?
                    .iter()
                    .filter_map(job_from),
            );
        }
        jobs.sort_by_key(|job| job.seq);
        Ok(jobs)
    }

    async fn job(&self, name: &str) -> Result<Option<LaneJob>, JournalError> {
        Ok(self.get(&job_key(name)).await?.as_ref().and_then(job_from))
    }

    async fn pause(&self, lane: &Lane, reason: &str) -> Result<Pause, JournalError> {
        self.pause_lane(lane, reason).await
    }

    async fn resume(&self, lane: &Lane) -> Result<bool, JournalError> {
        self.resume_lane(lane).await
    }

    async fn occupy(&self, lane: &Lane, execution: &str) -> Result<(), JournalError> {
        self.occupy_lane(lane, execution).await
    }

    async fn vacate(&self, lane: &Lane) -> Result<(), JournalError> {
        self.vacate_lane(lane).await
    }

    async fn holds(&self) -> Result<Vec<Hold>, JournalError> {
        let mut holds: Vec<Hold> = self
            .list("pauses", true, usize::MAX, |_| true)
            .await?
            .iter()
            .filter_map(hold_from)
            .filter(|hold| hold.holds() || hold.parked > 0 || hold.fence.is_some())
            .collect();
        holds.sort_by(|a, b| a.lane.cmp(&b.lane));
        Ok(holds)
    }

    async fn hold(&self, lane: &Lane) -> Result<Option<Hold>, JournalError> {
        Ok(self
            .get(&pause_key(lane))
            .await?
            .as_ref()
            .and_then(hold_from))
    }

    async fn park(&self, job: &LaneJob, ordered: bool) -> Result<bool, JournalError> {
        self.park_job(job, ordered).await
    }

    async fn parked(&self, lane: &Lane, limit: usize) -> Result<Vec<LaneJob>, JournalError> {
        self.parked_jobs(lane, limit).await
    }

    async fn releasing(&self, lane: &Lane, jobs: &[LaneJob]) -> Result<(), JournalError> {
        self.mark_releasing(lane, jobs).await
    }

    async fn unparked(&self, lane: &Lane, jobs: &[LaneJob]) -> Result<(), JournalError> {
        self.mark_unparked(lane, jobs).await
    }

    async fn fence(
        &self,
        lane: &Lane,
        fence: &str,
        stale_before_ms: i64,
    ) -> Result<bool, JournalError> {
        self.set_fence(lane, fence, stale_before_ms).await
    }

    async fn end_hold(&self, lane: &Lane, fence: Option<&str>) -> Result<HoldEnd, JournalError> {
        self.try_end_hold(lane, fence).await
    }

    /// Items older than the retention expire by themselves (`expires`, the table's
    /// TTL); those beyond its count are deleted here: the oldest deliveries, and the
    /// oldest jobs that do not wait.
    async fn prune(&self, retention: Retention) -> Result<(), JournalError> {
        let mut doomed = Vec::new();
        let records = self
            .deliveries(&DeliveryFilter {
                limit: usize::MAX,
                ..DeliveryFilter::default()
            })
            .await?;
        for record in records.iter().skip(retention.keep_count) {
            doomed.push(delivery_key(&record.source, &record.id));
            doomed.push(repository_key(record));
        }
        // Beyond the newest `keep_count` jobs, those not waiting go (a waiting job is
        // kept while a queue may still hold it).
        let jobs = self.lane_jobs(None).await?;
        doomed.extend(
            jobs.iter()
                .rev()
                .skip(retention.keep_count)
                .filter(|job| job.state != JobState::Waiting)
                .map(|job| job_key(&job.name)),
        );
        delete_all(&self.client, &self.table, doomed)
            .await
            .map_err(|source| JournalError::new("the journal could not be pruned", source))
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
            ("lpk".to_string(), text("sessions")),
            ("lsk".to_string(), text(&session.id_digest)),
        ]))
        .await
    }

    async fn session(&self, id_digest: &str) -> Result<Option<SessionRecord>, JournalError> {
        Ok(self
            .get(&format!("session#{id_digest}"))
            .await?
            .as_ref()
            .and_then(record_of))
    }

    async fn end_sessions_except(&self, token_digests: &[String]) -> Result<usize, JournalError> {
        let doomed: Vec<String> = self
            .list("sessions", true, usize::MAX, |_| true)
            .await?
            .iter()
            .filter_map(record_of::<SessionRecord>)
            .filter(|session| !token_digests.contains(&session.token_digest))
            .map(|session| format!("session#{}", session.id_digest))
            .collect();
        let ended = doomed.len();
        delete_all(&self.client, &self.table, doomed)
            .await
            .map_err(|source| JournalError::new("the journal could not be written", source))?;
        Ok(ended)
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
