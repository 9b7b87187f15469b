//! Hostile input against the listener through a real socket: every malformed,
//! unauthenticated or oversized request gets its documented status and queues nothing;
//! connections that trickle, idle or crowd are closed; one address cannot hold more
//! than its share of connections or unverified bytes.

use crate::common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Delivery, SECRET, config_from, example_config, fixture, spawn_app};
use gitdispatch::source::github::sign;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The example configuration with small limits, so that "one byte over" is cheap and
/// the deadlines short.
fn tight_config() -> gitdispatch::config::Config {
    let mut config = example_config();
    let server = &mut config.server;
    server.max_body_bytes = 64 * 1024;
    server.max_unverified_bytes_per_address = 128 * 1024;
    server.max_unverified_bytes = 256 * 1024;
    server.header_timeout_secs = 1;
    server.idle_timeout_secs = 1;
    server.max_connections = 24;
    server.max_connections_per_address = 8;
    server.rate_limit.per_second = 10_000;
    server.rate_limit.burst = 10_000;
    config
}

/// A raw HTTP/1.1 exchange; the response's status, or 0 when the connection was closed
/// without one.
async fn raw(address: &str, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn request_with(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut request =
        b"POST /webhooks/github HTTP/1.1\r\nHost: test\r\nConnection: close\r\n".to_vec();
    for (name, value) in headers {
        request.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    request.extend_from_slice(body);
    request
}

fn signed_headers(body: &[u8]) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("X-GitHub-Event".into(), "push".into()),
        ("X-GitHub-Delivery".into(), "hostile-1".into()),
        ("X-Hub-Signature-256".into(), sign(SECRET.as_bytes(), body)),
    ]
}

fn as_refs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_status_and_queues_nothing() {
    let app = spawn_app(tight_config()).await;
    let address = app.address.trim_start_matches("http://").to_string();
    let push = fixture("github/push_branch_commits.json");
    let mut cases: Vec<(&str, Vec<u8>, u16)> = Vec::new();

    // Signatures.
    let mut headers = signed_headers(&push);
    headers.retain(|(name, _)| name != "X-Hub-Signature-256");
    cases.push(("no signature", request_with(&as_refs(&headers), &push), 401));
    let mut garbled = signed_headers(&push);
    garbled[3].1 = "sha256=zz".into();
    cases.push((
        "garbled signature",
        request_with(&as_refs(&garbled), &push),
        401,
    ));
    let mut wrong = signed_headers(&push);
    wrong[3].1 = sign(b"another secret", &push);
    cases.push(("wrong secret", request_with(&as_refs(&wrong), &push), 401));
    let mut other_body = signed_headers(&push);
    other_body[3].1 = sign(SECRET.as_bytes(), b"{}");
    cases.push((
        "signature over another body",
        request_with(&as_refs(&other_body), &push),
        401,
    ));
    let mut sha1 = signed_headers(&push);
    sha1[3] = ("X-Hub-Signature".into(), "sha1=0123".into());
    cases.push(("SHA-1 only", request_with(&as_refs(&sha1), &push), 401));
    let mut twice = signed_headers(&push);
    twice.push(twice[3].clone());
    cases.push(("two signatures", request_with(&as_refs(&twice), &push), 401));
    let mut two_events = signed_headers(&push);
    two_events.push(("X-GitHub-Event".into(), "ping".into()));
    cases.push((
        "two event headers",
        request_with(&as_refs(&two_events), &push),
        400,
    ));

    // Content types.
    for content_type in ["text/plain", "application/xml", "multipart/form-data"] {
        let mut headers = signed_headers(&push);
        headers[0].1 = content_type.into();
        cases.push(("content type", request_with(&as_refs(&headers), &push), 415));
    }

    // Bodies.
    let truncated = &push[..push.len() / 2];
    cases.push((
        "truncated JSON",
        request_with(&as_refs(&signed_headers(truncated)), truncated),
        400,
    ));
    let nested = "[".repeat(10_000).into_bytes();
    cases.push((
        "deeply nested JSON",
        request_with(&as_refs(&signed_headers(&nested)), &nested),
        400,
    ));
    let bom = [b"\xef\xbb\xbf".as_slice(), &push].concat();
    cases.push((
        "byte order mark",
        request_with(&as_refs(&signed_headers(&bom)), &bom),
        400,
    ));
    let mut pull_request_header = signed_headers(&push);
    pull_request_header[1].1 = "pull_request".into();
    cases.push((
        "a push body for a pull_request header",
        request_with(&as_refs(&pull_request_header), &push),
        422,
    ));
    let dotted = String::from_utf8(push.clone())
        .unwrap()
        .replace("refs/heads/hotfix/important_patch", "refs/heads/a/../../b")
        .into_bytes();
    cases.push((
        "a ref git refuses",
        request_with(&as_refs(&signed_headers(&dotted)), &dotted),
        422,
    ));
    let form = format!(
        "payload={}&payload={}",
        form_urlencoded::byte_serialize(b"{}").collect::<String>(),
        form_urlencoded::byte_serialize(&push).collect::<String>()
    )
    .into_bytes();
    let mut form_headers = signed_headers(&form);
    form_headers[0].1 = "application/x-www-form-urlencoded".into();
    cases.push((
        "two payload fields",
        request_with(&as_refs(&form_headers), &form),
        400,
    ));
    let over = vec![b' '; 64 * 1024 + 1];
    cases.push((
        "one byte over the cap",
        request_with(&as_refs(&signed_headers(&over)), &over),
        413,
    ));
    let huge_header = "x".repeat(512 * 1024);
    let mut big = signed_headers(&push);
    big.push(("X-Padding".into(), huge_header));
    cases.push((
        "oversized headers",
        request_with(&as_refs(&big), &push),
        431,
    ));

    for (label, request, status) in cases {
        assert_eq!(raw(&address, &request).await, status, "{label}");
    }

    // A chunked body one byte over the cap: refused as soon as it passes it.
    let mut chunked = b"POST /webhooks/github HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
        Content-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: c\r\n\
        X-Hub-Signature-256: sha256=00\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for _ in 0..2 {
        chunked.extend_from_slice(format!("{:x}\r\n", 32 * 1024).as_bytes());
        chunked.extend_from_slice(&vec![b' '; 32 * 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"1\r\n \r\n0\r\n\r\n");
    assert_eq!(raw(&address, &chunked).await, 413, "chunked, one byte over");

    assert!(
        app.queued_jobs().is_empty(),
        "a refused request queued nothing"
    );
    // And a good delivery still goes through.
    let answer = app
        .post_github(&Delivery::fixture("push", "push_branch_commits.json"))
        .await;
    assert_eq!(answer.status, 202);
}

/// A socket connected from `source` (any 127.x.y.z is this machine).
async fn connect_from(source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// Whether the server closed the connection (or never served it) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buffer)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_and_idle_connections_are_closed() {
    let app = spawn_app(tight_config()).await;
    let to: SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();

    // Headers trickled a byte at a time: closed at the header deadline (1 s).
    let mut trickle = connect_from("127.0.0.2", to).await.unwrap();
    let started = Instant::now();
    let request = b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nX-Long: ";
    let mut closed = false;
    for byte in request.iter().chain(std::iter::repeat(&b'a')) {
        if trickle.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut trickle, Duration::from_millis(200)).await {
            closed = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    assert!(closed, "a trickle of headers was kept open");

    // A connection that sends nothing, and one kept alive after a request: both closed
    // once idle for 1 s.
    let mut silent = connect_from("127.0.0.2", to).await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
    let mut kept_alive = connect_from("127.0.0.2", to).await.unwrap();
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let read = kept_alive.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut kept_alive, Duration::from_secs(5)).await);

    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("gitdispatch_connections_timed_out_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let mut config = tight_config();
    config.server.idle_timeout_secs = 60;
    config.server.header_timeout_secs = 60;
    let app = spawn_app(config).await;
    let to: SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();

    // 40 idle connections from one address: 8 are admitted, the rest closed at once.
    let mut crowd = Vec::new();
    for _ in 0..40 {
        crowd.push(connect_from("127.0.0.2", to).await.unwrap());
    }
    let mut closed = 0;
    for stream in &mut crowd {
        if closed_within(stream, Duration::from_millis(300)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 32, "all but 8 refused");

    // From other addresses, up to the total of 24.
    let mut others = Vec::new();
    for source in ["127.0.0.3", "127.0.0.4"] {
        for _ in 0..8 {
            others.push(connect_from(source, to).await.unwrap());
        }
    }
    // Every place is taken, by idle connections: a delivery from another address takes
    // the place of the one idle the longest (one of the crowd's).
    let client = reqwest::Client::builder()
        .local_address("127.0.0.5".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let answer = Delivery::fixture("push", "push_branch_commits.json")
        .post(&client, &format!("{}/webhooks/github", app.address))
        .await
        .unwrap();
    assert_eq!(answer.status, 202);
    let mut evicted = 0;
    for stream in &mut crowd {
        if closed_within(stream, Duration::from_millis(100)).await {
            evicted += 1;
        }
    }
    assert_eq!(evicted, 32 + 1, "one of the crowd made room");
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("gitdispatch_connections_refused_total{reason=\"per_address\"} 32"),
        "{metrics}"
    );
    // The delivery's connection made room, and so may have the one that asked for the
    // metrics.
    assert!(
        metrics.contains("gitdispatch_connections_timed_out_total{reason=\"evicted_idle\"}"),
        "{metrics}"
    );
    drop(others);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_unverified_bytes() {
    let app = spawn_app(tight_config()).await;
    let to: SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
    // Three bodies of 60 KiB from one address, sent but not finished: the first two fit
    // its 128 KiB, the third is refused with 429 before it is read.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from("127.0.0.2", to).await.unwrap();
        stream
            .write_all(
                b"POST /webhooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                  X-GitHub-Event: push\r\nX-GitHub-Delivery: d\r\nX-Hub-Signature-256: sha256=00\r\n\
                  Content-Length: 61440\r\n\r\n",
            )
            .await
            .unwrap();
        stream.write_all(&[b' '; 1024]).await.unwrap();
        open.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let third = Delivery::new("push", vec![b' '; 61440])
        .post(&client, &format!("{}/webhooks/github", app.address))
        .await
        .unwrap();
    assert_eq!(third.status, 429, "{}", third.body);
    // Another address is not held back.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.3".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let answer = Delivery::fixture("push", "push_branch_commits.json")
        .post(&other, &format!("{}/webhooks/github", app.address))
        .await
        .unwrap();
    assert_eq!(answer.status, 202);
    drop(open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_listing_more_commits_than_the_bound_plans_its_newest() {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gitdispatch.toml"),
    )
    .unwrap()
    .replace(
        "webhook_secrets = [\"${GITHUB_WEBHOOK_SECRET}\"]",
        "webhook_secrets = [\"${GITHUB_WEBHOOK_SECRET}\"]\nmax_commits_per_push = 2",
    );
    let app = spawn_app(config_from(&text)).await;
    let answer = app
        .post_github(&Delivery::fixture("push", "push_branch_commits.json"))
        .await;
    assert_eq!(answer.status, 202);
    let names = common::executions(&answer);
    assert_eq!(
        names.len(),
        4,
        "two commits (the newest) for each of two routes"
    );
    assert!(
        names.iter().any(|name| name.contains("-a3b3c3d-")),
        "the head is planned"
    );
    assert!(names.iter().all(|name| !name.contains("-a1b1c1d-")));
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("gitdispatch_commit_lists_truncated_total 1"),
        "{metrics}"
    );
}
