//! Amazon SQS, standard or FIFO, behind the [`Queue`] trait.
//!
//! FIFO queues carry the ordering: a job's ordering group is its `MessageGroupId`, and a
//! job without one gets a group of its own, so that it never waits behind another. The
//! deduplication id is the job id (the execution name). Our id and group also travel
//! as message attributes, so a message reads the same from either queue type and from
//! the dead-letter queue. Dead-lettering after too many receives is the queue's own
//! redrive policy; an explicit dead letter is sent to the redrive policy's target.
//!
//! Envelopes: a send of more than one batch of messages of one ordering group (or of
//! no group) packs them, in order, into envelopes of up to a batch's bytes, so that a
//! push of thousands of commits is a few calls, not hundreds in a row (a group's
//! calls cannot overlap: SQS FIFO orders a group by arrival). A received envelope is
//! handed out as its messages, in order, sharing its receipt; it is deleted once every
//! one of them is acknowledged (or dead-lettered, which sends that one alone to the
//! dead-letter queue), and comes back whole when one is released: those acknowledged
//! already are handled again, which names make safe.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use sha2::{Digest, Sha256};

use super::{Capabilities, Message, Queue, QueueError, Receipt, Received};
use crate::config::{Concurrency, Config, Problem, QueueConfig};

/// SQS hands out at most this many messages per receive and takes as many per batch.
pub const MAX_BATCH: usize = 10;
/// SQS long polling waits at most this long.
pub const MAX_WAIT: Duration = Duration::from_secs(20);
/// The total payload of one SendMessageBatch call is kept under this, whatever the
/// queue's own message size limit.
const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Attempts at the entries of a batch that SQS did not take.
const SEND_ATTEMPTS: u32 = 5;

const ID_ATTRIBUTE: &str = "gitdispatch-id";
const GROUP_ATTRIBUTE: &str = "gitdispatch-group";
const REASON_ATTRIBUTE: &str = "gitdispatch-reason";
/// On an envelope: how many messages it holds.
const ENVELOPE_ATTRIBUTE: &str = "gitdispatch-envelope";

/// What an SQS queue needs of the configuration: a queue URL, receives SQS can serve,
/// and a FIFO queue for serial pipelines.
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let QueueConfig::Sqs { url } = &config.queue else {
        return problems;
    };
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        problems.push(Problem::new(
            "queue.url",
            format!("{url:?} is not an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>)"),
        ));
    }
    if config.worker.batch_size > MAX_BATCH {
        problems.push(Problem::new(
            "worker.batch_size",
            "must be at most 10 with an SQS queue: SQS hands out at most 10 messages per receive",
        ));
    }
    if config.worker.receive_wait_secs > MAX_WAIT.as_secs() {
        problems.push(Problem::new(
            "worker.receive_wait_secs",
            "must be at most 20 with an SQS queue (the longest SQS long poll)",
        ));
    }
    if !url.ends_with(".fifo") {
        for (index, pipeline) in config.pipelines.iter().enumerate() {
            if pipeline.concurrency == Concurrency::Serial {
                problems.push(Problem::new(
                    format!("pipelines[{index}].concurrency"),
                    "\"serial\" needs a FIFO queue, which keeps a pipeline's executions for one environment in order, one at a time; queue.url is a standard queue (a FIFO queue's URL ends in .fifo)",
                ));
            }
        }
    }
    problems
}

/// What `GetQueueAttributes` told us at start.
#[derive(Debug, Clone)]
pub struct QueueFacts {
    pub url: String,
    pub fifo: bool,
    pub visibility_timeout: Duration,
    pub max_message_bytes: usize,
    /// The redrive policy's target and its `maxReceiveCount`, when the queue has one.
    pub dead_letter: Option<(String, u32)>,
}

/// A numeric queue attribute, or `default` when it is absent or not a number.
fn attribute(
    attributes: &std::collections::HashMap<QueueAttributeName, String>,
    name: QueueAttributeName,
    default: u64,
) -> u64 {
    attributes
        .get(&name)
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(default)
}

/// An SQS queue.
pub struct SqsQueue {
    client: Client,
    facts: QueueFacts,
    /// Envelopes received and not yet settled, by receipt.
    open: std::sync::Mutex<HashMap<String, Open>>,
}

/// A received envelope's messages not yet settled, and whether one was released (the
/// envelope then comes back whole, and is neither deleted nor hidden again).
#[derive(Debug)]
struct Open {
    unsettled: usize,
    released: bool,
}

/// One message inside an envelope.
#[derive(serde::Serialize, serde::Deserialize)]
struct Part {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    body: String,
}

/// An SQS call that failed: what was being done, and the SDK's error as the cause.
fn unavailable<E>(what: &str, error: E) -> QueueError
where
    E: std::error::Error + Send + Sync + 'static,
{
    QueueError::unavailable_from(what, error)
}

impl SqsQueue {
    /// Reads the queue's attributes (type, visibility timeout, size limit, redrive
    /// policy) and resolves its dead-letter queue.
    pub async fn open(client: Client, url: &str) -> Result<SqsQueue, QueueError> {
        let output = client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .map_err(|error| unavailable(&format!("cannot read the attributes of {url}"), error))?;
        let attributes = output.attributes().cloned().unwrap_or_default();
        let number = |name: QueueAttributeName, default: u64| attribute(&attributes, name, default);
        let fifo = attributes
            .get(&QueueAttributeName::FifoQueue)
            .is_some_and(|value| value == "true");
        let dead_letter = match attributes.get(&QueueAttributeName::RedrivePolicy) {
            None => None,
            Some(policy) => {
                let policy: serde_json::Value = serde_json::from_str(policy).map_err(|error| {
                    QueueError::unavailable(format!(
                        "the redrive policy of {url} is not JSON: {error}"
                    ))
                })?;
                let target = policy["deadLetterTargetArn"].as_str().unwrap_or_default();
                let max_receives = match &policy["maxReceiveCount"] {
                    serde_json::Value::Number(number) => number.as_u64().unwrap_or(0) as u32,
                    serde_json::Value::String(text) => text.parse().unwrap_or(0),
                    _ => 0,
                };
                let mut parts = target.split(':');
                let (account, name) = (parts.nth(4), parts.next());
                let (Some(account), Some(name)) = (account, name) else {
                    return Err(QueueError::unavailable(format!(
                        "the redrive policy of {url} names no dead-letter queue ARN"
                    )));
                };
                let dead_letter_url = client
                    .get_queue_url()
                    .queue_name(name)
                    .queue_owner_aws_account_id(account)
                    .send()
                    .await
                    .map_err(|error| unavailable("cannot find the dead-letter queue", error))?
                    .queue_url()
                    .unwrap_or_default()
                    .to_string();
                Some((dead_letter_url, max_receives))
            }
        };
        let facts = QueueFacts {
            url: url.to_string(),
            fifo,
            visibility_timeout: Duration::from_secs(number(
                QueueAttributeName::VisibilityTimeout,
                30,
            )),
            max_message_bytes: number(QueueAttributeName::MaximumMessageSize, 262_144) as usize,
            dead_letter,
        };
        Ok(SqsQueue {
            client,
            facts,
            open: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn facts(&self) -> &QueueFacts {
        &self.facts
    }

    /// The queue's approximate depth, and its dead-letter queue's when it has one.
    pub async fn depth(&self) -> Result<super::Depth, QueueError> {
        let count = async |url: &str| -> Result<(u64, u64), QueueError> {
            let output = self
                .client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await
                .map_err(|error| {
                    unavailable(&format!("cannot read the attributes of {url}"), error)
                })?;
            let attributes = output.attributes().cloned().unwrap_or_default();
            Ok((
                attribute(
                    &attributes,
                    QueueAttributeName::ApproximateNumberOfMessages,
                    0,
                ),
                attribute(
                    &attributes,
                    QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                    0,
                ),
            ))
        };
        let (visible, in_flight) = count(&self.facts.url).await?;
        let dead = match &self.facts.dead_letter {
            Some((url, _)) => {
                let (waiting, held) = count(url).await?;
                waiting + held
            }
            None => 0,
        };
        Ok(super::Depth {
            visible,
            in_flight,
            dead,
        })
    }

    /// The group a message is sent with on a FIFO queue: its ordering group, or a group
    /// of its own. SQS takes 1 to 128 characters of printable ASCII; other groups are
    /// replaced by a hash of themselves.
    fn message_group(message: &Message) -> String {
        let group = message.group.as_deref().unwrap_or(&message.id);
        let valid = !group.is_empty()
            && group.len() <= 128
            && group.bytes().all(|byte| byte.is_ascii_graphic());
        if valid {
            group.to_string()
        } else {
            format!(
                "sha256-{}",
                &hex::encode(Sha256::digest(group.as_bytes()))[..48]
            )
        }
    }

    fn entry(&self, index: usize, message: &Outgoing) -> SendMessageBatchRequestEntry {
        let mut attributes = attributes(&message.message, None);
        if message.parts > 0 {
            attributes.insert(
                ENVELOPE_ATTRIBUTE.to_string(),
                string_attribute(&message.parts.to_string()),
            );
        }
        let message = &message.message;
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(index.to_string())
            .message_body(&message.body)
            .set_message_attributes(Some(attributes));
        if self.facts.fifo {
            entry = entry
                .message_group_id(Self::message_group(message))
                .message_deduplication_id(dedup_id(&message.id));
        }
        entry.build().expect("id and body are set")
    }

    /// The bytes SQS counts against its size limit: the body and every attribute's
    /// name, type and value.
    fn size(message: &Message) -> usize {
        let attribute = |name: &str, value: &str| name.len() + "String".len() + value.len();
        message.body.len()
            + attribute(ID_ATTRIBUTE, &message.id)
            + message
                .group
                .as_deref()
                .map_or(0, |group| attribute(GROUP_ATTRIBUTE, group))
    }
}

/// The characters SQS takes in a message body (XML 1.0's): tab, line feed, carriage
/// return, and everything from space up except the surrogates, U+FFFE and U+FFFF.
fn sqs_allows(character: char) -> bool {
    matches!(character, '\t' | '\n' | '\r' | ' '..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
}

/// Streams of a send going out at once.
const SEND_CONCURRENCY: usize = 8;

/// A message as it is sent: one of ours, or an envelope of `parts` of them.
#[derive(Debug)]
struct Outgoing {
    message: Message,
    /// How many messages the envelope holds; 0 for a message of ours.
    parts: usize,
}

impl Outgoing {
    fn plain(message: &Message) -> Outgoing {
        Outgoing {
            message: message.clone(),
            parts: 0,
        }
    }

    fn size(&self) -> usize {
        SqsQueue::size(&self.message)
            + if self.parts > 0 {
                ENVELOPE_ATTRIBUTE.len() + "String".len() + 20
            } else {
                0
            }
    }
}

/// A stream's messages as they go out: as they are when they fit in one batch, else
/// packed in order into envelopes of up to `limit` bytes (a message too big to share
/// one goes alone). An envelope takes the stream's group; its id is made of its
/// messages' ids, so that the same send packs into the same ids.
fn envelopes(messages: &[&Message], limit: usize) -> Vec<Outgoing> {
    if messages.len() <= MAX_BATCH {
        return messages
            .iter()
            .map(|message| Outgoing::plain(message))
            .collect();
    }
    // Room for the envelope's own id and group attributes and its JSON frame.
    let limit = limit.saturating_sub(512);
    let mut out = Vec::new();
    let mut parts: Vec<String> = Vec::new();
    let mut ids: Vec<&str> = Vec::new();
    let mut bytes = 0;
    let group = messages.first().and_then(|message| message.group.clone());
    let close = |parts: &mut Vec<String>, ids: &mut Vec<&str>, out: &mut Vec<Outgoing>| {
        if parts.is_empty() {
            return;
        }
        let digest = Sha256::digest(ids.join("\n").as_bytes());
        out.push(Outgoing {
            message: Message {
                id: format!("envelope-{}", &hex::encode(digest)[..40]),
                group: group.clone(),
                body: format!("{{\"parts\":[{}]}}", parts.join(",")),
            },
            parts: parts.len(),
        });
        parts.clear();
        ids.clear();
    };
    for message in messages {
        let part = serde_json::to_string(&Part {
            id: message.id.clone(),
            group: message.group.clone(),
            body: message.body.clone(),
        })
        .expect("strings serialize");
        if part.len() + 1 > limit {
            close(&mut parts, &mut ids, &mut out);
            out.push(Outgoing::plain(message));
            bytes = 0;
            continue;
        }
        if bytes + part.len() + 1 > limit {
            close(&mut parts, &mut ids, &mut out);
            bytes = 0;
        }
        bytes += part.len() + 1;
        parts.push(part);
        ids.push(&message.id);
    }
    close(&mut parts, &mut ids, &mut out);
    out
}

/// A stream's messages in batches of up to 10 entries and MAX_BATCH_BYTES, in order.
fn batches(messages: &[Outgoing]) -> Vec<Vec<&Outgoing>> {
    let mut batches: Vec<Vec<&Outgoing>> = Vec::new();
    let mut bytes = 0;
    for message in messages {
        let size = message.size();
        let full = batches
            .last()
            .is_none_or(|batch| batch.len() == MAX_BATCH || bytes + size > MAX_BATCH_BYTES);
        if full {
            batches.push(Vec::new());
            bytes = 0;
        }
        batches
            .last_mut()
            .expect("a batch was pushed")
            .push(message);
        bytes += size;
    }
    batches
}

/// Streams that fit in one batch share batches (a batch keeps each group's messages in
/// their order): a push's reports, a group per commit, are a few calls rather than one
/// per commit. Longer streams stay as they are.
fn share_batches(streams: Vec<Vec<Outgoing>>) -> Vec<Vec<Outgoing>> {
    let (small, mut out): (Vec<Vec<Outgoing>>, Vec<Vec<Outgoing>>) = streams
        .into_iter()
        .partition(|stream| batches(stream).len() == 1);
    let mut shared: Vec<Outgoing> = Vec::new();
    let mut bytes = 0;
    for stream in small {
        let size: usize = stream.iter().map(Outgoing::size).sum();
        if !shared.is_empty()
            && (shared.len() + stream.len() > MAX_BATCH || bytes + size > MAX_BATCH_BYTES)
        {
            out.push(std::mem::take(&mut shared));
            bytes = 0;
        }
        shared.extend(stream);
        bytes += size;
    }
    if !shared.is_empty() {
        out.push(shared);
    }
    out
}

/// SQS deduplication ids take 1 to 128 printable ASCII characters; execution names
/// always fit, other ids are hashed.
fn dedup_id(id: &str) -> String {
    if !id.is_empty() && id.len() <= 128 && id.bytes().all(|byte| byte.is_ascii_graphic()) {
        id.to_string()
    } else {
        hex::encode(Sha256::digest(id.as_bytes()))
    }
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("the data type is set")
}

fn attributes(message: &Message, reason: Option<&str>) -> HashMap<String, MessageAttributeValue> {
    let mut attributes = HashMap::new();
    attributes.insert(ID_ATTRIBUTE.to_string(), string_attribute(&message.id));
    if let Some(group) = &message.group {
        attributes.insert(GROUP_ATTRIBUTE.to_string(), string_attribute(group));
    }
    if let Some(reason) = reason {
        attributes.insert(
            REASON_ATTRIBUTE.to_string(),
            string_attribute(crate::text::cut(reason, 1024)),
        );
    }
    attributes
}

/// Reads a received SQS message back into our terms.
fn read_message(message: &aws_sdk_sqs::types::Message) -> Option<Received> {
    let receipt = message.receipt_handle()?.to_string();
    let custom = message.message_attributes();
    let text = |name: &str| {
        custom
            .and_then(|attributes| attributes.get(name))
            .and_then(|value| value.string_value())
            .map(str::to_string)
    };
    let receive_count = message
        .attributes()
        .and_then(|attributes| attributes.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|value| value.parse().ok())
        .unwrap_or(1);
    let sent_at_ms = message
        .attributes()
        .and_then(|attributes| attributes.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|value| value.parse().ok());
    Some(Received {
        receipt: Receipt(receipt),
        message: Message {
            id: text(ID_ATTRIBUTE).or_else(|| message.message_id().map(str::to_string))?,
            group: text(GROUP_ATTRIBUTE),
            body: message.body().unwrap_or_default().to_string(),
        },
        receive_count,
        sent_at_ms,
        shared: false,
    })
}

/// Reads the reason an explicitly dead-lettered message carries.
pub fn dead_letter_reason(message: &aws_sdk_sqs::types::Message) -> Option<String> {
    message
        .message_attributes()?
        .get(REASON_ATTRIBUTE)?
        .string_value()
        .map(str::to_string)
}

/// Reads a message received from a dead-letter queue.
pub fn read_dead_letter(message: &aws_sdk_sqs::types::Message) -> Option<Message> {
    read_message(message).map(|received| received.message)
}

/// How many messages a received envelope holds; `None` for a message of ours.
fn envelope_parts(message: &aws_sdk_sqs::types::Message) -> Option<usize> {
    message
        .message_attributes()?
        .get(ENVELOPE_ATTRIBUTE)?
        .string_value()?
        .parse()
        .ok()
}

/// A received message as the messages it carries: itself, or an envelope's, in order,
/// sharing its receipt. An envelope that cannot be read is handed out as it is (its
/// body is no job: the worker dead-letters it).
fn open_message(received: Received, envelope: bool) -> Vec<Received> {
    if !envelope {
        return vec![received];
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        parts: Vec<Part>,
    }
    match serde_json::from_str::<Envelope>(&received.message.body) {
        Ok(envelope) if !envelope.parts.is_empty() => {
            let shared = envelope.parts.len() > 1;
            envelope
                .parts
                .into_iter()
                .map(|part| Received {
                    receipt: received.receipt.clone(),
                    message: Message {
                        id: part.id,
                        group: part.group,
                        body: part.body,
                    },
                    receive_count: received.receive_count,
                    sent_at_ms: received.sent_at_ms,
                    shared,
                })
                .collect()
        }
        _ => {
            tracing::error!(id = %received.message.id, "An envelope on the queue cannot be read.");
            vec![received]
        }
    }
}

fn whole_seconds(duration: Duration) -> i32 {
    // SQS counts visibility in whole seconds, at most 12 hours; round up so a delay is
    // never shorter than asked.
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    seconds.min(43_200) as i32
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, messages: &[Message]) -> Result<(), QueueError> {
        // Everything SQS would refuse is refused here, before anything is sent: a
        // delivery is either queued whole or refused whole.
        for message in messages {
            let size = Self::size(message);
            if size > self.facts.max_message_bytes {
                return Err(QueueError::Refused {
                    id: message.id.clone(),
                    reason: format!(
                        "{size} bytes is over the queue's limit of {} bytes",
                        self.facts.max_message_bytes
                    ),
                });
            }
            if let Some(character) = message.body.chars().find(|c| !sqs_allows(*c)) {
                return Err(QueueError::Refused {
                    id: message.id.clone(),
                    reason: format!(
                        "the body holds {:?}, a character SQS does not take",
                        character
                    ),
                });
            }
        }
        // Streams: each ordering group's messages, in order, go out one batch after
        // the other; streams (and batches of messages of no group) go out several at
        // once, so that a push of thousands of commits to several lanes is a few
        // rounds of calls, not thousands in a row.
        let mut streams: Vec<Vec<&Message>> = Vec::new();
        let mut by_group: std::collections::HashMap<&str, usize> = Default::default();
        let mut ungrouped: Vec<&Message> = Vec::new();
        for message in messages {
            match message.group.as_deref() {
                Some(group) => {
                    let index = *by_group.entry(group).or_insert_with(|| {
                        streams.push(Vec::new());
                        streams.len() - 1
                    });
                    streams[index].push(message);
                }
                None => ungrouped.push(message),
            }
        }
        let limit = self.facts.max_message_bytes.min(MAX_BATCH_BYTES);
        let mut streams: Vec<Vec<Outgoing>> = streams
            .iter()
            .map(|stream| envelopes(stream, limit))
            .collect();
        // Messages of no group go out in any order: each envelope a stream, or each
        // one a stream of its own to share batches with the others.
        streams.extend(
            envelopes(&ungrouped, limit)
                .into_iter()
                .map(|message| vec![message]),
        );
        let streams = share_batches(streams);
        let sent_any = std::sync::atomic::AtomicBool::new(false);
        let sent_any = &sent_any;
        // Every stream runs to its end or its first error: whether a refusal is the
        // delivery's answer (422: nothing went in) or a failure to retry (503: part of
        // it went in) is known only once all of them are done.
        let failures = std::sync::Mutex::new(Vec::new());
        let failures = &failures;
        use futures_util::stream::StreamExt;
        futures_util::stream::iter(streams)
            .for_each_concurrent(SEND_CONCURRENCY, |stream| async move {
                for batch in batches(&stream) {
                    if let Err(error) = self.send_batch(&batch, sent_any).await {
                        failures.lock().expect("failures lock").push(error);
                        return;
                    }
                }
            })
            .await;
        let mut failures = failures.lock().expect("failures lock");
        if failures.is_empty() {
            return Ok(());
        }
        let first = failures.remove(0);
        Err(match first {
            QueueError::Refused { id, reason }
                if sent_any.load(std::sync::atomic::Ordering::SeqCst) =>
            {
                QueueError::unavailable(format!(
                    "SQS refused message {id} after other messages of the same send went in: {reason}"
                ))
            }
            other => other,
        })
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>, QueueError> {
        let max = max.clamp(1, MAX_BATCH) as i32;
        let output = self
            .client
            .receive_message()
            .queue_url(&self.facts.url)
            .max_number_of_messages(max)
            .wait_time_seconds(wait.min(MAX_WAIT).as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|error| unavailable("cannot receive", error))?;
        let mut received = Vec::new();
        for message in output.messages() {
            let Some(read) = read_message(message) else {
                continue;
            };
            let parts = open_message(read, envelope_parts(message).is_some());
            if parts.len() > 1 {
                self.open.lock().expect("open lock").insert(
                    parts[0].receipt.0.clone(),
                    Open {
                        unsettled: parts.len(),
                        released: false,
                    },
                );
            }
            received.extend(parts);
        }
        Ok(received)
    }

    async fn ack(&self, receipt: &Receipt) -> Result<(), QueueError> {
        match self.settle_part(receipt, false) {
            Envelope::NotOne | Envelope::Settled => {}
            Envelope::Unsettled | Envelope::Released => return Ok(()),
        }
        match self
            .client
            .delete_message()
            .queue_url(&self.facts.url)
            .receipt_handle(&receipt.0)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|service| service.is_receipt_handle_is_invalid()) =>
            {
                // Received again meanwhile: the newer receipt settles it, and the
                // execution is idempotent by name.
                tracing::warn!("A job's receipt expired before its acknowledgement.");
                Ok(())
            }
            Err(error) => Err(unavailable("cannot delete a message", error)),
        }
    }

    async fn release(&self, receipt: &Receipt, delay: Duration) -> Result<(), QueueError> {
        match self.settle_part(receipt, true) {
            Envelope::Released => Ok(()),
            _ => self.change_visibility(receipt, delay).await,
        }
    }

    async fn extend(&self, receipt: &Receipt, visibility: Duration) -> Result<(), QueueError> {
        let released = self
            .open
            .lock()
            .expect("open lock")
            .get(&receipt.0)
            .is_some_and(|open| open.released);
        if released {
            return Ok(());
        }
        self.change_visibility(receipt, visibility).await
    }

    async fn dead_letter(&self, received: &Received, reason: &str) -> Result<(), QueueError> {
        let Some((dead_letter_url, _)) = &self.facts.dead_letter else {
            return Err(QueueError::unavailable(format!(
                "{} has no redrive policy, so there is no dead-letter queue to move the job to",
                self.facts.url
            )));
        };
        let mut send = self
            .client
            .send_message()
            .queue_url(dead_letter_url)
            .message_body(&received.message.body)
            .set_message_attributes(Some(attributes(&received.message, Some(reason))));
        if self.facts.fifo {
            send = send
                .message_group_id(Self::message_group(&received.message))
                .message_deduplication_id(dedup_id(&format!("dead-{}", received.message.id)));
        }
        send.send()
            .await
            .map_err(|error| unavailable("cannot send to the dead-letter queue", error))?;
        self.ack(&received.receipt).await
    }

    fn visibility_timeout(&self) -> Duration {
        self.facts.visibility_timeout
    }

    fn max_receives(&self) -> Option<u32> {
        self.facts
            .dead_letter
            .as_ref()
            .map(|(_, max_receives)| *max_receives)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordering_groups: self.facts.fifo,
            deduplication: self.facts.fifo,
        }
    }
}

/// What settling one message of a receipt does to its envelope.
enum Envelope {
    /// The receipt is a message's own.
    NotOne,
    /// Others of the envelope are not settled yet: leave it in flight.
    Unsettled,
    /// This was its last: delete it (or, when releasing, make it visible).
    Settled,
    /// It was released already: it comes back whole; leave it be.
    Released,
}

impl SqsQueue {
    /// Counts one message of `receipt`'s envelope settled (`release`: given back).
    fn settle_part(&self, receipt: &Receipt, release: bool) -> Envelope {
        let mut open = self.open.lock().expect("open lock");
        let Some(envelope) = open.get_mut(&receipt.0) else {
            return Envelope::NotOne;
        };
        envelope.unsettled = envelope.unsettled.saturating_sub(1);
        let outcome = if envelope.released {
            Envelope::Released
        } else if release {
            envelope.released = true;
            Envelope::Settled
        } else if envelope.unsettled == 0 {
            Envelope::Settled
        } else {
            Envelope::Unsettled
        };
        if envelope.unsettled == 0 {
            open.remove(&receipt.0);
        }
        outcome
    }

    /// Sends one batch; entries SQS did not take are sent again (the call is not
    /// atomic), those it refused as the sender's fault fail the send. `sent_any` says
    /// whether an earlier entry of the same send went in: a refusal is then not the
    /// delivery's final answer (the queued part would run without the rest), but a
    /// failure to retry, which a redelivery completes (names make that safe).
    async fn send_batch(
        &self,
        batch: &[&Outgoing],
        sent_any: &std::sync::atomic::AtomicBool,
    ) -> Result<(), QueueError> {
        use std::sync::atomic::Ordering;
        let mut pending: Vec<&Outgoing> = batch.to_vec();
        for attempt in 1..=SEND_ATTEMPTS {
            let entries: Vec<SendMessageBatchRequestEntry> = pending
                .iter()
                .enumerate()
                .map(|(index, message)| self.entry(index, message))
                .collect();
            let output = self
                .client
                .send_message_batch()
                .queue_url(&self.facts.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|error| unavailable("cannot send messages", error))?;
            if !output.successful().is_empty() {
                sent_any.store(true, Ordering::SeqCst);
            }
            let mut retry = Vec::new();
            for failed in output.failed() {
                let index: usize = failed.id().parse().unwrap_or(usize::MAX);
                let Some(message) = pending.get(index) else {
                    continue;
                };
                if failed.sender_fault() {
                    let reason = format!(
                        "{}: {}",
                        failed.code(),
                        failed.message().unwrap_or("refused by SQS")
                    );
                    return Err(if sent_any.load(Ordering::SeqCst) {
                        QueueError::unavailable(format!(
                            "SQS refused message {} after other messages of the same send went in: {reason}",
                            message.message.id
                        ))
                    } else {
                        QueueError::Refused {
                            id: message.message.id.clone(),
                            reason,
                        }
                    });
                }
                retry.push(*message);
            }
            if retry.is_empty() {
                return Ok(());
            }
            tracing::warn!(
                entries = retry.len(),
                attempt,
                "SQS did not take every entry of a batch; sending those again."
            );
            pending = retry;
            tokio::time::sleep(crate::retry::backoff(
                attempt,
                Duration::from_millis(100),
                Duration::from_secs(5),
            ))
            .await;
        }
        Err(QueueError::unavailable(format!(
            "SQS did not take {} message(s) after {SEND_ATTEMPTS} attempts",
            pending.len()
        )))
    }

    async fn change_visibility(
        &self,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError> {
        match self
            .client
            .change_message_visibility()
            .queue_url(&self.facts.url)
            .receipt_handle(&receipt.0)
            .visibility_timeout(whole_seconds(visibility))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error)
                if error.as_service_error().is_some_and(|service| {
                    service.is_receipt_handle_is_invalid() || service.is_message_not_inflight()
                }) =>
            {
                tracing::warn!(
                    code = error.code(),
                    "A job's receipt expired before its visibility could change."
                );
                Ok(())
            }
            Err(error) => Err(unavailable("cannot change a message's visibility", error)),
        }
    }
}

#[async_trait]
impl super::QueueAdmin for SqsQueue {
    /// SQS's dead letters are read off the dead-letter queue by taking them: they are
    /// counted here, listed and redriven in SQS's console.
    async fn view(&self) -> Result<crate::operator::QueueView, QueueError> {
        let facts = self.facts();
        Ok(crate::operator::QueueView {
            kind: Some("sqs".into()),
            url: Some(facts.url.clone()),
            depth: Some(self.depth().await?.into()),
            dead_letter_queue: facts.dead_letter.as_ref().map(|(url, _)| url.clone()),
            max_receives: facts.dead_letter.as_ref().map(|(_, max)| *max),
            dead_letters: Vec::new(),
        })
    }

    async fn redrive_all(&self) -> Result<Option<usize>, QueueError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
