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
use aws_sdk_sfn::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sfn::operation::describe_execution::DescribeExecutionOutput;
use aws_sdk_sfn::operation::start_execution::StartExecutionError;
use aws_sdk_sfn::types::ExecutionStatus as SfnStatus;

use super::{Execution, ExecutionStatus, Executor, ExecutorError, Started};
use crate::plan::ExecutionRequest;
use crate::plan::input::MAX_INPUT_BYTES;
use crate::plan::name::ExecutionName;

/// Starts executions of the configured state machines.
pub struct StepFunctionsExecutor {
    client: Client,
    /// State machine ARN by pipeline name.
    state_machines: HashMap<String, String>,
}

/// The ARN an execution of `state_machine_arn` named `name` has:
/// `arn:<partition>:states:<region>:<account>:execution:<state machine>:<name>`.
pub fn execution_arn(state_machine_arn: &str, name: &ExecutionName) -> Option<String> {
    let (prefix, machine) = state_machine_arn.split_once(":stateMachine:")?;
    Some(format!("{prefix}:execution:{machine}:{}", name.as_str()))
}

/// Whether a failed call is worth another attempt: throttling, server faults, and
/// failures that left no answer.
fn retryable<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    match error {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            code.contains("Throttl")
                || matches!(
                    code,
                    "ServiceUnavailable" | "InternalServerError" | "ExecutionLimitExceeded"
                )
                || service.raw().status().as_u16() >= 500
        }
        // Timeouts, connection failures, unreadable responses: the call may or may not
        // have happened; the name makes trying again safe.
        _ => true,
    }
}

/// The executor's view of a failed call: worth retrying or not, with the cause chain.
fn classify<E>(what: &str, error: SdkError<E, HttpResponse>) -> ExecutorError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let retry = retryable(&error);
    let message = format!("{what}: {}", DisplayErrorContext(error));
    if retry {
        ExecutorError::Retryable(message)
    } else {
        ExecutorError::Permanent(message)
    }
}

impl StepFunctionsExecutor {
    pub fn new(client: Client, state_machines: HashMap<String, String>) -> StepFunctionsExecutor {
        StepFunctionsExecutor {
            client,
            state_machines,
        }
    }

    fn state_machine(&self, pipeline: &str) -> Result<&str, ExecutorError> {
        self.state_machines
            .get(pipeline)
            .map(String::as_str)
            .ok_or_else(|| {
                ExecutorError::Permanent(format!("pipeline {pipeline} has no state_machine_arn"))
            })
    }

    /// DescribeExecution of the execution `name` of `state_machine`.
    async fn describe_by_name(
        &self,
        state_machine: &str,
        name: &ExecutionName,
    ) -> Result<(String, DescribeExecutionOutput), ExecutorError> {
        let arn = execution_arn(state_machine, name).ok_or_else(|| {
            ExecutorError::Permanent(format!("{state_machine} is not a state machine ARN"))
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

    /// After `ExecutionAlreadyExists`: ours if its input is the planned one.
    async fn existing(
        &self,
        state_machine: &str,
        request: &ExecutionRequest,
    ) -> Result<Started, ExecutorError> {
        let (arn, output) = self.describe_by_name(state_machine, &request.name).await?;
        let same_input = match output.input() {
            None => true,
            Some(existing) => {
                existing == request.input.as_str()
                    || serde_json::from_str::<serde_json::Value>(existing).ok()
                        == serde_json::from_str::<serde_json::Value>(request.input.as_str()).ok()
            }
        };
        if same_input {
            Ok(Started::Existing(arn))
        } else {
            Err(ExecutorError::Permanent(format!(
                "execution {} already exists with another input",
                request.name
            )))
        }
    }
}

#[async_trait]
impl Executor for StepFunctionsExecutor {
    async fn start(&self, request: &ExecutionRequest) -> Result<Started, ExecutorError> {
        let state_machine = self.state_machine(&request.pipeline)?.to_string();
        // The planner refuses larger inputs; check again before calling, as the
        // service's limit is what matters here.
        if request.input.as_str().len() > MAX_INPUT_BYTES {
            return Err(ExecutorError::Permanent(format!(
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

    async fn describe(
        &self,
        pipeline: &str,
        name: &ExecutionName,
    ) -> Result<Execution, ExecutorError> {
        let state_machine = self.state_machine(pipeline)?;
        let (arn, output) = self.describe_by_name(state_machine, name).await?;
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
    use super::*;

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
