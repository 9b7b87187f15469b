//! The planner on arbitrary events against the example configuration: it never
//! panics, every name is valid for Step Functions, every input is JSON within Step
//! Functions' limit (or the plan is refused), and planning twice gives the same plan.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Unstructured;
use gitdispatch::app::Compiled;
use gitdispatch::event::{
    Commit, CommitSha, DeliveryId, Event, EventKind, Occurrence, PullRequest, PullRequestAction,
    Push, RefName, Source,
};
use gitdispatch::execution::MAX_INPUT_BYTES;
use gitdispatch::execution::name::{ExecutionName, MAX_NAME_LENGTH};
use libfuzzer_sys::fuzz_target;

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let text = include_str!("../../config/gitdispatch.toml");
        gitdispatch::app::from_toml_str(text, &|_| Some("fuzz-secret".to_string()))
            .expect("the example configuration compiles")
    })
}

fn sha(input: &mut Unstructured<'_>) -> arbitrary::Result<CommitSha> {
    let bytes: [u8; 20] = input.arbitrary()?;
    let text: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(CommitSha::parse(&text).expect("40 hex digits"))
}

fn git_ref(input: &mut Unstructured<'_>, kind: &str) -> arbitrary::Result<RefName> {
    let name: String = input.arbitrary()?;
    Ok(RefName::parse(&format!("refs/{kind}/{name}"))
        .unwrap_or_else(|_| RefName::parse(&format!("refs/{kind}/main")).unwrap()))
}

fn event(input: &mut Unstructured<'_>) -> arbitrary::Result<Event> {
    let repository = if input.arbitrary()? {
        "acme/project-api-v2".to_string()
    } else {
        input.arbitrary()?
    };
    let kind = if input.arbitrary()? {
        let count = input.int_in_range(0..=40)?;
        let mut commits = Vec::new();
        for _ in 0..count {
            let paths: Option<Vec<String>> = input.arbitrary()?;
            commits.push(Commit {
                id: sha(input)?,
                message: input.arbitrary()?,
                author: input.arbitrary()?,
                changed_paths: paths,
            });
        }
        let kind = if input.arbitrary()? { "heads" } else { "tags" };
        EventKind::Push(Push {
            git_ref: git_ref(input, kind)?,
            before: sha(input)?,
            after: sha(input)?,
            created: input.arbitrary()?,
            deleted: input.arbitrary()?,
            forced: input.arbitrary()?,
            commits_truncated: input.arbitrary()?,
            commits_listed: input.arbitrary()?,
            head_commit: None,
            commits,
        })
    } else {
        let action: String = input.arbitrary()?;
        EventKind::PullRequest(PullRequest {
            number: input.arbitrary()?,
            action: PullRequestAction::parse(&action),
            title: input.arbitrary()?,
            author: input.arbitrary()?,
            head_ref: git_ref(input, "heads")?,
            head_sha: sha(input)?,
            base_ref: git_ref(input, "heads")?,
            base_sha: sha(input)?,
            draft: input.arbitrary()?,
            merged: input.arbitrary()?,
            labels: input.arbitrary()?,
            from_fork: input.arbitrary()?,
        })
    };
    let occurrence: String = input.arbitrary()?;
    Ok(Event {
        source: Source::Github,
        delivery: DeliveryId::parse("fuzz").unwrap(),
        occurrence: Occurrence::from_parts(&[&occurrence]),
        repository,
        kind,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(event) = event(&mut Unstructured::new(data)) else {
        return;
    };
    let planner = &compiled().planner;
    let Ok(plan) = planner.plan(&event) else {
        return;
    };
    for request in &plan.requests {
        let name = request.name.as_str();
        assert!(name.len() <= MAX_NAME_LENGTH);
        assert!(ExecutionName::parse(name).is_ok());
        assert!(request.input.as_str().len() <= MAX_INPUT_BYTES);
        assert!(serde_json::from_str::<serde_json::Value>(request.input.as_str()).is_ok());
    }
    // A push waiting for its commits plans no start before they are fetched.
    if plan.expansion.is_some() {
        assert!(plan.requests.is_empty());
    }
    let again = planner.plan(&event).unwrap();
    assert_eq!(again.requests, plan.requests);
    assert_eq!(again.expansion, plan.expansion);
});
