//! The chaos harness: the real binary as two listeners and two workers, signed
//! deliveries sent one after the other, and faults injected at random points while
//! they flow: SIGKILL and restart of any process, SIGTERM of a worker with serial
//! executions in flight, a full disk (a file size limit) under any process, an operator
//! pausing the acceptance lane for a while, and, on AWS, Step Functions answering with
//! throttling and 5xx errors for a while. On the embedded default the deploy lanes
//! supersede, reconcile runs every two seconds against a stand-in for GitHub (which the
//! reports go to as well), so its claims meet every delivery's. Then, for every
//! delivery answered 2xx, it checks:
//!
//! - every planned execution ran to completion, or was superseded by a newer job of its
//!   repository and ref that did (losses; supersedes counted apart),
//! - no run name started twice, and an execution ran again only after its earlier
//!   run was recorded as interrupted,
//! - no two executions of one serial lane overlapped in time (overlaps),
//! - each lane ran in the order its deliveries were acknowledged, commits in order
//!   (order breaks),
//! - nothing was dead-lettered,
//!
//! prints the figures, and fails on any loss, overlap or order break.
//!
//! `CHAOS_SECONDS` (default 20) is how long deliveries and faults go on in each mode;
//! `CHAOS_MODES` picks `embedded`, `aws` or both (default). `scripts/chaos` runs long.

#[path = "../common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{Run, binary, overlaps};
use common::proxy::{self, Fault, Proxy};
use common::{Delivery, executions, fixture, moto};
use rand::Rng;

fn seconds() -> u64 {
    std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20)
}

fn mode_enabled(mode: &str) -> bool {
    std::env::var("CHAOS_MODES").map_or(true, |modes| modes.split(',').any(|m| m == mode))
}

/// One gitdispatch process of the cluster.
struct Node {
    role: &'static str,
    index: usize,
    child: Option<Child>,
    /// Where a listener listens.
    address: Option<String>,
    log: PathBuf,
}

impl Node {
    fn name(&self) -> String {
        format!("{}-{}", self.role, self.index)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self, config: &Path, env: &[(String, String)]) {
        let mut command = binary();
        command
            .args(["--config", config.to_str().unwrap(), self.role])
            .env("GITDISPATCH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (ready, ready_receiver) = std::sync::mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                if let Some(rest) = line.split("address=").nth(1) {
                    let _ = ready.send(Some(rest.split_whitespace().next().unwrap().to_string()));
                } else if line.contains("Worker started.") {
                    let _ = ready.send(None);
                }
            }
        });
        let address = ready_receiver
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not start: {}",
                    self.name(),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            });
        self.address = address;
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, waiting for the process to stop; whether it exited 0.
    fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: kill(2) touches no memory of ours.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        child.wait().map(|status| status.success()).unwrap_or(false)
    }

    fn limit_file_size(&self, bytes: Option<u64>) {
        let Some(pid) = self.pid() else { return };
        let limit = libc::rlimit {
            rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: prlimit reads the struct we pass and writes nothing back.
        unsafe {
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_FSIZE,
                &limit,
                std::ptr::null_mut(),
            );
        }
    }
}

/// Two listeners and two workers on one configuration. Each node has a lock of its
/// own, held while it is killed or started, so the driver never waits on a restart.
struct Cluster {
    directory: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
    nodes: Vec<Arc<Mutex<Node>>>,
}

impl Cluster {
    fn start(
        config_text: &str,
        directory: tempfile::TempDir,
        env: Vec<(String, String)>,
    ) -> Cluster {
        std::fs::create_dir_all(directory.path().join("records")).unwrap();
        let config = directory.path().join("gitdispatch.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut env = env;
        env.push((
            "RECORD_DIR".into(),
            directory.path().join("records").display().to_string(),
        ));
        env.push(("RECORD_SLEEP".into(), "0.2".into()));
        let mut nodes = Vec::new();
        for (role, index) in [("listen", 0), ("listen", 1), ("work", 0), ("work", 1)] {
            let mut node = Node {
                role,
                index,
                child: None,
                address: None,
                log: directory.path().join(format!("{role}-{index}.log")),
            };
            node.spawn(&config, &env);
            nodes.push(Arc::new(Mutex::new(node)));
        }
        Cluster {
            directory,
            config,
            env,
            nodes,
        }
    }

    /// The listeners that are up (one being restarted is skipped).
    fn listener_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|node| {
                let node = node.try_lock().ok()?;
                (node.role == "listen" && node.child.is_some())
                    .then(|| node.address.clone())
                    .flatten()
            })
            .map(|address| format!("http://{address}/webhooks/github"))
            .collect()
    }

    /// Runs `action` on node `index` off the async threads.
    async fn with_node<T: Send + 'static>(
        &self,
        index: usize,
        action: impl FnOnce(&mut Node, &Path, &[(String, String)]) -> T + Send + 'static,
    ) -> T {
        let node = self.nodes[index].clone();
        let (config, env) = (self.config.clone(), self.env.clone());
        tokio::task::spawn_blocking(move || action(&mut node.lock().unwrap(), &config, &env))
            .await
            .unwrap()
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for node in &self.nodes {
            let node = node.lock().unwrap();
            text.push_str(&format!("==== {} ====\n", node.name()));
            text.push_str(&std::fs::read_to_string(&node.log).unwrap_or_default());
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.lock().unwrap().kill();
        }
    }
}

/// What the driver sent and what was answered.
#[derive(Default)]
struct Sent {
    deliveries: usize,
    acknowledged: usize,
    refused: usize,
    unanswered: usize,
    /// Execution names of acknowledged deliveries, in the order acknowledged.
    names: Vec<String>,
}

/// The n-th delivery, each a new occurrence (a new push, a pull request updated): a
/// push of three commits to a hotfix branch (three deploys in the acceptance lane,
/// three builds), a push to a feature branch (three builds), or a pull-request event
/// of one of five preview lanes (pr-40 to pr-44).
fn delivery(n: u64) -> Delivery {
    match n % 4 {
        0 | 2 => {
            let number = 40 + (n / 4) % 5;
            let (name, action) = match (n / 20) % 3 {
                0 => ("pull_request_opened.json", "opened"),
                1 => ("pull_request_synchronize.json", "synchronize"),
                _ => ("pull_request_closed_merged.json", "closed"),
            };
            let text = String::from_utf8(fixture(&format!("github/{name}"))).unwrap();
            assert!(text.contains(action));
            let updated = format!("\"updated_at\": \"2027-01-01T00:00:00Z-{n}\"");
            let text = text
                .replacen("\"updated_at\": \"2026-11-20T15:10:00Z\"", &updated, 1)
                .replace("\"number\": 42", &format!("\"number\": {number}"));
            Delivery::new("pull_request", text.into_bytes())
        }
        1 => Delivery::new("push", common::push_variant("push_branch_commits.json", n)),
        _ => {
            let text = String::from_utf8(common::push_variant("push_branch_commits.json", n))
                .unwrap()
                .replace(
                    "refs/heads/hotfix/important_patch",
                    "refs/heads/feature/chaos",
                );
            Delivery::new("push", text.into_bytes())
        }
    }
}

/// Sends deliveries one after the other until `until`, to a random live listener,
/// waiting `pace` milliseconds between them: slow enough for the lanes to keep up.
async fn drive(cluster: Arc<Cluster>, until: Instant, pace: std::ops::Range<u64>) -> Sent {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut sent = Sent::default();
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let urls = cluster.listener_urls();
        if urls.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let url = urls[rand::rng().random_range(0..urls.len())].clone();
        let delivery = delivery(n);
        sent.deliveries += 1;
        match delivery.post(&client, &url).await {
            Ok(answer) if (200..300).contains(&answer.status) => {
                sent.acknowledged += 1;
                sent.names.extend(executions(&answer));
            }
            Ok(_) => sent.refused += 1,
            Err(_) => sent.unanswered += 1,
        }
        let wait = rand::rng().random_range(pace.clone());
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    sent
}

/// How many faults of each kind were injected, and when a process had a full disk.
#[derive(Default)]
struct Faults {
    counts: BTreeMap<&'static str, usize>,
    /// (pid, from, to) in milliseconds since the epoch: while its disk is full, what a
    /// process starts writes nowhere either, so a pipeline it started then may fail on
    /// its own writes (a failed execution, which is the pipeline's business, not a
    /// loss).
    full_disks: Vec<(u32, i64, i64)>,
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Injects a fault every few seconds until `until`, then leaves every process running
/// and unhindered.
async fn inject(
    cluster: Arc<Cluster>,
    until: Instant,
    aws_faults: Option<Arc<AtomicBool>>,
) -> Faults {
    let mut faults = Faults::default();
    while Instant::now() < until {
        let wait = rand::rng().random_range(1500..4000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        // On moto, workers are stopped with SIGTERM only: when a consumer dies holding
        // several messages of one FIFO group, moto's receive clears the expired
        // receipts one message at a time while it walks the group, so the group looks
        // free only when it reaches the last of them, and hands that one out first.
        // AWS makes the group available again from its oldest message; the embedded
        // queue, whose ordering is ours, is killed with SIGKILL everywhere.
        let kinds: &[&'static str] = if aws_faults.is_some() {
            &[
                "sigkill_listener",
                "sigterm_worker",
                "step_functions_errors",
                "pause",
            ]
        } else {
            &["sigkill", "sigterm_worker", "disk_full", "pause"]
        };
        let kind = kinds[rand::rng().random_range(0..kinds.len())];
        *faults.counts.entry(kind).or_default() += 1;
        let pause = Duration::from_millis(rand::rng().random_range(300..2500));
        match kind {
            "sigkill" | "sigkill_listener" => {
                let index = if kind == "sigkill" {
                    rand::rng().random_range(0..4)
                } else {
                    rand::rng().random_range(0..2)
                };
                cluster.with_node(index, |node, _, _| node.kill()).await;
                tokio::time::sleep(pause).await;
                cluster
                    .with_node(index, |node, config, env| node.spawn(config, env))
                    .await;
            }
            "sigterm_worker" => {
                let index = 2 + rand::rng().random_range(0..2);
                let stopped = cluster
                    .with_node(index, |node, _, _| node.terminate())
                    .await;
                assert!(stopped, "a worker did not stop cleanly on SIGTERM");
                tokio::time::sleep(pause).await;
                cluster
                    .with_node(index, |node, config, env| node.spawn(config, env))
                    .await;
            }
            "pause" => {
                // An operator pauses the acceptance lane for a while, then resumes it:
                // its jobs wait, none is lost or dead-lettered for waiting.
                lane_action(&cluster, "pause").await;
                tokio::time::sleep(pause).await;
                lane_action(&cluster, "resume").await;
            }
            "disk_full" => {
                let index = rand::rng().random_range(0..4);
                let from = epoch_ms();
                let pid = cluster
                    .with_node(index, |node, _, _| {
                        node.limit_file_size(Some(1));
                        node.pid()
                    })
                    .await;
                tokio::time::sleep(pause).await;
                cluster
                    .with_node(index, |node, _, _| node.limit_file_size(None))
                    .await;
                if let Some(pid) = pid {
                    faults.full_disks.push((pid, from, epoch_ms()));
                }
            }
            _ => {
                let switch = aws_faults.as_ref().unwrap();
                switch.store(true, Ordering::SeqCst);
                tokio::time::sleep(pause * 2).await;
                switch.store(false, Ordering::SeqCst);
            }
        }
    }
    faults
}

/// Pauses or resumes the acceptance lane through a live listener, trying each until one
/// answers (a listener may be being restarted).
async fn lane_action(cluster: &Cluster, action: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for _ in 0..100 {
        for url in cluster.listener_urls() {
            let base = url.trim_end_matches("/webhooks/github");
            let answer = client
                .post(format!("{base}/v1/lanes/deploy/acceptance/{action}"))
                .bearer_auth(API_TOKEN)
                .header("content-type", "application/json")
                .body(r#"{"reason": "chaos"}"#)
                .send()
                .await;
            if answer.is_ok_and(|answer| answer.status().is_success()) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no listener took the lane's {action}");
}

/// Jobs the journal recorded superseded: by name, the job that carries it.
fn superseded_jobs(root: &Path) -> HashMap<String, String> {
    let connection = rusqlite::Connection::open(root.join("ledger.db")).unwrap();
    let mut statement = connection
        .prepare("SELECT name, status FROM lane_jobs WHERE state = 'superseded'")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Each lane job's repository and ref, by name.
fn job_refs(root: &Path) -> HashMap<String, (String, String)> {
    let connection = rusqlite::Connection::open(root.join("ledger.db")).unwrap();
    let mut statement = connection
        .prepare("SELECT name, repository, git_ref FROM lane_jobs")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, (row.get(1)?, row.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The serial lane (`deploy-<environment>`) a planned execution name belongs to, if
/// any: the name without its hash, teardown marker and short sha.
fn lane_of(name: &str) -> Option<&str> {
    if !name.starts_with("deploy-") {
        return None;
    }
    let (readable, _hash) = name.rsplit_once('-')?;
    let readable = readable.strip_suffix("-teardown").unwrap_or(readable);
    Some(readable.rsplit_once('-')?.0)
}

/// What the checks found.
#[derive(Default, Debug)]
struct Findings {
    expected: usize,
    found: usize,
    reruns: usize,
    /// Executions that ended failed, started by a worker whose disk was full then.
    failed_on_full_disk: usize,
    /// Jobs superseded by a newer one of their repository and ref that ran.
    superseded: usize,
    losses: Vec<String>,
    twice: Vec<String>,
    overlaps: Vec<(String, String)>,
    order_breaks: Vec<String>,
    dead_letters: usize,
}

impl Findings {
    fn report(&self, mode: &str, sent: &Sent, faults: &Faults, seconds: f64) {
        println!("chaos ({mode}), {seconds:.0} s of deliveries and faults:");
        println!(
            "  deliveries: {} sent, {} acknowledged, {} refused (5xx), {} unanswered",
            sent.deliveries, sent.acknowledged, sent.refused, sent.unanswered
        );
        let shown: Vec<String> = faults
            .counts
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        println!("  faults: {}", shown.join(", "));
        println!(
            "  executions: {} expected, {} found, {} superseded, {} re-run attempts, {} failed on a full disk",
            self.expected, self.found, self.superseded, self.reruns, self.failed_on_full_disk
        );
        println!(
            "  losses: {}, ran twice: {}, overlaps: {}, order breaks: {}, dead letters: {}",
            self.losses.len(),
            self.twice.len(),
            self.overlaps.len(),
            self.order_breaks.len(),
            self.dead_letters
        );
    }

    fn is_clean(&self) -> bool {
        self.losses.is_empty()
            && self.twice.is_empty()
            && self.overlaps.is_empty()
            && self.order_breaks.is_empty()
            && self.dead_letters == 0
    }
}

/// Checks that names run in the order `expected` lists them, lane by lane: `first`
/// gives when each name first started.
fn order_breaks(expected: &[String], first: &HashMap<String, f64>) -> Vec<String> {
    let mut breaks = Vec::new();
    let mut last_in_lane: HashMap<&str, (f64, &str)> = HashMap::new();
    for name in expected {
        let (Some(lane), Some(at)) = (lane_of(name), first.get(name)) else {
            continue;
        };
        if let Some((previous_at, previous)) = last_in_lane.get(lane) {
            if at < previous_at {
                breaks.push(format!("{name} started before {previous}"));
            }
        }
        last_in_lane.insert(lane, (*at, name));
    }
    breaks
}

const PIPELINES_AND_ROUTES: &str = r#"
[[routes]]
pipeline = "build"
repository = "acme/*"
events = ["push"]
environment = "ci"

[[routes]]
pipeline = "deploy"
repository = "acme/*"
events = ["push"]
branches = ["hotfix/*"]
environment = "acceptance"

[[routes]]
pipeline = "deploy"
repository = "acme/*"
events = ["pull_request"]
environment = "pr-{number}"
allow_drafts = true
"#;

fn server_and_worker(receive_wait_secs: u64, directory: &Path, github: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
[server.rate_limit]
per_second = 100000
burst = 100000

[github]
webhook_secrets = ["${{GITHUB_WEBHOOK_SECRET}}"]
{github}

[api]
tokens = ["{API_TOKEN}"]

[ledger]
type = "sqlite"
path = "{ledger}"

[worker]
concurrency = 8
batch_size = 10
receive_wait_secs = {receive_wait_secs}
poll_interval_secs = 1
retry_initial_ms = 100
retry_max_secs = 2
shutdown_grace_secs = 1
"#,
        ledger = directory.join("ledger.db").display(),
    )
}

/// The operators' token: the injector pauses and resumes the acceptance lane with it.
const API_TOKEN: &str = "chaos-operator-token-0001";

fn wait_until(what: &str, timeout: Duration, cluster: &Cluster, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out waiting for {what}; logs:\n{}", cluster.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_on_the_embedded_default() {
    if !mode_enabled("embedded") {
        return println!("chaos (embedded): not selected by CHAOS_MODES");
    }
    let directory = tempfile::tempdir().unwrap();
    let dir = directory.path().display().to_string();
    let record = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pipelines/record.sh");
    // GitHub as reconcile and the reporter see it: the hotfix branch's head is the
    // head every push of it brings, so reconcile finds no gap but claims beside every
    // delivery.
    let github = Arc::new(std::sync::Mutex::new(common::github::FakeGithub {
        branches: vec![(
            "hotfix/important_patch".into(),
            "a3b3c3d3e3f3a3b3c3d3e3f3a3b3c3d3e3f3a3b3".into(),
        )],
        ..common::github::FakeGithub::default()
    }));
    let server = common::github::serve(github).await;
    let github_lines = format!(
        "{}\n[github.reconcile]\nrepositories = [\"acme/project-api-v2\"]\ninterval_secs = 2\ngrace_secs = 0\n",
        common::github::token_section(&server)
    );
    let config = format!(
        r#"{}
[queue]
type = "embedded"
path = "{dir}/queue.db"
visibility_timeout_secs = 3
max_receives = 1000

[executor]
type = "local"
log_dir = "{dir}/log"
path = "{dir}/executions.db"
max_attempts = 1000

[[pipelines]]
name = "deploy"
command = ["sh", "{record}"]
concurrency = "serial"
supersede = true

[[pipelines]]
name = "build"
command = ["sh", "{record}"]
{PIPELINES_AND_ROUTES}"#,
        server_and_worker(1, directory.path(), &github_lines),
        record = record.display(),
    );
    let cluster = Arc::new(Cluster::start(&config, directory, Vec::new()));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds());
    let injector = tokio::spawn(inject(cluster.clone(), until, None));
    let sent = drive(cluster.clone(), until, 200..500).await;
    let faults = injector.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();

    let root = cluster.directory.path().to_path_buf();
    let expected: Vec<String> = sent.names.clone();
    let expected_set: HashSet<&String> = expected.iter().collect();
    let ended_runs = |root: &Path| -> HashMap<String, Record> {
        latest_runs(root)
            .into_iter()
            .filter(|(_, record)| {
                ["succeeded", "failed", "timed_out"].contains(&record.status.as_str())
            })
            .collect()
    };
    wait_until(
        "every acknowledged execution to run to its end",
        Duration::from_secs(180 + expected.len() as u64 / 5),
        &cluster,
        || {
            let ended = ended_runs(&root);
            let superseded = superseded_jobs(&root);
            expected_set
                .iter()
                .all(|name| ended.contains_key(*name) || superseded.contains_key(*name))
        },
    );

    let runs = read_runs(&root);
    let records = all_runs(&root);
    let mut findings = Findings {
        expected: expected.len(),
        ..Findings::default()
    };
    let latest = ended_runs(&root);
    let ended: HashSet<&str> = runs
        .values()
        .filter(|run| run.ended)
        .map(|run| run.planned.as_str())
        .collect();
    let superseded = superseded_jobs(&root);
    let refs = job_refs(&root);
    for name in &expected {
        // A superseded job counts when the job that carries it (or carries that one)
        // ran to success and deploys the same repository and ref.
        if let Some(mut carrier) = superseded.get(name).cloned() {
            while let Some(next) = superseded.get(&carrier) {
                carrier = next.clone();
            }
            let carried = latest
                .get(&carrier)
                .is_some_and(|record| record.status == "succeeded")
                && refs.contains_key(name)
                && refs.get(name) == refs.get(&carrier);
            if carried {
                findings.superseded += 1;
            } else {
                findings.losses.push(format!(
                    "{name} (superseded by {carrier}, which did not run)"
                ));
            }
            continue;
        }
        let record = &latest[name];
        // The command inherits the file size limit of the worker that spawned it, so
        // a run that was alive during its worker's window may have felt it. The
        // record's start is written a moment before the spawn, so compare the run's
        // whole span with the window, not its start alone.
        let on_full_disk = faults.full_disks.iter().any(|(pid, from, to)| {
            record.owner_pid == Some(*pid)
                && record.started_at_ms <= *to
                && record.ended_at_ms.unwrap_or(i64::MAX) >= *from
        });
        if record.status == "succeeded" && ended.contains(name.as_str()) {
            findings.found += 1;
        } else if record.status == "failed" && on_full_disk {
            findings.found += 1;
            findings.failed_on_full_disk += 1;
        } else {
            findings.losses.push(format!("{name} ({})", record.status));
        }
    }
    for run in runs.values() {
        if run.starts > 1 {
            findings.twice.push(run.name.clone());
        }
    }
    // An execution runs again only after its earlier run was recorded interrupted.
    let mut by_planned: HashMap<&str, Vec<&Record>> = HashMap::new();
    for record in &records {
        by_planned
            .entry(record.planned.as_str())
            .or_default()
            .push(record);
    }
    for attempts in by_planned.values_mut() {
        attempts.sort_by_key(|record| record.attempt);
        findings.reruns += attempts.len() - 1;
        for earlier in &attempts[..attempts.len() - 1] {
            if earlier.status != "interrupted" {
                findings
                    .twice
                    .push(format!("{} ({})", earlier.name, earlier.status));
            }
        }
    }
    let mut lanes: HashMap<&str, Vec<&Run>> = HashMap::new();
    for run in runs.values() {
        if let Some(lane) = lane_of(&run.planned) {
            lanes.entry(lane).or_default().push(run);
        }
    }
    for in_lane in lanes.values() {
        findings.overlaps.extend(overlaps(in_lane));
    }
    let mut first: HashMap<String, f64> = HashMap::new();
    for run in runs.values() {
        let at = run.first_ns as f64 / 1e9;
        let entry = first.entry(run.planned.clone()).or_insert(at);
        *entry = entry.min(at);
    }
    findings.order_breaks = order_breaks(&expected, &first);
    findings.dead_letters = rusqlite::Connection::open(root.join("queue.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM dead_letters", [], |row| {
            row.get::<_, i64>(0)
        })
        .unwrap() as usize;
    findings.report("embedded", &sent, &faults, elapsed);
    let clean = findings.is_clean();
    assert!(clean, "{findings:?}\nlogs:\n{}", cluster.logs());
    assert!(sent.acknowledged > 0 && !faults.counts.is_empty());
    for index in 0..4 {
        let stopped = cluster
            .with_node(index, |node, _, _| node.terminate())
            .await;
        assert!(stopped, "node {index} did not stop cleanly");
    }
}

/// The recording script's runs, by run name.
fn read_runs(root: &Path) -> HashMap<String, Run> {
    let text = std::fs::read_to_string(root.join("records/events.log")).unwrap_or_default();
    let mut runs: HashMap<String, Run> = HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let Some(at) = parts.get(4).and_then(|at| at.parse::<u128>().ok()) else {
            continue;
        };
        if parts.len() != 5 {
            continue;
        }
        let run = runs.entry(parts[1].to_string()).or_insert_with(|| Run {
            name: parts[1].to_string(),
            planned: parts[2].to_string(),
            environment: parts[3].to_string(),
            starts: 0,
            first_ns: at,
            last_ns: at,
            ended: false,
        });
        run.first_ns = run.first_ns.min(at);
        run.last_ns = run.last_ns.max(at);
        match parts[0] {
            "start" => run.starts += 1,
            "end" => run.ended = true,
            _ => {}
        }
    }
    runs
}

/// A run as the local executor recorded it.
#[derive(Debug, Clone)]
struct Record {
    name: String,
    planned: String,
    attempt: u32,
    status: String,
    started_at_ms: i64,
    ended_at_ms: Option<i64>,
    /// The pid of the daemon that ran it.
    owner_pid: Option<u32>,
}

/// Every recorded run.
fn all_runs(root: &Path) -> Vec<Record> {
    let connection = rusqlite::Connection::open(root.join("executions.db")).unwrap();
    let mut statement = connection
        .prepare(
            "SELECT name, planned_name, attempt, status, started_at, owner, ended_at
             FROM executions",
        )
        .unwrap();
    statement
        .query_map([], |row| {
            let owner: Option<String> = row.get(5)?;
            Ok(Record {
                name: row.get(0)?,
                planned: row.get(1)?,
                attempt: row.get(2)?,
                status: row.get(3)?,
                started_at_ms: row.get(4)?,
                ended_at_ms: row.get(6)?,
                owner_pid: owner
                    .as_deref()
                    .and_then(gitdispatch::process::ProcessIdentity::parse)
                    .map(|identity| identity.pid),
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The latest run of each planned name.
fn latest_runs(root: &Path) -> HashMap<String, Record> {
    let mut latest: HashMap<String, Record> = HashMap::new();
    for record in all_runs(root) {
        match latest.get(&record.planned) {
            Some(known) if known.attempt >= record.attempt => {}
            _ => {
                latest.insert(record.planned.clone(), record);
            }
        }
    }
    latest
}

/// A state machine that takes a second, so that the lanes' executions could overlap.
const SLOW_MACHINE: &str = r#"{"StartAt": "Work", "States": {
    "Work": {"Type": "Wait", "Seconds": 1, "Next": "Done"},
    "Done": {"Type": "Pass", "End": true}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_on_sqs_and_step_functions() {
    if !mode_enabled("aws") {
        return println!("chaos (aws): not selected by CHAOS_MODES");
    }
    let sdk = moto::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let mut machines = HashMap::new();
    for pipeline in ["deploy", "build"] {
        let arn = sfn
            .create_state_machine()
            .name(moto::unique(&format!("chaos-{pipeline}")))
            .definition(SLOW_MACHINE)
            .role_arn("arn:aws:iam::123456789012:role/chaos")
            .send()
            .await
            .unwrap()
            .state_machine_arn()
            .to_string();
        machines.insert(pipeline, arn);
    }
    let (url, dead_url) = moto::create_queue(&sqs, true, Duration::from_secs(3), 1000).await;
    let directory = tempfile::tempdir().unwrap();
    // While the switch is on, Step Functions throttles or fails every other call.
    let faulty = Arc::new(AtomicBool::new(false));
    let switch = faulty.clone();
    let proxy = Proxy::start(moto::url(), move |call| {
        if !switch.load(Ordering::SeqCst) || !call.operation.starts_with("AWSStepFunctions") {
            return Fault::Forward;
        }
        let (status, body) = match call.index % 3 {
            0 => proxy::error(400, "ThrottlingException"),
            1 => proxy::error(500, "InternalServerError"),
            _ => return Fault::Forward,
        };
        if call.index % 2 == 0 {
            Fault::Answer(status, body)
        } else {
            Fault::ForwardThenAnswer(status, body)
        }
    })
    .await;
    let config = format!(
        r#"{}
[queue]
type = "sqs"
url = "{url}"

[executor]
type = "stepfunctions"

[[pipelines]]
name = "deploy"
state_machine_arn = "{deploy}"
concurrency = "serial"

[[pipelines]]
name = "build"
state_machine_arn = "{build}"
{PIPELINES_AND_ROUTES}"#,
        // Short polls: moto's long polls hand a waiting receiver messages of a group
        // another worker holds, which AWS never does.
        server_and_worker(0, directory.path(), ""),
        deploy = machines["deploy"],
        build = machines["build"],
    );
    let mut env: Vec<(String, String)> = moto::environment()
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
    for (key, value) in &mut env {
        if key == "AWS_ENDPOINT_URL" {
            *value = proxy.url.clone();
        }
    }
    let cluster = Arc::new(Cluster::start(&config, directory, env));
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds());
    let injector = tokio::spawn(inject(cluster.clone(), until, Some(faulty.clone())));
    let sent = drive(cluster.clone(), until, 800..1600).await;
    let faults = injector.await.unwrap();
    faulty.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed().as_secs_f64();

    let expected: Vec<String> = sent.names.clone();
    let mut executions: HashMap<String, (String, String)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(180 + expected.len() as u64 / 5);
    loop {
        executions.clear();
        for (pipeline, arn) in &machines {
            for (name, (status, execution_arn)) in common::aws::executions_of(&sfn, arn).await {
                executions.insert(
                    name,
                    (pipeline.to_string(), format!("{status:?}|{execution_arn}")),
                );
            }
        }
        let all_done = expected.iter().all(|name| {
            executions
                .get(name)
                .is_some_and(|(_, status)| status.starts_with("Succeeded"))
        });
        if all_done {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for every acknowledged execution; logs:\n{}",
                cluster.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut findings = Findings {
        expected: expected.len(),
        ..Findings::default()
    };
    // Step Functions keeps names unique per state machine: a name ran at most once.
    let mut lanes: HashMap<&str, Vec<Run>> = HashMap::new();
    let mut first: HashMap<String, f64> = HashMap::new();
    for name in &expected {
        let Some((_, status)) = executions.get(name) else {
            findings.losses.push(name.clone());
            continue;
        };
        findings.found += 1;
        let execution_arn = status.split('|').nth(1).unwrap();
        let described = sfn
            .describe_execution()
            .execution_arn(execution_arn)
            .send()
            .await
            .unwrap();
        let start = described.start_date().as_secs_f64();
        let stop = described
            .stop_date()
            .map_or(start, |stop| stop.as_secs_f64());
        first.insert(name.clone(), start);
        if let Some(lane) = lane_of(name) {
            lanes.entry(lane).or_default().push(Run {
                name: name.clone(),
                planned: name.clone(),
                environment: lane.to_string(),
                starts: 1,
                first_ns: (start * 1e9) as u128,
                // The stop date is when the last state ended; the next may start at it.
                last_ns: (stop * 1e9) as u128 - 1,
                ended: true,
            });
        }
    }
    for runs in lanes.values() {
        let refs: Vec<&Run> = runs.iter().collect();
        findings.overlaps.extend(overlaps(&refs));
    }
    findings.order_breaks = order_breaks(&expected, &first);
    findings.dead_letters = moto::dead_letter_ids(&sqs, &dead_url).await.len();
    findings.report("aws", &sent, &faults, elapsed);
    assert!(
        findings.is_clean(),
        "{findings:?}\nlogs:\n{}",
        cluster.logs()
    );
    assert!(sent.acknowledged > 0 && !faults.counts.is_empty());
}
