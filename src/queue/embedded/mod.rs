//! The embedded queue: a SQLite file with SQS semantics.
//!
//! One writer task owns the connection and runs every operation; operations that
//! arrive while a transaction is being written wait and share the next one, so
//! concurrent webhook requests share one commit (one fsync) instead of paying one
//! each. Replies are sent only after the commit, so "sent" still means "on disk". Each
//! transaction runs on the blocking pool (`spawn_blocking`), never on an async thread;
//! tokio also holds a paused test clock still while one runs, so timed tests see the
//! queue's operations take no time.

mod store;
mod writer;

use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::{Capabilities, Message, Queue, QueueError, Receipt, Received};
use crate::clock::Clock;
use crate::config::{Config, Problem, QueueConfig};
use store::open_connection;
use writer::{Command, Reply, WriterHealth, writer};

/// A waiting receiver looks at the file at least this often, for messages sent by
/// another process.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// What the embedded queue needs of the configuration.
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let QueueConfig::Embedded {
        visibility_timeout_secs,
        max_receives,
        ..
    } = &config.queue
    {
        if *visibility_timeout_secs == 0 {
            problems.push(Problem::new(
                "queue.visibility_timeout_secs",
                "must be above 0",
            ));
        }
        if *max_receives == 0 {
            problems.push(Problem::new("queue.max_receives", "must be above 0"));
        }
    }
    problems
}

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

pub use super::Depth;

fn millis(duration: Duration) -> i64 {
    duration.as_millis().min(i64::MAX as u128) as i64
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
            .map_err(|error| QueueError::unavailable_from("cannot open the queue", error))?
            .map_err(|error| {
                QueueError::unavailable_from(
                    format!("cannot open queue file {}", settings.path.display()),
                    error,
                )
            })?;
        let (commands, receiver) = mpsc::unbounded_channel();
        let health = Arc::new(WriterHealth::default());
        tokio::spawn(writer(connection, receiver, health.clone()));
        // The writer's commits fsync the WAL alone; checkpoints run beside them, for
        // as long as the queue is open.
        let open = commands.downgrade();
        crate::sqlite::checkpoint_periodically(settings.path.clone(), move || {
            open.upgrade().is_some()
        });
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
            .map_err(|_| QueueError::unavailable("the queue writer stopped".to_string()))?;
        answer
            .await
            .map_err(|_| QueueError::unavailable("the queue writer stopped".to_string()))?
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

#[async_trait]
impl super::QueueAdmin for EmbeddedQueue {
    async fn view(&self) -> Result<crate::operator::QueueView, QueueError> {
        let dead = self.dead_letters().await?;
        Ok(crate::operator::QueueView {
            kind: Some("embedded".into()),
            depth: Some(self.depth().await?.into()),
            dead_letters: dead
                .into_iter()
                .map(|dead| crate::operator::DeadLetterView {
                    seq: dead.seq,
                    id: dead.message.id,
                    reason: dead.reason,
                    receive_count: dead.receive_count,
                    dead_at_ms: dead.dead_at_ms,
                })
                .collect(),
            ..crate::operator::QueueView::default()
        })
    }

    async fn redrive_all(&self) -> Result<Option<usize>, QueueError> {
        self.redrive(None).await.map(Some)
    }
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
            Err(QueueError::Unavailable { .. })
        ));
    }
}
