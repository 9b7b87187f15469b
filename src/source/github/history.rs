//! A GitHub repository's history through its API, for a push whose delivery could not
//! list every commit (GitHub lists 2,048 at most): the compare API, paged (without
//! paging it lists at most 250 commits), gives `git log before..after` oldest first;
//! each commit's changed paths come from the commit API, one call per commit, only
//! when a route needs them.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::event::{Commit, CommitSha};
use crate::github::{CallError, GithubClient, RepositoryClient};
use crate::source::{CommitHistory, HistoryError, Walk, WalkEnd};

/// Commits per page of the compare API (its maximum).
const PER_PAGE: usize = 100;

/// GitHub repositories' histories, by `owner/name`.
pub struct GithubHistory {
    client: Arc<GithubClient>,
}

impl GithubHistory {
    pub fn new(client: Arc<GithubClient>) -> GithubHistory {
        GithubHistory { client }
    }

    async fn compare_page(
        &self,
        client: &RepositoryClient,
        repository: &str,
        before: &CommitSha,
        after: &CommitSha,
        page: usize,
    ) -> Result<Compare, CallError> {
        self.client
            .get(
                client,
                &format!(
                    "/repos/{repository}/compare/{before}...{after}?per_page={PER_PAGE}&page={page}"
                ),
            )
            .await?
            .parse("the comparison")
    }

    /// One commit, with its changed paths.
    async fn commit(
        &self,
        client: &RepositoryClient,
        repository: &str,
        sha: &str,
    ) -> Result<CompareCommit, CallError> {
        self.client
            .get(client, &format!("/repos/{repository}/commits/{sha}"))
            .await?
            .parse("the commit")
    }
}

fn history_error(error: CallError) -> HistoryError {
    match error {
        CallError::Retryable {
            message, source, ..
        } => HistoryError::Retryable { message, source },
        CallError::Busy { .. } => HistoryError::Retryable {
            message: error.to_string(),
            source: None,
        },
        CallError::Permanent { message, source } => HistoryError::Permanent { message, source },
    }
}

#[async_trait]
impl CommitHistory for GithubHistory {
    async fn walk(
        &self,
        repository: &str,
        before: &CommitSha,
        after: &CommitSha,
        max: usize,
        paths: bool,
    ) -> Result<Walk, HistoryError> {
        let client = self
            .client
            .for_repository(repository)
            .await
            .map_err(history_error)?;
        let first = match self
            .compare_page(&client, repository, before, after, 1)
            .await
        {
            Ok(first) => first,
            // The old head is gone (a force-push and a garbage collection): which
            // commits are new cannot be told; the new head runs.
            Err(error) if error.is_not_found() => {
                let head = self
                    .commit(&client, repository, after.as_str())
                    .await
                    .map_err(history_error)?;
                return Ok(Walk {
                    commits: vec![head.into_commit(paths)?],
                    end: WalkEnd::Unreachable,
                });
            }
            Err(error) => return Err(history_error(error)),
        };
        if first.status == "behind" || first.total_commits == 0 {
            // The ref moved back (a force-push to an older commit): nothing new, the
            // commit it now points at runs.
            let head = self
                .commit(&client, repository, after.as_str())
                .await
                .map_err(history_error)?;
            return Ok(Walk {
                commits: vec![head.into_commit(paths)?],
                end: WalkEnd::Unreachable,
            });
        }
        // Oldest first, across pages; only the pages holding the newest `max`.
        let total = first.total_commits;
        let skip = total.saturating_sub(max);
        let first_page = skip / PER_PAGE + 1;
        let last_page = total.div_ceil(PER_PAGE);
        let mut listed = Vec::with_capacity(total - skip);
        for page in first_page..=last_page {
            let commits = if page == 1 {
                first.commits.clone()
            } else {
                self.compare_page(&client, repository, before, after, page)
                    .await
                    .map_err(history_error)?
                    .commits
            };
            let offset = (page - 1) * PER_PAGE;
            for (index, commit) in commits.into_iter().enumerate() {
                if offset + index >= skip {
                    listed.push(commit);
                }
            }
        }
        let mut commits = Vec::with_capacity(listed.len());
        for listed in listed {
            let commit = if paths {
                self.commit(&client, repository, &listed.sha)
                    .await
                    .map_err(history_error)?
            } else {
                listed
            };
            commits.push(commit.into_commit(paths)?);
        }
        Ok(Walk {
            commits,
            end: if skip > 0 {
                WalkEnd::Bound
            } else {
                WalkEnd::Reached
            },
        })
    }
}

#[derive(Deserialize)]
struct Compare {
    #[serde(default)]
    status: String,
    #[serde(default)]
    total_commits: usize,
    #[serde(default)]
    commits: Vec<CompareCommit>,
}

#[derive(Clone, Deserialize)]
struct CompareCommit {
    sha: String,
    commit: CommitDetail,
    #[serde(default)]
    author: Option<Login>,
    /// Only in the commit API's answer.
    #[serde(default)]
    files: Vec<ChangedFile>,
}

#[derive(Clone, Deserialize)]
struct CommitDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    author: Option<GitAuthor>,
}

#[derive(Clone, Deserialize)]
struct GitAuthor {
    #[serde(default)]
    name: String,
}

#[derive(Clone, Deserialize)]
struct Login {
    #[serde(default)]
    login: String,
}

#[derive(Clone, Deserialize)]
struct ChangedFile {
    filename: String,
    #[serde(default)]
    previous_filename: Option<String>,
}

impl CompareCommit {
    /// The commit as a push payload would list it: the author's login where GitHub
    /// knows it, else the name in the commit.
    fn into_commit(self, paths: bool) -> Result<Commit, HistoryError> {
        let id = CommitSha::parse(&self.sha).map_err(|error| HistoryError::Permanent {
            message: format!("GitHub listed {:?}: {error}", self.sha),
            source: None,
        })?;
        let author = self
            .author
            .map(|login| login.login)
            .filter(|login| !login.is_empty())
            .or_else(|| self.commit.author.map(|author| author.name))
            .unwrap_or_default();
        let changed_paths = paths.then(|| {
            let mut changed = Vec::new();
            for file in self.files {
                changed.extend(file.previous_filename);
                changed.push(file.filename);
            }
            changed
        });
        Ok(Commit {
            id,
            message: self.commit.message,
            author,
            changed_paths,
        })
    }
}
