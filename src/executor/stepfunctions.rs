//! AWS Step Functions (standard workflows) behind the [`Executor`] trait.
//!
//! A start is `StartExecution` with the planned name and input. Step Functions keeps
//! names unique per state machine for 90 days, which makes starts idempotent:
//! `ExecutionAlreadyExists` for one of our names means a previous attempt got through,
//! and the existing execution is ours when its input is the one we planned.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_sfn::Client;
use aws_sdk_sfn::config::http::HttpResponse;
use aws_sdk_sfn::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput;
use aws_sdk_sfn::operation::start_execution::StartExecutionError;
use aws_sdk_sfn::types::ExecutionStatus as SfnStatus;

use super::{Execution, ExecutionStatus, Executor, ExecutorError, Started};
use crate::config::{Config, Problem};
use crate::error::BoxError;
use crate::execution::ExecutionRequest;
use crate::execution::MAX_INPUT_BYTES;
use crate::execution::name::ExecutionName;

/// What Step Functions needs of the configuration: a state machine ARN for every
/// pipeline.
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (index, pipeline) in config.pipelines.iter().enumerate() {
        let path = format!("pipelines[{index}].state_machine_arn");
        match &pipeline.state_machine_arn {
            None => problems.push(Problem::new(
                path,
                "is required by executor type \"stepfunctions\"",
            )),
            Some(arn) => {
                let parts: Vec<&str> = arn.split(':').collect();
                let valid = parts.len() == 7
                    && parts[0] == "arn"
                    && parts[2] == "states"
                    && parts[5] == "stateMachine"
                    && !parts[6].is_empty();
                if !valid {
                    problems.push(Problem::new(
                        path,
                        format!("{arn:?} is not a state machine ARN (arn:aws:states:<region>:<account>:stateMachine:<name>)"),
                    ));
                }
            }
        }
    }
    problems
}

/// Starts executions of the configured state machines.
pub struct StepFunctionsExecutor {
    client: Client,
    /// State machine ARN by pipeline name.
    /// By pipeline; replaced whole by a reload.
    state_machines: arc_swap::ArcSwap<HashMap<String, String>>,
}

/// The ARN an execution of `state_machine_arn` named `name` has:
/// `arn:<partition>:states:<region>:<account>:execution:<state machine>:<name>`.
pub fn execution_arn(state_machine_arn: &str, name: &ExecutionName) -> Option<String> {
    let (prefix, machine) = state_machine_arn.split_once(":stateMachine:")?;
    Some(format!("{prefix}:execution:{machine}:{}", name.as_str()))
}

/// Error codes that say the request itself is wrong: trying it again cannot help. Every
/// other failure is worth another attempt, whatever its status class: throttling and
/// service faults, and also what an operator can put right while the job waits
/// (expired or rotated credentials, a policy that does not allow the call yet), which
/// the queue's redrive policy dead-letters if it never gets put right.
const PERMANENT_CODES: &[&str] = &[
    "StateMachineDoesNotExist",
    "StateMachineDeleting",
    "StateMachineTypeNotSupported",
    "InvalidArn",
    "InvalidName",
    "InvalidExecutionInput",
    "ValidationException",
];

/// The executor's view of a failed call, classified by the service's error code (not by
/// its status class: a 400 is as often throttling or an expired token as a bad
/// request), with the cause chain. `ExecutionDoesNotExist` is [`ExecutorError::NotFound`]:
/// whoever describes an execution it started takes it as "not yet" (Step Functions'
/// reads are eventually consistent), and supersede as "never started".
fn classify<E>(what: &str, error: SdkError<E, HttpResponse>) -> ExecutorError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (permanent, summary) = match &error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("an error without a code");
            let summary = match service.err().message() {
                Some(message) => format!("{code}: {message}"),
                None => code.to_string(),
            };
            if code == "ExecutionDoesNotExist" {
                return ExecutorError::not_found(format!("{what}: {summary}"));
            }
            (PERMANENT_CODES.contains(&code), summary)
        }
        // Timeouts, connection failures, unreadable responses, credentials that could
        // not be loaded: the call may or may not have happened; the name makes trying
        // again safe.
        other => (false, other.to_string()),
    };
    // One line for logs and dead-letter reasons; the SDK's error, with the raw
    // response, stays the cause.
    let message = format!("{what}: {summary}");
    let source: Option<BoxError> = Some(Box::new(error));
    if permanent {
        ExecutorError::Permanent { message, source }
    } else {
        ExecutorError::Retryable { message, source }
    }
}

impl StepFunctionsExecutor {
    pub fn new(client: Client, state_machines: HashMap<String, String>) -> StepFunctionsExecutor {
        StepFunctionsExecutor {
            client,
            state_machines: arc_swap::ArcSwap::from_pointee(state_machines),
        }
    }

    /// Replaces the state machine of each pipeline (a reload).
    pub fn set_state_machines(&self, state_machines: HashMap<String, String>) {
        self.state_machines
            .store(std::sync::Arc::new(state_machines));
    }

    fn state_machine(&self, pipeline: &str) -> Result<String, ExecutorError> {
        self.state_machines
            .load()
            .get(pipeline)
            .cloned()
            .ok_or_else(|| {
                ExecutorError::permanent(format!("pipeline {pipeline} has no state_machine_arn"))
            })
    }

    /// DescribeExecution of the execution `name` of `state_machine`.
    async fn describe_by_name(
        &self,
        state_machine: &str,
        name: &ExecutionName,
    ) -> Result<(String, DescribeExecutionOutput), ExecutorError> {
        let arn = execution_arn(state_machine, name).ok_or_else(|| {
            ExecutorError::permanent(format!("{state_machine} is not a state machine ARN"))
        })?;
        let output = self
            .client
            .describe_execution()
            .execution_arn(&arn)
            .send()
            .await
            .map_err(|error| classify("DescribeExecution failed", error))?;
        Ok((arn, output))
    }

    /// After `ExecutionAlreadyExists`: the name is ours (names are derived from the event
    /// and the pipeline), so the execution stands for this request. Its input may differ
    /// in what names no event, such as the delivery id of another delivery of the same
    /// event.
    async fn existing(
        &self,
        state_machine: &str,
        request: &ExecutionRequest,
    ) -> Result<Started, ExecutorError> {
        let (arn, output) = self.describe_by_name(state_machine, &request.name).await?;
        if output
            .input()
            .is_some_and(|input| input != request.input.as_str())
        {
            tracing::info!(
                execution = %request.name,
                "The execution exists with another input (another delivery of the same event); it stands for this one."
            );
        }
        Ok(Started::Existing(arn))
    }
}

#[async_trait]
impl Executor for StepFunctionsExecutor {
    async fn start(&self, request: &ExecutionRequest) -> Result<Started, ExecutorError> {
        let state_machine = self.state_machine(&request.pipeline)?.to_string();
        // The planner refuses larger inputs; check again before calling, as the
        // service's limit is what matters here.
        if request.input.as_str().len() > MAX_INPUT_BYTES {
            return Err(ExecutorError::permanent(format!(
                "input of {} bytes is over Step Functions' {MAX_INPUT_BYTES}",
                request.input.as_str().len()
            )));
        }
        let result = self
            .client
            .start_execution()
            .state_machine_arn(&state_machine)
            .name(request.name.as_str())
            .input(request.input.as_str())
            .send()
            .await;
        match result {
            Ok(output) => Ok(Started::New(output.execution_arn().to_string())),
            Err(error) => {
                if let Some(StartExecutionError::ExecutionAlreadyExists(_)) =
                    error.as_service_error()
                {
                    return self.existing(&state_machine, request).await;
                }
                Err(classify("StartExecution failed", error))
            }
        }
    }

    /// The Step Functions console's page of the execution with ARN `id`.
    fn link(&self, id: &str) -> Option<String> {
        let region = id.split(':').nth(3).filter(|region| !region.is_empty())?;
        Some(format!(
            "https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{id}"
        ))
    }

    async fn describe(
        &self,
        pipeline: &str,
        name: &ExecutionName,
    ) -> Result<Execution, ExecutorError> {
        let state_machine = self.state_machine(pipeline)?;
        let (arn, output) = self.describe_by_name(&state_machine, name).await?;
        let status = match output.status() {
            SfnStatus::Succeeded => ExecutionStatus::Succeeded,
            SfnStatus::Failed => ExecutionStatus::Failed,
            SfnStatus::TimedOut => ExecutionStatus::TimedOut,
            SfnStatus::Aborted => ExecutionStatus::Aborted,
            // Running, waiting for a redrive, or a status this SDK does not know yet:
            // not finished as far as we can tell.
            _ => ExecutionStatus::Running,
        };
        let detail = match status {
            ExecutionStatus::Succeeded => output.output().map(str::to_string),
            _ => match (output.error(), output.cause()) {
                (Some(error), Some(cause)) => Some(format!("{error}: {cause}")),
                (Some(error), None) => Some(error.to_string()),
                (None, cause) => cause.map(str::to_string),
            },
        };
        Ok(Execution {
            id: arn,
            status,
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_sfn::error::ErrorMetadata;
    use aws_sdk_sfn::operation::describe_execution::DescribeExecutionError;

    use super::*;

    fn service_error(status: u16, code: &str) -> SdkError<DescribeExecutionError, HttpResponse> {
        let metadata = ErrorMetadata::builder().code(code).message("m").build();
        SdkError::service_error(
            DescribeExecutionError::generic(metadata),
            HttpResponse::new(status.try_into().unwrap(), "".into()),
        )
    }

    #[test]
    fn errors_are_classified_by_code_not_status() {
        for (status, code) in [
            (400, "ThrottlingException"),
            (400, "ExpiredTokenException"),
            (400, "UnrecognizedClientException"),
            (403, "AccessDeniedException"),
            (400, "ExecutionLimitExceeded"),
            (500, "InternalServerError"),
            (503, "ServiceUnavailable"),
        ] {
            assert!(
                matches!(
                    classify("x", service_error(status, code)),
                    ExecutorError::Retryable { .. }
                ),
                "{code}"
            );
        }
        for code in [
            "StateMachineDoesNotExist",
            "InvalidExecutionInput",
            "InvalidName",
        ] {
            assert!(
                matches!(
                    classify("x", service_error(400, code)),
                    ExecutorError::Permanent { .. }
                ),
                "{code}"
            );
        }
    }

    #[test]
    fn a_missing_execution_is_told_apart() {
        assert!(matches!(
            classify("x", service_error(400, "ExecutionDoesNotExist")),
            ExecutorError::NotFound { .. }
        ));
    }

    #[test]
    fn execution_arns_derive_from_state_machine_arns() {
        let name = ExecutionName::parse("deploy-acceptance-0123456-abc").unwrap();
        assert_eq!(
            execution_arn(
                "arn:aws:states:eu-west-1:123456789012:stateMachine:deploy",
                &name
            )
            .as_deref(),
            Some(
                "arn:aws:states:eu-west-1:123456789012:execution:deploy:deploy-acceptance-0123456-abc"
            )
        );
        assert_eq!(execution_arn("arn:aws:sqs:eu-west-1:1:queue", &name), None);
    }
}
