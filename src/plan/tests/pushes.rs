//! Pushes: every commit, branches and tags, paths, skips, projects.

use std::collections::HashSet;

use serde_json::json;

use super::*;
use crate::execution::Action;

#[test]
fn every_commit_of_a_push_gets_an_execution_oldest_first() {
    let planner = planner(&format!("{PIPELINES}{HOTFIX_ROUTE}"));
    let event = push(
        "refs/heads/hotfix/important_patch",
        vec![
            commit(2, "one", &["a"]),
            commit(3, "two", &["b"]),
            commit(4, "three", &["c"]),
        ],
    );
    let plan = planner.plan(&event).unwrap();
    assert_eq!(commits_of(&plan), vec![sha(2), sha(3), sha(4)]);
    let names: HashSet<_> = plan.requests.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names.len(), 3, "names are distinct");
    let first = &plan.requests[0];
    assert_eq!(first.pipeline, "deploy");
    assert_eq!(first.group.as_deref(), Some("deploy/acceptance"));
    assert_eq!(first.action, Action::Deploy);
    assert!(
        first
            .name
            .as_str()
            .starts_with(&format!("deploy-acceptance-{}-", sha(2).short()))
    );
    assert_eq!(
        input(first),
        json!({
            "environment": "acceptance",
            "skip_api_v2": false,
            "skip_console_v1": true,
            "skip_docs": true,
            "override_branches": [
                {"project": "project-api-v2", "branch": "hotfix/important_patch"},
                {"project": "project-docs", "branch": "hotfix/important_patch"}
            ],
            "git": {
                "provider": "github",
                "repository": "acme/project-api-v2",
                "event": "push",
                "ref": "refs/heads/hotfix/important_patch",
                "branch": "hotfix/important_patch",
                "commit": sha(2).as_str(),
                "message": "one",
                "author": "Ada",
                "delivery": "delivery-1",
                "pull_request": null,
                "action": "deploy"
            }
        })
    );
}

#[test]
fn head_mode_gives_one_execution_for_the_newest_commit() {
    let planner = planner(&format!("{PIPELINES}{HOTFIX_ROUTE}commits = \"head\"\n"));
    let event = push(
        "refs/heads/hotfix/x",
        vec![commit(2, "one", &["a"]), commit(3, "two", &["docs/b"])],
    );
    let plan = planner.plan(&event).unwrap();
    assert_eq!(commits_of(&plan), vec![sha(3)]);
    // The head stands for the whole push: docs changed in the push, so docs deploy.
    assert_eq!(input(&plan.requests[0])["skip_docs"], json!(false));
}

#[test]
fn branch_filters_follow_github_actions() {
    let cases: &[(&str, &str, bool)] = &[
        // (filters, pushed ref, matches)
        ("branches = [\"hotfix/*\"]", "refs/heads/hotfix/a", true),
        ("branches = [\"hotfix/*\"]", "refs/heads/hotfix/a/b", false),
        ("branches = [\"hotfix/**\"]", "refs/heads/hotfix/a/b", true),
        ("branches = [\"hotfix/*\"]", "refs/heads/main", false),
        ("branches = [\"hotfix/*\"]", "refs/tags/v1", false),
        ("branches = [\"**\", \"!main\"]", "refs/heads/main", false),
        ("branches = [\"**\", \"!main\"]", "refs/heads/dev", true),
        ("branches_ignore = [\"main\"]", "refs/heads/main", false),
        ("branches_ignore = [\"main\"]", "refs/heads/dev", true),
        ("branches_ignore = [\"main\"]", "refs/tags/v1", false),
        ("tags = [\"v*\"]", "refs/tags/v1.2", true),
        ("tags = [\"v*\"]", "refs/tags/x1.2", false),
        ("tags = [\"v*\"]", "refs/heads/main", false),
        ("tags_ignore = [\"v*-rc\"]", "refs/tags/v1-rc", false),
        ("tags_ignore = [\"v*-rc\"]", "refs/tags/v1", true),
        ("", "refs/heads/anything", true),
        ("", "refs/tags/anything", true),
        (
            "branches = [\"main\"]\ntags = [\"v*\"]",
            "refs/tags/v2",
            true,
        ),
        (
            "branches = [\"main\"]\ntags = [\"v*\"]",
            "refs/heads/main",
            true,
        ),
    ];
    for (filters, git_ref, expected) in cases {
        let planner = planner(&format!(
            "{PIPELINES}[[routes]]\npipeline = \"build\"\nenvironment = \"ci\"\n{filters}\n"
        ));
        let plan = planner
            .plan(&push(git_ref, vec![commit(2, "m", &["x"])]))
            .unwrap();
        assert_eq!(
            plan.requests.len() == 1,
            *expected,
            "{filters:?} on {git_ref}: {:?}",
            plan.trace
        );
        assert_eq!(plan.matched_routes == 1, *expected);
    }
}

#[test]
fn repository_and_source_must_match() {
    let planner = planner(&format!(
        "{PIPELINES}[[routes]]\npipeline = \"build\"\nenvironment = \"ci\"\nrepository = \"other/*\"\n\
         [[routes]]\npipeline = \"build\"\nenvironment = \"ci\"\nsources = [\"codecommit\"]\n"
    ));
    let plan = planner
        .plan(&push("refs/heads/main", vec![commit(2, "m", &["x"])]))
        .unwrap();
    assert!(plan.requests.is_empty());
    assert_eq!(plan.matched_routes, 0);
    assert!(
        plan.trace[0].contains("does not match \"other/*\""),
        "{:?}",
        plan.trace
    );
    assert!(
        plan.trace[1].contains("source github is not taken"),
        "{:?}",
        plan.trace
    );
}

#[test]
fn repositories_match_whatever_their_case_and_branches_do_not() {
    // GitHub names repositories case-insensitively: a route for "acme/*" and a project
    // of "acme/project-api-v2" take a push to "Acme/Project-API-v2"; branch names stay
    // case-sensitive, as Git's are.
    let planner = planner(&format!(
        "{PIPELINES}{HOTFIX_ROUTE}[[routes]]\npipeline = \"build\"\nenvironment = \"ci\"\nrepository = \"ACME/Project-*\"\nbranches = [\"main\"]\n"
    ));
    let mut event = push("refs/heads/hotfix/x", vec![commit(2, "m", &["a"])]);
    event.repository = "Acme/Project-API-v2".to_string();
    let plan = planner.plan(&event).unwrap();
    assert_eq!(plan.requests.len(), 1, "{:?}", plan.trace);
    assert_eq!(
        input(&plan.requests[0])["skip_api_v2"],
        false,
        "project matched"
    );
    let mut event = push("refs/heads/MAIN", vec![commit(2, "m", &["a"])]);
    event.repository = "acme/project-api-v2".to_string();
    let plan = planner.plan(&event).unwrap();
    assert!(plan.requests.is_empty(), "{:?}", plan.trace);
}

#[test]
fn a_push_without_commits_runs_its_new_head() {
    let planner = planner(&format!("{PIPELINES}{HOTFIX_ROUTE}"));
    // A new branch at an existing commit: no commits listed, head_commit given.
    let created = edit_push(push("refs/heads/hotfix/new", vec![]), |push| {
        push.created = true;
        push.before = zero();
        push.after = sha(5);
        push.head_commit = Some(commit(5, "existing", &["a"]));
    });
    let plan = planner.plan(&created).unwrap();
    assert_eq!(commits_of(&plan), vec![sha(5)]);
    assert_eq!(
        input(&plan.requests[0])["git"]["message"],
        json!("existing")
    );
    // Unknown changed paths: the docs project cannot be proven untouched.
    assert_eq!(input(&plan.requests[0])["skip_docs"], json!(false));

    // A force-push back to an older commit: no commits, no head_commit.
    let forced = edit_push(push("refs/heads/hotfix/new", vec![]), |push| {
        push.forced = true;
        push.after = sha(3);
        push.head_commit = None;
    });
    let plan = planner.plan(&forced).unwrap();
    assert_eq!(commits_of(&plan), vec![sha(3)]);
}

#[test]
fn deleted_branches_tear_down_only_when_asked() {
    let deleted = edit_push(push("refs/heads/hotfix/gone", vec![]), |push| {
        push.deleted = true;
        push.after = zero();
        push.before = sha(8);
        push.head_commit = None;
    });
    let plain = planner(&format!("{PIPELINES}{HOTFIX_ROUTE}"));
    let plan = plain.plan(&deleted).unwrap();
    assert!(plan.requests.is_empty());
    assert_eq!(plan.skipped[0].reason, SkipReason::Deleted);

    let teardown = planner(&format!(
        "{PIPELINES}{HOTFIX_ROUTE}teardown_on_delete = true\n"
    ));
    let plan = teardown.plan(&deleted).unwrap();
    assert_eq!(commits_of(&plan), vec![sha(8)]);
    assert_eq!(plan.requests[0].action, Action::Teardown);
    assert_eq!(input(&plan.requests[0])["git"]["action"], json!("teardown"));
    assert!(plan.requests[0].name.as_str().contains("-teardown-"));
}

#[test]
fn skip_ci_is_honoured_only_when_the_route_opts_in_and_is_recorded() {
    let commits = vec![
        commit(2, "fix [skip ci]", &["a"]),
        commit(3, "[CI SKIP] too", &["a"]),
        commit(4, "deploy me", &["a"]),
    ];
    let ignoring = planner(&format!("{PIPELINES}{HOTFIX_ROUTE}"));
    let plan = ignoring
        .plan(&push("refs/heads/hotfix/x", commits.clone()))
        .unwrap();
    assert_eq!(plan.requests.len(), 3);
    assert!(plan.skipped.is_empty());

    let honouring = planner(&format!("{PIPELINES}{HOTFIX_ROUTE}skip_ci = true\n"));
    let plan = honouring
        .plan(&push("refs/heads/hotfix/x", commits))
        .unwrap();
    assert_eq!(commits_of(&plan), vec![sha(4)]);
    let skipped: Vec<_> = plan
        .skipped
        .iter()
        .map(|s| (s.commit.clone(), s.reason))
        .collect();
    assert_eq!(
        skipped,
        vec![
            (Some(sha(2)), SkipReason::SkipCi),
            (Some(sha(3)), SkipReason::SkipCi)
        ]
    );
}

#[test]
fn path_filters_apply_per_commit() {
    let commits = vec![
        commit(2, "docs", &["docs/readme.md"]),
        commit(3, "code", &["src/main.rs", "docs/x.md"]),
        commit(4, "nothing listed", &[]),
    ];
    let include = planner(&format!("{PIPELINES}{HOTFIX_ROUTE}paths = [\"src/**\"]\n"));
    let plan = include
        .plan(&push("refs/heads/hotfix/x", commits.clone()))
        .unwrap();
    assert_eq!(commits_of(&plan), vec![sha(3)]);
    assert_eq!(plan.skipped.len(), 2);
    assert!(
        plan.skipped
            .iter()
            .all(|skip| skip.reason == SkipReason::Paths)
    );

    let ignore = planner(&format!(
        "{PIPELINES}{HOTFIX_ROUTE}paths_ignore = [\"docs/**\"]\n"
    ));
    let plan = ignore
        .plan(&push("refs/heads/hotfix/x", commits.clone()))
        .unwrap();
    // Commit 4 lists no paths: "every changed path is ignored" holds vacuously.
    assert_eq!(commits_of(&plan), vec![sha(3)]);

    let negated = planner(&format!(
        "{PIPELINES}{HOTFIX_ROUTE}paths = [\"**\", \"!docs/**\"]\n"
    ));
    let plan = negated.plan(&push("refs/heads/hotfix/x", commits)).unwrap();
    assert_eq!(commits_of(&plan), vec![sha(3)]);
}

#[test]
fn projects_outside_the_event_are_skipped_and_all_projects_can_be_forced() {
    let planner_default = planner(&format!("{PIPELINES}{HOTFIX_ROUTE}"));
    let event = push(
        "refs/heads/hotfix/x",
        vec![commit(2, "docs", &["docs/a.md"])],
    );
    let plan = planner_default.plan(&event).unwrap();
    let value = input(&plan.requests[0]);
    assert_eq!(value["skip_api_v2"], json!(false));
    assert_eq!(value["skip_docs"], json!(false));
    assert_eq!(value["skip_console_v1"], json!(true));

    let all = planner(&format!(
        "{PIPELINES}{HOTFIX_ROUTE}deploy_all_projects = true\n"
    ));
    let value = input(&all.plan(&event).unwrap().requests[0]);
    assert_eq!(value["skip_console_v1"], json!(false));

    // A repository the pipeline deploys nothing from gives no execution, and says so.
    let mut foreign = event.clone();
    foreign.repository = "acme/unrelated".to_string();
    let plan = planner_default.plan(&foreign).unwrap();
    assert!(plan.requests.is_empty());
    assert_eq!(plan.skipped[0].reason, SkipReason::NoProjectTouched);
}

#[test]
fn two_routes_naming_the_same_pipeline_and_environment_give_one_execution() {
    let planner = planner(&format!(
        "{PIPELINES}{HOTFIX_ROUTE}[[routes]]\npipeline = \"deploy\"\nenvironment = \"acceptance\"\n"
    ));
    let plan = planner
        .plan(&push("refs/heads/hotfix/x", vec![commit(2, "m", &["a"])]))
        .unwrap();
    assert_eq!(plan.requests.len(), 1);
    assert_eq!(plan.matched_routes, 2);
    assert!(
        plan.trace
            .iter()
            .any(|line| line.contains("already planned"))
    );
}

#[test]
fn parallel_pipelines_have_no_group_and_environment_takes_the_branch() {
    let planner = planner(&format!(
        "{PIPELINES}[[routes]]\npipeline = \"build\"\nenvironment = \"ci-{{branch}}\"\n"
    ));
    let plan = planner
        .plan(&push("refs/heads/feature/a", vec![commit(2, "m", &["a"])]))
        .unwrap();
    assert_eq!(plan.requests[0].group, None);
    // A branch reaches an environment name as an identifier only.
    assert_eq!(plan.requests[0].environment, "ci-feature-a");
    assert!(
        plan.requests[0]
            .name
            .as_str()
            .starts_with("build-ci-feature-a-")
    );
}

#[test]
fn branch_text_in_an_environment_is_kept_to_an_identifier() {
    let planner = planner(&format!(
        "{PIPELINES}[[routes]]\npipeline = \"build\"\nenvironment = \"preview-{{branch}}\"\n"
    ));
    for (branch, environment) in [
        ("refs/heads/$(curl${IFS}evil)", "preview--curl-IFS-evil-"),
        ("refs/heads/`id`;x", "preview--id-x"),
        ("refs/heads/a/b/etc", "preview-a-b-etc"),
        ("refs/heads/release/1.2", "preview-release-1-2"),
    ] {
        let plan = planner
            .plan(&push(branch, vec![commit(2, "m", &["a"])]))
            .unwrap();
        assert_eq!(plan.requests[0].environment, environment, "{branch}");
        assert_eq!(input(&plan.requests[0])["environment"], environment);
    }
    let long = format!("refs/heads/{}", "x".repeat(500));
    let plan = planner
        .plan(&push(&long, vec![commit(2, "m", &["a"])]))
        .unwrap();
    assert_eq!(plan.requests[0].environment.len(), "preview-".len() + 100);
}

#[test]
fn a_push_that_lists_no_commits_is_planned_once_they_are_fetched() {
    let route = |extra: &str| {
        format!(
            "{PIPELINES}\n[[routes]]\npipeline = \"build\"\nevents = [\"push\"]\nenvironment = \"ci\"\n{extra}\n"
        )
    };
    let unlisted = |edit: &dyn Fn(&mut Push)| {
        let mut event = push("refs/heads/main", vec![]);
        let EventKind::Push(push) = &mut event.kind else {
            unreachable!()
        };
        push.commits_listed = false;
        push.before = sha(1);
        push.after = sha(9);
        edit(push);
        event.source = Source::CodeCommit;
        event
    };
    let moved = unlisted(&|_| {});

    // A route that takes each commit: nothing is planned yet, one expansion is.
    let plan = planner(&route("commits = \"each\"")).plan(&moved).unwrap();
    assert!(plan.requests.is_empty());
    assert_eq!(plan.matched_routes, 1);
    let expansion = plan.expansion.expect("an expansion");
    assert_eq!(
        (expansion.before.clone(), expansion.after.clone()),
        (sha(1), sha(9))
    );
    assert_eq!(expansion.git_ref.as_str(), "refs/heads/main");
    assert_eq!(expansion.repository, "acme/project-api-v2");
    assert_eq!(expansion.occurrence, moved.occurrence);
    assert_eq!(expansion.source, Source::CodeCommit);
    assert!(!expansion.paths, "no route or project filters by path");

    // A GitHub push that may not list every commit is expanded only when GitHub can be
    // asked (a token or an App); otherwise it is planned as listed.
    let mut github = moved.clone();
    github.source = Source::Github;
    let plan = planner(&route("commits = \"each\"")).plan(&github).unwrap();
    assert!(plan.expansion.is_none());
    let text = format!(
        "[github]\nwebhook_secrets = [\"x\"]\ntoken = \"t\"\n{}",
        route("commits = \"each\"")
    );
    let with_token = Planner::new(&Config::from_toml_str(&text, &|_| None).unwrap()).unwrap();
    assert!(with_token.plan(&github).unwrap().expansion.is_some());

    // The head alone needs no commits: it runs at once.
    let plan = planner(&route("commits = \"head\"")).plan(&moved).unwrap();
    assert!(plan.expansion.is_none());
    assert_eq!(commits_of(&plan), vec![sha(9)]);

    // Unless the route filters by paths, or its pipeline tells projects by path: then
    // the commits' changes are needed, and every route waits for them alike.
    let plan = planner(&route("commits = \"head\"\npaths = [\"src/**\"]"))
        .plan(&moved)
        .unwrap();
    assert!(plan.expansion.is_some() && plan.requests.is_empty());
    assert!(
        plan.expansion.unwrap().paths,
        "the paths are fetched for the filter"
    );
    let both = format!(
        "{}\n[[routes]]\npipeline = \"deploy\"\nevents = [\"push\"]\nenvironment = \"acceptance\"\ncommits = \"head\"\n",
        route("commits = \"head\"")
    );
    let plan = planner(&both).plan(&moved).unwrap();
    assert!(plan.expansion.is_some() && plan.requests.is_empty());
    assert_eq!(plan.matched_routes, 2);

    // A new ref runs its head, a deleted one its teardown; a listed push is planned
    // from its list.
    let each = planner(&route("commits = \"each\"\nteardown_on_delete = true"));
    for (what, event) in [
        ("created", unlisted(&|push| push.before = zero())),
        (
            "deleted",
            unlisted(&|push| {
                push.deleted = true;
                push.after = zero();
            }),
        ),
        ("listed", unlisted(&|push| push.commits_listed = true)),
    ] {
        let plan = each.plan(&event).unwrap();
        assert!(plan.expansion.is_none(), "{what}");
        assert_eq!(plan.requests.len(), 1, "{what}");
    }
}
