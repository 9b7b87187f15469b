//! CodeCommit payloads to events: EventBridge's "CodeCommit Repository State Change"
//! and "CodeCommit Pull Request State Change" events, and the older repository
//! triggers' `Records`. A repository is named `<region>/<name>`.

use serde::Deserialize;

use crate::event::{
    CommitSha, DeliveryId, Event, EventKind, Occurrence, PullRequest, PullRequestAction, Push,
    RefName, Source,
};
use crate::source::SourceError;

/// What a CodeCommit payload turned out to be.
#[derive(Debug)]
pub enum Decoded {
    Events(Vec<Event>),
    /// Not acted on (an approval, another detail type), with why.
    Ignored(String),
}

fn unusable(error: impl std::fmt::Display) -> SourceError {
    SourceError::Unusable(error.to_string())
}

/// The all-zero commit id Git uses for "no commit".
fn zero() -> CommitSha {
    CommitSha::parse(&"0".repeat(40)).expect("forty zeros")
}

#[derive(Deserialize)]
struct EventBridgeEvent {
    #[serde(default)]
    id: String,
    #[serde(rename = "detail-type")]
    detail_type: String,
    #[serde(default)]
    source: String,
    region: String,
    #[serde(default)]
    time: String,
    detail: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReferenceDetail {
    event: String,
    repository_name: String,
    reference_type: String,
    reference_name: String,
    #[serde(default)]
    commit_id: Option<String>,
    #[serde(default)]
    old_commit_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PullRequestDetail {
    event: String,
    repository_names: Vec<String>,
    pull_request_id: String,
    #[serde(default)]
    title: String,
    #[serde(default)]
    author: String,
    source_reference: String,
    source_commit: String,
    destination_reference: String,
    destination_commit: String,
    #[serde(default)]
    pull_request_status: String,
    #[serde(default)]
    is_merged: String,
    #[serde(default)]
    last_modified_date: String,
}

#[derive(Deserialize)]
struct Triggers {
    #[serde(rename = "Records")]
    records: Vec<TriggerRecord>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TriggerRecord {
    aws_region: String,
    #[serde(rename = "eventSourceARN")]
    event_source_arn: String,
    #[serde(default)]
    event_id: String,
    #[serde(default)]
    event_time: String,
    codecommit: TriggerBody,
}

#[derive(Deserialize)]
struct TriggerBody {
    references: Vec<TriggerReference>,
}

#[derive(Deserialize)]
struct TriggerReference {
    commit: String,
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    deleted: bool,
}

/// Decodes an EventBridge event or a repository trigger's records. `delivery` is the
/// delivery's id when the transport gave one (SNS's MessageId).
pub fn decode(json: &[u8], delivery: Option<&DeliveryId>) -> Result<Decoded, SourceError> {
    let value: serde_json::Value = serde_json::from_slice(json)
        .map_err(|error| SourceError::Malformed(format!("body is not valid JSON: {error}")))?;
    if value.get("Records").is_some() {
        let triggers: Triggers = serde_json::from_value(value).map_err(unusable)?;
        return triggers_to_events(triggers, delivery);
    }
    let event: EventBridgeEvent = serde_json::from_value(value)
        .map_err(|error| unusable(format!("not a CodeCommit event: {error}")))?;
    if !event.source.is_empty() && event.source != "aws.codecommit" {
        return Ok(Decoded::Ignored(format!(
            "events from {} are not CodeCommit's",
            event.source
        )));
    }
    let delivery = match delivery {
        Some(delivery) => delivery.clone(),
        None => DeliveryId::parse(&event.id).map_err(unusable)?,
    };
    match event.detail_type.as_str() {
        "CodeCommit Repository State Change" => {
            let detail: ReferenceDetail = serde_json::from_value(event.detail).map_err(unusable)?;
            reference_event(&event.region, &event.time, delivery, detail)
        }
        "CodeCommit Pull Request State Change" => {
            let detail: PullRequestDetail =
                serde_json::from_value(event.detail).map_err(unusable)?;
            pull_request_event(&event.region, &event.time, delivery, detail)
        }
        other => Ok(Decoded::Ignored(format!(
            "{other:?} events are not acted on"
        ))),
    }
}

fn commit(id: Option<&str>, what: &str) -> Result<CommitSha, SourceError> {
    CommitSha::parse(id.ok_or_else(|| unusable(format!("the event has no {what}")))?)
        .map_err(unusable)
}

fn reference_event(
    region: &str,
    time: &str,
    delivery: DeliveryId,
    detail: ReferenceDetail,
) -> Result<Decoded, SourceError> {
    let kind = match detail.reference_type.as_str() {
        "branch" => "heads",
        "tag" => "tags",
        other => {
            return Ok(Decoded::Ignored(format!(
                "references of type {other:?} are not acted on"
            )));
        }
    };
    let git_ref =
        RefName::parse(&format!("refs/{kind}/{}", detail.reference_name)).map_err(unusable)?;
    let (before, after, created, deleted) = match detail.event.as_str() {
        "referenceCreated" => (
            zero(),
            commit(detail.commit_id.as_deref(), "commitId")?,
            true,
            false,
        ),
        "referenceUpdated" => (
            commit(detail.old_commit_id.as_deref(), "oldCommitId")?,
            commit(detail.commit_id.as_deref(), "commitId")?,
            false,
            false,
        ),
        "referenceDeleted" => (
            commit(detail.old_commit_id.as_deref(), "oldCommitId")?,
            zero(),
            false,
            true,
        ),
        other => {
            return Ok(Decoded::Ignored(format!(
                "repository event {other:?} is not acted on"
            )));
        }
    };
    let repository = format!("{region}/{}", detail.repository_name);
    let occurrence = Occurrence::from_parts(&[
        "codecommit",
        "push",
        &repository.to_ascii_lowercase(),
        git_ref.as_str(),
        before.as_str(),
        after.as_str(),
        time,
    ]);
    Ok(Decoded::Events(vec![Event {
        source: Source::CodeCommit,
        delivery,
        occurrence,
        repository,
        kind: EventKind::Push(Push {
            git_ref,
            // A new ref lists no commits (its head runs); an updated one's commits are
            // fetched when a route takes each of them.
            commits_listed: created || deleted,
            before,
            after,
            commits: Vec::new(),
            created,
            deleted,
            forced: false,
            commits_truncated: false,
            head_commit: None,
        }),
    }]))
}

fn pull_request_event(
    region: &str,
    time: &str,
    delivery: DeliveryId,
    detail: PullRequestDetail,
) -> Result<Decoded, SourceError> {
    let merged = detail.is_merged.eq_ignore_ascii_case("true");
    let action = match (detail.event.as_str(), detail.pull_request_status.as_str()) {
        ("pullRequestCreated", _) => PullRequestAction::Opened,
        ("pullRequestSourceBranchUpdated", _) => PullRequestAction::Synchronize,
        ("pullRequestStatusChanged", "Closed") => PullRequestAction::Closed,
        ("pullRequestStatusChanged", "Open") => PullRequestAction::Reopened,
        ("pullRequestMergeStatusUpdated", _) if merged => PullRequestAction::Closed,
        (other, _) => {
            return Ok(Decoded::Ignored(format!(
                "pull request event {other:?} is not acted on"
            )));
        }
    };
    let Some(name) = detail.repository_names.first() else {
        return Err(unusable("the pull request names no repository"));
    };
    let number: u64 = detail.pull_request_id.parse().map_err(|_| {
        unusable(format!(
            "pull request id {:?} is not a number",
            detail.pull_request_id
        ))
    })?;
    let repository = format!("{region}/{name}");
    let pull_request = PullRequest {
        number,
        action,
        title: detail.title,
        // An ARN: its last part names the user or role.
        author: detail
            .author
            .rsplit(['/', ':'])
            .next()
            .unwrap_or_default()
            .to_string(),
        head_ref: RefName::parse(&detail.source_reference).map_err(unusable)?,
        head_sha: CommitSha::parse(&detail.source_commit).map_err(unusable)?,
        base_ref: RefName::parse(&detail.destination_reference).map_err(unusable)?,
        base_sha: CommitSha::parse(&detail.destination_commit).map_err(unusable)?,
        draft: false,
        merged,
        labels: Vec::new(),
        // CodeCommit has no forks: whoever opens a pull request can push to the
        // repository.
        from_fork: false,
    };
    let updated = if detail.last_modified_date.is_empty() {
        time.to_string()
    } else {
        detail.last_modified_date.clone()
    };
    let occurrence = Occurrence::from_parts(&[
        "codecommit",
        "pull_request",
        &repository.to_ascii_lowercase(),
        &number.to_string(),
        pull_request.action.as_str(),
        pull_request.head_sha.as_str(),
        &updated,
    ]);
    Ok(Decoded::Events(vec![Event {
        source: Source::CodeCommit,
        delivery,
        occurrence,
        repository,
        kind: EventKind::PullRequest(pull_request),
    }]))
}

/// A repository trigger names only each ref's new commit: the commits between are
/// unknown, so each ref runs its new head (or its teardown, deleted).
fn triggers_to_events(
    triggers: Triggers,
    delivery: Option<&DeliveryId>,
) -> Result<Decoded, SourceError> {
    let mut events = Vec::new();
    for record in triggers.records {
        let name = record
            .event_source_arn
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_string();
        let repository = format!("{}/{name}", record.aws_region);
        let delivery = match delivery {
            Some(delivery) => delivery.clone(),
            None => DeliveryId::parse(&record.event_id).map_err(unusable)?,
        };
        for reference in record.codecommit.references {
            let git_ref = RefName::parse(&reference.git_ref).map_err(unusable)?;
            let commit = CommitSha::parse(&reference.commit).map_err(unusable)?;
            let (before, after) = if reference.deleted {
                (commit, zero())
            } else {
                (zero(), commit)
            };
            let occurrence = Occurrence::from_parts(&[
                "codecommit",
                "trigger",
                &repository.to_ascii_lowercase(),
                git_ref.as_str(),
                before.as_str(),
                after.as_str(),
                &record.event_time,
            ]);
            events.push(Event {
                source: Source::CodeCommit,
                delivery: delivery.clone(),
                occurrence,
                repository: repository.clone(),
                kind: EventKind::Push(Push {
                    git_ref,
                    before,
                    after,
                    commits: Vec::new(),
                    created: reference.created,
                    deleted: reference.deleted,
                    forced: false,
                    commits_truncated: false,
                    commits_listed: true,
                    head_commit: None,
                }),
            });
        }
    }
    Ok(Decoded::Events(events))
}
