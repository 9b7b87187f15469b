//! CodePipeline as a source: gitdispatch is the job worker of a custom action. It
//! pulls instead of being posted to: `PollForJobs` for the action type, each job
//! decoded into a trigger ([`crate::event::Manual`], with the job's place in the
//! pipeline), `AcknowledgeJob` with its nonce, and at the end `PutJobSuccessResult` or
//! `PutJobFailureResult`. The job's credentials are the worker's own AWS identity: only
//! pipelines of accounts that may use the action type create its jobs.
//!
//! The action's configuration names what to run: `Pipeline` and `Environment` (ours),
//! and optionally `UserParameters`, a JSON object of `skip_*` flags and
//! `override_branches`, as the trigger API takes them. The first input artifact's
//! revision, when it is a commit id, is the commit deployed.

use std::collections::HashMap;

use aws_sdk_codepipeline::Client;
use aws_sdk_codepipeline::error::ProvideErrorMetadata;
use aws_sdk_codepipeline::types::{
    ActionCategory, ActionOwner, ActionTypeId, ExecutionDetails, FailureDetails, FailureType, Job,
};
use serde_json::{Map, Value};

use crate::config::CodePipelineConfig;
use crate::error::BoxError;
use crate::event::{CommitSha, Event, EventKind, Occurrence, PipelineJob, Source};

/// What CodePipeline takes in a job's execution details summary, at most.
const MAX_SUMMARY: usize = 2048;
/// ... and in a failure's message.
const MAX_FAILURE_MESSAGE: usize = 5000;

#[derive(Debug, thiserror::Error)]
pub enum CodePipelineError {
    /// Throttling, a 5xx, a network failure: try again later.
    #[error("{message}")]
    Retryable {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The job is not ours to act on (no such job, or another worker took it with its
    /// nonce).
    #[error("{message}")]
    Gone { message: String },
    /// The job is in no state to take this call: for a result, either not acknowledged
    /// yet (its acknowledgement lost, and the job offered again) or past its result (it
    /// has one, or timed out). CodePipeline does not say which: the caller tells them
    /// apart.
    #[error("{message}")]
    NotInProgress { message: String },
}

fn classify<E>(what: &str, error: aws_sdk_codepipeline::error::SdkError<E>) -> CodePipelineError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = error.code().unwrap_or_default().to_string();
    let message = || format!("{what}: {code}: {}", error.message().unwrap_or_default());
    match code.as_str() {
        "InvalidJobStateException" => CodePipelineError::NotInProgress { message: message() },
        "JobNotFoundException" | "InvalidNonceException" => {
            CodePipelineError::Gone { message: message() }
        }
        _ => CodePipelineError::Retryable {
            message: format!("{what} failed"),
            source: Some(Box::new(error)),
        },
    }
}

/// A job polled, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Polled {
    /// A new job: the trigger it asks for.
    Start { event: Box<Event> },
    /// A job CodePipeline made again for an action in progress (we handed the last one
    /// back with this continuation token): the execution to follow on.
    Continue { token: String },
    /// A job that cannot be run, and why (fails the action).
    Refused { reason: String },
}

/// A job as taken from `PollForJobs`: its id and nonce, and what it asks.
#[derive(Debug, Clone, PartialEq)]
pub struct PolledJob {
    pub id: String,
    pub nonce: String,
    pub polled: Polled,
}

/// Decodes a polled job.
pub fn decode(job: &Job) -> Option<PolledJob> {
    let id = job.id()?.to_string();
    let nonce = job.nonce().unwrap_or_default().to_string();
    let Some(data) = job.data() else {
        return Some(PolledJob {
            id,
            nonce,
            polled: Polled::Refused {
                reason: "the job carries no data".into(),
            },
        });
    };
    if let Some(token) = data.continuation_token().filter(|token| !token.is_empty()) {
        return Some(PolledJob {
            id,
            nonce,
            polled: Polled::Continue {
                token: token.to_string(),
            },
        });
    }
    let empty = HashMap::new();
    let configuration = data
        .action_configuration()
        .and_then(|configuration| configuration.configuration())
        .unwrap_or(&empty);
    let context = data.pipeline_context();
    let named = |value: Option<&str>| value.unwrap_or_default().to_string();
    let artifact = data.input_artifacts().first();
    let place = PipelineJob {
        job_id: id.clone(),
        pipeline: named(context.and_then(|context| context.pipeline_name())),
        pipeline_execution_id: named(context.and_then(|context| context.pipeline_execution_id())),
        stage: named(context.and_then(|context| context.stage()?.name())),
        action: named(context.and_then(|context| context.action()?.name())),
        revision: artifact
            .and_then(|artifact| artifact.revision())
            .map(str::to_string),
        artifact: artifact
            .and_then(|artifact| artifact.name())
            .map(str::to_string),
        repository: None,
        branch: None,
    };
    let polled = match trigger(&id, configuration, place) {
        Ok(event) => Polled::Start {
            event: Box::new(event),
        },
        Err(reason) => Polled::Refused { reason },
    };
    Some(PolledJob { id, nonce, polled })
}

/// The trigger a job's action configuration asks for, checked as the trigger API
/// checks its body.
fn trigger(
    id: &str,
    configuration: &HashMap<String, String>,
    place: PipelineJob,
) -> Result<Event, String> {
    let setting = |key: &str| {
        configuration
            .get(key)
            .filter(|value| !value.is_empty())
            .cloned()
            .ok_or_else(|| format!("the action's configuration has no {key}"))
    };
    let mut body = Map::new();
    body.insert("pipeline".into(), Value::String(setting("Pipeline")?));
    body.insert("environment".into(), Value::String(setting("Environment")?));
    if let Some(text) = configuration
        .get("UserParameters")
        .filter(|text| !text.trim().is_empty())
    {
        let Ok(Value::Object(parameters)) = serde_json::from_str(text) else {
            return Err(
                "UserParameters: must be a JSON object of skip_* flags and override_branches"
                    .into(),
            );
        };
        if let Some(name) = super::manual::repeated_key(text.as_bytes()) {
            return Err(format!("UserParameters: {name} is given twice"));
        }
        for (key, value) in parameters {
            if matches!(key.as_str(), "pipeline" | "environment" | "commit") {
                return Err(format!(
                    "UserParameters: {key} is set by the action's configuration and revision"
                ));
            }
            body.insert(key, value);
        }
    }
    let commit = place
        .revision
        .as_deref()
        .and_then(|revision| CommitSha::parse(revision).ok());
    if let Some(commit) = &commit {
        body.insert("commit".into(), Value::String(commit.to_string()));
    }
    let mut event =
        super::manual::decode_fields(body, Some(id)).map_err(|error| error.to_string())?;
    event.source = Source::CodePipeline;
    // The job id names the execution: a job polled twice, or by two workers, plans
    // the same name.
    event.occurrence = Occurrence::from_parts(&["codepipeline", id]);
    if let EventKind::Manual(manual) = &mut event.kind {
        manual.codepipeline = Some(place);
    }
    Ok(event)
}

/// The custom action's job calls.
pub struct CodePipeline {
    client: Client,
    action: ActionTypeId,
    batch: i32,
}

impl CodePipeline {
    pub fn new(client: Client, config: &CodePipelineConfig) -> CodePipeline {
        let action = ActionTypeId::builder()
            .category(ActionCategory::from(config.category.as_str()))
            .owner(ActionOwner::Custom)
            .provider(&config.provider)
            .version(&config.version)
            .build()
            .expect("category, owner, provider and version are all set");
        CodePipeline {
            client,
            action,
            batch: config.max_batch_size,
        }
    }

    /// The jobs waiting for the action type (none when there are none).
    pub async fn poll(&self) -> Result<Vec<PolledJob>, CodePipelineError> {
        let output = self
            .client
            .poll_for_jobs()
            .action_type_id(self.action.clone())
            .max_batch_size(self.batch)
            .send()
            .await
            .map_err(|error| classify("PollForJobs", error))?;
        Ok(output.jobs().iter().filter_map(decode).collect())
    }

    /// The repository and branch of the source action whose output is `artifact` in
    /// `pipeline`'s declaration: CodeCommit's `RepositoryName` and `BranchName`, a
    /// connection's (GitHub, GitLab, Bitbucket) `FullRepositoryId` and `BranchName`,
    /// GitHub version 1's `Owner`/`Repo` and `Branch`.
    pub async fn source_of(
        &self,
        pipeline: &str,
        artifact: &str,
    ) -> Result<Option<(String, String)>, CodePipelineError> {
        let output = self
            .client
            .get_pipeline()
            .name(pipeline)
            .send()
            .await
            .map_err(|error| classify("GetPipeline", error))?;
        let Some(declaration) = output.pipeline() else {
            return Ok(None);
        };
        let source = declaration
            .stages()
            .iter()
            .flat_map(|stage| stage.actions())
            .find(|action| {
                action
                    .output_artifacts()
                    .iter()
                    .any(|output| output.name() == artifact)
            });
        let Some(configuration) = source.and_then(|action| action.configuration()) else {
            return Ok(None);
        };
        let get = |key: &str| configuration.get(key).filter(|value| !value.is_empty());
        let repository = get("RepositoryName")
            .or_else(|| get("FullRepositoryId"))
            .cloned()
            .or_else(|| Some(format!("{}/{}", get("Owner")?, get("Repo")?)));
        let branch = get("BranchName").or_else(|| get("Branch")).cloned();
        Ok(repository.zip(branch))
    }

    /// Takes a job for this worker; `Gone` when another worker took it first.
    pub async fn acknowledge(&self, job: &PolledJob) -> Result<(), CodePipelineError> {
        self.client
            .acknowledge_job()
            .job_id(&job.id)
            .nonce(&job.nonce)
            .send()
            .await
            .map_err(|error| classify("AcknowledgeJob", error))?;
        Ok(())
    }

    /// Passes the action (or, with `continuation`, says it is still in progress and
    /// asks for a new job to follow it with).
    pub async fn succeed(
        &self,
        job_id: &str,
        summary: &str,
        external_id: Option<&str>,
        continuation: Option<&str>,
    ) -> Result<(), CodePipelineError> {
        let details = ExecutionDetails::builder()
            .summary(crate::text::one_line(summary, MAX_SUMMARY))
            .set_external_execution_id(external_id.map(str::to_string))
            .percent_complete(if continuation.is_some() { 50 } else { 100 })
            .build();
        self.client
            .put_job_success_result()
            .job_id(job_id)
            .execution_details(details)
            .set_continuation_token(continuation.map(str::to_string))
            .send()
            .await
            .map_err(|error| classify("PutJobSuccessResult", error))?;
        Ok(())
    }

    /// Fails the action with `message`.
    pub async fn fail(
        &self,
        job_id: &str,
        kind: FailureType,
        message: &str,
        external_id: Option<&str>,
    ) -> Result<(), CodePipelineError> {
        let details = FailureDetails::builder()
            .r#type(kind)
            .message(crate::text::one_line(message, MAX_FAILURE_MESSAGE))
            .set_external_execution_id(external_id.map(str::to_string))
            .build()
            .expect("type and message are set");
        self.client
            .put_job_failure_result()
            .job_id(job_id)
            .failure_details(details)
            .send()
            .await
            .map_err(|error| classify("PutJobFailureResult", error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_codepipeline::types::{
        ActionConfiguration, ActionContext, Artifact, JobData, PipelineContext, StageContext,
    };

    fn job(configuration: &[(&str, &str)], token: Option<&str>) -> Job {
        let mut action = ActionConfiguration::builder();
        for (key, value) in configuration {
            action = action.configuration(*key, *value);
        }
        let mut data = JobData::builder()
            .action_configuration(action.build())
            .pipeline_context(
                PipelineContext::builder()
                    .pipeline_name("release")
                    .pipeline_execution_id("exec-1")
                    .stage(StageContext::builder().name("Deploy").build())
                    .action(ActionContext::builder().name("Production").build())
                    .build(),
            )
            .input_artifacts(
                Artifact::builder()
                    .name("Source")
                    .revision("0123456789abcdef0123456789abcdef01234567")
                    .build(),
            );
        if let Some(token) = token {
            data = data.continuation_token(token);
        }
        Job::builder()
            .id("11111111-2222-3333-4444-555555555555")
            .nonce("7")
            .data(data.build())
            .build()
    }

    #[test]
    fn a_job_becomes_the_trigger_its_configuration_names() {
        let polled = decode(&job(
            &[
                ("Pipeline", "deploy"),
                ("Environment", "production"),
                ("UserParameters", r#"{"skip_api_v1": true}"#),
            ],
            None,
        ))
        .unwrap();
        assert_eq!(polled.nonce, "7");
        let Polled::Start { event } = polled.polled else {
            panic!("a start: {polled:?}");
        };
        assert_eq!(event.source, Source::CodePipeline);
        let EventKind::Manual(manual) = &event.kind else {
            panic!("a trigger");
        };
        assert_eq!(manual.pipeline, "deploy");
        assert_eq!(manual.environment, "production");
        assert_eq!(manual.skips, [("skip_api_v1".to_string(), true)]);
        assert_eq!(
            manual.commit.as_ref().map(CommitSha::as_str),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        let place = manual.codepipeline.as_ref().unwrap();
        assert_eq!(
            (
                place.pipeline.as_str(),
                place.stage.as_str(),
                place.action.as_str()
            ),
            ("release", "Deploy", "Production")
        );
        // The same job decoded again names the same occurrence.
        let again = decode(&job(
            &[("Pipeline", "deploy"), ("Environment", "production")],
            None,
        ))
        .unwrap();
        let Polled::Start { event: second } = again.polled else {
            panic!("a start");
        };
        assert_eq!(second.occurrence, event.occurrence);
    }

    #[test]
    fn a_job_that_cannot_run_says_why_and_a_continuation_is_followed() {
        for (configuration, reason) in [
            (vec![("Environment", "production")], "Pipeline"),
            (vec![("Pipeline", "deploy")], "Environment"),
            (
                vec![
                    ("Pipeline", "deploy"),
                    ("Environment", "production"),
                    ("UserParameters", "not json"),
                ],
                "UserParameters",
            ),
            (
                vec![
                    ("Pipeline", "deploy"),
                    ("Environment", "production"),
                    ("UserParameters", r#"{"colour": "blue"}"#),
                ],
                "colour",
            ),
            (
                vec![
                    ("Pipeline", "deploy"),
                    ("Environment", "production"),
                    (
                        "UserParameters",
                        r#"{"skip_api_v1": true, "skip_api_v1": false}"#,
                    ),
                ],
                "skip_api_v1 is given twice",
            ),
        ] {
            let polled = decode(&job(&configuration, None)).unwrap();
            let Polled::Refused { reason: said } = &polled.polled else {
                panic!("refused: {polled:?}");
            };
            assert!(said.contains(reason), "{said}");
        }
        let polled = decode(&job(&[], Some("token-1"))).unwrap();
        assert_eq!(
            polled.polled,
            Polled::Continue {
                token: "token-1".into()
            }
        );
    }
}
