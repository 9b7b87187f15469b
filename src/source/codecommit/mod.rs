//! AWS CodeCommit: repository and pull-request events from EventBridge, delivered by
//! an API destination (its connection's API key in a header, compared in constant
//! time) or through an SNS topic (a signed notification), and the older repository
//! triggers through SNS. Repositories are named `<region>/<name>`.

pub mod decode;
pub mod history;
pub mod https;
pub mod sns;

use axum::http::{HeaderMap, HeaderName};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::SourceError;
use crate::config::CodeCommitConfig;
use crate::event::DeliveryId;
pub use decode::Decoded;
use sns::{SnsMessage, SnsVerifier};

/// What a CodeCommit delivery is allowed by.
pub struct CodeCommitSource {
    api_keys: Vec<SecretString>,
    api_key_header: HeaderName,
    sns: Option<SnsVerifier>,
    confirm_subscriptions: bool,
}

/// A delivery whose origin checked out.
pub enum Verified<'a> {
    /// From an EventBridge API destination: the body is the event.
    ApiDestination(&'a [u8]),
    /// A notification SNS signed: its message is the event (or trigger records).
    Notification(SnsMessage),
    /// SNS asks to confirm a subscription to one of our topics.
    SubscriptionConfirmation(SnsMessage),
    UnsubscribeConfirmation(SnsMessage),
}

impl CodeCommitSource {
    pub fn new(config: &CodeCommitConfig) -> Result<CodeCommitSource, https::ClientError> {
        Ok(CodeCommitSource {
            api_keys: config.api_keys.clone(),
            api_key_header: HeaderName::from_bytes(config.api_key_header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-api-key")),
            sns: if config.topic_arns.is_empty() {
                None
            } else {
                Some(SnsVerifier::new(config)?)
            },
            confirm_subscriptions: config.confirm_subscriptions,
        })
    }

    /// Checks where a delivery comes from, before anything of it is acted on: the API
    /// key, or SNS's signature over its fields (SNS carries its signature inside the
    /// JSON body, so only that envelope is read first).
    pub async fn verify<'a>(
        &self,
        headers: &HeaderMap,
        body: &'a [u8],
    ) -> Result<Verified<'a>, SourceError> {
        let keys: Vec<_> = headers.get_all(&self.api_key_header).iter().collect();
        if keys.len() > 1 {
            return Err(SourceError::Unauthenticated(format!(
                "the {} header is sent more than once",
                self.api_key_header
            )));
        }
        if let Some(key) = keys.first() {
            // Compared as hashes, in constant time: neither content nor length leaks.
            let offered = Sha256::digest(key.as_bytes());
            let matches = self.api_keys.iter().any(|expected| {
                let expected = Sha256::digest(expected.expose_secret().as_bytes());
                aws_lc_rs::constant_time::verify_slices_are_equal(&offered, &expected).is_ok()
            });
            return if matches {
                Ok(Verified::ApiDestination(body))
            } else {
                Err(SourceError::Unauthenticated(format!(
                    "the {} header holds no configured key",
                    self.api_key_header
                )))
            };
        }
        let Some(verifier) = &self.sns else {
            return Err(SourceError::Unauthenticated(format!(
                "no {} header, and no SNS topic is configured",
                self.api_key_header
            )));
        };
        if headers.get("x-amz-sns-message-type").is_none() {
            return Err(SourceError::Unauthenticated(format!(
                "neither a {} header nor an SNS message",
                self.api_key_header
            )));
        }
        let message: SnsMessage = serde_json::from_slice(body).map_err(|error| {
            SourceError::Malformed(format!("body is not an SNS message: {error}"))
        })?;
        verifier.verify(&message).await?;
        Ok(match message.kind.as_str() {
            "SubscriptionConfirmation" => Verified::SubscriptionConfirmation(message),
            "UnsubscribeConfirmation" => Verified::UnsubscribeConfirmation(message),
            _ => Verified::Notification(message),
        })
    }

    /// Confirms an SNS subscription, when configured to.
    pub async fn confirm(&self, message: &SnsMessage) -> Result<bool, SourceError> {
        match (&self.sns, self.confirm_subscriptions) {
            (Some(verifier), true) => {
                verifier.confirm(message).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Decodes what a verified delivery carries.
pub fn decode(verified: &Verified<'_>) -> Result<Decoded, SourceError> {
    match verified {
        Verified::ApiDestination(body) => decode::decode(body, None),
        Verified::Notification(message) => {
            let delivery = DeliveryId::parse(&message.message_id)
                .map_err(|error| SourceError::Malformed(error.to_string()))?;
            decode::decode(message.message.as_bytes(), Some(&delivery))
        }
        Verified::SubscriptionConfirmation(_) | Verified::UnsubscribeConfirmation(_) => {
            Ok(Decoded::Ignored("an SNS subscription message".to_string()))
        }
    }
}
