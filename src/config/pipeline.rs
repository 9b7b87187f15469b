//! `[[pipelines]]` and their `[[pipelines.projects]]`: what executes, and the
//! components it deploys.

use std::collections::HashSet;

use serde::Deserialize;

use super::Problem;

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
    /// Serial pipelines only: when a lane is about to start a job and newer jobs of the
    /// lane wait, the older is superseded (recorded, reported) and only the newest runs.
    #[serde(default)]
    pub supersede: bool,
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

/// Checks what the pipelines say of themselves: names used once, timeouts above 0.
/// What a backend or the planner needs of them, they check.
pub(super) fn validate(pipelines: &[PipelineConfig], problems: &mut Vec<Problem>) {
    let mut names = HashSet::new();
    for (index, pipeline) in pipelines.iter().enumerate() {
        let path = format!("pipelines[{index}]");
        if !names.insert(pipeline.name.as_str()) {
            problems.push(Problem::new(
                format!("{path}.name"),
                format!("pipeline {:?} is defined twice", pipeline.name),
            ));
        }
        if pipeline.supersede && pipeline.concurrency != Concurrency::Serial {
            problems.push(Problem::new(
                format!("{path}.supersede"),
                "needs concurrency = \"serial\": a parallel pipeline runs every job",
            ));
        }
        if pipeline.timeout_secs == 0 {
            problems.push(Problem::new(
                format!("{path}.timeout_secs"),
                "must be above 0",
            ));
        }
    }
}
