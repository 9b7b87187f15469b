//! One contract for every ledger backend: the SQLite file and DynamoDB (on moto). A
//! commit of a lane is planned by deliveries or by reconcile, never both; a delivery
//! may take what deliveries took, reconcile only what nobody took or what it took under
//! the same name; concurrent claims of one commit leave exactly one winner.

use crate::common;

use std::sync::Arc;

use common::moto;
use gitdispatch::event::CommitSha;
use gitdispatch::execution::name::ExecutionName;
use gitdispatch::ledger::dynamodb::DynamoLedger;
use gitdispatch::ledger::sqlite::SqliteLedger;
use gitdispatch::ledger::{Claim, Claimant, Ledger};

fn claim(commit: char, name: &str) -> Claim {
    Claim {
        repository: "Acme/Project-API-v2".into(),
        pipeline: "deploy".into(),
        environment: "acceptance".into(),
        commit: CommitSha::parse(&commit.to_string().repeat(40)).unwrap(),
        name: ExecutionName::parse(name).unwrap(),
    }
}

const DELIVERED: &str = "deploy-acceptance-aaaaaaa-00000000000000000001";
const REDELIVERED: &str = "deploy-acceptance-aaaaaaa-00000000000000000002";
const RECONCILED: &str = "deploy-acceptance-aaaaaaa-00000000000000000003";
const OTHER_RECONCILE: &str = "deploy-acceptance-aaaaaaa-00000000000000000004";

async fn contract(ledger: Arc<dyn Ledger>) {
    use Claimant::{Delivery, Reconcile};
    // Deliveries share with deliveries.
    assert_eq!(
        ledger
            .claim(&[claim('a', DELIVERED)], Delivery)
            .await
            .unwrap(),
        [true]
    );
    assert_eq!(
        ledger
            .claim(&[claim('a', DELIVERED)], Delivery)
            .await
            .unwrap(),
        [true]
    );
    assert_eq!(
        ledger
            .claim(&[claim('a', REDELIVERED)], Delivery)
            .await
            .unwrap(),
        [true]
    );
    // Reconcile never takes what a delivery took; a dry run says so without writing.
    assert_eq!(
        ledger
            .peek(&[claim('a', RECONCILED)], Reconcile)
            .await
            .unwrap(),
        [false]
    );
    assert_eq!(
        ledger
            .claim(&[claim('a', RECONCILED)], Reconcile)
            .await
            .unwrap(),
        [false]
    );

    // Reconcile takes what nobody took, again under its own name, never under another.
    assert_eq!(
        ledger
            .peek(&[claim('b', RECONCILED)], Reconcile)
            .await
            .unwrap(),
        [true]
    );
    assert_eq!(
        ledger
            .claim(&[claim('b', RECONCILED)], Reconcile)
            .await
            .unwrap(),
        [true]
    );
    assert_eq!(
        ledger
            .claim(&[claim('b', RECONCILED)], Reconcile)
            .await
            .unwrap(),
        [true]
    );
    assert_eq!(
        ledger
            .claim(&[claim('b', OTHER_RECONCILE)], Reconcile)
            .await
            .unwrap(),
        [false]
    );
    // And a delivery never takes what reconcile took.
    assert_eq!(
        ledger
            .claim(&[claim('b', DELIVERED)], Delivery)
            .await
            .unwrap(),
        [false]
    );

    // Several claims at once are decided one by one.
    assert_eq!(
        ledger
            .claim(&[claim('a', RECONCILED), claim('c', RECONCILED)], Reconcile)
            .await
            .unwrap(),
        [false, true]
    );

    // A delivery that could not be queued gives its claim back: reconcile may plan it.
    ledger
        .claim(&[claim('d', DELIVERED)], Delivery)
        .await
        .unwrap();
    ledger
        .release(&[claim('d', DELIVERED)], Delivery)
        .await
        .unwrap();
    assert_eq!(
        ledger
            .claim(&[claim('d', RECONCILED)], Reconcile)
            .await
            .unwrap(),
        [true]
    );
    // Releasing what reconcile holds, or what another delivery holds, does nothing.
    ledger
        .release(&[claim('d', DELIVERED)], Delivery)
        .await
        .unwrap();
    assert_eq!(
        ledger
            .claim(&[claim('d', DELIVERED)], Delivery)
            .await
            .unwrap(),
        [false]
    );

    // Reconcile gives back what it could not queue: a delivery may then plan it; what
    // reconcile releases under another name, or a delivery's claim, stays.
    ledger
        .claim(&[claim('f', RECONCILED)], Reconcile)
        .await
        .unwrap();
    ledger
        .release(&[claim('f', DELIVERED)], Reconcile)
        .await
        .unwrap();
    assert_eq!(
        ledger
            .peek(&[claim('f', DELIVERED)], Delivery)
            .await
            .unwrap(),
        [false]
    );
    ledger
        .release(&[claim('f', RECONCILED)], Reconcile)
        .await
        .unwrap();
    assert_eq!(
        ledger
            .claim(&[claim('f', DELIVERED)], Delivery)
            .await
            .unwrap(),
        [true]
    );
    ledger
        .release(&[claim('f', DELIVERED)], Reconcile)
        .await
        .unwrap();
    assert_eq!(
        ledger
            .peek(&[claim('f', RECONCILED)], Reconcile)
            .await
            .unwrap(),
        [false],
        "reconcile cannot release a delivery's claim"
    );

    // Heads: none, then the last one recorded, whatever the repository's case.
    let main = "refs/heads/main";
    assert_eq!(
        ledger.head("acme/project-api-v2", main).await.unwrap(),
        None
    );
    let first = CommitSha::parse(&"1".repeat(40)).unwrap();
    let second = CommitSha::parse(&"2".repeat(40)).unwrap();
    ledger
        .advance("Acme/Project-API-v2", main, &first)
        .await
        .unwrap();
    assert_eq!(
        ledger.head("acme/project-api-v2", main).await.unwrap(),
        Some(first)
    );
    ledger
        .advance("acme/project-api-v2", main, &second)
        .await
        .unwrap();
    assert_eq!(
        ledger.head("ACME/project-api-v2", main).await.unwrap(),
        Some(second)
    );
    assert_eq!(
        ledger
            .head("acme/project-api-v2", "refs/heads/other")
            .await
            .unwrap(),
        None
    );

    // Idempotency keys: the first body's digest is kept; later ones are told it.
    assert_eq!(ledger.remember("key-1", "digest-a").await.unwrap(), None);
    assert_eq!(
        ledger
            .remember("key-1", "digest-a")
            .await
            .unwrap()
            .as_deref(),
        Some("digest-a")
    );
    assert_eq!(
        ledger
            .remember("key-1", "digest-b")
            .await
            .unwrap()
            .as_deref(),
        Some("digest-a")
    );
    assert_eq!(ledger.remember("key-2", "digest-b").await.unwrap(), None);

    // Reconcilers racing for one commit under different names: one wins.
    let mut racing = Vec::new();
    for n in 0..8 {
        let ledger = ledger.clone();
        racing.push(tokio::spawn(async move {
            let name = format!("deploy-acceptance-eeeeeee-0000000000000000010{n}");
            ledger
                .claim(&[claim('e', &name)], Claimant::Reconcile)
                .await
                .unwrap()[0]
        }));
    }
    let mut winners = 0;
    for task in racing {
        winners += usize::from(task.await.unwrap());
    }
    assert_eq!(winners, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sqlite_ledger_keeps_the_contract() {
    let directory = tempfile::tempdir().unwrap();
    let ledger = SqliteLedger::open(&directory.path().join("ledger.db")).unwrap();
    contract(Arc::new(ledger)).await;
    // A second process's view of the same file agrees.
    let again = SqliteLedger::open(&directory.path().join("ledger.db")).unwrap();
    assert_eq!(
        again
            .claim(&[claim('b', DELIVERED)], Claimant::Delivery)
            .await
            .unwrap(),
        [false]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dynamodb_ledger_keeps_the_contract() {
    let client = aws_sdk_dynamodb::Client::new(&moto::sdk_config().await);
    let table = moto::ledger_table(&client, "ledger").await;
    let ledger = DynamoLedger::new(client.clone(), table.clone());
    ledger.check().await.unwrap();
    contract(Arc::new(ledger)).await;
    // A table that does not exist is said at once.
    let missing = DynamoLedger::new(client, moto::unique("missing"));
    let error = missing.check().await.unwrap_err();
    assert!(error.to_string().contains("cannot describe"), "{error}");
}
