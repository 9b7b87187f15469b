//! The planner: `plan(config, event) -> execution requests`, pure.
//!
//! Invariant: nothing in this module does I/O, reads a clock or knows a backend. The
//! same configuration and the same event always give the same requests, byte for byte.
//!
//! `compile` turns the configured pipelines and routes into their checked form,
//! `filter` decides whether a route takes an event, `candidate` lists the commits it
//! may run, `render` makes a request of one, and `summary` describes the whole for
//! `check-config`.

mod candidate;
mod compile;
mod filter;
pub mod input;
mod manual;
mod render;
mod summary;

use std::collections::HashSet;

use crate::config::{CommitsMode, Concurrency, Config, Problem};
use crate::event::{CommitSha, Event, EventKind, Push};
use crate::execution::name::ExecutionName;
use crate::execution::report::{Report, ReportState, Stage};
use crate::execution::{Action, ExecutionRequest, Expansion, MAX_INPUT_BYTES};
use candidate::{asks_to_skip_ci, pull_request_candidates, push_candidates};
use compile::{CompiledPipeline, CompiledRoute, compile_pipeline, compile_route};

/// Pull-request actions a route takes when it does not list its own.
pub const DEFAULT_PULL_REQUEST_ACTIONS: &[&str] = &[
    "opened",
    "synchronize",
    "reopened",
    "ready_for_review",
    "closed",
];

/// Why a matching route produced no execution for a commit (or an event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The commit message asked for it and the route honours `[skip ci]`.
    SkipCi,
    /// No changed path passed the route's `paths`/`paths_ignore`.
    Paths,
    /// No project of the pipeline was touched.
    NoProjectTouched,
    Draft,
    Fork,
    /// The branch was deleted and the route does not tear down.
    Deleted,
}

impl SkipReason {
    /// A short label, used as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::SkipCi => "skip_ci",
            SkipReason::Paths => "paths",
            SkipReason::NoProjectTouched => "no_project_touched",
            SkipReason::Draft => "draft",
            SkipReason::Fork => "fork",
            SkipReason::Deleted => "deleted",
        }
    }
}

/// A deliberate non-execution, so that it can be logged and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub route: String,
    /// The route's place in the configuration.
    pub route_index: usize,
    pub commit: Option<CommitSha>,
    pub reason: SkipReason,
}

/// The outcome of planning one event.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub requests: Vec<ExecutionRequest>,
    /// One line per route: which condition failed, or what it produced.
    pub trace: Vec<String>,
    pub skipped: Vec<Skip>,
    /// Routes whose conditions all held.
    pub matched_routes: usize,
    /// The event's commit list may be incomplete and a route asked for every commit.
    pub commits_may_be_truncated: bool,
    /// The push's commits must be fetched first (a route takes every commit and the
    /// source did not list them); at most one per event.
    pub expansion: Option<Expansion>,
    /// What to show on the commits before anything runs, when reporting is on: each
    /// request's `pending` ("Queued"), and a final state for each commit a route that
    /// asks for it skipped.
    pub reports: Vec<Report>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "execution {name} of pipeline {pipeline} would get {bytes} bytes of input; Step Functions takes at most {MAX_INPUT_BYTES}"
    )]
    InputTooLarge {
        pipeline: String,
        name: ExecutionName,
        bytes: usize,
    },
    /// A manual trigger names what the pipeline does not have.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

/// The validated, compiled form of the pipelines and routes.
#[derive(Debug, Clone)]
pub struct Planner {
    pipelines: Vec<CompiledPipeline>,
    routes: Vec<CompiledRoute>,
    /// Whether executions of GitHub events are reported back to GitHub.
    reporting: bool,
    /// Whether GitHub's API can be asked for a push's commits (a token or an App).
    github_history: bool,
}

impl Planner {
    /// Compiles the pipelines and routes, reporting every problem with its key path.
    pub fn new(config: &Config) -> Result<Planner, Vec<Problem>> {
        let mut problems = Vec::new();
        let pipelines: Vec<CompiledPipeline> = config
            .pipelines
            .iter()
            .enumerate()
            .map(|(index, pipeline)| compile_pipeline(index, pipeline, &mut problems))
            .collect();
        let routes: Vec<CompiledRoute> = config
            .routes
            .iter()
            .enumerate()
            .filter_map(|(index, route)| compile_route(index, route, &pipelines, &mut problems))
            .collect();
        if problems.is_empty() {
            Ok(Planner {
                pipelines,
                routes,
                reporting: config.github.reporting(),
                github_history: config.github.reporting(),
            })
        } else {
            Err(problems)
        }
    }

    /// The concurrency mode of a pipeline, by name.
    pub fn concurrency(&self, pipeline: &str) -> Option<Concurrency> {
        self.pipelines
            .iter()
            .find(|candidate| candidate.name == pipeline)
            .map(|pipeline| pipeline.concurrency)
    }

    /// Whether a push of `source` whose commits were not all listed can have them
    /// fetched: CodeCommit's always are (it lists none); GitHub's with a token or an
    /// App, otherwise the push is planned as listed (and counted as truncated).
    fn can_expand(&self, source: crate::event::Source) -> bool {
        source != crate::event::Source::Github || self.github_history
    }

    /// The pipelines' names.
    pub fn pipeline_names(&self) -> impl Iterator<Item = &str> {
        self.pipelines.iter().map(|pipeline| pipeline.name.as_str())
    }

    /// Whether any route takes the event (by source, repository, kind and ref).
    pub fn takes(&self, event: &Event) -> bool {
        self.routes.iter().any(|route| route.matches(event).is_ok())
    }

    /// Maps an event to the executions it asks for.
    pub fn plan(&self, event: &Event) -> Result<Plan, PlanError> {
        if let EventKind::Manual(manual) = &event.kind {
            return self.plan_manual(event, manual);
        }
        if let EventKind::Push(push) = &event.kind
            && needs_expansion(push)
            && self.can_expand(event.source)
            && let Some(plan) = self.defer_to_expansion(event, push)
        {
            return Ok(plan);
        }
        let mut plan = Plan::default();
        let mut planned_names = HashSet::new();
        for route in &self.routes {
            if let Err(reason) = route.matches(event) {
                plan.trace
                    .push(format!("route {}: no match: {reason}", route.name));
                continue;
            }
            plan.matched_routes += 1;
            let pipeline = &self.pipelines[route.pipeline];
            let candidates = match &event.kind {
                EventKind::Push(push) => {
                    if route.commits == CommitsMode::Each && push.commits_truncated {
                        plan.commits_may_be_truncated = true;
                    }
                    push_candidates(route, push, &mut plan)
                }
                EventKind::PullRequest(pull_request) => {
                    pull_request_candidates(route, pull_request, &mut plan)
                }
                // Planned on its own (`manual`), before any route.
                EventKind::Manual(_) => Vec::new(),
            };
            let before = plan.requests.len();
            for candidate in candidates {
                if route.skip_ci && asks_to_skip_ci(candidate.message) {
                    plan.skip(route, Some(candidate.commit), SkipReason::SkipCi);
                    continue;
                }
                if !route.paths.passes(candidate.changed_paths.as_deref()) {
                    plan.skip(route, Some(candidate.commit), SkipReason::Paths);
                    continue;
                }
                let Some(request) = self.request(route, pipeline, event, &candidate)? else {
                    plan.skip(route, Some(candidate.commit), SkipReason::NoProjectTouched);
                    continue;
                };
                if planned_names.insert(request.name.clone()) {
                    plan.requests.push(request);
                } else {
                    plan.trace.push(format!(
                        "route {}: execution {} was already planned by an earlier route",
                        route.name, request.name
                    ));
                }
            }
            plan.trace.push(format!(
                "route {}: matched; {} execution(s) of pipeline {}",
                route.name,
                plan.requests.len() - before,
                pipeline.name
            ));
        }
        self.add_reports(event, &mut plan);
        Ok(plan)
    }

    /// The reports a plan shows at once: `pending` for each request to be reported, and
    /// a final `success` for each commit skipped by a route that asks for one (unless
    /// another route runs that commit in the same context).
    fn add_reports(&self, event: &Event, plan: &mut Plan) {
        for request in &plan.requests {
            // A teardown shows nothing until it ends (its preview goes inactive).
            if request.action == Action::Teardown {
                continue;
            }
            if let Some(target) = &request.report {
                plan.reports.push(Report::new(
                    target.clone(),
                    Some(request.name.clone()),
                    request.action,
                    Stage::Queued,
                    ReportState::Pending,
                    "Queued",
                ));
            }
        }
        for skip in &plan.skipped {
            let route = &self.routes[skip.route_index];
            let Some(commit) = &skip.commit else { continue };
            if !route.report_skipped {
                continue;
            }
            let pipeline = &self.pipelines[route.pipeline];
            let environment = render::environment(route, event);
            let Some(target) = self.report_target(route, pipeline, event, commit, &environment)
            else {
                continue;
            };
            let runs_anyway = plan.reports.iter().any(|report| {
                report.target.context == target.context && report.target.commit == target.commit
            });
            if !runs_anyway {
                plan.reports.push(Report::new(
                    target,
                    None,
                    Action::Deploy,
                    Stage::Ended,
                    ReportState::Success,
                    format!("Skipped: {}", skip.reason.as_str()),
                ));
            }
        }
    }
}

impl Plan {
    fn skip(&mut self, route: &CompiledRoute, commit: Option<&CommitSha>, reason: SkipReason) {
        let shown = commit.map_or_else(|| "the event".to_string(), |sha| sha.short().to_string());
        self.trace.push(format!(
            "route {}: {shown} skipped ({})",
            route.name,
            reason.as_str()
        ));
        self.skipped.push(Skip {
            route: route.name.clone(),
            route_index: route.index,
            commit: commit.cloned(),
            reason,
        });
    }
}

impl Planner {
    /// A push whose source did not list its commits, matched by a route that needs them
    /// (it takes each commit, or filters by the paths they change, or its pipeline
    /// tells projects by path): the whole push is planned once they are fetched, so
    /// that every route sees the same commits. `None` when no matching route needs
    /// them (the push's new head is all there is to plan).
    fn defer_to_expansion(&self, event: &Event, push: &Push) -> Option<Plan> {
        let mut plan = Plan::default();
        let mut needed = false;
        let mut paths = false;
        for route in &self.routes {
            if let Err(reason) = route.matches(event) {
                plan.trace
                    .push(format!("route {}: no match: {reason}", route.name));
                continue;
            }
            plan.matched_routes += 1;
            let pipeline = &self.pipelines[route.pipeline];
            let by_path = !route.paths.is_absent()
                || pipeline
                    .projects
                    .iter()
                    .any(|project| project.paths.is_some());
            needed |= route.commits == CommitsMode::Each || by_path;
            paths |= by_path;
            plan.trace.push(format!(
                "route {}: matched; planned once the push's commits are fetched",
                route.name
            ));
        }
        needed.then(|| {
            plan.expansion = Some(expansion(event, push, paths));
            plan
        })
    }
}

/// Whether a push's commits are still to be fetched: its source did not list them, and
/// it moved a ref from one commit to another (a new ref runs its head, a deleted one
/// its teardown).
fn needs_expansion(push: &Push) -> bool {
    !push.commits_listed && !push.deleted && !push.before.is_zero() && !push.after.is_zero()
}

fn expansion(event: &Event, push: &Push, paths: bool) -> Expansion {
    Expansion {
        source: event.source,
        delivery: event.delivery.clone(),
        occurrence: event.occurrence.clone(),
        repository: event.repository.clone(),
        git_ref: push.git_ref.clone(),
        before: push.before.clone(),
        after: push.after.clone(),
        paths,
    }
}

#[cfg(test)]
mod tests;
