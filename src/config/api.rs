//! `[api]`: the HTTP API for manual triggers (`POST /v1/executions`), and `[ledger]`:
//! where what must be shared by every instance is recorded (the commits planned, for
//! reconcile; idempotency keys, for the API).

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::Problem;

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer tokens the API takes; several while one is rotated. No token, no API.
    #[serde(default)]
    pub tokens: Vec<SecretString>,
    /// When not empty, the operator surface (the API and the page) refuses other client
    /// addresses with 403.
    #[serde(default)]
    pub allowed_networks: Vec<String>,
    /// How long a sign-in to the page lasts.
    #[serde(default = "default_session_hours")]
    pub session_hours: u64,
}

fn default_session_hours() -> u64 {
    12
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            tokens: Vec::new(),
            allowed_networks: Vec::new(),
            session_hours: default_session_hours(),
        }
    }
}

impl ApiConfig {
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        for (index, token) in self.tokens.iter().enumerate() {
            if token.expose_secret().len() < 16 {
                problems.push(Problem::new(
                    format!("api.tokens[{index}]"),
                    "is shorter than 16 characters",
                ));
            }
        }
        if !(1..=24 * 30).contains(&self.session_hours) {
            problems.push(Problem::new(
                "api.session_hours",
                "must be 1 to 720 (a sign-in lasts at most 30 days)",
            ));
        }
    }
}

/// `[ledger]`: a SQLite file on one machine, a DynamoDB table on AWS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum LedgerConfig {
    /// A SQLite file: every process on one machine.
    Sqlite {
        #[serde(default = "default_ledger_path")]
        path: PathBuf,
    },
    /// A DynamoDB table (hash key `pk`, a string): every instance on AWS.
    DynamoDb { table: String },
}

fn default_ledger_path() -> PathBuf {
    PathBuf::from("var/ledger.db")
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig::Sqlite {
            path: default_ledger_path(),
        }
    }
}

impl LedgerConfig {
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        if let LedgerConfig::DynamoDb { table } = self
            && table.is_empty()
        {
            problems.push(Problem::new("ledger.table", "is empty"));
        }
    }
}

/// `[history]`: how long, and how many, deliveries and lane jobs the journal keeps
/// (in the `[ledger]` store).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    #[serde(default = "default_keep_days")]
    pub keep_days: u32,
    #[serde(default = "default_keep_count")]
    pub keep_count: usize,
}

fn default_keep_days() -> u32 {
    7
}

fn default_keep_count() -> usize {
    10_000
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            keep_days: default_keep_days(),
            keep_count: default_keep_count(),
        }
    }
}

impl HistoryConfig {
    pub fn retention(&self) -> crate::journal::Retention {
        crate::journal::Retention {
            keep_secs: i64::from(self.keep_days) * 24 * 3600,
            keep_count: self.keep_count,
        }
    }

    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        if self.keep_days == 0 {
            problems.push(Problem::new("history.keep_days", "must be at least 1"));
        }
        if self.keep_count == 0 {
            problems.push(Problem::new("history.keep_count", "must be at least 1"));
        }
    }
}
