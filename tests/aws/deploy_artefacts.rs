//! The deployment artefacts pass their own tools' checks: the systemd unit verifies
//! and its sandbox rates 2.0 or better; every CloudFormation template is clean under
//! cfn-lint with the informational checks on; the CodePipeline template embeds the
//! safe-update state machine as its file has it, and every state of it can be reached
//! and goes somewhere that exists; the ECS service template deploys on moto after
//! gitdispatch.yaml, with its load balancer, listeners, security groups and services;
//! the container image builds with buildah on a Debian base made from Debian's packages
//! (no registry), runs as uid 10001, answers its probe and stops on SIGTERM.
//! (The other templates are also deployed on moto and the sample state machine run
//! there: `tests/aws.rs`. moto has no custom action types and runs no CloudFormation
//! SDK tasks, so the CodePipeline template and its state machine are checked here, not
//! run.)

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::moto;
use serde_json::{Value, json};

fn repository(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The unit, with its programs where this build put them (verify checks that they can
/// be run).
fn installed_unit(directory: &Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(repository("deploy/systemd/gitdispatch.service"))
        .unwrap()
        .replace(
            "/usr/local/bin/gitdispatch",
            env!("CARGO_BIN_EXE_gitdispatch"),
        );
    let path = directory.join("gitdispatch.service");
    std::fs::write(&path, unit).unwrap();
    path
}

#[test]
fn the_systemd_unit_verifies_and_its_sandbox_rates_two_or_better() {
    let directory = tempfile::tempdir().unwrap();
    let unit = installed_unit(directory.path());
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "{said}");
    assert!(
        !said.contains("gitdispatch.service"),
        "verify says something of the unit: {said}"
    );

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let level: f64 = text
        .lines()
        .find_map(|line| {
            line.split("Overall exposure level for gitdispatch.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no overall level in: {text}"));
    assert!(level <= 2.0, "exposure {level}:\n{text}");
    // No account to create first, and room for connections.
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(unit_text.contains("DynamicUser=yes"));
    assert!(!unit_text.contains("User=gitdispatch"));
    assert!(unit_text.contains("LimitNOFILE=65536"));
}

#[test]
fn every_cloudformation_template_is_clean_under_cfn_lint() {
    let cfn_lint = std::env::var_os("CFN_LINT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repository(".venv/bin/cfn-lint"));
    assert!(
        cfn_lint.exists(),
        "cfn-lint is not installed at {}: run scripts/test, which installs it into .venv",
        cfn_lint.display()
    );
    for template in [
        "deploy/aws/gitdispatch.yaml",
        "deploy/aws/codecommit.yaml",
        "deploy/aws/codepipeline.yaml",
        "deploy/aws/service.yaml",
    ] {
        let output = Command::new(&cfn_lint)
            .args(["--include-checks", "I", "--"])
            .arg(repository(template))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{template}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A Containerfile's instructions, one string each: continuation lines joined, runs of
/// blanks made one, comments and empty lines left out.
fn instructions(containerfile: &str) -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in containerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (part, continues) = match line.strip_suffix('\\') {
            Some(part) => (part, true),
            None => (line, false),
        };
        current.push(' ');
        current.push_str(part);
        if !continues {
            instructions.push(current.split_whitespace().collect::<Vec<_>>().join(" "));
            current.clear();
        }
    }
    instructions
}

/// From the last FROM on: the stage the image is made of.
fn runtime_stage(instructions: &[String]) -> &[String] {
    let from = instructions
        .iter()
        .rposition(|instruction| instruction.starts_with("FROM "))
        .expect("a FROM");
    &instructions[from..]
}

#[test]
fn the_container_image_probes_itself_and_sends_no_build_output() {
    for file in [
        "deploy/container/Containerfile",
        "deploy/container/Containerfile.prebuilt",
    ] {
        let containerfile = std::fs::read_to_string(repository(file)).unwrap();
        assert!(containerfile.contains("CMD [\"gitdispatch\", \"health\"]"));
        assert!(containerfile.contains("USER 10001:10001"));
        let instructions = instructions(&containerfile);
        for instruction in instructions
            .iter()
            .filter(|instruction| instruction.starts_with("FROM "))
        {
            let mut image = instruction.split_whitespace().nth(1).unwrap().to_string();
            // FROM ${BASE}: the default the ARG gives.
            if let Some(name) = image
                .strip_prefix("${")
                .and_then(|rest| rest.strip_suffix('}'))
            {
                let prefix = format!("ARG {name}=");
                image = instructions
                    .iter()
                    .find_map(|instruction| instruction.strip_prefix(&prefix))
                    .unwrap_or_else(|| panic!("{file}: {name} has no default"))
                    .to_string();
            }
            let tag = image.rsplit(':').next().unwrap();
            assert!(
                tag.chars()
                    .next()
                    .is_some_and(|first| first.is_ascii_digit()),
                "{file}: {image} floats: pin a version"
            );
        }
    }
    let ignore = std::fs::read_to_string(repository(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|line| line == "*"),
        "everything is left out but what is copied"
    );
    for copied in [
        "Cargo.toml",
        "Cargo.lock",
        "src/",
        "config/",
        "deploy/local/",
    ] {
        assert!(ignore.contains(&format!("!{copied}")), "{copied} is sent");
    }
}

/// Containerfile.prebuilt is the production image's runtime stage with the binary from
/// the build context: the same base, user, directories, configuration, probe, signal
/// and command, so that what the image test below runs is what `docker build` makes.
#[test]
fn the_prebuilt_containerfile_repeats_the_runtime_stage() {
    let production = instructions(
        &std::fs::read_to_string(repository("deploy/container/Containerfile")).unwrap(),
    );
    let prebuilt = instructions(
        &std::fs::read_to_string(repository("deploy/container/Containerfile.prebuilt")).unwrap(),
    );
    let base = |instructions: &[String]| -> Vec<String> {
        instructions
            .iter()
            .filter(|instruction| instruction.starts_with("ARG BASE="))
            .cloned()
            .collect()
    };
    assert_eq!(base(&production).len(), 1, "Containerfile: one ARG BASE");
    assert_eq!(base(&production), base(&prebuilt), "the same default base");
    let binary_from_build =
        "COPY --from=build /src/target/release/gitdispatch /usr/local/bin/gitdispatch";
    let binary_from_context = "COPY gitdispatch /usr/local/bin/gitdispatch";
    assert!(runtime_stage(&production).contains(&binary_from_build.to_string()));
    assert!(runtime_stage(&prebuilt).contains(&binary_from_context.to_string()));
    let prebuilt_as_production: Vec<String> = runtime_stage(&prebuilt)
        .iter()
        .map(|instruction| {
            if instruction == binary_from_context {
                binary_from_build.to_string()
            } else {
                instruction.clone()
            }
        })
        .collect();
    assert_eq!(
        runtime_stage(&production),
        prebuilt_as_production.as_slice(),
        "the runtime stages differ: change Containerfile and Containerfile.prebuilt together"
    );
    assert_eq!(runtime_stage(&production)[0], "FROM ${BASE}");
    // Only the runtime stage: nothing built in it.
    assert_eq!(
        prebuilt
            .iter()
            .filter(|instruction| instruction.starts_with("FROM "))
            .count(),
        1
    );
}

/// The base image scripts/container.sh commits: a Debian bookworm from Debian's packages.
const CONTAINER_BASE: &str = "localhost/gitdispatch-base:bookworm";

fn buildah(arguments: &[&str]) -> std::process::Output {
    Command::new("buildah")
        .args(arguments)
        .output()
        .expect("buildah runs: scripts/test installs it (scripts/container.sh)")
}

/// buildah's standard output; a failure panics with what it said.
fn buildah_ok(arguments: &[&str]) -> String {
    let output = buildah(arguments);
    assert!(
        output.status.success(),
        "buildah {}: {}\n{}{}",
        arguments.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Removes the working container and the image the test made, however it ends.
struct BuildahCleanup {
    containers: Vec<String>,
    images: Vec<String>,
}

impl Drop for BuildahCleanup {
    fn drop(&mut self) {
        for container in self.containers.drain(..) {
            let _ = buildah(&["rm", &container]);
        }
        for image in self.images.drain(..) {
            let _ = buildah(&["rmi", "--force", &image]);
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// What runs inside the container, as the image's user: the probe before anything
/// listens, the image's command in the background, the probe until it answers, the
/// process's user, then SIGTERM and how long it takes to stop. Prints key=value lines,
/// then the daemon's log. {SERVE} and {HEALTH} are the image's own commands.
const CONTAINER_PROBE: &str = r#"
log=/tmp/gitdispatch-serve.log
echo "uid=$(id -u)"
echo "gid=$(id -g)"
echo "workdir=$(pwd)"
if {HEALTH} 2>/dev/null; then echo "health_before=0"; else echo "health_before=$?"; fi
{SERVE} >"$log" 2>&1 &
pid=$!
health=none
tries=0
while [ "$tries" -lt 150 ]; do
  if {HEALTH} 2>>"$log"; then health=0; break; else health=$?; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
  tries=$((tries + 1))
done
echo "health=$health"
echo "process_uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status" 2>/dev/null)"
echo "process_exe=$(readlink "/proc/$pid/exe" 2>/dev/null)"
started=$(date +%s%N)
kill -TERM "$pid"
# Until it has exited (gone, or a zombie waiting for `wait`), at most 20 s; then KILL.
waited=0
while [ -e "/proc/$pid" ] && [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ]; do
  if [ "$waited" -ge 200 ]; then kill -KILL "$pid"; break; fi
  sleep 0.1
  waited=$((waited + 1))
done
stop_ms=$(( ($(date +%s%N) - started) / 1000000 ))
wait "$pid"
echo "exit=$?"
echo "stop_ms=$stop_ms"
echo "files=$(ls var 2>&1 | tr '\n' ' ')"
echo "--- the daemon's log"
cat "$log"
"#;

/// The image, built here with no registry: Containerfile.prebuilt on the Debian base
/// scripts/container.sh makes from Debian's packages, with this build's binary. Run as
/// its USER with its own ENTRYPOINT and CMD (and a configuration mounted in, as in
/// production): its HEALTHCHECK command answers once it is ready, the daemon runs as
/// uid 10001, and SIGTERM stops it cleanly within the grace.
#[test]
fn the_image_builds_without_a_registry_and_runs_as_10001_until_sigterm() {
    let version = Command::new("buildah").arg("--version").output();
    assert!(
        version.is_ok_and(|output| output.status.success()),
        "buildah is not installed: run scripts/test, which installs it (scripts/container.sh)"
    );
    assert!(
        buildah(&["inspect", "--type", "image", CONTAINER_BASE])
            .status
            .success(),
        "no {CONTAINER_BASE}: run scripts/test, which makes it from Debian's packages \
         (scripts/container.sh)"
    );

    // The build context: the binary, and what the image ships beside it. The binary is
    // this build's (a debug build; the suite builds no release): the same program the
    // release build puts in the image.
    let context = tempfile::tempdir().unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_gitdispatch"),
        context.path().join("gitdispatch"),
    )
    .unwrap();
    copy_tree(&repository("config"), &context.path().join("config"));
    copy_tree(
        &repository("deploy/local"),
        &context.path().join("deploy/local"),
    );

    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let image = format!("localhost/gitdispatch-test:{unique}");
    let mut cleanup = BuildahCleanup {
        containers: Vec::new(),
        images: vec![image.clone()],
    };
    let containerfile = repository("deploy/container/Containerfile.prebuilt");
    buildah_ok(&[
        "bud",
        "--isolation",
        "chroot",
        // Docker's format: OCI images have no field for the HEALTHCHECK.
        "--format",
        "docker",
        "--pull=never",
        "--build-arg",
        &format!("BASE={CONTAINER_BASE}"),
        "--file",
        containerfile.to_str().unwrap(),
        "--tag",
        &image,
        context.path().to_str().unwrap(),
    ]);

    // What the image says of itself.
    let inspected: Value =
        serde_json::from_str(&buildah_ok(&["inspect", "--type", "image", &image])).unwrap();
    let config = &inspected["Docker"]["config"];
    assert_eq!(config["User"], "10001:10001", "{config:#}");
    assert_eq!(config["WorkingDir"], "/var/lib/gitdispatch", "{config:#}");
    assert_eq!(config["StopSignal"], "SIGTERM", "{config:#}");
    assert_eq!(config["Entrypoint"], json!(["gitdispatch"]), "{config:#}");
    assert_eq!(config["Cmd"], json!(["serve"]), "{config:#}");
    assert_eq!(
        config["Healthcheck"]["Test"],
        json!(["CMD", "gitdispatch", "health"]),
        "{config:#}"
    );
    assert!(
        config["ExposedPorts"].get("8080/tcp").is_some(),
        "{config:#}"
    );
    // The image's commands, as the probe script runs them (plain words only).
    let words = |value: &Value| -> String {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|word| {
                let word = word.as_str().unwrap();
                assert!(
                    word.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c)),
                    "{word}"
                );
                word
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let serve = format!("{} {}", words(&config["Entrypoint"]), words(&config["Cmd"]));
    let health = words(&Value::from(
        config["Healthcheck"]["Test"].as_array().unwrap()[1..].to_vec(),
    ));

    // Chroot isolation shares the host's network: the daemon listens on a free port of
    // 127.0.0.1, with the embedded queue and the local executor (nothing outside), in
    // the image's working directory.
    let grace_secs = 2;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mounted = tempfile::tempdir().unwrap();
    let config_file = mounted.path().join("gitdispatch.toml");
    std::fs::write(
        &config_file,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"

[github]
webhook_secrets = ["${{GITHUB_WEBHOOK_SECRET}}"]

[queue]
type = "embedded"
path = "var/gitdispatch.db"

[worker]
shutdown_grace_secs = {grace_secs}

[executor]
type = "local"
log_dir = "var/log"
path = "var/executions.db"

[[pipelines]]
name = "build"
command = ["sh", "deploy/local/deploy.sh"]
concurrency = "parallel"

[[routes]]
name = "build-every-commit"
pipeline = "build"
repository = "acme/*"
events = ["push"]
branches = ["**"]
environment = "ci"
"#
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    let container = format!("gitdispatch-test-{unique}");
    buildah_ok(&["from", "--pull=never", "--name", &container, &image]);
    cleanup.containers.push(container.clone());
    let script = CONTAINER_PROBE
        .replace("{SERVE}", &serve)
        .replace("{HEALTH}", &health);
    // No --user: the image's USER is what is tested.
    let run = buildah(&[
        "run",
        "--isolation",
        "chroot",
        "--volume",
        &format!(
            "{}:/etc/gitdispatch/test.toml:ro",
            config_file.to_str().unwrap()
        ),
        "--env",
        "GITDISPATCH_CONFIG=/etc/gitdispatch/test.toml",
        "--env",
        "GITHUB_WEBHOOK_SECRET=a-secret-for-the-container-test",
        &container,
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "buildah run: {}\n{said}", run.status);
    let results: HashMap<&str, &str> = said
        .lines()
        .take_while(|line| !line.starts_with("--- "))
        .filter_map(|line| line.split_once('='))
        .collect();
    let result = |key: &str| results.get(key).copied().unwrap_or("(missing)");
    assert_eq!(result("uid"), "10001", "the image's user\n{said}");
    assert_eq!(result("gid"), "10001", "the image's group\n{said}");
    assert_eq!(result("workdir"), "/var/lib/gitdispatch", "{said}");
    assert_ne!(
        result("health_before"),
        "0",
        "the probe answers with nothing listening\n{said}"
    );
    assert_eq!(result("health"), "0", "the probe never answered\n{said}");
    assert_eq!(result("process_uid"), "10001", "the daemon's user\n{said}");
    assert_eq!(
        result("process_exe"),
        "/usr/local/bin/gitdispatch",
        "{said}"
    );
    assert_eq!(result("exit"), "0", "SIGTERM's exit status\n{said}");
    let stop_ms: u64 = result("stop_ms")
        .parse()
        .unwrap_or_else(|_| panic!("no stop time\n{said}"));
    assert!(
        stop_ms < grace_secs * 1000,
        "stopped {stop_ms} ms after SIGTERM, the grace is {grace_secs} s\n{said}"
    );
    // Its state went where the image's working directory (its own) lets it write.
    assert!(result("files").contains("gitdispatch.db"), "{said}");
    assert!(said.contains("Stopped."), "{said}");

    drop(cleanup);
    for (kind, name) in [("container", &container), ("image", &image)] {
        assert!(
            !buildah(&["inspect", "--type", kind, name]).status.success(),
            "{kind} {name} is left behind"
        );
    }
}

#[test]
fn the_safe_update_state_machine_is_embedded_verbatim_and_every_state_is_reachable() {
    use serde_json::Value;
    let template = std::fs::read_to_string(repository("deploy/aws/codepipeline.yaml")).unwrap();
    let start = template.find("      Definition:\n").unwrap() + "      Definition:\n".len();
    let end = template[start..].find("\n\nOutputs:").unwrap() + start;
    let embedded: Value = serde_json::from_str(&template[start..end]).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(repository("deploy/stepfunctions/safe-update.asl.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(embedded, file);

    let states = file["States"].as_object().unwrap();
    let mut targets = Vec::new();
    for (name, state) in states {
        let mut next: Vec<&str> = Vec::new();
        next.extend(state["Next"].as_str());
        next.extend(state["Default"].as_str());
        for choice in state["Choices"].as_array().into_iter().flatten() {
            next.extend(choice["Next"].as_str());
        }
        for catch in state["Catch"].as_array().into_iter().flatten() {
            next.extend(catch["Next"].as_str());
        }
        let ends =
            matches!(state["Type"].as_str(), Some("Succeed" | "Fail")) || state["End"] == true;
        assert!(ends || !next.is_empty(), "{name} goes nowhere");
        for target in next {
            assert!(
                states.contains_key(target),
                "{name} goes to {target}, which is no state"
            );
            targets.push(target.to_string());
        }
    }
    let start = file["StartAt"].as_str().unwrap();
    for name in states.keys() {
        assert!(
            name == start || targets.contains(name),
            "{name} cannot be reached"
        );
    }
    // What the issue's flow asks: a stack created when missing, a change set rejected
    // when it deletes or replaces, executed otherwise.
    let resources: Vec<&str> = states
        .values()
        .filter_map(|state| state["Resource"].as_str())
        .collect();
    for call in [
        "describeStacks",
        "createStack",
        "createChangeSet",
        "describeChangeSet",
        "executeChangeSet",
    ] {
        assert!(
            resources
                .iter()
                .any(|resource| resource.ends_with(&format!(":{call}"))),
            "no {call}"
        );
    }
    assert_eq!(states["Rejected"]["Error"], "ChangeSetRejected");
}

/// One call of the query protocol (CloudFormation, EC2, Elastic Load Balancing) as moto
/// takes it: a form POST, the service named by the credential scope. The answer's XML.
async fn query(service: &str, version: &str, parameters: &[(&str, &str)]) -> String {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("Version", version)
        .extend_pairs(parameters)
        .finish();
    let response = reqwest::Client::new()
        .post(moto::url())
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let action = parameters.iter().find(|(key, _)| *key == "Action");
    assert!(
        status.is_success(),
        "{service} {action:?}: {status}\n{text}"
    );
    text
}

/// One call of the JSON 1.1 protocol (ECS, ACM).
async fn json_call(service: &str, target: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(moto::url())
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", target)
        .header(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{target}: {status}\n{text}");
    serde_json::from_str(&text).unwrap()
}

/// The text of every `<tag>` element of an XML answer, in order.
fn elements(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(text, _)| text.to_string()))
        .collect()
}

/// Deploys a template of deploy/aws on moto's CloudFormation with its parameters; the
/// stack's name and outputs. (As `tests/aws.rs` does.)
async fn deploy_stack(
    template: &str,
    parameters: &[(&str, &str)],
) -> (String, HashMap<String, String>) {
    let stack = moto::unique("stack");
    let body = std::fs::read_to_string(repository(template)).unwrap();
    let mut form = vec![
        ("Action".to_string(), "CreateStack".to_string()),
        ("StackName".to_string(), stack.clone()),
        ("TemplateBody".to_string(), body),
        (
            "Capabilities.member.1".to_string(),
            "CAPABILITY_IAM".to_string(),
        ),
    ];
    for (index, (key, value)) in parameters.iter().enumerate() {
        let n = index + 1;
        form.push((
            format!("Parameters.member.{n}.ParameterKey"),
            key.to_string(),
        ));
        form.push((
            format!("Parameters.member.{n}.ParameterValue"),
            value.to_string(),
        ));
    }
    let form: Vec<(&str, &str)> = form
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    query("cloudformation", "2010-05-15", &form).await;
    let text = query(
        "cloudformation",
        "2010-05-15",
        &[("Action", "DescribeStacks"), ("StackName", &stack)],
    )
    .await;
    assert!(
        elements(&text, "StackStatus") == ["CREATE_COMPLETE"],
        "{template}: {text}"
    );
    let mut outputs = HashMap::new();
    for output in text.split("<member>").skip(1) {
        if let (Some(key), Some(value)) = (
            elements(output, "OutputKey").first(),
            elements(output, "OutputValue").first(),
        ) {
            outputs.insert(key.clone(), value.clone());
        }
    }
    (stack, outputs)
}

/// The physical id of a stack's resource.
async fn physical_id(stack: &str, logical_id: &str) -> String {
    let text = query(
        "cloudformation",
        "2010-05-15",
        &[("Action", "DescribeStackResources"), ("StackName", stack)],
    )
    .await;
    text.split("<member>")
        .find(|member| elements(member, "LogicalResourceId") == [logical_id])
        .and_then(|member| elements(member, "PhysicalResourceId").into_iter().next())
        .unwrap_or_else(|| panic!("no {logical_id} in {stack}: {text}"))
}

/// deploy/aws/service.yaml, deployed after gitdispatch.yaml as the README says, on
/// moto's CloudFormation: the outputs name the webhook URL, the load balancer and the
/// services; the load balancer serves HTTPS with the certificate and only redirects
/// HTTP, only to AllowedCidrs; its target group probes /readyz on the container's port,
/// which only the load balancer reaches; the services run `listen` and `work` with
/// the config written where they read it, the secrets as variables, JSON logs and a
/// stop timeout above the shutdown grace. moto's CloudFormation skips what it does not
/// support (the Application Auto Scaling target and policies, the CloudWatch alarms),
/// and keeps of a task definition only its containers, of a service only its name,
/// task definition and count, of a role not its managed policies, of a target group
/// not its attributes: those are left to cfn-lint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_template_deploys_the_listeners_behind_https_and_the_workers() {
    let (_, core) = deploy_stack(
        "deploy/aws/gitdispatch.yaml",
        &[
            ("Name", &moto::unique("gd")),
            ("CreateSampleStateMachine", "false"),
            ("CreateLedger", "true"),
        ],
    )
    .await;

    let ec2 = |parameters: Vec<(&'static str, String)>| async move {
        let parameters: Vec<(&str, &str)> = parameters
            .iter()
            .map(|(key, value)| (*key, value.as_str()))
            .collect();
        query("ec2", "2016-11-15", &parameters).await
    };
    let created = ec2(vec![
        ("Action", "CreateVpc".into()),
        ("CidrBlock", "10.0.0.0/16".into()),
    ])
    .await;
    let vpc = elements(&created, "vpcId").remove(0);
    let mut subnets = Vec::new();
    for (n, zone) in ["us-east-1a", "us-east-1b"].into_iter().enumerate() {
        let created = ec2(vec![
            ("Action", "CreateSubnet".into()),
            ("VpcId", vpc.clone()),
            ("CidrBlock", format!("10.0.{n}.0/24")),
            ("AvailabilityZone", zone.into()),
        ])
        .await;
        subnets.push(elements(&created, "subnetId").remove(0));
    }
    let subnets = subnets.join(",");
    // An HTTPS listener needs a certificate that exists (moto checks, as AWS does).
    let certificate = json_call(
        "acm",
        "CertificateManager.RequestCertificate",
        json!({"DomainName": "gitdispatch.example.com"}),
    )
    .await["CertificateArn"]
        .as_str()
        .unwrap()
        .to_string();

    let name = moto::unique("gd");
    // GitHub's hook ranges (three of them: the rest of the eight slots stay empty).
    let cidrs = ["192.30.252.0/22", "185.199.108.0/22", "140.82.112.0/20"];
    let webhook_secret =
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:gitdispatch/webhook-AbCdEf";
    let api_token = "arn:aws:secretsmanager:us-east-1:123456789012:secret:gitdispatch/api-AbCdEf";
    let (stack, outputs) = deploy_stack(
        "deploy/aws/service.yaml",
        &[
            ("Name", &name),
            (
                "Image",
                "123456789012.dkr.ecr.us-east-1.amazonaws.com/gitdispatch:1.0.0",
            ),
            ("VpcId", &vpc),
            ("LoadBalancerSubnets", &subnets),
            ("TaskSubnets", &subnets),
            ("AllowedCidrs", &cidrs.join(",")),
            ("CertificateArn", &certificate),
            ("DomainName", "gitdispatch.example.com"),
            ("ListenerPolicyArn", &core["ListenerPolicyArn"]),
            ("WorkerPolicyArn", &core["WorkerPolicyArn"]),
            ("QueueUrl", &core["QueueUrl"]),
            ("WebhookSecretArn", webhook_secret),
            ("ApiTokenSecretArn", api_token),
        ],
    )
    .await;
    assert_eq!(
        outputs["WebhookUrl"],
        "https://gitdispatch.example.com/webhooks/github"
    );
    assert_eq!(outputs["ClusterName"], name);
    assert_eq!(outputs["ListenServiceName"], format!("{name}-listen"));
    assert_eq!(outputs["WorkServiceName"], format!("{name}-work"));
    assert_eq!(outputs["LogGroupName"], format!("/ecs/{name}"));

    // The load balancer of the output: internet-facing, HTTPS with the certificate,
    // HTTP that only redirects.
    let balancer = physical_id(&stack, "LoadBalancer").await;
    let elb = |action: &'static str, key: &'static str, value: String| async move {
        query(
            "elasticloadbalancing",
            "2015-12-01",
            &[("Action", action), (key, value.as_str())],
        )
        .await
    };
    let described = elb(
        "DescribeLoadBalancers",
        "LoadBalancerArns.member.1",
        balancer.clone(),
    )
    .await;
    assert_eq!(
        elements(&described, "DNSName"),
        [outputs["LoadBalancerDnsName"].clone()]
    );
    assert_eq!(elements(&described, "Scheme"), ["internet-facing"]);
    let mut listeners: Vec<String> = elb("DescribeListeners", "LoadBalancerArn", balancer.clone())
        .await
        .split("<ListenerArn>")
        .skip(1)
        .map(str::to_string)
        .collect();
    listeners.sort_by_key(|listener| elements(listener, "Port")[0].parse::<u16>().unwrap());
    let [http, https] = &listeners[..] else {
        panic!("two listeners: {listeners:?}")
    };
    assert_eq!(elements(http, "Port")[0], "80");
    assert_eq!(elements(http, "Type"), ["redirect"]);
    assert_eq!(elements(http, "Protocol"), ["HTTP", "HTTPS"]);
    assert_eq!(elements(http, "StatusCode"), ["HTTP_301"]);
    assert_eq!(elements(https, "Port"), ["443"]);
    assert_eq!(elements(https, "Protocol"), ["HTTPS"]);
    assert_eq!(elements(https, "CertificateArn"), [certificate]);
    assert_eq!(elements(https, "Type"), ["forward"]);
    let groups = elb("DescribeTargetGroups", "LoadBalancerArn", balancer).await;
    assert_eq!(
        elements(https, "TargetGroupArn"),
        elements(&groups, "TargetGroupArn")
    );
    assert_eq!(elements(&groups, "HealthCheckPath"), ["/readyz"]);
    assert_eq!(elements(&groups, "Port"), ["8080"]);
    assert_eq!(elements(&groups, "TargetType"), ["ip"]);

    // Only AllowedCidrs reach the load balancer, on 443 and 80; only the load balancer
    // reaches the listeners, on their port; nothing reaches the workers.
    let ingress = |group: String| async move {
        let text = ec2(vec![
            ("Action", "DescribeSecurityGroups".into()),
            ("GroupId.1", group),
        ])
        .await;
        // The ingress rules only (the egress rules are ipPermissionsEgress); a group
        // without any answers `<ipPermissions/>`.
        match text.split_once("<ipPermissions>") {
            Some((_, rest)) => rest
                .split_once("</ipPermissions>")
                .unwrap_or_else(|| panic!("{text}"))
                .0
                .to_string(),
            None if text.contains("<ipPermissions/>") => String::new(),
            None => panic!("{text}"),
        }
    };
    let balancer_group = physical_id(&stack, "LoadBalancerSecurityGroup").await;
    let from_internet = ingress(balancer_group.clone()).await;
    let mut ports = elements(&from_internet, "fromPort");
    ports.sort();
    assert_eq!(ports, ["443", "80"]);
    let mut allowed = elements(&from_internet, "cidrIp");
    allowed.sort();
    let mut expected: Vec<&str> = cidrs.iter().chain(&cidrs).copied().collect();
    expected.sort();
    assert_eq!(allowed, expected);
    let to_listeners = ingress(physical_id(&stack, "ListenerSecurityGroup").await).await;
    assert_eq!(elements(&to_listeners, "fromPort"), ["8080"]);
    assert_eq!(elements(&to_listeners, "groupId"), [balancer_group]);
    assert!(
        elements(&to_listeners, "cidrIp").is_empty(),
        "{to_listeners}"
    );
    let to_workers = ingress(physical_id(&stack, "WorkerSecurityGroup").await).await;
    assert!(elements(&to_workers, "fromPort").is_empty(), "{to_workers}");

    // The services and their containers.
    let ecs = |action: &str, body: Value| {
        let target = format!("AmazonEC2ContainerServiceV20141113.{action}");
        async move { json_call("ecs", &target, body).await }
    };
    let services = ecs(
        "DescribeServices",
        json!({"cluster": name, "services": [outputs["ListenServiceName"], outputs["WorkServiceName"]]}),
    )
    .await;
    let services = services["services"].as_array().unwrap();
    assert_eq!(services.len(), 2, "{services:?}");
    assert_eq!(services[0]["desiredCount"], 2, "ListenerTasks");
    for (service, role) in services.iter().zip(["listen", "work"]) {
        let definition = ecs(
            "DescribeTaskDefinition",
            json!({"taskDefinition": service["taskDefinition"]}),
        )
        .await;
        let containers = definition["taskDefinition"]["containerDefinitions"]
            .as_array()
            .unwrap();
        let [config, daemon] = &containers[..] else {
            panic!("{role}: a config container and the daemon's: {containers:?}")
        };
        // The config container writes the parameter's text where the daemon reads it,
        // and the daemon starts only once it has.
        assert_eq!(config["essential"], false);
        assert!(
            config["command"][0]
                .as_str()
                .unwrap()
                .ends_with("> /etc/gitdispatch/gitdispatch.toml"),
            "{config}"
        );
        assert_eq!(
            config["secrets"][0]["valueFrom"],
            "arn:aws:ssm:us-east-1:123456789012:parameter/gitdispatch/config"
        );
        assert_eq!(
            daemon["dependsOn"],
            json!([{"containerName": "config", "condition": "SUCCESS"}])
        );
        assert_eq!(daemon["name"], role);
        assert_eq!(daemon["entryPoint"], json!(["gitdispatch"]));
        assert_eq!(
            daemon["command"],
            json!(["--config", "/etc/gitdispatch/gitdispatch.toml", role])
        );
        assert_eq!(
            daemon["secrets"],
            json!([
                {"name": "GITHUB_WEBHOOK_SECRET", "valueFrom": webhook_secret},
                {"name": "GITDISPATCH_API_TOKEN", "valueFrom": api_token}
            ])
        );
        assert!(
            daemon["environment"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "GITDISPATCH_LOG_FORMAT", "value": "json"})),
            "{daemon}"
        );
        // Above the default shutdown grace (30 s), within ECS's 120.
        let stop = daemon["stopTimeout"].as_u64().unwrap();
        assert!((31..=120).contains(&stop), "stopTimeout {stop}");
        assert_eq!(daemon["logConfiguration"]["logDriver"], "awslogs");
        assert_eq!(
            daemon["logConfiguration"]["options"]["awslogs-group"],
            format!("/ecs/{name}")
        );
    }
    assert_eq!(services[0]["serviceName"], format!("{name}-listen"));
}
