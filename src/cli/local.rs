//! What works on this machine's files alone: `plan`, `check-config`'s summary and
//! queue check, `executions` and `dlq` (the local executor's record and the embedded
//! queue).

use super::*;

pub(super) fn read_payload(payload: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(payload).map_err(|source| CliError::ReadPayload {
        path: payload.to_path_buf(),
        source,
    })
}

/// Event kinds the `plan` and `send` commands take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum EventArg {
    Push,
    PullRequest,
}

impl EventArg {
    pub fn as_str(self) -> &'static str {
        match self {
            EventArg::Push => "push",
            EventArg::PullRequest => "pull_request",
        }
    }
}

/// Prints, as JSON lines on `out`, the executions a payload file would produce; with
/// `explain`, writes route by route what matched or failed on `err`.
pub fn plan(
    planner: &Planner,
    event: EventArg,
    payload: &Path,
    delivery: &str,
    explain: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let json = read_payload(payload)?;
    let delivery = DeliveryId::parse(delivery)?;
    let decoded = github::decode_payload(event.as_str(), &delivery, &json).map_err(|source| {
        CliError::Decode {
            path: payload.to_path_buf(),
            source,
        }
    })?;
    let Decoded::Event(event) = decoded else {
        return Err(CliError::NotAnEvent(event.as_str()));
    };
    let plan = planner.plan(&event)?;
    if explain {
        for line in &plan.trace {
            writeln!(err, "{line}")?;
        }
        if plan.commits_may_be_truncated {
            writeln!(
                err,
                "warning: the payload lists {} commits, GitHub's maximum; later commits are missing",
                github::MAX_LISTED_COMMITS
            )?;
        }
        writeln!(err, "{} execution(s) planned", plan.requests.len())?;
    }
    for request in &plan.requests {
        let input: serde_json::Value = serde_json::from_str(request.input.as_str())?;
        let line = json!({
            "pipeline": request.pipeline,
            "name": request.name,
            "group": request.group,
            "input": input,
        });
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// The one-screen summary `check-config` prints for a valid file.
pub fn summary(config: &Config, planner: &Planner) -> String {
    let mut text = String::new();
    text.push_str(&format!("listen: {}\n", config.server.listen));
    text.push_str(&format!(
        "github: {} webhook secret(s)\n",
        config.github.webhook_secrets.len()
    ));
    text.push_str(&format!("queue: {}\n", config.queue.type_name()));
    text.push_str(&format!("executor: {}\n", config.executor.type_name()));
    text.push_str(&planner.to_string());
    text
}

/// For an SQS queue, reads its settings and says what they mean; warns when the queue
/// has no redrive policy (a job that keeps failing would never be dead-lettered).
pub async fn check_queue(config: &Config) -> Result<Vec<String>, CliError> {
    let aws = app::aws_settings(config).await;
    let OpenedQueue::Sqs(queue) = app::open_queue(config, aws.as_ref()).await? else {
        return Ok(Vec::new());
    };
    let facts = queue.facts();
    let mut lines = vec![format!(
        "sqs queue: {}, visibility timeout {} s, messages up to {} bytes",
        if facts.fifo { "FIFO" } else { "standard" },
        facts.visibility_timeout.as_secs(),
        facts.max_message_bytes
    )];
    match &facts.dead_letter {
        Some((url, max_receives)) => lines.push(format!(
            "dead letters: after {max_receives} receives, to {url}"
        )),
        None => lines.push(
            "warning: the queue has no redrive policy, so a job that keeps failing is never dead-lettered; give it one (deploy/aws/gitdispatch.yaml does)"
                .to_string(),
        ),
    }
    Ok(lines)
}

fn format_time(ms: Option<i64>) -> String {
    match ms.and_then(|ms| u64::try_from(ms).ok()) {
        None => "-".to_string(),
        Some(ms) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string(),
    }
}

/// Lists the most recent executions of the local executor, one per line, or as JSON
/// lines.
pub async fn executions(
    config: &Config,
    limit: usize,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let OpenedExecutor::Local(executor) = app::open_executor(config, None).await? else {
        return Err(CliError::WrongBackend(
            "executions lists the local executor's record; with Step Functions, see the state machines' executions (aws stepfunctions list-executions)".to_string(),
        ));
    };
    let records = executor.recent(limit).await?;
    for record in records {
        if json {
            let line = serde_json::json!({
                "name": record.name,
                "planned_name": record.planned_name,
                "attempt": record.attempt,
                "pipeline": record.pipeline,
                "environment": record.environment,
                "action": record.action,
                "status": record.status.as_str(),
                "started_at_ms": record.started_at_ms,
                "ended_at_ms": record.ended_at_ms,
                "exit_code": record.exit_code,
                "error": record.error,
                "log": record.log_path,
                "input": serde_json::from_str::<serde_json::Value>(&record.input)?,
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "{}  {:<11} {:<20} {:<12} started {}  ended {}  log {}{}",
                record.name,
                record.status.as_str(),
                record.pipeline,
                record.environment,
                format_time(Some(record.started_at_ms)),
                format_time(record.ended_at_ms),
                record.log_path,
                record
                    .error
                    .map(|error| format!("  ({error})"))
                    .unwrap_or_default(),
            )?;
        }
    }
    Ok(())
}

/// Lists the dead-lettered jobs of the embedded queue.
async fn embedded_queue(
    config: &Config,
) -> Result<std::sync::Arc<crate::queue::embedded::EmbeddedQueue>, CliError> {
    let aws = app::aws_settings(config).await;
    match app::open_queue(config, aws.as_ref()).await? {
        OpenedQueue::Embedded(queue) => Ok(queue),
        OpenedQueue::Sqs(queue) => Err(CliError::WrongBackend(format!(
            "the SQS queue dead-letters to {}: inspect it there, and redrive with the SQS console or StartMessageMoveTask",
            queue
                .facts()
                .dead_letter
                .as_ref()
                .map_or("no queue (it has no redrive policy)", |(url, _)| url
                    .as_str())
        ))),
    }
}

pub async fn dlq_list(config: &Config, out: &mut dyn Write) -> Result<(), CliError> {
    let queue = embedded_queue(config).await?;
    for dead in queue.dead_letters().await? {
        writeln!(
            out,
            "{}  {}  group {}  received {} times  dead since {}  reason: {}",
            dead.seq,
            dead.message.id,
            dead.message.group.as_deref().unwrap_or("-"),
            dead.receive_count,
            format_time(Some(dead.dead_at_ms)),
            dead.reason,
        )?;
    }
    Ok(())
}

/// Moves dead-lettered jobs (all, or the numbered ones) back onto the queue.
pub async fn dlq_redrive(config: &Config, seqs: Option<Vec<i64>>) -> Result<usize, CliError> {
    let queue = embedded_queue(config).await?;
    Ok(queue.redrive(seqs).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(format_time(Some(0)), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(Some(1_795_420_800_000)), "2026-11-23T08:00:00Z");
        assert_eq!(format_time(None), "-");
    }
}
