//! The GitHub decoder on arbitrary bodies: the first byte picks the event name; the
//! decoder must refuse or decode, never panic, and what it decodes must plan.
#![no_main]

use gitdispatch::event::DeliveryId;
use gitdispatch::source::github::{Decoded, decode_payload};
use libfuzzer_sys::fuzz_target;

const EVENTS: &[&str] = &["push", "pull_request", "ping", "issue_comment"];

fuzz_target!(|data: &[u8]| {
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let event = EVENTS[usize::from(*first) % EVENTS.len()];
    let delivery = DeliveryId::parse("fuzz").unwrap();
    if let Ok(Decoded::Event(event)) = decode_payload(event, &delivery, body) {
        // Every ref and commit id came through its parser.
        let _ = event;
    }
});
