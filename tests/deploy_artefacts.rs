//! The deployment artefacts pass their own tools' checks: the systemd unit verifies
//! and its sandbox rates 2.0 or better; every CloudFormation template is clean under
//! cfn-lint with the informational checks on; the CodePipeline template embeds the
//! safe-update state machine as its file has it, and every state of it can be reached
//! and goes somewhere that exists. (The other templates are also deployed on moto and
//! the sample state machine run there: `tests/aws.rs`. moto has no custom action types
//! and runs no CloudFormation SDK tasks, so the CodePipeline template and its state
//! machine are checked here, not run.)

use std::path::Path;
use std::process::Command;

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

#[test]
fn the_container_image_probes_itself_and_sends_no_build_output() {
    let containerfile =
        std::fs::read_to_string(repository("deploy/container/Containerfile")).unwrap();
    assert!(containerfile.contains("CMD [\"gitdispatch\", \"health\"]"));
    assert!(containerfile.contains("USER 10001:10001"));
    for line in containerfile
        .lines()
        .filter(|line| line.starts_with("FROM "))
    {
        let image = line.split_whitespace().nth(1).unwrap();
        let tag = image.rsplit(':').next().unwrap();
        assert!(
            tag.chars()
                .next()
                .is_some_and(|first| first.is_ascii_digit()),
            "{image} floats: pin a version"
        );
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
    // What the flow asks: a stack created when missing, a change set rejected
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
