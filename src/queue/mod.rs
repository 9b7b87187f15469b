//! Where jobs wait between the listener and the worker.

use std::sync::Mutex;

use async_trait::async_trait;

use crate::job::Job;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue is unavailable: {0}")]
    Unavailable(String),
}

/// What the listener needs of a queue: put jobs on it durably.
#[async_trait]
pub trait JobSink: Send + Sync {
    /// Returns once every job is durable; an error means none can be assumed queued.
    async fn enqueue(&self, jobs: &[Job]) -> Result<(), QueueError>;
}

/// Keeps planned jobs in memory and logs them: what `serve` does until the durable
/// queue and the worker exist. Nothing here survives a restart.
#[derive(Debug, Default)]
pub struct MemorySink {
    jobs: Mutex<Vec<Job>>,
}

impl MemorySink {
    /// Every job enqueued so far, in order.
    pub fn jobs(&self) -> Vec<Job> {
        self.jobs.lock().expect("memory sink lock").clone()
    }
}

#[async_trait]
impl JobSink for MemorySink {
    async fn enqueue(&self, jobs: &[Job]) -> Result<(), QueueError> {
        for job in jobs {
            tracing::info!(job = %serde_json::to_string(job).unwrap_or_default(), "Planned a job.");
        }
        self.jobs
            .lock()
            .expect("memory sink lock")
            .extend_from_slice(jobs);
        Ok(())
    }
}
