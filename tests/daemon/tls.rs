//! HTTPS on the listener: a generated certificate served, plain HTTP refused, and a
//! renewed certificate taken on SIGHUP without a restart.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::daemon::Daemon;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn certificate(directory: &std::path::Path) -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let certificate = params.self_signed(&key).unwrap();
    std::fs::write(directory.join("cert.pem"), certificate.pem()).unwrap();
    std::fs::write(directory.join("key.pem"), key.serialize_pem()).unwrap();
    certificate.der().clone()
}

/// `GET /healthz` over TLS, trusting `trusted`; the status line and the certificate
/// the server showed.
async fn get_healthz(
    address: &str,
    trusted: &CertificateDer<'static>,
) -> (String, CertificateDer<'static>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let shown = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).to_string();
    (text.lines().next().unwrap_or_default().to_string(), shown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_served_and_a_renewed_certificate_is_taken_on_reload() {
    let files = tempfile::tempdir().unwrap();
    let first = certificate(files.path());
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:8080"

[server.tls]
cert = "{dir}/cert.pem"
key = "{dir}/key.pem"

[github]
webhook_secrets = ["${{GITHUB_WEBHOOK_SECRET}}"]

[queue]
type = "embedded"
path = "var/gitdispatch.db"

[executor]
type = "local"
log_dir = "var/log"
path = "var/executions.db"
"#,
        dir = files.path().display()
    );
    let daemon = Daemon::start(&config, &[]);
    assert!(
        daemon.log().contains("scheme=\"https\""),
        "{}",
        daemon.log()
    );
    let (status, shown) = get_healthz(&daemon.address, &first).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(shown, first);

    // Plain HTTP gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", daemon.address))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // Renewed on disk, then SIGHUP: new connections get the new certificate.
    let renewed = certificate(files.path());
    assert_ne!(renewed, first);
    // SAFETY: kill(2) touches no memory of ours.
    unsafe {
        libc::kill(daemon.pid() as libc::pid_t, libc::SIGHUP);
    }
    daemon.wait_for("the reload", Duration::from_secs(20), |daemon| {
        daemon.log().contains("Reloaded the configuration.")
    });
    let (status, shown) = get_healthz(&daemon.address, &renewed).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(shown, renewed);

    // A key that does not parse refuses the reload; the running certificate goes on.
    std::fs::write(files.path().join("key.pem"), "not a key").unwrap();
    unsafe {
        libc::kill(daemon.pid() as libc::pid_t, libc::SIGHUP);
    }
    daemon.wait_for("the refusal", Duration::from_secs(20), |daemon| {
        daemon.log().contains("server.tls.key")
    });
    let (status, shown) = get_healthz(&daemon.address, &renewed).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(shown, renewed);
}
