//! The GitHub API as gitdispatch calls it back (reports, a large push's commits,
//! redeliveries, reconcile): octocrab, authenticated with a token or as a GitHub App.
//! An App signs a JWT and exchanges it for installation tokens, which octocrab caches
//! and renews before they expire; the installation of a repository is looked up once
//! when not configured.
//!
//! GitHub's limits are respected here, for every caller: writes are rate-limited below
//! its secondary limit, and an answer that says to wait (`Retry-After`, an exhausted
//! rate limit, the secondary limit) pauses every call until then.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{AppKey, GithubAuth, GithubConfig};
use crate::error::BoxError;
use crate::text::cut;

/// How long one call to GitHub may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A burst of writes may take this many seconds' worth of `reports_per_minute` at once.
const WRITE_BURST_SECONDS: u32 = 10;

/// GitHub asks to wait at least a minute after its secondary rate limit when it does
/// not say how long.
const SECONDARY_LIMIT_PAUSE: Duration = Duration::from_secs(60);

/// Why the client could not be set up.
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

/// Why a call did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// GitHub is failing, limiting us or unreachable: try again, not before
    /// `retry_after` when it said so.
    #[error("{message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
        #[source]
        source: Option<BoxError>,
    },
    /// Not sent: our own rate limit, or a pause GitHub asked for, says to come back
    /// after `retry_after`.
    #[error("calls to GitHub wait {} ms for the rate limit", retry_after.as_millis())]
    Busy { retry_after: Duration },
    /// Trying again cannot help (no such repository, a refused request).
    #[error("{message}")]
    Permanent {
        message: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl CallError {
    fn retryable(message: impl Into<String>, retry_after: Option<Duration>) -> CallError {
        CallError::Retryable {
            message: message.into(),
            retry_after,
            source: None,
        }
    }

    /// The HTTP status GitHub answered, when the error is a refusal of its own.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CallError::Permanent { message, .. } if message.contains(" 404 "))
    }
}

/// How calls are authenticated.
enum Auth {
    Token(Arc<Octocrab>),
    App {
        /// Authenticates as the App itself (a JWT): finds installations, reads the
        /// App's hook deliveries.
        app: Arc<Octocrab>,
        /// The configured installation, if any.
        installation: Option<u64>,
        /// Installations found, by repository (lowercase) or `org:<name>`.
        by_repository: Mutex<HashMap<String, u64>>,
        /// One client per installation, each caching its installation token (kept
        /// behind an `Arc`: a cloned client would cache a token of its own).
        by_installation: Mutex<HashMap<u64, Arc<Octocrab>>>,
    },
}

/// An answer from GitHub.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// The body, read as GitHub documents it.
    pub fn parse<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, CallError> {
        serde_json::from_str(&self.body).map_err(|error| CallError::Retryable {
            message: format!("{what}: GitHub's answer is not what it documents"),
            retry_after: None,
            source: Some(Box::new(error)),
        })
    }

    /// The `next` page of a paged answer (its `Link` header), as a path and query.
    pub fn next_page(&self) -> Option<String> {
        let link = self.headers.get("link")?.to_str().ok()?;
        link.split(',').find_map(|part| {
            let (url, rel) = part.split_once(';')?;
            if !rel.contains("rel=\"next\"") {
                return None;
            }
            let url = url.trim().trim_start_matches('<').trim_end_matches('>');
            let uri: axum::http::Uri = url.parse().ok()?;
            uri.path_and_query().map(|path| path.as_str().to_string())
        })
    }
}

/// The GitHub API, as `[github]` says to call it.
pub struct GithubClient {
    auth: Auth,
    /// The path GitHub's API lives under (`/api/v3` on Enterprise Server), which a
    /// `Link` header's URL repeats.
    base_path: String,
    check_runs: bool,
    writes: DefaultDirectRateLimiter,
    /// GitHub asked us to wait until then.
    paused_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for GithubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubClient")
            .field("check_runs", &self.check_runs)
            .finish_non_exhaustive()
    }
}

/// A client authenticated for one repository (a token, or its installation's).
pub type RepositoryClient = Arc<Octocrab>;

impl GithubClient {
    /// The client `[github]` asks for; `None` when it gives neither a token nor an App
    /// (nothing calls GitHub back).
    /// The client `[github]` configures (`None` when it calls GitHub by neither a token
    /// nor an App), authenticated as `auth` says.
    pub fn from_config(
        config: &GithubConfig,
        auth: &GithubAuth,
    ) -> Result<Option<GithubClient>, SetupError> {
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
        let auth = match auth {
            GithubAuth::None => return Ok(None),
            GithubAuth::Token(token) => Auth::Token(Arc::new(
                builder()?
                    .personal_token(token.expose_secret().to_string())
                    .build()
                    .map_err(SetupError::Client)?,
            )),
            GithubAuth::App {
                app_id,
                installation_id,
                key,
            } => {
                let pem = match key {
                    AppKey::Inline(key) => key.expose_secret().as_bytes().to_vec(),
                    AppKey::File(path) => {
                        std::fs::read(path).map_err(|source| SetupError::KeyFile {
                            path: path.display().to_string(),
                            source,
                        })?
                    }
                };
                let app = builder()?
                    .app_from_rsa_pem(AppId(*app_id), pem)
                    .map_err(SetupError::Key)?
                    .build()
                    .map_err(SetupError::Client)?;
                Auth::App {
                    app: Arc::new(app),
                    installation: *installation_id,
                    by_repository: Mutex::new(HashMap::new()),
                    by_installation: Mutex::new(HashMap::new()),
                }
            }
        };
        let per_minute = NonZeroU32::new(config.reports_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst =
            NonZeroU32::new(per_minute.get() * WRITE_BURST_SECONDS / 60).unwrap_or(NonZeroU32::MIN);
        let base_path = config
            .api_url
            .parse::<axum::http::Uri>()
            .map(|uri| uri.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        Ok(Some(GithubClient {
            auth,
            base_path,
            check_runs: config.uses_check_runs(),
            writes: RateLimiter::direct(Quota::per_minute(per_minute).allow_burst(burst)),
            paused_until: Mutex::new(None),
        }))
    }

    /// Whether reports are check runs (an App) or commit statuses.
    pub fn uses_check_runs(&self) -> bool {
        self.check_runs
    }

    /// The App's own client (a JWT), when gitdispatch runs as an App.
    pub fn app(&self) -> Option<RepositoryClient> {
        match &self.auth {
            Auth::App { app, .. } => Some(app.clone()),
            Auth::Token(_) => None,
        }
    }

    /// Refuses at once while GitHub asked us to wait.
    fn check_paused(&self) -> Result<(), CallError> {
        let paused = self.paused_until.lock().expect("pause lock");
        match *paused {
            Some(until) if until > Instant::now() => Err(CallError::Busy {
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
    fn take_write(&self) -> Result<(), CallError> {
        self.writes.check().map_err(|not_until| CallError::Busy {
            retry_after: not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            )),
        })
    }

    /// The client that may act on `repository` (`owner/name`).
    pub async fn for_repository(&self, repository: &str) -> Result<RepositoryClient, CallError> {
        let valid = repository.split('/').count() == 2
            && repository
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-_./".contains(&byte));
        if !valid {
            return Err(CallError::Permanent {
                message: format!("{repository:?} is not a GitHub repository name"),
                source: None,
            });
        }
        self.installation_client(
            &repository.to_ascii_lowercase(),
            &format!("/repos/{repository}/installation"),
        )
        .await
    }

    /// The client that may act on an organisation's own resources (its hooks).
    pub async fn for_organization(
        &self,
        organization: &str,
    ) -> Result<RepositoryClient, CallError> {
        if organization.is_empty()
            || !organization
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        {
            return Err(CallError::Permanent {
                message: format!("{organization:?} is not a GitHub organisation name"),
                source: None,
            });
        }
        self.installation_client(
            &format!("org:{}", organization.to_ascii_lowercase()),
            &format!("/orgs/{organization}/installation"),
        )
        .await
    }

    /// The token's client, or the client of the installation `lookup` finds (once per
    /// `key`) when gitdispatch runs as an App.
    async fn installation_client(
        &self,
        key: &str,
        lookup: &str,
    ) -> Result<RepositoryClient, CallError> {
        match &self.auth {
            Auth::Token(client) => Ok(client.clone()),
            Auth::App {
                app,
                installation,
                by_repository,
                by_installation,
            } => {
                let known = installation.or_else(|| {
                    by_repository
                        .lock()
                        .expect("installations lock")
                        .get(key)
                        .copied()
                });
                let id = match known {
                    Some(id) => id,
                    None => {
                        let answer = self.get(app, lookup).await?;
                        let found: Installation = answer.parse("the installation")?;
                        by_repository
                            .lock()
                            .expect("installations lock")
                            .insert(key.to_string(), found.id);
                        found.id
                    }
                };
                let mut clients = by_installation.lock().expect("installation clients lock");
                if let Some(client) = clients.get(&id) {
                    return Ok(client.clone());
                }
                let client = Arc::new(app.installation(InstallationId(id)).map_err(|error| {
                    CallError::Permanent {
                        message: format!("cannot act as installation {id}"),
                        source: Some(Box::new(error)),
                    }
                })?);
                clients.insert(id, client.clone());
                Ok(client)
            }
        }
    }

    /// A read.
    pub async fn get(&self, client: &Octocrab, path: &str) -> Result<Answer, CallError> {
        self.call(client, "GET", path, None).await
    }

    /// A write (POST or PATCH): counted against the rate limit first.
    pub async fn write(
        &self,
        client: &Octocrab,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<Answer, CallError> {
        self.take_write()?;
        self.call(client, method, path, Some(body)).await
    }

    /// A path from a `Link` header, without the API's own base path (which the
    /// client adds again).
    pub fn relative(&self, path: &str) -> String {
        path.strip_prefix(&self.base_path)
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or(path)
            .to_string()
    }

    /// One call to GitHub; a refusal is an error that says whether to try again.
    async fn call(
        &self,
        client: &Octocrab,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CallError> {
        self.check_paused()?;
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let sent = match method {
            "GET" => client._get(path).await,
            "POST" => client._post(path, body).await,
            "PATCH" => client._patch(path, body).await,
            other => unreachable!("no {other} call is made"),
        };
        let response = sent.map_err(|error| CallError::Retryable {
            message: format!("{what} failed"),
            retry_after: None,
            source: Some(Box::new(error)),
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = client
            .body_to_string(response)
            .await
            .map_err(|error| CallError::Retryable {
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
            return Err(CallError::retryable(shown, Some(wait)));
        }
        if status.is_server_error() || status == StatusCode::UNAUTHORIZED {
            // A failing service, or credentials an operator can renew.
            return Err(CallError::retryable(shown, None));
        }
        Err(CallError::Permanent {
            message: shown,
            source: None,
        })
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

/// A query value, percent-encoded.
pub fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[derive(Deserialize)]
struct Installation {
    id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)]) -> Answer {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: map,
            body: String::new(),
        }
    }

    #[test]
    fn waits_come_from_what_github_says() {
        assert_eq!(
            rate_limit_wait(&answer(403, &[("retry-after", "7")]), ""),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            rate_limit_wait(
                &answer(403, &[]),
                "You have exceeded a secondary rate limit"
            ),
            Some(SECONDARY_LIMIT_PAUSE)
        );
        let soon = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 30;
        let wait = rate_limit_wait(
            &answer(
                403,
                &[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", &soon.to_string()),
                ],
            ),
            "API rate limit exceeded",
        )
        .unwrap();
        assert!(wait <= Duration::from_secs(30) && wait >= Duration::from_secs(28));
        assert_eq!(
            rate_limit_wait(&answer(403, &[]), "Resource not accessible"),
            None
        );
        assert_eq!(
            rate_limit_wait(&answer(500, &[("retry-after", "1")]), ""),
            None
        );
    }

    #[test]
    fn the_next_page_is_read_from_the_link_header() {
        let paged = answer(
            200,
            &[(
                "link",
                "<https://api.github.com/repos/a/b/hooks/1/deliveries?per_page=100&cursor=v1_9>; rel=\"next\", <https://api.github.com/repos/a/b/hooks/1/deliveries?per_page=100>; rel=\"first\"",
            )],
        );
        assert_eq!(
            paged.next_page().as_deref(),
            Some("/repos/a/b/hooks/1/deliveries?per_page=100&cursor=v1_9")
        );
        assert_eq!(answer(200, &[]).next_page(), None);
    }
}
