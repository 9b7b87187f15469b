//! What the planner says of reporting: where each request is reported, the `pending`
//! shown at once, the final state of skipped commits, previews as deployments.

use super::*;
use crate::execution::report::{ReportState, Stage};

fn reporting_planner(routes: &str) -> Planner {
    let text = format!("[github]\nwebhook_secrets = [\"x\"]\ntoken = \"t\"\n{PIPELINES}\n{routes}");
    let config = Config::from_toml_str(&text, &|_| None).unwrap_or_else(|error| panic!("{error}"));
    Planner::new(&config).unwrap()
}

const ROUTES: &str = r#"
[[routes]]
pipeline = "build"
events = ["push"]
environment = "ci"
skip_ci = true
report_skipped = true

[[routes]]
pipeline = "deploy"
events = ["push"]
environment = "acceptance"
paths = ["src/**"]

[[routes]]
pipeline = "deploy"
events = ["pull_request"]
environment = "pr-{number}"
environment_url = "https://pr-{number}.example.com/{branch}"
"#;

#[test]
fn each_request_is_reported_pending_at_once_and_skips_only_where_asked() {
    let planner = reporting_planner(ROUTES);
    let event = push(
        "refs/heads/main",
        vec![
            commit(2, "Change the code", &["src/a.rs"]),
            commit(3, "Docs only [skip ci]", &["docs/a.md"]),
        ],
    );
    let plan = planner.plan(&event).unwrap();
    // build: commit 2 (3 asked to skip ci); deploy: commit 2 (3 changes nothing in src).
    assert_eq!(plan.requests.len(), 2);
    for request in &plan.requests {
        let target = request.report.as_ref().expect("reported");
        assert_eq!(target.commit, sha(2));
        assert_eq!(target.repository, "acme/project-api-v2");
        assert!(target.deployment.is_none(), "a push is no preview");
        assert_eq!(
            target.context,
            format!("gitdispatch/{}/{}", request.pipeline, request.environment)
        );
    }
    let shown: Vec<(String, CommitSha, Stage, ReportState, String)> = plan
        .reports
        .iter()
        .map(|report| {
            (
                report.target.context.clone(),
                report.target.commit.clone(),
                report.stage,
                report.state,
                report.description.clone(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                "gitdispatch/build/ci".to_string(),
                sha(2),
                Stage::Queued,
                ReportState::Pending,
                "Queued".to_string()
            ),
            (
                "gitdispatch/deploy/acceptance".to_string(),
                sha(2),
                Stage::Queued,
                ReportState::Pending,
                "Queued".to_string()
            ),
            (
                "gitdispatch/build/ci".to_string(),
                sha(3),
                Stage::Ended,
                ReportState::Success,
                "Skipped: skip_ci".to_string()
            ),
        ],
        "the deploy route skipped commit 3 too, but does not ask to report it"
    );
    assert_eq!(
        plan.reports[0].execution.as_ref(),
        Some(&plan.requests[0].name)
    );
    assert!(plan.reports[2].execution.is_none());
}

#[test]
fn a_pull_request_preview_is_a_deployment_and_other_sources_are_not_reported() {
    let planner = reporting_planner(ROUTES);
    let plan = planner.plan(&pull_request("opened", |_| {})).unwrap();
    let target = plan.requests[0].report.as_ref().unwrap();
    let deployment = target.deployment.as_ref().unwrap();
    assert_eq!(deployment.environment, "pr-42");
    assert_eq!(
        deployment.url.as_deref(),
        Some("https://pr-42.example.com/feature-thing")
    );
    assert_eq!(target.commit, sha(7));
    let plan = planner.plan(&pull_request("closed", |_| {})).unwrap();
    assert_eq!(plan.requests[0].action, crate::execution::Action::Teardown);
    assert!(
        plan.requests[0]
            .report
            .as_ref()
            .unwrap()
            .deployment
            .is_some()
    );

    // CodeCommit is not reported to (there is nowhere to report to).
    let mut event = push("refs/heads/main", vec![commit(2, "x", &["src/a.rs"])]);
    event.source = Source::CodeCommit;
    let plan = planner.plan(&event).unwrap();
    assert!(!plan.requests.is_empty());
    assert!(plan.requests.iter().all(|request| request.report.is_none()));
    assert!(plan.reports.is_empty());

    // Without a token or an App nothing is reported.
    let plan = super::planner(&format!("{PIPELINES}\n{ROUTES}"))
        .plan(&push(
            "refs/heads/main",
            vec![commit(2, "x", &["src/a.rs"])],
        ))
        .unwrap();
    assert!(plan.requests.iter().all(|request| request.report.is_none()));
    assert!(plan.reports.is_empty());
}
