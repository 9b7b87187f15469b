//! `[[routes]]`: which events go to which pipeline and environment. The planner
//! compiles and checks them (`crate::plan`).

use serde::Deserialize;

use crate::event::Source;

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
    /// With reporting on, a commit this route skipped (`[skip ci]`, paths, no project
    /// touched) gets a final `success` saying why, so that a required check never
    /// waits for an execution that will not come.
    #[serde(default)]
    pub report_skipped: bool,
    /// With reporting on, a pull request's executions show as a GitHub deployment of
    /// its head to the route's environment (on by default for pull-request routes).
    #[serde(default = "default_true")]
    pub deployment: bool,
    /// The deployment's address; `{number}` and `{branch}` are replaced.
    #[serde(default)]
    pub environment_url: Option<String>,
    /// Or a JSONPath into the execution's output that gives the address.
    #[serde(default)]
    pub environment_url_path: Option<String>,
}

fn default_true() -> bool {
    true
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
