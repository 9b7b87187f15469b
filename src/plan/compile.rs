//! The configured pipelines and routes, checked and compiled once: every problem is
//! reported with its key path, and what planning needs is ready (globs compiled,
//! templates parsed).

use std::collections::HashSet;

use globset::GlobMatcher;

use super::DEFAULT_PULL_REQUEST_ACTIONS;
use super::filter::{EnvironmentTemplate, PathFilter, RefFilter};
use super::input::Template;
use crate::config::{CommitsMode, Concurrency, EventName, Problem, RouteConfig};
use crate::event::Source;
use crate::pattern::{PatternList, compile_repository_glob};

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

#[derive(Debug, Clone)]
pub(super) struct CompiledPipeline {
    pub(super) name: String,
    pub(super) concurrency: Concurrency,
    pub(super) projects: Vec<CompiledProject>,
    pub(super) template: Option<Template>,
}

#[derive(Debug, Clone)]
pub(super) struct CompiledProject {
    pub(super) name: String,
    pub(super) repository: String,
    pub(super) skip_flag: Option<String>,
    pub(super) paths: Option<PatternList>,
}

#[derive(Debug, Clone)]
pub(super) struct CompiledRoute {
    pub(super) name: String,
    /// Its place among the routes (every route compiles, or there is no planner).
    pub(super) index: usize,
    pub(super) pipeline: usize,
    pub(super) sources: Option<Vec<Source>>,
    pub(super) repository: Option<GlobMatcher>,
    pub(super) events: Vec<EventName>,
    pub(super) branches: RefFilter,
    pub(super) tags: RefFilter,
    pub(super) paths: PathFilter,
    pub(super) actions: Vec<String>,
    pub(super) labels: Vec<String>,
    pub(super) environment: EnvironmentTemplate,
    pub(super) commits: CommitsMode,
    pub(super) teardown_on_delete: bool,
    pub(super) skip_ci: bool,
    pub(super) allow_drafts: bool,
    pub(super) allow_forks: bool,
    pub(super) deploy_all_projects: bool,
    pub(super) report_skipped: bool,
    /// Pull requests' executions show as deployments of their environment.
    pub(super) deployment: bool,
    pub(super) environment_url: Option<EnvironmentTemplate>,
    pub(super) environment_url_path: Option<String>,
}

pub(super) fn compile_pipeline(
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

pub(super) fn compile_list(
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

pub(super) fn compile_route(
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
    if (route.environment_url.is_some() || route.environment_url_path.is_some())
        && !takes_pull_requests
    {
        problems.push(Problem::new(
            format!("{path}.environment_url"),
            "is set, but events does not include \"pull_request\": only pull requests' previews are deployments",
        ));
    }
    if route.environment_url.is_some() && route.environment_url_path.is_some() {
        problems.push(Problem::new(
            format!("{path}.environment_url_path"),
            "cannot be used with environment_url: give the address one way",
        ));
    }
    let environment_url = route.environment_url.as_ref().and_then(|text| {
        EnvironmentTemplate::parse(text)
            .map_err(|message| {
                problems.push(Problem::new(format!("{path}.environment_url"), message))
            })
            .ok()
    });
    if let Some(json_path) = &route.environment_url_path
        && let Err(error) = serde_json_path::JsonPath::parse(json_path)
    {
        problems.push(Problem::new(
            format!("{path}.environment_url_path"),
            format!("{json_path:?} is not a JSONPath: {error}"),
        ));
    }
    if problems.len() > before {
        return None;
    }
    Some(CompiledRoute {
        name: route.name.clone().unwrap_or_else(|| path.clone()),
        index,
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
        report_skipped: route.report_skipped,
        deployment: route.deployment && takes_pull_requests,
        environment_url,
        environment_url_path: route.environment_url_path.clone(),
    })
}
