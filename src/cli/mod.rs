//! The one-shot commands: `plan`, `check-config`, `send`, `executions`, `dlq`,
//! `redeliver`, `reconcile`, `trigger`.

use std::io::Write;
use std::path::Path;

use secrecy::ExposeSecret;
use serde_json::json;

use crate::app::{self, AppError, OpenedExecutor, OpenedQueue};
use crate::config::Config;
use crate::event::{DeliveryId, ParseError};
use crate::executor::ExecutorError;
use crate::plan::{PlanError, Planner};
use crate::queue::QueueError;
use crate::source::SourceError;
use crate::source::github::{self, Decoded};

mod local;
mod operate;
mod redeliver;

pub use local::{EventArg, check_queue, dlq_list, dlq_redrive, executions, plan, summary};
pub use operate::{Operate, TriggerArgs, operate, send, trigger};
pub use redeliver::{reconcile, redeliver};

/// Why a one-shot command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read payload file {path}")]
    ReadPayload {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Delivery(#[from] ParseError),
    #[error("cannot decode {path}")]
    Decode {
        path: std::path::PathBuf,
        #[source]
        source: SourceError,
    },
    #[error("{0} is not an event that plans executions")]
    NotAnEvent(&'static str),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot write the output")]
    Output(#[from] std::io::Error),
    #[error("a planned input is not JSON")]
    Input(#[from] serde_json::Error),
    #[error(transparent)]
    App(#[from] AppError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    #[error("github.webhook_secrets is empty: there is no secret to sign with")]
    NoSecret,
    #[error("cannot POST to {url}")]
    Send {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{0}")]
    WrongBackend(String),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    GithubSetup(#[from] crate::github::SetupError),
    #[error("GitHub refused")]
    Github(#[from] crate::github::CallError),
    #[error("reconcile failed")]
    Reconcile(#[from] crate::reconcile::ReconcileError),
}

/// Signs a payload file with the first configured GitHub secret and POSTs it, the way
/// GitHub would. Returns the response status and body.
/// The listener's base URL from `[server] listen` (a wildcard address as localhost).
fn local_base_url(config: &Config) -> String {
    let mut address = config.server.listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{address}")
}

/// The daemon's base URL: `url`, or `[server] listen`.
fn base_url(config: &Config, url: Option<&str>) -> String {
    url.map(str::to_string)
        .unwrap_or_else(|| local_base_url(config))
        .trim_end_matches('/')
        .to_string()
}

/// Sends one request to the daemon's API: the status, and the answer as JSON (null
/// when it is not).
async fn call(
    url: &str,
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, serde_json::Value), CliError> {
    let response = request.send().await.map_err(|source| CliError::Send {
        url: url.to_string(),
        source,
    })?;
    let status = response.status();
    let answer =
        serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or_default();
    Ok((status, answer))
}

/// An API answer that is not a success, as the command's error.
fn refused(status: reqwest::StatusCode, answer: &serde_json::Value) -> CliError {
    CliError::Usage(format!("the API answered {status}: {}", reason(answer)))
}

/// A refusal's reason, as the API gives it.
fn reason(answer: &serde_json::Value) -> String {
    serde_json::from_value::<crate::operator::Refusal>(answer.clone())
        .map(|refusal| refusal.error)
        .unwrap_or_else(|_| "no reason given".into())
}

/// `reload`: asks the running daemon to reload its configuration (`POST /v1/reload`,
/// the token from `GITDISPATCH_TOKEN`); SIGHUP does the same without the API.
pub async fn reload(
    config: &Config,
    url: Option<&str>,
    token: &str,
    out: &mut impl Write,
) -> Result<bool, CliError> {
    let url = format!("{}/v1/reload", base_url(config, url));
    let (status, answer) = call(&url, reqwest::Client::new().post(&url).bearer_auth(token)).await?;
    let success = status.is_success();
    if success {
        let reloaded = serde_json::from_value::<crate::operator::Reloaded>(answer)
            .map(|reloaded| reloaded.status)
            .unwrap_or_else(|_| "reloaded".into());
        writeln!(out, "{reloaded}")?;
    } else {
        writeln!(out, "refused: {}", reason(&answer))?;
    }
    Ok(success)
}

/// `health`: whether the daemon at `url` (default: `[server] listen`) is ready —
/// `GET /readyz` answers 200. For a container's `HEALTHCHECK` and for scripts.
pub async fn health(config: &Config, url: Option<&str>) -> Result<bool, CliError> {
    let url = format!("{}/readyz", base_url(config, url));
    let response = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|source| CliError::Send {
            url: url.clone(),
            source,
        })?
        .get(&url)
        .send()
        .await
        .map_err(|source| CliError::Send {
            url: url.clone(),
            source,
        })?;
    let ready = response.status().is_success();
    if !ready {
        eprintln!("{url} answered {}", response.status());
    }
    Ok(ready)
}
