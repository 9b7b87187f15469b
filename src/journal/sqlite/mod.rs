//! The journal in a SQLite file, for one machine (any number of processes share it).
//! A record, not a promise: `synchronous=NORMAL` (WAL), so that keeping it costs a
//! delivery no fsync. What every delivery and every start writes goes through one
//! writer task that commits all the writes waiting in one transaction (each in a
//! savepoint of its own), as the embedded queue's writer does: concurrent deliveries
//! share a commit instead of queueing for the connection one by one.

use std::path::Path;

use tokio::sync::{mpsc, oneshot};

mod holds;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{
    DeliveryFilter, DeliveryRecord, Hold, HoldEnd, JobState, Journal, JournalError, Lane, LaneJob,
    Pause, Retention, SessionRecord, merged, now_ms,
};

pub struct SqliteJournal {
    connection: crate::sqlite::Shared,
    writes: mpsc::Sender<Pending>,
}

/// A write of the journal, and where its outcome goes.
type Write = Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>;
type Pending = (Write, oneshot::Sender<Result<(), String>>);

/// Writes committed in one transaction at most; more wait for the next.
const MAX_BATCH: usize = 512;

/// Writes waiting at most; a writer beyond it waits for room.
const MAX_WAITING: usize = 8192;

/// Commits the writes that are waiting, all in one transaction, each in a savepoint
/// (one that fails is undone alone), then answers each.
async fn writer(connection: crate::sqlite::Shared, mut writes: mpsc::Receiver<Pending>) {
    let mut pending: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while writes.recv_many(&mut pending, MAX_BATCH).await > 0 {
        let (works, replies): (Vec<Write>, Vec<_>) =
            std::mem::take(&mut pending).into_iter().unzip();
        let outcome = connection
            .run(move |connection| {
                let mut transaction = connection
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let mut outcomes = Vec::with_capacity(works.len());
                for work in works {
                    let savepoint = transaction.savepoint()?;
                    let outcome = work(&savepoint);
                    if outcome.is_ok() {
                        savepoint.commit()?;
                    }
                    outcomes.push(outcome.map_err(|error| error.to_string()));
                }
                transaction.commit()?;
                Ok(outcomes)
            })
            .await;
        let outcomes: Vec<Result<(), String>> = match outcome {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(error)) => vec![Err(error.to_string()); replies.len()],
            Err(error) => vec![Err(format!("the journal's task failed: {error}")); replies.len()],
        };
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
    }
}

const JOB_COLUMNS: &str = "name, pipeline, environment, repository, git_ref, commit_sha, seq, \
     state, status, queued_at, updated_at, replay_of, job, source, action, parked, released_at";

/// The columns of a listing: everything but the job's body (up to the queue's message
/// size each), which only a replay reads, by name.
const LISTED_COLUMNS: &str = "name, pipeline, environment, repository, git_ref, commit_sha, seq, \
     state, status, queued_at, updated_at, replay_of, '', source, action, parked, released_at";

fn lane_job(row: &Row<'_>) -> rusqlite::Result<LaneJob> {
    let state: String = row.get(7)?;
    let status: Option<String> = row.get(8)?;
    Ok(LaneJob {
        name: row.get(0)?,
        lane: Lane {
            pipeline: row.get(1)?,
            environment: row.get(2)?,
        },
        source: row.get(13)?,
        action: row.get(14)?,
        repository: row.get(3)?,
        git_ref: row.get(4)?,
        commit: row.get(5)?,
        seq: row.get(6)?,
        state: JobState::parse(&state, status.as_deref()).unwrap_or(JobState::Waiting),
        status,
        queued_at_ms: row.get(9)?,
        updated_at_ms: row.get(10)?,
        replay_of: row.get(11)?,
        job: row.get(12)?,
        parked: row.get(15)?,
        released_at_ms: row.get(16)?,
    })
}

fn delivery(row: &Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    let record: String = row.get(0)?;
    serde_json::from_str(&record).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(error))
    })
}

fn write_job(connection: &Connection, job: &LaneJob) -> rusqlite::Result<()> {
    connection
        .prepare_cached(&format!(
            "INSERT OR REPLACE INTO lane_jobs ({JOB_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        ))?
        .execute(params![
            job.name,
            job.lane.pipeline,
            job.lane.environment,
            job.repository,
            job.git_ref,
            job.commit,
            job.seq,
            job.state.as_str(),
            job.status,
            job.queued_at_ms,
            job.updated_at_ms,
            job.replay_of,
            job.job,
            job.source,
            job.action,
            job.parked,
            job.released_at_ms,
        ])?;
    Ok(())
}

fn read_job(connection: &Connection, name: &str) -> rusqlite::Result<Option<LaneJob>> {
    connection
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM lane_jobs WHERE name = ?1"
        ))?
        .query_row([name], lane_job)
        .optional()
}

/// Records jobs just queued; one already on record keeps what it says.
fn insert_queued(connection: &Connection, jobs: &[LaneJob]) -> rusqlite::Result<()> {
    for job in jobs {
        if read_job(connection, &job.name)?.is_none() {
            write_job(connection, job)?;
        }
    }
    Ok(())
}

/// Adds the columns a file of an earlier release lacks: where a job came from and
/// what it does, which supersede compares.
fn add_columns(connection: &Connection) -> rusqlite::Result<()> {
    for (table, column, definition) in [
        ("lane_jobs", "source", "TEXT NOT NULL DEFAULT ''"),
        ("lane_jobs", "action", "TEXT NOT NULL DEFAULT 'deploy'"),
        ("lane_jobs", "parked", "INTEGER NOT NULL DEFAULT 0"),
        ("lane_jobs", "released_at", "INTEGER"),
        // A pause of an earlier release is an operator's pause, since its time.
        ("pauses", "paused", "INTEGER NOT NULL DEFAULT 1"),
        ("pauses", "busy", "TEXT"),
        ("pauses", "since", "INTEGER NOT NULL DEFAULT 0"),
        ("pauses", "fence", "TEXT"),
        ("pauses", "fence_at", "INTEGER NOT NULL DEFAULT 0"),
    ] {
        let mut columns = Vec::new();
        connection
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
            .query_map([], |row| row.get::<_, String>(0))?
            .try_for_each(|name| name.map(|name| columns.push(name)))?;
        if !columns.iter().any(|known| known == column) {
            connection.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    connection.execute_batch(
        "CREATE INDEX IF NOT EXISTS lane_jobs_parked ON lane_jobs (pipeline, environment, parked, seq)",
    )?;
    Ok(())
}

/// A lane's hold, as the file has it.
fn read_hold(connection: &Connection, lane: &Lane) -> rusqlite::Result<Option<Hold>> {
    let hold = connection
        .prepare_cached(
            "SELECT paused, reason, at, busy, since, fence, fence_at FROM pauses WHERE pipeline = ?1 AND environment = ?2",
        )?
        .query_row(params![lane.pipeline, lane.environment], |row| {
            let paused: bool = row.get(0)?;
            Ok(Hold {
                lane: lane.clone(),
                pause: paused.then(|| Pause {
                    lane: lane.clone(),
                    reason: row.get(1).unwrap_or_default(),
                    at_ms: row.get(2).unwrap_or_default(),
                }),
                busy: row.get(3)?,
                parked: 0,
                since_ms: row.get(4)?,
                fence: row.get(5)?,
                fence_at_ms: row.get(6)?,
            })
        })
        .optional()?;
    let Some(mut hold) = hold else {
        return Ok(None);
    };
    hold.parked = connection
        .prepare_cached(
            "SELECT COUNT(*) FROM lane_jobs WHERE pipeline = ?1 AND environment = ?2 AND parked = 1",
        )?
        .query_row(params![lane.pipeline, lane.environment], |row| row.get::<_, i64>(0))?
        as u64;
    Ok(Some(hold))
}

/// Begins a lane's hold, unless it is held already; a hold that was only putting its
/// jobs back begins again (now), and the chain putting them back stops.
fn begin_hold(connection: &Connection, lane: &Lane) -> rusqlite::Result<()> {
    let now = now_ms();
    connection
        .prepare_cached(
            "INSERT OR IGNORE INTO pauses (pipeline, environment, reason, at, paused, busy, since)
             VALUES (?1, ?2, '', ?3, 0, NULL, ?3)",
        )?
        .execute(params![lane.pipeline, lane.environment, now])?;
    connection
        .prepare_cached(
            "UPDATE pauses SET since = ?3, fence = NULL, fence_at = 0
             WHERE pipeline = ?1 AND environment = ?2 AND paused = 0 AND busy IS NULL",
        )?
        .execute(params![lane.pipeline, lane.environment, now])?;
    Ok(())
}

impl SqliteJournal {
    pub fn open(path: &Path) -> Result<SqliteJournal, JournalError> {
        let connection = crate::sqlite::open_durable(path)
            .and_then(|mut connection| {
                connection.pragma_update(None, "synchronous", "NORMAL")?;
                // One writer at a time makes or upgrades the tables: processes that
                // open a new file together (a `listen` and a `work` started at once)
                // would otherwise both add the same column.
                let transaction = connection
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                transaction.execute_batch(
                    "CREATE TABLE IF NOT EXISTS deliveries (
                         source TEXT NOT NULL,
                         id TEXT NOT NULL,
                         repository TEXT NOT NULL,
                         received_at INTEGER NOT NULL,
                         record TEXT NOT NULL,
                         PRIMARY KEY (source, id)
                     );
                     CREATE INDEX IF NOT EXISTS deliveries_by_time ON deliveries (received_at);
                     CREATE INDEX IF NOT EXISTS deliveries_by_id ON deliveries (id);
                     CREATE TABLE IF NOT EXISTS lane_jobs (
                         name TEXT PRIMARY KEY,
                         pipeline TEXT NOT NULL,
                         environment TEXT NOT NULL,
                         repository TEXT NOT NULL,
                         git_ref TEXT NOT NULL,
                         commit_sha TEXT NOT NULL,
                         seq INTEGER NOT NULL,
                         state TEXT NOT NULL,
                         status TEXT,
                         queued_at INTEGER NOT NULL,
                         updated_at INTEGER NOT NULL,
                         replay_of TEXT,
                         job TEXT NOT NULL
                     );
                     CREATE INDEX IF NOT EXISTS lane_jobs_by_lane ON lane_jobs (pipeline, environment, seq);
                     CREATE TABLE IF NOT EXISTS sessions (
                         id_digest TEXT PRIMARY KEY,
                         token_digest TEXT NOT NULL,
                         csrf TEXT NOT NULL,
                         expires_at INTEGER NOT NULL
                     );
                     CREATE TABLE IF NOT EXISTS pauses (
                         pipeline TEXT NOT NULL,
                         environment TEXT NOT NULL,
                         reason TEXT NOT NULL,
                         at INTEGER NOT NULL,
                         PRIMARY KEY (pipeline, environment)
                     );",
                )?;
                add_columns(&transaction)?;
                transaction.commit()?;
                Ok(connection)
            })
            .map_err(|error| JournalError::new(format!("cannot open {}", path.display()), error))?;
        let connection = crate::sqlite::Shared::new(connection);
        let (writes, waiting) = mpsc::channel(MAX_WAITING);
        tokio::spawn(writer(connection.clone(), waiting));
        Ok(SqliteJournal { connection, writes })
    }

    /// Has the writer task commit `work` with whatever else waits.
    async fn write(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
    ) -> Result<(), JournalError> {
        let (reply, outcome) = oneshot::channel();
        let stopped = || JournalError {
            message: "the journal's writer stopped".to_string(),
            source: None,
        };
        self.writes
            .send((Box::new(work), reply))
            .await
            .map_err(|_| stopped())?;
        outcome
            .await
            .map_err(|_| stopped())?
            .map_err(|message| JournalError {
                message: format!("journal file: {message}"),
                source: None,
            })
    }

    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, JournalError> {
        self.connection
            .run(work)
            .await
            .map_err(|error| JournalError::new("the journal's task failed", error))?
            .map_err(|error| JournalError::new("journal file", error))
    }
}

#[async_trait]
impl Journal for SqliteJournal {
    async fn record_delivery(
        &self,
        record: &DeliveryRecord,
        queued: &[LaneJob],
    ) -> Result<(), JournalError> {
        let record = record.clone();
        let queued = queued.to_vec();
        let text = serde_json::to_string(&record).expect("a delivery record renders");
        self.write(move |connection| {
            insert_queued(connection, &queued)?;
            connection
                .prepare_cached(
                    "INSERT OR REPLACE INTO deliveries (source, id, repository, received_at, record)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    record.source,
                    record.id,
                    record.repository.to_ascii_lowercase(),
                    record.received_at_ms,
                    text
                ])?;
            Ok(())
        })
        .await
    }

    async fn deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliveryRecord>, JournalError> {
        let filter = filter.clone();
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT record FROM deliveries
                 WHERE (?1 IS NULL OR repository = ?1) AND received_at >= ?2
                 ORDER BY received_at DESC LIMIT ?3",
            )?;
            statement
                .query_map(
                    params![
                        filter.repository.map(|name| name.to_ascii_lowercase()),
                        filter.since_ms.unwrap_or(0),
                        filter.limit as i64
                    ],
                    delivery,
                )?
                .collect()
        })
        .await
    }

    async fn delivery(&self, id: &str) -> Result<Vec<DeliveryRecord>, JournalError> {
        let id = id.to_string();
        self.with(move |connection| {
            connection
                .prepare_cached("SELECT record FROM deliveries WHERE id = ?1 ORDER BY source")?
                .query_map([id], delivery)?
                .collect()
        })
        .await
    }

    async fn queued(&self, jobs: &[LaneJob]) -> Result<(), JournalError> {
        let jobs = jobs.to_vec();
        self.write(move |connection| insert_queued(connection, &jobs))
            .await
    }

    async fn advance(
        &self,
        job: &LaneJob,
        state: JobState,
        status: Option<&str>,
    ) -> Result<(), JournalError> {
        let job = job.clone();
        let status = status.map(str::to_string);
        self.write(move |connection| {
            let known = read_job(connection, &job.name)?;
            write_job(connection, &merged(known, &job, state, status.as_deref()))
        })
        .await
    }

    async fn lane_jobs(&self, lane: Option<&Lane>) -> Result<Vec<LaneJob>, JournalError> {
        let lane = lane.cloned();
        self.with(move |connection| {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {LISTED_COLUMNS} FROM lane_jobs
                 WHERE ?1 IS NULL OR (pipeline = ?1 AND environment = ?2) ORDER BY seq"
            ))?;
            statement
                .query_map(
                    params![
                        lane.as_ref().map(|lane| lane.pipeline.clone()),
                        lane.as_ref().map(|lane| lane.environment.clone())
                    ],
                    lane_job,
                )?
                .collect()
        })
        .await
    }

    async fn job(&self, name: &str) -> Result<Option<LaneJob>, JournalError> {
        let name = name.to_string();
        self.with(move |connection| read_job(connection, &name))
            .await
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
        self.with(|connection| {
            let lanes: Vec<Lane> = connection
                .prepare_cached(
                    "SELECT pipeline, environment FROM pauses ORDER BY pipeline, environment",
                )?
                .query_map([], |row| {
                    Ok(Lane {
                        pipeline: row.get(0)?,
                        environment: row.get(1)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut holds = Vec::with_capacity(lanes.len());
            for lane in &lanes {
                holds.extend(read_hold(connection, lane)?);
            }
            Ok(holds)
        })
        .await
    }

    async fn hold(&self, lane: &Lane) -> Result<Option<Hold>, JournalError> {
        let lane = lane.clone();
        self.with(move |connection| read_hold(connection, &lane))
            .await
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

    async fn prune(&self, retention: Retention) -> Result<(), JournalError> {
        self.with(move |connection| {
            let cutoff = now_ms() - retention.keep_secs * 1000;
            let keep = retention.keep_count as i64;
            connection.execute(
                "DELETE FROM sessions WHERE expires_at <= ?1",
                [now_ms() / 1000],
            )?;
            connection.execute(
                "DELETE FROM deliveries WHERE received_at < ?1 OR rowid NOT IN
                     (SELECT rowid FROM deliveries ORDER BY received_at DESC LIMIT ?2)",
                params![cutoff, keep],
            )?;
            // A job still waiting is kept while a queue may still hold it (SQS keeps a
            // message 14 days at most).
            connection.execute(
                "DELETE FROM lane_jobs WHERE (state != 'waiting'
                     AND (updated_at < ?1 OR name NOT IN
                         (SELECT name FROM lane_jobs ORDER BY seq DESC LIMIT ?2)))
                     OR updated_at < ?3",
                params![cutoff, keep, now_ms() - 14 * 24 * 3600 * 1000],
            )?;
            Ok(())
        })
        .await
    }

    async fn open_session(&self, session: &SessionRecord) -> Result<(), JournalError> {
        let session = session.clone();
        self.with(move |connection| {
            connection.execute(
                "INSERT OR REPLACE INTO sessions (id_digest, token_digest, csrf, expires_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    session.id_digest,
                    session.token_digest,
                    session.csrf,
                    session.expires_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn session(&self, id_digest: &str) -> Result<Option<SessionRecord>, JournalError> {
        let id_digest = id_digest.to_string();
        self.with(move |connection| {
            connection
                .prepare_cached(
                    "SELECT id_digest, token_digest, csrf, expires_at FROM sessions
                     WHERE id_digest = ?1 AND expires_at > ?2",
                )?
                .query_row(params![id_digest, now_ms() / 1000], |row| {
                    Ok(SessionRecord {
                        id_digest: row.get(0)?,
                        token_digest: row.get(1)?,
                        csrf: row.get(2)?,
                        expires_at: row.get(3)?,
                    })
                })
                .optional()
        })
        .await
    }

    async fn end_session(&self, id_digest: &str) -> Result<(), JournalError> {
        let id_digest = id_digest.to_string();
        self.with(move |connection| {
            connection.execute("DELETE FROM sessions WHERE id_digest = ?1", [id_digest])?;
            Ok(())
        })
        .await
    }

    async fn end_sessions_except(&self, token_digests: &[String]) -> Result<usize, JournalError> {
        let keep = token_digests.to_vec();
        self.with(move |connection| {
            let transaction = connection.transaction()?;
            let opened: Vec<(String, String)> = transaction
                .prepare("SELECT id_digest, token_digest FROM sessions")?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut ended = 0;
            for (id_digest, token_digest) in opened {
                if !keep.contains(&token_digest) {
                    ended += transaction
                        .execute("DELETE FROM sessions WHERE id_digest = ?1", [id_digest])?;
                }
            }
            transaction.commit()?;
            Ok(ended)
        })
        .await
    }
}
