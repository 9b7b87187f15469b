//! The journal's records of what was admitted, written after the answer.
//!
//! A delivery is answered once its jobs are durable on the queue; its record in the
//! journal (the delivery as answered, and each start waiting in its lane) is a record
//! for operators, not a promise, and was never a condition of the answer (a failed
//! write was logged and the delivery answered). [`Deferred`] takes those records off
//! the answer's path: they wait in a bounded channel and one task writes them, many at
//! once (on SQLite, one transaction). Everything else the journal is asked — a read, a
//! lane job's next state, a pause — first waits until every record taken before it is
//! written, so that within a process the journal reads as if it were written at once:
//! a job is never recorded started and then waiting, and a delivery answered is listed.
//!
//! What can be lost: records still waiting when the process dies (at most
//! [`MAX_WAITING`]; a stop waits for them, see [`Deferred::settle`]), and records that
//! find the channel full or whose write fails; those are counted
//! (`gitdispatch_journal_records_lost`). Such a
//! delivery is missing from `/v1/deliveries`; its starts are shown in their lane from
//! the moment they start (a start records the job it does not find), are not superseded
//! while they wait (which never skips anything), and cannot be replayed before they
//! ran. The jobs themselves are on the queue and run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{mpsc, watch};

use super::{
    DeliveryFilter, DeliveryRecord, Hold, HoldEnd, JobState, Journal, JournalError, Lane, LaneJob,
    Pause, Retention, SessionRecord,
};
use crate::error::Chain;
use crate::telemetry::{Labels, labels};

/// Records waiting to be written at most; one beyond is lost, and counted.
pub const MAX_WAITING: usize = 16_384;

/// Records taken from the channel at once.
const MAX_BATCH: usize = 512;

/// Records written at once (calls in flight on DynamoDB; one transaction on SQLite,
/// whose writer commits whatever waits together).
const WRITERS: usize = 64;

/// How long a read waits for the records taken before it; then it reads what is
/// written (a journal that cannot be written must not stop the views).
const SETTLE_PATIENCE: Duration = Duration::from_secs(5);

/// A record waiting to be written.
enum Entry {
    Delivery(Box<DeliveryRecord>, Vec<LaneJob>),
    Queued(Vec<LaneJob>),
}

/// A journal whose admission records are written after the answer (see the module).
pub struct Deferred {
    inner: Arc<dyn Journal>,
    entries: mpsc::Sender<Entry>,
    /// Records taken into the channel, and records written (or given up) since start.
    taken: AtomicU64,
    written: watch::Receiver<u64>,
    lost: Family<Labels, Counter>,
}

impl Deferred {
    /// Wraps `inner`; records lost are counted in `lost` (by reason). Starts the task
    /// that writes them.
    pub fn new(inner: Arc<dyn Journal>, lost: Family<Labels, Counter>) -> Deferred {
        let (entries, waiting) = mpsc::channel(MAX_WAITING);
        let (written, watcher) = watch::channel(0);
        tokio::spawn(write(inner.clone(), waiting, written, lost.clone()));
        Deferred {
            inner,
            entries,
            taken: AtomicU64::new(0),
            written: watcher,
            lost,
        }
    }

    fn take(&self, entry: Entry) -> Result<(), JournalError> {
        match self.entries.try_send(entry) {
            Ok(()) => {
                self.taken.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            Err(refused) => {
                let reason = match refused {
                    mpsc::error::TrySendError::Full(_) => "full",
                    mpsc::error::TrySendError::Closed(_) => "stopped",
                };
                self.lost
                    .get_or_create(&labels(&[("reason", reason)]))
                    .inc();
                Err(JournalError {
                    message: format!(
                        "the journal's records waiting to be written are {reason}; this one is lost"
                    ),
                    source: None,
                })
            }
        }
    }

    /// Waits until every record taken so far is written (or given up), for at most
    /// `patience`; whether they all were.
    pub async fn settle_within(&self, patience: Duration) -> bool {
        let target = self.taken.load(Ordering::SeqCst);
        let mut written = self.written.clone();
        tokio::time::timeout(patience, written.wait_for(|written| *written >= target))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// Waits for the records taken before a read or another write.
    async fn settle(&self) {
        if !self.settle_within(SETTLE_PATIENCE).await {
            tracing::warn!(
                "The journal's records are slow to be written; reading what is written."
            );
        }
    }
}

/// Writes the records as they come, many at once, and counts each written or lost.
async fn write(
    inner: Arc<dyn Journal>,
    mut entries: mpsc::Receiver<Entry>,
    written: watch::Sender<u64>,
    lost: Family<Labels, Counter>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while entries.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let count = batch.len() as u64;
        let inner = &inner;
        let failures: Vec<JournalError> = futures_util::stream::iter(batch.drain(..))
            .map(|entry| async move {
                match entry {
                    Entry::Delivery(record, jobs) => inner.record_delivery(&record, &jobs).await,
                    Entry::Queued(jobs) => inner.queued(&jobs).await,
                }
            })
            .buffer_unordered(WRITERS)
            .filter_map(|outcome| async move { outcome.err() })
            .collect()
            .await;
        if let Some(error) = failures.first() {
            lost.get_or_create(&labels(&[("reason", "failed")]))
                .inc_by(failures.len() as u64);
            tracing::warn!(error = %Chain(error), lost = failures.len(), "Could not write records of queued jobs in the journal.");
        }
        written.send_modify(|written| *written += count);
    }
}

#[async_trait]
impl Journal for Deferred {
    async fn record_delivery(
        &self,
        delivery: &DeliveryRecord,
        queued: &[LaneJob],
    ) -> Result<(), JournalError> {
        self.take(Entry::Delivery(Box::new(delivery.clone()), queued.to_vec()))
    }

    async fn queued(&self, jobs: &[LaneJob]) -> Result<(), JournalError> {
        self.take(Entry::Queued(jobs.to_vec()))
    }

    async fn deliveries(
        &self,
        filter: &DeliveryFilter,
    ) -> Result<Vec<DeliveryRecord>, JournalError> {
        self.settle().await;
        self.inner.deliveries(filter).await
    }

    async fn delivery(&self, id: &str) -> Result<Vec<DeliveryRecord>, JournalError> {
        self.settle().await;
        self.inner.delivery(id).await
    }

    async fn advance(
        &self,
        job: &LaneJob,
        state: JobState,
        status: Option<&str>,
    ) -> Result<(), JournalError> {
        self.settle().await;
        self.inner.advance(job, state, status).await
    }

    async fn lane_jobs(&self, lane: Option<&Lane>) -> Result<Vec<LaneJob>, JournalError> {
        self.settle().await;
        self.inner.lane_jobs(lane).await
    }

    async fn job(&self, name: &str) -> Result<Option<LaneJob>, JournalError> {
        self.settle().await;
        self.inner.job(name).await
    }

    async fn pause(&self, lane: &Lane, reason: &str) -> Result<Pause, JournalError> {
        self.settle().await;
        self.inner.pause(lane, reason).await
    }

    async fn resume(&self, lane: &Lane) -> Result<bool, JournalError> {
        self.settle().await;
        self.inner.resume(lane).await
    }

    async fn occupy(&self, lane: &Lane, execution: &str) -> Result<(), JournalError> {
        self.settle().await;
        self.inner.occupy(lane, execution).await
    }

    async fn vacate(&self, lane: &Lane) -> Result<(), JournalError> {
        self.settle().await;
        self.inner.vacate(lane).await
    }

    async fn holds(&self) -> Result<Vec<Hold>, JournalError> {
        self.settle().await;
        self.inner.holds().await
    }

    async fn hold(&self, lane: &Lane) -> Result<Option<Hold>, JournalError> {
        self.settle().await;
        self.inner.hold(lane).await
    }

    async fn park(&self, job: &LaneJob, ordered: bool) -> Result<bool, JournalError> {
        self.settle().await;
        self.inner.park(job, ordered).await
    }

    async fn fence(
        &self,
        lane: &Lane,
        fence: &str,
        stale_before_ms: i64,
    ) -> Result<bool, JournalError> {
        self.settle().await;
        self.inner.fence(lane, fence, stale_before_ms).await
    }

    async fn parked(&self, lane: &Lane, limit: usize) -> Result<Vec<LaneJob>, JournalError> {
        self.settle().await;
        self.inner.parked(lane, limit).await
    }

    async fn releasing(&self, lane: &Lane, jobs: &[LaneJob]) -> Result<(), JournalError> {
        self.settle().await;
        self.inner.releasing(lane, jobs).await
    }

    async fn unparked(&self, lane: &Lane, jobs: &[LaneJob]) -> Result<(), JournalError> {
        self.settle().await;
        self.inner.unparked(lane, jobs).await
    }

    async fn end_hold(&self, lane: &Lane, fence: Option<&str>) -> Result<HoldEnd, JournalError> {
        self.settle().await;
        self.inner.end_hold(lane, fence).await
    }

    async fn pauses(&self) -> Result<Vec<Pause>, JournalError> {
        self.settle().await;
        self.inner.pauses().await
    }

    async fn prune(&self, retention: Retention) -> Result<(), JournalError> {
        self.settle().await;
        self.inner.prune(retention).await
    }

    // Sessions are not what admission records: no wait.
    async fn open_session(&self, session: &SessionRecord) -> Result<(), JournalError> {
        self.inner.open_session(session).await
    }

    async fn session(&self, id_digest: &str) -> Result<Option<SessionRecord>, JournalError> {
        self.inner.session(id_digest).await
    }

    async fn end_session(&self, id_digest: &str) -> Result<(), JournalError> {
        self.inner.end_session(id_digest).await
    }

    async fn end_sessions_except(&self, token_digests: &[String]) -> Result<usize, JournalError> {
        self.inner.end_sessions_except(token_digests).await
    }
}
