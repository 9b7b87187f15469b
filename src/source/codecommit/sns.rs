//! Amazon SNS deliveries: the message's signature checked against the signing
//! certificate SNS names, fetched only over https from an allowed host (and cached),
//! over the canonical string SNS defines for its type; only configured topics, only
//! fresh messages (an old one is a replay). RSA with SHA-1 (SignatureVersion 1) or
//! SHA-256 (2), verified with aws-lc-rs, the crypto the AWS SDK already brings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::http::Uri;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, SignatureVerificationAlgorithm, alg_id,
};
use serde::Deserialize;

use super::https::{ClientError, FetchError, HttpsClient};

use crate::config::CodeCommitConfig;
use crate::source::SourceError;

/// Certificates kept at most; SNS signs with a few at a time.
const MAX_CACHED_CERTIFICATES: usize = 16;

/// A signing certificate larger than this is refused.
const MAX_CERTIFICATE_BYTES: usize = 64 * 1024;

/// SNS answers a confirmation with a short XML document.
const MAX_CONFIRMATION_BYTES: usize = 64 * 1024;

/// How long fetching a certificate or confirming a subscription may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A message at most this far in the future is taken (clocks differ a little).
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// One SNS message, as SNS posts it.
#[derive(Debug, Clone, Deserialize)]
pub struct SnsMessage {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "MessageId")]
    pub message_id: String,
    #[serde(rename = "TopicArn")]
    pub topic_arn: String,
    #[serde(rename = "Subject", default)]
    pub subject: Option<String>,
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "Timestamp")]
    pub timestamp: String,
    #[serde(rename = "SignatureVersion")]
    pub signature_version: String,
    #[serde(rename = "Signature")]
    pub signature: String,
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: String,
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
    #[serde(rename = "Token", default)]
    pub token: Option<String>,
}

impl SnsMessage {
    /// The string SNS signs: `Name\nValue\n` for each field of the message's type, in
    /// byte order of the names; `Subject` only when the message has one.
    pub fn string_to_sign(&self) -> Result<String, SourceError> {
        let mut fields: Vec<(&str, &str)> =
            vec![("Message", &self.message), ("MessageId", &self.message_id)];
        match self.kind.as_str() {
            "Notification" => {
                if let Some(subject) = &self.subject {
                    fields.push(("Subject", subject));
                }
            }
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
                let subscribe_url = self.subscribe_url.as_deref().ok_or_else(|| {
                    SourceError::Malformed(format!("an SNS {} has no SubscribeURL", self.kind))
                })?;
                fields.push(("SubscribeURL", subscribe_url));
            }
            other => {
                return Err(SourceError::Malformed(format!(
                    "SNS message type {other:?} is unknown"
                )));
            }
        }
        fields.push(("Timestamp", &self.timestamp));
        if self.kind != "Notification" {
            let token = self.token.as_deref().ok_or_else(|| {
                SourceError::Malformed(format!("an SNS {} has no Token", self.kind))
            })?;
            fields.push(("Token", token));
        }
        fields.push(("TopicArn", &self.topic_arn));
        fields.push(("Type", &self.kind));
        let mut text = String::new();
        for (name, value) in fields {
            text.push_str(name);
            text.push('\n');
            text.push_str(value);
            text.push('\n');
        }
        Ok(text)
    }
}

/// RSA PKCS#1 v1.5 with SHA-1, which SNS still signs with under SignatureVersion 1.
#[derive(Debug)]
struct RsaPkcs1Sha1;

impl SignatureVerificationAlgorithm for RsaPkcs1Sha1 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            public_key,
        )
        .verify(message, signature)
        .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_ENCRYPTION
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        // sha1WithRSAEncryption, 1.2.840.113549.1.1.5, with NULL parameters.
        AlgorithmIdentifier::from_slice(&[
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05, 0x00,
        ])
    }
}

/// Checks SNS messages; fetches and caches signing certificates.
pub struct SnsVerifier {
    topics: Vec<String>,
    /// Hosts allowed beyond AWS's own (`host` or `host:port`), lowercase.
    hosts: Vec<String>,
    max_age: Duration,
    client: HttpsClient,
    /// DER certificates by URL: SNS signs with few, long-lived certificates.
    certificates: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl std::fmt::Debug for SnsVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsVerifier")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// Whether AWS's SNS serves from `host`: `sns.<region>.amazonaws.com`, or
/// `sns.<region>.amazonaws.com.cn`, as AWS's own SNS message validators have it (the
/// region letters, digits and dashes; no other label, no trailing dot).
pub fn is_aws_sns_host(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sns.") else {
        return false;
    };
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"));
    region.is_some_and(|region| {
        region.len() >= 3
            && region
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
    })
}

/// Whether a URL SNS gave (a SigningCertURL, a SubscribeURL) may be fetched: https, no
/// credentials, a host name (not an IP address), and either AWS's SNS host with no port
/// or exactly one of `extra` (`host`, or `host:port`, lowercase). Says why not.
pub fn sns_url_allowed(url: &Uri, extra: &[String]) -> Result<(), &'static str> {
    if url.scheme_str() != Some("https") {
        return Err("is not https");
    }
    let Some(authority) = url.authority() else {
        return Err("has no host");
    };
    if authority.as_str().contains('@') {
        return Err("carries credentials");
    }
    let host = authority.host().to_ascii_lowercase();
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return Err("names an IP address, not SNS's host");
    }
    let exact = authority.as_str().to_ascii_lowercase();
    if extra.contains(&exact) {
        return Ok(());
    }
    if authority.port().is_none() && is_aws_sns_host(&host) {
        return Ok(());
    }
    Err("is not on SNS's host (sns.<region>.amazonaws.com) nor one of codecommit.certificate_hosts")
}

impl SnsVerifier {
    pub fn new(config: &CodeCommitConfig) -> Result<SnsVerifier, ClientError> {
        Ok(SnsVerifier {
            topics: config.topic_arns.clone(),
            hosts: config
                .certificate_hosts
                .iter()
                .map(|host| host.to_ascii_lowercase())
                .collect(),
            max_age: Duration::from_secs(config.max_message_age_secs),
            client: HttpsClient::new(config.certificate_roots.as_deref(), FETCH_TIMEOUT)?,
            certificates: Mutex::new(HashMap::new()),
        })
    }

    /// Checks a message: a topic of ours, fresh, signed by SNS.
    pub async fn verify(&self, message: &SnsMessage) -> Result<(), SourceError> {
        let to_sign = message.string_to_sign()?;
        if !self.topics.contains(&message.topic_arn) {
            return Err(SourceError::Forbidden(format!(
                "SNS topic {} is not in codecommit.topic_arns",
                message.topic_arn
            )));
        }
        self.check_age(&message.timestamp)?;
        let algorithm: &dyn SignatureVerificationAlgorithm =
            match message.signature_version.as_str() {
                "1" => &RsaPkcs1Sha1,
                "2" => webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
                other => {
                    return Err(SourceError::Unauthenticated(format!(
                        "SNS SignatureVersion {other:?} is unknown"
                    )));
                }
            };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(message.signature.as_bytes())
            .map_err(|_| SourceError::Unauthenticated("the SNS signature is not base64".into()))?;
        let der = self.certificate(&message.signing_cert_url).await?;
        let certificate = CertificateDer::from(der.as_slice());
        let certificate = webpki::EndEntityCert::try_from(&certificate).map_err(|error| {
            SourceError::Unauthenticated(format!(
                "the SNS signing certificate is unusable: {error}"
            ))
        })?;
        certificate
            .verify_signature(algorithm, to_sign.as_bytes(), &signature)
            .map_err(|_| {
                SourceError::Unauthenticated(
                    "the SNS signature does not match the message".to_string(),
                )
            })
    }

    fn check_age(&self, timestamp: &str) -> Result<(), SourceError> {
        let at = humantime::parse_rfc3339_weak(timestamp).map_err(|_| {
            SourceError::Malformed(format!("SNS Timestamp {timestamp:?} is not a time"))
        })?;
        let now = SystemTime::now();
        let stale = now.duration_since(at).is_ok_and(|age| age > self.max_age);
        let future = at.duration_since(now).is_ok_and(|ahead| ahead > CLOCK_SKEW);
        if stale || future {
            return Err(SourceError::Unauthenticated(format!(
                "the SNS message was sent at {timestamp}, outside codecommit.max_message_age_secs ({} s) of now",
                self.max_age.as_secs()
            )));
        }
        Ok(())
    }

    /// Checks that a URL SNS gave is one SNS serves from ([`sns_url_allowed`]).
    fn allowed_url(&self, url: &str, what: &str) -> Result<Uri, SourceError> {
        // A fragment, or anything else a URI cannot hold, is not a URL SNS sends.
        let parsed: Uri = url.parse().map_err(|_| {
            SourceError::Unauthenticated(format!("the SNS {what} {url:?} is not a URL"))
        })?;
        sns_url_allowed(&parsed, &self.hosts)
            .map_err(|why| SourceError::Unauthenticated(format!("the SNS {what} {url:?} {why}")))?;
        Ok(parsed)
    }

    /// The DER certificate at `url`, fetched once.
    async fn certificate(&self, url: &str) -> Result<Arc<Vec<u8>>, SourceError> {
        if let Some(known) = self
            .certificates
            .lock()
            .expect("certificate cache lock")
            .get(url)
        {
            return Ok(known.clone());
        }
        let parsed = self.allowed_url(url, "SigningCertURL")?;
        // One URL per certificate: no query to vary (and so to fill the cache with).
        if parsed.query().is_some() || !parsed.path().ends_with(".pem") {
            return Err(SourceError::Unauthenticated(format!(
                "the SNS SigningCertURL {url:?} is not a .pem file without a query"
            )));
        }
        let unavailable = |detail: String| {
            SourceError::Unavailable(format!(
                "cannot fetch the SNS signing certificate: {detail}"
            ))
        };
        let (status, pem) = match self.client.get(parsed, MAX_CERTIFICATE_BYTES).await {
            Ok(answer) => answer,
            Err(FetchError::TooLarge(_)) => {
                return Err(SourceError::Unauthenticated(
                    "the SNS signing certificate is too large".to_string(),
                ));
            }
            Err(error) => return Err(unavailable(crate::error::Chain(&error).to_string())),
        };
        if !status.is_success() {
            return Err(unavailable(format!("{url} answered {status}")));
        }
        let certificate = CertificateDer::from_pem_slice(&pem).map_err(|_| {
            SourceError::Unauthenticated("the SNS signing certificate is not PEM".to_string())
        })?;
        let der = Arc::new(certificate.as_ref().to_vec());
        let mut cache = self.certificates.lock().expect("certificate cache lock");
        if cache.len() >= MAX_CACHED_CERTIFICATES {
            // Rotation leaves old certificates behind: start over rather than grow.
            cache.clear();
        }
        cache.insert(url.to_string(), der.clone());
        Ok(der)
    }

    /// Confirms a subscription by visiting its SubscribeURL (https, an allowed host).
    pub async fn confirm(&self, message: &SnsMessage) -> Result<(), SourceError> {
        let url = message.subscribe_url.as_deref().unwrap_or_default();
        let parsed = self.allowed_url(url, "SubscribeURL")?;
        let (status, _) = self
            .client
            .get(parsed, MAX_CONFIRMATION_BYTES)
            .await
            .map_err(|error| {
                SourceError::Unavailable(format!(
                    "cannot confirm the SNS subscription: {}",
                    crate::error::Chain(&error)
                ))
            })?;
        if !status.is_success() {
            return Err(SourceError::Unavailable(format!(
                "confirming the SNS subscription answered {status}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_exactly_or_configured_ones_are_fetched_from() {
        let extra = vec![
            "sns.private.example.net".to_string(),
            "localhost:8443".to_string(),
        ];
        let allowed = |url: &str| sns_url_allowed(&url.parse::<Uri>().unwrap(), &extra);
        for url in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-a.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-a.pem",
            "https://SNS.EU-WEST-1.AMAZONAWS.COM/SimpleNotificationService-a.pem",
            "https://sns.private.example.net/SimpleNotificationService-a.pem",
            "https://localhost:8443/SimpleNotificationService-a.pem",
        ] {
            assert_eq!(allowed(url), Ok(()), "{url}");
        }
        for url in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.s3.amazonaws.com/x.pem",
            "https://sns.evil.s3.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.example.org/x.pem",
            "https://sns.us-east-1.amazonaws.com./x.pem",
            "https://xsns.us-east-1.amazonaws.com/x.pem",
            "https://sns.a.amazonaws.com/x.pem",
            "https://sns.us_east_1.amazonaws.com/x.pem",
            "https://user@sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:443/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://52.94.1.1/x.pem",
            "https://[::1]/x.pem",
            "https://localhost/x.pem",
            "https://localhost:8444/x.pem",
            "https://sub.sns.private.example.net/x.pem",
        ] {
            assert!(allowed(url).is_err(), "{url}");
        }
    }

    fn notification() -> SnsMessage {
        SnsMessage {
            kind: "Notification".into(),
            message_id: "id".into(),
            topic_arn: "arn:aws:sns:us-east-1:1:t".into(),
            subject: None,
            message: "m".into(),
            timestamp: "2026-11-23T10:00:00.000Z".into(),
            signature_version: "2".into(),
            signature: String::new(),
            signing_cert_url: String::new(),
            subscribe_url: None,
            token: None,
        }
    }

    #[test]
    fn the_string_to_sign_follows_aws_for_each_type() {
        let mut message = notification();
        assert_eq!(
            message.string_to_sign().unwrap(),
            "Message\nm\nMessageId\nid\nTimestamp\n2026-11-23T10:00:00.000Z\nTopicArn\narn:aws:sns:us-east-1:1:t\nType\nNotification\n"
        );
        message.subject = Some("s".into());
        assert!(
            message
                .string_to_sign()
                .unwrap()
                .contains("MessageId\nid\nSubject\ns\nTimestamp")
        );
        message.kind = "SubscriptionConfirmation".into();
        message.subscribe_url = Some("https://u".into());
        message.token = Some("tok".into());
        assert_eq!(
            message.string_to_sign().unwrap(),
            "Message\nm\nMessageId\nid\nSubscribeURL\nhttps://u\nTimestamp\n2026-11-23T10:00:00.000Z\nToken\ntok\nTopicArn\narn:aws:sns:us-east-1:1:t\nType\nSubscriptionConfirmation\n"
        );
        message.kind = "Other".into();
        assert!(message.string_to_sign().is_err());
    }
}
