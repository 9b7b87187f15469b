//! A manual trigger: it names its pipeline and environment, goes through no route,
//! and is checked against the pipeline's projects (every unknown pipeline, project or
//! skip flag is refused, naming the field). Its input has the shape a webhook's has,
//! with `"provider": "manual"`.

use serde_json::{Map, Value, json};

use super::compile::CompiledPipeline;
use super::{Plan, PlanError, Planner};
use crate::config::Concurrency;
use crate::event::{CommitSha, Event, Manual, RefName};
use crate::execution::name::{NameParts, execution_name};
use crate::execution::{Action, ExecutionRequest, Input, MAX_INPUT_BYTES, Origin};

/// Environments a trigger may name: what an environment template can render.
const MAX_ENVIRONMENT: usize = 100;

fn invalid(field: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

impl Planner {
    pub(super) fn plan_manual(&self, event: &Event, manual: &Manual) -> Result<Plan, PlanError> {
        let pipeline = self
            .pipelines
            .iter()
            .find(|pipeline| pipeline.name == manual.pipeline)
            .ok_or_else(|| {
                invalid(
                    "pipeline",
                    format!("no pipeline is named {:?}", manual.pipeline),
                )
            })?;
        let environment = &manual.environment;
        if environment.len() > MAX_ENVIRONMENT
            || !environment
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        {
            return Err(invalid(
                "environment",
                format!(
                    "{environment:?} must be 1 to {MAX_ENVIRONMENT} characters from A-Z, a-z, 0-9, '-' and '_'"
                ),
            ));
        }
        let origin = origin(pipeline, manual);
        let input = manual_input(pipeline, event, manual, origin.as_ref())?;
        let no_ref = RefName::parse("refs/heads/manual").expect("a valid ref");
        // A CodePipeline job's branch is read from the pipeline's declaration, which
        // a second poll of the job may read differently (or not at all): the name
        // leaves it out, so that it stays a function of the job alone.
        let name_ref = match &origin {
            Some((_, git_ref)) if manual.codepipeline.is_none() => git_ref,
            _ => &no_ref,
        };
        let zero = CommitSha::parse(&"0".repeat(40)).expect("forty zeros");
        let commit = manual.commit.clone().unwrap_or(zero);
        let name = execution_name(NameParts {
            occurrence: &event.occurrence,
            pipeline: &pipeline.name,
            environment,
            git_ref: name_ref,
            commit: &commit,
            action: Action::Deploy,
        });
        let text = serde_json::to_string(&input).expect("a JSON value always serializes");
        if text.len() > MAX_INPUT_BYTES {
            return Err(PlanError::InputTooLarge {
                pipeline: pipeline.name.clone(),
                name,
                bytes: text.len(),
            });
        }
        let group = match pipeline.concurrency {
            Concurrency::Serial => Some(format!("{}/{environment}", pipeline.name)),
            Concurrency::Parallel => None,
        };
        let request = ExecutionRequest {
            pipeline: pipeline.name.clone(),
            name,
            group,
            environment: environment.clone(),
            action: Action::Deploy,
            input: Input::from_json(text).expect("a rendered value is JSON"),
            origin: Origin {
                source: event.source,
                delivery: event.delivery.clone(),
                repository: origin
                    .as_ref()
                    .map(|(repository, _)| repository.clone())
                    .unwrap_or_default(),
                git_ref: origin.map_or(no_ref, |(_, git_ref)| git_ref),
                commit,
            },
            report: None,
        };
        let mut plan = Plan::default();
        plan.trace.push(format!(
            "{} trigger: pipeline {}, environment {environment}",
            event.source, pipeline.name
        ));
        plan.matched_routes = 1;
        plan.requests.push(request);
        Ok(plan)
    }
}

/// Where a trigger's code comes from: the first override's project and branch, or
/// for a CodePipeline job its source action's repository and branch.
fn origin(pipeline: &CompiledPipeline, manual: &Manual) -> Option<(String, RefName)> {
    if let Some((project, git_ref)) = manual.overrides.first() {
        let repository = project_of(pipeline, project)
            .map(|found| found.repository.clone())
            .unwrap_or_default();
        return Some((repository, git_ref.clone()));
    }
    let job = manual.codepipeline.as_ref()?;
    let git_ref = RefName::branch(job.branch.as_deref()?).ok()?;
    Some((job.repository.clone().unwrap_or_default(), git_ref))
}

fn project_of<'a>(
    pipeline: &'a CompiledPipeline,
    name: &str,
) -> Option<&'a super::compile::CompiledProject> {
    pipeline
        .projects
        .iter()
        .find(|project| project.name == name)
}

/// The input a webhook would give, from what the trigger says: every project's skip
/// flag (false unless the trigger sets it), the branches to deploy, and a `git` block
/// that says where it came from.
fn manual_input(
    pipeline: &CompiledPipeline,
    event: &Event,
    manual: &Manual,
    origin: Option<&(String, RefName)>,
) -> Result<Value, PlanError> {
    let mut input = Map::new();
    input.insert(
        "environment".into(),
        Value::String(manual.environment.clone()),
    );
    for project in &pipeline.projects {
        if let Some(flag) = &project.skip_flag {
            input.insert(flag.clone(), Value::Bool(false));
        }
    }
    for (flag, skip) in &manual.skips {
        if !input.contains_key(flag) || flag == "environment" {
            return Err(invalid(
                flag.clone(),
                format!(
                    "no project of pipeline {} has this skip flag",
                    pipeline.name
                ),
            ));
        }
        input.insert(flag.clone(), Value::Bool(*skip));
    }
    let mut overrides = Vec::new();
    for (index, (project, git_ref)) in manual.overrides.iter().enumerate() {
        if project_of(pipeline, project).is_none() {
            return Err(invalid(
                format!("override_branches[{index}].project"),
                format!("pipeline {} has no project {project:?}", pipeline.name),
            ));
        }
        overrides.push(json!({"project": project, "branch": git_ref.short_name()}));
    }
    input.insert("override_branches".into(), Value::Array(overrides));
    input.insert(
        "git".into(),
        json!({
            "provider": event.source.as_str(),
            "repository": origin.map(|(repository, _)| repository),
            "event": "manual",
            "ref": origin.map(|(_, git_ref)| git_ref.as_str()),
            "branch": origin.map(|(_, git_ref)| git_ref.short_name()),
            "commit": manual.commit.as_ref().map(CommitSha::as_str),
            "message": "",
            "author": "",
            "delivery": event.delivery.as_str(),
            "pull_request": null,
            "action": "deploy",
        }),
    );
    if let Some(job) = &manual.codepipeline {
        input.insert(
            "codepipeline".into(),
            json!({
                "job_id": job.job_id,
                "pipeline": job.pipeline,
                "pipeline_execution_id": job.pipeline_execution_id,
                "stage": job.stage,
                "action": job.action,
                "revision": job.revision,
                "artifact": job.artifact,
                "repository": job.repository,
                "branch": job.branch,
            }),
        );
    }
    let input = Value::Object(input);
    Ok(match &pipeline.template {
        Some(template) => template.render(&input),
        None => input,
    })
}
