//! The `Queue` contract suite, unchanged, against SQS on moto: once on standard queues,
//! once on FIFO queues, every test on queues of its own. Time passes for real here.

use crate::common;
use crate::queue_contract;

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
