//! The `Queue` contract suite, unchanged, against SQS on moto: once on standard queues,
//! once on FIFO queues, every test on queues of its own. Time passes for real here.

use crate::common;
use crate::queue_contract;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::moto;
use gitdispatch::queue::Queue;
use gitdispatch::queue::sqs::SqsQueue;
use queue_contract::Harness;
use tokio::sync::Mutex;

struct Sqs {
    fifo: bool,
    client: aws_sdk_sqs::Client,
    /// (queue, dead-letter queue URL) of every queue made.
    made: Mutex<Vec<(Arc<SqsQueue>, String)>>,
}

async fn sqs(fifo: bool) -> Sqs {
    Sqs {
        fifo,
        client: aws_sdk_sqs::Client::new(&moto::sdk_config().await),
        made: Mutex::new(Vec::new()),
    }
}

#[async_trait::async_trait]
impl Harness for Sqs {
    async fn queue(&self, visibility: Duration, max_receives: u32) -> Arc<dyn Queue> {
        let (url, dead_url) =
            moto::create_queue(&self.client, self.fifo, visibility, max_receives).await;
        let queue = Arc::new(SqsQueue::open(self.client.clone(), &url).await.unwrap());
        assert_eq!(queue.facts().fifo, self.fifo);
        assert_eq!(queue.facts().dead_letter.as_ref().unwrap().0, dead_url);
        self.made.lock().await.push((queue.clone(), dead_url));
        queue
    }

    async fn pass(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    async fn dead_letter_ids(&self, queue: &Arc<dyn Queue>) -> Vec<String> {
        let dead_url = {
            let made = self.made.lock().await;
            let target = Arc::as_ptr(queue) as *const ();
            made.iter()
                .find(|(candidate, _)| Arc::as_ptr(candidate) as *const () == target)
                .expect("a queue this harness made")
                .1
                .clone()
        };
        moto::dead_letter_ids(&self.client, &dead_url).await
    }
}

mod standard {
    use super::*;
    queue_contract_tests!(
        tokio::test(flavor = "multi_thread", worker_threads = 2),
        sqs(false)
    );
}

mod fifo {
    use super::*;
    queue_contract_tests!(
        tokio::test(flavor = "multi_thread", worker_threads = 2),
        sqs(true)
    );
}

#[tokio::test]
async fn messages_over_the_queue_limit_are_refused_before_any_call() {
    let client = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let (url, _) = moto::create_queue(&client, true, Duration::from_secs(30), 5).await;
    let queue = SqsQueue::open(client, &url).await.unwrap();
    let limit = queue.facts().max_message_bytes;
    let message = gitdispatch::queue::Message {
        id: "big".into(),
        group: None,
        body: "x".repeat(limit),
    };
    let error = queue.send(&[message]).await.unwrap_err();
    assert!(
        matches!(&error, gitdispatch::queue::QueueError::Refused { id, reason } if id == "big" && reason.contains("over the queue's limit")),
        "{error}"
    );
    assert!(
        queue
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn more_than_ten_messages_go_out_in_batches() {
    let client = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let (url, _) = moto::create_queue(&client, true, Duration::from_secs(30), 5).await;
    let queue = SqsQueue::open(client, &url).await.unwrap();
    let messages: Vec<_> = (0..25)
        .map(|n| queue_contract::message(&format!("m{n}"), None))
        .collect();
    queue.send(&messages).await.unwrap();
    let received = queue_contract::receive_n(&(Arc::new(queue) as Arc<dyn Queue>), 25).await;
    let mut ids: Vec<String> = received.into_iter().map(|r| r.message.id).collect();
    ids.sort();
    let mut expected: Vec<String> = messages.into_iter().map(|m| m.id).collect();
    expected.sort();
    assert_eq!(ids, expected);
}

/// The tests' moto keeps AWS's deduplication window on FIFO queues: an id sent again
/// within five minutes is dropped even after its first message was deleted, while a
/// new id goes through. Every path that re-sends an id meets this in the suite.
#[tokio::test]
async fn a_fifo_queue_drops_an_id_sent_again_after_its_message_was_deleted() {
    let client = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let (url, _) = moto::create_queue(&client, true, Duration::from_secs(30), 5).await;
    let queue: Arc<dyn Queue> = Arc::new(SqsQueue::open(client, &url).await.unwrap());
    let first = queue_contract::message("follow-job-1", Some("g"));
    queue.send(std::slice::from_ref(&first)).await.unwrap();
    let received = queue_contract::receive_n(&queue, 1).await;
    queue.ack(&received[0].receipt).await.unwrap();
    queue.send(std::slice::from_ref(&first)).await.unwrap();
    let other = queue_contract::message("follow-job-2", Some("g"));
    queue.send(std::slice::from_ref(&other)).await.unwrap();
    let received = queue_contract::receive_n(&queue, 1).await;
    assert_eq!(received[0].message.id, "follow-job-2");
    queue.ack(&received[0].receipt).await.unwrap();
    assert!(
        queue
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty(),
        "the re-sent id stays dropped"
    );
}

/// A FIFO queue and 40 messages of one group, sent in one call: they go out in
/// envelopes (fewer messages on the queue than were sent) and come back in order.
async fn envelopes_on_fifo() -> (
    Arc<dyn Queue>,
    Arc<SqsQueue>,
    Vec<gitdispatch::queue::Message>,
    String,
) {
    let client = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let (url, dead_url) = moto::create_queue(&client, true, Duration::from_secs(3), 5).await;
    let sqs = Arc::new(SqsQueue::open(client, &url).await.unwrap());
    let queue: Arc<dyn Queue> = sqs.clone();
    let messages: Vec<_> = (0..40)
        .map(|n| {
            let mut message =
                queue_contract::message(&format!("m{n:02}"), Some("deploy/acceptance"));
            message.body = format!(
                r#"{{"v":1,"type":"start","id":"m{n:02}","pad":"{}"}}"#,
                "x".repeat(9000)
            );
            message
        })
        .collect();
    queue.send(&messages).await.unwrap();
    (queue, sqs, messages, dead_url)
}

fn ids_of(received: &[gitdispatch::queue::Received]) -> Vec<String> {
    received.iter().map(|r| r.message.id.clone()).collect()
}

#[tokio::test]
async fn a_long_run_of_one_group_goes_out_in_envelopes_and_comes_back_in_order() {
    let (queue, sqs, messages, _) = envelopes_on_fifo().await;
    let received = queue_contract::receive_n(&queue, 40).await;
    assert_eq!(ids_of(&received), ids_of_messages(&messages));
    let receipts: HashSet<&str> = received.iter().map(|r| r.receipt.0.as_str()).collect();
    assert!(
        receipts.len() >= 2 && receipts.len() < 10,
        "{} messages on the queue for 40 sent",
        receipts.len()
    );
    assert!(received.iter().all(|r| r.message.body.contains("pad")));
    for item in &received {
        queue.ack(&item.receipt).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(queue_contract::nothing_receivable(&queue).await);
    assert_eq!(sqs.depth().await.unwrap().in_flight, 0);
}

fn ids_of_messages(messages: &[gitdispatch::queue::Message]) -> Vec<String> {
    messages.iter().map(|m| m.id.clone()).collect()
}

#[tokio::test]
async fn an_envelope_stays_until_every_message_of_it_is_settled() {
    let (queue, _, messages, dead_url) = envelopes_on_fifo().await;
    let first = queue.receive(1, Duration::from_secs(1)).await.unwrap();
    assert!(first.len() > 1, "an envelope's messages");
    assert!(first.iter().all(|r| r.receipt == first[0].receipt));
    // All but its last acknowledged, one of them dead-lettered: still in flight, so
    // nothing more of the group comes.
    let (last, rest) = first.split_last().unwrap();
    queue.dead_letter(&rest[1], "cannot succeed").await.unwrap();
    for (index, item) in rest.iter().enumerate() {
        if index != 1 {
            queue.ack(&item.receipt).await.unwrap();
        }
    }
    assert!(queue_contract::nothing_receivable(&queue).await);
    // The last one released: the envelope comes back whole, its receive counted.
    queue.release(&last.receipt, Duration::ZERO).await.unwrap();
    let again = queue.receive(1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(ids_of(&again), ids_of(&first));
    assert!(again.iter().all(|r| r.receive_count == 2));
    for item in &again {
        queue.ack(&item.receipt).await.unwrap();
    }
    let later = queue_contract::receive_n(&queue, messages.len() - first.len()).await;
    assert_eq!(ids_of(&later), ids_of_messages(&messages[first.len()..]));
    let client = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    assert_eq!(
        moto::dead_letter_ids(&client, &dead_url).await,
        vec![rest[1].message.id.clone()],
        "the dead-lettered message went alone"
    );
}
