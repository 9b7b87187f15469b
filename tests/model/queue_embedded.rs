//! The `Queue` contract suite against the embedded SQLite queue, on real files, with
//! paused tokio time for everything timed.

use crate::queue_contract;

use std::sync::Arc;
use std::time::Duration;

use gitdispatch::queue::Queue;
use gitdispatch::queue::embedded::{EmbeddedQueue, EmbeddedSettings};
use queue_contract::Harness;
use tokio::sync::Mutex;

struct Embedded {
    directory: tempfile::TempDir,
    /// Every queue made, to find a queue's dead letters by identity.
    made: Mutex<Vec<Arc<EmbeddedQueue>>>,
}

async fn embedded() -> Embedded {
    Embedded {
        directory: tempfile::tempdir().unwrap(),
        made: Mutex::new(Vec::new()),
    }
}

#[async_trait::async_trait]
impl Harness for Embedded {
    async fn queue(&self, visibility: Duration, max_receives: u32) -> Arc<dyn Queue> {
        let mut made = self.made.lock().await;
        let queue = Arc::new(
            EmbeddedQueue::open(EmbeddedSettings {
                path: self
                    .directory
                    .path()
                    .join(format!("queue-{}.db", made.len())),
                visibility_timeout: visibility,
                max_receives,
            })
            .await
            .unwrap(),
        );
        made.push(queue.clone());
        queue
    }

    async fn pass(&self, duration: Duration) {
        tokio::time::advance(duration).await;
    }

    async fn dead_letter_ids(&self, queue: &Arc<dyn Queue>) -> Vec<String> {
        let embedded = {
            let made = self.made.lock().await;
            let target = Arc::as_ptr(queue) as *const ();
            made.iter()
                .find(|candidate| Arc::as_ptr(candidate) as *const () == target)
                .expect("a queue this harness made")
                .clone()
        };
        embedded
            .dead_letters()
            .await
            .unwrap()
            .into_iter()
            .map(|dead| dead.message.id)
            .collect()
    }
}

queue_contract_tests!(tokio::test(start_paused = true), embedded());
