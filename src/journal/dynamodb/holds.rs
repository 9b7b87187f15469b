//! Lane holds as items of the table: a hold's item (its pause, its busy execution, its
//! parked count and names, the chain putting them back) and the parked jobs, changed in
//! conditional writes so that concurrent workers agree.

use super::*;

impl DynamoJournal {
    pub(super) async fn pause_lane(
        &self,
        lane: &Lane,
        reason: &str,
    ) -> Result<Pause, JournalError> {
        let pause = Pause {
            lane: lane.clone(),
            reason: reason.to_string(),
            at_ms: now_ms(),
        };
        self.restart_releasing(lane).await?;
        self.update_hold(
            lane,
            "SET paused = :one, reason = :reason, #at = :at",
            HashMap::from([
                (":one".to_string(), number(1)),
                (":reason".to_string(), text(reason)),
                (":at".to_string(), number(pause.at_ms)),
            ]),
        )
        .await?;
        Ok(pause)
    }

    pub(super) async fn resume_lane(&self, lane: &Lane) -> Result<bool, JournalError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", text(&pause_key(lane)))
            .update_expression("SET paused = :zero")
            .condition_expression("paused = :one")
            .expression_attribute_values(":zero", number(0))
            .expression_attribute_values(":one", number(1))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(failure)
                if failure
                    .as_service_error()
                    .is_some_and(|service| service.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(failure) => Err(error("the journal could not be written", failure)),
        }
    }

    pub(super) async fn occupy_lane(
        &self,
        lane: &Lane,
        execution: &str,
    ) -> Result<(), JournalError> {
        self.restart_releasing(lane).await?;
        self.update_hold(
            lane,
            "SET busy = :busy",
            HashMap::from([(":busy".to_string(), text(execution))]),
        )
        .await
    }

    pub(super) async fn vacate_lane(&self, lane: &Lane) -> Result<(), JournalError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", text(&pause_key(lane)))
            .update_expression("REMOVE busy")
            .condition_expression("attribute_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(failure)
                if failure
                    .as_service_error()
                    .is_some_and(|service| service.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(failure) => Err(error("the journal could not be written", failure)),
        }
    }

    pub(super) async fn park_job(
        &self,
        job: &LaneJob,
        ordered: bool,
    ) -> Result<bool, JournalError> {
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
        for _ in 0..3 {
            let Some(hold) = self.hold(&job.lane).await? else {
                return Ok(false);
            };
            if !(hold.holds() || ordered) || hold.parked >= crate::journal::MAX_PARKED {
                return Ok(false);
            }
            let known = self.job(&job.name).await?;
            let mut parked = match known {
                Some(known)
                    if known.state != JobState::Waiting
                        || known.released_at_ms.is_some_and(|at| at >= hold.since_ms) =>
                {
                    return Ok(false);
                }
                Some(mut known) => {
                    if known.job.is_empty() {
                        known.job = job.job.clone();
                    }
                    known
                }
                None => job.clone(),
            };
            parked.parked = true;
            parked.updated_at_ms = now_ms();
            let count = Update::builder()
                .table_name(&self.table)
                .key("pk", text(&pause_key(&job.lane)))
                .update_expression("SET parked = parked + :one ADD parked_names :name")
                .condition_expression(if ordered {
                    // A serial lane's job is parked behind those being put back too.
                    "since = :since"
                } else {
                    "since = :since AND (paused = :one OR attribute_exists(busy))"
                })
                .expression_attribute_values(":one", number(1))
                .expression_attribute_values(":since", number(hold.since_ms))
                .expression_attribute_values(
                    ":name",
                    aws_sdk_dynamodb::types::AttributeValue::Ss(vec![job.name.clone()]),
                )
                .build()
                .expect("an update has its table, key and expression");
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(job_item(&parked, self.job_expires(&parked))))
                .condition_expression("attribute_not_exists(released_at) OR released_at < :since")
                .expression_attribute_values(":since", number(hold.since_ms))
                .build()
                .expect("a put has its table and item");
            // Its lane is among those with jobs (a job parked before any was recorded
            // queued, by a worker quicker than the listener).
            let listed = Put::builder()
                .table_name(&self.table)
                .set_item(Some(lane_item(
                    &job.lane,
                    now_ms() / 1000 + MAX_LIFETIME_SECS,
                )))
                .build()
                .expect("a put has its table and item");
            let written = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(count).build())
                .transact_items(TransactWriteItem::builder().put(put).build())
                .transact_items(TransactWriteItem::builder().put(listed).build())
                .send()
                .await;
            match written {
                Ok(_) => return Ok(true),
                Err(failure)
                    if matches!(
                        failure.as_service_error(),
                        Some(TransactWriteItemsError::TransactionCanceledException(_))
                    ) =>
                {
                    // The hold or the job changed meanwhile: look again.
                    continue;
                }
                Err(failure) => return Err(error("the journal could not be written", failure)),
            }
        }
        Ok(false)
    }

    pub(super) async fn parked_jobs(
        &self,
        lane: &Lane,
        limit: usize,
    ) -> Result<Vec<LaneJob>, JournalError> {
        let Some(item) = self.get(&pause_key(lane)).await? else {
            return Ok(Vec::new());
        };
        let names: Vec<String> = item
            .get("parked_names")
            .and_then(|value| value.as_ss().ok())
            .cloned()
            .unwrap_or_default();
        let mut jobs = Vec::with_capacity(names.len());
        for chunk in names.chunks(100) {
            let mut keys = KeysAndAttributes::builder().consistent_read(true);
            for name in chunk {
                keys = keys.keys(HashMap::from([("pk".to_string(), text(&job_key(name)))]));
            }
            let output = self
                .client
                .batch_get_item()
                .request_items(&self.table, keys.build().expect("keys are given"))
                .send()
                .await
                .map_err(|source| error("the journal could not be read", source))?;
            jobs.extend(
                output
                    .responses()
                    .and_then(|responses| responses.get(&self.table))
                    .into_iter()
                    .flatten()
                    .filter_map(job_from),
            );
        }
        jobs.sort_by_key(|job| job.seq);
        jobs.truncate(limit);
        Ok(jobs)
    }

    pub(super) async fn mark_releasing(
        &self,
        _lane: &Lane,
        jobs: &[LaneJob],
    ) -> Result<(), JournalError> {
        let now = now_ms();
        let writes = jobs
            .iter()
            .map(|job| {
                let mut job = job.clone();
                job.released_at_ms = job.released_at_ms.or(Some(now));
                Write::put(job_item(&job, self.job_expires(&job)))
            })
            .collect();
        self.write(writes).await
    }

    pub(super) async fn mark_unparked(
        &self,
        lane: &Lane,
        jobs: &[LaneJob],
    ) -> Result<(), JournalError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let writes = jobs
            .iter()
            .map(|job| {
                let mut job = job.clone();
                job.parked = false;
                // Back on the queue: put back since its hold began, whatever the copy
                // given says (its item is written whole).
                job.released_at_ms = job.released_at_ms.or(Some(now_ms()));
                Write::put(job_item(&job, self.job_expires(&job)))
            })
            .collect();
        self.write(writes).await?;
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", text(&pause_key(lane)))
            .update_expression("SET parked = parked - :count DELETE parked_names :names")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":count", number(jobs.len() as i64))
            .expression_attribute_values(
                ":names",
                aws_sdk_dynamodb::types::AttributeValue::Ss(
                    jobs.iter().map(|job| job.name.clone()).collect(),
                ),
            )
            .send()
            .await
            .map_err(|source| error("the journal could not be written", source))?;
        Ok(())
    }

    pub(super) async fn set_fence(
        &self,
        lane: &Lane,
        fence: &str,
        stale_before_ms: i64,
    ) -> Result<bool, JournalError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", text(&pause_key(lane)))
            .update_expression("SET fence = :fence, fence_at = :now")
            .condition_expression(
                "attribute_exists(pk) AND paused = :zero AND attribute_not_exists(busy) \
                 AND (attribute_not_exists(fence) OR fence = :fence OR fence_at < :stale)",
            )
            .expression_attribute_values(":fence", text(fence))
            .expression_attribute_values(":now", number(now_ms()))
            .expression_attribute_values(":zero", number(0))
            .expression_attribute_values(":stale", number(stale_before_ms))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(failure) if crate::dynamo::conditional_check_failed(&failure) => Ok(false),
            Err(failure) => Err(error("the journal could not be written", failure)),
        }
    }

    pub(super) async fn try_end_hold(
        &self,
        lane: &Lane,
        fence: Option<&str>,
    ) -> Result<HoldEnd, JournalError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", text(&pause_key(lane)))
            .condition_expression(
                "attribute_not_exists(pk) OR (paused = :zero AND attribute_not_exists(busy) \
                 AND attribute_not_exists(parked_names) \
                 AND (attribute_not_exists(fence) OR fence = :fence))",
            )
            .expression_attribute_values(":zero", number(0))
            // No chain is named "none" (chains are named by UUIDs).
            .expression_attribute_values(":fence", text(fence.unwrap_or("none")))
            .send()
            .await;
        match result {
            Ok(_) => Ok(HoldEnd::Ended),
            Err(failure)
                if failure
                    .as_service_error()
                    .is_some_and(|service| service.is_conditional_check_failed_exception()) =>
            {
                Ok(match self.hold(lane).await? {
                    None => HoldEnd::Ended,
                    Some(hold) if hold.holds() => HoldEnd::Held,
                    Some(hold) if hold.parked > 0 => HoldEnd::Parked,
                    Some(_) => HoldEnd::Fenced,
                })
            }
            Err(failure) => Err(error("the journal could not be written", failure)),
        }
    }
}
