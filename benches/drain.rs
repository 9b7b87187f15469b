//! How fast the worker drains: N start jobs on the embedded queue, a stand-in for
//! Step Functions that answers StartExecution at once (a small HTTP server speaking
//! enough of its JSON protocol, reached as the SDK reaches AWS), and the worker's
//! starts per second with the start limit off; then how closely a configured start
//! rate is held.
//!
//!   cargo bench --bench drain [-- JOBS CONCURRENCY LIMITED_RATE]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gitdispatch::admission::Admission;
use gitdispatch::config::Config;
use gitdispatch::event::{
    Commit, CommitSha, DeliveryId, Event, EventKind, Occurrence, Push, RefName, Source,
};
use gitdispatch::executor::stepfunctions::StepFunctionsExecutor;
use gitdispatch::job::Job;
use gitdispatch::journal::Journal;
use gitdispatch::journal::deferred::Deferred;
use gitdispatch::journal::sqlite::SqliteJournal;
use gitdispatch::lanes::Lanes;
use gitdispatch::plan::Planner;
use gitdispatch::queue::embedded::{EmbeddedQueue, EmbeddedSettings};
use gitdispatch::queue::{Queue, enqueue};
use gitdispatch::telemetry::Metrics;
use gitdispatch::worker::{Worker, WorkerParts, WorkerSettings};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

const STATE_MACHINE: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:bench";

/// Answers StartExecution (and DescribeExecution) as Step Functions would, at once.
async fn step_functions(
    request: Request<Incoming>,
    starts: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let target = request
        .headers()
        .get("x-amz-target")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
        .unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let name = body["name"].as_str().unwrap_or("unknown");
    let answer = if target.ends_with("StartExecution") {
        starts.fetch_add(1, Ordering::Relaxed);
        serde_json::json!({
            "executionArn": format!("arn:aws:states:us-east-1:123456789012:execution:bench:{name}"),
            "startDate": 1.7e9,
        })
    } else {
        serde_json::json!({
            "executionArn": body["executionArn"], "stateMachineArn": STATE_MACHINE,
            "status": "SUCCEEDED", "startDate": 1.7e9, "stopDate": 1.7e9, "input": "{}", "output": "{}",
        })
    };
    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
    response.headers_mut().insert(
        "content-type",
        "application/x-amz-json-1.0".parse().unwrap(),
    );
    Ok(response)
}

async fn serve_step_functions(starts: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let starts = starts.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        TokioIo::new(stream),
                        hyper::service::service_fn(move |request| {
                            step_functions(request, starts.clone())
                        }),
                    )
                    .await;
            });
        }
    });
    format!("http://{address}")
}

/// `jobs` start jobs of a parallel pipeline, one per commit of one push.
fn jobs(jobs: usize) -> Vec<Job> {
    let text = format!(
        "[github]\nwebhook_secrets = [\"bench-secret-0123456789\"]\n\
         [[pipelines]]\nname = \"bench\"\nstate_machine_arn = \"{STATE_MACHINE}\"\n\
         [[routes]]\npipeline = \"bench\"\nenvironment = \"ci\"\n"
    );
    let config = Config::from_toml_str(&text, &|_| None).unwrap();
    let planner = Planner::new(&config).unwrap();
    let commits: Vec<Commit> = (1..=jobs)
        .map(|n| Commit {
            id: CommitSha::parse(&format!("{n:040x}")).unwrap(),
            message: format!("commit {n}"),
            author: "bench".into(),
            changed_paths: None,
        })
        .collect();
    let event = Event {
        source: Source::Github,
        delivery: DeliveryId::parse("bench").unwrap(),
        occurrence: Occurrence::from_parts(&["bench", &jobs.to_string()]),
        repository: "acme/bench".into(),
        kind: EventKind::Push(Push {
            git_ref: RefName::parse("refs/heads/main").unwrap(),
            before: CommitSha::parse(&"f".repeat(40)).unwrap(),
            after: commits.last().unwrap().id.clone(),
            head_commit: commits.last().cloned(),
            commits,
            created: false,
            deleted: false,
            forced: false,
            commits_truncated: false,
            commits_listed: true,
        }),
    };
    planner
        .plan(&event)
        .unwrap()
        .requests
        .into_iter()
        .map(Job::start)
        .collect()
}

/// Drains `count` jobs with `concurrency` and a start limit of `rate` per second
/// with a burst of `burst`, keeping each job's state in a journal as the daemon does
/// (or not, with `journal` false); the sustained starts per second achieved (what the
/// burst allowed at once is left out: over a time T the limit allows burst + rate × T).
async fn drain(
    endpoint: &str,
    starts: &AtomicUsize,
    count: usize,
    concurrency: usize,
    rate: u32,
    burst: u32,
    journal: bool,
) -> f64 {
    let directory = tempfile::tempdir().unwrap();
    let queue: Arc<dyn Queue> = Arc::new(
        EmbeddedQueue::open(EmbeddedSettings {
            path: directory.path().join("queue.db"),
            visibility_timeout: Duration::from_secs(60),
            max_receives: 5,
        })
        .await
        .unwrap(),
    );
    enqueue(queue.as_ref(), &jobs(count)).await.unwrap();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sfn::config::Credentials::new(
            "bench", "bench", None, None, "bench",
        ))
        .load()
        .await;
    let executor = Arc::new(StepFunctionsExecutor::new(
        aws_sdk_sfn::Client::new(&sdk),
        HashMap::from([("bench".to_string(), STATE_MACHINE.to_string())]),
    ));
    let settings = WorkerSettings {
        concurrency,
        batch_size: 10,
        receive_wait: Duration::ZERO,
        starts_per_second: rate,
        start_burst: burst,
        poll_interval: Duration::from_secs(1),
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(1),
        max_hold: Duration::from_secs(11 * 3600),
    };
    let lanes = journal.then(|| {
        let journal: Arc<dyn Journal> = Arc::new(Deferred::new(
            Arc::new(SqliteJournal::open(&directory.path().join("ledger.db")).unwrap()),
            Default::default(),
        ));
        Arc::new(Lanes::new(journal))
    });
    let metrics = Arc::new(Metrics::default());
    let admission = Arc::new(Admission::new(queue.clone(), None, lanes, metrics.clone()));
    let config = gitdispatch::config::Config::from_toml_str("", &|_| None).unwrap();
    let planner = Arc::new(gitdispatch::plan::Planner::new(&config).unwrap());
    let runtime = gitdispatch::runtime::Current::new(
        gitdispatch::runtime::Runtime::build(&config, planner, None).unwrap(),
    );
    let mut parts = WorkerParts::new(queue.clone(), executor, settings, runtime);
    parts.admission = admission;
    let worker = Arc::new(Worker::new(parts, &metrics));
    let before = starts.load(Ordering::Relaxed);
    let shutdown = CancellationToken::new();
    let began = Instant::now();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    while starts.load(Ordering::Relaxed) - before < count {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = began.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = running.await;
    count.saturating_sub(burst as usize) as f64 / elapsed
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; positional numbers after `--` override.
    let numbers: Vec<usize> = std::env::args()
        .filter_map(|arg| arg.parse().ok())
        .collect();
    // `cargo test --benches` runs it without `--bench`: a short run, to show it works.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let count = numbers
        .first()
        .copied()
        .unwrap_or(if quick { 300 } else { 5000 });
    let concurrency = numbers.get(1).copied().unwrap_or(64);
    let limited = numbers
        .get(2)
        .copied()
        .unwrap_or(if quick { 200 } else { 500 }) as u32;
    let starts = Arc::new(AtomicUsize::new(0));
    let endpoint = serve_step_functions(starts.clone()).await;
    // Warm the client's connection pool and the disk once.
    drain(&endpoint, &starts, 200, concurrency, 1_000_000, 1, true).await;
    let bare = drain(&endpoint, &starts, count, concurrency, 1_000_000, 1, false).await;
    println!(
        "drain, {count} jobs, concurrency {concurrency}, no start limit, no journal: {bare:8.0} starts/s"
    );
    let unlimited = drain(&endpoint, &starts, count, concurrency, 1_000_000, 1, true).await;
    println!(
        "drain, {count} jobs, concurrency {concurrency}, no start limit, journal (as the daemon): {unlimited:8.0} starts/s ({:.2}x without)",
        unlimited / bare
    );
    let limited_count = (limited as usize * 5).min(count);
    // A small burst absorbs the timer's lateness (a wake-up a fraction of a millisecond
    // late would otherwise be lost for good at every start).
    let burst = (limited / 50).max(1);
    let achieved = drain(
        &endpoint,
        &starts,
        limited_count,
        concurrency,
        limited,
        burst,
        true,
    )
    .await;
    println!(
        "drain, {limited_count} jobs, starts_per_second = {limited}, start_burst = {burst}: {achieved:8.1} starts/s sustained ({:+.1}% of the limit)",
        (achieved / f64::from(limited) - 1.0) * 100.0
    );
}
