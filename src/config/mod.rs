//! The TOML configuration: its model, `${ENV}` interpolation and each section's own
//! checks. It knows nothing of what uses it: the backends and the planner check what
//! they need of it when the whole is compiled (`crate::app::compile`).
//!
//! Loading happens in passes so that a user sees as many problems as possible at once,
//! each with its key path: (1) TOML syntax, (2) `${ENV}` interpolation over every
//! string (every missing variable is reported), (3) typed decoding (unknown keys are
//! refused), then every section's checks.

mod api;
mod codecommit;
mod codepipeline;
mod env;
mod executor;
mod github;
mod pipeline;
mod queue;
mod route;
mod server;
mod typed;
mod worker;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use api::{ApiConfig, HistoryConfig, LedgerConfig};
pub use codecommit::CodeCommitConfig;
pub use codepipeline::CodePipelineConfig;
pub use executor::ExecutorConfig;
pub use github::{
    GithubConfig, HookConfig, MAX_LOOK_BACK_SECS, ReconcileConfig, RedeliverConfig,
    ScopedSecretConfig, WebhookSecretConfig,
};
pub use pipeline::{Concurrency, PipelineConfig, ProjectConfig};
pub use queue::QueueConfig;
pub use route::{CommitsMode, EventName, RouteConfig};
pub use server::{RateLimitConfig, ServerConfig, TlsConfig, parse_network};
pub use typed::{AppKey, GithubAuth, ScopedSecret, SurfaceNetworks, Typed};
pub use worker::WorkerConfig;

use crate::event::Source;
use env::interpolate;

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
    pub codecommit: Option<CodeCommitConfig>,
    #[serde(default)]
    pub codepipeline: Option<CodePipelineConfig>,
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
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub history: HistoryConfig,
    /// Keys whose secrets are written in the file itself, not taken from `${ENV}`.
    #[serde(skip)]
    pub literal_secrets: Vec<String>,
    /// What its texts mean (networks, scopes, GitHub's authentication), parsed once
    /// when the whole is compiled (`crate::app::compile`).
    #[serde(skip)]
    pub typed: Typed,
}

impl Config {
    /// Reads, interpolates and decodes a configuration file, without checking it
    /// (`crate::app::load` checks it whole).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &|name| std::env::var(name).ok()).map_err(|error| match error {
            LoadError::Syntax(message) => ConfigError::Syntax {
                path: path.to_path_buf(),
                message,
            },
            LoadError::Invalid(problems) => ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            },
        })
    }

    /// Parses a configuration from text and checks its sections (not what backends or
    /// the planner need of it); `env` looks up `${NAME}` references.
    pub fn from_toml_str(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, LoadError> {
        let mut config = Config::parse(text, env)?;
        let mut problems = config.validate();
        config.typed = config.typed(&mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(LoadError::Invalid(problems))
        }
    }

    /// The first passes: TOML syntax, `${NAME}` interpolation, typed decoding.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, LoadError> {
        let mut value: toml::Value = toml::from_str(text)
            .map_err(|error: toml::de::Error| LoadError::Syntax(error.to_string()))?;
        let literal_secrets = github::literal_secrets(&value);
        let mut problems = Vec::new();
        interpolate(&mut value, &mut String::new(), env, &mut problems);
        if !problems.is_empty() {
            return Err(LoadError::Invalid(problems));
        }
        let mut config: Config = serde_path_to_error::deserialize(value).map_err(|error| {
            let path = error.path().to_string();
            let path = if path == "." { String::new() } else { path };
            LoadError::Invalid(vec![Problem::new(path, error.into_inner().to_string())])
        })?;
        config.literal_secrets = literal_secrets;
        Ok(config)
    }

    /// A warning when the file at `path` holds secrets written in it (not `${ENV}`
    /// references) and others than its owner may read it.
    pub fn exposed_secrets(&self, path: &Path) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        if self.literal_secrets.is_empty() {
            return None;
        }
        let mode = std::fs::metadata(path).ok()?.permissions().mode();
        (mode & 0o077 != 0).then(|| {
            format!(
                "{} holds secrets ({}) and others than its owner may read it (mode {:o}): chmod 600 it, or take the secrets from the environment as ${{NAME}}",
                path.display(),
                self.literal_secrets.join(", "),
                mode & 0o777
            )
        })
    }

    /// The problems a decoded configuration finds in itself, section by section. What
    /// the backends and the planner need of it they check when the configuration is
    /// compiled (`crate::app::compile`), all reported together.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        self.server.validate(&mut problems);
        if !self.server.allowed_networks.is_empty() && !self.github.allowed_networks.is_empty() {
            problems.push(Problem::new(
                "server.allowed_networks",
                "moved to github.allowed_networks, which is set too: keep that one",
            ));
        }
        let github_routes = self
            .routes
            .iter()
            .any(|route| route.takes_source(Source::Github));
        self.github.validate(github_routes, &mut problems);
        if let Some(codecommit) = &self.codecommit {
            codecommit.validate(&mut problems);
        }
        if let Some(codepipeline) = &self.codepipeline {
            let configured: Vec<String> = self
                .pipelines
                .iter()
                .map(|pipeline| pipeline.name.clone())
                .collect();
            codepipeline.validate(&configured, &mut problems);
        }
        self.api.validate(&mut problems);
        self.ledger.validate(&mut problems);
        self.history.validate(&mut problems);
        self.worker.validate(&mut problems);
        pipeline::validate(&self.pipelines, &mut problems);
        problems
    }
}

impl Config {
    /// What the file says in words an earlier release used, and how to say it now.
    pub fn deprecations(&self) -> Vec<String> {
        let mut said = Vec::new();
        if !self.server.allowed_networks.is_empty() {
            said.push(
                "server.allowed_networks is deprecated: it is taken as github.allowed_networks (GitHub's webhook only); each surface has its own list now (github, codecommit, api)"
                    .to_string(),
            );
        }
        said
    }

    /// The allow-list of GitHub's webhook endpoint (the deprecated
    /// `server.allowed_networks` when it is the one given).
    pub fn github_networks(&self) -> &[String] {
        if self.github.allowed_networks.is_empty() {
            &self.server.allowed_networks
        } else {
            &self.github.allowed_networks
        }
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

#[cfg(test)]
pub(crate) mod tests;
