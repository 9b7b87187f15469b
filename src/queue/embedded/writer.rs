//! The writer task: it owns the connection, takes the operations that are waiting and
//! runs them as one transaction on the blocking pool, then answers each after the
//! commit, so concurrent senders share one fsync and "sent" still means "on disk".

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::store::{depth, list_dead, move_to_dead_letters, now_ms, receive, redrive, send};
use super::{DeadLetter, Depth};
use crate::queue::{Message, QueueError, Received};

/// Operations written in one transaction at most; more wait for the next.
pub(super) const MAX_BATCH: usize = 1024;

/// While the file cannot be written, the writer tries a write this often.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

pub(super) type Reply<T> = oneshot::Sender<Result<T, QueueError>>;

pub(super) struct ReceiveOutcome {
    pub(super) received: Vec<Received>,
    /// When the next invisible message becomes visible, to wake a waiting receiver.
    pub(super) next_visible_at: Option<i64>,
}

pub(super) enum Command {
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
pub(super) struct WriterHealth {
    /// Why the writer stopped; set once, when it did.
    pub(super) stopped: std::sync::OnceLock<String>,
    /// Cancelled when the writer stopped.
    pub(super) stopped_signal: CancellationToken,
    /// The error of the last transaction, until one commits again (a full disk, a
    /// file that cannot be written).
    pub(super) failing: std::sync::Mutex<Option<String>>,
}

/// A reply waiting for the commit of its transaction.
pub(super) type Pending = Box<dyn FnOnce(Option<&str>) + Send>;

pub(super) fn pending<T: Send + 'static>(reply: Reply<T>, result: rusqlite::Result<T>) -> Pending {
    Box::new(move |commit_error: Option<&str>| {
        let answer = match (commit_error, result) {
            (Some(error), _) => Err(QueueError::unavailable(format!("commit failed: {error}"))),
            (None, Ok(value)) => Ok(value),
            (None, Err(error)) => Err(QueueError::unavailable_from("the queue file", error)),
        };
        let _ = reply.send(answer);
    })
}

/// Why the writer stopped.
enum Stop {
    /// Every handle to the queue was dropped.
    Closed,
    Failed(String),
}

/// Takes the commands that are waiting, runs them as one transaction on the blocking
/// pool, and starts again. If it ever stops, it says so in `health`: callers then get
/// errors, readiness fails and the daemon exits.
pub(super) async fn writer(
    connection: Connection,
    mut commands: mpsc::UnboundedReceiver<Command>,
    health: Arc<WriterHealth>,
) {
    let mut connection = Some(connection);
    let stop = loop {
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
            // Every handle was dropped: the process is stopping, and nothing is lost.
            break Stop::Closed;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match commands.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let Some(mut owned) = connection.take() else {
            break Stop::Failed("the queue writer lost its connection".to_string());
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
                break Stop::Failed(format!("the queue writer failed: {error}"));
            }
        }
    };
    let reason = match stop {
        Stop::Closed => {
            tracing::debug!("The queue writer stopped: the queue was closed.");
            "the queue was closed".to_string()
        }
        Stop::Failed(reason) => {
            tracing::error!(%reason, "The queue writer stopped.");
            reason
        }
    };
    let _ = health.stopped.set(reason);
    health.stopped_signal.cancel();
}

/// Runs a batch as one transaction and answers each command; the transaction's own
/// error (beginning or committing it), if any.
pub(super) fn write_batch(connection: &mut Connection, batch: Vec<Command>) -> Result<(), String> {
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

pub(super) fn fail(command: Command, message: &str) {
    let error = || QueueError::unavailable(message.to_string());
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
pub(super) fn execute(transaction: &mut Transaction<'_>, command: Command) -> Pending {
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
