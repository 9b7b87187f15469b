//! What the configuration's texts mean, parsed once, at the edge, into the types the
//! code works with: networks, webhook secrets' repository scopes, GitHub's
//! authentication. A text that does not parse is a problem naming its key (with the
//! others of the file, all at once), never a value quietly dropped: a scope or an
//! allow-list that failed to parse must not widen into "every repository" or
//! "anywhere".

use std::path::PathBuf;

use ipnet::IpNet;
use secrecy::SecretString;

use super::server::parse_network;
use super::{Config, Problem};
use crate::pattern::PatternList;

/// The parsed part of a configuration; [`Config::typed`] makes it, and only a
/// configuration without problems is used.
#[derive(Debug, Clone, Default)]
pub struct Typed {
    /// Whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    pub networks: SurfaceNetworks,
    /// GitHub's webhook secrets, each with the repositories it speaks for (`None`: all).
    pub secrets: Vec<ScopedSecret>,
    pub github_auth: GithubAuth,
}

/// The allow-list of each surface (empty: anywhere); none applies to another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SurfaceNetworks {
    pub github: Vec<IpNet>,
    pub codecommit: Vec<IpNet>,
    /// The operator API and the page.
    pub operator: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub struct ScopedSecret {
    pub secret: SecretString,
    /// `None`: every repository.
    pub scope: Option<PatternList>,
}

/// How gitdispatch calls GitHub back, if it does.
#[derive(Debug, Clone, Default)]
pub enum GithubAuth {
    /// It does not: no reports, no history, no reconcile.
    #[default]
    None,
    Token(SecretString),
    App {
        app_id: u64,
        installation_id: Option<u64>,
        key: AppKey,
    },
}

impl GithubAuth {
    /// How `[github]` says to call GitHub: a token, an App with its key, or not at all
    /// (an App without a key is a problem `validate` reports).
    pub fn from_config(github: &super::GithubConfig) -> GithubAuth {
        match (&github.token, github.app_id) {
            (Some(token), _) => GithubAuth::Token(token.clone()),
            (None, Some(app_id)) => {
                let key = match (&github.private_key, &github.private_key_path) {
                    (Some(key), _) => AppKey::Inline(key.clone()),
                    (None, Some(path)) => AppKey::File(path.clone()),
                    (None, None) => return GithubAuth::None,
                };
                GithubAuth::App {
                    app_id,
                    installation_id: github.installation_id,
                    key,
                }
            }
            (None, None) => GithubAuth::None,
        }
    }
}

/// Equal when GitHub would be called the same way: the same token, or the same App
/// with the same key (what a reload compares: the client is made at start).
impl PartialEq for GithubAuth {
    fn eq(&self, other: &GithubAuth) -> bool {
        use secrecy::ExposeSecret;
        match (self, other) {
            (GithubAuth::None, GithubAuth::None) => true,
            (GithubAuth::Token(one), GithubAuth::Token(other)) => {
                one.expose_secret() == other.expose_secret()
            }
            (
                GithubAuth::App {
                    app_id,
                    installation_id,
                    key,
                },
                GithubAuth::App {
                    app_id: other_app,
                    installation_id: other_installation,
                    key: other_key,
                },
            ) => app_id == other_app && installation_id == other_installation && key == other_key,
            _ => false,
        }
    }
}

impl PartialEq for AppKey {
    fn eq(&self, other: &AppKey) -> bool {
        use secrecy::ExposeSecret;
        match (self, other) {
            (AppKey::Inline(one), AppKey::Inline(other)) => {
                one.expose_secret() == other.expose_secret()
            }
            (AppKey::File(one), AppKey::File(other)) => one == other,
            _ => false,
        }
    }
}

/// A GitHub App's private key (PEM).
#[derive(Debug, Clone)]
pub enum AppKey {
    Inline(SecretString),
    File(PathBuf),
}

impl Config {
    /// Parses what the configuration's texts mean; each text that does not parse is a
    /// problem under its key, and its value is left out (the configuration is then
    /// refused whole).
    pub fn typed(&self, problems: &mut Vec<Problem>) -> Typed {
        let mut networks = |key: &str, list: &[String]| -> Vec<IpNet> {
            list.iter()
                .enumerate()
                .filter_map(|(index, text)| match parse_network(text) {
                    Ok(network) => Some(network),
                    Err(message) => {
                        problems.push(Problem::new(format!("{key}[{index}]"), message));
                        None
                    }
                })
                .collect()
        };
        let trusted_proxies = networks("server.trusted_proxies", &self.server.trusted_proxies);
        let github_key = if self.github.allowed_networks.is_empty() {
            "server.allowed_networks"
        } else {
            "github.allowed_networks"
        };
        let surfaces = SurfaceNetworks {
            github: networks(github_key, self.github_networks()),
            codecommit: self
                .codecommit
                .as_ref()
                .map(|codecommit| {
                    networks("codecommit.allowed_networks", &codecommit.allowed_networks)
                })
                .unwrap_or_default(),
            operator: networks("api.allowed_networks", &self.api.allowed_networks),
        };
        let secrets = self
            .github
            .webhook_secrets
            .iter()
            .enumerate()
            .map(|(index, entry)| ScopedSecret {
                secret: entry.secret().clone(),
                scope: entry.repositories().and_then(|globs| {
                    PatternList::compile_repositories(globs)
                        .map_err(|errors| {
                            for (glob, message) in errors {
                                problems.push(Problem::new(
                                    format!("github.webhook_secrets[{index}].repositories[{glob}]"),
                                    message,
                                ));
                            }
                        })
                        .ok()
                }),
            })
            .collect();
        let github_auth = GithubAuth::from_config(&self.github);
        Typed {
            trusted_proxies,
            networks: surfaces,
            secrets,
            github_auth,
        }
    }
}
