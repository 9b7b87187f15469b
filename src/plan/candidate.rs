//! The commits (or pull-request head) a matching route may turn into executions.

use super::compile::CompiledRoute;
use super::{Plan, SkipReason};
use crate::config::CommitsMode;
use crate::event::{Commit, CommitSha, PullRequest, PullRequestAction, Push};
use crate::execution::Action;

/// One commit (or pull-request head) a matching route may turn into an execution.
pub(super) struct Candidate<'a> {
    pub(super) commit: &'a CommitSha,
    pub(super) message: &'a str,
    pub(super) author: &'a str,
    pub(super) changed_paths: Option<Vec<String>>,
    pub(super) action: Action,
}

pub(super) fn push_candidates<'a>(
    route: &CompiledRoute,
    push: &'a Push,
    plan: &mut Plan,
) -> Vec<Candidate<'a>> {
    if push.deleted || push.after.is_zero() {
        if route.teardown_on_delete {
            return vec![Candidate {
                commit: &push.before,
                message: "",
                author: "",
                changed_paths: None,
                action: Action::Teardown,
            }];
        }
        plan.skip(route, None, SkipReason::Deleted);
        return Vec::new();
    }
    let deploy = |commit: &'a Commit| Candidate {
        commit: &commit.id,
        message: &commit.message,
        author: &commit.author,
        changed_paths: commit.changed_paths.clone(),
        action: Action::Deploy,
    };
    if push.commits.is_empty() {
        // A new ref at an existing commit, or a force-push back to an older one: the
        // ref's new head is the one commit to run.
        return vec![match &push.head_commit {
            Some(head) if head.id == push.after => Candidate {
                changed_paths: None,
                ..deploy(head)
            },
            _ => Candidate {
                commit: &push.after,
                message: "",
                author: "",
                changed_paths: None,
                action: Action::Deploy,
            },
        }];
    }
    match route.commits {
        CommitsMode::Each => push.commits.iter().map(deploy).collect(),
        CommitsMode::Head => {
            let head = push
                .commits
                .iter()
                .rev()
                .find(|commit| commit.id == push.after)
                .or(push.commits.last())
                .expect("the list is not empty");
            // The head stands for the whole push, so path filters see every change.
            let mut union: Option<Vec<String>> = Some(Vec::new());
            for commit in &push.commits {
                match (&mut union, &commit.changed_paths) {
                    (Some(all), Some(paths)) => all.extend(paths.iter().cloned()),
                    _ => union = None,
                }
            }
            if let Some(all) = &mut union {
                all.sort();
                all.dedup();
            }
            vec![Candidate {
                changed_paths: union,
                ..deploy(head)
            }]
        }
    }
}

pub(super) fn pull_request_candidates<'a>(
    route: &CompiledRoute,
    pull_request: &'a PullRequest,
    plan: &mut Plan,
) -> Vec<Candidate<'a>> {
    if pull_request.from_fork && !route.allow_forks {
        plan.skip(route, Some(&pull_request.head_sha), SkipReason::Fork);
        return Vec::new();
    }
    let action = if pull_request.action == PullRequestAction::Closed {
        Action::Teardown
    } else if pull_request.draft && !route.allow_drafts {
        plan.skip(route, Some(&pull_request.head_sha), SkipReason::Draft);
        return Vec::new();
    } else {
        Action::Deploy
    };
    vec![Candidate {
        commit: &pull_request.head_sha,
        message: &pull_request.title,
        author: &pull_request.author,
        changed_paths: None,
        action,
    }]
}

/// The markers GitHub Actions honours in a commit message.
pub(super) fn asks_to_skip_ci(message: &str) -> bool {
    const MARKERS: &[&str] = &["[skip ci]", "[ci skip]", "[no ci]"];
    let lower = message.to_ascii_lowercase();
    MARKERS.iter().any(|marker| lower.contains(marker))
}
