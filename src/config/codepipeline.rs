//! `[codepipeline]`: gitdispatch as the job worker of a CodePipeline custom action.

use serde::Deserialize;

use super::Problem;

/// `[codepipeline]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodePipelineConfig {
    /// The custom action type's category: Source, Build, Deploy, Test, Invoke,
    /// Approval or Compute.
    #[serde(default = "default_category")]
    pub category: String,
    /// The custom action type's provider name, as registered (CreateCustomActionType).
    pub provider: String,
    /// Our pipelines a job may name (`Pipeline` in the action's configuration); every
    /// configured one when empty.
    #[serde(default)]
    pub pipelines: Vec<String>,
    /// The custom action type's version.
    #[serde(default = "default_version")]
    pub version: String,
    /// How often the worker asks CodePipeline for jobs when it had none.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_secs: u64,
    /// Jobs taken per poll, 1 to 100.
    #[serde(default = "default_batch")]
    pub max_batch_size: i32,
    /// A job whose execution still runs after this long is handed back to
    /// CodePipeline as in progress (a continuation token), which gives the action a new
    /// job to follow it with, so that no job outlives CodePipeline's timeout for one.
    #[serde(default = "default_continue_after")]
    pub continue_after_secs: u64,
    /// A job whose execution has not started after this long (its lane paused, its
    /// start dead-lettered) fails the action.
    #[serde(default = "default_start_timeout")]
    pub start_timeout_secs: u64,
}

fn default_category() -> String {
    "Deploy".to_string()
}

fn default_version() -> String {
    "1".to_string()
}

fn default_poll_interval() -> u64 {
    10
}

fn default_batch() -> i32 {
    10
}

fn default_continue_after() -> u64 {
    600
}

fn default_start_timeout() -> u64 {
    3600
}

const CATEGORIES: [&str; 7] = [
    "Source", "Build", "Deploy", "Test", "Invoke", "Approval", "Compute",
];

impl CodePipelineConfig {
    pub(super) fn validate(&self, configured: &[String], problems: &mut Vec<Problem>) {
        for (index, name) in self.pipelines.iter().enumerate() {
            if !configured.contains(name) {
                problems.push(Problem::new(
                    format!("codepipeline.pipelines[{index}]"),
                    format!("no pipeline is named {name:?}"),
                ));
            }
        }
        if !CATEGORIES.contains(&self.category.as_str()) {
            problems.push(Problem::new(
                "codepipeline.category",
                format!(
                    "{:?} is not one of {}",
                    self.category,
                    CATEGORIES.join(", ")
                ),
            ));
        }
        let name_like = |text: &str, max: usize| {
            !text.is_empty()
                && text.len() <= max
                && text
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"@-_.".contains(&byte))
        };
        if !name_like(&self.provider, 35) {
            problems.push(Problem::new(
                "codepipeline.provider",
                "must be 1 to 35 characters from A-Z, a-z, 0-9, '@', '-', '_' and '.'",
            ));
        }
        if !name_like(&self.version, 9) {
            problems.push(Problem::new(
                "codepipeline.version",
                "must be 1 to 9 characters from A-Z, a-z, 0-9, '@', '-', '_' and '.'",
            ));
        }
        if self.poll_interval_secs == 0 {
            problems.push(Problem::new(
                "codepipeline.poll_interval_secs",
                "must be at least 1",
            ));
        }
        if !(1..=100).contains(&self.max_batch_size) {
            problems.push(Problem::new(
                "codepipeline.max_batch_size",
                "must be 1 to 100",
            ));
        }
        if self.continue_after_secs == 0 {
            problems.push(Problem::new(
                "codepipeline.continue_after_secs",
                "must be at least 1",
            ));
        }
    }
}
