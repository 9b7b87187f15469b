//! The bodies the operator API takes, decoded: a pause's reason, a replay's window.
//! Pure (no journal, no clock but what the body names), so that the fuzz target
//! `operator_bodies` can throw anything at them.

use serde::Deserialize;

/// Why a body was refused: the status and a one-line reason naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            reason: crate::text::one_line(&reason.into(), 300),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    reason: Option<String>,
}

/// A pause's reason: required, one line, at most 200 bytes.
pub fn pause_reason(body: &[u8]) -> Result<String, Refusal> {
    let body: PauseBody = if body.is_empty() {
        PauseBody::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|error| Refusal::new(400, format!("the body: {error}")))?
    };
    let reason = crate::text::one_line(body.reason.unwrap_or_default().trim(), 200);
    if reason.is_empty() {
        return Err(Refusal::new(422, "reason: say why the lane is paused"));
    }
    Ok(reason)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    pipeline: String,
    environment: Option<String>,
    /// RFC 3339.
    since: String,
    until: Option<String>,
    #[serde(default)]
    failed_only: bool,
    #[serde(default)]
    dry_run: bool,
}

/// A replay asked for: which executions of which window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub pipeline: String,
    pub environment: Option<String>,
    /// The window, in milliseconds since the epoch, both ends included.
    pub since_ms: i64,
    pub until_ms: i64,
    pub failed_only: bool,
    pub dry_run: bool,
}

pub fn replay(body: &[u8]) -> Result<Replay, Refusal> {
    let body: ReplayBody = serde_json::from_slice(body)
        .map_err(|error| Refusal::new(422, format!("the body: {error}")))?;
    let since_ms = time("since", &body.since)?;
    let until_ms = match body.until.as_deref() {
        Some(until) => time("until", until)?,
        None => i64::MAX,
    };
    if until_ms < since_ms {
        return Err(Refusal::new(
            422,
            format!(
                "until: {:?} is before since",
                body.until.unwrap_or_default()
            ),
        ));
    }
    Ok(Replay {
        pipeline: body.pipeline,
        environment: body.environment,
        since_ms,
        until_ms,
        failed_only: body.failed_only,
        dry_run: body.dry_run,
    })
}

/// An RFC 3339 time, in milliseconds since the epoch (0 for one before it).
pub fn time(field: &str, value: &str) -> Result<i64, Refusal> {
    humantime::parse_rfc3339_weak(value)
        .map(|time| {
            time.duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or_default()
        })
        .map_err(|error| {
            Refusal::new(
                400,
                format!("{field}: {value:?} is not an RFC 3339 time ({error})"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_refused_with_the_field_at_fault() {
        assert_eq!(
            pause_reason(br#"{"reason": "  incident\n7  "}"#),
            Ok("incident 7".to_string())
        );
        assert_eq!(pause_reason(b"").unwrap_err().status, 422);
        assert_eq!(pause_reason(br#"{"why": "x"}"#).unwrap_err().status, 400);
        let replay = replay(br#"{"pipeline": "deploy", "since": "2026-12-01T00:00:00Z"}"#).unwrap();
        assert_eq!(replay.until_ms, i64::MAX);
        let refused =
            super::replay(br#"{"pipeline": "deploy", "since": "yesterday"}"#).unwrap_err();
        assert_eq!(refused.status, 400);
        assert!(refused.reason.starts_with("since:"), "{refused:?}");
        let backwards = super::replay(
            br#"{"pipeline": "deploy", "since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}"#,
        )
        .unwrap_err();
        assert_eq!(backwards.status, 422);
        assert!(backwards.reason.starts_with("until:"), "{backwards:?}");
    }
}
