//! The `Queue` contract: one suite, run against every backend. A backend's test file
//! supplies a [`Harness`] and instantiates every case with `queue_contract_tests!`.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use gitdispatch::queue::{Message, Queue, Received};

/// What the suite needs from a backend besides the trait.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// A new, empty queue of its own.
    async fn queue(&self, visibility: Duration, max_receives: u32) -> Arc<dyn Queue>;
    /// Lets time pass for the queue (paused tokio time, or real time for a server).
    async fn pass(&self, duration: Duration);
    /// Ids of the messages dead-lettered from `queue`.
    async fn dead_letter_ids(&self, queue: &Arc<dyn Queue>) -> Vec<String>;
    /// The shortest visibility timeout the backend handles reliably.
    fn visibility(&self) -> Duration {
        Duration::from_secs(2)
    }
}

pub fn message(id: &str, group: Option<&str>) -> Message {
    Message {
        id: id.to_string(),
        group: group.map(str::to_string),
        body: format!(r#"{{"v":1,"type":"start","id":"{id}"}}"#),
    }
}

/// Receives until `count` messages arrived or nothing more comes (a backend may hand
/// out fewer than asked per call).
pub async fn receive_n(queue: &Arc<dyn Queue>, count: usize) -> Vec<Received> {
    let mut all = Vec::new();
    for _ in 0..20 {
        if all.len() >= count {
            break;
        }
        let batch = queue
            .receive(count - all.len(), Duration::from_secs(1))
            .await
            .unwrap();
        all.extend(batch);
    }
    all
}

pub async fn nothing_receivable(queue: &Arc<dyn Queue>) -> bool {
    queue
        .receive(10, Duration::from_millis(0))
        .await
        .unwrap()
        .is_empty()
}

fn ids(received: &[Received]) -> Vec<String> {
    received.iter().map(|r| r.message.id.clone()).collect()
}

pub async fn sent_messages_are_received_once_each(harness: &dyn Harness) {
    let queue = harness.queue(harness.visibility() * 5, 5).await;
    let sent: Vec<Message> = (0..5).map(|n| message(&format!("m{n}"), None)).collect();
    queue.send(&sent).await.unwrap();
    let received = receive_n(&queue, 5).await;
    let got: HashSet<String> = ids(&received).into_iter().collect();
    let want: HashSet<String> = sent.iter().map(|m| m.id.clone()).collect();
    assert_eq!(got, want);
    assert_eq!(received.len(), 5, "no message twice");
    for item in &received {
        assert_eq!(item.receive_count, 1);
        let original = sent.iter().find(|m| m.id == item.message.id).unwrap();
        assert_eq!(&item.message, original, "body and group come back as sent");
    }
    assert!(nothing_receivable(&queue).await);
}

pub async fn an_unacknowledged_message_comes_back_after_the_visibility_timeout(
    harness: &dyn Harness,
) {
    let visibility = harness.visibility();
    let queue = harness.queue(visibility, 5).await;
    queue.send(&[message("a", None)]).await.unwrap();
    let first = receive_n(&queue, 1).await;
    assert_eq!(ids(&first), ["a"]);
    assert!(
        nothing_receivable(&queue).await,
        "invisible while in flight"
    );
    harness.pass(visibility + Duration::from_secs(1)).await;
    let again = receive_n(&queue, 1).await;
    assert_eq!(ids(&again), ["a"]);
    assert_eq!(again[0].receive_count, 2);
}

pub async fn an_acknowledged_message_is_gone(harness: &dyn Harness) {
    let visibility = harness.visibility();
    let queue = harness.queue(visibility, 5).await;
    queue
        .send(&[message("a", None), message("b", None)])
        .await
        .unwrap();
    let received = receive_n(&queue, 2).await;
    for item in &received {
        queue.ack(&item.receipt).await.unwrap();
    }
    harness.pass(visibility + Duration::from_secs(1)).await;
    assert!(nothing_receivable(&queue).await);
}

pub async fn a_released_message_comes_back_after_its_delay(harness: &dyn Harness) {
    let visibility = harness.visibility() * 10;
    let queue = harness.queue(visibility, 5).await;
    queue.send(&[message("a", None)]).await.unwrap();
    let first = receive_n(&queue, 1).await;
    queue
        .release(&first[0].receipt, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(nothing_receivable(&queue).await, "still delayed");
    harness.pass(Duration::from_secs(3)).await;
    let second = receive_n(&queue, 1).await;
    assert_eq!(ids(&second), ["a"]);
    assert_eq!(second[0].receive_count, 2);
    // Released without delay: back at once.
    queue
        .release(&second[0].receipt, Duration::ZERO)
        .await
        .unwrap();
    let third = receive_n(&queue, 1).await;
    assert_eq!(ids(&third), ["a"]);
    assert_eq!(third[0].receive_count, 3);
}

pub async fn extending_keeps_a_message_invisible(harness: &dyn Harness) {
    let visibility = harness.visibility();
    let queue = harness.queue(visibility, 5).await;
    queue.send(&[message("a", None)]).await.unwrap();
    let first = receive_n(&queue, 1).await;
    harness.pass(visibility / 2).await;
    queue
        .extend(&first[0].receipt, visibility * 3)
        .await
        .unwrap();
    harness.pass(visibility + Duration::from_secs(1)).await;
    assert!(
        nothing_receivable(&queue).await,
        "the heartbeat outlived the first timeout"
    );
    harness.pass(visibility * 2 + Duration::from_secs(1)).await;
    assert_eq!(ids(&receive_n(&queue, 1).await), ["a"]);
}

pub async fn a_message_received_too_often_is_dead_lettered(harness: &dyn Harness) {
    let visibility = harness.visibility();
    let queue = harness.queue(visibility, 2).await;
    queue.send(&[message("poison", None)]).await.unwrap();
    for attempt in 1..=2 {
        let received = receive_n(&queue, 1).await;
        assert_eq!(ids(&received), ["poison"], "attempt {attempt}");
        assert_eq!(received[0].receive_count, attempt);
        harness.pass(visibility + Duration::from_secs(1)).await;
    }
    assert!(
        nothing_receivable(&queue).await,
        "a third receive is refused"
    );
    assert_eq!(harness.dead_letter_ids(&queue).await, ["poison"]);
}

pub async fn an_explicit_dead_letter_is_not_received_again(harness: &dyn Harness) {
    let visibility = harness.visibility();
    let queue = harness.queue(visibility, 5).await;
    queue.send(&[message("bad", None)]).await.unwrap();
    let received = receive_n(&queue, 1).await;
    queue
        .dead_letter(&received[0], "cannot succeed")
        .await
        .unwrap();
    harness.pass(visibility + Duration::from_secs(1)).await;
    assert!(nothing_receivable(&queue).await);
    assert_eq!(harness.dead_letter_ids(&queue).await, ["bad"]);
}

pub async fn a_group_is_handed_out_in_order_one_at_a_time(harness: &dyn Harness) {
    let queue = harness.queue(harness.visibility() * 10, 5).await;
    if !queue.capabilities().ordering_groups {
        return assert!(!queue.capabilities().ordering_groups);
    }
    let order = ["g1", "g2", "g3", "g4"];
    let mut sent: Vec<Message> = order
        .iter()
        .map(|id| message(id, Some("deploy/acceptance")))
        .collect();
    sent.insert(2, message("other", Some("deploy/production")));
    sent.push(message("free", None));
    queue.send(&sent).await.unwrap();

    let mut seen_in_group = Vec::new();
    let mut others = HashSet::new();
    for _ in 0..20 {
        let batch = queue.receive(10, Duration::from_secs(1)).await.unwrap();
        let in_group: Vec<&Received> = batch
            .iter()
            .filter(|r| r.message.group.as_deref() == Some("deploy/acceptance"))
            .collect();
        // Whatever a receive hands out of the group follows on from what came before.
        for item in &in_group {
            seen_in_group.push(item.message.id.clone());
        }
        assert_eq!(
            seen_in_group,
            order[..seen_in_group.len()],
            "group order kept"
        );
        // Nothing more of the group while one of it is in flight.
        if !in_group.is_empty() {
            assert!(
                queue
                    .receive(10, Duration::ZERO)
                    .await
                    .unwrap()
                    .iter()
                    .all(|r| {
                        others.insert(r.message.id.clone());
                        r.message.group.as_deref() != Some("deploy/acceptance")
                    }),
                "a group member was handed out while another was in flight"
            );
        }
        for item in &batch {
            if item.message.group.as_deref() != Some("deploy/acceptance") {
                others.insert(item.message.id.clone());
            }
            queue.ack(&item.receipt).await.unwrap();
        }
        if seen_in_group.len() == order.len() && others.len() == 2 {
            break;
        }
    }
    assert_eq!(seen_in_group, order);
    assert_eq!(
        others,
        HashSet::from(["other".to_string(), "free".to_string()])
    );
}

pub async fn a_busy_group_does_not_hold_up_others(harness: &dyn Harness) {
    let queue = harness.queue(harness.visibility() * 10, 5).await;
    if !queue.capabilities().ordering_groups {
        return assert!(!queue.capabilities().ordering_groups);
    }
    queue
        .send(&[message("a1", Some("a")), message("a2", Some("a"))])
        .await
        .unwrap();
    let held = receive_n(&queue, 1).await;
    assert_eq!(ids(&held)[0], "a1");
    queue
        .send(&[message("b1", Some("b")), message("free", None)])
        .await
        .unwrap();
    let mut later = HashSet::new();
    for _ in 0..10 {
        for item in queue.receive(10, Duration::from_secs(1)).await.unwrap() {
            assert_ne!(item.message.id, "a2", "a2 waits for a1");
            later.insert(item.message.id);
        }
        if later.len() == 2 {
            break;
        }
    }
    assert_eq!(later, HashSet::from(["b1".to_string(), "free".to_string()]));
}

pub async fn a_duplicate_of_a_queued_message_is_dropped(harness: &dyn Harness) {
    let queue = harness.queue(harness.visibility() * 10, 5).await;
    if !queue.capabilities().deduplication {
        return assert!(!queue.capabilities().deduplication);
    }
    let group = Some("deploy/acceptance");
    queue.send(&[message("same", group)]).await.unwrap();
    queue
        .send(&[message("same", group), message("next", group)])
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        let batch = queue.receive(10, Duration::from_secs(1)).await.unwrap();
        for item in &batch {
            got.push(item.message.id.clone());
            queue.ack(&item.receipt).await.unwrap();
        }
        if got.len() >= 2 {
            break;
        }
    }
    assert_eq!(got, ["same", "next"]);
    assert!(nothing_receivable(&queue).await);
}

pub async fn a_waiting_receive_gets_a_message_sent_meanwhile(harness: &dyn Harness) {
    let queue = harness.queue(harness.visibility() * 10, 5).await;
    let sender = queue.clone();
    let send = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sender.send(&[message("late", None)]).await.unwrap();
    });
    let received = queue.receive(1, Duration::from_secs(5)).await.unwrap();
    send.await.unwrap();
    assert_eq!(ids(&received), ["late"]);
}

/// Instantiates every contract case for a harness made by `$make`.
#[macro_export]
macro_rules! queue_contract_tests {
    ($attribute:meta, $make:expr) => {
        $crate::queue_contract_tests!(@cases $attribute, $make,
            sent_messages_are_received_once_each,
            an_unacknowledged_message_comes_back_after_the_visibility_timeout,
            an_acknowledged_message_is_gone,
            a_released_message_comes_back_after_its_delay,
            extending_keeps_a_message_invisible,
            a_message_received_too_often_is_dead_lettered,
            an_explicit_dead_letter_is_not_received_again,
            a_group_is_handed_out_in_order_one_at_a_time,
            a_busy_group_does_not_hold_up_others,
            a_duplicate_of_a_queued_message_is_dropped,
            a_waiting_receive_gets_a_message_sent_meanwhile,
        );
    };
    (@cases $attribute:meta, $make:expr, $($case:ident),* $(,)?) => {
        $(
            #[$attribute]
            async fn $case() {
                let harness = $make.await;
                queue_contract::$case(&harness).await;
            }
        )*
    };
}
