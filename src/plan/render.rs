//! One execution request from one candidate: the input in the shape the pipeline
//! expects (or its own template), the deterministic name, the ordering group.

use serde_json::{Map, Value, json};

use super::candidate::Candidate;
use super::compile::{CompiledPipeline, CompiledRoute};
use super::input::MAX_MESSAGE_BYTES;
use super::{PlanError, Planner};
use crate::config::Concurrency;
use crate::event::{CommitSha, Event, EventKind, Source};
use crate::execution::name::{NameParts, execution_name};
use crate::execution::report::{DeploymentTarget, ReportTarget};
use crate::execution::{Action, ExecutionRequest, Input, MAX_INPUT_BYTES, Origin};
use crate::text::cut;

impl Planner {
    /// Renders one request, or `None` when the pipeline has projects and the candidate
    /// touches none of them.
    pub(super) fn request(
        &self,
        route: &CompiledRoute,
        pipeline: &CompiledPipeline,
        event: &Event,
        candidate: &Candidate<'_>,
    ) -> Result<Option<ExecutionRequest>, PlanError> {
        let (git_ref, pull_request) = match &event.kind {
            EventKind::Push(push) => (&push.git_ref, None),
            EventKind::PullRequest(pull_request) => (&pull_request.head_ref, Some(pull_request)),
            // No route takes a manual trigger (`filter`); it is planned on its own.
            EventKind::Manual(_) => return Ok(None),
        };
        let branch = git_ref.short_name();
        let environment = environment(route, event);

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
        let input = Input::from_json(text).expect("a rendered value is JSON");
        let group = match pipeline.concurrency {
            Concurrency::Serial => Some(format!("{}/{}", pipeline.name, environment)),
            Concurrency::Parallel => None,
        };
        // A teardown shows only as its preview's deployment going inactive.
        let report = self
            .report_target(route, pipeline, event, candidate.commit, &environment)
            .filter(|target| candidate.action == Action::Deploy || target.deployment.is_some());
        Ok(Some(ExecutionRequest {
            report,
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

/// The environment a route names for an event.
pub(super) fn environment(route: &CompiledRoute, event: &Event) -> String {
    let (git_ref, number) = match &event.kind {
        EventKind::Push(push) => (push.git_ref.short_name(), None),
        EventKind::PullRequest(pull_request) => (
            pull_request.head_ref.short_name(),
            Some(pull_request.number),
        ),
        // No route takes a manual trigger; it names its environment itself.
        EventKind::Manual(manual) => return manual.environment.clone(),
    };
    route.environment.render(git_ref, number)
}

impl Planner {
    /// Where an execution of `pipeline` for `commit` is reported, when reporting is on
    /// and the event came from GitHub (the one source reported to): one context per
    /// pipeline and environment, and for a pull request a deployment of its preview.
    pub(super) fn report_target(
        &self,
        route: &CompiledRoute,
        pipeline: &CompiledPipeline,
        event: &Event,
        commit: &CommitSha,
        environment: &str,
    ) -> Option<ReportTarget> {
        if !self.reporting || event.source != Source::Github {
            return None;
        }
        let deployment = match &event.kind {
            EventKind::PullRequest(pull_request) if route.deployment => Some(DeploymentTarget {
                environment: environment.to_string(),
                url: route.environment_url.as_ref().map(|template| {
                    template.render(
                        pull_request.head_ref.short_name(),
                        Some(pull_request.number),
                    )
                }),
                url_path: route.environment_url_path.clone(),
            }),
            _ => None,
        };
        Some(ReportTarget {
            repository: event.repository.clone(),
            commit: commit.clone(),
            context: format!("gitdispatch/{}/{environment}", pipeline.name),
            deployment,
        })
    }
}
