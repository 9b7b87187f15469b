//! Reports to GitHub with octocrab: commit statuses (with a token) or check runs (as a
//! GitHub App), one context per pipeline and environment, and deployments of pull
//! requests' previews. An App authenticates with a JWT and exchanges it for
//! installation tokens, which octocrab caches and renews before they expire; the
//! installation of a repository is looked up once when not configured.
//!
//! GitHub's limits are respected: writes are rate-limited below its secondary limit,
//! and an answer that says to wait (`Retry-After`, an exhausted rate limit, the
//! secondary limit) pauses every report until then.

use std::sync::Arc;

use async_trait::async_trait;
use octocrab::Octocrab;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ReportError, Reported, Reporter};
use crate::execution::Action;
use crate::execution::report::{DeploymentTarget, Report, ReportState, Stage};
use crate::github::{GithubClient, encode};
use crate::text::cut;

/// GitHub keeps at most this much of a status description.
const MAX_DESCRIPTION: usize = 140;

/// Deployments of an environment made inactive when its pull request is closed: the
/// newest ones (GitHub makes older ones inactive itself when a newer one succeeds).
const DEPLOYMENTS_TO_INACTIVATE: usize = 10;

/// Writes reports to GitHub with the configured client.
pub struct GithubReporter {
    client: Arc<GithubClient>,
}

impl std::fmt::Debug for GithubReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubReporter")
            .field("check_runs", &self.client.uses_check_runs())
            .finish_non_exhaustive()
    }
}

impl GithubReporter {
    pub fn new(client: Arc<GithubClient>) -> GithubReporter {
        GithubReporter { client }
    }

    async fn get(
        &self,
        client: &Octocrab,
        path: &str,
    ) -> Result<crate::github::Answer, ReportError> {
        Ok(self.client.get(client, path).await?)
    }

    async fn write(
        &self,
        client: &Octocrab,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<crate::github::Answer, ReportError> {
        Ok(self.client.write(client, method, path, body).await?)
    }

    /// The commit status of the report's context.
    async fn commit_status(
        &self,
        client: &Octocrab,
        repository: &str,
        report: &Report,
    ) -> Result<Reported, ReportError> {
        let sha = report.target.commit.as_str();
        let answer = self
            .get(
                client,
                &format!("/repos/{repository}/commits/{sha}/statuses?per_page=100"),
            )
            .await?;
        let shown: Vec<Status> = answer.parse("the commit's statuses")?;
        // Newest first: the first of our context is the one GitHub shows.
        if let Some(current) = shown
            .iter()
            .find(|status| status.context == report.target.context)
        {
            let stage = if current.state != "pending" {
                Stage::Ended
            } else if current.description.starts_with("Started") {
                Stage::Started
            } else {
                Stage::Queued
            };
            if is_stale(report, identity(&current.description), stage) {
                return Ok(Reported::Stale);
            }
        }
        let mut body = json!({
            "state": report.state.as_str(),
            "context": report.target.context,
            "description": description(report),
        });
        if let Some(url) = &report.details_url {
            body["target_url"] = json!(url);
        }
        self.write(
            client,
            "POST",
            &format!("/repos/{repository}/statuses/{sha}"),
            &body,
        )
        .await?;
        Ok(Reported::Written)
    }

    /// The check run of the report's context, found by its external id (the
    /// execution's name).
    async fn check_run(
        &self,
        client: &Octocrab,
        repository: &str,
        report: &Report,
    ) -> Result<Reported, ReportError> {
        let sha = report.target.commit.as_str();
        let external_id = report
            .execution
            .as_ref()
            .map_or("skipped", |name| name.as_str());
        let answer = self.get(client, &format!(
                    "/repos/{repository}/commits/{sha}/check-runs?check_name={}&filter=all&per_page=100",
                    encode(&report.target.context)
                ),
            )
            .await?;
        let runs: CheckRuns = answer.parse("the commit's check runs")?;
        let existing = runs
            .check_runs
            .iter()
            .find(|run| run.external_id.as_deref() == Some(external_id));
        if let Some(run) = existing {
            let stage = match run.status.as_str() {
                "completed" => Stage::Ended,
                "in_progress" => Stage::Started,
                _ => Stage::Queued,
            };
            if stage > report.stage {
                return Ok(Reported::Stale);
            }
        } else if report.execution.is_none()
            && runs
                .check_runs
                .iter()
                .any(|run| run.external_id.as_deref() != Some("skipped"))
        {
            // A skip never hides an execution's check run.
            return Ok(Reported::Stale);
        }
        let mut body = json!({
            "name": report.target.context,
            "head_sha": sha,
            "external_id": external_id,
            "status": match report.stage {
                Stage::Queued => "queued",
                Stage::Started => "in_progress",
                Stage::Ended => "completed",
            },
            "output": {
                "title": cut(&report.description, MAX_DESCRIPTION),
                "summary": description(report),
            },
        });
        if report.stage == Stage::Ended {
            body["conclusion"] = json!(match report.state {
                ReportState::Success | ReportState::Pending => "success",
                ReportState::Failure | ReportState::Error => "failure",
            });
        }
        if let Some(url) = &report.details_url {
            body["details_url"] = json!(url);
        }
        match existing {
            Some(run) => {
                self.write(
                    client,
                    "PATCH",
                    &format!("/repos/{repository}/check-runs/{}", run.id),
                    &body,
                )
                .await?
            }
            None => {
                self.write(
                    client,
                    "POST",
                    &format!("/repos/{repository}/check-runs"),
                    &body,
                )
                .await?
            }
        };
        Ok(Reported::Written)
    }

    /// The deployment of a pull request's preview: created for its execution, then
    /// given `in_progress` and its outcome; made inactive when a teardown succeeded.
    async fn deployment(
        &self,
        client: &Octocrab,
        repository: &str,
        report: &Report,
        target: &DeploymentTarget,
    ) -> Result<Reported, ReportError> {
        let environment = encode(&target.environment);
        if report.action == Action::Teardown {
            if report.stage == Stage::Ended && report.state == ReportState::Success {
                self.inactivate(client, repository, &environment).await?;
                return Ok(Reported::Written);
            }
            return Ok(Reported::Stale);
        }
        let Some(execution) = &report.execution else {
            return Ok(Reported::Stale);
        };
        let sha = report.target.commit.as_str();
        let answer = self.get(client, &format!(
                    "/repos/{repository}/deployments?sha={sha}&environment={environment}&per_page=100"
                ),
            )
            .await?;
        let deployments: Vec<Deployment> = answer.parse("the deployments")?;
        let existing = deployments.iter().find(|deployment| {
            deployment.payload["gitdispatch"]["execution"].as_str() == Some(execution.as_str())
        });
        let id = match existing {
            Some(deployment) => deployment.id,
            None => {
                let body = json!({
                    "ref": sha,
                    "environment": target.environment,
                    "auto_merge": false,
                    "required_contexts": [],
                    "transient_environment": true,
                    "production_environment": false,
                    "description": cut(&report.target.context, MAX_DESCRIPTION),
                    "payload": {"gitdispatch": {"execution": execution.as_str()}},
                });
                let answer = self
                    .write(
                        client,
                        "POST",
                        &format!("/repos/{repository}/deployments"),
                        &body,
                    )
                    .await?;
                let created: Deployment = answer.parse("the created deployment")?;
                created.id
            }
        };
        if report.stage == Stage::Queued {
            // A new deployment shows as pending until a status says more.
            return Ok(Reported::Written);
        }
        let latest = self.latest_deployment_state(client, repository, id).await?;
        let shown = match latest.as_deref() {
            None | Some("queued") | Some("pending") => Stage::Queued,
            Some("in_progress") => Stage::Started,
            Some(_) => Stage::Ended,
        };
        if shown > report.stage {
            return Ok(Reported::Stale);
        }
        let state = match (report.stage, report.state) {
            (Stage::Ended, ReportState::Success) => "success",
            (Stage::Ended, ReportState::Failure) => "failure",
            (Stage::Ended, _) => "error",
            _ => "in_progress",
        };
        let mut body = json!({
            "state": state,
            "description": cut(&report.description, MAX_DESCRIPTION),
            "auto_inactive": true,
        });
        if let Some(url) = &report.details_url {
            body["log_url"] = json!(url);
        }
        if let Some(url) = &report.environment_url {
            body["environment_url"] = json!(url);
        }
        self.write(
            client,
            "POST",
            &format!("/repos/{repository}/deployments/{id}/statuses"),
            &body,
        )
        .await?;
        Ok(Reported::Written)
    }

    async fn latest_deployment_state(
        &self,
        client: &Octocrab,
        repository: &str,
        id: u64,
    ) -> Result<Option<String>, ReportError> {
        let answer = self
            .get(
                client,
                &format!("/repos/{repository}/deployments/{id}/statuses?per_page=1"),
            )
            .await?;
        let statuses: Vec<DeploymentStatus> = answer.parse("the deployment's statuses")?;
        Ok(statuses.into_iter().next().map(|status| status.state))
    }

    /// Makes the newest deployments of an environment inactive.
    async fn inactivate(
        &self,
        client: &Octocrab,
        repository: &str,
        environment: &str,
    ) -> Result<(), ReportError> {
        let answer = self.get(client, &format!(
                    "/repos/{repository}/deployments?environment={environment}&per_page={DEPLOYMENTS_TO_INACTIVATE}"
                ),
            )
            .await?;
        let deployments: Vec<Deployment> = answer.parse("the deployments")?;
        for deployment in deployments {
            let latest = self
                .latest_deployment_state(client, repository, deployment.id)
                .await?;
            if latest.as_deref() == Some("inactive") {
                continue;
            }
            self.write(
                client,
                "POST",
                &format!("/repos/{repository}/deployments/{}/statuses", deployment.id),
                &json!({"state": "inactive", "description": "The pull request was closed and its preview torn down."}),
            )
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Reporter for GithubReporter {
    async fn report(&self, report: &Report) -> Result<Reported, ReportError> {
        let repository = &report.target.repository;
        let client = self.client.for_repository(repository).await?;
        let mut reported = Reported::Stale;
        // A teardown shows only on its deployment: the commit keeps the state of what
        // was deployed from it.
        if report.action == Action::Deploy {
            let written = if self.client.uses_check_runs() {
                self.check_run(&client, repository, report).await?
            } else {
                self.commit_status(&client, repository, report).await?
            };
            if written == Reported::Written {
                reported = Reported::Written;
            }
        }
        if let Some(target) = &report.target.deployment
            && self.deployment(&client, repository, report, target).await? == Reported::Written
        {
            reported = Reported::Written;
        }
        Ok(reported)
    }
}

/// The description shown: the words, and the execution they are about, so that a later
/// report can tell whose state is shown.
fn description(report: &Report) -> String {
    match &report.execution {
        Some(name) => {
            let suffix = format!(" ({name})");
            let words = cut(
                &report.description,
                MAX_DESCRIPTION.saturating_sub(suffix.len()),
            );
            format!("{words}{suffix}")
        }
        None => cut(&report.description, MAX_DESCRIPTION).to_string(),
    }
}

/// The execution a description we wrote is about.
fn identity(description: &str) -> Option<&str> {
    let inner = description.strip_suffix(')')?;
    let open = inner.rfind(" (")?;
    Some(&inner[open + 2..])
}

/// Whether what is shown is of a later stage of the same execution than the report
/// (or an execution's state, which a skip must not hide).
fn is_stale(report: &Report, shown: Option<&str>, shown_stage: Stage) -> bool {
    match (&report.execution, shown) {
        (Some(ours), Some(theirs)) => ours.as_str() == theirs && shown_stage > report.stage,
        (None, Some(_)) => true,
        _ => false,
    }
}

#[derive(Deserialize)]
struct Status {
    state: String,
    #[serde(default)]
    description: String,
    context: String,
}

#[derive(Deserialize)]
struct CheckRuns {
    check_runs: Vec<CheckRun>,
}

#[derive(Deserialize)]
struct CheckRun {
    id: u64,
    #[serde(default)]
    external_id: Option<String>,
    status: String,
}

#[derive(Deserialize)]
struct Deployment {
    id: u64,
    #[serde(default)]
    payload: Value,
}

#[derive(Deserialize)]
struct DeploymentStatus {
    state: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::CommitSha;
    use crate::execution::name::ExecutionName;
    use crate::execution::report::ReportTarget;

    fn report(stage: Stage, execution: Option<&str>) -> Report {
        Report::new(
            ReportTarget {
                repository: "acme/api".into(),
                commit: CommitSha::parse(&"a".repeat(40)).unwrap(),
                context: "gitdispatch/deploy/acceptance".into(),
                deployment: None,
            },
            execution.map(|name| ExecutionName::parse(name).unwrap()),
            Action::Deploy,
            stage,
            ReportState::Pending,
            "Started",
        )
    }

    #[test]
    fn descriptions_name_their_execution_and_later_stages_are_kept() {
        let name = "deploy-acceptance-aaaaaaa-0123456789abcdef0123";
        let started = report(Stage::Started, Some(name));
        let text = description(&started);
        assert_eq!(text, format!("Started ({name})"));
        assert!(text.len() <= MAX_DESCRIPTION);
        assert_eq!(identity(&text), Some(name));
        assert_eq!(identity("Skipped: paths"), None);
        assert!(is_stale(&started, Some(name), Stage::Ended));
        assert!(!is_stale(&started, Some(name), Stage::Queued));
        assert!(!is_stale(&started, Some("another-name"), Stage::Ended));
        assert!(is_stale(
            &report(Stage::Ended, None),
            Some(name),
            Stage::Queued
        ));
        assert!(!is_stale(&report(Stage::Ended, None), None, Stage::Ended));
        let mut long = started.clone();
        long.description = "x".repeat(300);
        assert_eq!(description(&long).len(), MAX_DESCRIPTION);
        assert_eq!(identity(&description(&long)), Some(name));
    }
}
