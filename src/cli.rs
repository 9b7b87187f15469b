//! The one-shot commands: `plan`, `check-config`, `send`, `executions`, `dlq`,
//! `redeliver`, `reconcile`, `trigger`.

use std::io::Write;
use std::path::Path;

use secrecy::ExposeSecret;
use serde_json::json;

use crate::app::{self, AppError, OpenedExecutor, OpenedQueue};
use crate::config::Config;
use crate::event::{DeliveryId, ParseError};
use crate::executor::ExecutorError;
use crate::plan::{PlanError, Planner};
use crate::queue::QueueError;
use crate::source::SourceError;
use crate::source::github::{self, Decoded};

/// Why a one-shot command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read payload file {path}")]
    ReadPayload {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Delivery(#[from] ParseError),
    #[error("cannot decode {path}")]
    Decode {
        path: std::path::PathBuf,
        #[source]
        source: SourceError,
    },
    #[error("{0} is not an event that plans executions")]
    NotAnEvent(&'static str),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot write the output")]
    Output(#[from] std::io::Error),
    #[error("a planned input is not JSON")]
    Input(#[from] serde_json::Error),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    #[error("github.webhook_secrets is empty: there is no secret to sign with")]
    NoSecret,
    #[error("cannot POST to {url}")]
    Send {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{0}")]
    WrongBackend(String),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    GithubSetup(#[from] crate::github::SetupError),
    #[error("GitHub refused")]
    Github(#[from] crate::github::CallError),
    #[error("reconcile failed")]
    Reconcile(#[from] crate::reconcile::ReconcileError),
}

/// `reconcile`: plans what GitHub never delivered (with `dry_run`, prints what it
/// would plan), one line per commit.
pub async fn reconcile(
    compiled: app::Compiled,
    dry_run: bool,
    repository: Option<&str>,
    out: &mut impl Write,
) -> Result<(), CliError> {
    if compiled.config.github.reconcile.is_none() {
        return Err(CliError::Usage(
            "[github.reconcile] is not configured: name the repositories to reconcile".into(),
        ));
    }
    let only = repository
        .map(crate::pattern::compile_repository_glob)
        .transpose()
        .map_err(|message| CliError::Usage(format!("--repository: {message}")))?;
    let app = app::App::build(compiled, false).await?;
    let Some(reconciler) = app.reconciler() else {
        return Err(CliError::Usage(
            "reconcile needs github.token or a GitHub App to call GitHub".into(),
        ));
    };
    let lines = reconciler.run(only.as_ref(), dry_run).await?;
    for line in &lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `redeliver`: asks GitHub to redeliver what never got through since `since` ago, and
/// prints one line per delivery (what it would do, with `dry_run`).
pub async fn redeliver(
    config: &Config,
    since: std::time::Duration,
    dry_run: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let Some(redeliver) = &config.github.redeliver else {
        return Err(CliError::Usage(
            "[github.redeliver] names no hooks: list the webhooks whose deliveries to look at"
                .into(),
        ));
    };
    if since.as_secs() > crate::config::MAX_LOOK_BACK_SECS {
        return Err(CliError::Usage(
            "--since goes further back than GitHub keeps deliveries (3 days)".into(),
        ));
    }
    let Some(client) = crate::github::GithubClient::from_config(&config.github)? else {
        return Err(CliError::Usage(
            "redeliver needs github.token or a GitHub App to call GitHub".into(),
        ));
    };
    let from = std::time::SystemTime::now() - since;
    let found = crate::source::github::redeliver::redeliver_failed(
        &client,
        &redeliver.hooks,
        from,
        dry_run,
    )
    .await?;
    for redelivery in &found {
        writeln!(out, "{redelivery}")?;
    }
    eprintln!(
        "{} deliveries {} since {}",
        found.len(),
        if dry_run {
            "to redeliver"
        } else {
            "redelivered"
        },
        humantime::format_rfc3339_seconds(from)
    );
    Ok(())
}

fn read_payload(payload: &Path) -> Result<Vec<u8>, CliError> {
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

/// Signs a payload file with the first configured GitHub secret and POSTs it, the way
/// GitHub would. Returns the response status and body.
/// The listener's base URL from `[server] listen` (a wildcard address as localhost).
fn local_base_url(config: &Config) -> String {
    let mut address = config.server.listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{address}")
}

/// The daemon's base URL: `url`, or `[server] listen`.
fn base_url(config: &Config, url: Option<&str>) -> String {
    url.map(str::to_string)
        .unwrap_or_else(|| local_base_url(config))
        .trim_end_matches('/')
        .to_string()
}

/// Sends one request to the daemon's API: the status, and the answer as JSON (null
/// when it is not).
async fn call(
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, serde_json::Value), CliError> {
    let response = request.send().await.map_err(|source| CliError::Send {
        url: url.to_string(),
        source,
    })?;
    let status = response.status();
    let answer =
        serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or_default();
    Ok((status, answer))
}

/// An API answer that is not a success, as the command's error.
fn refused(status: reqwest::StatusCode, answer: &serde_json::Value) -> CliError {
    CliError::Usage(format!(
        "the API answered {status}: {}",
        answer["error"].as_str().unwrap_or("no reason given")
    ))
}

/// `reload`: asks the running daemon to reload its configuration (`POST /v1/reload`,
/// the token from `GITDISPATCH_TOKEN`); SIGHUP does the same without the API.
pub async fn reload(
    config: &Config,
    url: Option<&str>,
    token: &str,
    out: &mut impl Write,
) -> Result<bool, CliError> {
    let url = format!("{}/v1/reload", base_url(config, url));
    let (status, answer) = call(&url, reqwest::Client::new().post(&url).bearer_auth(token)).await?;
    let success = status.is_success();
    if success {
        writeln!(out, "{}", answer["status"].as_str().unwrap_or("reloaded"))?;
    } else {
        writeln!(
            out,
            "refused: {}",
            answer["error"].as_str().unwrap_or("no reason given")
        )?;
    }
    Ok(success)
}

/// `health`: whether the daemon at `url` (default: `[server] listen`) is ready —
/// `GET /readyz` answers 200. For a container's `HEALTHCHECK` and for scripts.
pub async fn health(config: &Config, url: Option<&str>) -> Result<bool, CliError> {
    let url = format!("{}/readyz", base_url(config, url));
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|source| CliError::Send {
            url: url.clone(),
            source,
        })?
        .get(&url)
        .send()
        .await
        .map_err(|source| CliError::Send {
            url: url.clone(),
            source,
        })?;
    let ready = response.status().is_success();
    if !ready {
        eprintln!("{url} answered {}", response.status());
    }
    Ok(ready)
}

/// What `trigger` asks for.
#[derive(Debug, Clone)]
pub struct TriggerArgs {
    pub pipeline: String,
    pub environment: String,
    /// `project=branch`.
    pub branches: Vec<String>,
    /// Components to skip: `console_v1` sets `skip_console_v1`.
    pub skips: Vec<String>,
    pub commit: Option<String>,
    pub idempotency_key: Option<String>,
    /// The listener's base URL; `[server] listen` when absent.
    pub url: Option<String>,
    /// Follow the execution to its end, for at most this long.
    pub wait: Option<std::time::Duration>,
}

/// `trigger`: asks the API for a run (the token from `GITDISPATCH_TOKEN`) and, with
/// `wait`, follows it to its end. Returns whether it succeeded (or was queued).
pub async fn trigger(
    config: &Config,
    args: &TriggerArgs,
    token: &str,
    out: &mut impl Write,
) -> Result<bool, CliError> {
    let mut body = serde_json::Map::new();
    body.insert("pipeline".into(), json!(args.pipeline));
    body.insert("environment".into(), json!(args.environment));
    let mut overrides = Vec::new();
    for branch in &args.branches {
        let Some((project, name)) = branch.split_once('=') else {
            return Err(CliError::Usage(format!(
                "--branch {branch:?} is not project=branch"
            )));
        };
        overrides.push(json!({"project": project, "branch": name}));
    }
    body.insert("override_branches".into(), json!(overrides));
    for skip in &args.skips {
        let flag = if skip.starts_with("skip_") {
            skip.clone()
        } else {
            format!("skip_{skip}")
        };
        body.insert(flag, json!(true));
    }
    if let Some(commit) = &args.commit {
        body.insert("commit".into(), json!(commit));
    }
    let url = format!("{}/v1/executions", base_url(config, args.url.as_deref()));
    let client = reqwest::Client::new();
    let mut request = client
        .post(&url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(serde_json::Value::Object(body).to_string());
    if let Some(key) = &args.idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let (status, answer) = call(&url, request).await?;
    if status.as_u16() != 202 {
        return Err(refused(status, &answer));
    }
    let name = answer["execution"].as_str().unwrap_or_default().to_string();
    writeln!(out, "queued {name}")?;
    let Some(wait) = args.wait else {
        return Ok(true);
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = String::new();
    loop {
        let (status, execution) =
            call(&url, client.get(format!("{url}/{name}")).bearer_auth(token)).await?;
        if status.is_success() {
            let shown = execution["status"]
                .as_str()
                .unwrap_or("unknown")
                .to_string();
            if shown != last {
                writeln!(out, "{shown} {name}")?;
                last = shown.clone();
            }
            if execution["finished"].as_bool() == Some(true) {
                return Ok(shown == "succeeded");
            }
        }
        if tokio::time::Instant::now() >= deadline {
            writeln!(out, "still not finished after {} s: {name}", wait.as_secs())?;
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

pub async fn send(
    config: &Config,
    event: EventArg,
    payload: &Path,
    url: Option<&str>,
    delivery: Option<&str>,
) -> Result<(u16, String), CliError> {
    let body = read_payload(payload)?;
    let Some(secret) = config.github.webhook_secrets.first() else {
        return Err(CliError::NoSecret);
    };
    let signature = github::sign(secret.secret().expose_secret().as_bytes(), &body);
    let url = match url {
        Some(url) => url.to_string(),
        None => format!("{}/webhooks/github", local_base_url(config)),
    };
    let delivery = delivery.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/gitdispatch-send")
        .header("x-github-event", event.as_str())
        .header("x-github-delivery", &delivery)
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .map_err(|source| CliError::Send {
            url: url.clone(),
            source,
        })?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Ok((status, text))
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

/// What the operator commands (`deliveries`, `lanes`, `pause`, `resume`, `replay`)
/// ask of the running daemon's API.
pub enum Operate {
    Deliveries {
        repository: Option<String>,
        since: Option<std::time::Duration>,
        limit: usize,
    },
    Lanes,
    Pause {
        pipeline: String,
        environment: String,
        reason: String,
    },
    Resume {
        pipeline: String,
        environment: String,
    },
    Replay {
        pipeline: String,
        environment: Option<String>,
        since: std::time::Duration,
        until: Option<std::time::Duration>,
        failed_only: bool,
        dry_run: bool,
    },
}

fn ago(duration: std::time::Duration) -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now() - duration).to_string()
}

fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>()
}

/// Runs an operator command against the API (the token from `GITDISPATCH_TOKEN`) and
/// prints what it answers, a line per item.
pub async fn operate(
    config: &Config,
    url: Option<&str>,
    token: &str,
    command: Operate,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let base = base_url(config, url);
    let client = reqwest::Client::new();
    let (request, path) = match &command {
        Operate::Deliveries {
            repository,
            since,
            limit,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            if let Some(repository) = repository {
                query.append_pair("repository", repository);
            }
            if let Some(since) = since {
                query.append_pair("since", &ago(*since));
            }
            let path = format!("/v1/deliveries?{}", query.finish());
            (client.get(format!("{base}{path}")), path)
        }
        Operate::Lanes => (client.get(format!("{base}/v1/lanes")), "/v1/lanes".into()),
        Operate::Pause {
            pipeline,
            environment,
            reason,
        } => {
            let path = format!(
                "/v1/lanes/{}/{}/pause",
                segment(pipeline),
                segment(environment)
            );
            (
                client
                    .post(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .body(json!({"reason": reason}).to_string()),
                path,
            )
        }
        Operate::Resume {
            pipeline,
            environment,
        } => {
            let path = format!(
                "/v1/lanes/{}/{}/resume",
                segment(pipeline),
                segment(environment)
            );
            (client.post(format!("{base}{path}")), path)
        }
        Operate::Replay {
            pipeline,
            environment,
            since,
            until,
            failed_only,
            dry_run,
        } => {
            let body = json!({
                "pipeline": pipeline,
                "environment": environment,
                "since": ago(*since),
                "until": until.map(ago),
                "failed_only": failed_only,
                "dry_run": dry_run,
            });
            (
                client
                    .post(format!("{base}/v1/replays"))
                    .header("content-type", "application/json")
                    .body(body.to_string()),
                "/v1/replays".into(),
            )
        }
    };
    let (status, answer) = call(&format!("{base}{path}"), request.bearer_auth(token)).await?;
    if !status.is_success() {
        return Err(refused(status, &answer));
    }
    let empty = Vec::new();
    match command {
        Operate::Deliveries { .. } => {
            for delivery in answer["deliveries"].as_array().unwrap_or(&empty) {
                writeln!(
                    out,
                    "{}  {} {} {} {}  {} {}  {}",
                    delivery["id"].as_str().unwrap_or_default(),
                    delivery["source"].as_str().unwrap_or_default(),
                    delivery["event"].as_str().unwrap_or_default(),
                    delivery["repository"].as_str().unwrap_or_default(),
                    delivery["ref"].as_str().unwrap_or_default(),
                    delivery["status"],
                    delivery["outcome"].as_str().unwrap_or_default(),
                    delivery["executions"]
                        .as_array()
                        .unwrap_or(&empty)
                        .iter()
                        .filter_map(|name| name.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                )?;
            }
        }
        Operate::Lanes => {
            for lane in answer["lanes"].as_array().unwrap_or(&empty) {
                writeln!(
                    out,
                    "{}/{}  {}{}  waiting {}  running {}",
                    lane["pipeline"].as_str().unwrap_or_default(),
                    lane["environment"].as_str().unwrap_or_default(),
                    lane["state"].as_str().unwrap_or_default(),
                    lane["paused"]["reason"]
                        .as_str()
                        .map(|reason| format!(" ({reason})"))
                        .unwrap_or_default(),
                    lane["waiting"]["count"],
                    lane["running"].as_array().map_or(0, Vec::len),
                )?;
            }
        }
        Operate::Pause { .. } | Operate::Resume { .. } => {
            writeln!(
                out,
                "{}/{} {}",
                answer["pipeline"].as_str().unwrap_or_default(),
                answer["environment"].as_str().unwrap_or_default(),
                answer["state"].as_str().unwrap_or_default()
            )?;
        }
        Operate::Replay { dry_run, .. } => {
            for replay in answer["replays"].as_array().unwrap_or(&empty) {
                writeln!(
                    out,
                    "{} {} (replay {} of {})",
                    if dry_run { "would queue" } else { "queued" },
                    replay["name"].as_str().unwrap_or_default(),
                    replay["replay"],
                    replay["original"].as_str().unwrap_or_default(),
                )?;
            }
        }
    }
    Ok(())
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
