//! Opening what the configuration names: AWS settings, the queue, the executor, the
//! ledger and the journal.

use super::*;

/// Loads the AWS settings the usual way (environment, profile, instance role), when a
/// part of the configuration is on AWS.
pub async fn aws_settings(config: &Config) -> Option<SdkConfig> {
    // CodeCommit pushes' commits are read from its API.
    let needed = matches!(config.queue, QueueConfig::Sqs { .. })
        || matches!(config.executor, ExecutorConfig::StepFunctions {})
        || config.codecommit.is_some()
        || config.codepipeline.is_some()
        || (needs_ledger(config)
            && matches!(config.ledger, crate::config::LedgerConfig::DynamoDb { .. }));
    if !needed {
        return None;
    }
    // A long poll waits up to 20 s: each attempt may take longer than that.
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(30))
        .operation_timeout(Duration::from_secs(90))
        .build();
    Some(
        aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .load()
            .await,
    )
}

/// The configured queue, by backend.
pub enum OpenedQueue {
    Embedded(Arc<EmbeddedQueue>),
    Sqs(Arc<SqsQueue>),
}

impl OpenedQueue {
    /// What operators ask of it.
    pub fn admin(&self) -> Arc<dyn crate::queue::QueueAdmin> {
        match self {
            OpenedQueue::Embedded(queue) => queue.clone(),
            OpenedQueue::Sqs(queue) => queue.clone(),
        }
    }

    pub fn queue(&self) -> Arc<dyn Queue> {
        match self {
            OpenedQueue::Embedded(queue) => queue.clone(),
            OpenedQueue::Sqs(queue) => queue.clone(),
        }
    }
}

/// Opens the configured queue.
pub async fn open_queue(config: &Config, aws: Option<&SdkConfig>) -> Result<OpenedQueue, AppError> {
    match &config.queue {
        QueueConfig::Embedded {
            path,
            visibility_timeout_secs,
            max_receives,
        } => {
            let queue = EmbeddedQueue::open(EmbeddedSettings {
                path: path.clone(),
                visibility_timeout: Duration::from_secs(*visibility_timeout_secs),
                max_receives: *max_receives,
            })
            .await?;
            Ok(OpenedQueue::Embedded(Arc::new(queue)))
        }
        QueueConfig::Sqs { url } => {
            let aws = aws.ok_or(AppError::NoAwsSettings("the SQS queue"))?;
            let queue = SqsQueue::open(aws_sdk_sqs::Client::new(aws), url).await?;
            let facts = queue.facts();
            match &facts.dead_letter {
                Some((dead_letter_url, max_receives)) => tracing::info!(
                    fifo = facts.fifo,
                    visibility_timeout_secs = facts.visibility_timeout.as_secs(),
                    max_receives,
                    dead_letter_queue = %dead_letter_url,
                    "Opened the SQS queue."
                ),
                None => tracing::warn!(
                    url = %url,
                    "The SQS queue has no redrive policy: a job that keeps failing is received for ever and never dead-lettered."
                ),
            }
            Ok(OpenedQueue::Sqs(Arc::new(queue)))
        }
    }
}

/// The configured executor, by backend.
pub enum OpenedExecutor {
    Local(Arc<LocalExecutor>),
    StepFunctions(Arc<StepFunctionsExecutor>),
}

impl OpenedExecutor {
    pub fn executor(&self) -> Arc<dyn Executor> {
        match self {
            OpenedExecutor::Local(executor) => executor.clone(),
            OpenedExecutor::StepFunctions(executor) => executor.clone(),
        }
    }

    /// Lets local executions finish within `grace`; Step Functions executions run on
    /// without us.
    pub async fn shutdown(&self, grace: Duration) {
        if let OpenedExecutor::Local(executor) = self {
            executor.shutdown(grace).await;
        }
    }
}

/// What the local executor runs for each pipeline.
fn local_pipelines(config: &Config) -> HashMap<String, LocalPipeline> {
    config
        .pipelines
        .iter()
        .filter_map(|pipeline| {
            let command = pipeline.command.clone()?;
            Some((
                pipeline.name.clone(),
                LocalPipeline {
                    command,
                    timeout: Duration::from_secs(pipeline.timeout_secs),
                },
            ))
        })
        .collect()
}

/// The state machine of each pipeline.
fn state_machines(config: &Config) -> HashMap<String, String> {
    config
        .pipelines
        .iter()
        .filter_map(|pipeline| Some((pipeline.name.clone(), pipeline.state_machine_arn.clone()?)))
        .collect()
}

impl OpenedExecutor {
    /// Takes the pipelines of a reloaded configuration.
    pub(super) fn reload(&self, config: &Config) {
        match self {
            OpenedExecutor::Local(executor) => executor.set_pipelines(local_pipelines(config)),
            OpenedExecutor::StepFunctions(executor) => {
                executor.set_state_machines(state_machines(config))
            }
        }
    }
}

/// Opens the configured executor (nothing is recovered: see [`App::build`]).
pub async fn open_executor(
    config: &Config,
    aws: Option<&SdkConfig>,
) -> Result<OpenedExecutor, AppError> {
    match &config.executor {
        ExecutorConfig::Local {
            log_dir,
            path,
            max_attempts,
            details_url,
        } => {
            let executor = LocalExecutor::open(LocalSettings {
                path: path.clone(),
                log_dir: log_dir.clone(),
                pipelines: local_pipelines(config),
                max_attempts: *max_attempts,
                details_url: details_url.clone(),
            })
            .await?;
            Ok(OpenedExecutor::Local(Arc::new(executor)))
        }
        ExecutorConfig::StepFunctions {} => {
            let aws = aws.ok_or(AppError::NoAwsSettings("the Step Functions executor"))?;
            Ok(OpenedExecutor::StepFunctions(Arc::new(
                StepFunctionsExecutor::new(aws_sdk_sfn::Client::new(aws), state_machines(config)),
            )))
        }
    }
}

/// Opens the journal in the `[ledger]` store: the SQLite file's neighbour (the same
/// file, its own tables), or items of the same DynamoDB table.
pub async fn open_journal(
    config: &Config,
    aws: Option<&SdkConfig>,
) -> Result<Arc<dyn crate::journal::Journal>, AppError> {
    let retention = config.history.retention();
    Ok(match &config.ledger {
        crate::config::LedgerConfig::Sqlite { path } => {
            Arc::new(crate::journal::sqlite::SqliteJournal::open(path)?)
        }
        crate::config::LedgerConfig::DynamoDb { table } => {
            let aws = aws.ok_or(AppError::NoAwsSettings("the DynamoDB journal"))?;
            let client = aws_sdk_dynamodb::Client::new(aws);
            crate::dynamo::check_table(&client, table)
                .await
                .map_err(|message| crate::journal::JournalError {
                    message,
                    source: None,
                })?;
            Arc::new(crate::journal::dynamodb::DynamoJournal::new(
                client,
                table.clone(),
                retention,
            ))
        }
    })
}

/// Whether anything configured records in the ledger: reconcile (the commits planned),
/// the API (idempotency keys) or CodePipeline (which jobs have their result).
pub fn needs_ledger(config: &Config) -> bool {
    config.github.reconcile.is_some() || config.api.enabled() || config.codepipeline.is_some()
}

/// Opens `[ledger]`, when something needs it.
pub async fn open_ledger(
    config: &Config,
    aws: Option<&SdkConfig>,
) -> Result<Option<Arc<dyn crate::ledger::Ledger>>, AppError> {
    if !needs_ledger(config) {
        return Ok(None);
    }
    Ok(Some(match &config.ledger {
        crate::config::LedgerConfig::Sqlite { path } => {
            Arc::new(crate::ledger::sqlite::SqliteLedger::open(path)?)
        }
        crate::config::LedgerConfig::DynamoDb { table } => {
            let aws = aws.ok_or(AppError::NoAwsSettings("the DynamoDB ledger"))?;
            let ledger = crate::ledger::dynamodb::DynamoLedger::new(
                aws_sdk_dynamodb::Client::new(aws),
                table.clone(),
            );
            ledger.check().await?;
            Arc::new(ledger)
        }
    }))
}
