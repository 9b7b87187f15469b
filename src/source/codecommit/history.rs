//! A CodeCommit repository's history through its API: `BatchGetCommits` along the
//! first-parent chain, `GetDifferences` for each commit's changed paths. A client per
//! region, made on first use from the daemon's AWS settings.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_codecommit::Client;
use aws_sdk_codecommit::config::http::HttpResponse;
use aws_sdk_codecommit::error::{ProvideErrorMetadata, SdkError};

use crate::event::{Commit, CommitSha};
use crate::source::{CommitHistory, HistoryError, Walk, WalkEnd};

/// Error codes that say the request itself is wrong; the rest are worth a retry.
const PERMANENT_CODES: &[&str] = &[
    "RepositoryDoesNotExistException",
    "InvalidRepositoryNameException",
    "CommitIdDoesNotExistException",
    "InvalidCommitIdException",
    "CommitDoesNotExistException",
];

fn classify<E>(what: &str, error: SdkError<E, HttpResponse>) -> HistoryError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = error.code().unwrap_or_default().to_string();
    let message = format!(
        "{what}: {}",
        if code.is_empty() {
            error.to_string()
        } else {
            code.clone()
        }
    );
    if PERMANENT_CODES.contains(&code.as_str()) {
        HistoryError::Permanent {
            message,
            source: Some(Box::new(error)),
        }
    } else {
        HistoryError::Retryable {
            message,
            source: Some(Box::new(error)),
        }
    }
}

/// CodeCommit repositories' histories, by `<region>/<name>`.
pub struct CodeCommitHistory {
    settings: SdkConfig,
    clients: Mutex<HashMap<String, Client>>,
}

impl CodeCommitHistory {
    pub fn new(settings: SdkConfig) -> CodeCommitHistory {
        CodeCommitHistory {
            settings,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, region: &str) -> Client {
        let mut clients = self.clients.lock().expect("codecommit clients lock");
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                Client::from_conf(
                    aws_sdk_codecommit::config::Builder::from(&self.settings)
                        .region(aws_sdk_codecommit::config::Region::new(region.to_string()))
                        .build(),
                )
            })
            .clone()
    }

    async fn commit(
        &self,
        client: &Client,
        repository: &str,
        id: &str,
    ) -> Result<aws_sdk_codecommit::types::Commit, HistoryError> {
        let output = client
            .batch_get_commits()
            .repository_name(repository)
            .commit_ids(id)
            .send()
            .await
            .map_err(|error| classify("BatchGetCommits failed", error))?;
        if let Some(error) = output.errors().first() {
            return Err(HistoryError::Permanent {
                message: format!(
                    "commit {id} of {repository}: {}",
                    error.error_code().unwrap_or("not found")
                ),
                source: None,
            });
        }
        output
            .commits()
            .first()
            .cloned()
            .ok_or_else(|| HistoryError::Permanent {
                message: format!("commit {id} of {repository} was not returned"),
                source: None,
            })
    }

    /// The paths a commit changed against its first parent (all of them, for a root).
    async fn changed_paths(
        &self,
        client: &Client,
        repository: &str,
        id: &str,
        parent: Option<&str>,
    ) -> Result<Vec<String>, HistoryError> {
        let mut paths = BTreeSet::new();
        let mut token = None;
        loop {
            let mut call = client
                .get_differences()
                .repository_name(repository)
                .after_commit_specifier(id)
                .set_next_token(token);
            if let Some(parent) = parent {
                call = call.before_commit_specifier(parent);
            }
            let output = call
                .send()
                .await
                .map_err(|error| classify("GetDifferences failed", error))?;
            for difference in output.differences() {
                for blob in [difference.before_blob(), difference.after_blob()]
                    .into_iter()
                    .flatten()
                {
                    if let Some(path) = blob.path() {
                        paths.insert(path.to_string());
                    }
                }
            }
            token = output.next_token().map(str::to_string);
            if token.is_none() {
                return Ok(paths.into_iter().collect());
            }
        }
    }
}

#[async_trait]
impl CommitHistory for CodeCommitHistory {
    async fn walk(
        &self,
        repository: &str,
        before: &CommitSha,
        after: &CommitSha,
        max: usize,
        paths: bool,
    ) -> Result<Walk, HistoryError> {
        let Some((region, name)) = repository.split_once('/') else {
            return Err(HistoryError::Permanent {
                message: format!("{repository:?} is not <region>/<name>"),
                source: None,
            });
        };
        let client = self.client(region);
        let mut newest_first = Vec::new();
        let mut current = after.clone();
        let end = loop {
            if current == *before {
                break WalkEnd::Reached;
            }
            if newest_first.len() >= max {
                break WalkEnd::Bound;
            }
            let commit = self.commit(&client, name, current.as_str()).await?;
            let parent = commit.parents().first().cloned();
            let changed_paths = if paths {
                Some(
                    self.changed_paths(&client, name, current.as_str(), parent.as_deref())
                        .await?,
                )
            } else {
                None
            };
            newest_first.push(Commit {
                id: current.clone(),
                message: commit.message().unwrap_or_default().to_string(),
                author: commit
                    .author()
                    .and_then(|author| author.name())
                    .unwrap_or_default()
                    .to_string(),
                changed_paths,
            });
            match parent {
                Some(parent) => {
                    current =
                        CommitSha::parse(&parent).map_err(|error| HistoryError::Permanent {
                            message: format!("parent of {current}: {error}"),
                            source: None,
                        })?;
                }
                None => break WalkEnd::Unreachable,
            }
        };
        if end == WalkEnd::Unreachable {
            // Which commits the push added cannot be told: the new head only.
            newest_first.truncate(1);
        }
        newest_first.reverse();
        Ok(Walk {
            commits: newest_first,
            end,
        })
    }
}
