//! What calls a running daemon's API: `trigger`, `send`, and the operator commands
//! (`deliveries`, `lanes`, `pause`, `resume`, `replay`).

use super::local::read_payload;
use super::*;

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
    let queued: crate::operator::Queued = serde_json::from_value(answer).map_err(|error| {
        CliError::Usage(format!(
            "the daemon's answer to a trigger is not one this release reads: {error}"
        ))
    })?;
    let name = queued.execution;
    writeln!(out, "queued {name}")?;
    let Some(wait) = args.wait else {
        return Ok(true);
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = String::new();
    loop {
        let (status, execution) =
            call(&url, client.get(format!("{url}/{name}")).bearer_auth(token)).await?;
        if status.is_success()
            && let Ok(execution) =
                serde_json::from_value::<crate::operator::ExecutionView>(execution)
        {
            if execution.status != last {
                writeln!(out, "{} {name}", execution.status)?;
                last = execution.status.clone();
            }
            if execution.finished {
                return Ok(execution.status == "succeeded");
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
    let typed = |error: serde_json::Error| {
        CliError::Usage(format!(
            "the daemon answered {path} with what this release does not read: {error}"
        ))
    };
    match command {
        Operate::Deliveries { .. } => {
            let answer: crate::operator::Deliveries =
                serde_json::from_value(answer).map_err(typed)?;
            for delivery in answer.deliveries {
                writeln!(
                    out,
                    "{}  {} {} {} {}  {} {}  {}",
                    delivery.id,
                    delivery.source,
                    delivery.event,
                    delivery.repository,
                    delivery.git_ref,
                    delivery.status,
                    delivery.outcome,
                    delivery.executions.join(","),
                )?;
            }
        }
        Operate::Lanes => {
            let answer: crate::operator::Lanes = serde_json::from_value(answer).map_err(typed)?;
            for lane in answer.lanes {
                writeln!(
                    out,
                    "{}/{}  {}{}  waiting {}  running {}",
                    lane.pipeline,
                    lane.environment,
                    lane.state.as_str(),
                    lane.paused
                        .map(|pause| format!(" ({})", pause.reason))
                        .unwrap_or_default(),
                    lane.waiting.count,
                    lane.running.len(),
                )?;
            }
        }
        Operate::Pause { .. } | Operate::Resume { .. } => {
            let answer: crate::operator::LaneChanged =
                serde_json::from_value(answer).map_err(typed)?;
            writeln!(
                out,
                "{}/{} {}",
                answer.pipeline,
                answer.environment,
                answer.state.as_str()
            )?;
        }
        Operate::Replay { dry_run, .. } => {
            let answer: crate::operator::Replays = serde_json::from_value(answer).map_err(typed)?;
            for replay in answer.replays {
                writeln!(
                    out,
                    "{} {} (replay {} of {})",
                    if dry_run { "would queue" } else { "queued" },
                    replay.name,
                    replay.replay,
                    replay.original,
                )?;
            }
            for skipped in answer.skipped {
                writeln!(
                    out,
                    "skipped {} (a newer deploy carries it: {})",
                    skipped.original, skipped.deployed_since_by,
                )?;
            }
        }
    }
    Ok(())
}
