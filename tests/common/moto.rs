//! moto in server mode, standing in for SQS and Step Functions. One server per test
//! binary, started on first use from the virtualenv `scripts/test` installs, told to
//! really execute state machines, and killed when the test process ends. It runs
//! through `tests/support/moto_server.py`, which gives SQS FIFO queues AWS's
//! five-minute deduplication window (moto forgets an id once its message is deleted).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, SdkConfig};

static MOTO: OnceLock<String> = OnceLock::new();

fn moto_server() -> PathBuf {
    std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server"))
}

/// A raw HTTP/1.0 request; returns the status code.
fn http(address: &str, method: &str, path: &str, body: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0))
}

/// The URL of this test binary's moto server.
pub fn url() -> &'static str {
    MOTO.get_or_init(|| {
        let program = moto_server();
        assert!(
            program.exists(),
            "moto is not installed at {}: run scripts/test, which installs it into .venv",
            program.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        // The server is the child of a thread that lives as long as the process: the
        // parent-death signal then fires when the test process ends, not before.
        let (started, started_receiver) = std::sync::mpsc::channel();
        // The virtualenv's Python, beside its moto_server.
        let python = program.with_file_name("python3");
        let wrapper =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/moto_server.py");
        std::thread::spawn(move || {
            let mut command = Command::new(python);
            command
                .arg(wrapper)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl only sets a flag of the child being created.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let child = command.spawn();
            started.send(child.map(|_| ())).unwrap();
            loop {
                std::thread::park();
            }
        });
        started_receiver
            .recv()
            .unwrap()
            .expect("moto_server starts");
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(&address, "GET", "/moto-api/", "").is_err() {
            assert!(Instant::now() < deadline, "moto did not start listening");
            std::thread::sleep(Duration::from_millis(100));
        }
        // Must come before any state machine exists: it switches moto to a backend
        // that runs them.
        let status = http(
            &address,
            "POST",
            "/moto-api/config",
            r#"{"stepfunctions": {"execute_state_machine": true}}"#,
        )
        .unwrap();
        assert!(
            (200..300).contains(&status),
            "moto refused the config: {status}"
        );
        format!("http://{address}")
    })
}

/// AWS settings pointing at moto.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(url())
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .load()
        .await
}

/// The environment that points the `gitdispatch` binary at moto.
pub fn environment() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", url().to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Creates a queue (FIFO when `fifo`) with a dead-letter queue of the same type and a
/// redrive policy; returns the queue URL and the dead-letter queue URL.
pub async fn create_queue(
    client: &aws_sdk_sqs::Client,
    fifo: bool,
    visibility: Duration,
    max_receives: u32,
) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName;
    let suffix = if fifo { ".fifo" } else { "" };
    let base = unique("gitdispatch");
    let mut dead = client
        .create_queue()
        .queue_name(format!("{base}-dead{suffix}"));
    if fifo {
        dead = dead.attributes(QueueAttributeName::FifoQueue, "true");
    }
    let dead_url = dead.send().await.unwrap().queue_url().unwrap().to_string();
    let dead_arn = client
        .get_queue_attributes()
        .queue_url(&dead_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let mut create = client
        .create_queue()
        .queue_name(format!("{base}{suffix}"))
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility.as_secs().to_string(),
        )
        .attributes(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dead_arn, "maxReceiveCount": max_receives})
                .to_string(),
        );
    if fifo {
        create = create.attributes(QueueAttributeName::FifoQueue, "true");
    }
    let url = create
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_string();
    (url, dead_url)
}

/// Ids of the messages in a dead-letter queue (looked at without taking them).
pub async fn dead_letter_ids(client: &aws_sdk_sqs::Client, dead_url: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..3 {
        let output = client
            .receive_message()
            .queue_url(dead_url)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        for message in output.messages() {
            if let Some(read) = gitdispatch::queue::sqs::read_dead_letter(message) {
                if !ids.contains(&read.id) {
                    ids.push(read.id);
                }
            }
        }
        if !ids.is_empty() {
            break;
        }
    }
    ids
}

/// Creates a table shaped as the ledger's (and the journal's), as
/// `deploy/aws/gitdispatch.yaml` makes it: a string key `pk`, the `lists` index
/// (`lpk`, `lsk`, projecting `record` and `expires`), paid per request; its name.
pub async fn ledger_table(client: &aws_sdk_dynamodb::Client, prefix: &str) -> String {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
        Projection, ProjectionType, ScalarAttributeType,
    };
    let table = unique(prefix);
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .unwrap()
    };
    client
        .create_table()
        .table_name(&table)
        .attribute_definitions(attribute("pk"))
        .attribute_definitions(attribute("lpk"))
        .attribute_definitions(attribute("lsk"))
        .key_schema(key("pk", KeyType::Hash))
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("lists")
                .key_schema(key("lpk", KeyType::Hash))
                .key_schema(key("lsk", KeyType::Range))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::Include)
                        .set_non_key_attributes(Some(
                            [
                                "record",
                                "expires",
                                "pipeline",
                                "environment",
                                "paused",
                                "reason",
                                "at",
                                "busy",
                                "since",
                                "parked",
                            ]
                            .map(str::to_string)
                            .to_vec(),
                        ))
                        .build(),
                )
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
    table
}
