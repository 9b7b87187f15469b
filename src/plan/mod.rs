//! The planner: `plan(config, event) -> execution requests`, pure (DESIGN invariant 4).
//!
//! Invariant: nothing in this module does I/O, reads a clock or knows a backend. The
//! same configuration and the same event always give the same requests, byte for byte.

pub mod input;
pub mod name;
pub mod pattern;

use std::collections::HashSet;
use std::fmt;

use globset::GlobMatcher;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::{CommitsMode, Concurrency, Config, EventName, Problem, RouteConfig};
use crate::event::{
    Commit, CommitSha, DeliveryId, Event, EventKind, PullRequest, PullRequestAction, Push, RefName,
    Source,
};
use input::{MAX_INPUT_BYTES, MAX_MESSAGE_BYTES, Template, cut};
use name::{ExecutionName, NameParts, execution_name};
use pattern::{PatternList, compile_repository_glob};

/// Pull-request actions a route takes when it does not list its own.
pub const DEFAULT_PULL_REQUEST_ACTIONS: &[&str] = &[
    "opened",
    "synchronize",
    "reopened",
    "ready_for_review",
    "closed",
];

/// Every action GitHub sends with a `pull_request` event; a route naming another is a
/// typo.
const KNOWN_PULL_REQUEST_ACTIONS: &[&str] = &[
    "assigned",
    "auto_merge_disabled",
    "auto_merge_enabled",
    "closed",
    "converted_to_draft",
    "demilestoned",
    "dequeued",
    "edited",
    "enqueued",
    "labeled",
    "locked",
    "milestoned",
    "opened",
    "ready_for_review",
    "reopened",
    "review_request_removed",
    "review_requested",
    "synchronize",
    "unassigned",
    "unlabeled",
    "unlocked",
];

/// Input keys of the default shape, which a project's skip flag must not take.
const RESERVED_INPUT_KEYS: &[&str] = &["environment", "override_branches", "git"];

/// What an execution does to its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Deploy,
    Teardown,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Teardown => "teardown",
        }
    }
}

/// Where an execution request came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub source: Source,
    pub delivery: DeliveryId,
    pub repository: String,
    pub git_ref: RefName,
    pub commit: CommitSha,
}

/// Rendered execution input: JSON text, kept byte for byte as rendered because Step
/// Functions compares inputs as strings when it decides a start is a repeat. It is
/// serialized as a JSON string (not embedded), so that no decoder re-renders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Input(String);

impl Input {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One execution to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionRequest {
    pub pipeline: String,
    pub name: ExecutionName,
    /// Requests of one group run one at a time in order (`serial` pipelines).
    pub group: Option<String>,
    pub environment: String,
    pub action: Action,
    pub input: Input,
    pub origin: Origin,
}

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
}

/// The validated, compiled form of the pipelines and routes.
#[derive(Debug, Clone)]
pub struct Planner {
    pipelines: Vec<CompiledPipeline>,
    routes: Vec<CompiledRoute>,
}

#[derive(Debug, Clone)]
struct CompiledPipeline {
    name: String,
    concurrency: Concurrency,
    projects: Vec<CompiledProject>,
    template: Option<Template>,
}

#[derive(Debug, Clone)]
struct CompiledProject {
    name: String,
    repository: String,
    skip_flag: Option<String>,
    paths: Option<PatternList>,
}

#[derive(Debug, Clone)]
struct CompiledRoute {
    name: String,
    pipeline: usize,
    sources: Option<Vec<Source>>,
    repository: Option<GlobMatcher>,
    events: Vec<EventName>,
    branches: RefFilter,
    tags: RefFilter,
    paths: PathFilter,
    actions: Vec<String>,
    labels: Vec<String>,
    environment: EnvironmentTemplate,
    commits: CommitsMode,
    teardown_on_delete: bool,
    skip_ci: bool,
    allow_drafts: bool,
    allow_forks: bool,
    deploy_all_projects: bool,
}

/// A route's filter over one kind of ref (branches or tags).
#[derive(Debug, Clone)]
enum RefFilter {
    /// No filter of this kind was written.
    Absent,
    Include(PatternList),
    Exclude(PatternList),
}

impl RefFilter {
    fn is_absent(&self) -> bool {
        matches!(self, RefFilter::Absent)
    }

    fn check(&self, kind: &str, name: &str) -> Result<(), String> {
        match self {
            RefFilter::Absent => Ok(()),
            RefFilter::Include(list) if list.matches(name) => Ok(()),
            RefFilter::Include(list) => {
                Err(format!("{kind} {name:?} is not in {}", list.describe()))
            }
            RefFilter::Exclude(list) if list.matches(name) => Err(format!(
                "{kind} {name:?} is in the ignore list {}",
                list.describe()
            )),
            RefFilter::Exclude(_) => Ok(()),
        }
    }
}

#[derive(Debug, Clone)]
enum PathFilter {
    Absent,
    /// Passes when at least one changed path is included.
    Include(PatternList),
    /// Passes unless every changed path is ignored.
    Exclude(PatternList),
}

impl PathFilter {
    /// `None` paths are unknown (the source did not list them): they pass, because a
    /// filter must never hide a commit it cannot see into.
    fn passes(&self, paths: Option<&[String]>) -> bool {
        let Some(paths) = paths else { return true };
        match self {
            PathFilter::Absent => true,
            PathFilter::Include(list) => paths.iter().any(|path| list.matches(path)),
            PathFilter::Exclude(list) => !paths.iter().all(|path| list.matches(path)),
        }
    }
}

#[derive(Debug, Clone)]
enum EnvironmentPart {
    Text(String),
    Number,
    Branch,
}

#[derive(Debug, Clone)]
struct EnvironmentTemplate(Vec<EnvironmentPart>);

impl EnvironmentTemplate {
    fn parse(text: &str) -> Result<EnvironmentTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(EnvironmentPart::Text(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("{text:?} has an unclosed {{"));
            };
            let placeholder = &rest[open + 1..open + close];
            parts.push(match placeholder {
                "number" => EnvironmentPart::Number,
                "branch" => EnvironmentPart::Branch,
                other => {
                    return Err(format!(
                        "{{{other}}} is not a placeholder; use {{number}} or {{branch}}"
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(EnvironmentPart::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err("must not be empty".to_string());
        }
        Ok(EnvironmentTemplate(parts))
    }

    fn uses_number(&self) -> bool {
        self.0
            .iter()
            .any(|part| matches!(part, EnvironmentPart::Number))
    }

    fn render(&self, branch: &str, number: Option<u64>) -> String {
        let mut output = String::new();
        for part in &self.0 {
            match part {
                EnvironmentPart::Text(text) => output.push_str(text),
                EnvironmentPart::Branch => output.push_str(branch),
                EnvironmentPart::Number => {
                    // Validation keeps {number} out of routes that take pushes.
                    if let Some(number) = number {
                        output.push_str(&number.to_string());
                    }
                }
            }
        }
        output
    }
}

/// One commit (or pull-request head) a matching route may turn into an execution.
struct Candidate<'a> {
    commit: &'a CommitSha,
    message: &'a str,
    author: &'a str,
    changed_paths: Option<Vec<String>>,
    action: Action,
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
            Ok(Planner { pipelines, routes })
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

    /// Maps an event to the executions it asks for.
    pub fn plan(&self, event: &Event) -> Result<Plan, PlanError> {
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
        Ok(plan)
    }

    /// Renders one request, or `None` when the pipeline has projects and the candidate
    /// touches none of them.
    fn request(
        &self,
        route: &CompiledRoute,
        pipeline: &CompiledPipeline,
        event: &Event,
        candidate: &Candidate<'_>,
    ) -> Result<Option<ExecutionRequest>, PlanError> {
        let (git_ref, pull_request) = match &event.kind {
            EventKind::Push(push) => (&push.git_ref, None),
            EventKind::PullRequest(pull_request) => (&pull_request.head_ref, Some(pull_request)),
        };
        let branch = git_ref.short_name();
        let environment = route
            .environment
            .render(branch, pull_request.map(|pull_request| pull_request.number));

        let mut input = Map::new();
        input.insert("environment".into(), Value::String(environment.clone()));
        let mut touched_any = pipeline.projects.is_empty();
        let mut overrides = Vec::new();
        for project in &pipeline.projects {
            let in_repository = project.repository.eq_ignore_ascii_case(&event.repository);
            let touched = route.deploy_all_projects
                || (in_repository
                    && match (&project.paths, &candidate.changed_paths) {
                        (Some(list), Some(paths)) => paths.iter().any(|path| list.matches(path)),
                        _ => true,
                    });
            touched_any |= touched;
            if let Some(flag) = &project.skip_flag {
                input.insert(flag.clone(), Value::Bool(!touched));
            }
            if in_repository {
                overrides.push(json!({"project": project.name, "branch": branch}));
            }
        }
        if !touched_any && !route.deploy_all_projects {
            return Ok(None);
        }
        input.insert("override_branches".into(), Value::Array(overrides));
        let pull_request_value = match pull_request {
            None => Value::Null,
            Some(pull_request) => json!({
                "number": pull_request.number,
                "action": pull_request.action.as_str(),
                "head_ref": pull_request.head_ref.as_str(),
                "head_sha": pull_request.head_sha.as_str(),
                "base_ref": pull_request.base_ref.as_str(),
                "base_sha": pull_request.base_sha.as_str(),
                "draft": pull_request.draft,
                "merged": pull_request.merged,
                "from_fork": pull_request.from_fork,
                "labels": pull_request.labels,
            }),
        };
        input.insert(
            "git".into(),
            json!({
                "provider": event.source.as_str(),
                "repository": event.repository,
                "event": event.kind.name(),
                "ref": git_ref.as_str(),
                "branch": git_ref.branch_name(),
                "commit": candidate.commit.as_str(),
                "message": cut(candidate.message, MAX_MESSAGE_BYTES),
                "author": cut(candidate.author, MAX_MESSAGE_BYTES),
                "delivery": event.delivery.as_str(),
                "pull_request": pull_request_value,
                "action": candidate.action.as_str(),
            }),
        );
        let input = Value::Object(input);
        let input = match &pipeline.template {
            Some(template) => template.render(&input),
            None => input,
        };

        let name = execution_name(NameParts {
            occurrence: &event.occurrence,
            pipeline: &pipeline.name,
            environment: &environment,
            git_ref,
            commit: candidate.commit,
            action: candidate.action,
        });
        let text = serde_json::to_string(&input).expect("a JSON value always serializes");
        if text.len() > MAX_INPUT_BYTES {
            return Err(PlanError::InputTooLarge {
                pipeline: pipeline.name.clone(),
                name,
                bytes: text.len(),
            });
        }
        let input = Input(text);
        let group = match pipeline.concurrency {
            Concurrency::Serial => Some(format!("{}/{}", pipeline.name, environment)),
            Concurrency::Parallel => None,
        };
        Ok(Some(ExecutionRequest {
            pipeline: pipeline.name.clone(),
            name,
            group,
            environment,
            action: candidate.action,
            input,
            origin: Origin {
                source: event.source,
                delivery: event.delivery.clone(),
                repository: event.repository.clone(),
                git_ref: git_ref.clone(),
                commit: candidate.commit.clone(),
            },
        }))
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
            commit: commit.cloned(),
            reason,
        });
    }
}

impl CompiledRoute {
    /// Whether every condition of the route holds for the event, or the first that does
    /// not.
    fn matches(&self, event: &Event) -> Result<(), String> {
        if let Some(sources) = &self.sources {
            if !sources.contains(&event.source) {
                return Err(format!("source {} is not taken", event.source));
            }
        }
        let kind = match &event.kind {
            EventKind::Push(_) => EventName::Push,
            EventKind::PullRequest(_) => EventName::PullRequest,
        };
        if !self.events.contains(&kind) {
            return Err(format!("{} events are not taken", event.kind.name()));
        }
        if let Some(repository) = &self.repository {
            if !repository.is_match(&event.repository) {
                return Err(format!(
                    "repository {:?} does not match {:?}",
                    event.repository,
                    repository.glob().glob()
                ));
            }
        }
        match &event.kind {
            EventKind::Push(push) => self.matches_ref(&push.git_ref),
            EventKind::PullRequest(pull_request) => self.matches_pull_request(pull_request),
        }
    }

    /// GitHub Actions' rule: a route with only branch filters takes no tags, one with
    /// only tag filters takes no branches, one with neither takes both.
    fn matches_ref(&self, git_ref: &RefName) -> Result<(), String> {
        if let Some(branch) = git_ref.branch_name() {
            if self.branches.is_absent() && !self.tags.is_absent() {
                return Err(format!(
                    "branch {branch:?} pushed, but the route filters tags only"
                ));
            }
            self.branches.check("branch", branch)
        } else if let Some(tag) = git_ref.tag_name() {
            if self.tags.is_absent() && !self.branches.is_absent() {
                return Err(format!(
                    "tag {tag:?} pushed, but the route filters branches only"
                ));
            }
            self.tags.check("tag", tag)
        } else {
            Err(format!("ref {git_ref} is neither a branch nor a tag"))
        }
    }

    /// For pull requests, `branches` filters the base branch, as in GitHub Actions.
    fn matches_pull_request(&self, pull_request: &PullRequest) -> Result<(), String> {
        let action = pull_request.action.as_str();
        if !self.actions.iter().any(|taken| taken == action) {
            return Err(format!("pull request action {action:?} is not taken"));
        }
        let base = pull_request.base_ref.short_name();
        self.branches.check("base branch", base)?;
        if !self.labels.is_empty()
            && !pull_request
                .labels
                .iter()
                .any(|label| self.labels.contains(label))
        {
            return Err(format!(
                "pull request carries none of the labels {:?}",
                self.labels
            ));
        }
        Ok(())
    }
}

fn push_candidates<'a>(
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

fn pull_request_candidates<'a>(
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
fn asks_to_skip_ci(message: &str) -> bool {
    const MARKERS: &[&str] = &["[skip ci]", "[ci skip]", "[no ci]"];
    let lower = message.to_ascii_lowercase();
    MARKERS.iter().any(|marker| lower.contains(marker))
}

fn compile_pipeline(
    index: usize,
    pipeline: &crate::config::PipelineConfig,
    problems: &mut Vec<Problem>,
) -> CompiledPipeline {
    let path = format!("pipelines[{index}]");
    let valid_name = !pipeline.name.is_empty()
        && pipeline.name.len() <= 40
        && pipeline
            .name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if !valid_name {
        problems.push(Problem::new(
            format!("{path}.name"),
            format!(
                "{:?} must be 1 to 40 characters from A-Z, a-z, 0-9, '-' and '_'",
                pipeline.name
            ),
        ));
    }
    let mut project_names = HashSet::new();
    let mut flags = HashSet::new();
    let mut projects = Vec::new();
    for (project_index, project) in pipeline.projects.iter().enumerate() {
        let project_path = format!("{path}.projects[{project_index}]");
        if project.name.is_empty() || !project_names.insert(project.name.as_str()) {
            problems.push(Problem::new(
                format!("{project_path}.name"),
                format!("{:?} is empty or used by another project", project.name),
            ));
        }
        if project.repository.is_empty() {
            problems.push(Problem::new(
                format!("{project_path}.repository"),
                "is empty",
            ));
        }
        if let Some(flag) = &project.skip_flag {
            let valid = flag
                .chars()
                .next()
                .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
                && flag
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
            if !valid || RESERVED_INPUT_KEYS.contains(&flag.as_str()) || !flags.insert(flag) {
                problems.push(Problem::new(
                    format!("{project_path}.skip_flag"),
                    format!(
                        "{flag:?} must be an identifier (letters, digits, '_'), unique, and not one of {RESERVED_INPUT_KEYS:?}"
                    ),
                ));
            }
        }
        let paths = if project.paths.is_empty() {
            None
        } else {
            compile_list(&project.paths, &format!("{project_path}.paths"), problems)
        };
        projects.push(CompiledProject {
            name: project.name.clone(),
            repository: project.repository.clone(),
            skip_flag: project.skip_flag.clone(),
            paths,
        });
    }
    let template = pipeline.input_template.as_ref().and_then(|template| {
        Template::compile(template)
            .map_err(|errors| {
                for (key, message) in errors {
                    problems.push(Problem::new(format!("{path}.{key}"), message));
                }
            })
            .ok()
    });
    CompiledPipeline {
        name: pipeline.name.clone(),
        concurrency: pipeline.concurrency,
        projects,
        template,
    }
}

fn compile_list(
    patterns: &[String],
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<PatternList> {
    match PatternList::compile(patterns) {
        Ok(list) => Some(list),
        Err(errors) => {
            for (index, message) in errors {
                problems.push(Problem::new(format!("{path}[{index}]"), message));
            }
            None
        }
    }
}

fn compile_route(
    index: usize,
    route: &RouteConfig,
    pipelines: &[CompiledPipeline],
    problems: &mut Vec<Problem>,
) -> Option<CompiledRoute> {
    let path = format!("routes[{index}]");
    let before = problems.len();
    let pipeline = pipelines
        .iter()
        .position(|pipeline| pipeline.name == route.pipeline);
    if pipeline.is_none() {
        problems.push(Problem::new(
            format!("{path}.pipeline"),
            format!("no pipeline is named {:?}", route.pipeline),
        ));
    }
    let repository = route.repository.as_ref().and_then(|glob| {
        compile_repository_glob(glob)
            .map_err(|message| problems.push(Problem::new(format!("{path}.repository"), message)))
            .ok()
    });
    if route.events.is_empty() {
        problems.push(Problem::new(format!("{path}.events"), "names no event"));
    }
    let mut filter = |include: &Option<Vec<String>>,
                      exclude: &Option<Vec<String>>,
                      include_key: &str,
                      exclude_key: &str|
     -> (Option<PatternList>, Option<PatternList>) {
        if include.is_some() && exclude.is_some() {
            problems.push(Problem::new(
                format!("{path}.{exclude_key}"),
                format!(
                    "cannot be used with {include_key}; write exclusions in {include_key} with a leading '!'"
                ),
            ));
        }
        let compile = |list: &Option<Vec<String>>, key: &str, problems: &mut Vec<Problem>| {
            list.as_ref()
                .and_then(|list| compile_list(list, &format!("{path}.{key}"), problems))
        };
        (
            compile(include, include_key, problems),
            compile(exclude, exclude_key, problems),
        )
    };
    let ref_filter =
        |(include, exclude): (Option<PatternList>, Option<PatternList>)| match (include, exclude) {
            (Some(list), _) => RefFilter::Include(list),
            (None, Some(list)) => RefFilter::Exclude(list),
            (None, None) => RefFilter::Absent,
        };
    let branches = ref_filter(filter(
        &route.branches,
        &route.branches_ignore,
        "branches",
        "branches_ignore",
    ));
    let tags = ref_filter(filter(
        &route.tags,
        &route.tags_ignore,
        "tags",
        "tags_ignore",
    ));
    let paths = match filter(&route.paths, &route.paths_ignore, "paths", "paths_ignore") {
        (Some(list), _) => PathFilter::Include(list),
        (None, Some(list)) => PathFilter::Exclude(list),
        (None, None) => PathFilter::Absent,
    };

    let takes_pull_requests = route.events.contains(&EventName::PullRequest);
    let actions: Vec<String> = match &route.actions {
        Some(actions) => {
            if !takes_pull_requests {
                problems.push(Problem::new(
                    format!("{path}.actions"),
                    "is set, but events does not include \"pull_request\"",
                ));
            }
            for (action_index, action) in actions.iter().enumerate() {
                if !KNOWN_PULL_REQUEST_ACTIONS.contains(&action.as_str()) {
                    problems.push(Problem::new(
                        format!("{path}.actions[{action_index}]"),
                        format!("{action:?} is not a pull_request action GitHub sends"),
                    ));
                }
            }
            actions.clone()
        }
        None => DEFAULT_PULL_REQUEST_ACTIONS
            .iter()
            .map(|action| action.to_string())
            .collect(),
    };
    if !route.labels.is_empty() && !takes_pull_requests {
        problems.push(Problem::new(
            format!("{path}.labels"),
            "is set, but events does not include \"pull_request\"",
        ));
    }
    let environment = match EnvironmentTemplate::parse(&route.environment) {
        Ok(template) => {
            if template.uses_number() && route.events.contains(&EventName::Push) {
                problems.push(Problem::new(
                    format!("{path}.environment"),
                    "uses {number}, which only pull_request events have, but events includes \"push\"",
                ));
            }
            Some(template)
        }
        Err(message) => {
            problems.push(Problem::new(format!("{path}.environment"), message));
            None
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(CompiledRoute {
        name: route.name.clone().unwrap_or_else(|| path.clone()),
        pipeline: pipeline?,
        sources: route.sources.clone(),
        repository,
        events: route.events.clone(),
        branches,
        tags,
        paths,
        actions,
        labels: route.labels.clone(),
        environment: environment?,
        commits: route.commits,
        teardown_on_delete: route.teardown_on_delete,
        skip_ci: route.skip_ci,
        allow_drafts: route.allow_drafts,
        allow_forks: route.allow_forks,
        deploy_all_projects: route.deploy_all_projects,
    })
}

impl fmt::Display for Planner {
    /// A one-screen summary for `check-config`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pipelines:")?;
        for pipeline in &self.pipelines {
            let projects: Vec<&str> = pipeline
                .projects
                .iter()
                .map(|project| project.name.as_str())
                .collect();
            writeln!(
                f,
                "  {} ({}){}{}",
                pipeline.name,
                match pipeline.concurrency {
                    Concurrency::Parallel => "parallel",
                    Concurrency::Serial => "serial",
                },
                if projects.is_empty() {
                    String::new()
                } else {
                    format!(", projects: {}", projects.join(", "))
                },
                if pipeline.template.is_some() {
                    ", custom input template"
                } else {
                    ""
                }
            )?;
        }
        writeln!(f, "routes:")?;
        for route in &self.routes {
            let events: Vec<&str> = route
                .events
                .iter()
                .map(|event| match event {
                    EventName::Push => "push",
                    EventName::PullRequest => "pull_request",
                })
                .collect();
            let mut filters = Vec::new();
            for (key, filter) in [("branches", &route.branches), ("tags", &route.tags)] {
                match filter {
                    RefFilter::Absent => {}
                    RefFilter::Include(list) => filters.push(format!("{key} {}", list.describe())),
                    RefFilter::Exclude(list) => {
                        filters.push(format!("{key} not {}", list.describe()))
                    }
                }
            }
            match &route.paths {
                PathFilter::Absent => {}
                PathFilter::Include(list) => filters.push(format!("paths {}", list.describe())),
                PathFilter::Exclude(list) => filters.push(format!("paths not {}", list.describe())),
            }
            let commits = if route.events.contains(&EventName::Push) {
                match route.commits {
                    CommitsMode::Each => " (each commit)",
                    CommitsMode::Head => " (head commit only)",
                }
            } else {
                ""
            };
            writeln!(
                f,
                "  {}: {} {} in {}{} -> {} @ {}{}",
                route.name,
                route.sources.as_ref().map_or_else(
                    || "any source".to_string(),
                    |sources| {
                        sources
                            .iter()
                            .map(|source| source.as_str())
                            .collect::<Vec<_>>()
                            .join("|")
                    }
                ),
                events.join("|"),
                route
                    .repository
                    .as_ref()
                    .map_or("any repository", |glob| glob.glob().glob()),
                if filters.is_empty() {
                    String::new()
                } else {
                    format!(", {}", filters.join(", "))
                },
                self.pipelines[route.pipeline].name,
                route
                    .environment
                    .0
                    .iter()
                    .map(|part| match part {
                        EnvironmentPart::Text(text) => text.as_str(),
                        EnvironmentPart::Number => "{number}",
                        EnvironmentPart::Branch => "{branch}",
                    })
                    .collect::<String>(),
                commits,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
