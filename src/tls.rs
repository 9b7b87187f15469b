//! HTTPS on the listener (`[server.tls]`): rustls on aws-lc-rs, the TLS stack the AWS
//! SDK already brings. The certificate and key are read at start and again on every
//! reload, so that a renewed certificate needs no restart; a connection keeps the
//! certificate it was accepted with.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls.cert: cannot read the certificate chain in {path}")]
    Cert {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("server.tls.cert: {path} holds no certificate")]
    NoCert { path: String },
    #[error("server.tls.key: cannot read a private key in {path}")]
    Key {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("server.tls: the certificate and key do not make a TLS server")]
    Config(#[from] rustls::Error),
}

/// An acceptor for the certificate and key `config` names, as they are on disk now.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let shown = |path: &std::path::Path| path.display().to_string();
    let certificates = CertificateDer::pem_file_iter(&config.cert)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert {
            path: shown(&config.cert),
            source,
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCert {
            path: shown(&config.cert),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|source| TlsError::Key {
        path: shown(&config.key),
        source,
    })?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certificates, key)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
