//! `gitdispatch redeliver` against a stand-in for GitHub's hook deliveries API
//! (wiremock): it asks for exactly the deliveries that never got through and have no
//! successful attempt since, pages by GitHub's cursor, stops at the look-back window,
//! and with `--dry-run` asks for nothing and prints the same lines.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::daemon::binary;
use common::github::{self, FakeGithub};
use serde_json::{Value, json};

const HOOK: &str = "/repos/acme/project-api-v2/hooks/7/deliveries";

fn at(ago: Duration) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() - ago).to_string()
}

fn delivery(id: u64, guid: &str, status_code: u16, ago_seconds: u64) -> Value {
    json!({
        "id": id,
        "guid": guid,
        "delivered_at": at(Duration::from_secs(ago_seconds)),
        "redelivery": false,
        "duration": 0.2,
        "status": if (200..300).contains(&status_code) { "OK" } else { "Invalid HTTP Response" },
        "status_code": status_code,
        "event": "push",
        "action": null,
        "installation_id": null,
        "repository_id": 1,
    })
}

fn config(server: &wiremock::MockServer, directory: &std::path::Path) -> std::path::PathBuf {
    let text = format!(
        r#"
[github]
webhook_secrets = ["${{GITHUB_WEBHOOK_SECRET}}"]
{github}

[github.redeliver]
hooks = [{{ repository = "acme/project-api-v2", id = 7 }}]

[queue]
type = "embedded"
path = "{dir}/queue.db"

[executor]
type = "local"
log_dir = "{dir}/log"
path = "{dir}/executions.db"

[[pipelines]]
name = "build"
command = ["true"]

[[routes]]
pipeline = "build"
events = ["push"]
environment = "ci"
"#,
        github = github::token_section(server),
        dir = directory.display(),
    );
    let path = directory.join("gitdispatch.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn redeliver(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = binary()
        .args(["--config", config.to_str().unwrap(), "redeliver"])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_deliveries_that_never_got_through_are_redelivered() {
    // Newest first, as GitHub lists them; 230 of them, so three pages of 100.
    let mut deliveries = vec![
        // A: failed, then a redelivery got through.
        delivery(900, "guid-a", 202, 300),
        delivery(899, "guid-a", 502, 600),
        // B: failed twice (the second a redelivery): redeliver the latest.
        delivery(898, "guid-b", 503, 720),
        delivery(897, "guid-b", 500, 1200),
        // C: refused by us as the sender's fault: a retry would be refused again.
        delivery(896, "guid-c", 401, 1500),
        // D: no answer at all (the daemon was down).
        delivery(895, "guid-d", 0, 1800),
        // E: throttled.
        delivery(894, "guid-e", 429, 2100),
    ];
    for n in 0..220 {
        deliveries.push(delivery(800 - n, &format!("ok-{n}"), 202, 40 * 60 + n * 10));
    }
    // F, on the third page and inside the window; G, older than the window.
    deliveries.push(delivery(500, "guid-f", 504, 100 * 60));
    deliveries.push(delivery(499, "guid-g", 500, 5 * 3600));
    let github = Arc::new(Mutex::new(FakeGithub::default()));
    github
        .lock()
        .unwrap()
        .hook_deliveries
        .insert(HOOK.to_string(), deliveries);
    let server = github::serve(github.clone()).await;
    let directory = tempfile::tempdir().unwrap();
    let config = config(&server, directory.path());

    let (success, stdout, stderr) = redeliver(&config, &["--since", "2h", "--dry-run"]);
    assert!(success, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for (line, (guid, id, code)) in lines.iter().zip([
        ("guid-b", 898, 503),
        ("guid-d", 895, 0),
        ("guid-e", 894, 429),
        ("guid-f", 500, 504),
    ]) {
        assert!(
            line.starts_with(&format!(
                "would redeliver {guid} {id} (event push, answered {code},"
            )),
            "{line}"
        );
        assert!(line.ends_with(&format!("from {HOOK}")), "{line}");
    }
    assert!(
        github.lock().unwrap().redeliveries.is_empty(),
        "a dry run asks for nothing"
    );
    {
        let fake = github.lock().unwrap();
        let pages = fake.calls.iter().filter(|call| call.path == HOOK).count();
        assert_eq!(pages, 3, "paged by the cursor, down to the window's edge");
    }

    let (success, stdout, stderr) = redeliver(&config, &["--since", "2h"]);
    assert!(success, "{stderr}");
    assert_eq!(stdout.lines().count(), 4);
    assert!(stdout.lines().all(|line| line.starts_with("redelivered ")));
    let mut asked: Vec<u64> = github
        .lock()
        .unwrap()
        .redeliveries
        .iter()
        .map(|(hook, id)| {
            assert_eq!(hook, HOOK);
            *id
        })
        .collect();
    asked.sort();
    assert_eq!(asked, [500, 894, 895, 898]);

    // A window longer than GitHub keeps deliveries is refused, naming the flag.
    let (success, _, stderr) = redeliver(&config, &["--since", "4d"]);
    assert!(!success);
    assert!(stderr.contains("--since"), "{stderr}");
}

#[test]
fn redeliver_without_hooks_says_what_is_missing() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("gitdispatch.toml");
    std::fs::write(
        &path,
        "[github]\nwebhook_secrets = [\"x\"]\ntoken = \"t\"\n[[pipelines]]\nname = \"b\"\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let (success, _, stderr) = redeliver(&path, &["--dry-run"]);
    assert!(!success);
    assert!(stderr.contains("[github.redeliver]"), "{stderr}");
    let help = binary().args(["redeliver", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.contains("--dry-run") && help.contains("--since"),
        "{help}"
    );
}
