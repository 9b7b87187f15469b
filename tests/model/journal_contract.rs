//! One contract for every journal backend: the SQLite file and DynamoDB items (on
//! moto). Deliveries listed newest first and filtered; a job's state only moves on (a
//! late "queued" after the worker's "started" changes nothing); listings leave the
//! job's body out and a job read by name has it whole; pauses shared; many concurrent
//! deliveries all recorded.

use crate::common;

use std::sync::Arc;

use common::moto;
use gitdispatch::event::{CommitSha, DeliveryId, RefName, Source};
use gitdispatch::execution::name::ExecutionName;
use gitdispatch::execution::{Action, ExecutionRequest, Input, Origin};
use gitdispatch::journal::dynamodb::DynamoJournal;
use gitdispatch::journal::sqlite::SqliteJournal;
use gitdispatch::journal::{
    DeliveryFilter, DeliveryRecord, HoldEnd, JobState, Journal, Lane, LaneJob, Retention,
    SessionRecord,
};

fn request(n: u32) -> ExecutionRequest {
    ExecutionRequest {
        pipeline: "deploy".into(),
        name: ExecutionName::parse(&format!("deploy-production-{n:020}")).unwrap(),
        group: Some("deploy/production".into()),
        environment: "production".into(),
        action: Action::Deploy,
        input: Input::from_json(format!("{{\"n\": {n}}}")).unwrap(),
        origin: Origin {
            source: Source::Github,
            delivery: DeliveryId::parse(&format!("delivery-{n}")).unwrap(),
            repository: "Acme/Project-API-v2".into(),
            git_ref: RefName::parse("refs/heads/main").unwrap(),
            commit: CommitSha::parse(&format!("{n:040x}")).unwrap(),
        },
        report: None,
    }
}

fn delivery(n: u32, at_ms: i64) -> DeliveryRecord {
    DeliveryRecord {
        source: "github".into(),
        id: format!("delivery-{n}"),
        event: "push".into(),
        repository: "Acme/Project-API-v2".into(),
        git_ref: "refs/heads/main".into(),
        status: 202,
        outcome: "queued".into(),
        reason: None,
        executions: vec![request(n).name.as_str().to_string()],
        explanation: vec![format!("route deploy matched delivery {n}")],
        received_at_ms: at_ms,
    }
}

fn lane() -> Lane {
    Lane {
        pipeline: "deploy".into(),
        environment: "production".into(),
    }
}

async fn contract(journal: Arc<dyn Journal>) {
    let now = gitdispatch::clock::now_ms();
    // Two deliveries, each with its job.
    for n in 1..=2 {
        let mut job = LaneJob::queued(&request(n), 0, None);
        job.seq += i64::from(n);
        journal
            .record_delivery(&delivery(n, now + i64::from(n)), &[job])
            .await
            .unwrap();
    }
    let listed = journal
        .deliveries(&DeliveryFilter {
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = listed.iter().map(|record| record.id.as_str()).collect();
    assert_eq!(ids, ["delivery-2", "delivery-1"], "newest first");
    assert_eq!(listed[1], delivery(1, now + 1), "kept as recorded");
    let filtered = journal
        .deliveries(&DeliveryFilter {
            repository: Some("acme/project-api-v2".into()),
            since_ms: Some(now + 2),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(filtered.len(), 1, "{filtered:?}");
    assert_eq!(filtered[0].id, "delivery-2");
    assert!(
        journal
            .deliveries(&DeliveryFilter {
                repository: Some("acme/other".into()),
                limit: 10,
                ..DeliveryFilter::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(journal.delivery("delivery-1").await.unwrap().len(), 1);
    assert!(journal.delivery("delivery-9").await.unwrap().is_empty());

    // Listings leave the body out; a job read by name has it whole.
    let jobs = journal.lane_jobs(Some(&lane())).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert!(jobs.iter().all(|job| job.job.is_empty()), "{jobs:?}");
    assert!(jobs.iter().all(|job| job.state == JobState::Waiting));
    let first = journal
        .job(request(1).name.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.request(), Some(request(1)));
    // What supersede compares is kept: where a job came from and what it does, its
    // repository and ref, its place in the queue.
    assert_eq!(
        (first.source.as_str(), first.action.as_str()),
        ("github", "deploy")
    );
    let second = jobs.iter().find(|job| job.name != first.name).unwrap();
    assert!(gitdispatch::lanes::supersedes(second, &first));
    assert!(!gitdispatch::lanes::supersedes(&first, second));

    // States move on only.
    journal
        .advance(&first, JobState::Ended, Some("failed"))
        .await
        .unwrap();
    journal
        .advance(&first, JobState::Started, None)
        .await
        .unwrap();
    journal.queued(std::slice::from_ref(&first)).await.unwrap();
    let ended = journal.job(&first.name).await.unwrap().unwrap();
    assert_eq!(ended.state, JobState::Ended);
    assert_eq!(ended.status.as_deref(), Some("failed"));
    // An end is for good: neither superseded nor rejected after it.
    for late in [JobState::Superseded, JobState::Rejected, JobState::Waiting] {
        journal.advance(&first, late, Some("late")).await.unwrap();
        assert_eq!(
            journal.job(&first.name).await.unwrap().unwrap().state,
            JobState::Ended,
            "{late:?}"
        );
    }
    // The worker may record a start before the listener records it queued.
    let early = LaneJob::queued(&request(3), 0, None);
    journal
        .advance(&early, JobState::Started, None)
        .await
        .unwrap();
    journal.queued(std::slice::from_ref(&early)).await.unwrap();
    assert_eq!(
        journal.job(&early.name).await.unwrap().unwrap().state,
        JobState::Started
    );
    assert!(
        journal
            .lane_jobs(Some(&Lane {
                pipeline: "deploy".into(),
                environment: "staging".into(),
            }))
            .await
            .unwrap()
            .is_empty()
    );

    // Pauses.
    assert!(journal.pauses().await.unwrap().is_empty());
    journal.pause(&lane(), "incident 7").await.unwrap();
    let pauses = journal.pauses().await.unwrap();
    assert_eq!(pauses.len(), 1);
    assert_eq!(pauses[0].lane, lane());
    assert_eq!(pauses[0].reason, "incident 7");
    assert!(journal.resume(&lane()).await.unwrap(), "it was paused");
    assert!(!journal.resume(&lane()).await.unwrap(), "not any more");
    assert!(journal.pauses().await.unwrap().is_empty());

    // Holds: a paused lane parks its jobs, with their bodies, in queue order; they are
    // put back when it is resumed, and the hold ends only with none parked; a job put
    // back since the hold began is not parked again; a busy lane parks as a paused one.
    let held = Lane {
        pipeline: "deploy".into(),
        environment: "held".into(),
    };
    let held_job = |n: u32| {
        let mut request = request(n);
        request.environment = "held".into();
        LaneJob::queued(&request, 0, None)
    };
    assert!(
        !journal.park(&held_job(50), true).await.unwrap(),
        "not held: not parked"
    );
    journal.pause(&held, "incident 9").await.unwrap();
    assert!(journal.park(&held_job(52), false).await.unwrap());
    assert!(journal.park(&held_job(51), true).await.unwrap());
    let hold = journal.hold(&held).await.unwrap().unwrap();
    assert_eq!(hold.parked, 2);
    assert_eq!(hold.pause.as_ref().unwrap().reason, "incident 9");
    assert!(
        journal
            .holds()
            .await
            .unwrap()
            .iter()
            .any(|hold| hold.lane == held)
    );
    let parked = journal.parked(&held, 10).await.unwrap();
    let names: Vec<&str> = parked.iter().map(|job| job.name.as_str()).collect();
    assert_eq!(
        names,
        [held_job(52).name.as_str(), held_job(51).name.as_str()],
        "queue order (the order they were queued in)"
    );
    assert!(parked.iter().all(|job| job.parked && !job.job.is_empty()));
    let stale_before = gitdispatch::clock::now_ms() - 600_000;
    assert!(
        !journal.fence(&held, "chain-a", stale_before).await.unwrap(),
        "no chain while the lane is paused"
    );
    assert!(journal.resume(&held).await.unwrap());
    assert_eq!(
        journal.end_hold(&held, None).await.unwrap(),
        HoldEnd::Parked
    );
    // Resumed, its parked jobs not back yet: a serial lane's next job is parked behind
    // them, another lane's is not.
    assert!(journal.park(&held_job(54), true).await.unwrap());
    assert!(!journal.park(&held_job(55), false).await.unwrap());
    // One chain of rounds puts them back; another may not begin while it goes on.
    assert!(journal.fence(&held, "chain-a", stale_before).await.unwrap());
    assert!(!journal.fence(&held, "chain-b", stale_before).await.unwrap());
    assert!(
        journal.fence(&held, "chain-a", i64::MIN).await.unwrap(),
        "the chain goes on"
    );
    let hold = journal.hold(&held).await.unwrap().unwrap();
    assert_eq!(hold.fence.as_deref(), Some("chain-a"));
    assert!(hold.releasing());
    let parked = journal.parked(&held, 10).await.unwrap();
    assert_eq!(parked.len(), 3);
    journal.releasing(&held, &parked).await.unwrap();
    assert!(
        !journal.park(&held_job(52), true).await.unwrap(),
        "a job being put back is not parked again"
    );
    journal.unparked(&held, &parked).await.unwrap();
    assert!(journal.parked(&held, 10).await.unwrap().is_empty());
    assert!(
        !journal.park(&held_job(51), true).await.unwrap(),
        "a job put back is not parked again when it comes"
    );
    assert_eq!(
        journal.end_hold(&held, None).await.unwrap(),
        HoldEnd::Fenced,
        "only the chain ends the hold"
    );
    assert_eq!(
        journal.end_hold(&held, Some("chain-b")).await.unwrap(),
        HoldEnd::Fenced
    );
    // A pause meanwhile stops the chain and begins the hold again: what was put back
    // is parked again as it comes.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    journal.pause(&held, "incident 10").await.unwrap();
    let hold = journal.hold(&held).await.unwrap().unwrap();
    assert_eq!(hold.fence, None);
    assert!(journal.park(&held_job(52), true).await.unwrap());
    assert!(journal.resume(&held).await.unwrap());
    assert!(journal.fence(&held, "chain-c", stale_before).await.unwrap());
    let parked = journal.parked(&held, 10).await.unwrap();
    journal.releasing(&held, &parked).await.unwrap();
    journal.unparked(&held, &parked).await.unwrap();
    assert_eq!(
        journal.end_hold(&held, Some("chain-c")).await.unwrap(),
        HoldEnd::Ended
    );
    assert!(journal.hold(&held).await.unwrap().is_none());
    // Busy with a long execution.
    journal.occupy(&held, "deploy-held-long").await.unwrap();
    assert_eq!(journal.end_hold(&held, None).await.unwrap(), HoldEnd::Held);
    assert!(journal.park(&held_job(53), false).await.unwrap());
    let hold = journal.hold(&held).await.unwrap().unwrap();
    assert_eq!(hold.busy.as_deref(), Some("deploy-held-long"));
    assert!(hold.pause.is_none());
    assert!(
        journal
            .pauses()
            .await
            .unwrap()
            .iter()
            .all(|pause| pause.lane != held),
        "busy is not paused"
    );
    journal.vacate(&held).await.unwrap();
    let parked = journal.parked(&held, 10).await.unwrap();
    journal.releasing(&held, &parked).await.unwrap();
    journal.unparked(&held, &parked).await.unwrap();
    assert_eq!(journal.end_hold(&held, None).await.unwrap(), HoldEnd::Ended);

    // Sessions of the page: kept until ended or expired, for every reader.
    let session = SessionRecord {
        id_digest: "a".repeat(64),
        token_digest: "b".repeat(64),
        csrf: "c".repeat(64),
        expires_at: now / 1000 + 3600,
    };
    journal.open_session(&session).await.unwrap();
    assert_eq!(
        journal.session(&session.id_digest).await.unwrap(),
        Some(session.clone())
    );
    journal.end_session(&session.id_digest).await.unwrap();
    assert_eq!(journal.session(&session.id_digest).await.unwrap(), None);
    let expired = SessionRecord {
        id_digest: "d".repeat(64),
        expires_at: now / 1000 - 1,
        ..session.clone()
    };
    journal.open_session(&expired).await.unwrap();
    assert_eq!(journal.session(&expired.id_digest).await.unwrap(), None);
    assert_eq!(journal.session(&"e".repeat(64)).await.unwrap(), None);

    // Many deliveries at once: every one recorded.
    let mut writers = Vec::new();
    for n in 100..140 {
        let journal = journal.clone();
        writers.push(tokio::spawn(async move {
            journal
                .record_delivery(&delivery(n, now), &[LaneJob::queued(&request(n), 0, None)])
                .await
                .unwrap();
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let all = journal
        .deliveries(&DeliveryFilter {
            limit: 1000,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 42);
    assert_eq!(journal.lane_jobs(None).await.unwrap().len(), 47);
    journal.prune(Retention::default()).await.unwrap();
    assert_eq!(
        journal.lane_jobs(None).await.unwrap().len(),
        47,
        "nothing is old yet"
    );
}

/// Beyond its count, what ended goes; what waits stays; one delivery is kept.
async fn prunes_beyond_the_count(journal: Arc<dyn Journal>) {
    journal
        .prune(Retention {
            keep_secs: 3600,
            keep_count: 1,
        })
        .await
        .unwrap();
    let kept = journal.lane_jobs(None).await.unwrap();
    assert!(
        kept.iter().all(|job| job.state == JobState::Waiting),
        "{kept:?}"
    );
    assert_eq!(kept.len(), 45, "{kept:?}");
    assert_eq!(
        journal
            .deliveries(&DeliveryFilter {
                limit: 1000,
                ..DeliveryFilter::default()
            })
            .await
            .unwrap()
            .len(),
        1
    );
}

/// No path of the journal or the ledger scans a DynamoDB table: every read is a
/// lookup by key or a query of one partition.
#[test]
fn no_dynamodb_scan_is_left_in_the_source() {
    fn visit(directory: &std::path::Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(directory).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                visit(&path, found);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                if text.contains(".scan()") {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    let mut found = Vec::new();
    visit(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut found,
    );
    assert!(found.is_empty(), "a Scan in {found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sqlite_journal_keeps_the_contract() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("ledger.db");
    contract(Arc::new(SqliteJournal::open(&path).unwrap())).await;
    // Another process's view of the same file agrees.
    let again = SqliteJournal::open(&path).unwrap();
    assert_eq!(again.lane_jobs(None).await.unwrap().len(), 47);
    prunes_beyond_the_count(Arc::new(again)).await;
}

/// Processes that open a new journal file together (a `listen` and a `work` started
/// at once) all open it: one makes the tables and adds the columns, the others find
/// them made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_opening_a_new_file_together_all_open_it() {
    for _ in 0..20 {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("ledger.db");
        let opening: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                tokio::task::spawn_blocking(move || SqliteJournal::open(&path).map(|_| ()))
            })
            .collect();
        for opened in opening {
            opened.await.unwrap().unwrap();
        }
    }
}

/// The journal the daemon uses: the admission's records written after the answer,
/// everything else waiting for them. It keeps the same contract, read at once after
/// each write; what it wrote is in the file for another process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_journal_writing_records_after_the_answer_keeps_the_contract() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("ledger.db");
    let lost = prometheus_client::metrics::family::Family::default();
    let deferred = Arc::new(gitdispatch::journal::deferred::Deferred::new(
        Arc::new(SqliteJournal::open(&path).unwrap()),
        lost.clone(),
    ));
    contract(deferred.clone()).await;
    assert!(
        deferred
            .settle_within(std::time::Duration::from_secs(5))
            .await
    );
    let again = SqliteJournal::open(&path).unwrap();
    assert_eq!(again.lane_jobs(None).await.unwrap().len(), 47);
    assert_eq!(
        lost.get_or_create(&vec![("reason", "failed".to_string())])
            .get(),
        0,
        "no record lost"
    );
    prunes_beyond_the_count(deferred).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dynamodb_journal_keeps_the_contract() {
    let client = aws_sdk_dynamodb::Client::new(&moto::sdk_config().await);
    let table = moto::ledger_table(&client, "journal").await;
    let journal: Arc<dyn Journal> = Arc::new(DynamoJournal::new(
        client.clone(),
        table.clone(),
        Retention::default(),
    ));
    contract(journal.clone()).await;
    prunes_beyond_the_count(journal).await;
    // What was pruned is gone from the table, not merely from its lists.
    let kept = client
        .get_item()
        .table_name(&table)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("lanejob#{}", request(1).name)),
        )
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    assert!(kept.item().is_none(), "the ended job was deleted");
}
