//! `[codecommit]`: deliveries from AWS CodeCommit, through an EventBridge API
//! destination (an API key in a header) or an SNS topic (signed by SNS).

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::Problem;

/// `[codecommit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeCommitConfig {
    /// SNS topics whose notifications are taken; others are refused (403).
    #[serde(default)]
    pub topic_arns: Vec<String>,
    /// Keys an EventBridge API destination's connection sends; several while one is
    /// rotated.
    #[serde(default)]
    pub api_keys: Vec<SecretString>,
    /// The header the API key comes in.
    #[serde(default = "default_api_key_header")]
    pub api_key_header: String,
    /// SNS messages older than this are refused (a replay).
    #[serde(default = "default_max_message_age")]
    pub max_message_age_secs: u64,
    /// Hosts SNS signing certificates may be fetched from (over https only) besides
    /// AWS's own `sns.<region>.amazonaws.com` and `.amazonaws.com.cn`, which are always
    /// allowed: exact host names (`host` or `host:port`), for another partition or a
    /// private endpoint. No globs.
    #[serde(default)]
    pub certificate_hosts: Vec<String>,
    /// PEM certificates trusted, besides the system's, for those fetches (a private CA).
    #[serde(default)]
    pub certificate_roots: Option<PathBuf>,
    /// Confirm SNS subscriptions to allowed topics by visiting their SubscribeURL.
    #[serde(default = "default_true")]
    pub confirm_subscriptions: bool,
    /// Commits of one push fetched at most; a longer push plans its newest.
    #[serde(default = "default_max_commits")]
    pub max_commits: usize,
    /// When not empty, the CodeCommit endpoint refuses other client addresses with 403
    /// (AWS's ranges for the region's SNS and EventBridge, say).
    #[serde(default)]
    pub allowed_networks: Vec<String>,
}

fn default_api_key_header() -> String {
    "x-api-key".to_string()
}

fn default_max_message_age() -> u64 {
    3600
}

fn default_true() -> bool {
    true
}

fn default_max_commits() -> usize {
    1000
}

/// An exact host (`host` or `host:port`) certificates may come from: a name, not a
/// glob or an address.
fn check_certificate_host(entry: &str) -> Result<(), String> {
    if entry.contains(['*', '?', '[', '{', '@', '/']) {
        return Err(format!(
            "{entry:?}: an exact host name, not a pattern (AWS's sns.<region>.amazonaws.com hosts are always allowed)"
        ));
    }
    let authority: axum::http::uri::Authority = entry
        .parse()
        .map_err(|_| format!("{entry:?} is not a host name (or host:port)"))?;
    let host = authority.host();
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{entry:?} is an IP address: certificates come from a host name"
        ));
    }
    Ok(())
}

impl CodeCommitConfig {
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        if self.topic_arns.is_empty() && self.api_keys.is_empty() {
            problems.push(Problem::new(
                "codecommit",
                "takes nothing: give topic_arns (SNS) or api_keys (an EventBridge API destination)",
            ));
        }
        for (index, arn) in self.topic_arns.iter().enumerate() {
            let parts: Vec<&str> = arn.split(':').collect();
            if parts.len() != 6 || parts[0] != "arn" || parts[2] != "sns" {
                problems.push(Problem::new(
                    format!("codecommit.topic_arns[{index}]"),
                    format!(
                        "{arn:?} is not an SNS topic ARN (arn:aws:sns:<region>:<account>:<name>)"
                    ),
                ));
            }
        }
        for (index, key) in self.api_keys.iter().enumerate() {
            if key.expose_secret().len() < 16 {
                problems.push(Problem::new(
                    format!("codecommit.api_keys[{index}]"),
                    "is shorter than 16 characters",
                ));
            }
        }
        if axum::http::HeaderName::from_bytes(self.api_key_header.as_bytes()).is_err() {
            problems.push(Problem::new(
                "codecommit.api_key_header",
                format!("{:?} is not a header name", self.api_key_header),
            ));
        }
        for (index, host) in self.certificate_hosts.iter().enumerate() {
            if let Err(message) = check_certificate_host(host) {
                problems.push(Problem::new(
                    format!("codecommit.certificate_hosts[{index}]"),
                    message,
                ));
            }
        }
        for (key, value) in [
            ("max_message_age_secs", self.max_message_age_secs),
            ("max_commits", self.max_commits as u64),
        ] {
            if value == 0 {
                problems.push(Problem::new(format!("codecommit.{key}"), "must be above 0"));
            }
        }
    }
}
