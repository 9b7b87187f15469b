//! The CodeCommit decoder on arbitrary bodies: the first byte picks the transport (an
//! EventBridge API destination's raw event, or an SNS envelope whose message is the
//! event). Reading the envelope, building the string SNS signs and decoding must
//! refuse or succeed, never panic; what decodes must plan against a configuration
//! with CodeCommit routes, within Step Functions' limits, the same way twice.
#![no_main]

use std::sync::OnceLock;

use gitdispatch::app::Compiled;
use gitdispatch::event::DeliveryId;
use gitdispatch::execution::MAX_INPUT_BYTES;
use gitdispatch::execution::name::{ExecutionName, MAX_NAME_LENGTH};
use gitdispatch::source::codecommit::Decoded;
use gitdispatch::source::codecommit::decode::decode;
use gitdispatch::source::codecommit::sns::SnsMessage;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[codecommit]
api_keys = ["fuzz-key-0123456789abcdef"]

[[pipelines]]
name = "deploy"
command = ["true"]
concurrency = "serial"

[[pipelines.projects]]
name = "api"
repository = "us-east-1/demo"
default_branch = "main"
skip_flag = "skip_api"
paths = ["api/**"]

[[pipelines]]
name = "build"
command = ["true"]

[[routes]]
pipeline = "build"
sources = ["codecommit"]
events = ["push"]
environment = "ci"
commits = "each"

[[routes]]
pipeline = "deploy"
sources = ["codecommit"]
events = ["push"]
branches = ["hotfix/*", "main"]
environment = "acceptance"
commits = "head"
teardown_on_delete = true

[[routes]]
pipeline = "deploy"
sources = ["codecommit"]
events = ["pull_request"]
environment = "pr-{number}"
"#;

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        gitdispatch::app::from_toml_str(CONFIG, &|_| None).expect("the fuzz configuration compiles")
    })
}

fn decoded(data: &[u8]) -> Option<Decoded> {
    let (first, body) = data.split_first()?;
    if first % 2 == 0 {
        return decode(body, None).ok();
    }
    let message: SnsMessage = serde_json::from_slice(body).ok()?;
    let to_sign = message.string_to_sign().ok()?;
    assert!(to_sign.ends_with(&format!("Type\n{}\n", message.kind)));
    let delivery = DeliveryId::parse(&message.message_id).ok()?;
    decode(message.message.as_bytes(), Some(&delivery)).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(Decoded::Events(events)) = decoded(data) else {
        return;
    };
    let planner = &compiled().planner;
    for event in &events {
        let Ok(plan) = planner.plan(event) else {
            continue;
        };
        for request in &plan.requests {
            let name = request.name.as_str();
            assert!(name.len() <= MAX_NAME_LENGTH);
            assert!(ExecutionName::parse(name).is_ok());
            assert!(request.input.as_str().len() <= MAX_INPUT_BYTES);
        }
        if plan.expansion.is_some() {
            assert!(plan.requests.is_empty());
        }
        let again = planner.plan(event).unwrap();
        assert_eq!(again.requests, plan.requests);
        assert_eq!(again.expansion, plan.expansion);
    }
});
