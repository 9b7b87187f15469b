//! The manual source: `POST /v1/executions`, authenticated with a bearer token of
//! `[api] tokens` (compared in constant time, as digests, so that neither content nor
//! length leaks), its body decoded into a [`Manual`] event. What the body names (the
//! pipeline, its projects and skip flags) is checked by the planner.

use axum::http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::SourceError;
use crate::config::ApiConfig;
use crate::event::{CommitSha, DeliveryId, Event, EventKind, Manual, Occurrence, RefName, Source};

/// Who may call the API.
pub struct ManualSource {
    tokens: Vec<SecretString>,
    /// How long a sign-in to the page lasts.
    session_lifetime: std::time::Duration,
}

impl std::fmt::Debug for ManualSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualSource")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl ManualSource {
    /// `None` when `[api]` gives no token: there is no API.
    pub fn from_config(config: &ApiConfig) -> Option<ManualSource> {
        config.enabled().then(|| ManualSource {
            tokens: config.tokens.clone(),
            session_lifetime: std::time::Duration::from_secs(config.session_hours * 3600),
        })
    }

    /// How long a sign-in to the page lasts.
    pub fn session_lifetime(&self) -> std::time::Duration {
        self.session_lifetime
    }

    /// The digests (SHA-256, hex) of the configured tokens, as sessions keep them.
    pub fn digests(&self) -> Vec<String> {
        self.tokens
            .iter()
            .map(|token| hex::encode(Sha256::digest(token.expose_secret().as_bytes())))
            .collect()
    }

    /// Whether `digest` (SHA-256, hex) is a configured token's: a page's session holds
    /// on only while the token it was opened with is configured.
    pub fn holds_digest(&self, digest: &str) -> bool {
        self.tokens.iter().fold(false, |found, token| {
            let expected = hex::encode(Sha256::digest(token.expose_secret().as_bytes()));
            let equal = aws_lc_rs::constant_time::verify_slices_are_equal(
                expected.as_bytes(),
                digest.as_bytes(),
            )
            .is_ok();
            found | equal
        })
    }

    /// The configured token `offered` is, compared with every one in constant time,
    /// as digests, so that neither content nor length leaks.
    pub fn matching(&self, offered: &str) -> Option<&SecretString> {
        let offered = Sha256::digest(offered.as_bytes());
        self.tokens.iter().fold(None, |found, token| {
            let expected = Sha256::digest(token.expose_secret().as_bytes());
            let equal =
                aws_lc_rs::constant_time::verify_slices_are_equal(&offered, &expected).is_ok();
            found.or(equal.then_some(token))
        })
    }

    /// Checks the `Authorization: Bearer` token against every configured one.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<(), SourceError> {
        let mut values = headers.get_all("authorization").iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(SourceError::Unauthenticated(
                "one Authorization: Bearer <token> header is needed".into(),
            ));
        };
        let offered = value
            .to_str()
            .ok()
            // The scheme's name is case-insensitive (RFC 9110, 11.1).
            .and_then(|text| text.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or_else(|| {
                SourceError::Unauthenticated(
                    "the Authorization header is not a bearer token".into(),
                )
            })?;
        if self.matching(offered.trim()).is_some() {
            Ok(())
        } else {
            Err(SourceError::Unauthenticated(
                "the bearer token is not one of api.tokens".into(),
            ))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    project: String,
    branch: String,
}

/// Decodes a trigger's body. `key` is its `Idempotency-Key`, when it has one: the
/// execution's name is then a function of the key alone, so that a retry names the
/// same execution; without one, every request is a run of its own.
pub fn decode(body: &[u8], key: Option<&str>) -> Result<Event, SourceError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| SourceError::Malformed(format!("body is not valid JSON: {error}")))?;
    let Value::Object(fields) = value else {
        return Err(SourceError::Malformed(
            "the body is not a JSON object".into(),
        ));
    };
    // A field named twice is ambiguous (which environment?): refused, not read as its
    // last.
    if let Some(name) = repeated_key(body) {
        return Err(SourceError::Unusable(format!("{name}: is given twice")));
    }
    decode_fields(fields, key)
}

/// Where a JSON body first gives a key twice in one object, as a path
/// (`override_branches[0].branch`), if it does anywhere.
pub(crate) fn repeated_key(body: &[u8]) -> Option<String> {
    use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
    /// The path of the value being read.
    struct Repeats(String);
    impl<'de> DeserializeSeed<'de> for Repeats {
        type Value = Option<String>;
        fn deserialize<D: serde::Deserializer<'de>>(
            self,
            deserializer: D,
        ) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Repeats {
        type Value = Option<String>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("JSON")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut first = None;
            while let Some(key) = map.next_key::<String>()? {
                let path = if self.0.is_empty() {
                    key.clone()
                } else {
                    format!("{}.{key}", self.0)
                };
                let inner = map.next_value_seed(Repeats(path.clone()))?;
                if first.is_none() {
                    first = if seen.insert(key) { inner } else { Some(path) };
                }
            }
            Ok(first)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut first = None;
            let mut index = 0;
            while let Some(inner) =
                seq.next_element_seed(Repeats(format!("{}[{index}]", self.0)))?
            {
                first = first.or(inner);
                index += 1;
            }
            Ok(first)
        }

        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    Repeats(String::new())
        .deserialize(&mut deserializer)
        .ok()
        .flatten()
}

/// Decodes a trigger's fields (a body's, or what another source asks in its words).
pub fn decode_fields(
    mut fields: Map<String, Value>,
    key: Option<&str>,
) -> Result<Event, SourceError> {
    let text = |fields: &mut Map<String, Value>, name: &str| -> Result<String, SourceError> {
        match fields.remove(name) {
            Some(Value::String(text)) if !text.is_empty() => Ok(text),
            Some(_) => Err(SourceError::Unusable(format!(
                "{name}: must be a non-empty string"
            ))),
            None => Err(SourceError::Unusable(format!("{name}: is missing"))),
        }
    };
    let pipeline = text(&mut fields, "pipeline")?;
    let environment = text(&mut fields, "environment")?;
    let commit = match fields.remove("commit") {
        None | Some(Value::Null) => None,
        Some(Value::String(sha)) => Some(
            CommitSha::parse(&sha)
                .map_err(|error| SourceError::Unusable(format!("commit: {error}")))?,
        ),
        Some(_) => return Err(SourceError::Unusable("commit: must be a string".into())),
    };
    let overrides: Vec<OverrideBody> = match fields.remove("override_branches") {
        None | Some(Value::Null) => Vec::new(),
        Some(value) => serde_json::from_value(value).map_err(|error| {
            SourceError::Unusable(format!(
                "override_branches: must be a list of {{\"project\", \"branch\"}}: {error}"
            ))
        })?,
    };
    let mut parsed = Vec::with_capacity(overrides.len());
    for (index, entry) in overrides.into_iter().enumerate() {
        let git_ref = RefName::parse(&format!("refs/heads/{}", entry.branch)).map_err(|_| {
            SourceError::Unusable(format!(
                "override_branches[{index}].branch: {:?} is not a branch name git accepts",
                entry.branch
            ))
        })?;
        parsed.push((entry.project, git_ref));
    }
    let mut skips = Vec::new();
    for (name, value) in fields {
        if !name.starts_with("skip_") {
            return Err(SourceError::Unusable(format!(
                "{name}: is not a field of a trigger (pipeline, environment, skip_*, override_branches, commit)"
            )));
        }
        let Value::Bool(skip) = value else {
            return Err(SourceError::Unusable(format!(
                "{name}: must be true or false"
            )));
        };
        skips.push((name, skip));
    }
    let delivery = match key {
        Some(key) => DeliveryId::parse(key)
            .map_err(|error| SourceError::Malformed(format!("Idempotency-Key: {error}")))?,
        None => DeliveryId::parse(&uuid::Uuid::new_v4().to_string()).expect("a uuid is an id"),
    };
    let occurrence = Occurrence::from_parts(&["manual", delivery.as_str()]);
    let repository = String::new();
    Ok(Event {
        source: Source::Manual,
        delivery,
        occurrence,
        repository,
        kind: EventKind::Manual(Manual {
            pipeline,
            environment,
            skips,
            overrides: parsed,
            commit,
            codepipeline: None,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_or_name_the_field_at_fault() {
        let event = decode(
            br#"{"pipeline": "deploy", "environment": "acceptance", "skip_api_v1": true,
                 "override_branches": [{"project": "project-api-v2", "branch": "hotfix/x"}]}"#,
            Some("key-1"),
        )
        .unwrap();
        let EventKind::Manual(manual) = &event.kind else {
            panic!("a manual event");
        };
        assert_eq!(manual.pipeline, "deploy");
        assert_eq!(manual.skips, [("skip_api_v1".to_string(), true)]);
        assert_eq!(manual.overrides[0].1.as_str(), "refs/heads/hotfix/x");
        assert_eq!(event.delivery.as_str(), "key-1");
        assert_eq!(
            decode(br#"{"pipeline": "d", "environment": "e"}"#, Some("key-1"))
                .unwrap()
                .occurrence,
            event.occurrence,
            "the key alone names the occurrence"
        );
        for (body, field) in [
            (r#"{"environment": "e"}"#, "pipeline"),
            (r#"{"pipeline": "d", "environment": 3}"#, "environment"),
            (
                r#"{"pipeline": "d", "environment": "e", "commit": "xyz"}"#,
                "commit",
            ),
            (
                r#"{"pipeline": "d", "environment": "e", "skip_a": "yes"}"#,
                "skip_a",
            ),
            (
                r#"{"pipeline": "d", "environment": "e", "colour": "red"}"#,
                "colour",
            ),
            (
                r#"{"pipeline": "d", "environment": "e", "override_branches": [{"project": "p", "branch": "a..b"}]}"#,
                "override_branches[0].branch",
            ),
            (
                r#"{"pipeline": "d", "environment": "e", "override_branches": 3}"#,
                "override_branches",
            ),
            (
                r#"{"pipeline": "d", "environment": "production", "environment": "acceptance"}"#,
                "environment",
            ),
            (
                r#"{"pipeline": "d", "environment": "e", "override_branches": [{"project": "p", "branch": "a", "branch": "b"}]}"#,
                "override_branches[0].branch",
            ),
        ] {
            let error = decode(body.as_bytes(), None).unwrap_err();
            assert!(
                matches!(&error, SourceError::Unusable(message) if message.starts_with(&format!("{field}:"))),
                "{body}: {error}"
            );
        }
        assert!(matches!(
            decode(b"[]", None),
            Err(SourceError::Malformed(_))
        ));
        assert!(matches!(decode(b"{", None), Err(SourceError::Malformed(_))));
    }

    #[test]
    fn only_a_configured_bearer_token_authenticates() {
        let source = ManualSource::from_config(&ApiConfig {
            tokens: vec![SecretString::from("token-one-0123456789")],
            ..ApiConfig::default()
        })
        .unwrap();
        let headers = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert("authorization", value.parse().unwrap());
            }
            headers
        };
        assert!(
            source
                .authenticate(&headers(Some("Bearer token-one-0123456789")))
                .is_ok()
        );
        for wrong in [
            None,
            Some("Bearer nope"),
            Some("token-one-0123456789"),
            Some("Basic abc"),
        ] {
            assert!(source.authenticate(&headers(wrong)).is_err(), "{wrong:?}");
        }
        for scheme in ["bearer", "BEARER"] {
            assert!(
                source
                    .authenticate(&headers(Some(&format!("{scheme} token-one-0123456789"))))
                    .is_ok(),
                "the scheme's name is case-insensitive"
            );
        }
        assert!(
            source
                .authenticate(&headers(Some("Basic token-one-0123456789")))
                .is_err()
        );
        let mut twice = headers(Some("Bearer token-one-0123456789"));
        twice.append(
            "authorization",
            "Bearer token-one-0123456789".parse().unwrap(),
        );
        assert!(source.authenticate(&twice).is_err(), "one header, not two");
        assert!(!format!("{source:?}").contains("token-one"));
    }
}
