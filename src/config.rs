//! The TOML configuration: its model, `${ENV}` interpolation and validation.
//!
//! Loading happens in three passes so that a user sees as many problems as possible at
//! once, each with its key path: (1) TOML syntax, (2) `${ENV}` interpolation over every
//! string (every missing variable is reported), (3) typed decoding (unknown keys are
//! refused) followed by semantic validation, which reports every problem it finds.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::event::Source;
use crate::plan::Planner;

/// One problem found in a configuration file, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, such as `routes[2].branches[0]`.
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path} has {} problem(s):\n{}", problems.len(), Problems(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub github: GithubConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub executor: ExecutorConfig,
    #[serde(default)]
    pub pipelines: Vec<PipelineConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Larger bodies are refused with 413. GitHub never sends more than 25 MiB.
    pub max_body_bytes: usize,
    /// A request that takes longer is answered 408. GitHub gives up after 10 s.
    pub request_timeout_secs: u64,
    pub rate_limit: RateLimitConfig,
    /// Peers whose `X-Forwarded-For` header is believed (load balancers, proxies).
    pub trusted_proxies: Vec<String>,
    /// When not empty, requests from other client addresses are refused with 403.
    pub allowed_networks: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 25 * 1024 * 1024,
            request_timeout_secs: 10,
            rate_limit: RateLimitConfig::default(),
            trusted_proxies: Vec::new(),
            allowed_networks: Vec::new(),
        }
    }
}

impl ServerConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// Per-client-address request rate limit (`[server.rate_limit]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per second from one address.
    pub per_second: u32,
    /// Requests one address may make at once before the sustained rate applies.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_second: 50,
            burst: 200,
        }
    }
}

/// `[github]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// Several secrets are accepted at once so one can be rotated without downtime.
    #[serde(default)]
    pub webhook_secrets: Vec<WebhookSecretConfig>,
    /// API token, for the parts that call GitHub back.
    #[serde(default)]
    pub token: Option<SecretString>,
}

/// One webhook secret, optionally limited to some repositories.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum WebhookSecretConfig {
    Plain(SecretString),
    Scoped(ScopedSecretConfig),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedSecretConfig {
    pub secret: SecretString,
    /// Repository globs this secret may speak for (DESIGN invariant 9).
    pub repositories: Vec<String>,
}

impl WebhookSecretConfig {
    pub fn secret(&self) -> &SecretString {
        match self {
            WebhookSecretConfig::Plain(secret) => secret,
            WebhookSecretConfig::Scoped(scoped) => &scoped.secret,
        }
    }

    /// `None` when the secret speaks for every repository.
    pub fn repositories(&self) -> Option<&[String]> {
        match self {
            WebhookSecretConfig::Plain(_) => None,
            WebhookSecretConfig::Scoped(scoped) => Some(&scoped.repositories),
        }
    }
}

/// `[queue]`: where jobs wait between the listener and the worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum QueueConfig {
    Embedded {
        #[serde(default = "default_queue_path")]
        path: PathBuf,
        /// A received job not acknowledged within this time is handed out again.
        #[serde(default = "default_visibility_timeout")]
        visibility_timeout_secs: u64,
        /// A job received this many times without success is dead-lettered.
        #[serde(default = "default_max_receives")]
        max_receives: u32,
    },
    /// Amazon SQS; the visibility timeout and dead-lettering are the queue's own
    /// settings (its `VisibilityTimeout` and redrive policy). Region, credentials and
    /// endpoint come from the usual AWS settings (`AWS_REGION`, `AWS_ENDPOINT_URL`, …).
    Sqs {
        /// The queue URL; a FIFO queue's ends in `.fifo`.
        url: String,
    },
}

fn default_queue_path() -> PathBuf {
    PathBuf::from("var/gitdispatch.db")
}

fn default_visibility_timeout() -> u64 {
    30
}

fn default_max_receives() -> u32 {
    5
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig::Embedded {
            path: default_queue_path(),
            visibility_timeout_secs: default_visibility_timeout(),
            max_receives: default_max_receives(),
        }
    }
}

impl QueueConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            QueueConfig::Embedded { .. } => "embedded",
            QueueConfig::Sqs { url } if url.ends_with(".fifo") => "sqs (FIFO)",
            QueueConfig::Sqs { .. } => "sqs (standard)",
        }
    }
}

/// `[worker]`: how jobs are drained.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Jobs in progress at once in one worker process.
    pub concurrency: usize,
    /// Jobs asked for per receive (SQS hands out at most 10).
    pub batch_size: usize,
    /// How long one receive waits for jobs (SQS long polling: at most 20).
    pub receive_wait_secs: u64,
    /// Executions started per second, sustained. The default keeps one worker under
    /// Step Functions' smallest StartExecution refill rate (150/s); split the quota
    /// between workers when running several.
    pub starts_per_second: u32,
    /// Starts allowed at once above the sustained rate.
    pub start_burst: u32,
    /// How often a serial pipeline's running execution is looked at.
    pub poll_interval_secs: u64,
    /// Backoff before the first retry; doubles with each receive.
    pub retry_initial_ms: u64,
    pub retry_max_secs: u64,
    /// On shutdown, how long jobs in progress may finish before they are released.
    pub shutdown_grace_secs: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 16,
            batch_size: 10,
            receive_wait_secs: 20,
            starts_per_second: 100,
            start_burst: 200,
            poll_interval_secs: 2,
            retry_initial_ms: 1000,
            retry_max_secs: 300,
            shutdown_grace_secs: 30,
        }
    }
}

/// `[executor]`: what runs a pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ExecutorConfig {
    Local {
        /// Where each execution's output is written, one file per execution name.
        #[serde(default = "default_log_dir")]
        log_dir: PathBuf,
        /// The SQLite file recording executions.
        #[serde(default = "default_executions_path")]
        path: PathBuf,
        /// How often an execution is run in all when our own shutdown or a crash keeps
        /// interrupting it; then its job is dead-lettered.
        #[serde(default = "default_max_attempts")]
        max_attempts: u32,
    },
    /// AWS Step Functions: each pipeline's `state_machine_arn` (standard workflows).
    Stepfunctions {},
}

fn default_log_dir() -> PathBuf {
    PathBuf::from("var/log")
}

fn default_executions_path() -> PathBuf {
    PathBuf::from("var/executions.db")
}

fn default_max_attempts() -> u32 {
    3
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig::Local {
            log_dir: default_log_dir(),
            path: default_executions_path(),
            max_attempts: default_max_attempts(),
        }
    }
}

impl ExecutorConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            ExecutorConfig::Local { .. } => "local",
            ExecutorConfig::Stepfunctions {} => "stepfunctions",
        }
    }
}

/// How executions of one pipeline for one environment relate to each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// Every execution starts as soon as its job is received.
    #[default]
    Parallel,
    /// One execution per pipeline and environment at a time, in commit order.
    Serial,
}

/// `[[pipelines]]`: something that executes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub name: String,
    #[serde(default)]
    pub state_machine_arn: Option<String>,
    /// Program and arguments the local executor runs; the input comes on stdin.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub concurrency: Concurrency,
    /// The local executor stops an execution that runs longer.
    #[serde(default = "default_pipeline_timeout")]
    pub timeout_secs: u64,
    /// Replaces the default input shape; keys ending in `.$` take a JSONPath into it.
    #[serde(default)]
    pub input_template: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub projects: Vec<ProjectConfig>,
}

fn default_pipeline_timeout() -> u64 {
    3600
}

/// `[[pipelines.projects]]`: a component the pipeline deploys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectConfig {
    /// The name used in `override_branches`.
    pub name: String,
    pub repository: String,
    #[serde(default = "default_branch")]
    pub default_branch: String,
    /// Input key set to `true` when the event does not touch this project.
    #[serde(default)]
    pub skip_flag: Option<String>,
    /// When set, the project is touched only by changes under these path globs.
    #[serde(default)]
    pub paths: Vec<String>,
}

fn default_branch() -> String {
    "main".to_string()
}

/// Event kinds a route can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventName {
    Push,
    PullRequest,
}

/// Whether every pushed commit gets an execution or only the newest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitsMode {
    #[default]
    Each,
    Head,
}

/// `[[routes]]`: which events go to which pipeline and environment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Shown by `plan --explain` and in logs; defaults to `routes[<index>]`.
    #[serde(default)]
    pub name: Option<String>,
    pub pipeline: String,
    /// Sources this route takes; every source when absent.
    #[serde(default)]
    pub sources: Option<Vec<Source>>,
    /// Repository glob (`acme/*`); every repository when absent.
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default = "default_events")]
    pub events: Vec<EventName>,
    #[serde(default)]
    pub branches: Option<Vec<String>>,
    #[serde(default)]
    pub branches_ignore: Option<Vec<String>>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub tags_ignore: Option<Vec<String>>,
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub paths_ignore: Option<Vec<String>>,
    /// Pull-request actions taken; see `plan::DEFAULT_PULL_REQUEST_ACTIONS`.
    #[serde(default)]
    pub actions: Option<Vec<String>>,
    /// When not empty, a pull request must carry one of these labels.
    #[serde(default)]
    pub labels: Vec<String>,
    /// Environment name; `{number}` (pull requests) and `{branch}` are replaced.
    pub environment: String,
    #[serde(default)]
    pub commits: CommitsMode,
    /// A deleted branch gets one `teardown` execution.
    #[serde(default)]
    pub teardown_on_delete: bool,
    /// Commits whose message says `[skip ci]`, `[ci skip]` or `[no ci]` get no execution.
    #[serde(default)]
    pub skip_ci: bool,
    #[serde(default)]
    pub allow_drafts: bool,
    /// Lets code from forks reach this pipeline. Off by default: a fork's author
    /// must not reach deploy credentials.
    #[serde(default)]
    pub allow_forks: bool,
    /// Every project deploys (no `skip_*` flag is set), whatever the event touched.
    #[serde(default)]
    pub deploy_all_projects: bool,
}

fn default_events() -> Vec<EventName> {
    vec![EventName::Push]
}

impl RouteConfig {
    pub fn takes_source(&self, source: Source) -> bool {
        self.sources
            .as_ref()
            .is_none_or(|sources| sources.contains(&source))
    }
}

impl Config {
    /// Reads, interpolates, decodes and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text, &|name| std::env::var(name).ok()).map_err(
            |error| match error {
                LoadError::Syntax(message) => ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message,
                },
                LoadError::Invalid(problems) => ConfigError::Invalid {
                    path: path.to_path_buf(),
                    problems,
                },
            },
        )
    }

    /// Parses a configuration from text; `env` looks up `${NAME}` references.
    pub fn from_toml_str(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, LoadError> {
        let mut value: toml::Value = toml::from_str(text)
            .map_err(|error: toml::de::Error| LoadError::Syntax(error.to_string()))?;
        let mut problems = Vec::new();
        interpolate(&mut value, &mut String::new(), env, &mut problems);
        if !problems.is_empty() {
            return Err(LoadError::Invalid(problems));
        }
        let config: Config = serde_path_to_error::deserialize(value).map_err(|error| {
            let path = error.path().to_string();
            let path = if path == "." { String::new() } else { path };
            LoadError::Invalid(vec![Problem::new(path, error.into_inner().to_string())])
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(LoadError::Invalid(problems))
        }
    }

    /// Every semantic problem of a decoded configuration.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let server = &self.server;
        if server.max_body_bytes == 0 {
            problems.push(Problem::new("server.max_body_bytes", "must be above 0"));
        }
        if server.request_timeout_secs == 0 {
            problems.push(Problem::new(
                "server.request_timeout_secs",
                "must be above 0",
            ));
        }
        if server.rate_limit.per_second == 0 {
            problems.push(Problem::new(
                "server.rate_limit.per_second",
                "must be above 0",
            ));
        }
        if server.rate_limit.burst == 0 {
            problems.push(Problem::new("server.rate_limit.burst", "must be above 0"));
        }
        for (key, list) in [
            ("trusted_proxies", &server.trusted_proxies),
            ("allowed_networks", &server.allowed_networks),
        ] {
            for (index, network) in list.iter().enumerate() {
                if let Err(message) = parse_network(network) {
                    problems.push(Problem::new(format!("server.{key}[{index}]"), message));
                }
            }
        }

        let github_routes = self
            .routes
            .iter()
            .any(|route| route.takes_source(Source::Github));
        if github_routes && self.github.webhook_secrets.is_empty() {
            problems.push(Problem::new(
                "github.webhook_secrets",
                "is empty, but routes take GitHub events: at least one secret is needed to verify deliveries",
            ));
        }
        for (index, entry) in self.github.webhook_secrets.iter().enumerate() {
            let path = format!("github.webhook_secrets[{index}]");
            if entry.secret().expose_secret().is_empty() {
                problems.push(Problem::new(&path, "the secret is empty"));
            }
            if let Some(repositories) = entry.repositories() {
                if repositories.is_empty() {
                    problems.push(Problem::new(
                        format!("{path}.repositories"),
                        "is empty: a scoped secret must name at least one repository glob",
                    ));
                }
                for (glob_index, glob) in repositories.iter().enumerate() {
                    if let Err(message) = crate::pattern::compile_repository_glob(glob) {
                        problems.push(Problem::new(
                            format!("{path}.repositories[{glob_index}]"),
                            message,
                        ));
                    }
                }
            }
        }

        let worker = &self.worker;
        for (key, value) in [
            ("concurrency", worker.concurrency as u64),
            ("batch_size", worker.batch_size as u64),
            ("starts_per_second", u64::from(worker.starts_per_second)),
            ("start_burst", u64::from(worker.start_burst)),
            ("poll_interval_secs", worker.poll_interval_secs),
            ("retry_initial_ms", worker.retry_initial_ms),
            ("retry_max_secs", worker.retry_max_secs),
        ] {
            if value == 0 {
                problems.push(Problem::new(format!("worker.{key}"), "must be above 0"));
            }
        }
        match &self.queue {
            QueueConfig::Embedded {
                visibility_timeout_secs,
                max_receives,
                ..
            } => {
                if *visibility_timeout_secs == 0 {
                    problems.push(Problem::new(
                        "queue.visibility_timeout_secs",
                        "must be above 0",
                    ));
                }
                if *max_receives == 0 {
                    problems.push(Problem::new("queue.max_receives", "must be above 0"));
                }
            }
            QueueConfig::Sqs { url } => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    problems.push(Problem::new(
                        "queue.url",
                        format!("{url:?} is not an SQS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>)"),
                    ));
                }
                if worker.batch_size > crate::queue::sqs::MAX_BATCH {
                    problems.push(Problem::new(
                        "worker.batch_size",
                        "must be at most 10 with an SQS queue: SQS hands out at most 10 messages per receive",
                    ));
                }
                if worker.receive_wait_secs > crate::queue::sqs::MAX_WAIT.as_secs() {
                    problems.push(Problem::new(
                        "worker.receive_wait_secs",
                        "must be at most 20 with an SQS queue (the longest SQS long poll)",
                    ));
                }
                if !url.ends_with(".fifo") {
                    for (index, pipeline) in self.pipelines.iter().enumerate() {
                        if pipeline.concurrency == Concurrency::Serial {
                            problems.push(Problem::new(
                                format!("pipelines[{index}].concurrency"),
                                "\"serial\" needs a FIFO queue, which keeps a pipeline's executions for one environment in order, one at a time; queue.url is a standard queue (a FIFO queue's URL ends in .fifo)",
                            ));
                        }
                    }
                }
            }
        }
        if let ExecutorConfig::Local { max_attempts, .. } = &self.executor {
            if *max_attempts == 0 {
                problems.push(Problem::new("executor.max_attempts", "must be above 0"));
            }
        }
        let mut names = HashSet::new();
        for (index, pipeline) in self.pipelines.iter().enumerate() {
            let path = format!("pipelines[{index}]");
            if !names.insert(pipeline.name.as_str()) {
                problems.push(Problem::new(
                    format!("{path}.name"),
                    format!("pipeline {:?} is defined twice", pipeline.name),
                ));
            }
            match &self.executor {
                ExecutorConfig::Local { .. } => match &pipeline.command {
                    None => problems.push(Problem::new(
                        format!("{path}.command"),
                        "is required by executor type \"local\"",
                    )),
                    Some(command) if command.is_empty() || command[0].is_empty() => problems.push(
                        Problem::new(format!("{path}.command"), "must name a program to run"),
                    ),
                    Some(_) => {}
                },
                ExecutorConfig::Stepfunctions {} => match &pipeline.state_machine_arn {
                    None => problems.push(Problem::new(
                        format!("{path}.state_machine_arn"),
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
                                format!("{path}.state_machine_arn"),
                                format!("{arn:?} is not a state machine ARN (arn:aws:states:<region>:<account>:stateMachine:<name>)"),
                            ));
                        }
                    }
                },
            }
            if pipeline.timeout_secs == 0 {
                problems.push(Problem::new(
                    format!("{path}.timeout_secs"),
                    "must be above 0",
                ));
            }
        }

        if let Err(planner_problems) = Planner::new(self) {
            problems.extend(planner_problems);
        }
        problems
    }
}

/// Why [`Config::from_toml_str`] refused a text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("not valid TOML: {0}")]
    Syntax(String),
    #[error("{} problem(s):\n{}", .0.len(), Problems(.0))]
    Invalid(Vec<Problem>),
}

/// Parses `10.0.0.0/8` or a single address.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR network"))
}

/// Replaces `${NAME}` in every string with the environment variable's value (`$$`
/// stands for a literal `$`), recording every variable that is not set.
fn interpolate(
    value: &mut toml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        toml::Value::String(text) if text.contains('$') => match interpolate_str(text, env) {
            Ok(replaced) => *text = replaced,
            Err(message) => problems.push(Problem::new(path.clone(), message)),
        },
        toml::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                let length = path.len();
                path.push_str(&format!("[{index}]"));
                interpolate(item, path, env, problems);
                path.truncate(length);
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                let length = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                interpolate(item, path, env, problems);
                path.truncate(length);
            }
        }
        _ => {}
    }
}

fn interpolate_str(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut output = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    while let Some(position) = rest.find('$') {
        output.push_str(&rest[..position]);
        let after = &rest[position + 1..];
        if let Some(after_dollar) = after.strip_prefix('$') {
            output.push('$');
            rest = after_dollar;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err("has an unclosed ${ reference".to_string());
            };
            let name = &body[..end];
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
            if !valid_name {
                return Err(format!(
                    "${{{name}}} is not a valid environment variable reference"
                ));
            }
            match env(name) {
                Some(value) => output.push_str(&value),
                None => missing.push(name.to_string()),
            }
            rest = &body[end + 1..];
        } else {
            output.push('$');
            rest = after;
        }
    }
    output.push_str(rest);
    if missing.is_empty() {
        Ok(output)
    } else {
        Err(format!(
            "environment variable {} is not set",
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr3t".to_string()),
            _ => None,
        }
    }

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"

[github]
webhook_secrets = ["${SECRET}"]

[queue]
type = "embedded"
path = "var/gitdispatch.db"

[executor]
type = "local"

[[pipelines]]
name = "deploy"
state_machine_arn = "arn:aws:states:us-east-1:123456789012:stateMachine:deploy"
command = ["sh", "deploy/local/deploy.sh"]
concurrency = "serial"

[[pipelines.projects]]
name = "project-api-v2"
repository = "acme/project-api-v2"
default_branch = "main"
skip_flag = "skip_api_v2"

[[routes]]
pipeline = "deploy"
repository = "acme/*"
events = ["push"]
branches = ["hotfix/*"]
environment = "acceptance"
commits = "each"
"#;

    #[test]
    fn the_minimal_contract_file_loads() {
        let config = Config::from_toml_str(MINIMAL, &env).expect("minimal config loads");
        assert_eq!(config.pipelines[0].concurrency, Concurrency::Serial);
        assert_eq!(
            config.github.webhook_secrets[0].secret().expose_secret(),
            "s3cr3t"
        );
        assert_eq!(config.routes[0].commits, CommitsMode::Each);
    }

    #[test]
    fn every_missing_variable_is_reported_with_its_key_path() {
        let text = r#"
[github]
webhook_secrets = ["${ONE}", { secret = "${TWO}", repositories = ["a/*"] }]
token = "${THREE}"
"#;
        let LoadError::Invalid(problems) = Config::from_toml_str(text, &env).unwrap_err() else {
            panic!("expected problems");
        };
        let shown: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "github.webhook_secrets[0]: environment variable ONE is not set",
                "github.webhook_secrets[1].secret: environment variable TWO is not set",
                "github.token: environment variable THREE is not set",
            ]
        );
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar() {
        assert_eq!(
            interpolate_str("a$$b${SECRET}$", &env).unwrap(),
            "a$bs3cr3t$"
        );
        assert!(interpolate_str("${", &env).is_err());
        assert!(interpolate_str("${A-B}", &env).is_err());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let text = MINIMAL.replace("skip_flag = ", "skip_flagg = ");
        let LoadError::Invalid(problems) = Config::from_toml_str(&text, &env).unwrap_err() else {
            panic!("expected problems");
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "pipelines[0].projects[0].skip_flagg");
        assert!(problems[0].message.contains("unknown field `skip_flagg`"));
    }

    #[test]
    fn semantic_problems_are_all_reported_at_once() {
        let text = MINIMAL
            .replace("pipeline = \"deploy\"", "pipeline = \"nope\"")
            .replace("branches = [\"hotfix/*\"]", "branches = [\"[\"]")
            + "\n[worker]\nconcurrency = 0\n[[pipelines]]\nname = \"deploy\"\n";
        let LoadError::Invalid(problems) = Config::from_toml_str(&text, &env).unwrap_err() else {
            panic!("expected problems");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"worker.concurrency"), "{paths:?}");
        assert!(paths.contains(&"pipelines[1].name"), "{paths:?}");
        assert!(paths.contains(&"pipelines[1].command"), "{paths:?}");
        assert!(paths.contains(&"routes[0].pipeline"), "{paths:?}");
        assert!(paths.contains(&"routes[0].branches[0]"), "{paths:?}");
    }

    #[test]
    fn aws_settings_are_checked() {
        let text = MINIMAL
            .replace(
                "type = \"embedded\"\npath = \"var/gitdispatch.db\"",
                "type = \"sqs\"\nurl = \"https://sqs.us-east-1.amazonaws.com/1/jobs\"",
            )
            .replace("type = \"local\"", "type = \"stepfunctions\"")
            .replace(
                "state_machine_arn = \"arn:aws:states:us-east-1:123456789012:stateMachine:deploy\"",
                "state_machine_arn = \"arn:aws:states:us-east-1:123456789012:deploy\"",
            )
            + "[worker]\nbatch_size = 11\n";
        let LoadError::Invalid(problems) = Config::from_toml_str(&text, &env).unwrap_err() else {
            panic!("expected problems");
        };
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "worker.batch_size",
                "pipelines[0].concurrency",
                "pipelines[0].state_machine_arn"
            ]
        );
        assert!(problems[1].message.contains("needs a FIFO queue"));

        let fifo = MINIMAL
            .replace(
                "type = \"embedded\"\npath = \"var/gitdispatch.db\"",
                "type = \"sqs\"\nurl = \"https://sqs.us-east-1.amazonaws.com/1/jobs.fifo\"",
            )
            .replace("type = \"local\"", "type = \"stepfunctions\"");
        let config = Config::from_toml_str(&fifo, &env).unwrap();
        assert_eq!(config.queue.type_name(), "sqs (FIFO)");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let config = Config::from_toml_str(MINIMAL, &env).unwrap();
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }

    #[test]
    fn networks_parse_as_cidr_or_address() {
        assert!(parse_network("10.0.0.0/8").is_ok());
        assert!(parse_network("192.0.2.1").is_ok());
        assert!(parse_network("::1").is_ok());
        assert!(parse_network("nope").is_err());
    }
}
