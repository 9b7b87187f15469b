//! The one-shot commands: `plan`, `check-config`, `send`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::config::Config;
use crate::event::DeliveryId;
use crate::plan::Planner;
use crate::source::github::{self, Decoded};

/// Event kinds the `plan` and `send` commands take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum EventArg {
    Push,
    PullRequest,
}

impl EventArg {
    pub fn as_str(self) -> &'static str {
        match self {
            EventArg::Push => "push",
            EventArg::PullRequest => "pull_request",
        }
    }
}

/// Prints, as JSON lines on `out`, the executions a payload file would produce; with
/// `explain`, writes route by route what matched or failed on `err`.
pub fn plan(
    planner: &Planner,
    event: EventArg,
    payload: &Path,
    delivery: &str,
    explain: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<()> {
    let json = std::fs::read(payload)
        .with_context(|| format!("cannot read payload file {}", payload.display()))?;
    let delivery = DeliveryId::parse(delivery)?;
    let decoded = github::decode_payload(event.as_str(), &delivery, &json)
        .with_context(|| format!("cannot decode {}", payload.display()))?;
    let Decoded::Event(event) = decoded else {
        bail!("{} is not an event that plans executions", event.as_str());
    };
    let plan = planner.plan(&event)?;
    if explain {
        for line in &plan.trace {
            writeln!(err, "{line}")?;
        }
        if plan.commits_may_be_truncated {
            writeln!(
                err,
                "warning: the payload lists {} commits, GitHub's maximum; later commits are missing",
                github::MAX_LISTED_COMMITS
            )?;
        }
        writeln!(err, "{} execution(s) planned", plan.requests.len())?;
    }
    for request in &plan.requests {
        let input: serde_json::Value = serde_json::from_str(request.input.as_str())?;
        let line = json!({
            "pipeline": request.pipeline,
            "name": request.name,
            "group": request.group,
            "input": input,
        });
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// The one-screen summary `check-config` prints for a valid file.
pub fn summary(config: &Config, planner: &Planner) -> String {
    let mut text = String::new();
    text.push_str(&format!("listen: {}\n", config.server.listen));
    text.push_str(&format!(
        "github: {} webhook secret(s)\n",
        config.github.webhook_secrets.len()
    ));
    text.push_str(&format!("executor: {}\n", config.executor.type_name()));
    text.push_str(&planner.to_string());
    text
}

/// Signs a payload file with the first configured GitHub secret and POSTs it, the way
/// GitHub would. Returns the response status and body.
pub async fn send(
    config: &Config,
    event: EventArg,
    payload: &Path,
    url: Option<&str>,
    delivery: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let body = std::fs::read(payload)
        .with_context(|| format!("cannot read payload file {}", payload.display()))?;
    let Some(secret) = config.github.webhook_secrets.first() else {
        bail!("github.webhook_secrets is empty: there is no secret to sign with");
    };
    let signature = github::sign(secret.secret().expose_secret().as_bytes(), &body);
    let url = match url {
        Some(url) => url.to_string(),
        None => {
            let mut address = config.server.listen;
            if address.ip().is_unspecified() {
                address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{address}/webhooks/github")
        }
    };
    let delivery = delivery.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/gitdispatch-send")
        .header("x-github-event", event.as_str())
        .header("x-github-delivery", &delivery)
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .with_context(|| format!("cannot POST to {url}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Ok((status, text))
}
