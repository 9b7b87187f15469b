//! Lane holds in the SQLite file: a hold's row (its pause, its busy execution, the
//! chain putting its parked jobs back) and the parked jobs, each change in one
//! transaction.

use super::*;

impl SqliteJournal {
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
        let written = pause.clone();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            begin_hold(&transaction, &written.lane)?;
            transaction.execute(
                "UPDATE pauses SET paused = 1, reason = ?3, at = ?4 WHERE pipeline = ?1 AND environment = ?2",
                params![
                    written.lane.pipeline,
                    written.lane.environment,
                    written.reason,
                    written.at_ms
                ],
            )?;
            transaction.commit()
        })
        .await?;
        Ok(pause)
    }

    pub(super) async fn resume_lane(&self, lane: &Lane) -> Result<bool, JournalError> {
        let lane = lane.clone();
        self.with(move |connection| {
            Ok(connection.execute(
                "UPDATE pauses SET paused = 0 WHERE pipeline = ?1 AND environment = ?2 AND paused = 1",
                params![lane.pipeline, lane.environment],
            )? > 0)
        })
        .await
    }

    pub(super) async fn occupy_lane(
        &self,
        lane: &Lane,
        execution: &str,
    ) -> Result<(), JournalError> {
        let (lane, execution) = (lane.clone(), execution.to_string());
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            begin_hold(&transaction, &lane)?;
            transaction.execute(
                "UPDATE pauses SET busy = ?3 WHERE pipeline = ?1 AND environment = ?2",
                params![lane.pipeline, lane.environment, execution],
            )?;
            transaction.commit()
        })
        .await
    }

    pub(super) async fn vacate_lane(&self, lane: &Lane) -> Result<(), JournalError> {
        let lane = lane.clone();
        self.with(move |connection| {
            connection.execute(
                "UPDATE pauses SET busy = NULL WHERE pipeline = ?1 AND environment = ?2",
                params![lane.pipeline, lane.environment],
            )?;
            Ok(())
        })
        .await
    }

    pub(super) async fn park_job(
        &self,
        job: &LaneJob,
        ordered: bool,
    ) -> Result<bool, JournalError> {
        let job = job.clone();
        self.with(move |connection| {
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let Some(hold) = read_hold(&transaction, &job.lane)? else {
                return Ok(false);
            };
            let known = read_job(&transaction, &job.name)?;
            let released = known
                .as_ref()
                .and_then(|known| known.released_at_ms)
                .is_some_and(|at| at >= hold.since_ms);
            if !(hold.holds() || ordered) || released || hold.parked >= crate::journal::MAX_PARKED {
                return Ok(false);
            }
            let mut parked = match known {
                Some(known) if known.state != JobState::Waiting => return Ok(false),
                Some(mut known) => {
                    if known.job.is_empty() {
                        known.job = job.job.clone();
                    }
                    known
                }
                None => job,
            };
            parked.parked = true;
            parked.updated_at_ms = now_ms();
            write_job(&transaction, &parked)?;
            transaction.commit()?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn parked_jobs(
        &self,
        lane: &Lane,
        limit: usize,
    ) -> Result<Vec<LaneJob>, JournalError> {
        let lane = lane.clone();
        self.with(move |connection| {
            connection
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM lane_jobs
                     WHERE pipeline = ?1 AND environment = ?2 AND parked = 1 ORDER BY seq LIMIT ?3"
                ))?
                .query_map(
                    params![lane.pipeline, lane.environment, limit as i64],
                    lane_job,
                )?
                .collect()
        })
        .await
    }

    pub(super) async fn mark_releasing(
        &self,
        _lane: &Lane,
        jobs: &[LaneJob],
    ) -> Result<(), JournalError> {
        let released: Vec<(String, Option<i64>)> = jobs
            .iter()
            .map(|job| (job.name.clone(), job.released_at_ms))
            .collect();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            for (name, at) in &released {
                transaction.execute(
                    "UPDATE lane_jobs SET released_at = ?2 WHERE name = ?1",
                    params![name, at.unwrap_or_else(now_ms)],
                )?;
            }
            transaction.commit()
        })
        .await
    }

    pub(super) async fn mark_unparked(
        &self,
        _lane: &Lane,
        jobs: &[LaneJob],
    ) -> Result<(), JournalError> {
        let names: Vec<String> = jobs.iter().map(|job| job.name.clone()).collect();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            for name in &names {
                transaction.execute(
                    "UPDATE lane_jobs SET parked = 0 WHERE name = ?1",
                    params![name],
                )?;
            }
            transaction.commit()
        })
        .await
    }

    pub(super) async fn set_fence(
        &self,
        lane: &Lane,
        fence: &str,
        stale_before_ms: i64,
    ) -> Result<bool, JournalError> {
        let (lane, fence) = (lane.clone(), fence.to_string());
        self.with(move |connection| {
            Ok(connection.execute(
                "UPDATE pauses SET fence = ?3, fence_at = ?4
                 WHERE pipeline = ?1 AND environment = ?2 AND paused = 0 AND busy IS NULL
                   AND (fence IS NULL OR fence = ?3 OR fence_at < ?5)",
                params![
                    lane.pipeline,
                    lane.environment,
                    fence,
                    now_ms(),
                    stale_before_ms
                ],
            )? > 0)
        })
        .await
    }

    pub(super) async fn try_end_hold(
        &self,
        lane: &Lane,
        fence: Option<&str>,
    ) -> Result<HoldEnd, JournalError> {
        let (lane, fence) = (lane.clone(), fence.map(str::to_string));
        self.with(move |connection| {
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let end = match read_hold(&transaction, &lane)? {
                None => HoldEnd::Ended,
                Some(hold) if hold.holds() => HoldEnd::Held,
                Some(hold) if hold.parked > 0 => HoldEnd::Parked,
                Some(hold) if hold.fence.is_some() && hold.fence != fence => HoldEnd::Fenced,
                Some(_) => {
                    transaction.execute(
                        "DELETE FROM pauses WHERE pipeline = ?1 AND environment = ?2",
                        params![lane.pipeline, lane.environment],
                    )?;
                    HoldEnd::Ended
                }
            };
            transaction.commit()?;
            Ok(end)
        })
        .await
    }
}
