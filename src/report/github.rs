//! Reports to GitHub with octocrab: commit statuses (with a token) or check runs (as a
//! GitHub App), one context per pipeline and environment, and deployments of pull
//! requests' previews. An App authenticates with a JWT and exchanges it for
//! installation tokens, which octocrab caches and renews before they expire; the
//! installation of a repository is looked up once when not configured.
//!
//! GitHub's limits are respected: writes are rate-limited below its secondary limit,
//! and an answer that says to wait (`Retry-After`, an exhausted rate limit, the
//! secondary limit) pauses every report until then.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::http::{HeaderMap, StatusCode};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ReportError, Reported, Reporter};
use crate::config::GithubConfig;
use crate::execution::Action;
use crate::execution::report::{DeploymentTarget, Report, ReportState, Stage};
use crate::text::cut;

/// GitHub keeps at most this much of a status description.
const MAX_DESCRIPTION: usize = 140;

/// How long one call to GitHub may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A burst of writes may take this many seconds' worth of `reports_per_minute` at once.
const WRITE_BURST_SECONDS: u32 = 10;

/// GitHub asks to wait at least a minute after its secondary rate limit when it does
/// not say how long.
const SECONDARY_LIMIT_PAUSE: Duration = Duration::from_secs(60);

/// Deployments of an environment made inactive when its pull request is closed: the
/// newest ones (GitHub makes older ones inactive itself when a newer one succeeds).
const DEPLOYMENTS_TO_INACTIVATE: usize = 10;

/// Why the reporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read github.private_key_path {path}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the GitHub App's private key is not an RSA key in PEM")]
    Key(#[source] octocrab::Error),
    #[error("cannot set up the GitHub client for github.api_url")]
    Client(#[source] octocrab::Error),
}

/// How calls are authenticated.
enum Clients {
    Token(Arc<Octocrab>),
    App {
        /// Authenticates as the App itself (a JWT): finds installations.
        app: Arc<Octocrab>,
        /// The configured installation, if any.
        installation: Option<u64>,
        /// Installations found, by repository (lowercase).
        by_repository: Mutex<HashMap<String, u64>>,
        /// One client per installation, each caching its installation token (kept
        /// behind an `Arc`: a cloned client would cache a token of its own).
        by_installation: Mutex<HashMap<u64, Arc<Octocrab>>>,
    },
}

pub struct GithubReporter {
    clients: Clients,
    check_runs: bool,
    writes: DefaultDirectRateLimiter,
    /// GitHub asked us to wait until then.
    paused_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for GithubReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubReporter")
            .field("check_runs", &self.check_runs)
            .finish_non_exhaustive()
    }
}

/// An answer from GitHub.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl GithubReporter {
    /// The reporter `[github]` asks for; `None` when it gives neither a token nor an
    /// App (reporting is off).
    pub fn from_config(config: &GithubConfig) -> Result<Option<GithubReporter>, SetupError> {
        let builder = || {
            Octocrab::builder()
                .base_uri(config.api_url.as_str())
                .map_err(SetupError::Client)
                .map(|builder| {
                    builder
                        .set_connect_timeout(Some(CALL_TIMEOUT))
                        .set_read_timeout(Some(CALL_TIMEOUT))
                        .set_write_timeout(Some(CALL_TIMEOUT))
                })
        };
        let clients = if let Some(token) = &config.token {
            Clients::Token(Arc::new(
                builder()?
                    .personal_token(token.expose_secret().to_string())
                    .build()
                    .map_err(SetupError::Client)?,
            ))
        } else if let Some(app_id) = config.app_id {
            let pem = match (&config.private_key, &config.private_key_path) {
                (Some(key), _) => key.expose_secret().as_bytes().to_vec(),
                (None, Some(path)) => {
                    std::fs::read(path).map_err(|source| SetupError::KeyFile {
                        path: path.display().to_string(),
                        source,
                    })?
                }
                // Configuration validation requires a key with an App.
                (None, None) => return Ok(None),
            };
            let app = builder()?
                .app_from_rsa_pem(AppId(app_id), pem)
                .map_err(SetupError::Key)?
                .build()
                .map_err(SetupError::Client)?;
            Clients::App {
                app: Arc::new(app),
                installation: config.installation_id,
                by_repository: Mutex::new(HashMap::new()),
                by_installation: Mutex::new(HashMap::new()),
            }
        } else {
            return Ok(None);
        };
        let per_minute = NonZeroU32::new(config.reports_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst =
            NonZeroU32::new(per_minute.get() * WRITE_BURST_SECONDS / 60).unwrap_or(NonZeroU32::MIN);
        Ok(Some(GithubReporter {
            clients,
            check_runs: config.uses_check_runs(),
            writes: RateLimiter::direct(Quota::per_minute(per_minute).allow_burst(burst)),
            paused_until: Mutex::new(None),
        }))
    }

    /// Whether reports are check runs (an App) or commit statuses.
    pub fn uses_check_runs(&self) -> bool {
        self.check_runs
    }

    /// Refuses at once while GitHub asked us to wait.
    fn check_paused(&self) -> Result<(), ReportError> {
        let paused = self.paused_until.lock().expect("pause lock");
        match *paused {
            Some(until) if until > Instant::now() => Err(ReportError::Busy {
                retry_after: until - Instant::now(),
            }),
            _ => Ok(()),
        }
    }

    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock().expect("pause lock");
        if paused.is_none_or(|known| known < until) {
            *paused = Some(until);
        }
    }

    /// Takes one write from the rate limit, or says how long to wait for it.
    fn take_write(&self) -> Result<(), ReportError> {
        self.writes.check().map_err(|not_until| ReportError::Busy {
            retry_after: not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            )),
        })
    }

    /// The client that may write to `repository`.
    async fn client_for(&self, repository: &str) -> Result<Arc<Octocrab>, ReportError> {
        match &self.clients {
            Clients::Token(client) => Ok(client.clone()),
            Clients::App {
                app,
                installation,
                by_repository,
                by_installation,
            } => {
                let key = repository.to_ascii_lowercase();
                let known = installation.or_else(|| {
                    by_repository
                        .lock()
                        .expect("installations lock")
                        .get(&key)
                        .copied()
                });
                let id = match known {
                    Some(id) => id,
                    None => {
                        let answer = self
                            .call(
                                app,
                                "GET",
                                &format!("/repos/{repository}/installation"),
                                None,
                            )
                            .await?;
                        let found: Installation = parse(&answer, "the repository's installation")?;
                        by_repository
                            .lock()
                            .expect("installations lock")
                            .insert(key, found.id);
                        found.id
                    }
                };
                let mut clients = by_installation.lock().expect("installation clients lock");
                if let Some(client) = clients.get(&id) {
                    return Ok(client.clone());
                }
                let client = Arc::new(app.installation(InstallationId(id)).map_err(|error| {
                    ReportError::Permanent {
                        message: format!("cannot act as installation {id}"),
                        source: Some(Box::new(error)),
                    }
                })?);
                clients.insert(id, client.clone());
                Ok(client)
            }
        }
    }

    /// One call to GitHub; a refusal is an error that says whether to try again.
    async fn call(
        &self,
        client: &Octocrab,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ReportError> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let sent = match method {
            "GET" => client._get(path).await,
            "POST" => client._post(path, body).await,
            "PATCH" => client._patch(path, body).await,
            other => unreachable!("no {other} call is made"),
        };
        let response = sent.map_err(|error| ReportError::Retryable {
            message: format!("{what} failed"),
            retry_after: None,
            source: Some(Box::new(error)),
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body =
            client
                .body_to_string(response)
                .await
                .map_err(|error| ReportError::Retryable {
                    message: format!("{what}: reading the answer failed"),
                    retry_after: None,
                    source: Some(Box::new(error)),
                })?;
        let answer = Answer {
            status,
            headers,
            body,
        };
        if status.is_success() {
            return Ok(answer);
        }
        let message = serde_json::from_str::<Value>(&answer.body)
            .ok()
            .and_then(|value| value["message"].as_str().map(str::to_string))
            .unwrap_or_default();
        let shown = format!("{what}: GitHub answered {status}: {}", cut(&message, 200));
        if let Some(wait) = rate_limit_wait(&answer, &message) {
            self.pause(wait);
            return Err(ReportError::retryable(shown, Some(wait)));
        }
        if status.is_server_error() || status == StatusCode::UNAUTHORIZED {
            // A failing service, or credentials an operator can renew.
            return Err(ReportError::retryable(shown, None));
        }
        Err(ReportError::permanent(shown))
    }

    /// A write: counted against the rate limit first.
    async fn write(
        &self,
        client: &Octocrab,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<Answer, ReportError> {
        self.take_write()?;
        self.call(client, method, path, Some(body)).await
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
            .call(
                client,
                "GET",
                &format!("/repos/{repository}/commits/{sha}/statuses?per_page=100"),
                None,
            )
            .await?;
        let shown: Vec<Status> = parse(&answer, "the commit's statuses")?;
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
        let answer = self
            .call(
                client,
                "GET",
                &format!(
                    "/repos/{repository}/commits/{sha}/check-runs?check_name={}&filter=all&per_page=100",
                    encode(&report.target.context)
                ),
                None,
            )
            .await?;
        let runs: CheckRuns = parse(&answer, "the commit's check runs")?;
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
        let answer = self
            .call(
                client,
                "GET",
                &format!(
                    "/repos/{repository}/deployments?sha={sha}&environment={environment}&per_page=100"
                ),
                None,
            )
            .await?;
        let deployments: Vec<Deployment> = parse(&answer, "the deployments")?;
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
                let created: Deployment = parse(&answer, "the created deployment")?;
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
            .call(
                client,
                "GET",
                &format!("/repos/{repository}/deployments/{id}/statuses?per_page=1"),
                None,
            )
            .await?;
        let statuses: Vec<DeploymentStatus> = parse(&answer, "the deployment's statuses")?;
        Ok(statuses.into_iter().next().map(|status| status.state))
    }

    /// Makes the newest deployments of an environment inactive.
    async fn inactivate(
        &self,
        client: &Octocrab,
        repository: &str,
        environment: &str,
    ) -> Result<(), ReportError> {
        let answer = self
            .call(
                client,
                "GET",
                &format!(
                    "/repos/{repository}/deployments?environment={environment}&per_page={DEPLOYMENTS_TO_INACTIVATE}"
                ),
                None,
            )
            .await?;
        let deployments: Vec<Deployment> = parse(&answer, "the deployments")?;
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
        self.check_paused()?;
        let repository = &report.target.repository;
        let valid = repository.split('/').count() == 2
            && repository
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-_./".contains(&byte));
        if !valid {
            return Err(ReportError::permanent(format!(
                "{repository:?} is not a GitHub repository name"
            )));
        }
        let client = self.client_for(repository).await?;
        let mut reported = Reported::Stale;
        // A teardown shows only on its deployment: the commit keeps the state of what
        // was deployed from it.
        if report.action == Action::Deploy {
            let written = if self.check_runs {
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

/// How long GitHub asks us to wait, when it refused for a rate limit: its
/// `Retry-After`, the reset of an exhausted primary limit, or a minute for the
/// secondary limit.
fn rate_limit_wait(answer: &Answer, message: &str) -> Option<Duration> {
    if !matches!(answer.status.as_u16(), 403 | 429) {
        return None;
    }
    let header = |name: &str| {
        answer
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
    };
    if let Some(seconds) = header("retry-after") {
        return Some(Duration::from_secs(seconds.max(1)));
    }
    if header("x-ratelimit-remaining") == Some(0) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let reset = header("x-ratelimit-reset").unwrap_or(now + 60);
        return Some(Duration::from_secs(reset.saturating_sub(now).max(1)));
    }
    let message = message.to_ascii_lowercase();
    (answer.status.as_u16() == 429 || message.contains("rate limit"))
        .then_some(SECONDARY_LIMIT_PAUSE)
}

fn parse<T: serde::de::DeserializeOwned>(answer: &Answer, what: &str) -> Result<T, ReportError> {
    serde_json::from_str(&answer.body).map_err(|error| ReportError::Retryable {
        message: format!("{what}: GitHub's answer is not what it documents"),
        retry_after: None,
        source: Some(Box::new(error)),
    })
}

/// A query value, percent-encoded.
fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
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
struct Installation {
    id: u64,
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
