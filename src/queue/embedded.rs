//! The embedded queue: a SQLite file with SQS semantics.
//!
//! One writer task owns the connection and runs every operation; operations that
//! arrive while a transaction is being written wait and share the next one, so
//! concurrent webhook requests share one commit (one fsync) instead of paying one
//! each. Replies are sent only after the commit, so "sent" still means "on disk". Each
//! transaction runs on the blocking pool (`spawn_blocking`), never on an async thread;
//! tokio also holds a paused test clock still while one runs, so timed tests see the
//! queue's operations take no time.

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Capabilities, Message, Queue, QueueError, Receipt, Received};

/// Operations written in one transaction at most; more wait for the next.
const MAX_BATCH: usize = 1024;

/// A waiting receiver looks at the file at least this often, for messages sent by
/// another process.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// While the file cannot be written, the writer tries a write this often.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of the embedded queue (`[queue]` with `type = "embedded"`).
#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    pub path: PathBuf,
    pub visibility_timeout: Duration,
    /// A message received this many times without an ack is dead-lettered on the next
    /// receive (SQS's `maxReceiveCount`).
    pub max_receives: u32,
}

/// A dead-lettered message, as `gitdispatch dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Position in the dead-letter table; `redrive` takes it.
    pub seq: i64,
    pub message: Message,
    pub receive_count: u32,
    pub reason: String,
    /// Milliseconds since the Unix epoch.
    pub dead_at_ms: i64,
}

/// How many messages are where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Depth {
    pub visible: u64,
    pub in_flight: u64,
    pub dead: u64,
}

/// Wall-clock milliseconds that follow tokio's clock, so that tests with paused time
/// move the queue's clock too.
#[derive(Debug, Clone, Copy)]
struct Clock {
    wall_base_ms: i64,
    instant_base: Instant,
}

impl Clock {
    fn new() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        Clock {
            wall_base_ms: wall,
            instant_base: Instant::now(),
        }
    }

    fn now_ms(&self) -> i64 {
        self.wall_base_ms + self.instant_base.elapsed().as_millis() as i64
    }

    fn instant_at(&self, ms: i64) -> Instant {
        let offset = (ms - self.wall_base_ms).max(0) as u64;
        self.instant_base + Duration::from_millis(offset)
    }
}

fn millis(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
}

type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

struct ReceiveOutcome {
    received: Vec<Received>,
    /// When the next invisible message becomes visible, to wake a waiting receiver.
    next_visible_at: Option<i64>,
}

enum Command {
    Send {
        messages: Vec<Message>,
        now: i64,
        reply: Reply<()>,
    },
    Receive {
        max: usize,
        now: i64,
        visibility: i64,
        max_receives: u32,
        reply: Reply<ReceiveOutcome>,
    },
    Ack {
        receipt: String,
        reply: Reply<()>,
    },
    SetVisibleAt {
        receipt: String,
        visible_at: i64,
        reply: Reply<()>,
    },
    DeadLetter {
        receipt: String,
        reason: String,
        now: i64,
        reply: Reply<()>,
    },
    ListDead {
        reply: Reply<Vec<DeadLetter>>,
    },
    Redrive {
        seqs: Option<Vec<i64>>,
        now: i64,
        reply: Reply<usize>,
    },
    Depth {
        now: i64,
        reply: Reply<Depth>,
    },
    /// A write that changes nothing visible, to learn whether the file can be written.
    Probe,
    /// Makes the writer fail as a bug would, to test what notices it.
    #[cfg(test)]
    Panic,
}

/// What the writer task tells the rest of the process about itself.
#[derive(Default)]
struct WriterHealth {
    /// Why the writer stopped; set once, when it did.
    stopped: std::sync::OnceLock<String>,
    /// Cancelled when the writer stopped.
    stopped_signal: CancellationToken,
    /// The error of the last transaction, until one commits again (a full disk, a
    /// file that cannot be written).
    failing: std::sync::Mutex<Option<String>>,
}

/// The SQLite-backed queue.
pub struct EmbeddedQueue {
    commands: mpsc::UnboundedSender<Command>,
    health: Arc<WriterHealth>,
    /// Woken whenever a message may have become receivable (send, ack, release).
    arrivals: Arc<Notify>,
    clock: Clock,
    settings: EmbeddedSettings,
}

impl EmbeddedQueue {
    /// Opens (creating if needed) the queue file and starts its writer thread.
    pub async fn open(settings: EmbeddedSettings) -> Result<EmbeddedQueue, QueueError> {
        let path = settings.path.clone();
        let connection = tokio::task::spawn_blocking(move || open_connection(&path))
            .await
            .map_err(|error| QueueError::Unavailable(format!("cannot open the queue: {error}")))?
            .map_err(|error| {
                QueueError::Unavailable(format!(
                    "cannot open queue file {}: {error}",
                    settings.path.display()
                ))
            })?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let health = Arc::new(WriterHealth::default());
        tokio::spawn(writer(connection, receiver, health.clone()));
        Ok(EmbeddedQueue {
            commands,
            health,
            arrivals: Arc::new(Notify::new()),
            clock: Clock::new(),
            settings,
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, QueueError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| QueueError::Unavailable("the queue writer stopped".to_string()))?;
        answer
            .await
            .map_err(|_| QueueError::Unavailable("the queue writer stopped".to_string()))?
    }

    /// Resolves when the writer task has stopped (it never does while the process is
    /// sound): the queue then refuses everything, and the daemon should exit so that a
    /// supervisor restarts it. Returns why it stopped.
    pub async fn writer_stopped(&self) -> String {
        self.health.stopped_signal.cancelled().await;
        self.health
            .stopped
            .get()
            .cloned()
            .unwrap_or_else(|| "the queue writer stopped".to_string())
    }

    /// Every dead-lettered message, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.call(|reply| Command::ListDead { reply }).await
    }

    /// Moves dead letters (all, or those named) back onto the queue with a fresh
    /// receive count; returns how many were moved.
    pub async fn redrive(&self, seqs: Option<Vec<i64>>) -> Result<usize, QueueError> {
        let now = self.clock.now_ms();
        let moved = self
            .call(|reply| Command::Redrive { seqs, now, reply })
            .await?;
        self.arrivals.notify_waiters();
        Ok(moved)
    }

    pub async fn depth(&self) -> Result<Depth, QueueError> {
        let now = self.clock.now_ms();
        self.call(|reply| Command::Depth { now, reply }).await
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn send(&self, messages: &[Message]) -> Result<(), QueueError> {
        if messages.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let messages = messages.to_vec();
        self.call(|reply| Command::Send {
            messages,
            now,
            reply,
        })
        .await?;
        self.arrivals.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        loop {
            // Registered before looking, so an arrival between the look and the wait
            // still wakes us.
            let mut notified = pin!(self.arrivals.notified());
            notified.as_mut().enable();
            let now = self.clock.now_ms();
            let visibility = millis(self.settings.visibility_timeout);
            let max_receives = self.settings.max_receives;
            let outcome = self
                .call(|reply| Command::Receive {
                    max,
                    now,
                    visibility,
                    max_receives,
                    reply,
                })
                .await?;
            if !outcome.received.is_empty() || Instant::now() >= deadline {
                return Ok(outcome.received);
            }
            // Another process (a separate `listen`) may send without waking us: look
            // again at least every POLL_INTERVAL.
            let wake_at = outcome
                .next_visible_at
                .map_or(deadline, |ms| self.clock.instant_at(ms).min(deadline))
                .min(Instant::now() + POLL_INTERVAL);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), QueueError> {
        let receipt = receipt.0.clone();
        self.call(|reply| Command::Ack { receipt, reply }).await?;
        // An ack can unblock the next message of its group.
        self.arrivals.notify_waiters();
        Ok(())
    }

    async fn release(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError> {
        let receipt = receipt.0.clone();
        let visible_at = self.clock.now_ms() + millis(delay);
        self.call(|reply| Command::SetVisibleAt {
            receipt,
            visible_at,
            reply,
        })
        .await?;
        self.arrivals.notify_waiters();
        Ok(())
    }

    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), QueueError> {
        let receipt = receipt.0.clone();
        let visible_at = self.clock.now_ms() + millis(visibility);
        self.call(|reply| Command::SetVisibleAt {
            receipt,
            visible_at,
            reply,
        })
        .await
    }

    async fn dead_letter(&self, received: &Received, reason: &str) -> Result<(), QueueError> {
        let receipt = received.receipt.0.clone();
        let reason = reason.to_string();
        let now = self.clock.now_ms();
        self.call(|reply| Command::DeadLetter {
            receipt,
            reason,
            now,
            reply,
        })
        .await?;
        self.arrivals.notify_waiters();
        Ok(())
    }

    fn visibility_timeout(&self) -> Duration {
        self.settings.visibility_timeout
    }

    fn max_receives(&self) -> Option<u32> {
        Some(self.settings.max_receives)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordering_groups: true,
            deduplication: true,
        }
    }

    fn health(&self) -> Result<(), String> {
        if let Some(reason) = self.health.stopped.get() {
            return Err(reason.clone());
        }
        match &*self.health.failing.lock().expect("queue health lock") {
            Some(error) => Err(format!("the queue file cannot be written: {error}")),
            None => Ok(()),
        }
    }
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let connection = crate::sqlite::open_durable(path)?;
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS jobs (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             id TEXT NOT NULL UNIQUE,
             grp TEXT,
             body TEXT NOT NULL,
             visible_at INTEGER NOT NULL,
             receive_count INTEGER NOT NULL DEFAULT 0,
             receipt TEXT,
             sent_at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS jobs_by_group ON jobs (grp, seq);
         CREATE INDEX IF NOT EXISTS jobs_by_receipt ON jobs (receipt);
         CREATE TABLE IF NOT EXISTS dead_letters (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             id TEXT NOT NULL,
             grp TEXT,
             body TEXT NOT NULL,
             receive_count INTEGER NOT NULL,
             reason TEXT NOT NULL,
             sent_at INTEGER NOT NULL,
             dead_at INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);",
    )?;
    Ok(connection)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// A reply waiting for the commit of its transaction.
type Pending = Box<dyn FnOnce(Option<&str>) + Send>;

fn pending<T: Send + 'static>(reply: Reply<T>, result: rusqlite::Result<T>) -> Pending {
    Box::new(move |commit_error: Option<&str>| {
        let answer = match (commit_error, result) {
            (Some(error), _) => Err(QueueError::Unavailable(format!("commit failed: {error}"))),
            (None, Ok(value)) => Ok(value),
            (None, Err(error)) => Err(QueueError::Unavailable(error.to_string())),
        };
        let _ = reply.send(answer);
    })
}

/// Takes the commands that are waiting, runs them as one transaction on the blocking
/// pool, and starts again. If it ever stops, it says so in `health`: callers then get
/// errors, readiness fails and the daemon exits.
async fn writer(
    connection: Connection,
    mut commands: mpsc::UnboundedReceiver<Command>,
    health: Arc<WriterHealth>,
) {
    let mut connection = Some(connection);
    let reason = loop {
        let failing = health.failing.lock().expect("queue health lock").is_some();
        let first = if failing {
            // While the file cannot be written, try a write now and then even when
            // nothing asks for one: readiness must come back when the disk does,
            // though a load balancer sends nothing to an unready listener.
            match tokio::time::timeout(PROBE_INTERVAL, commands.recv()).await {
                Ok(command) => command,
                Err(_) => Some(Command::Probe),
            }
        } else {
            commands.recv().await
        };
        let Some(first) = first else {
            break "the queue was closed".to_string();
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match commands.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let Some(mut owned) = connection.take() else {
            break "the queue writer lost its connection".to_string();
        };
        match tokio::task::spawn_blocking(move || {
            let outcome = write_batch(&mut owned, batch);
            (owned, outcome)
        })
        .await
        {
            Ok((returned, outcome)) => {
                connection = Some(returned);
                let mut failing = health.failing.lock().expect("queue health lock");
                match outcome {
                    Ok(()) => {
                        if failing.take().is_some() {
                            tracing::info!("The queue file can be written again.");
                        }
                    }
                    Err(error) => {
                        if failing.is_none() {
                            tracing::error!(%error, "The queue file cannot be written; deliveries are refused with 503 until it can.");
                        }
                        *failing = Some(error);
                    }
                }
            }
            Err(error) => {
                // The connection went with the failed task; callers now get errors.
                break format!("the queue writer failed: {error}");
            }
        }
    };
    tracing::error!(%reason, "The queue writer stopped.");
    let _ = health.stopped.set(reason);
    health.stopped_signal.cancel();
}

/// Runs a batch as one transaction and answers each command; the transaction's own
/// error (beginning or committing it), if any.
fn write_batch(connection: &mut Connection, batch: Vec<Command>) -> Result<(), String> {
    let mut transaction = match connection.transaction_with_behavior(TransactionBehavior::Immediate)
    {
        Ok(transaction) => transaction,
        Err(error) => {
            let message = error.to_string();
            for command in batch {
                fail(command, &message);
            }
            return Err(message);
        }
    };
    let mut replies: Vec<Pending> = Vec::with_capacity(batch.len());
    let mut probe_error = None;
    for command in batch {
        if let Command::Probe = command {
            let probed = transaction
                .prepare_cached("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?1)")
                .and_then(|mut statement| statement.execute([now_ms()]));
            if let Err(error) = probed {
                probe_error = Some(error.to_string());
            }
            continue;
        }
        replies.push(execute(&mut transaction, command));
    }
    let commit_error = transaction.commit().err().map(|error| error.to_string());
    for reply in replies {
        reply(commit_error.as_deref());
    }
    match commit_error.or(probe_error) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn fail(command: Command, message: &str) {
    let error = || QueueError::Unavailable(message.to_string());
    match command {
        Command::Send { reply, .. }
        | Command::Ack { reply, .. }
        | Command::SetVisibleAt { reply, .. }
        | Command::DeadLetter { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Command::Receive { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Command::ListDead { reply } => {
            let _ = reply.send(Err(error()));
        }
        Command::Redrive { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Command::Depth { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Command::Probe => {}
        #[cfg(test)]
        Command::Panic => {}
    }
}

/// Runs one command in its own savepoint, so that a failing command leaves the others
/// of the batch intact.
fn execute(transaction: &mut Transaction<'_>, command: Command) -> Pending {
    fn in_savepoint<T>(
        transaction: &mut Transaction<'_>,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let savepoint = transaction.savepoint()?;
        let result = work(&savepoint);
        match result {
            Ok(value) => {
                savepoint.commit()?;
                Ok(value)
            }
            // Dropping the savepoint rolls it back.
            Err(error) => Err(error),
        }
    }
    match command {
        Command::Send {
            messages,
            now,
            reply,
        } => pending(
            reply,
            in_savepoint(transaction, |tx| send(tx, &messages, now)),
        ),
        Command::Receive {
            max,
            now,
            visibility,
            max_receives,
            reply,
        } => pending(
            reply,
            in_savepoint(transaction, |tx| {
                receive(tx, max, now, visibility, max_receives)
            }),
        ),
        Command::Ack { receipt, reply } => pending(
            reply,
            in_savepoint(transaction, |tx| {
                tx.prepare_cached("DELETE FROM jobs WHERE receipt = ?1")?
                    .execute([&receipt])
                    .map(|_| ())
            }),
        ),
        Command::SetVisibleAt {
            receipt,
            visible_at,
            reply,
        } => pending(
            reply,
            in_savepoint(transaction, |tx| {
                tx.prepare_cached("UPDATE jobs SET visible_at = ?2 WHERE receipt = ?1")?
                    .execute(params![receipt, visible_at])
                    .map(|_| ())
            }),
        ),
        Command::DeadLetter {
            receipt,
            reason,
            now,
            reply,
        } => pending(
            reply,
            in_savepoint(transaction, |tx| {
                let seq: Option<i64> = tx
                    .prepare_cached("SELECT seq FROM jobs WHERE receipt = ?1")?
                    .query_row([&receipt], |row| row.get(0))
                    .optional()?;
                if let Some(seq) = seq {
                    move_to_dead_letters(tx, seq, &reason, now)?;
                }
                Ok(())
            }),
        ),
        Command::ListDead { reply } => pending(reply, list_dead(transaction)),
        Command::Redrive { seqs, now, reply } => pending(
            reply,
            in_savepoint(transaction, |tx| redrive(tx, seqs.as_deref(), now)),
        ),
        Command::Depth { now, reply } => pending(reply, depth(transaction, now)),
        // Run by write_batch itself, which needs its outcome.
        Command::Probe => Box::new(|_: Option<&str>| {}),
        #[cfg(test)]
        Command::Panic => panic!("a writer bug"),
    }
}

fn send(tx: &Connection, messages: &[Message], now: i64) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO jobs (id, grp, body, visible_at, receive_count, sent_at)
         VALUES (?1, ?2, ?3, ?4, 0, ?4)",
    )?;
    for message in messages {
        insert.execute(params![message.id, message.group, message.body, now])?;
    }
    Ok(())
}

fn receive(
    tx: &Connection,
    max: usize,
    now: i64,
    visibility: i64,
    max_receives: u32,
) -> rusqlite::Result<ReceiveOutcome> {
    // A receivable message: visible, and, in a group, the oldest of its group still
    // queued (while that one is in flight or delayed, the group waits).
    const RECEIVABLE: &str = "visible_at <= ?1
        AND (grp IS NULL OR seq = (SELECT MIN(seq) FROM jobs AS k WHERE k.grp = j.grp))";

    // First dead-letter every receivable message already received max_receives times
    // (SQS moves such a message when it would hand it out again). Dead-lettering a
    // group's oldest makes the next one receivable: repeat until none is left.
    let mut exhausted = tx.prepare_cached(&format!(
        "SELECT seq, id, receive_count FROM jobs AS j WHERE {RECEIVABLE} AND receive_count >= ?2"
    ))?;
    loop {
        let rows: Vec<(i64, String, u32)> = exhausted
            .query_map(params![now, max_receives], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        if rows.is_empty() {
            break;
        }
        for (seq, id, receive_count) in rows {
            let reason = format!(
                "received {receive_count} times without being acknowledged (max_receives = {max_receives})"
            );
            move_to_dead_letters(tx, seq, &reason, now)?;
            tracing::warn!(job = %id, receive_count, "Dead-lettered a job received too often.");
        }
    }

    let mut candidates = tx.prepare_cached(&format!(
        "SELECT seq, id, grp, body, receive_count FROM jobs AS j WHERE {RECEIVABLE}
         ORDER BY seq LIMIT ?2"
    ))?;
    let rows: Vec<(i64, String, Option<String>, String, u32)> = candidates
        .query_map(params![now, max as i64], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut lease = tx.prepare_cached(
        "UPDATE jobs SET receive_count = receive_count + 1, receipt = ?2, visible_at = ?3
         WHERE seq = ?1",
    )?;
    let mut received = Vec::with_capacity(rows.len());
    for (seq, id, group, body, receive_count) in rows {
        let receipt = uuid::Uuid::new_v4().to_string();
        lease.execute(params![seq, receipt, now + visibility])?;
        received.push(Received {
            receipt: Receipt(receipt),
            message: Message { id, group, body },
            receive_count: receive_count + 1,
        });
    }
    let next_visible_at: Option<i64> = tx
        .prepare_cached("SELECT MIN(visible_at) FROM jobs WHERE visible_at > ?1")?
        .query_row([now], |row| row.get(0))?;
    Ok(ReceiveOutcome {
        received,
        next_visible_at,
    })
}

fn move_to_dead_letters(tx: &Connection, seq: i64, reason: &str, now: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO dead_letters (id, grp, body, receive_count, reason, sent_at, dead_at)
         SELECT id, grp, body, receive_count, ?2, sent_at, ?3 FROM jobs WHERE seq = ?1",
    )?
    .execute(params![seq, reason, now])?;
    tx.prepare_cached("DELETE FROM jobs WHERE seq = ?1")?
        .execute([seq])?;
    Ok(())
}

fn list_dead(tx: &Connection) -> rusqlite::Result<Vec<DeadLetter>> {
    let mut statement = tx.prepare_cached(
        "SELECT seq, id, grp, body, receive_count, reason, dead_at FROM dead_letters ORDER BY seq",
    )?;
    statement
        .query_map([], |row| {
            Ok(DeadLetter {
                seq: row.get(0)?,
                message: Message {
                    id: row.get(1)?,
                    group: row.get(2)?,
                    body: row.get(3)?,
                },
                receive_count: row.get(4)?,
                reason: row.get(5)?,
                dead_at_ms: row.get(6)?,
            })
        })?
        .collect()
}

fn redrive(tx: &Connection, seqs: Option<&[i64]>, now: i64) -> rusqlite::Result<usize> {
    let all: Vec<i64> = match seqs {
        Some(seqs) => seqs.to_vec(),
        None => tx
            .prepare_cached("SELECT seq FROM dead_letters ORDER BY seq")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?,
    };
    let mut moved = 0;
    for seq in all {
        // A job with the same id already queued stands for this one.
        let inserted = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO jobs (id, grp, body, visible_at, receive_count, sent_at)
                 SELECT id, grp, body, ?2, 0, sent_at FROM dead_letters WHERE seq = ?1",
            )?
            .execute(params![seq, now])?;
        let deleted = tx
            .prepare_cached("DELETE FROM dead_letters WHERE seq = ?1")?
            .execute([seq])?;
        if deleted > 0 && inserted > 0 {
            moved += 1;
        }
    }
    Ok(moved)
}

fn depth(tx: &Connection, now: i64) -> rusqlite::Result<Depth> {
    let (visible, in_flight): (i64, i64) = tx
        .prepare_cached(
            "SELECT COALESCE(SUM(visible_at <= ?1), 0), COALESCE(SUM(visible_at > ?1), 0) FROM jobs",
        )?
        .query_row([now], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let dead: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM dead_letters")?
        .query_row([], |row| row.get(0))?;
    Ok(Depth {
        visible: visible as u64,
        in_flight: in_flight as u64,
        dead: dead as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writer_that_dies_is_noticed() {
        let directory = tempfile::tempdir().unwrap();
        let queue = EmbeddedQueue::open(EmbeddedSettings {
            path: directory.path().join("queue.db"),
            visibility_timeout: Duration::from_secs(30),
            max_receives: 5,
        })
        .await
        .unwrap();
        assert_eq!(queue.health(), Ok(()));
        queue.commands.send(Command::Panic).unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(10), queue.writer_stopped())
            .await
            .expect("the writer's end is signalled");
        assert!(reason.contains("the queue writer failed"), "{reason}");
        assert!(queue.health().is_err(), "readiness reflects it");
        let message = Message {
            id: "a".into(),
            group: None,
            body: "{}".into(),
        };
        assert!(matches!(
            queue.send(&[message]).await,
            Err(QueueError::Unavailable(_))
        ));
    }
}
