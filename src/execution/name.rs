//! Deterministic, valid, readable execution names: the idempotency key of every start.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::{CommitSha, Occurrence, RefName};
use crate::execution::Action;

/// Step Functions' limit on execution names.
pub const MAX_NAME_LENGTH: usize = 80;

/// Hex characters of the hash that ends every name: 80 bits, so distinct inputs do not
/// collide in practice while the readable part keeps most of the room.
const HASH_LENGTH: usize = 20;

/// A name valid for Step Functions and the local executor: 1 to 80 characters from
/// `A-Z a-z 0-9 - _`. Being in this type proves it; it is also safe as a file name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExecutionName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("execution name {0:?} must be 1 to 80 characters from A-Z, a-z, 0-9, '-' and '_'")]
pub struct InvalidName(String);

impl ExecutionName {
    pub fn parse(value: &str) -> Result<Self, InvalidName> {
        let valid = !value.is_empty()
            && value.len() <= MAX_NAME_LENGTH
            && value
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if valid {
            Ok(ExecutionName(value.to_string()))
        } else {
            Err(InvalidName(value.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of the `attempt`th run of this execution, for an executor that runs an
    /// interrupted execution again: the name itself for the first attempt, then
    /// `<readable part>-a<attempt>-<hash of the name and the attempt>`, the readable part
    /// cut from its start to fit. Each attempt has a name of its own, so "once per name"
    /// still holds when an execution is run again.
    pub fn attempt(&self, attempt: u32) -> ExecutionName {
        if attempt <= 1 {
            return self.clone();
        }
        self.marked("a", attempt, "")
    }

    /// The name of a replay of this execution (an operator's new run of it), the
    /// `replay`th as far as its maker knows: `<readable part>-r<replay>-<hash>`, the
    /// hash over `replay_id` too, which is unique to the request that made it, so that
    /// two replays made at once (or one whose record was lost) never share a name even
    /// when they count alike. Distinct from every attempt's.
    pub fn replay(&self, replay: u32, replay_id: &str) -> ExecutionName {
        self.marked("r", replay, replay_id)
    }

    fn marked(&self, letter: &str, number: u32, salt: &str) -> ExecutionName {
        let mut hasher = Sha256::new();
        hasher.update((self.0.len() as u64).to_be_bytes());
        hasher.update(self.0.as_bytes());
        hasher.update(number.to_be_bytes());
        if letter != "a" {
            hasher.update(letter.as_bytes());
            hasher.update((salt.len() as u64).to_be_bytes());
            hasher.update(salt.as_bytes());
        }
        let digest = hex::encode(hasher.finalize());
        let hash = &digest[..HASH_LENGTH];
        let readable = self
            .0
            .rsplit_once('-')
            .map_or(self.0.as_str(), |(readable, _)| readable);
        let marker = format!("-{letter}{number}");
        let room = MAX_NAME_LENGTH - HASH_LENGTH - 1 - marker.len();
        // Names are ASCII, so any byte index is a character boundary.
        let readable = &readable[readable.len().saturating_sub(room)..];
        let readable = readable.trim_start_matches('-');
        ExecutionName(format!("{readable}{marker}-{hash}"))
    }
}

impl TryFrom<String> for ExecutionName {
    type Error = InvalidName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        ExecutionName::parse(&value)
    }
}

impl From<ExecutionName> for String {
    fn from(value: ExecutionName) -> Self {
        value.0
    }
}

impl fmt::Display for ExecutionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an execution name is a function of: authenticated content only, never the
/// delivery id (which anyone replaying a captured body can change).
#[derive(Debug, Clone, Copy)]
pub struct NameParts<'a> {
    pub occurrence: &'a Occurrence,
    pub pipeline: &'a str,
    pub environment: &'a str,
    pub git_ref: &'a RefName,
    pub commit: &'a CommitSha,
    pub action: Action,
}

/// `<pipeline>-<environment>-<short sha>[-teardown]-<hash>`: the readable part is cut to
/// fit, the hash over every part (length-prefixed, so no two tuples share an encoding)
/// keeps distinct inputs apart.
pub fn execution_name(parts: NameParts<'_>) -> ExecutionName {
    let mut hasher = Sha256::new();
    for field in [
        parts.occurrence.as_str(),
        parts.pipeline,
        parts.environment,
        parts.git_ref.as_str(),
        parts.commit.as_str(),
        parts.action.as_str(),
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    let digest = hex::encode(hasher.finalize());
    let hash = &digest[..HASH_LENGTH];

    // The short sha (and the teardown marker) always show; pipeline and environment
    // share what is left and are cut to fit.
    let mut suffix = format!("-{}", parts.commit.short());
    if parts.action == Action::Teardown {
        suffix.push_str("-teardown");
    }
    let mut prefix = String::new();
    push_sanitized(&mut prefix, parts.pipeline);
    prefix.push('-');
    push_sanitized(&mut prefix, parts.environment);
    // The sanitized text is ASCII, so any byte index is a character boundary.
    prefix.truncate(MAX_NAME_LENGTH - HASH_LENGTH - 1 - suffix.len());
    let prefix = prefix.trim_end_matches('-');
    ExecutionName(format!("{prefix}{suffix}-{hash}"))
}

/// Appends `text` with every character outside `A-Z a-z 0-9 _` turned into `-`, runs
/// of `-` folded into one.
fn push_sanitized(output: &mut String, text: &str) {
    for character in text.chars() {
        let mapped = if character.is_ascii_alphanumeric() || character == '_' {
            character
        } else {
            '-'
        };
        if mapped == '-' && output.ends_with('-') {
            continue;
        }
        output.push(mapped);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn name(
        occurrence: &str,
        pipeline: &str,
        environment: &str,
        git_ref: &str,
        commit: &str,
        action: Action,
    ) -> ExecutionName {
        execution_name(NameParts {
            occurrence: &Occurrence::from_parts(&[occurrence]),
            pipeline,
            environment,
            git_ref: &RefName::parse(git_ref).unwrap(),
            commit: &CommitSha::parse(commit).unwrap(),
            action,
        })
    }

    const SHA: &str = "1f2e3d4c5b6a798807f6e5d4c3b2a1f0e9d8c7b6";

    #[test]
    fn names_are_readable() {
        let shown = name(
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "deploy",
            "acceptance",
            "refs/heads/main",
            SHA,
            Action::Deploy,
        );
        assert!(
            shown.as_str().starts_with("deploy-acceptance-1f2e3d4-"),
            "{shown}"
        );
        assert_eq!(
            shown.as_str().len(),
            "deploy-acceptance-1f2e3d4-".len() + 20
        );
        let teardown = name(
            "d",
            "deploy",
            "pr-42",
            "refs/heads/x",
            SHA,
            Action::Teardown,
        );
        assert!(
            teardown
                .as_str()
                .starts_with("deploy-pr-42-1f2e3d4-teardown-")
        );
    }

    #[test]
    fn attempts_have_names_of_their_own() {
        let planned = name(
            "o",
            "deploy",
            "acceptance",
            "refs/heads/main",
            SHA,
            Action::Deploy,
        );
        assert_eq!(planned.attempt(1), planned);
        let second = planned.attempt(2);
        assert!(
            second.as_str().starts_with("deploy-acceptance-1f2e3d4-a2-"),
            "{second}"
        );
        assert_ne!(second, planned.attempt(3));
        assert_eq!(second, planned.attempt(2), "deterministic");
        let long = name(
            "o",
            &"p".repeat(200),
            "e",
            "refs/heads/x",
            SHA,
            Action::Teardown,
        );
        let tenth = long.attempt(10);
        assert!(ExecutionName::parse(tenth.as_str()).is_ok(), "{tenth}");
        assert!(tenth.as_str().contains("-1f2e3d4-teardown-a10-"), "{tenth}");
    }

    #[test]
    fn long_and_hostile_parts_still_give_a_valid_name() {
        let shown = name(
            "d",
            &"p".repeat(200),
            "feature/ünïcode <script> $HOME; rm -rf /",
            "refs/heads/feature/x",
            SHA,
            Action::Deploy,
        );
        assert!(ExecutionName::parse(shown.as_str()).is_ok(), "{shown}");
        assert!(shown.as_str().len() <= MAX_NAME_LENGTH);
        assert!(
            shown.as_str().contains("-1f2e3d4-"),
            "the short sha survives: {shown}"
        );
    }

    fn arbitrary_parts() -> impl Strategy<Value = (String, String, String, String, String, bool)> {
        (
            "[!-~]{1,60}",
            ".{1,100}",
            ".{0,100}",
            "refs/(heads|tags)/[a-zA-Z0-9_-]{1,12}(/[a-zA-Z0-9_-]{1,12}){0,4}",
            "[0-9a-f]{40}",
            any::<bool>(),
        )
    }

    proptest! {
        #[test]
        fn names_are_always_valid_and_deterministic(
            (occurrence, pipeline, environment, git_ref, commit, teardown) in arbitrary_parts()
        ) {
            let action = if teardown { Action::Teardown } else { Action::Deploy };
            let first = name(&occurrence, &pipeline, &environment, &git_ref, &commit, action);
            let second = name(&occurrence, &pipeline, &environment, &git_ref, &commit, action);
            prop_assert_eq!(&first, &second);
            prop_assert!(ExecutionName::parse(first.as_str()).is_ok());
        }

        #[test]
        fn distinct_inputs_give_distinct_names(
            parts in proptest::collection::vec(arbitrary_parts(), 2..64)
        ) {
            let mut seen: HashMap<ExecutionName, (String, String, String, String, String, bool)> =
                HashMap::new();
            for part in parts {
                let (occurrence, pipeline, environment, git_ref, commit, teardown) = part.clone();
                let action = if teardown { Action::Teardown } else { Action::Deploy };
                let shown = name(&occurrence, &pipeline, &environment, &git_ref, &commit, action);
                if let Some(previous) = seen.insert(shown.clone(), part.clone()) {
                    prop_assert_eq!(previous, part, "two inputs share {}", shown);
                }
            }
        }

        #[test]
        fn inputs_that_differ_in_one_part_differ_in_name(
            (occurrence, pipeline, environment, git_ref, commit, teardown) in arbitrary_parts(),
            which in 0usize..6,
        ) {
            let action = if teardown { Action::Teardown } else { Action::Deploy };
            let base = name(&occurrence, &pipeline, &environment, &git_ref, &commit, action);
            let mut changed = (occurrence.clone(), pipeline.clone(), environment.clone(),
                git_ref.clone(), commit.clone(), action);
            match which {
                0 => changed.0.push('x'),
                1 => changed.1.push('x'),
                2 => changed.2.push('x'),
                3 => changed.3.push('x'),
                4 => changed.4 = match commit.strip_prefix('0') {
                    Some(rest) => format!("1{rest}"),
                    None => format!("0{}", &commit[1..]),
                },
                _ => changed.5 = if teardown { Action::Deploy } else { Action::Teardown },
            }
            let other = name(&changed.0, &changed.1, &changed.2, &changed.3, &changed.4, changed.5);
            prop_assert_ne!(base, other);
        }
    }
}
