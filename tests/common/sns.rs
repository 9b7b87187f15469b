//! SNS as gitdispatch meets it: an https server on `localhost` (its certificate issued by
//! a test CA the daemon is told to trust, and allowed by name and port in
//! `codecommit.certificate_hosts`) that serves the signing certificate and
//! takes subscription confirmations, and messages signed the way SNS signs them
//! (RSA PKCS#1 v1.5 over the canonical string, SHA-1 for version 1, SHA-256 for 2;
//! aws-lc-rs verifies SHA-1 signatures but makes none, so `openssl` signs those).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

pub const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:codecommit-events";

/// The fake SNS endpoint and the key it signs with.
pub struct Sns {
    /// `https://localhost:<port>`.
    pub base: String,
    /// `localhost:<port>`: what `codecommit.certificate_hosts` allows.
    pub authority: String,
    /// The test CA's certificate, PEM: `codecommit.certificate_roots`.
    pub roots: PathBuf,
    key: RsaKeyPair,
    /// The same key, PEM, for `openssl`.
    key_file: PathBuf,
    pub certificate_fetches: Arc<AtomicUsize>,
    pub confirmations: Arc<AtomicUsize>,
    _directory: tempfile::TempDir,
}

impl Sns {
    pub async fn start() -> Sns {
        let directory = tempfile::tempdir().unwrap();
        // The CA, and the server's certificate for localhost it issues.
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let roots = directory.path().join("roots.pem");
        std::fs::write(&roots, ca.pem()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_certificate = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();

        // The RSA key SNS signs messages with, and its (self-signed) certificate.
        let signing = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let signing_certificate = CertificateParams::new(vec!["sns.amazonaws.com".to_string()])
            .unwrap()
            .self_signed(&signing)
            .unwrap()
            .pem();
        let key = RsaKeyPair::from_pkcs8(&signing.serialize_der()).unwrap();
        let key_file = directory.path().join("signing.pem");
        std::fs::write(&key_file, signing.serialize_pem()).unwrap();

        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_certificate.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = format!("localhost:{}", listener.local_addr().unwrap().port());
        let base = format!("https://{authority}");
        let certificate_fetches = Arc::new(AtomicUsize::new(0));
        let confirmations = Arc::new(AtomicUsize::new(0));
        let (fetches, confirmed) = (certificate_fetches.clone(), confirmations.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let certificate = signing_certificate.clone();
                let (fetches, confirmed) = (fetches.clone(), confirmed.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let path = request.uri().path().to_string();
                            let query = request.uri().query().unwrap_or_default().to_string();
                            let (status, body) = if path == "/SimpleNotificationService-test.pem" {
                                fetches.fetch_add(1, Ordering::SeqCst);
                                (200, certificate.clone())
                            } else if path == "/" && query.contains("Action=ConfirmSubscription") {
                                confirmed.fetch_add(1, Ordering::SeqCst);
                                (200, "<ConfirmSubscriptionResponse/>".to_string())
                            } else {
                                (404, String::new())
                            };
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Sns {
            base,
            authority,
            roots,
            key,
            key_file,
            certificate_fetches,
            confirmations,
            _directory: directory,
        }
    }

    /// The `[codecommit]` section that trusts this endpoint, with `extra` lines.
    pub fn config_section(&self, extra: &str) -> String {
        self.config_section_allowing("", extra)
    }

    /// [`Sns::config_section`], allowing `also` (a `host:port`) as well.
    pub fn config_section_allowing(&self, also: &str, extra: &str) -> String {
        let also = if also.is_empty() {
            String::new()
        } else {
            format!(", \"{also}\"")
        };
        format!(
            "[codecommit]\ntopic_arns = [\"{TOPIC}\"]\ncertificate_hosts = [\"{}\"{also}]\ncertificate_roots = \"{}\"\n{extra}\n",
            self.authority,
            self.roots.display()
        )
    }

    pub fn certificate_url(&self) -> String {
        format!("{}/SimpleNotificationService-test.pem", self.base)
    }

    /// A notification of `message` on [`TOPIC`], sent now, signed with `version`.
    pub fn notification(&self, message: &str, version: &str) -> Value {
        let mut fields = json!({
            "Type": "Notification",
            "MessageId": uuid::Uuid::new_v4().to_string(),
            "TopicArn": TOPIC,
            "Message": message,
            "Timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "SignatureVersion": version,
            "SigningCertURL": self.certificate_url(),
            "UnsubscribeURL": format!("{}/?Action=Unsubscribe", self.base),
        });
        self.sign(&mut fields);
        fields
    }

    /// A subscription confirmation for [`TOPIC`], signed.
    pub fn subscription_confirmation(&self) -> Value {
        let token = "2336412f37fb687f5d51e6e2425c464de257ac66fdbf3d0d8e7a8e5a0ba1b9a5";
        let mut fields = json!({
            "Type": "SubscriptionConfirmation",
            "MessageId": uuid::Uuid::new_v4().to_string(),
            "Token": token,
            "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe to the topic. To confirm the subscription, visit the SubscribeURL included in this message.",
            "SubscribeURL": format!("{}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={token}", self.base),
            "Timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "SignatureVersion": "2",
            "SigningCertURL": self.certificate_url(),
        });
        self.sign(&mut fields);
        fields
    }

    /// Signs the message's fields as they stand (after a change, sign again).
    pub fn sign(&self, fields: &mut Value) {
        let kind = fields["Type"].as_str().unwrap().to_string();
        let names: &[&str] = if kind == "Notification" {
            &[
                "Message",
                "MessageId",
                "Subject",
                "Timestamp",
                "TopicArn",
                "Type",
            ]
        } else {
            &[
                "Message",
                "MessageId",
                "SubscribeURL",
                "Timestamp",
                "Token",
                "TopicArn",
                "Type",
            ]
        };
        let mut text = String::new();
        for name in names {
            if let Some(value) = fields.get(*name).and_then(Value::as_str) {
                text.push_str(&format!("{name}\n{value}\n"));
            }
        }
        let signature = if fields["SignatureVersion"] == "1" {
            let mut openssl = std::process::Command::new("openssl")
                .args(["dgst", "-sha1", "-sign"])
                .arg(&self.key_file)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("openssl signs SHA-1 messages");
            use std::io::Write;
            openssl
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let output = openssl.wait_with_output().unwrap();
            assert!(output.status.success(), "openssl dgst failed");
            output.stdout
        } else {
            let mut signature = vec![0; self.key.public_modulus_len()];
            self.key
                .sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    text.as_bytes(),
                    &mut signature,
                )
                .unwrap();
            signature
        };
        fields["Signature"] =
            Value::String(base64::engine::general_purpose::STANDARD.encode(signature));
    }
}

/// POSTs an SNS message as SNS does (`text/plain`, its type in a header).
pub async fn post_sns(client: &reqwest::Client, url: &str, message: &Value) -> (u16, Value) {
    let response = client
        .post(url)
        .header("content-type", "text/plain; charset=UTF-8")
        .header(
            "x-amz-sns-message-type",
            message["Type"].as_str().unwrap_or("Notification"),
        )
        .header(
            "x-amz-sns-topic-arn",
            message["TopicArn"].as_str().unwrap_or(""),
        )
        .body(serde_json::to_vec(message).unwrap())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
