//! Asking GitHub to redeliver what failed to reach us. GitHub never redelivers by
//! itself and keeps a hook's deliveries for three days; a daemon that was down, or a
//! delivery answered with a 5xx, loses the push unless it is redelivered. This reads
//! the recent deliveries of the configured hooks (paged by GitHub's cursor) and asks
//! for a redelivery of each one that never got through: no attempt answered 2xx, and
//! the last failed for a reason a retry can mend (no answer, a 5xx, a 429). A 4xx is
//! our own refusal of the delivery, which a retry would only repeat.
//!
//! It keeps no state: GitHub's records and the look-back window are enough, and
//! execution names make a redelivery that races another harmless.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::json;

use crate::config::HookConfig;
use crate::github::{CallError, GithubClient, RepositoryClient};

/// Deliveries per page (GitHub's maximum).
const PER_PAGE: usize = 100;

/// One delivery that never got through, and what was done about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redelivery {
    /// The hook's deliveries path, naming the hook.
    pub hook: String,
    /// `X-GitHub-Delivery`, shared by a delivery and its redeliveries.
    pub guid: String,
    /// The latest attempt's id, the one redelivered.
    pub id: u64,
    pub event: String,
    pub status_code: u16,
    pub delivered_at: String,
    /// Whether a redelivery was asked for (not in a dry run).
    pub requested: bool,
}

impl std::fmt::Display for Redelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} (event {}, answered {}, at {}) from {}",
            if self.requested {
                "redelivered"
            } else {
                "would redeliver"
            },
            self.guid,
            self.id,
            self.event,
            self.status_code,
            self.delivered_at,
            self.hook
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Delivery {
    id: u64,
    guid: String,
    delivered_at: String,
    #[serde(default)]
    status_code: u16,
    #[serde(default)]
    event: String,
}

/// Whether an answer says the delivery did not get through for a reason a retry can
/// mend.
fn retry_can_mend(status_code: u16) -> bool {
    status_code == 0 || status_code == 429 || status_code >= 500
}

/// The client a hook's deliveries are read with.
async fn client_for(
    client: &GithubClient,
    hook: &HookConfig,
) -> Result<RepositoryClient, CallError> {
    if hook.app {
        return client.app().ok_or_else(|| CallError::Permanent {
            message: "the App's hook is read as the App: set github.app_id".into(),
            source: None,
        });
    }
    match (&hook.repository, &hook.organization) {
        (Some(repository), _) => client.for_repository(repository).await,
        (None, Some(organization)) => client.for_organization(organization).await,
        (None, None) => Err(CallError::Permanent {
            message: "a hook names neither a repository nor an organisation".into(),
            source: None,
        }),
    }
}

/// Finds, and unless `dry_run` redelivers, every delivery of `hooks` since `since`
/// that never got through.
pub async fn redeliver_failed(
    client: &GithubClient,
    hooks: &[HookConfig],
    since: SystemTime,
    dry_run: bool,
) -> Result<Vec<Redelivery>, CallError> {
    let mut found = Vec::new();
    for hook in hooks {
        let Some(path) = hook.deliveries_path() else {
            continue;
        };
        let hook_client = client_for(client, hook).await?;
        // Every attempt in the window, by delivery (newest first from GitHub).
        let mut by_guid: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
        let mut next = Some(format!("{path}?per_page={PER_PAGE}"));
        'pages: while let Some(page) = next.take() {
            let answer = client.get(&hook_client, &page).await?;
            let deliveries: Vec<Delivery> = answer.parse("the hook's deliveries")?;
            for delivery in deliveries {
                let at = humantime::parse_rfc3339_weak(&delivery.delivered_at)
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                if at < since {
                    break 'pages;
                }
                by_guid
                    .entry(delivery.guid.clone())
                    .or_default()
                    .push(delivery);
            }
            next = answer.next_page().map(|next| client.relative(&next));
        }
        for (guid, attempts) in by_guid {
            if attempts
                .iter()
                .any(|attempt| (200..300).contains(&attempt.status_code))
            {
                continue;
            }
            let Some(latest) = attempts.iter().max_by_key(|attempt| attempt.id) else {
                continue;
            };
            if !retry_can_mend(latest.status_code) {
                continue;
            }
            if !dry_run {
                client
                    .write(
                        &hook_client,
                        "POST",
                        &format!("{path}/{}/attempts", latest.id),
                        &json!({}),
                    )
                    .await?;
                tracing::info!(%guid, id = latest.id, event = %latest.event, hook = %path, "Asked GitHub to redeliver a delivery that never got through.");
            }
            found.push(Redelivery {
                hook: path.clone(),
                guid,
                id: latest.id,
                event: latest.event.clone(),
                status_code: latest.status_code,
                delivered_at: latest.delivered_at.clone(),
                requested: !dry_run,
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_a_retry_can_mend_is_redelivered() {
        for code in [0, 429, 500, 502, 503, 504] {
            assert!(retry_can_mend(code), "{code}");
        }
        for code in [200, 202, 400, 401, 403, 404, 413, 415, 422] {
            assert!(!retry_can_mend(code), "{code}");
        }
    }
}
