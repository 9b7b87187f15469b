use super::*;

#[test]
fn groups_that_sqs_would_refuse_are_hashed() {
    let message = |group: Option<&str>| Message {
        id: "deploy-acceptance-0123456-0123456789abcdef0123".into(),
        group: group.map(str::to_string),
        body: "{}".into(),
    };
    assert_eq!(
        SqsQueue::message_group(&message(Some("deploy/acceptance"))),
        "deploy/acceptance"
    );
    assert_eq!(
        SqsQueue::message_group(&message(None)),
        "deploy-acceptance-0123456-0123456789abcdef0123",
        "an ungrouped job is a group of its own"
    );
    for group in ["deploy/feature ü", "deploy/a b", &"x".repeat(129)] {
        let shown = SqsQueue::message_group(&message(Some(group)));
        assert!(
            shown.starts_with("sha256-") && shown.len() <= 128,
            "{shown}"
        );
    }
}

#[test]
fn visibility_rounds_up_to_whole_seconds() {
    assert_eq!(whole_seconds(Duration::ZERO), 0);
    assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
    assert_eq!(whole_seconds(Duration::from_millis(2500)), 3);
    assert_eq!(whole_seconds(Duration::from_secs(100_000)), 43_200);
}

fn grouped(id: &str, bytes: usize) -> Message {
    Message {
        id: id.into(),
        group: Some("deploy/acceptance".into()),
        body: format!(r#"{{"pad":"{}"}}"#, "x".repeat(bytes)),
    }
}

#[test]
fn up_to_one_batch_of_a_stream_goes_out_as_it_is() {
    let messages: Vec<Message> = (0..MAX_BATCH)
        .map(|n| grouped(&n.to_string(), 10))
        .collect();
    let refs: Vec<&Message> = messages.iter().collect();
    let out = envelopes(&refs, MAX_BATCH_BYTES);
    assert_eq!(out.len(), MAX_BATCH);
    assert!(out.iter().all(|message| message.parts == 0));
}

#[test]
fn a_longer_stream_is_packed_in_order_into_envelopes_that_fit() {
    let messages: Vec<Message> = (0..300)
        .map(|n| grouped(&format!("m{n:03}"), 2000))
        .collect();
    let refs: Vec<&Message> = messages.iter().collect();
    let out = envelopes(&refs, 64 * 1024);
    assert!(out.len() > 1 && out.len() < 20, "{} envelopes", out.len());
    let mut opened = Vec::new();
    for envelope in &out {
        assert!(envelope.parts > 0);
        assert!(envelope.size() <= 64 * 1024, "{}", envelope.size());
        assert_eq!(envelope.message.group.as_deref(), Some("deploy/acceptance"));
        let received = Received {
            receipt: Receipt("r".into()),
            message: envelope.message.clone(),
            receive_count: 1,
            sent_at_ms: None,
            shared: false,
        };
        let parts = open_message(received, true);
        assert_eq!(parts.len(), envelope.parts);
        opened.extend(parts.into_iter().map(|part| part.message));
    }
    assert_eq!(opened, messages, "every message, in order, as it was");
    // The same send packs into the same ids (a retried send deduplicates).
    let again = envelopes(&refs, 64 * 1024);
    let ids = |out: &[Outgoing]| -> Vec<String> {
        out.iter()
            .map(|message| message.message.id.clone())
            .collect()
    };
    assert_eq!(ids(&out), ids(&again));
}

#[test]
fn a_message_too_big_to_share_an_envelope_goes_alone_in_its_place() {
    let mut messages: Vec<Message> = (0..12).map(|n| grouped(&format!("m{n}"), 100)).collect();
    messages.insert(5, grouped("big", 64 * 1024 - 300));
    let refs: Vec<&Message> = messages.iter().collect();
    let out = envelopes(&refs, 64 * 1024);
    let shape: Vec<usize> = out.iter().map(|message| message.parts).collect();
    assert_eq!(shape, vec![5, 0, 7]);
    assert_eq!(out[1].message.id, "big");
}

#[test]
fn an_envelope_that_cannot_be_read_is_handed_out_as_it_is() {
    let received = Received {
        receipt: Receipt("r".into()),
        message: Message {
            id: "envelope-x".into(),
            group: None,
            body: "not json".into(),
        },
        receive_count: 1,
        sent_at_ms: None,
        shared: false,
    };
    let parts = open_message(received, true);
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].message.body, "not json");
}

#[test]
fn streams_of_one_batch_share_batches_in_their_order() {
    let one = |group: &str, id: &str| Outgoing {
        message: Message {
            id: id.into(),
            group: Some(group.into()),
            body: "{}".into(),
        },
        parts: 0,
    };
    // 25 groups of one message (a push's reports), a group of three, and a long one.
    let mut streams: Vec<Vec<Outgoing>> = (0..25)
        .map(|n| vec![one(&format!("report/{n}"), &format!("r{n}"))])
        .collect();
    streams.insert(3, vec![one("g", "g1"), one("g", "g2"), one("g", "g3")]);
    let long: Vec<Outgoing> = (0..11).map(|n| one("long", &format!("l{n}"))).collect();
    streams.push(long);
    let out = share_batches(streams);
    let ids = |stream: &Vec<Outgoing>| -> Vec<String> {
        stream
            .iter()
            .map(|message| message.message.id.clone())
            .collect()
    };
    assert_eq!(out[0].len(), 11, "the long stream as it was");
    let shared: Vec<&Vec<Outgoing>> = out[1..].iter().collect();
    assert_eq!(shared.len(), 3, "28 messages in batches of up to 10");
    assert!(shared.iter().all(|batch| batches(batch).len() == 1));
    let all: Vec<String> = shared.iter().flat_map(|batch| ids(batch)).collect();
    assert_eq!(all.len(), 28);
    let in_group: Vec<&String> = all.iter().filter(|id| id.starts_with('g')).collect();
    assert_eq!(in_group, ["g1", "g2", "g3"]);
    // A group's messages are never split between two batches.
    assert!(
        shared
            .iter()
            .any(|batch| ids(batch).iter().filter(|id| id.starts_with('g')).count() == 3)
    );
}
