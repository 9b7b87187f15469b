//! `[executor]`: what runs a pipeline. The checks that depend on the backend belong to
//! the backend (`crate::executor::check`).

use std::path::PathBuf;

use serde::Deserialize;

/// `[executor]`: what runs a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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
        /// Where a local execution can be looked at, as a base URL the execution name is
        /// appended to: the link reports give (none when absent).
        #[serde(default)]
        details_url: Option<String>,
    },
    /// AWS Step Functions: each pipeline's `state_machine_arn` (standard workflows).
    StepFunctions {},
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
            details_url: None,
        }
    }
}

impl ExecutorConfig {
    pub fn type_name(&self) -> &'static str {
        match self {
            ExecutorConfig::Local { .. } => "local",
            ExecutorConfig::StepFunctions {} => "stepfunctions",
        }
    }
}
