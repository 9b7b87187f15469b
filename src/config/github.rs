//! `[github]`: the webhook secrets, and the token for the parts that call GitHub.

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
    /// API token, for the parts that call GitHub back.
    #[serde(default)]
    pub token: Option<SecretString>,
    /// Commits of one push planned at most (GitHub lists at most 2,048): a push that
    /// lists more keeps its newest, the head among them, and is logged and counted as
    /// truncated.
    #[serde(default = "default_max_commits_per_push")]
    pub max_commits_per_push: usize,
}

fn default_max_commits_per_push() -> usize {
    2048
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
            max_commits_per_push: default_max_commits_per_push(),
        }
    }
}

impl GithubConfig {
    /// `needed`: whether routes take GitHub events, so that a secret must exist.
    pub(super) fn validate(&self, needed: bool, problems: &mut Vec<Problem>) {
        if needed && self.webhook_secrets.is_empty() {
            problems.push(Problem::new(
                "github.webhook_secrets",
                "is empty, but routes take GitHub events: at least one secret is needed to verify deliveries",
            ));
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
    if literal(github.get("token")) {
        keys.push("github.token".to_string());
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
