//! The `gitdispatch` command line: parses arguments, loads the configuration, starts
//! telemetry and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gitdispatch::app::Compiled;
use gitdispatch::cli::{self, EventArg};
use gitdispatch::daemon::Role;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "gitdispatch",
    version,
    about = "Turns Git events into pipeline executions"
)]
struct Args {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "GITDISPATCH_CONFIG",
        default_value = "config/gitdispatch.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the webhook listener and the worker in one process.
    Serve,
    /// Run only the webhook listener (jobs go to the configured queue).
    Listen,
    /// Run only the worker (drains the configured queue).
    Work,
    /// List recent executions of the local executor.
    Executions {
        /// How many, newest first.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One JSON object per line, with the input.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and redrive dead-lettered jobs of the embedded queue.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Validate the configuration and print a summary of its pipelines and routes.
    CheckConfig,
    /// Print, as JSON lines, the executions an event payload would produce.
    Plan {
        /// The payload's event type (GitHub's X-GitHub-Event).
        #[arg(long, value_enum)]
        event: EventArg,
        /// A webhook payload file (JSON).
        #[arg(long)]
        payload: PathBuf,
        /// The delivery id execution names are derived from.
        #[arg(long, default_value = "local-plan")]
        delivery: String,
        /// Say on stderr, route by route, which condition matched or failed.
        #[arg(long)]
        explain: bool,
    },
    /// Ask GitHub to redeliver the deliveries of `[github.redeliver]`'s hooks that never
    /// got through (no answer, a 5xx or a 429, and no later attempt that did).
    Redeliver {
        /// How far back to look (GitHub keeps deliveries 3 days), e.g. 2h, 90m, 3d.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        since: std::time::Duration,
        /// Print what would be redelivered, one line per delivery, and ask for nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Ask the API for a run of a pipeline (the token from GITDISPATCH_TOKEN), e.g. a
    /// hotfix of one project to acceptance.
    Trigger {
        #[arg(long)]
        pipeline: String,
        #[arg(long)]
        environment: String,
        /// A project's branch to deploy, project=branch; repeatable.
        #[arg(long = "branch", value_name = "PROJECT=BRANCH")]
        branches: Vec<String>,
        /// A component to skip (console_v1 sets skip_console_v1); repeatable.
        #[arg(long = "skip", value_name = "COMPONENT")]
        skips: Vec<String>,
        /// The commit to deploy.
        #[arg(long)]
        commit: Option<String>,
        /// Makes a retry of this command name the same execution.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// The listener's base URL (default: from [server] listen).
        #[arg(long)]
        url: Option<String>,
        /// Follow the execution to its end; exit non-zero unless it succeeded.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits at most.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Exit 0 when the daemon is ready (GET /readyz answers 200): for a container's
    /// HEALTHCHECK and for scripts.
    Health {
        /// The daemon's base URL (default: from [server] listen; for a `work`-only
        /// process, its [worker] metrics_listen).
        #[arg(long)]
        url: Option<String>,
    },
    /// Ask the running daemon to reload its configuration (POST /v1/reload, the token
    /// from GITDISPATCH_TOKEN); `kill -HUP <pid>` does the same.
    Reload {
        /// The listener's base URL (default: from [server] listen).
        #[arg(long)]
        url: Option<String>,
    },
    /// List the deliveries the journal keeps, newest first: what was answered and
    /// the executions planned (the API's GET /v1/deliveries; token from GITDISPATCH_TOKEN).
    Deliveries {
        #[arg(long)]
        repository: Option<String>,
        /// How far back, e.g. 2h, 90m, 3d.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, env = "GITDISPATCH_URL")]
        url: Option<String>,
    },
    /// Show every lane (pipeline and environment): paused or not, what runs, what waits.
    Lanes {
        #[arg(long, env = "GITDISPATCH_URL")]
        url: Option<String>,
    },
    /// Pause a lane: it starts nothing until resumed; its jobs wait, none is lost.
    Pause {
        #[arg(long)]
        pipeline: String,
        #[arg(long)]
        environment: String,
        /// Why: recorded and shown.
        #[arg(long)]
        reason: String,
        #[arg(long, env = "GITDISPATCH_URL")]
        url: Option<String>,
    },
    /// Resume a paused lane: its waiting jobs start in order.
    Resume {
        #[arg(long)]
        pipeline: String,
        #[arg(long)]
        environment: String,
        #[arg(long, env = "GITDISPATCH_URL")]
        url: Option<String>,
    },
    /// Run again, as new attempts through the queue, the executions of a time window.
    Replay {
        #[arg(long)]
        pipeline: String,
        #[arg(long)]
        environment: Option<String>,
        /// From how long ago, e.g. 2h.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: std::time::Duration,
        /// Up to how long ago (default: now).
        #[arg(long, value_parser = humantime::parse_duration)]
        until: Option<std::time::Duration>,
        /// Only the executions that failed, timed out or were aborted.
        #[arg(long)]
        failed_only: bool,
        /// Print what would be replayed, and queue nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, env = "GITDISPATCH_URL")]
        url: Option<String>,
    },
    /// Compare each watched branch's head on GitHub with the last commit planned for it
    /// (`[github.reconcile]`), and plan the commits GitHub never delivered.
    Reconcile {
        /// Print what would be planned, one line per commit, and plan nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only the configured repositories this glob matches.
        #[arg(long)]
        repository: Option<String>,
    },
    /// Sign a payload file with the configured secret and POST it to the listener.
    Send {
        #[arg(long, value_enum)]
        event: EventArg,
        #[arg(long)]
        payload: PathBuf,
        /// Defaults to the configured listen address.
        #[arg(long)]
        url: Option<String>,
        /// Defaults to a new random id.
        #[arg(long)]
        delivery: Option<String>,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List the dead-lettered jobs with the reason each was dead-lettered.
    List,
    /// Put dead-lettered jobs back on the queue with a fresh receive count.
    Redrive {
        /// The numbers `dlq list` shows; every dead letter when none is given.
        seqs: Vec<i64>,
    },
}

fn load(path: &std::path::Path) -> Result<Compiled, ExitCode> {
    gitdispatch::app::load(path).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let compiled = match load(&args.config) {
        Ok(compiled) => compiled,
        Err(code) => return code,
    };
    args.command.run(compiled, &args.config)
}

impl Command {
    /// Runs the command: one function each.
    fn run(self, compiled: Compiled, path: &std::path::Path) -> ExitCode {
        let config = &compiled.config;
        match self {
            Command::CheckConfig => check_config(&compiled, path),
            Command::Plan {
                event,
                payload,
                delivery,
                explain,
            } => finish(cli::plan(
                &compiled.planner,
                event,
                &payload,
                &delivery,
                explain,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            )),
            Command::Send {
                event,
                payload,
                url,
                delivery,
            } => send(config, event, &payload, url, delivery),
            Command::Serve => serve(compiled, Role::Serve, path),
            Command::Listen => serve(compiled, Role::Listen, path),
            Command::Work => serve(compiled, Role::Work, path),
            Command::Health { url } => {
                succeeded(runtime().block_on(cli::health(config, url.as_deref())))
            }
            Command::Deliveries {
                repository,
                since,
                limit,
                url,
            } => operate(
                config,
                url,
                cli::Operate::Deliveries {
                    repository,
                    since,
                    limit,
                },
            ),
            Command::Lanes { url } => operate(config, url, cli::Operate::Lanes),
            Command::Pause {
                pipeline,
                environment,
                reason,
                url,
            } => operate(
                config,
                url,
                cli::Operate::Pause {
                    pipeline,
                    environment,
                    reason,
                },
            ),
            Command::Resume {
                pipeline,
                environment,
                url,
            } => operate(
                config,
                url,
                cli::Operate::Resume {
                    pipeline,
                    environment,
                },
            ),
            Command::Replay {
                pipeline,
                environment,
                since,
                until,
                failed_only,
                dry_run,
                url,
            } => operate(
                config,
                url,
                cli::Operate::Replay {
                    pipeline,
                    environment,
                    since,
                    until,
                    failed_only,
                    dry_run,
                },
            ),
            Command::Reload { url } => reload(config, url),
            Command::Trigger {
                pipeline,
                environment,
                branches,
                skips,
                commit,
                idempotency_key,
                url,
                wait,
                timeout,
            } => trigger(
                config,
                cli::TriggerArgs {
                    pipeline,
                    environment,
                    branches,
                    skips,
                    commit,
                    idempotency_key,
                    url,
                    wait: wait.then_some(timeout),
                },
            ),
            Command::Reconcile {
                dry_run,
                repository,
            } => {
                gitdispatch::telemetry::init();
                finish(runtime().block_on(cli::reconcile(
                    compiled,
                    dry_run,
                    repository.as_deref(),
                    &mut std::io::stdout().lock(),
                )))
            }
            Command::Redeliver { since, dry_run } => finish(runtime().block_on(cli::redeliver(
                config,
                since,
                dry_run,
                &mut std::io::stdout().lock(),
            ))),
            Command::Executions { limit, json } => finish(runtime().block_on(cli::executions(
                config,
                limit,
                json,
                &mut std::io::stdout().lock(),
            ))),
            Command::Dlq { command } => dlq(config, command),
        }
    }
}

/// `check-config`: the file is valid; what it configures, and whether its queue answers.
fn check_config(compiled: &Compiled, path: &std::path::Path) -> ExitCode {
    let config = &compiled.config;
    println!("{} is valid", path.display());
    if let Some(warning) = config.exposed_secrets(path) {
        println!("warning: {warning}");
    }
    for deprecation in config.deprecations() {
        println!("warning: {deprecation}");
    }
    print!("{}", cli::summary(config, &compiled.planner));
    match runtime().block_on(cli::check_queue(config)) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => finish(Err(error)),
    }
}

/// `send`: a signed payload to the listener; succeeds on a 2xx.
fn send(
    config: &gitdispatch::config::Config,
    event: EventArg,
    payload: &std::path::Path,
    url: Option<String>,
    delivery: Option<String>,
) -> ExitCode {
    match runtime().block_on(cli::send(
        config,
        event,
        payload,
        url.as_deref(),
        delivery.as_deref(),
    )) {
        Ok((status, body)) => {
            println!("{status} {body}");
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => finish(Err(error)),
    }
}

/// `serve`, `listen`, `work`: the daemon, until a signal stops it.
fn serve(compiled: Compiled, role: Role, path: &std::path::Path) -> ExitCode {
    gitdispatch::telemetry::init();
    if let Some(warning) = compiled.config.exposed_secrets(path) {
        tracing::warn!("{warning}");
    }
    for deprecation in compiled.config.deprecations() {
        tracing::warn!("{deprecation}");
    }
    let path = path.to_path_buf();
    finish(runtime().block_on(async {
        let shutdown = CancellationToken::new();
        gitdispatch::daemon::spawn_signal_handler(shutdown.clone());
        gitdispatch::daemon::run(compiled, role, shutdown, Some(path)).await
    }))
}

/// `reload`: asks the daemon to reload; succeeds when it took the file.
fn reload(config: &gitdispatch::config::Config, url: Option<String>) -> ExitCode {
    let Some(token) = api_token() else {
        return ExitCode::from(2);
    };
    succeeded(runtime().block_on(cli::reload(
        config,
        url.as_deref(),
        &token,
        &mut std::io::stdout().lock(),
    )))
}

/// `trigger`: a run through the API; with `--wait`, succeeds when the run did.
fn trigger(config: &gitdispatch::config::Config, args: cli::TriggerArgs) -> ExitCode {
    let Some(token) = api_token() else {
        return ExitCode::from(2);
    };
    succeeded(runtime().block_on(cli::trigger(
        config,
        &args,
        &token,
        &mut std::io::stdout().lock(),
    )))
}

/// `dlq list` and `dlq redrive`, on the embedded queue.
fn dlq(config: &gitdispatch::config::Config, command: DlqCommand) -> ExitCode {
    finish(runtime().block_on(async {
        match command {
            DlqCommand::List => cli::dlq_list(config, &mut std::io::stdout().lock()).await,
            DlqCommand::Redrive { seqs } => {
                let seqs = (!seqs.is_empty()).then_some(seqs);
                let moved = cli::dlq_redrive(config, seqs).await?;
                println!("{moved} job(s) put back on the queue");
                Ok(())
            }
        }
    }))
}

/// A command that says yes (exit 0) or no (exit 1), or fails.
fn succeeded<E: Into<anyhow::Error>>(result: Result<bool, E>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => finish(Err(error)),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

fn finish<E: Into<anyhow::Error>>(result: Result<(), E>) -> ExitCode {
    let result = result.map_err(Into::into);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an operator command against the daemon's API.
fn operate(
    config: &gitdispatch::config::Config,
    url: Option<String>,
    command: cli::Operate,
) -> ExitCode {
    let Some(token) = api_token() else {
        return ExitCode::from(2);
    };
    finish(runtime().block_on(cli::operate(
        config,
        url.as_deref(),
        &token,
        command,
        &mut std::io::stdout().lock(),
    )))
}

/// The API token the commands that call the daemon send (`GITDISPATCH_TOKEN`); when it
/// is not set, says so.
fn api_token() -> Option<String> {
    let token = std::env::var("GITDISPATCH_TOKEN").ok();
    if token.is_none() {
        eprintln!("error: GITDISPATCH_TOKEN is not set: it holds one of [api] tokens");
    }
    token
}
