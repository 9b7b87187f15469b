//! The https client for what SNS asks to be fetched (signing certificates, subscription
//! confirmations): rustls on aws-lc-rs, the TLS stack the AWS SDK already brings, with
//! the system's roots and any configured ones; https only, no redirects followed, every
//! answer bounded in time and size.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::BoxError;

/// Why the client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the certificate roots in {path}")]
    Roots {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("cannot set up TLS")]
    Tls(#[from] rustls::Error),
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within {} s", .0.as_secs())]
    Timeout(Duration),
    #[error("the request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading the answer failed")]
    Body(#[source] BoxError),
}

pub struct HttpsClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

impl HttpsClient {
    /// Trusts the system's roots and the PEM certificates in `extra` (a private CA).
    pub fn new(extra: Option<&Path>, timeout: Duration) -> Result<HttpsClient, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in rustls_native_certs::load_native_certs().certs {
            // A system root rustls cannot use is one it would not trust anyway.
            let _ = roots.add(certificate);
        }
        if let Some(path) = extra {
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|source| ClientError::Roots {
                    path: path.to_path_buf(),
                    source,
                })?;
            for certificate in certificates {
                roots.add(certificate)?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(HttpsClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// GETs `uri`: its status and at most `max_bytes` of its body.
    pub async fn get(&self, uri: Uri, max_bytes: usize) -> Result<(StatusCode, Bytes), FetchError> {
        let fetch = async {
            let response = self.client.get(uri).await.map_err(FetchError::Request)?;
            let status = response.status();
            let body = Limited::new(response.into_body(), max_bytes)
                .collect()
                .await
                .map_err(|error| {
                    if error.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge(max_bytes)
                    } else {
                        FetchError::Body(error)
                    }
                })?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }
}
