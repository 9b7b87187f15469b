//! Pull requests: previews up and down, base-branch filters, drafts, forks, labels.

use serde_json::json;

use super::*;
use crate::execution::Action;

pub(super) const PREVIEW_ROUTE: &str = r#"
[[routes]]
name = "preview"
pipeline = "deploy"
events = ["pull_request"]
branches = ["main"]
environment = "pr-{number}"
"#;

#[test]
fn pull_requests_deploy_previews_and_tear_them_down() {
    let planner = planner(&format!("{PIPELINES}{PREVIEW_ROUTE}"));
    for action in ["opened", "synchronize", "reopened", "ready_for_review"] {
        let plan = planner.plan(&pull_request(action, |_| {})).unwrap();
        assert_eq!(plan.requests.len(), 1, "{action}");
        let request = &plan.requests[0];
        assert_eq!(request.environment, "pr-42");
        assert_eq!(request.action, Action::Deploy);
        assert_eq!(request.origin.commit, sha(7));
        let value = input(request);
        assert_eq!(value["git"]["pull_request"]["number"], json!(42));
        assert_eq!(value["git"]["branch"], json!("feature/thing"));
        assert_eq!(
            value["override_branches"][0],
            json!({"project": "project-api-v2", "branch": "feature/thing"})
        );
    }
    let closed = planner
        .plan(&pull_request("closed", |pr| pr.merged = true))
        .unwrap();
    assert_eq!(closed.requests[0].action, Action::Teardown);
    assert_eq!(
        input(&closed.requests[0])["git"]["action"],
        json!("teardown")
    );

    let labeled = planner.plan(&pull_request("labeled", |_| {})).unwrap();
    assert!(labeled.requests.is_empty());
    assert_eq!(labeled.matched_routes, 0);
}

#[test]
fn pull_request_branch_filters_apply_to_the_base() {
    let planner = planner(&format!("{PIPELINES}{PREVIEW_ROUTE}"));
    let plan = planner
        .plan(&pull_request("opened", |pr| {
            pr.base_ref = RefName::parse("refs/heads/release").unwrap()
        }))
        .unwrap();
    assert!(plan.requests.is_empty());
    assert!(
        plan.trace[0].contains("base branch \"release\""),
        "{:?}",
        plan.trace
    );
}

#[test]
fn drafts_and_forks_are_not_deployed_unless_allowed() {
    let strict = planner(&format!("{PIPELINES}{PREVIEW_ROUTE}"));
    let draft = pull_request("opened", |pr| pr.draft = true);
    let fork = pull_request("opened", |pr| pr.from_fork = true);
    let fork_closed = pull_request("closed", |pr| pr.from_fork = true);
    let draft_closed = pull_request("closed", |pr| pr.draft = true);

    let plan = strict.plan(&draft).unwrap();
    assert!(plan.requests.is_empty());
    assert_eq!(plan.skipped[0].reason, SkipReason::Draft);
    let plan = strict.plan(&fork).unwrap();
    assert!(plan.requests.is_empty());
    assert_eq!(plan.skipped[0].reason, SkipReason::Fork);
    assert!(strict.plan(&fork_closed).unwrap().requests.is_empty());
    // A draft may have been deployed before it went back to draft: closing tears down.
    assert_eq!(
        strict.plan(&draft_closed).unwrap().requests[0].action,
        Action::Teardown
    );

    let lenient = planner(&format!(
        "{PIPELINES}{PREVIEW_ROUTE}allow_drafts = true\nallow_forks = true\n"
    ));
    assert_eq!(lenient.plan(&draft).unwrap().requests.len(), 1);
    assert_eq!(lenient.plan(&fork).unwrap().requests.len(), 1);
}

#[test]
fn labels_and_actions_narrow_pull_request_routes() {
    let planner = planner(&format!(
        "{PIPELINES}{PREVIEW_ROUTE}labels = [\"preview\"]\nactions = [\"opened\", \"labeled\"]\n"
    ));
    assert!(
        planner
            .plan(&pull_request("opened", |_| {}))
            .unwrap()
            .requests
            .is_empty()
    );
    let labeled = pull_request("labeled", |pr| pr.labels = vec!["preview".to_string()]);
    assert_eq!(planner.plan(&labeled).unwrap().requests.len(), 1);
    let synchronize = pull_request("synchronize", |pr| pr.labels = vec!["preview".to_string()]);
    assert!(planner.plan(&synchronize).unwrap().requests.is_empty());
}
