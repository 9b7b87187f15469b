//! The embedded queue's cost per job: sending one job per commit (each send a durable
//! commit, `synchronous=FULL`), sending a batch of 100 in one commit, and receiving
//! and acknowledging. Real SQLite files in a temporary directory; the disk's fsync
//! time is part of what is measured.
//!
//!   cargo bench --bench queue

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gitdispatch::queue::embedded::{EmbeddedQueue, EmbeddedSettings};
use gitdispatch::queue::{Message, Queue};

fn message(n: u64) -> Message {
    Message {
        id: format!("bench-{n}"),
        group: None,
        body: format!(
            r#"{{"v":1,"type":"start","request":{{"pipeline":"build","name":"build-ci-0123456-{n:020x}","group":null,"environment":"ci","action":"deploy","input":"{{}}","origin":{{"source":"github","delivery":"d","repository":"acme/api","git_ref":"refs/heads/main","commit":"0123456789abcdef0123456789abcdef01234567"}}}}}}"#
        ),
    }
}

fn queue(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let directory = tempfile::tempdir().unwrap();
    let queue = runtime.block_on(async {
        EmbeddedQueue::open(EmbeddedSettings {
            path: directory.path().join("queue.db"),
            visibility_timeout: Duration::from_secs(30),
            max_receives: 5,
        })
        .await
        .unwrap()
    });
    let mut next = 0u64;
    let mut group = c.benchmark_group("embedded queue");
    group.throughput(Throughput::Elements(1));
    group.bench_function("send one job", |b| {
        b.iter(|| {
            next += 1;
            runtime.block_on(queue.send(&[message(next)])).unwrap();
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("send 100 jobs in one batch", |b| {
        b.iter(|| {
            let batch: Vec<Message> = (0..100)
                .map(|_| {
                    next += 1;
                    message(next)
                })
                .collect();
            runtime.block_on(queue.send(&batch)).unwrap();
        })
    });
    group.throughput(Throughput::Elements(10));
    group.bench_function("send, receive and ack 10 jobs", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let batch: Vec<Message> = (0..10)
                    .map(|_| {
                        next += 1;
                        message(next)
                    })
                    .collect();
                queue.send(&batch).await.unwrap();
                let received = queue.receive(10, Duration::ZERO).await.unwrap();
                for job in &received {
                    queue.ack(&job.receipt).await.unwrap();
                }
                assert!(!received.is_empty());
            })
        })
    });
    group.finish();
}

criterion_group!(benches, queue);
criterion_main!(benches);
