//! Inputs and names: templates, limits, cut messages, determinism, problems.

use super::pull_requests::PREVIEW_ROUTE;
use super::*;
use crate::plan::input::MAX_MESSAGE_BYTES;

#[test]
fn templates_replace_the_default_shape() {
    let planner = planner(
        &format!(
            r#"{PIPELINES}
[[pipelines]]
name = "templated"
command = ["true"]
[pipelines.input_template]
Comment = "from gitdispatch"
"stage.$" = "$.environment"
"sha.$" = "$.git.commit"
{HOTFIX_ROUTE}"#
        )
        .replace("pipeline = \"deploy\"", "pipeline = \"templated\""),
    );
    let plan = planner
        .plan(&push("refs/heads/hotfix/x", vec![commit(2, "m", &["a"])]))
        .unwrap();
    assert_eq!(
        plan.requests[0].input.as_str(),
        format!(
            r#"{{"Comment":"from gitdispatch","stage":"acceptance","sha":"{}"}}"#,
            sha(2)
        )
    );
}

#[test]
fn inputs_over_the_step_functions_limit_are_refused() {
    let huge = "x".repeat(MAX_INPUT_BYTES);
    let planner = planner(&format!(
        "{PIPELINES}[[pipelines]]\nname = \"big\"\ncommand = [\"true\"]\n\
         [pipelines.input_template]\nblob = \"{huge}\"\n\
         [[routes]]\npipeline = \"big\"\nenvironment = \"ci\"\n"
    ));
    let error = planner
        .plan(&push("refs/heads/main", vec![commit(2, "m", &["a"])]))
        .unwrap_err();
    assert!(matches!(error, PlanError::InputTooLarge { bytes, .. } if bytes > MAX_INPUT_BYTES));
}

#[test]
fn long_messages_are_cut() {
    let planner = planner(&format!("{PIPELINES}{HOTFIX_ROUTE}"));
    let long = "é".repeat(MAX_MESSAGE_BYTES);
    let plan = planner
        .plan(&push("refs/heads/hotfix/x", vec![commit(2, &long, &["a"])]))
        .unwrap();
    let message = input(&plan.requests[0])["git"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.len() <= MAX_MESSAGE_BYTES);
    assert!(long.starts_with(&message));
}

#[test]
fn possibly_truncated_commit_lists_are_flagged() {
    let planner = planner(&format!("{PIPELINES}{HOTFIX_ROUTE}"));
    let event = edit_push(
        push("refs/heads/hotfix/x", vec![commit(2, "m", &["a"])]),
        |push| push.commits_truncated = true,
    );
    assert!(planner.plan(&event).unwrap().commits_may_be_truncated);
}

#[test]
fn planning_is_deterministic() {
    let planner = planner(&format!("{PIPELINES}{HOTFIX_ROUTE}{PREVIEW_ROUTE}"));
    let event = push(
        "refs/heads/hotfix/x",
        vec![commit(2, "one", &["a"]), commit(3, "two", &["docs/b"])],
    );
    let first = planner.plan(&event).unwrap();
    let second = planner.plan(&event).unwrap();
    assert_eq!(first.requests, second.requests);
    assert_eq!(first.trace, second.trace);
}

#[test]
fn route_problems_are_reported_with_key_paths() {
    let text = format!(
        "{SECRET_ENV}{PIPELINES}[[routes]]\npipeline = \"deploy\"\nenvironment = \"pr-{{number}}\"\n\
         branches = [\"a\"]\nbranches_ignore = [\"b\"]\nactions = [\"opend\"]\n\
         [[routes]]\npipeline = \"deploy\"\nenvironment = \"{{nope}}\"\n"
    );
    let crate::config::LoadError::Invalid(problems) =
        crate::app::from_toml_str(&text, &|_| None).unwrap_err()
    else {
        panic!("expected problems");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "routes[0].branches_ignore",
            "routes[0].actions",
            "routes[0].actions[0]",
            "routes[0].environment",
            "routes[1].environment",
        ]
    );
}
