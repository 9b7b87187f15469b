//! The real `gitdispatch` binary as a daemon: its own directory for the queue, the
//! execution records and logs; started, killed and restarted like in production.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::SECRET;

/// One line of the recording script.
#[derive(Debug, Clone)]
pub struct Line {
    pub kind: String,
    pub run: String,
    pub planned: String,
    pub environment: String,
    pub at_ns: u128,
}

/// One run of the recording script, from its lines.
#[derive(Debug, Clone)]
pub struct Run {
    pub name: String,
    pub planned: String,
    pub environment: String,
    pub starts: usize,
    /// When its first and last line were written.
    pub first_ns: u128,
    pub last_ns: u128,
    pub ended: bool,
}

/// The runs of one environment that overlapped in time: a run's lines (from its start
/// to its last tick or end) never reach into another's.
pub fn overlaps(runs: &[&Run]) -> Vec<(String, String)> {
    let mut sorted: Vec<&&Run> = runs.iter().collect();
    sorted.sort_by_key(|run| run.first_ns);
    let mut found = Vec::new();
    for (index, run) in sorted.iter().enumerate() {
        for later in &sorted[index + 1..] {
            if later.first_ns < run.last_ns {
                found.push((run.name.clone(), later.name.clone()));
            }
        }
    }
    found
}

pub struct Daemon {
    pub directory: tempfile::TempDir,
    pub config: PathBuf,
    child: Option<Child>,
    pub address: String,
    /// The open-file limit (soft and hard) the process is started with, if any.
    pub open_files: Option<u64>,
    /// What it runs: `serve` (listener and worker), `listen` or `work`.
    role: &'static str,
}

/// A config like the example one, with every path in `directory` and every pipeline
/// running the recording script.
pub fn write_config(directory: &Path, text: &str) -> PathBuf {
    let record = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pipelines/record.sh");
    let text = text
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "path = \"var/gitdispatch.db\"",
            &format!("path = \"{}\"", directory.join("queue.db").display()),
        )
        .replace(
            "log_dir = \"var/log\"",
            &format!("log_dir = \"{}\"", directory.join("log").display()),
        )
        .replace(
            "path = \"var/executions.db\"",
            &format!("path = \"{}\"", directory.join("executions.db").display()),
        )
        .replace(
            "command = [\"sh\", \"deploy/local/deploy.sh\"]",
            &format!("command = [\"sh\", \"{}\"]", record.display()),
        )
        .replace("poll_interval_secs = 2", "poll_interval_secs = 1");
    // The ledger and the journal in the test's own directory.
    let text = if text.contains("[ledger]") {
        text
    } else {
        format!(
            "{text}\n[ledger]\ntype = \"sqlite\"\npath = \"{}\"\n",
            directory.join("ledger.db").display()
        )
    };
    let path = directory.join("gitdispatch.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub fn binary() -> Command {
    // A release build in its place when one is measured (BENCHMARKS.md says which).
    let path = std::env::var_os("GITDISPATCH_BINARY")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_gitdispatch").into());
    let mut command = Command::new(path);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("GITHUB_WEBHOOK_SECRET", SECRET)
        .env_remove("GITDISPATCH_CONFIG");
    command
}

impl Daemon {
    pub fn start(config_text: &str, extra_env: &[(&str, &str)]) -> Daemon {
        Daemon::start_limited(config_text, extra_env, None)
    }

    /// Starts one role of the daemon: `listen` or `work` (which must have
    /// `[worker] metrics_listen` set, the address waited for).
    pub fn start_as(role: &'static str, config_text: &str, extra_env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with(role, config_text, extra_env, None)
    }

    /// Starts the daemon with an open-file limit of its own.
    pub fn start_limited(
        config_text: &str,
        extra_env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> Daemon {
        Daemon::start_with("serve", config_text, extra_env, open_files)
    }

    fn start_with(
        role: &'static str,
        config_text: &str,
        extra_env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> Daemon {
        let directory = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(directory.path().join("records")).unwrap();
        let config = write_config(directory.path(), config_text);
        let mut daemon = Daemon {
            directory,
            config,
            child: None,
            address: String::new(),
            open_files,
            role,
        };
        daemon.spawn(extra_env);
        daemon
    }

    pub fn records(&self) -> PathBuf {
        self.directory.path().join("records")
    }

    /// Starts (or restarts) the process and waits for the address it listens on.
    pub fn spawn(&mut self, extra_env: &[(&str, &str)]) {
        let mut command = binary();
        command
            .args(["--config", self.config.to_str().unwrap(), self.role])
            .env("GITDISPATCH_LOG", "info")
            .env("RECORD_DIR", self.records())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in extra_env {
            command.env(key, value);
        }
        if let Some(open_files) = self.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and reads only the struct given.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: open_files,
                        rlim_max: open_files,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log_path = self.directory.path().join("daemon.log");
        let (address_sender, address_receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log_path)
                .unwrap();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                use std::io::Write;
                let _ = writeln!(log, "{line}");
                if let Some(rest) = line.split("address=").nth(1) {
                    let _ =
                        address_sender.send(rest.split_whitespace().next().unwrap().to_string());
                }
            }
        });
        self.address = address_receiver
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the daemon did not start: {}", self.log()));
        self.child = Some(child);
    }

    /// The running process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sets the process's file size limit, as a full disk would be felt: writes past
    /// `bytes` fail. `None` lifts it.
    pub fn limit_file_size(&self, bytes: Option<u64>) {
        let limit = libc::rlimit {
            rlim_cur: bytes.unwrap_or(libc::RLIM_INFINITY),
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: prlimit reads the struct we pass and writes nothing (no old limit).
        let result = unsafe {
            libc::prlimit(
                self.pid() as libc::pid_t,
                libc::RLIMIT_FSIZE,
                &limit,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(result, 0, "prlimit: {}", std::io::Error::last_os_error());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.directory.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("http://{}/webhooks/github", self.address)
    }

    /// The process's resident memory now and at its peak, in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap()
    }

    /// The lines the recording script wrote, in the order written.
    pub fn lines(&self) -> Vec<Line> {
        let text = std::fs::read_to_string(self.records().join("events.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let parts: Vec<&str> = line.split(' ').collect();
                // A line cut by a kill mid-write is not a line.
                if parts.len() != 5 {
                    return None;
                }
                Some(Line {
                    kind: parts[0].to_string(),
                    run: parts[1].to_string(),
                    planned: parts[2].to_string(),
                    environment: parts[3].to_string(),
                    at_ns: parts[4].parse().ok()?,
                })
            })
            .collect()
    }

    /// The runs the recording script saw, by run name.
    pub fn runs(&self) -> HashMap<String, Run> {
        let mut runs: HashMap<String, Run> = HashMap::new();
        for line in self.lines() {
            let run = runs.entry(line.run.clone()).or_insert_with(|| Run {
                name: line.run.clone(),
                planned: line.planned.clone(),
                environment: line.environment.clone(),
                starts: 0,
                first_ns: line.at_ns,
                last_ns: line.at_ns,
                ended: false,
            });
            run.first_ns = run.first_ns.min(line.at_ns);
            run.last_ns = run.last_ns.max(line.at_ns);
            match line.kind.as_str() {
                "start" => run.starts += 1,
                "end" => run.ended = true,
                _ => {}
            }
        }
        runs
    }

    /// The runs that reached their end, by planned name.
    pub fn completed(&self) -> HashMap<String, Vec<Run>> {
        let mut completed: HashMap<String, Vec<Run>> = HashMap::new();
        for run in self.runs().into_values().filter(|run| run.ended) {
            completed.entry(run.planned.clone()).or_default().push(run);
        }
        completed
    }

    /// The status the daemon recorded of each run, by run (attempt) name.
    pub fn attempt_statuses(&self) -> HashMap<String, String> {
        let connection =
            rusqlite::Connection::open(self.directory.path().join("executions.db")).unwrap();
        let mut statement = connection
            .prepare("SELECT name, status FROM executions")
            .unwrap();
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// The executions the daemon recorded, by planned name, with the status of their
    /// latest run.
    pub fn executions(&self) -> HashMap<String, String> {
        let connection =
            rusqlite::Connection::open(self.directory.path().join("executions.db")).unwrap();
        let mut statement = connection
            .prepare(
                "SELECT planned_name, status FROM executions AS e
                 WHERE attempt = (SELECT MAX(attempt) FROM executions AS l
                                  WHERE l.planned_name = e.planned_name)",
            )
            .unwrap();
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Waits until `condition` holds, or panics with the daemon's log.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&Daemon) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if condition(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; daemon log:\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
