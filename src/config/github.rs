//! `[github]`: the webhook secrets, and how gitdispatch authenticates when it calls
//! GitHub back (a token, or a GitHub App) to report what it did.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::Problem;

/// `[github]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// Several secrets are accepted at once so one can be rotated without downtime.
    #[serde(default)]
    pub webhook_secrets: Vec<WebhookSecretConfig>,
    /// API token, for the parts that call GitHub back (commit statuses, deployments).
    #[serde(default)]
    pub token: Option<SecretString>,
    /// A GitHub App to call GitHub as, instead of a token: its id and private key (PEM,
    /// in the file or from a path).
    #[serde(default)]
    pub app_id: Option<u64>,
    #[serde(default)]
    pub private_key: Option<SecretString>,
    #[serde(default)]
    pub private_key_path: Option<PathBuf>,
    /// The App's installation; found per repository when absent.
    #[serde(default)]
    pub installation_id: Option<u64>,
    /// GitHub's API: another for GitHub Enterprise Server (`https://<host>/api/v3`).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Report with check runs rather than commit statuses; only an App may create
    /// them. On by default for an App.
    #[serde(default)]
    pub check_runs: Option<bool>,
    /// Reports written per minute at most, below GitHub's secondary rate limit on
    /// requests that create content (80 a minute).
    #[serde(default = "default_reports_per_minute")]
    pub reports_per_minute: u32,
    /// Commits of one push planned at most (GitHub lists at most 2,048): a push that
    /// lists more keeps its newest, the head among them, and is logged and counted as
    /// truncated.
    #[serde(default = "default_max_commits_per_push")]
    pub max_commits_per_push: usize,
    /// Commits of one push read from the API at most, when its delivery could not list
    /// them all (GitHub lists 2,048 at most): a longer push plans its newest.
    #[serde(default = "default_max_expanded_commits")]
    pub max_expanded_commits: usize,
    /// Asking GitHub to redeliver what failed to reach us (`gitdispatch redeliver`, and
    /// the same periodically when `interval_secs` is set).
    #[serde(default)]
    pub redeliver: Option<RedeliverConfig>,
    /// Planning what GitHub never delivered: each watched branch's head compared with
    /// the last commit planned for it (`gitdispatch reconcile`, and periodically).
    #[serde(default)]
    pub reconcile: Option<ReconcileConfig>,
    /// When not empty, GitHub's webhook endpoint refuses other client addresses with
    /// 403 (GitHub's published hook ranges, say).
    #[serde(default)]
    pub allowed_networks: Vec<String>,
}

/// `[github.reconcile]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// The repositories whose branches are compared (`owner/name`).
    pub repositories: Vec<String>,
    /// How often the daemon's worker reconciles, in seconds; 0 (the default) only by
    /// command.
    #[serde(default)]
    pub interval_secs: u64,
    /// A head committed this recently is left for its webhook, which is likely on its
    /// way.
    #[serde(default = "default_grace_secs")]
    pub grace_secs: u64,
}

fn default_grace_secs() -> u64 {
    300
}

/// `[github.redeliver]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeliverConfig {
    /// The webhooks whose deliveries are looked at.
    pub hooks: Vec<HookConfig>,
    /// How often the daemon's worker looks, in seconds; 0 (the default) only by command.
    #[serde(default)]
    pub interval_secs: u64,
    /// How far back the periodic look goes (GitHub keeps deliveries 3 days).
    #[serde(default = "default_look_back_secs")]
    pub look_back_secs: u64,
}

/// GitHub keeps a hook's deliveries this long.
pub const MAX_LOOK_BACK_SECS: u64 = 3 * 24 * 3600;

fn default_look_back_secs() -> u64 {
    24 * 3600
}

/// One webhook: a repository's or an organisation's (by the hook's id), or the App's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default)]
    pub organization: Option<String>,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub app: bool,
}

impl HookConfig {
    /// The API path of the hook's deliveries, when the entry names exactly one hook.
    pub fn deliveries_path(&self) -> Option<String> {
        match (&self.repository, &self.organization, self.id, self.app) {
            (Some(repository), None, Some(id), false) => {
                Some(format!("/repos/{repository}/hooks/{id}/deliveries"))
            }
            (None, Some(organization), Some(id), false) => {
                Some(format!("/orgs/{organization}/hooks/{id}/deliveries"))
            }
            (None, None, None, true) => Some("/app/hook/deliveries".to_string()),
            _ => None,
        }
    }
}

fn default_max_expanded_commits() -> usize {
    10_000
}

fn default_max_commits_per_push() -> usize {
    2048
}

fn default_api_url() -> String {
    "https://api.github.com".to_string()
}

fn default_reports_per_minute() -> u32 {
    60
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
    /// Repository globs this secret may speak for: a delivery it signed for another
    /// repository is refused (403).
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

impl Default for GithubConfig {
    fn default() -> Self {
        GithubConfig {
            webhook_secrets: Vec::new(),
            token: None,
            app_id: None,
            private_key: None,
            private_key_path: None,
            installation_id: None,
            api_url: default_api_url(),
            check_runs: None,
            reports_per_minute: default_reports_per_minute(),
            max_commits_per_push: default_max_commits_per_push(),
            max_expanded_commits: default_max_expanded_commits(),
            redeliver: None,
            reconcile: None,
            allowed_networks: Vec::new(),
        }
    }
}

impl GithubConfig {
    /// Whether gitdispatch calls GitHub back: with a token or as an App.
    pub fn reporting(&self) -> bool {
        self.token.is_some() || self.app_id.is_some()
    }

    /// Whether reports are check runs (an App, unless told otherwise).
    pub fn uses_check_runs(&self) -> bool {
        self.app_id.is_some() && self.check_runs.unwrap_or(true)
    }

    /// `needed`: whether routes take GitHub events, so that a secret must exist.
    pub(super) fn validate(&self, needed: bool, problems: &mut Vec<Problem>) {
        if needed && self.webhook_secrets.is_empty() {
            problems.push(Problem::new(
                "github.webhook_secrets",
                "is empty, but routes take GitHub events: at least one secret is needed to verify deliveries",
            ));
        }
        if self.token.is_some() && self.app_id.is_some() {
            problems.push(Problem::new(
                "github.token",
                "and github.app_id are both set: call GitHub with one or the other",
            ));
        }
        match (
            self.app_id.is_some(),
            self.private_key.is_some(),
            self.private_key_path.is_some(),
        ) {
            (true, false, false) => problems.push(Problem::new(
                "github.app_id",
                "needs the App's private key: github.private_key or github.private_key_path",
            )),
            (_, true, true) => problems.push(Problem::new(
                "github.private_key",
                "and github.private_key_path are both set: give the key once",
            )),
            (false, true, _) | (false, _, true) => problems.push(Problem::new(
                "github.private_key",
                "is set without github.app_id",
            )),
            _ => {}
        }
        if self.installation_id.is_some() && self.app_id.is_none() {
            problems.push(Problem::new(
                "github.installation_id",
                "is set without github.app_id",
            ));
        }
        if self.check_runs == Some(true) && self.app_id.is_none() {
            problems.push(Problem::new(
                "github.check_runs",
                "needs a GitHub App (github.app_id): only Apps may create check runs",
            ));
        }
        if !(self.api_url.starts_with("https://") || self.api_url.starts_with("http://"))
            || self.api_url.parse::<axum::http::Uri>().is_err()
        {
            problems.push(Problem::new(
                "github.api_url",
                format!("{:?} is not an http(s) URL", self.api_url),
            ));
        }
        if let Some(redeliver) = &self.redeliver {
            if redeliver.hooks.is_empty() {
                problems.push(Problem::new("github.redeliver.hooks", "names no hook"));
            }
            for (index, hook) in redeliver.hooks.iter().enumerate() {
                let path = format!("github.redeliver.hooks[{index}]");
                if hook.deliveries_path().is_none() {
                    problems.push(Problem::new(
                        &path,
                        "must be { repository = \"owner/name\", id = N }, { organization = \"name\", id = N } or { app = true }",
                    ));
                }
                if hook.app && self.app_id.is_none() {
                    problems.push(Problem::new(
                        format!("{path}.app"),
                        "needs a GitHub App (github.app_id): the App's hook is read as the App",
                    ));
                }
            }
            if !(1..=MAX_LOOK_BACK_SECS).contains(&redeliver.look_back_secs) {
                problems.push(Problem::new(
                    "github.redeliver.look_back_secs",
                    format!("must be 1 to {MAX_LOOK_BACK_SECS} (GitHub keeps deliveries 3 days)"),
                ));
            }
            if !self.reporting() {
                problems.push(Problem::new(
                    "github.redeliver",
                    "needs github.token or a GitHub App to call GitHub",
                ));
            }
        }
        if let Some(reconcile) = &self.reconcile {
            if reconcile.repositories.is_empty() {
                problems.push(Problem::new(
                    "github.reconcile.repositories",
                    "names no repository",
                ));
            }
            for (index, repository) in reconcile.repositories.iter().enumerate() {
                let parts: Vec<&str> = repository.split('/').collect();
                if parts.len() != 2 || parts.iter().any(|part| part.is_empty()) {
                    problems.push(Problem::new(
                        format!("github.reconcile.repositories[{index}]"),
                        format!("{repository:?} is not owner/name"),
                    ));
                }
            }
            if !self.reporting() {
                problems.push(Problem::new(
                    "github.reconcile",
                    "needs github.token or a GitHub App to call GitHub",
                ));
            }
        }
        if self.max_expanded_commits == 0 {
            problems.push(Problem::new(
                "github.max_expanded_commits",
                "must be above 0",
            ));
        }
        if self.reports_per_minute == 0 {
            problems.push(Problem::new("github.reports_per_minute", "must be above 0"));
        }
        if self.max_commits_per_push == 0 {
            problems.push(Problem::new(
                "github.max_commits_per_push",
                "must be above 0",
            ));
        }
        for (index, entry) in self.webhook_secrets.iter().enumerate() {
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
            }
        }
    }
}

/// The keys of `[github]` whose secret is written in the file (anything but a whole
/// `${NAME}` reference), read before interpolation.
pub(super) fn literal_secrets(value: &toml::Value) -> Vec<String> {
    let empty = toml::Value::Table(Default::default());
    let github = value.get("github").unwrap_or(&empty);
    let literal = |value: Option<&toml::Value>| {
        value.and_then(toml::Value::as_str).is_some_and(|text| {
            !(text.starts_with("${") && text.ends_with('}') && text.matches('$').count() == 1)
        })
    };
    let mut keys = Vec::new();
    if let Some(entries) = github
        .get("webhook_secrets")
        .and_then(toml::Value::as_array)
    {
        for (index, entry) in entries.iter().enumerate() {
            let secret = if entry.is_table() {
                entry.get("secret")
            } else {
                Some(entry)
            };
            if literal(secret) {
                keys.push(format!("github.webhook_secrets[{index}]"));
            }
        }
    }
    for key in ["token", "private_key"] {
        if literal(github.get(key)) {
            keys.push(format!("github.{key}"));
        }
    }
    if let Some(keys_list) = value
        .get("codecommit")
        .and_then(|codecommit| codecommit.get("api_keys"))
        .and_then(toml::Value::as_array)
    {
        for (index, key) in keys_list.iter().enumerate() {
            if literal(Some(key)) {
                keys.push(format!("codecommit.api_keys[{index}]"));
            }
        }
    }
    keys
}
