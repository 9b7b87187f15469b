//! `[worker]`: how jobs are drained.

use serde::Deserialize;

use super::Problem;

/// The longest hold in flight taken: under SQS's 12 hours, with room for a late
/// heartbeat.
const MAX_HOLD_SECS: u64 = 11 * 3600 + 1800;

/// `[worker]`: how jobs are drained.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs in progress at once in one worker process.
    pub concurrency: usize,
    /// Jobs asked for per receive (SQS hands out at most 10).
    pub batch_size: usize,
    /// How long one receive waits for jobs (SQS long polling: at most 20).
    pub receive_wait_secs: u64,
    /// Executions started per second, sustained. The default keeps one worker under
    /// Step Functions' smallest StartExecution refill rate (150/s); split the quota
    /// between workers when running several.
    pub starts_per_second: u32,
    /// Starts allowed at once above the sustained rate.
    pub start_burst: u32,
    /// How often a held execution (a serial pipeline's, or a local one) is looked at.
    pub poll_interval_secs: u64,
    /// Backoff before the first retry; doubles with each receive.
    pub retry_initial_ms: u64,
    pub retry_max_secs: u64,
    /// On shutdown, how long jobs in progress may finish before they are released.
    pub shutdown_grace_secs: u64,
    /// Where a `work`-only process serves `/metrics` and `/healthz` (a process that
    /// also listens serves them on its listener).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How long a serial lane's job is held in flight while its execution runs (on an
    /// executor whose executions outlive the worker): past it, the job is acknowledged,
    /// the lane marked busy in the journal (its next jobs parked there) until a
    /// `release` job sees the execution end. Under SQS's 12 hours in flight.
    pub max_hold_secs: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 16,
            batch_size: 10,
            receive_wait_secs: 20,
            starts_per_second: 100,
            start_burst: 200,
            poll_interval_secs: 2,
            retry_initial_ms: 1000,
            retry_max_secs: 300,
            shutdown_grace_secs: 30,
            metrics_listen: None,
            max_hold_secs: 11 * 3600,
        }
    }
}

impl WorkerConfig {
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        for (key, value) in [
            ("concurrency", self.concurrency as u64),
            ("batch_size", self.batch_size as u64),
            ("starts_per_second", u64::from(self.starts_per_second)),
            ("start_burst", u64::from(self.start_burst)),
            ("poll_interval_secs", self.poll_interval_secs),
            ("retry_initial_ms", self.retry_initial_ms),
            ("retry_max_secs", self.retry_max_secs),
        ] {
            if value == 0 {
                problems.push(Problem::new(format!("worker.{key}"), "must be above 0"));
            }
        }
        if !(1..=MAX_HOLD_SECS).contains(&self.max_hold_secs) {
            problems.push(Problem::new(
                "worker.max_hold_secs",
                format!(
                    "must be 1 to {MAX_HOLD_SECS} (SQS holds a message in flight 12 hours at most)"
                ),
            ));
        }
    }
}
