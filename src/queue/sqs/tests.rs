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
