//! `[queue]`: where jobs wait between the listener and the worker. The checks that
//! depend on the backend belong to the backend (`crate::queue::check`).

use std::path::PathBuf;

use serde::Deserialize;

/// `[queue]`: where jobs wait between the listener and the worker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum QueueConfig {
    Embedded {
        #[serde(default = "default_queue_path")]
        path: PathBuf,
        /// A received job not acknowledged within this time is handed out again.
        #[serde(default = "default_visibility_timeout")]
        visibility_timeout_secs: u64,
        /// A job received this many times without success is dead-lettered.
        #[serde(default = "default_max_receives")]
        max_receives: u32,
    },
    /// Amazon SQS; the visibility timeout and dead-lettering are the queue's own
    /// settings (its `VisibilityTimeout` and redrive policy). Region, credentials and
    /// endpoint come from the usual AWS settings (`AWS_REGION`, `AWS_ENDPOINT_URL`, …).
    Sqs {
        /// The queue URL; a FIFO queue's ends in `.fifo`.
        url: String,
    },
}

fn default_queue_path() -> PathBuf {
    PathBuf::from("var/gitdispatch.db")
}

fn default_visibility_timeout() -> u64 {
    30
}

fn default_max_receives() -> u32 {
    5
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig::Embedded {
            path: default_queue_path(),
            visibility_timeout_secs: default_visibility_timeout(),
            max_receives: default_max_receives(),
        }
    }
}

impl QueueConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            QueueConfig::Embedded { .. } => "embedded",
            QueueConfig::Sqs { url } if url.ends_with(".fifo") => "sqs (FIFO)",
            QueueConfig::Sqs { .. } => "sqs (standard)",
        }
    }
}
