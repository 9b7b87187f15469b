//! Where jobs wait between the listener and the worker.
//!
//! The [`Queue`] trait has SQS semantics, whatever the backend: a send is durable when
//! it returns; a received message is invisible for a visibility timeout and comes back
//! unless acknowledged; each receive counts, and a message received too often without
//! being acknowledged is dead-lettered; messages of one ordering group are handed out
//! in send order, and none of a group while an earlier one is in flight (one receive
//! may hand out several of a group, in order, as SQS FIFO does: the worker then runs
//! them one after the other). Several received messages may share one receipt (SQS's
//! envelopes, `sqs`): each of them is settled once, with that receipt; the shared
//! message leaves the queue once all are acknowledged or dead-lettered, and comes back
//! whole, all of them, when one is released.

pub mod embedded;
pub mod sqs;

use crate::config::{Config, Problem, QueueConfig};
use crate::error::BoxError;

/// What the configured queue backend needs of the configuration.
pub fn check(config: &Config) -> Vec<Problem> {
    match &config.queue {
        QueueConfig::Embedded { .. } => embedded::check(config),
        QueueConfig::Sqs { .. } => sqs::check(config),
    }
}

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::job::Job;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The backend could not be reached or failed; the operation may be retried.
    #[error("queue is unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The message can never be sent as it is.
    #[error("message {id} is refused: {reason}")]
    Refused { id: String, reason: String },
}

impl QueueError {
    pub fn unavailable(message: impl Into<String>) -> QueueError {
        QueueError::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// Unavailable because of `source`, which the error keeps.
    pub fn unavailable_from(message: impl Into<String>, source: impl Into<BoxError>) -> QueueError {
        QueueError::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// One message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Deduplication id: a second message with the id of one still queued is dropped.
    pub id: String,
    /// Ordering group, or `None` for a message that may run in any order.
    pub group: Option<String>,
    pub body: String,
}

impl Message {
    pub fn from_job(job: &Job) -> Message {
        let body = job.to_body();
        Message {
            id: job.id(),
            group: job.group(),
            body: escape_noncharacters(body),
        }
    }
}

/// Writes U+FFFE and U+FFFF, which SQS refuses in a message body, as JSON escapes: they
/// can only occur inside JSON strings, where the escape reads back as the same
/// character. A commit message holding one must not make its job unsendable.
fn escape_noncharacters(body: String) -> String {
    if !body.contains(['\u{fffe}', '\u{ffff}']) {
        return body;
    }
    body.replace('\u{fffe}', "\\ufffe")
        .replace('\u{ffff}', "\\uffff")
}

/// Proof of one receive of a message; acknowledging or releasing needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Receipt(pub String);

impl fmt::Debug for Receipt {
    /// Receipts are long and say nothing to a reader; show a prefix only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: String = self.0.chars().take(12).collect();
        write!(f, "Receipt({shown}…)")
    }
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Received {
    pub receipt: Receipt,
    pub message: Message,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
    /// When it was sent (milliseconds since the epoch), when the backend says.
    pub sent_at_ms: Option<i64>,
    /// Whether other messages share its receipt (an envelope's): giving the receipt
    /// back would bring them all back and count a receive against each, so a failure
    /// of this one is retried in place.
    pub shared: bool,
}

/// What a backend can promise beyond at-least-once delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Messages of one group go out in send order, none while an earlier one is in
    /// flight (one receive may hand out several, in order).
    pub ordering_groups: bool,
    /// A message with the id of one still queued is dropped.
    pub deduplication: bool,
}

/// A durable, at-least-once queue with SQS semantics.
#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends every message; returns once all are durable. On error, some may have been
    /// sent: sending the same messages again is safe (ids deduplicate, names make
    /// executions idempotent).
    async fn send(&self, messages: &[Message]) -> Result<(), QueueError>;

    /// Receives up to `max` messages, waiting up to `wait` for the first.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError>;

    /// Deletes a message whose effect is durable.
    async fn ack(&self, receipt: &Receipt) -> Result<(), QueueError>;

    /// Makes a message visible again after `delay` (retry later).
    async fn release(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError>;

    /// Keeps a message invisible for `visibility` from now (a heartbeat for long jobs).
    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), QueueError>;

    /// Moves a message that can never succeed to the dead letters, with the reason.
    async fn dead_letter(&self, received: &Received, reason: &str) -> Result<(), QueueError>;

    /// How long a received message stays invisible unless extended.
    fn visibility_timeout(&self) -> Duration;

    /// How many receives a message gets before it is dead-lettered, when the queue
    /// dead-letters at all.
    fn max_receives(&self) -> Option<u32>;

    fn capabilities(&self) -> Capabilities;

    /// Whether the queue can take work now; the reason when it cannot. Readiness
    /// reports it.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

/// What an operator asks of the queue, whichever it is: the listener never asks which.
#[async_trait]
pub trait QueueAdmin: Send + Sync {
    /// Its kind, depth and dead letters.
    async fn view(&self) -> Result<crate::operator::QueueView, QueueError>;

    /// Puts every dead letter back on the queue, with a fresh receive count; how many.
    /// `None` where the queue's own console does it (SQS: StartMessageMoveTask).
    async fn redrive_all(&self) -> Result<Option<usize>, QueueError>;
}

/// How many messages are where: waiting to be received, received and not yet
/// acknowledged, dead-lettered. (SQS's figures are its approximate counts.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Depth {
    pub visible: u64,
    pub in_flight: u64,
    pub dead: u64,
}

impl From<Depth> for crate::operator::DepthView {
    fn from(depth: Depth) -> crate::operator::DepthView {
        crate::operator::DepthView {
            visible: depth.visible,
            in_flight: depth.in_flight,
            dead: depth.dead,
        }
    }
}

/// Puts jobs on a queue: the listener's one use of it.
pub async fn enqueue(queue: &dyn Queue, jobs: &[Job]) -> Result<(), QueueError> {
    let messages: Vec<Message> = jobs.iter().map(Message::from_job).collect();
    queue.send(&messages).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_never_hold_characters_sqs_refuses_and_read_back_the_same() {
        let body = r#"{"v":1,"type":"start","request":{"pipeline":"deploy","name":"deploy-ci-0123456-0123456789abcdef0123","group":null,"environment":"ci","action":"deploy","input":"{\"m\":\"x\"}","origin":{"source":"github","delivery":"d","repository":"acme/api","git_ref":"refs/heads/main","commit":"0123456789abcdef0123456789abcdef01234567"}}}"#;
        let crate::job::Read::Job(job) = Job::read(body) else {
            panic!("not a job");
        };
        let mut job = *job;
        let crate::job::JobKind::Start { request } = &mut job.kind else {
            panic!("a start job");
        };
        let input = "{\"m\":\"odd \u{fffe} and \u{ffff} in a message\"}";
        request.input = crate::execution::Input::from_json(input.into()).unwrap();
        let message = Message::from_job(&job);
        assert!(!message.body.contains(['\u{fffe}', '\u{ffff}']));
        let crate::job::Read::Job(read) = Job::read(&message.body) else {
            panic!("not read back");
        };
        assert_eq!(*read, job, "the escapes read back as the characters");
    }
}
