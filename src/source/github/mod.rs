//! GitHub webhooks: `X-Hub-Signature-256` verification and `push` / `pull_request`
//! decoding.
//!
//! The typestate keeps the order right: [`verify`] is the only way to get a
//! [`Verified`] delivery, and only a verified delivery can be [`decode`]d.

pub mod history;
pub mod redeliver;

use std::borrow::Cow;

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;

use super::SourceError;
use crate::config::{Config, ScopedSecret};
use crate::event::{
    Commit, CommitSha, DeliveryId, Event, EventKind, Occurrence, PullRequest, PullRequestAction,
    Push, RefName, Source,
};
use crate::pattern::PatternList;

/// GitHub lists at most this many commits in a push payload, and says nothing of more.
pub const MAX_LISTED_COMMITS: usize = 2048;

/// The configured webhook secrets, each with the repositories it may speak for, and
/// the bound on commits a push may list.
#[derive(Debug, Clone)]
pub struct GithubSecrets {
    entries: Vec<SecretEntry>,
    max_commits: usize,
}

#[derive(Debug, Clone)]
struct SecretEntry {
    secret: SecretString,
    /// `None`: every repository.
    scope: Option<PatternList>,
}

impl GithubSecrets {
    /// Builds from a compiled configuration: its secrets with their scopes, parsed
    /// once (a scope that did not parse refused the whole configuration).
    pub fn from_config(config: &Config) -> GithubSecrets {
        GithubSecrets::new(&config.typed.secrets, config.github.max_commits_per_push)
    }

    pub fn new(secrets: &[ScopedSecret], max_commits: usize) -> GithubSecrets {
        GithubSecrets {
            entries: secrets
                .iter()
                .map(|entry| SecretEntry {
                    secret: entry.secret.clone(),
                    scope: entry.scope.clone(),
                })
                .collect(),
            max_commits,
        }
    }
}

/// How the body carries its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
}

/// A delivery whose signature checked out. Its fields are private so that only
/// [`verify`] can make one.
#[derive(Debug)]
pub struct Verified<'a> {
    body: &'a [u8],
    kind: BodyKind,
    max_commits: usize,
    event_name: String,
    delivery: DeliveryId,
    scope: Option<&'a PatternList>,
}

impl Verified<'_> {
    pub fn delivery(&self) -> &DeliveryId {
        &self.delivery
    }

    pub fn event_name(&self) -> &str {
        &self.event_name
    }
}

/// What a verified delivery turned out to be.
#[derive(Debug)]
pub enum Decoded {
    /// GitHub's hello when a hook is created.
    Ping,
    /// An event gitdispatch does not act on, by name.
    Ignored(String),
    Event(Box<Event>),
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Checks the content type and `X-Hub-Signature-256` over the raw body, against every
/// configured secret, in constant time per comparison, before anything is parsed.
pub fn verify<'a>(
    secrets: &'a GithubSecrets,
    headers: &HeaderMap,
    body: &'a [u8],
) -> Result<Verified<'a>, SourceError> {
    let content_type = header(headers, "content-type").unwrap_or("");
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let kind = match media_type.as_str() {
        "application/json" => BodyKind::Json,
        "application/x-www-form-urlencoded" => BodyKind::Form,
        _ => {
            return Err(SourceError::UnsupportedMediaType(format!(
                "content type {content_type:?} is not application/json or application/x-www-form-urlencoded"
            )));
        }
    };

    for name in [
        "x-hub-signature-256",
        "x-hub-signature",
        "x-github-event",
        "x-github-delivery",
    ] {
        if headers.get_all(name).iter().count() > 1 {
            let error = format!("the {name} header is sent more than once");
            return Err(if name.starts_with("x-hub") {
                SourceError::Unauthenticated(error)
            } else {
                SourceError::Malformed(error)
            });
        }
    }
    let Some(signature) = header(headers, "x-hub-signature-256") else {
        let reason = if headers.contains_key("x-hub-signature") {
            "only the SHA-1 X-Hub-Signature was sent; X-Hub-Signature-256 is required"
        } else {
            "X-Hub-Signature-256 header is missing"
        };
        return Err(SourceError::Unauthenticated(reason.to_string()));
    };
    let signature = signature
        .strip_prefix("sha256=")
        .and_then(|digits| hex::decode(digits).ok())
        .filter(|bytes| bytes.len() == 32)
        .ok_or_else(|| {
            SourceError::Unauthenticated(
                "X-Hub-Signature-256 is not sha256= followed by 64 hexadecimal digits".to_string(),
            )
        })?;
    let entry = secrets
        .entries
        .iter()
        .find(|entry| signature_matches(entry.secret.expose_secret().as_bytes(), body, &signature))
        .ok_or_else(|| {
            SourceError::Unauthenticated(
                "X-Hub-Signature-256 does not match the body with any configured secret"
                    .to_string(),
            )
        })?;

    let event_name = header(headers, "x-github-event")
        .filter(|name| !name.is_empty())
        .ok_or_else(|| SourceError::Malformed("X-GitHub-Event header is missing".to_string()))?
        .to_string();
    let delivery = header(headers, "x-github-delivery")
        .ok_or_else(|| SourceError::Malformed("X-GitHub-Delivery header is missing".to_string()))
        .and_then(|value| {
            DeliveryId::parse(value).map_err(|error| SourceError::Malformed(error.to_string()))
        })?;
    Ok(Verified {
        body,
        kind,
        max_commits: secrets.max_commits,
        event_name,
        delivery,
        scope: entry.scope.as_ref(),
    })
}

/// HMAC-SHA256 of `body` under `secret`, compared with `expected` in constant time.
fn signature_matches(secret: &[u8], body: &[u8], expected: &[u8]) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(expected).is_ok()
}

/// The `sha256=<hex>` header value GitHub would send for `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Decodes a verified delivery and checks the signing secret's repository scope.
pub fn decode(verified: Verified<'_>) -> Result<Decoded, SourceError> {
    let json: Cow<'_, [u8]> = match verified.kind {
        BodyKind::Json => Cow::Borrowed(verified.body),
        BodyKind::Form => {
            let mut payloads = form_urlencoded::parse(verified.body)
                .filter(|(key, _)| key == "payload")
                .map(|(_, value)| value);
            let payload = payloads.next().ok_or_else(|| {
                SourceError::Malformed("form body has no payload field".to_string())
            })?;
            if payloads.next().is_some() {
                return Err(SourceError::Malformed(
                    "form body has more than one payload field".to_string(),
                ));
            }
            Cow::Owned(payload.into_owned().into_bytes())
        }
    };
    if json.starts_with(&[0xef, 0xbb, 0xbf]) {
        return Err(SourceError::Malformed(
            "body starts with a UTF-8 byte order mark; GitHub sends JSON without one".to_string(),
        ));
    }
    let decoded = decode_limited(
        &verified.event_name,
        &verified.delivery,
        &json,
        verified.max_commits,
    )?;
    if let (Decoded::Event(event), Some(scope)) = (&decoded, verified.scope) {
        if !scope.matches(&event.repository) {
            return Err(SourceError::Forbidden(format!(
                "the secret that signed this delivery does not cover repository {}",
                event.repository
            )));
        }
    }
    Ok(decoded)
}

/// Decodes a JSON payload without any signature. Only for payloads that did not come
/// over the network (the `plan` command reads a file the user chose); webhooks go
/// through [`verify`] and [`decode`].
pub fn decode_payload(
    event_name: &str,
    delivery: &DeliveryId,
    json: &[u8],
) -> Result<Decoded, SourceError> {
    decode_limited(event_name, delivery, json, MAX_LISTED_COMMITS)
}

fn decode_limited(
    event_name: &str,
    delivery: &DeliveryId,
    json: &[u8],
    max_commits: usize,
) -> Result<Decoded, SourceError> {
    Ok(match event_name {
        "ping" => Decoded::Ping,
        "push" => Decoded::Event(Box::new(decode_push(json, delivery, max_commits)?)),
        "pull_request" => Decoded::Event(Box::new(decode_pull_request(json, delivery)?)),
        other => Decoded::Ignored(other.to_string()),
    })
}

fn parse_json<'de, T: Deserialize<'de>>(json: &'de [u8], what: &str) -> Result<T, SourceError> {
    serde_json::from_slice(json).map_err(|error| {
        // A value of the wrong shape is reported before the JSON ends: tell a body
        // that is not JSON at all (400) from JSON that is not this event (422).
        if !error.is_data() {
            return SourceError::Malformed(format!("body is not valid JSON: {error}"));
        }
        match serde_json::from_slice::<serde::de::IgnoredAny>(json) {
            Err(syntax) => SourceError::Malformed(format!("body is not valid JSON: {syntax}")),
            Ok(_) => SourceError::Unusable(format!("{what} payload is not usable: {error}")),
        }
    })
}

fn unusable(error: impl std::fmt::Display) -> SourceError {
    SourceError::Unusable(error.to_string())
}

#[derive(Deserialize)]
struct RepositoryPayload {
    full_name: String,
    /// When the repository was last pushed to: a number of seconds in push payloads
    /// (a timestamp text elsewhere). Signed, and new for every push.
    #[serde(default)]
    pushed_at: Option<serde_json::Value>,
}

/// A JSON scalar as text, for an occurrence key.
fn scalar_text(value: Option<&serde_json::Value>) -> String {
    match value {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    forced: bool,
    #[serde(default)]
    commits: Vec<CommitPayload>,
    head_commit: Option<CommitPayload>,
    repository: RepositoryPayload,
}

#[derive(Deserialize)]
struct CommitPayload {
    id: String,
    #[serde(default)]
    message: String,
    author: Option<AuthorPayload>,
    #[serde(default)]
    added: Vec<String>,
    #[serde(default)]
    removed: Vec<String>,
    #[serde(default)]
    modified: Vec<String>,
}

#[derive(Deserialize)]
struct AuthorPayload {
    #[serde(default)]
    name: String,
    username: Option<String>,
}

impl CommitPayload {
    fn into_commit(self) -> Result<Commit, SourceError> {
        let author = self
            .author
            .map(|author| author.username.unwrap_or(author.name))
            .unwrap_or_default();
        let mut changed_paths = self.added;
        changed_paths.extend(self.removed);
        changed_paths.extend(self.modified);
        Ok(Commit {
            id: CommitSha::parse(&self.id).map_err(unusable)?,
            message: self.message,
            author,
            changed_paths: Some(changed_paths),
        })
    }
}

/// A push's commits, oldest first, at most `max_commits` of them: GitHub lists at most
/// 2,048 and says nothing of more; a longer list than the bound (which only a leaked
/// secret could sign) keeps its newest commits, the head among them, and is flagged as
/// truncated (logged and counted).
fn decode_push(
    json: &[u8],
    delivery: &DeliveryId,
    max_commits: usize,
) -> Result<Event, SourceError> {
    let payload: PushPayload = parse_json(json, "push")?;
    let listed = payload.commits.len();
    let commits_truncated = listed >= MAX_LISTED_COMMITS.min(max_commits);
    let skip = listed.saturating_sub(max_commits);
    let commits = payload
        .commits
        .into_iter()
        .skip(skip)
        .map(CommitPayload::into_commit)
        .collect::<Result<Vec<_>, _>>()?;
    let push = Push {
        git_ref: RefName::parse(&payload.git_ref).map_err(unusable)?,
        before: CommitSha::parse(&payload.before).map_err(unusable)?,
        after: CommitSha::parse(&payload.after).map_err(unusable)?,
        commits,
        created: payload.created,
        deleted: payload.deleted,
        forced: payload.forced,
        commits_truncated,
        // A list of GitHub's maximum may be cut short: the commits are read from the
        // API when a route needs every one (or their paths) and GitHub can be called.
        commits_listed: listed < MAX_LISTED_COMMITS,
        head_commit: payload
            .head_commit
            .map(CommitPayload::into_commit)
            .transpose()?,
    };
    if push.git_ref.as_str().starts_with("refs/pull/") {
        return Err(unusable(
            "pushes to refs/pull/ are not branch or tag pushes",
        ));
    }
    // GitHub names repositories case-insensitively; the key must not depend on which
    // hook spelled it how.
    let repository_key = payload.repository.full_name.to_ascii_lowercase();
    let occurrence = Occurrence::from_parts(&[
        "github",
        "push",
        &repository_key,
        push.git_ref.as_str(),
        push.before.as_str(),
        push.after.as_str(),
        &scalar_text(payload.repository.pushed_at.as_ref()),
    ]);
    Ok(Event {
        source: Source::Github,
        delivery: delivery.clone(),
        occurrence,
        repository: payload.repository.full_name,
        kind: EventKind::Push(push),
    })
}

#[derive(Deserialize)]
struct PullRequestPayload {
    action: String,
    number: u64,
    pull_request: PullRequestBody,
    repository: RepositoryPayload,
}

#[derive(Deserialize)]
struct PullRequestBody {
    #[serde(default)]
    title: String,
    #[serde(default)]
    draft: bool,
    #[serde(default)]
    merged: Option<bool>,
    /// Changes with every action on the pull request; part of its occurrence key.
    #[serde(default)]
    updated_at: Option<serde_json::Value>,
    #[serde(default)]
    labels: Vec<LabelPayload>,
    user: Option<UserPayload>,
    head: BranchPayload,
    base: BranchPayload,
}

#[derive(Deserialize)]
struct LabelPayload {
    name: String,
}

#[derive(Deserialize)]
struct UserPayload {
    login: String,
}

#[derive(Deserialize)]
struct BranchPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    /// `null` when the fork the pull request came from was deleted.
    repo: Option<RepositoryPayload>,
}

fn decode_pull_request(json: &[u8], delivery: &DeliveryId) -> Result<Event, SourceError> {
    let payload: PullRequestPayload = parse_json(json, "pull_request")?;
    let body = payload.pull_request;
    let base_repository = body
        .base
        .repo
        .as_ref()
        .map_or(payload.repository.full_name.as_str(), |repo| {
            repo.full_name.as_str()
        });
    // A head in another repository (or in a deleted one) is a fork.
    let from_fork = body
        .head
        .repo
        .as_ref()
        .is_none_or(|repo| !repo.full_name.eq_ignore_ascii_case(base_repository));
    let pull_request = PullRequest {
        number: payload.number,
        action: PullRequestAction::parse(&payload.action),
        title: body.title,
        author: body.user.map(|user| user.login).unwrap_or_default(),
        head_ref: RefName::branch(&body.head.git_ref).map_err(unusable)?,
        head_sha: CommitSha::parse(&body.head.sha).map_err(unusable)?,
        base_ref: RefName::branch(&body.base.git_ref).map_err(unusable)?,
        base_sha: CommitSha::parse(&body.base.sha).map_err(unusable)?,
        draft: body.draft,
        merged: body.merged.unwrap_or(false),
        labels: body.labels.into_iter().map(|label| label.name).collect(),
        from_fork,
    };
    let occurrence = Occurrence::from_parts(&[
        "github",
        "pull_request",
        &payload.repository.full_name.to_ascii_lowercase(),
        &pull_request.number.to_string(),
        pull_request.action.as_str(),
        pull_request.head_sha.as_str(),
        &scalar_text(body.updated_at.as_ref()),
    ]);
    Ok(Event {
        source: Source::Github,
        delivery: delivery.clone(),
        occurrence,
        repository: payload.repository.full_name,
        kind: EventKind::PullRequest(pull_request),
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::config::WebhookSecretConfig;

    /// GitHub's published example from "Validating webhook deliveries".
    #[test]
    fn github_published_test_vector() {
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert!(signature_matches(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            &hex::decode("757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
                .unwrap()
        ));
    }

    fn secrets(entries: Vec<WebhookSecretConfig>) -> GithubSecrets {
        let secrets: Vec<ScopedSecret> = entries
            .iter()
            .map(|entry| ScopedSecret {
                secret: entry.secret().clone(),
                scope: entry
                    .repositories()
                    .map(|globs| PatternList::compile_repositories(globs).unwrap()),
            })
            .collect();
        GithubSecrets::new(&secrets, MAX_LISTED_COMMITS)
    }

    fn plain(secret: &str) -> WebhookSecretConfig {
        WebhookSecretConfig::Plain(SecretString::from(secret))
    }

    fn headers(signature: Option<String>, event: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("x-github-event", HeaderValue::from_str(event).unwrap());
        headers.insert("x-github-delivery", HeaderValue::from_static("d-1"));
        if let Some(signature) = signature {
            headers.insert(
                "x-hub-signature-256",
                HeaderValue::from_str(&signature).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn any_configured_secret_verifies_so_secrets_can_rotate() {
        let secrets = secrets(vec![plain("old"), plain("new")]);
        let body = br#"{"zen": "hi"}"#;
        for secret in ["old", "new"] {
            let headers = headers(Some(sign(secret.as_bytes(), body)), "ping");
            assert!(verify(&secrets, &headers, body).is_ok(), "{secret}");
        }
        let headers = headers(Some(sign(b"other", body)), "ping");
        assert!(matches!(
            verify(&secrets, &headers, body),
            Err(SourceError::Unauthenticated(_))
        ));
    }

    #[test]
    fn tampering_is_refused() {
        let secrets = secrets(vec![plain("s")]);
        let body = br#"{"zen": "hi"}"#;
        let good = sign(b"s", body);
        // Tampered body.
        assert!(
            verify(
                &secrets,
                &headers(Some(good.clone()), "ping"),
                br#"{"zen": "ho"}"#
            )
            .is_err()
        );
        // Tampered signature, truncated signature, wrong scheme, no signature.
        let mut flipped = good.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        for signature in [
            String::from_utf8(flipped).unwrap(),
            good[..good.len() - 2].to_string(),
            good.replace("sha256=", "sha1="),
        ] {
            assert!(verify(&secrets, &headers(Some(signature), "ping"), body).is_err());
        }
        let mut legacy = headers(None, "ping");
        legacy.insert("x-hub-signature", HeaderValue::from_static("sha1=abc"));
        let Err(SourceError::Unauthenticated(reason)) = verify(&secrets, &legacy, body) else {
            panic!("legacy signature accepted");
        };
        assert!(reason.contains("SHA-1"));
    }

    #[test]
    fn scoped_secrets_speak_only_for_their_repositories() {
        let secrets = secrets(vec![WebhookSecretConfig::Scoped(
            crate::config::ScopedSecretConfig {
                secret: SecretString::from("api"),
                repositories: vec!["acme/api-*".to_string()],
            },
        )]);
        let body = |repo: &str| {
            format!(
                r#"{{"ref":"refs/heads/main","before":"{z}","after":"{a}","commits":[],"head_commit":null,"repository":{{"full_name":"{repo}"}}}}"#,
                z = "0".repeat(40),
                a = "a".repeat(40)
            )
        };
        let allowed = body("acme/api-v2");
        let headers_for = |body: &str| headers(Some(sign(b"api", body.as_bytes())), "push");
        let verified = verify(&secrets, &headers_for(&allowed), allowed.as_bytes()).unwrap();
        assert!(matches!(decode(verified), Ok(Decoded::Event(_))));
        let denied = body("acme/billing");
        let verified = verify(&secrets, &headers_for(&denied), denied.as_bytes()).unwrap();
        assert!(matches!(decode(verified), Err(SourceError::Forbidden(_))));
    }
}
