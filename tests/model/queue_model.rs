//! A property test holding the embedded queue against a simple in-memory model of the
//! same semantics: random sequences of sends, receives, acks, releases, extends,
//! dead letters and passing time must give the same answers from both.

use std::time::Duration;

use gitdispatch::queue::embedded::{EmbeddedQueue, EmbeddedSettings};
use gitdispatch::queue::{Message, Queue, Receipt};
use proptest::prelude::*;

const VISIBILITY_MS: u64 = 1000;
const MAX_RECEIVES: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Send(Vec<(u8, Option<u8>)>),
    Receive(usize),
    Ack(usize),
    Release(usize, u64),
    Extend(usize, u64),
    DeadLetter(usize),
    Pass(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => proptest::collection::vec((0u8..8, proptest::option::of(0u8..2)), 1..4).prop_map(Op::Send),
        3 => (1usize..4).prop_map(Op::Receive),
        2 => any::<usize>().prop_map(Op::Ack),
        1 => (any::<usize>(), 0u64..2500).prop_map(|(i, d)| Op::Release(i, d)),
        1 => (any::<usize>(), 0u64..2500).prop_map(|(i, d)| Op::Extend(i, d)),
        1 => any::<usize>().prop_map(Op::DeadLetter),
        2 => (0u64..2500).prop_map(Op::Pass),
    ]
}

#[derive(Debug)]
struct ModelJob {
    id: String,
    group: Option<String>,
    visible_at: u64,
    receive_count: u32,
    lease: Option<u64>,
}

/// The model: a list in send order, nothing else.
#[derive(Debug, Default)]
struct Model {
    now: u64,
    next_lease: u64,
    jobs: Vec<ModelJob>,
    dead: Vec<String>,
}

impl Model {
    fn send(&mut self, messages: &[Message]) {
        for message in messages {
            if !self.jobs.iter().any(|job| job.id == message.id) {
                self.jobs.push(ModelJob {
                    id: message.id.clone(),
                    group: message.group.clone(),
                    visible_at: self.now,
                    receive_count: 0,
                    lease: None,
                });
            }
        }
    }

    fn receivable(&self, index: usize) -> bool {
        let job = &self.jobs[index];
        job.visible_at <= self.now
            && job.group.as_ref().is_none_or(|group| {
                self.jobs
                    .iter()
                    .position(|other| other.group.as_ref() == Some(group))
                    == Some(index)
            })
    }

    /// The oldest receivable jobs in send order; one received MAX_RECEIVES times is
    /// dead-lettered instead of handed out, and the look is repeated (its group's next
    /// job may now be receivable) until `max` are leased or none is left.
    fn receive(&mut self, max: usize) -> Vec<(String, u32, u64)> {
        let mut out = Vec::new();
        while out.len() < max {
            let chosen: Vec<String> = (0..self.jobs.len())
                .filter(|&index| self.receivable(index))
                .take(max - out.len())
                .map(|index| self.jobs[index].id.clone())
                .collect();
            if chosen.is_empty() {
                break;
            }
            let mut exhausted = false;
            for id in chosen {
                let index = self.jobs.iter().position(|job| job.id == id).unwrap();
                if self.jobs[index].receive_count >= MAX_RECEIVES {
                    self.dead.push(id);
                    self.jobs.remove(index);
                    exhausted = true;
                    continue;
                }
                self.next_lease += 1;
                let job = &mut self.jobs[index];
                job.visible_at = self.now + VISIBILITY_MS;
                job.receive_count += 1;
                job.lease = Some(self.next_lease);
                out.push((job.id.clone(), job.receive_count, self.next_lease));
            }
            if !exhausted {
                break;
            }
        }
        out
    }

    fn find(&self, lease: u64) -> Option<usize> {
        self.jobs.iter().position(|job| job.lease == Some(lease))
    }
}

fn message(id: u8, group: Option<u8>) -> Message {
    Message {
        id: format!("job-{id}"),
        group: group.map(|group| format!("group-{group}")),
        body: format!("{{\"id\":{id}}}"),
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async move {
        let directory = tempfile::tempdir().unwrap();
        let queue = EmbeddedQueue::open(EmbeddedSettings {
            path: directory.path().join("model.db"),
            visibility_timeout: Duration::from_millis(VISIBILITY_MS),
            max_receives: MAX_RECEIVES,
        })
        .await
        .unwrap();
        let mut model = Model::default();
        // Every lease handed out: the queue's receipt and the model's lease number.
        let mut leases: Vec<(Receipt, gitdispatch::queue::Received, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Send(messages) => {
                    let messages: Vec<Message> = messages
                        .into_iter()
                        .map(|(id, group)| message(id, group))
                        .collect();
                    queue.send(&messages).await.unwrap();
                    model.send(&messages);
                }
                Op::Receive(max) => {
                    let got = queue.receive(max, Duration::ZERO).await.unwrap();
                    let expected = model.receive(max);
                    let got_pairs: Vec<(String, u32)> = got
                        .iter()
                        .map(|r| (r.message.id.clone(), r.receive_count))
                        .collect();
                    let expected_pairs: Vec<(String, u32)> = expected
                        .iter()
                        .map(|(id, count, _)| (id.clone(), *count))
                        .collect();
                    prop_assert_eq!(got_pairs, expected_pairs);
                    for (received, (_, _, lease)) in got.into_iter().zip(expected) {
                        leases.push((received.receipt.clone(), received, lease));
                    }
                }
                Op::Ack(index) | Op::DeadLetter(index) if !leases.is_empty() => {
                    let (receipt, received, lease) = &leases[index % leases.len()];
                    if matches!(op, Op::Ack(_)) {
                        queue.ack(receipt).await.unwrap();
                        if let Some(position) = model.find(*lease) {
                            model.jobs.remove(position);
                        }
                    } else {
                        queue.dead_letter(received, "test").await.unwrap();
                        if let Some(position) = model.find(*lease) {
                            let job = model.jobs.remove(position);
                            model.dead.push(job.id);
                        }
                    }
                }
                Op::Release(index, delay) | Op::Extend(index, delay) if !leases.is_empty() => {
                    let (receipt, _, lease) = &leases[index % leases.len()];
                    let delay_duration = Duration::from_millis(delay);
                    if matches!(op, Op::Release(..)) {
                        queue.release(receipt, delay_duration).await.unwrap();
                    } else {
                        queue.extend(receipt, delay_duration).await.unwrap();
                    }
                    if let Some(position) = model.find(*lease) {
                        model.jobs[position].visible_at = model.now + delay;
                    }
                }
                Op::Pass(ms) => {
                    tokio::time::advance(Duration::from_millis(ms)).await;
                    model.now += ms;
                }
                _ => {}
            }
        }
        let dead: Vec<String> = queue
            .dead_letters()
            .await
            .unwrap()
            .into_iter()
            .map(|dead| dead.message.id)
            .collect();
        prop_assert_eq!(dead, model.dead.clone());
        let depth = queue.depth().await.unwrap();
        prop_assert_eq!((depth.visible + depth.in_flight) as usize, model.jobs.len());
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_embedded_queue_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
